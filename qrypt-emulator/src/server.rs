//! Accepting connections (optionally TLS), counting them, and routing each request to the API,
//! the admin API or a 404.
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::State;
use super::admin;
use super::respond::{self, Reply, json_error};

pub(super) use qrypt_api::ENTROPY_PATH;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!("emulator: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = state.connections.enter();
            // A duplicate of the socket, for the reset fault's SO_LINGER (hyper owns the
            // stream); it lives as long as the connection's service.
            let fd = stream.as_fd().try_clone_to_owned().ok().map(Arc::new);
            let service = service_fn(move |req| {
                let state = state.clone();
                let fd = fd.clone();
                async move { route(&state, req, fd).await }
            });
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).keep_alive(true);
            let served = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => builder.serve_connection(TokioIo::new(s), service).await,
                        Ok(Err(e)) => {
                            tracing::debug!("emulator: TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = served {
                // Expected for the connection faults; anything else is the client's doing.
                tracing::debug!("emulator: connection ended: {e}");
            }
        });
    }
}

async fn route(state: &Arc<State>, req: Request<Incoming>, fd: Option<Arc<OwnedFd>>) -> Reply {
    if req.uri().path().starts_with(admin::PREFIX) {
        return Ok(admin::handle(state, req).await);
    }
    let guard = state.in_flight.enter();
    let seq = state.ledger.lock().arrive(req.headers());
    let reply = if req.uri().path() != ENTROPY_PATH {
        state.ledger.lock().answer(seq, 404, 0, None, Vec::new());
        Ok(json_error(404, "not found"))
    } else if req.method() != Method::GET {
        state.ledger.lock().answer(seq, 405, 0, None, Vec::new());
        let mut r = json_error(405, "method not allowed");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        Ok(r)
    } else {
        respond::entropy(state, req.headers(), req.uri().query(), seq, fd).await
    };
    // The request stays in flight until hyper is done with its body.
    reply.map(|r| r.map(|body| body.with_guard(guard)))
}
