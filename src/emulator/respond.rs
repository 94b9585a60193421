//! The entropy endpoint: authentication, parameters, rate limit, quota, faults, the body.
use std::io;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use rand::RngCore;

use super::body::ScriptedBody;
use super::{Fault, ResponseRecord, Shared, State};

/// Good blocks remembered for `RepeatBlock`.
const RECENT_BLOCKS: usize = 16;
const OVERSIZE_PAD: usize = 64 << 20;

pub type Reply = Result<Response<ScriptedBody>, io::Error>;

pub fn json_error(status: u16, message: &str) -> Response<ScriptedBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Response::new(ScriptedBody::full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn size_param(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("size="))
}

fn encode_body(blocks: &[Vec<u8>], size: &str) -> String {
    let strings: Vec<String> = blocks
        .iter()
        .map(|b| format!("\"{}\"", STANDARD.encode(b)))
        .collect();
    format!("{{\"random\": [{}], \"size\": {size}}}", strings.join(", "))
}

impl Shared {
    fn take_fault(&mut self) -> Option<Fault> {
        let (fault, times) = self.fault.take()?;
        match times {
            None => self.fault = Some((fault.clone(), None)),
            Some(n) if n > 1 => self.fault = Some((fault.clone(), Some(n - 1))),
            _ => {}
        }
        Some(fault)
    }

    fn finish(
        &mut self,
        record: bool,
        seq: u64,
        status: u16,
        kib: u32,
        fault: Option<&Fault>,
        blocks: Vec<u8>,
    ) {
        *self.stats.by_status.entry(status).or_default() += 1;
        if status == 200 && fault.is_none() {
            self.stats.good_bytes += blocks.len() as u64;
        }
        if record {
            self.records.push(ResponseRecord {
                seq,
                status,
                kib,
                fault: fault.map(|f| f.name().to_owned()),
                blocks,
                at: Instant::now(),
            });
        }
    }
}

/// What the locked part decided: a finished answer, or a body to send (with its fault).
enum Prepared {
    Done(Reply),
    Body(Bytes, Option<Fault>),
}

pub async fn entropy(state: &State, req: &hyper::Request<hyper::body::Incoming>) -> Reply {
    // The lock is taken and released in a plain function, never across an await.
    let (data, fault) = match prepare(state, req) {
        Prepared::Done(reply) => return reply,
        Prepared::Body(data, fault) => (data, fault),
    };
    let len = data.len();
    let body = match &fault {
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(*d).await;
            ScriptedBody::full(data)
        }
        Some(Fault::ResetMidBody) => ScriptedBody::reset_after_half(data),
        Some(Fault::TruncatedBody) => ScriptedBody::truncated(data),
        Some(Fault::SlowDrip { bytes_per_sec }) => ScriptedBody::drip(data, *bytes_per_sec),
        Some(Fault::OversizedBody) => ScriptedBody::padded(data, OVERSIZE_PAD),
        _ => ScriptedBody::full(data),
    };
    let mut r = Response::new(body);
    let content_type = if fault == Some(Fault::WrongContentType) {
        "text/html"
    } else {
        "application/json"
    };
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if matches!(fault, Some(Fault::ResetMidBody | Fault::TruncatedBody)) {
        r.headers_mut().insert(CONTENT_LENGTH, len.into());
    }
    Ok(r)
}

fn prepare(state: &State, req: &hyper::Request<hyper::body::Incoming>) -> Prepared {
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let size = size_param(req.uri().query()).map(str::to_owned);
    let now = Instant::now();

    let mut s = state.shared.lock();
    s.stats.total_requests += 1;
    s.seq += 1;
    let seq = s.seq;
    let Some(token) = token.filter(|t| s.tokens.contains(t)) else {
        s.finish(state.record, seq, 401, 0, None, Vec::new());
        return Prepared::Done(Ok(json_error(401, "invalid or missing token")));
    };
    let kib = match size.as_deref().map(str::parse::<u32>) {
        None => 1,
        Some(Ok(n)) if (1..=512).contains(&n) => n,
        Some(_) => {
            s.finish(state.record, seq, 400, 0, None, Vec::new());
            return Prepared::Done(Ok(json_error(400, "size must be an integer from 1 to 512")));
        }
    };
    if let Some(rl) = s.rate_limit {
        let q = s.accepted.entry(token.clone()).or_default();
        while q
            .front()
            .is_some_and(|&t| now.duration_since(t) >= rl.window)
        {
            q.pop_front();
        }
        if q.len() >= rl.requests as usize {
            let wait = q.front().map_or(Duration::ZERO, |&t| {
                (t + rl.window).saturating_duration_since(now)
            });
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            s.finish(state.record, seq, 429, kib, None, Vec::new());
            let mut r = json_error(429, "too many requests");
            r.headers_mut().insert(RETRY_AFTER, secs.into());
            return Prepared::Done(Ok(r));
        }
        q.push_back(now);
    }
    let want = u64::from(kib) * 1024;
    if let Some(quota) = s.quota {
        if s.used.get(&token).copied().unwrap_or(0) + want > quota {
            s.finish(state.record, seq, 403, kib, None, Vec::new());
            return Prepared::Done(Ok(json_error(403, "monthly quota exhausted")));
        }
    }
    let fault = s.take_fault();
    match &fault {
        Some(Fault::Status(code)) => {
            s.finish(state.record, seq, *code, kib, fault.as_ref(), Vec::new());
            return Prepared::Done(Ok(json_error(*code, "emulated failure")));
        }
        Some(Fault::TooManyRequests { retry_after }) => {
            s.finish(state.record, seq, 429, kib, fault.as_ref(), Vec::new());
            let mut r = json_error(429, "too many requests");
            if let Some(secs) = retry_after {
                r.headers_mut().insert(RETRY_AFTER, (*secs).into());
            }
            return Prepared::Done(Ok(r));
        }
        Some(Fault::DropConnection) => {
            s.finish(state.record, seq, 0, kib, fault.as_ref(), Vec::new());
            return Prepared::Done(Err(io::Error::other("emulated dropped connection")));
        }
        _ => {}
    }

    let mut blocks: Vec<Vec<u8>> = (0..kib)
        .map(|_| {
            let mut b = vec![0u8; 1024];
            rand::rngs::OsRng.fill_bytes(&mut b);
            b
        })
        .collect();
    let mut size_text = kib.to_string();
    let mut applied = fault.clone();
    match &fault {
        Some(Fault::AllZeroBlocks) => blocks.iter_mut().for_each(|b| b.fill(0)),
        Some(Fault::ShortBlock) => blocks[0].truncate(1000),
        Some(Fault::SizeMismatch) => size_text = (kib + 1).to_string(),
        Some(Fault::RepeatBlock) => match s.recent.back() {
            Some(old) => blocks[0] = old.clone(),
            None if blocks.len() >= 2 => blocks[0] = blocks[1].clone(),
            None => applied = None,
        },
        _ => {}
    }
    let mut text = encode_body(&blocks, &size_text);
    match &fault {
        Some(Fault::MalformedJson) => text.truncate(text.len() / 2),
        Some(Fault::WrongTypes) => text = "{\"random\": [1, 2, 3], \"size\": \"3\"}".to_owned(),
        Some(Fault::NonBase64) => {
            // Same length, one character outside the alphabet.
            if let Some(p) = text.find("[\"") {
                text.replace_range(p + 12..p + 13, "*");
            }
        }
        _ => {}
    }
    let flat: Vec<u8> = blocks.concat();
    if applied.is_none() {
        s.recent
            .extend(blocks.iter().rev().take(RECENT_BLOCKS).rev().cloned());
        while s.recent.len() > RECENT_BLOCKS {
            s.recent.pop_front();
        }
        *s.used.entry(token).or_default() += want;
    }
    let recorded = if state.record { flat } else { Vec::new() };
    s.finish(state.record, seq, 200, kib, applied.as_ref(), recorded);
    Prepared::Body(Bytes::from(text), fault)
}
