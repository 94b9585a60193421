//! The admin API under `/_emulator/` (see the module docs): faults, tokens, quota, rate limit
//! and stats, for scripts. No authentication: it is a loopback test tool.
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::body::ScriptedBody;
use super::fault::Fault;
use super::respond::json_error;
use super::{RateLimit, State};

pub(super) const PREFIX: &str = "/_emulator/";
const MAX_BODY: usize = 64 * 1024;

fn ok_json(v: &Value) -> Response<ScriptedBody> {
    let mut r = Response::new(ScriptedBody::full(v.to_string()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn ok() -> Response<ScriptedBody> {
    ok_json(&json!({"ok": true}))
}

pub(super) async fn handle(state: &State, req: Request<Incoming>) -> Response<ScriptedBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_error(400, "body unreadable or over 64 KiB"),
    };
    let result = match (method, path.strip_prefix(PREFIX).unwrap_or("")) {
        (Method::GET, "stats") => {
            return match serde_json::to_value(state.stats()) {
                Ok(v) => ok_json(&v),
                Err(e) => json_error(500, &e.to_string()),
            };
        }
        (Method::POST, "fault") => parse(&body).and_then(|v| set_fault(state, &v)),
        (Method::POST, "tokens") => parse(&body).and_then(|v| set_tokens(state, &v)),
        (Method::POST, "quota") => parse(&body).and_then(|v| set_quota(state, &v)),
        (Method::POST, "rate_limit") => parse(&body).and_then(|v| set_rate_limit(state, &v)),
        (Method::POST, "reset_records") => {
            state.ledger.lock().reset_records();
            Ok(())
        }
        _ => return json_error(404, "unknown admin endpoint"),
    };
    match result {
        Ok(()) => ok(),
        Err(e) => json_error(400, &e),
    }
}

fn parse(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))
}

/// `{"fault": NAME, ..., "times": N}`.
fn set_fault(state: &State, v: &Value) -> Result<(), String> {
    let fault = Fault::from_json(v)?;
    let times = match v.get("times") {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("\"times\" must be a non-negative integer")?,
        ),
    };
    state.gate.lock().fault.set(fault, times);
    Ok(())
}

/// `{"tokens": ["a", "b"]}`.
fn set_tokens(state: &State, v: &Value) -> Result<(), String> {
    let tokens = v
        .get("tokens")
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or("expected {\"tokens\": [\"...\", ...]}")?;
    state.gate.lock().limits.set_tokens(tokens);
    Ok(())
}

/// `{"bytes": N}` or `{"bytes": null}` (unlimited); usage starts over.
fn set_quota(state: &State, v: &Value) -> Result<(), String> {
    let quota = match v.get("bytes") {
        Some(Value::Null) => None,
        Some(b) => Some(
            b.as_u64()
                .ok_or("\"bytes\" must be a non-negative integer")?,
        ),
        None => return Err("expected {\"bytes\": N or null}".into()),
    };
    state.gate.lock().limits.set_quota(quota);
    Ok(())
}

/// `{"requests": R, "window_secs": W}` or `{"requests": null}` (off); windows start over.
fn set_rate_limit(state: &State, v: &Value) -> Result<(), String> {
    let rl = match v.get("requests") {
        Some(Value::Null) => None,
        Some(r) => {
            let requests = r
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or("\"requests\" must be a positive integer")?;
            let secs = v
                .get("window_secs")
                .and_then(Value::as_f64)
                .ok_or("\"window_secs\" must be a number")?;
            Some(
                RateLimit::new(requests, secs)
                    .ok_or("\"window_secs\" must be > 0 and at most 86400")?,
            )
        }
        None => {
            return Err(
                "expected {\"requests\": R, \"window_secs\": W} or {\"requests\": null}".into(),
            );
        }
    };
    state.gate.lock().limits.set_rate_limit(rl);
    Ok(())
}
