//! Byte sizes on command lines, shared by qrypt-fs and its tools: `4096`, `64K`, `4M`, `4.5M`,
//! `1G`, `4MiB`.
//!
//! Units are binary (K = KiB = 1024 bytes). The decimal names `KB`, `MB`, `GB` are refused
//! rather than read as binary: `4MB` means 4,000,000 bytes to some and 4 MiB to others, and a
//! size that is silently 5% off is a trap. A fraction is accepted when it comes to a whole
//! number of bytes (`4.5M` = 4718592), so sizes can be written as people say them.

/// Parses a size; the error says what is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let not_a_size = || format!("{s:?} is not a size (examples: 65536, 64K, 4M, 4.5M, 1G)");
    if num.is_empty() {
        return Err(not_a_size());
    }
    let unit = unit.trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            let binary = unit[..1].to_ascii_uppercase();
            return Err(format!(
                "{s:?}: {unit} is ambiguous (10^3 or 2^10?); sizes are binary here: write \
                 {num}{binary} or {num}{binary}iB (1{binary} = {} bytes)",
                1u64 << unit_shift(&binary)
            ));
        }
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use K, M or G, binary: 1K = 1024 bytes)"
            ));
        }
    };
    let (whole, frac) = match num.split_once('.') {
        Some((w, f)) => (w, f),
        None => (num, ""),
    };
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(not_a_size());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| not_a_size())?
    };
    let too_large = || format!("{s:?} is too large");
    let mut bytes = whole.checked_shl(shift).filter(|b| b >> shift == whole);
    if !frac.is_empty() {
        // frac / 10^len * 2^shift must be a whole number of bytes.
        let den = 10u128
            .checked_pow(frac.len() as u32)
            .ok_or_else(not_a_size)?;
        let num: u128 = frac.parse().map_err(|_| not_a_size())?;
        let scaled = num << shift;
        if scaled % den != 0 {
            return Err(format!(
                "{s:?} is not a whole number of bytes (write it in a smaller unit)"
            ));
        }
        let extra = u64::try_from(scaled / den).map_err(|_| too_large())?;
        bytes = bytes.and_then(|b| b.checked_add(extra));
    }
    bytes.ok_or_else(too_large)
}

fn unit_shift(unit: &str) -> u32 {
    match unit {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => 40,
    }
}

/// A size as people write it: the largest binary unit that divides it (`4M`, `4608K`, `1000`).
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Checks a size against a range; the error names the range in units (`at least 4K`).
pub fn check_range(what: &str, n: u64, min: u64, max: u64) -> Result<u64, String> {
    if n < min {
        return Err(format!(
            "{what} {} is too small: at least {}",
            format_size(n),
            format_size(min)
        ));
    }
    if n > max {
        return Err(format!(
            "{what} {} is too large: at most {}",
            format_size(n),
            format_size(max)
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size(" 16k "), Ok(16 << 10));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert!(parse_size("18446744073709551616").is_err());
    }

    #[test]
    fn fractions_that_come_to_whole_bytes() {
        assert_eq!(parse_size("4.5M"), Ok(4_718_592));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size(".25M"), Ok(1 << 18));
        assert_eq!(parse_size("1.0G"), Ok(1 << 30));
        let e = parse_size("1.1K").expect_err("1126.4 bytes");
        assert!(e.contains("not a whole number of bytes"), "{e}");
        assert!(parse_size("4.5").is_err());
        assert!(parse_size("1.2.3M").is_err());
        assert!(parse_size(".M").is_err());
        assert!(
            parse_size("lots")
                .expect_err("no number")
                .contains("not a size")
        );
    }

    #[test]
    fn decimal_unit_names_are_refused_not_guessed() {
        for (text, hint) in [
            ("4MB", "4M or 4MiB"),
            ("64kb", "64K or 64KiB"),
            ("1GB", "1G"),
        ] {
            let e = parse_size(text).expect_err(text);
            assert!(e.contains("ambiguous") && e.contains(hint), "{text}: {e}");
        }
    }

    #[test]
    fn range_errors_speak_in_units() {
        assert_eq!(
            check_range("--buffer-size", 1024, 4 << 10, 16 << 30),
            Err("--buffer-size 1K is too small: at least 4K".into())
        );
        assert_eq!(
            check_range("--buffer-size", 32 << 30, 4 << 10, 16 << 30),
            Err("--buffer-size 32G is too large: at most 16G".into())
        );
        assert_eq!(
            check_range("--buffer-size", 1000, 4 << 10, 16 << 30),
            Err("--buffer-size 1000 is too small: at least 4K".into())
        );
        assert_eq!(check_range("x", 4 << 10, 4 << 10, 16 << 30), Ok(4096));
        assert_eq!(format_size(4_718_592), "4608K");
    }
}
