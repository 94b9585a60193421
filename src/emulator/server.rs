//! Accepting connections (optionally TLS) and routing requests.
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::body::ScriptedBody;
use super::respond::{self, Reply, json_error};
use super::{Fault, State};

pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { route(&state, req).await }
            });
            let builder = http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(s), service).await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

async fn route(state: &State, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/api/v1/quantum-entropy") => {
            let n = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            {
                let mut s = state.shared.lock();
                s.stats.max_in_flight = s.stats.max_in_flight.max(n);
            }
            let r = respond::entropy(state, &req).await;
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            r
        }
        (_, "/api/v1/quantum-entropy") => Ok(json_error(405, "method not allowed")),
        (_, p) if p.starts_with("/_emulator/") => Ok(admin(state, req).await),
        _ => Ok(json_error(404, "not found")),
    }
}

fn ok_json(v: serde_json::Value) -> Response<ScriptedBody> {
    let mut r = Response::new(ScriptedBody::full(v.to_string()));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn admin(state: &State, req: Request<Incoming>) -> Response<ScriptedBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_error(400, "unreadable body"),
    };
    let json = || -> Result<serde_json::Value, Box<Response<ScriptedBody>>> {
        serde_json::from_slice(&body).map_err(|e| Box::new(json_error(400, &e.to_string())))
    };
    match (method, path.as_str()) {
        (Method::GET, "/_emulator/stats") => {
            let mut s = state.shared.lock().stats.clone();
            s.max_in_flight = s.max_in_flight.max(state.in_flight.load(Ordering::SeqCst));
            ok_json(serde_json::to_value(s).unwrap_or_default())
        }
        (Method::POST, "/_emulator/fault") => match json().map(|v| (Fault::from_json(&v), v)) {
            Ok((Ok(fault), v)) => {
                let times = v["times"]
                    .as_u64()
                    .map(|n| n.min(u64::from(u32::MAX)) as u32);
                state.shared.lock().fault = fault.map(|f| (f, times));
                ok_json(serde_json::json!({"ok": true}))
            }
            Ok((Err(e), _)) => json_error(400, &e),
            Err(r) => *r,
        },
        (Method::POST, "/_emulator/tokens") => match json() {
            Ok(v) => match v["tokens"].as_array() {
                Some(list) => {
                    state.shared.lock().tokens = list
                        .iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect();
                    ok_json(serde_json::json!({"ok": true}))
                }
                None => json_error(400, "expected {\"tokens\": [...]}"),
            },
            Err(r) => *r,
        },
        (Method::POST, "/_emulator/quota") => match json() {
            Ok(v) => {
                let mut s = state.shared.lock();
                s.quota = v["bytes"].as_u64();
                s.used.clear();
                ok_json(serde_json::json!({"ok": true}))
            }
            Err(r) => *r,
        },
        _ => json_error(404, "unknown admin endpoint"),
    }
}
