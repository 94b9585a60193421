//! Response validation: nothing of a response is used unless all of it matches the contract.
use serde::Deserialize;
use zeroize::Zeroizing;

use super::BLOCK_LEN;
use qrypt_api::BLOCK_B64_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("Content-Type is {0:?}, expected application/json")]
    ContentType(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("size is {size} but the random array has {len} blocks")]
    SizeVsLength { size: u64, len: usize },
    #[error("asked for {asked} KiB, got {got}")]
    WrongAmount { asked: u32, got: u64 },
    #[error("block {index} is not 1024 bytes of strict base64")]
    BadBlock { index: usize },
    /// A breach the fetcher process found and reported (its own words, made printable).
    #[error("{0}")]
    Reported(String),
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    random: Vec<Text<'a>>,
    size: u64,
}

/// A JSON string of the body, borrowed from it: never copied. (serde's own `Cow<str>` inside
/// a `Vec` always copies, and each copy of a block's base64 would be freed unwiped.) A string
/// with escapes cannot be borrowed; [`unescape_base64`] resolves those first, so only a
/// malformed string ever arrives here as a copy, which is then wiped.
enum Text<'a> {
    Borrowed(&'a str),
    Copied(Zeroizing<String>),
}

impl Text<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Borrowed(s) => s.as_bytes(),
            Text::Copied(s) => s.as_bytes(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text::Copied(Zeroizing::new(v.to_owned())))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// The body with the escapes a JSON encoder may put in base64 resolved: `\/` and `\u00XX`
/// for a character of the base64 alphabet or `=`. Other escapes are left alone (no base64
/// holds them). `None` when the body has no backslash, the usual case: it is parsed as is.
/// The copy is pre-sized (never reallocated) and wiped on drop.
fn unescape_base64(body: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if !body.contains(&b'\\') {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b != b'\\' || i + 1 >= body.len() {
            out.push(b);
            i += 1;
            continue;
        }
        match body[i + 1] {
            b'/' => {
                out.push(b'/');
                i += 2;
            }
            b'u' if i + 6 <= body.len() => {
                let c = std::str::from_utf8(&body[i + 2..i + 6])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|c| c.is_ascii_alphanumeric() || b"+/=".contains(c));
                match c {
                    Some(c) if body[i + 2..i + 4] == *b"00" => {
                        out.push(c);
                        i += 6;
                    }
                    _ => {
                        out.extend_from_slice(&body[i..i + 2]);
                        i += 2;
                    }
                }
            }
            _ => {
                // Any other escape, kept whole so its second character is not read as the
                // start of another escape.
                out.extend_from_slice(&body[i..i + 2]);
                i += 2;
            }
        }
    }
    Some(out)
}

/// Largest body accepted for a request of `kib` KiB: the base64 plus generous room for
/// whitespace and framing. Anything bigger is not a correct answer.
pub fn body_limit(kib: u32) -> usize {
    kib as usize * (BLOCK_B64_LEN + 64) + 4096
}

/// Checks a `Content-Type` header value.
pub fn check_content_type(value: Option<&str>) -> Result<(), ValidationError> {
    let v = value.unwrap_or("");
    let essence = v.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ValidationError::ContentType(v.chars().take(64).collect()))
    }
}

/// Parses and validates a 200 body for a request of `kib` KiB, decoding into `out`
/// (wiped and cleared first). On error `out` is wiped and left empty.
///
/// Only `out[..len]` is ever written, so only that is wiped: wiping the whole capacity would
/// fault in pages of a kept buffer that were never used (`upstream::buffers`), and each
/// response that failed would add them to the daemon's resident memory.
pub fn decode_body(body: &[u8], kib: u32, out: &mut Vec<u8>) -> Result<(), ValidationError> {
    wipe(out);
    let result = decode_inner(body, kib, out);
    if result.is_err() {
        wipe(out);
    }
    result
}

fn wipe(out: &mut Vec<u8>) {
    zeroize::Zeroize::zeroize(out.as_mut_slice());
    out.clear();
}

fn decode_inner(body: &[u8], kib: u32, out: &mut Vec<u8>) -> Result<(), ValidationError> {
    if body.len() > body_limit(kib) {
        return Err(ValidationError::TooLarge(body_limit(kib)));
    }
    let unescaped = unescape_base64(body);
    let parsed: Body<'_> = serde_json::from_slice(unescaped.as_deref().map_or(body, |v| &v[..]))
        .map_err(json_error)?;
    if parsed.size != parsed.random.len() as u64 {
        return Err(ValidationError::SizeVsLength {
            size: parsed.size,
            len: parsed.random.len(),
        });
    }
    if parsed.size != u64::from(kib) {
        return Err(ValidationError::WrongAmount {
            asked: kib,
            got: parsed.size,
        });
    }
    out.resize(kib as usize * BLOCK_LEN, 0);
    for (index, (text, slot)) in parsed
        .random
        .iter()
        .zip(out.chunks_exact_mut(BLOCK_LEN))
        .enumerate()
    {
        // 1368 characters ending in exactly "==" is the only shape that holds 1024 bytes, and it
        // guarantees the decoder's output fits the slot. The SIMD decoder is strict: alphabet,
        // padding and zero trailing bits.
        let t = text.as_bytes();
        if t.len() != BLOCK_B64_LEN || !t.ends_with(b"==") || t[BLOCK_B64_LEN - 3] == b'=' {
            return Err(ValidationError::BadBlock { index });
        }
        match base64_simd::STANDARD.decode(t, base64_simd::Out::from_slice(slot)) {
            Ok(decoded) if decoded.len() == BLOCK_LEN => {}
            _ => return Err(ValidationError::BadBlock { index }),
        }
    }
    Ok(())
}

/// What went wrong and where, never the offending text: serde_json quotes the value it
/// choked on, and in a response of the wrong shape that value is entropy (which would then
/// reach `/status` and the log).
fn json_error(e: serde_json::Error) -> ValidationError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "syntax error",
        Category::Data => "wrong types or missing fields",
        Category::Eof => "ends too early",
        Category::Io => "read error",
    };
    ValidationError::Json(format!("{what} at line {} column {}", e.line(), e.column()))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    fn body(blocks: &[Vec<u8>], size: u64) -> Vec<u8> {
        let random: Vec<String> = blocks.iter().map(|b| STANDARD.encode(b)).collect();
        serde_json::to_vec(&serde_json::json!({ "random": random, "size": size })).expect("json")
    }

    #[test]
    fn errors_never_quote_the_body() {
        let secret = "c2VjcmV0Ynl0ZXM=".repeat(50);
        let bodies = [
            format!(r#"{{"random":"{secret}","size":1}}"#),
            format!(r#"{{"random":[{secret}],"size":1}}"#),
            format!(r#"{{"random":["{secret}"],"size":"{secret}"}}"#),
            format!(r#"{{"random":["{secret}"#),
        ];
        for b in bodies {
            let err = decode_body(b.as_bytes(), 1, &mut Vec::new()).expect_err("invalid");
            let text = err.to_string();
            assert!(!text.contains("c2Vj"), "{text}");
            assert!(text.len() < 80, "{text}");
        }
    }

    #[test]
    fn accepts_correct_body() {
        let blocks = vec![vec![7u8; 1024], (0..1024).map(|i| i as u8).collect()];
        let mut out = Vec::new();
        decode_body(&body(&blocks, 2), 2, &mut out).expect("valid");
        assert_eq!(out, blocks.concat());
    }

    #[test]
    fn block_strings_are_borrowed_never_copied() {
        let block = vec![0xfbu8; 1024]; // "+/v7..."
        let plain = body(std::slice::from_ref(&block), 1);
        let text = String::from_utf8(plain.clone()).expect("utf8");
        let escaped = text.replace('/', "\\/").replace('+', "\\u002B");
        for b in [plain, escaped.into_bytes()] {
            let unescaped = unescape_base64(&b);
            let parsed: Body<'_> =
                serde_json::from_slice(unescaped.as_deref().map_or(&b[..], |v| &v[..]))
                    .expect("json");
            assert!(parsed.random.iter().all(|t| matches!(t, Text::Borrowed(_))));
            let mut out = Vec::new();
            decode_body(&b, 1, &mut out).expect("valid");
            assert_eq!(out, block);
        }
    }

    #[test]
    fn unescaping_resolves_only_base64_characters() {
        assert!(unescape_base64(b"{\"a\": \"xyz\"}").is_none());
        let got = unescape_base64(br#""\/\u002b\u003D\\/\n\u00e9\u012B""#).expect("escapes");
        assert_eq!(&got[..], br#""/+=\\/\n\u00e9\u012B""#);
    }

    #[test]
    fn accepts_escaped_slashes() {
        let block = vec![0xffu8; 1024]; // encodes to "////..."
        let text = String::from_utf8(body(std::slice::from_ref(&block), 1)).expect("utf8");
        let escaped = text.replace('/', "\\/");
        let mut out = Vec::new();
        decode_body(escaped.as_bytes(), 1, &mut out).expect("valid");
        assert_eq!(out, block);
    }

    #[test]
    fn rejects_each_contract_breach() {
        let good = vec![vec![1u8; 1024]];
        let cases: Vec<(Vec<u8>, u32)> = vec![
            (b"{\"random\": [".to_vec(), 1),
            (br#"{"random": [1, 2], "size": 2}"#.to_vec(), 2),
            (br#"{"random": ["AAAA"], "size": "1"}"#.to_vec(), 1),
            (body(&good, 2), 1),
            (body(&good, 1), 2),
            (body(&[vec![1u8; 1023]], 1), 1),
            (body(&[vec![1u8; 1025]], 1), 1),
            (
                String::from_utf8(body(&good, 1))
                    .expect("utf8")
                    .replacen("AQEB", "AQE*", 1)
                    .into_bytes(),
                1,
            ),
            (vec![b' '; body_limit(1) + 1], 1),
        ];
        for (i, (b, kib)) in cases.iter().enumerate() {
            let mut out = vec![9u8; 10];
            assert!(decode_body(b, *kib, &mut out).is_err(), "case {i} accepted");
            assert!(out.is_empty(), "case {i} left data behind");
        }
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        let block = vec![0u8; 1024];
        let good = STANDARD.encode(&block);
        assert!(good.ends_with("AA=="));
        // "AB==" decodes to the same byte with non-zero trailing bits: not strict base64.
        let bad = format!("{}AB==", &good[..good.len() - 4]);
        let body = format!("{{\"random\": [\"{bad}\"], \"size\": 1}}");
        let mut out = Vec::new();
        assert_eq!(
            decode_body(body.as_bytes(), 1, &mut out),
            Err(ValidationError::BadBlock { index: 0 })
        );
    }

    #[test]
    fn content_type() {
        assert!(check_content_type(Some("application/json; charset=utf-8")).is_ok());
        assert!(check_content_type(Some("text/html")).is_err());
        assert!(check_content_type(None).is_err());
    }
}

#[cfg(test)]
mod properties {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;

    use super::*;

    fn valid_body(blocks: &[Vec<u8>]) -> Vec<u8> {
        let random: Vec<String> = blocks.iter().map(|b| STANDARD.encode(b)).collect();
        serde_json::to_vec(&serde_json::json!({ "random": random, "size": blocks.len() }))
            .expect("json")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic and never yield data of the wrong length.
        #[test]
        fn arbitrary_bodies(body in proptest::collection::vec(any::<u8>(), 0..4096), kib in 1u32..4) {
            let mut out = Vec::new();
            match decode_body(&body, kib, &mut out) {
                Ok(()) => prop_assert_eq!(out.len(), kib as usize * BLOCK_LEN),
                Err(_) => prop_assert!(out.is_empty()),
            }
        }

        /// Any single-byte change to a valid body is rejected, or decodes to exactly what the
        /// changed body says (e.g. whitespace, or a flip inside a base64 character that maps to
        /// another valid character): never to a different length, never a panic.
        #[test]
        fn mutated_valid_bodies(
            seed in proptest::collection::vec(any::<u8>(), 2048),
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let blocks = vec![seed[..1024].to_vec(), seed[1024..].to_vec()];
            let mut body = valid_body(&blocks);
            let i = pos.index(body.len());
            body[i] = byte;
            let mut out = Vec::new();
            if decode_body(&body, 2, &mut out).is_ok() {
                prop_assert_eq!(out.len(), 2048);
                let parsed: serde_json::Value = serde_json::from_slice(&body).expect("was accepted");
                let expect: Vec<u8> = parsed["random"].as_array().expect("array").iter()
                    .flat_map(|s| STANDARD.decode(s.as_str().expect("str")).expect("b64"))
                    .collect();
                prop_assert_eq!(out, expect);
            } else {
                prop_assert!(out.is_empty());
            }
        }
    }
}
