//! Byte sizes on the command line: `4096`, `64K`, `4M`, `1G`, `4MiB`.
//!
//! Depends on `std` only: the CLI definition (`cli/args.rs`) includes this file so build.rs
//! can compile that definition on its own.
use std::fmt;

/// A size that does not parse; the message says why and shows examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSizeError(String);

impl fmt::Display for ParseSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseSizeError {}

pub fn parse_size(s: &str) -> Result<u64, ParseSizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        ParseSizeError(format!(
            "{s:?} is not a size (examples: 65536, 64K, 4M, 1G)"
        ))
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(ParseSizeError(format!(
                "{s:?}: unknown unit {other:?} (use K, M or G)"
            )));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| ParseSizeError(format!("{s:?} is too large")))
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
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
