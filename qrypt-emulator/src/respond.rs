//! The entropy endpoint: token, `size`, rate limit, quota, the armed fault, then the body.
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{HeaderMap, Response, StatusCode};
use rand::RngCore;

use super::State;
use super::body::ScriptedBody;
use super::fault::Fault;
use super::ledger::BLOCK;
use super::limits::Refusal;

/// Whitespace put inside an oversized body's JSON.
const OVERSIZE_PAD: usize = 64 << 20;

/// A response, or an error that makes hyper drop the connection without one.
pub(super) type Reply = Result<Response<ScriptedBody>, io::Error>;

pub(super) fn json_error(status: u16, message: &str) -> Response<ScriptedBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Response::new(ScriptedBody::full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The bearer token, if the header has one (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// KiB asked for: `size` absent means 1; anything but digits for 1..=512 is an error.
fn kib_param(query: Option<&str>) -> Result<u32, ()> {
    let Some(pair) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find(|kv| kv.split('=').next() == Some("size"))
    else {
        return Ok(1);
    };
    let v = pair.strip_prefix("size=").ok_or(())?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    match v.parse::<u32>() {
        Ok(n) if qrypt_api::KIB_PER_REQUEST.contains(&n) => Ok(n),
        _ => Err(()),
    }
}

/// What the locked part decided.
enum Admission {
    /// Status, KiB asked for (0 if not read yet), the answer.
    Refused(u16, u32, Response<ScriptedBody>),
    /// KiB, the fault to apply, and for `OldBlock` the block it repeats (for `OldWindow`, the
    /// earlier bytes).
    Served(u32, Option<Fault>, Option<Vec<u8>>),
}

/// Answers one `GET /api/v1/quantum-entropy`; `seq` is its number, `fd` its connection's
/// socket (for a real reset).
pub(super) async fn entropy(
    state: &State,
    headers: &HeaderMap,
    query: Option<&str>,
    seq: u64,
    fd: Option<Arc<OwnedFd>>,
) -> Reply {
    let (kib, fault, old_block) = match admit(state, headers, query) {
        Admission::Refused(status, kib, r) => {
            state
                .ledger
                .lock()
                .answer(seq, status, kib, None, Vec::new());
            return Ok(r);
        }
        Admission::Served(kib, fault, old) => (kib, fault, old),
    };
    match &fault {
        Some(f @ Fault::Status(code)) => {
            let reason = StatusCode::from_u16(*code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("error");
            let r = json_error(*code, &format!("{reason} (emulated)"));
            let sent = r.status().as_u16();
            state
                .ledger
                .lock()
                .answer(seq, sent, kib, Some(f), Vec::new());
            return Ok(r);
        }
        Some(f @ Fault::TooManyRequests { retry_after }) => {
            let mut r = json_error(429, "too many requests (emulated)");
            if let Some(secs) = retry_after {
                r.headers_mut().insert(RETRY_AFTER, (*secs).into());
            }
            state
                .ledger
                .lock()
                .answer(seq, 429, kib, Some(f), Vec::new());
            return Ok(r);
        }
        Some(f @ Fault::TooManyRequestsText { retry_after }) => {
            let mut r = json_error(429, "too many requests (emulated)");
            if let Ok(v) = HeaderValue::from_str(retry_after) {
                r.headers_mut().insert(RETRY_AFTER, v);
            }
            state
                .ledger
                .lock()
                .answer(seq, 429, kib, Some(f), Vec::new());
            return Ok(r);
        }
        Some(f @ Fault::DropConnection) => {
            state.ledger.lock().answer(seq, 0, kib, Some(f), Vec::new());
            return Err(io::Error::other("emulated dropped connection"));
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }

    let repeat_source = match fault {
        Some(Fault::RepeatBlock) => state.ledger.lock().recent_block(),
        Some(Fault::ShiftedReplay) => Some(state.ledger.lock().recent_bytes()),
        Some(Fault::OldBlock { .. } | Fault::OldWindow { .. }) => old_block,
        _ => None,
    };
    let (text, decoded) = build(kib, fault.as_ref(), repeat_source);
    let len = text.len();
    let body = match &fault {
        Some(Fault::ResetMidBody) => ScriptedBody::reset_after_half(Bytes::from(text), fd),
        Some(Fault::TruncatedBody) => ScriptedBody::truncated(Bytes::from(text)),
        Some(Fault::SlowDrip { bytes_per_sec }) => {
            ScriptedBody::drip(Bytes::from(text), *bytes_per_sec)
        }
        Some(Fault::OversizedBody) => {
            // Whitespace between two members: still valid JSON, just enormous.
            let cut = text.rfind(", \"size\"").unwrap_or(text.len());
            let text = Bytes::from(text);
            ScriptedBody::padded(text.slice(..cut + 1), OVERSIZE_PAD, text.slice(cut + 1..))
        }
        _ => ScriptedBody::full(text),
    };
    let mut r = Response::new(body);
    let content_type = match fault {
        Some(Fault::WrongContentType) => "text/html; charset=utf-8",
        _ => "application/json",
    };
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if matches!(fault, Some(Fault::ResetMidBody | Fault::TruncatedBody)) {
        // The whole length, of which only half will come.
        r.headers_mut().insert(CONTENT_LENGTH, len.into());
    }
    state
        .ledger
        .lock()
        .answer(seq, 200, kib, fault.as_ref(), decoded);
    Ok(r)
}

/// Token, size, rate limit, quota and the fault, decided under one lock so concurrent requests
/// cannot overdraw the quota or both take a fault meant for one.
fn admit(state: &State, headers: &HeaderMap, query: Option<&str>) -> Admission {
    let now = Instant::now();
    // Lock order: gate, then ledger.
    let mut gate = state.gate.lock();
    let token = match gate.limits.authorize(bearer(headers)) {
        Ok(t) => t,
        Err(_) => {
            tracing::debug!("emulator: 401, missing or unknown token");
            return Admission::Refused(401, 0, json_error(401, "missing or invalid token"));
        }
    };
    let Ok(kib) = kib_param(query) else {
        return Admission::Refused(
            400,
            0,
            json_error(400, "size must be an integer from 1 to 512"),
        );
    };
    let bytes = u64::from(kib) * BLOCK as u64;
    match gate.limits.admit(token, bytes, now) {
        Ok(()) => {}
        Err(Refusal::RateLimited { retry_after_secs }) => {
            let mut r = json_error(429, "too many requests");
            r.headers_mut().insert(RETRY_AFTER, retry_after_secs.into());
            return Admission::Refused(429, kib, r);
        }
        Err(Refusal::QuotaExhausted) => {
            return Admission::Refused(403, kib, json_error(403, "quota exhausted"));
        }
        Err(Refusal::Unauthorized) => {
            return Admission::Refused(401, 0, json_error(401, "missing or invalid token"));
        }
    }
    // A repeat needs an earlier block: with none anywhere, the fault waits for a later request.
    // Taken here, under the gate's lock, so two requests never count on the same block.
    let old_block = match gate.fault.peek() {
        Some(Fault::OldBlock { age_mib, .. }) => state.ledger.lock().take_old_block(*age_mib),
        Some(Fault::OldWindow { age_kib, shift }) => {
            state
                .ledger
                .lock()
                .old_window(*age_kib, *shift, kib as usize * BLOCK)
        }
        _ => None,
    };
    let cannot_repeat = match gate.fault.peek() {
        Some(Fault::RepeatBlock) => kib < 2 && !state.ledger.lock().has_recent(),
        Some(Fault::ShiftedReplay) => !state.ledger.lock().has_recent(),
        Some(Fault::OldBlock { .. } | Fault::OldWindow { .. }) => old_block.is_none(),
        _ => false,
    };
    let fault = if cannot_repeat {
        None
    } else {
        gate.fault.take()
    };
    if matches!(
        fault,
        Some(
            Fault::Status(_)
                | Fault::TooManyRequests { .. }
                | Fault::TooManyRequestsText { .. }
                | Fault::DropConnection
        )
    ) {
        // No entropy goes out, so none is charged.
        gate.limits.refund(token, bytes);
    }
    Admission::Served(kib, fault, old_block)
}

/// The body text for `kib` fresh blocks with `fault` applied (one of the faults that sends a
/// 200), and the decoded bytes of the blocks it holds.
fn build(kib: u32, fault: Option<&Fault>, repeat_source: Option<Vec<u8>>) -> (String, Vec<u8>) {
    let n = kib as usize;
    let mut flat = vec![0u8; n * BLOCK];
    if fault != Some(&Fault::AllZeroBlocks) {
        // A userspace ChaCha seeded from the OS: fast enough that the emulator is not what a
        // benchmark measures. (Not quantum entropy either way.)
        rand::thread_rng().fill_bytes(&mut flat);
    }
    let last = (n - 1) * BLOCK;
    if fault == Some(&Fault::RepeatBlock) {
        match &repeat_source {
            Some(old) if old.len() == BLOCK => flat[last..].copy_from_slice(old),
            _ if n >= 2 => flat.copy_within(..BLOCK, last),
            _ => {}
        }
    }
    if fault == Some(&Fault::Progression) {
        for block in flat.chunks_mut(BLOCK) {
            let (step, offset) = (block[0] | 1, block[1]);
            for (i, b) in block.iter_mut().enumerate() {
                *b = offset.wrapping_add(step.wrapping_mul(i as u8));
            }
        }
    }
    if fault == Some(&Fault::ShiftedReplay) {
        if let Some(old) = repeat_source.as_deref().filter(|o| o.len() > 1) {
            let n = (old.len() - 1).min(flat.len());
            flat[..n].copy_from_slice(&old[1..=n]);
        }
    }
    if let Some(&Fault::OldBlock { shift, .. }) = fault {
        if let Some(old) = repeat_source.as_deref().filter(|o| o.len() == BLOCK) {
            let at = last - (shift as usize).min(last);
            flat[at..at + BLOCK].copy_from_slice(old);
        }
    }
    if let Some(Fault::OldWindow { .. }) = fault {
        if let Some(old) = repeat_source.as_deref() {
            let n = old.len().min(flat.len());
            flat[..n].copy_from_slice(&old[..n]);
        }
    }
    if fault == Some(&Fault::ShortBlock) {
        flat.truncate(last + 1000);
    }
    if fault == Some(&Fault::WrongTypes) {
        let numbers: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let text = format!(
            "{{\"random\": [{}], \"size\": \"{n}\"}}",
            numbers.join(", ")
        );
        return (text, Vec::new());
    }
    let size_field = if fault == Some(&Fault::SizeMismatch) {
        n + 1
    } else {
        n
    };
    let mut text = String::with_capacity(n * (BLOCK * 4 / 3 + 8) + 32);
    text.push_str("{\"random\": [");
    for (i, block) in flat.chunks(BLOCK).enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push('"');
        let start = text.len();
        let mut encoded = [0u8; qrypt_api::BLOCK_B64_LEN];
        text.push_str(
            base64_simd::STANDARD.encode_as_str(block, base64_simd::Out::from_slice(&mut encoded)),
        );
        if fault == Some(&Fault::NonBase64) && i == n - 1 {
            // Same length, one character outside the alphabet.
            text.replace_range(start + 10..start + 11, "*");
        }
        text.push('"');
    }
    text.push_str(&format!("], \"size\": {size_field}}}"));
    if fault == Some(&Fault::MalformedJson) {
        text.truncate(text.len() / 2);
    }
    (text, flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_param() {
        assert_eq!(kib_param(None), Ok(1));
        assert_eq!(kib_param(Some("")), Ok(1));
        assert_eq!(kib_param(Some("x=1")), Ok(1));
        assert_eq!(kib_param(Some("size=512")), Ok(512));
        assert_eq!(kib_param(Some("a=b&size=007")), Ok(7));
        for bad in [
            "size=0", "size=513", "size=", "size", "size=+5", "size=-1", "size=1.0",
        ] {
            assert_eq!(kib_param(Some(bad)), Err(()), "{bad}");
        }
    }

    #[test]
    fn bearer_tokens() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(AUTHORIZATION, HeaderValue::from_str(v).expect("header"));
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn bodies() {
        let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t);
        let (t, d) = build(3, None, None);
        let v = parse(&t).expect("json");
        assert_eq!(v["size"], 3);
        assert_eq!(d.len(), 3 * BLOCK);
        let (t, _) = build(3, Some(&Fault::SizeMismatch), None);
        assert_eq!(parse(&t).expect("json")["size"], 4);
        assert!(parse(&build(3, Some(&Fault::MalformedJson), None).0).is_err());
        let (_, d) = build(2, Some(&Fault::ShortBlock), None);
        assert_eq!(d.len(), BLOCK + 1000);
        let (_, d) = build(2, Some(&Fault::RepeatBlock), None);
        assert_eq!(d[..BLOCK], d[BLOCK..]);
        let (_, d) = build(2, Some(&Fault::RepeatBlock), Some(vec![7; BLOCK]));
        assert_eq!(d[BLOCK..], [7; BLOCK]);
        let (_, d) = build(2, Some(&Fault::Progression), None);
        let step = d[1].wrapping_sub(d[0]);
        assert!(
            d[..BLOCK]
                .windows(2)
                .all(|w| w[1].wrapping_sub(w[0]) == step)
        );
        let old: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8).collect();
        let (_, d) = build(4, Some(&Fault::ShiftedReplay), Some(old.clone()));
        assert_eq!(d[..3 * BLOCK - 1], old[1..]);
    }
}
