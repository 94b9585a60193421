//! The fetcher process: the only one that talks to the network. It gets everything it needs
//! (endpoint, timeouts, token, CA certificates) in the channel's hello, opens no file, and
//! answers each fetch request with the HTTP client's outcome.
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use zeroize::Zeroizing;

use super::protocol::{self, Failure, FailureKind, HEADER_LEN, Hello, Kind, ProtocolError};
use crate::upstream::http::{HttpClient, HttpConfig, parse_endpoint};
use crate::upstream::token::Token;
use crate::upstream::{EntropyClient, FetchError};

/// Runs a fetcher on `channel` until the server closes it; returns the process's exit code.
/// Called in a freshly forked, single-threaded child that holds no other descriptor.
///
/// The hello is read first (it comes from the server, and the sandbox needs the endpoint's
/// port); then the sandbox closes, before the first byte from the network is read.
pub fn main(channel: OwnedFd) -> i32 {
    let mut stream = std::os::unix::net::UnixStream::from(channel);
    let hello = match read_hello(&mut stream) {
        Ok(h) => h,
        Err(e) => return report_fatal(stream, &format!("hello: {e}")),
    };
    let port = match parse_endpoint(&hello.endpoint)
        .ok()
        .and_then(|u| u.port_or_known_default())
    {
        Some(p) => p,
        None => return report_fatal(stream, "hello: an endpoint without a port"),
    };
    let report = match super::sandbox_fetcher(port) {
        Ok(r) => r,
        Err(e) => return report_fatal(stream, &format!("sandbox: {e}")),
    };
    // Two workers: responses in flight are decoded and validated on both cores, as they were
    // in one process (threads started now inherit the sandbox).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("qrypt-fetch")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return report_fatal(stream, &format!("runtime: {e}")),
    };
    match runtime.block_on(serve(stream, hello, report)) {
        Ok(()) => 0,
        Err(_) => 3,
    }
}

/// Reads the hello, blocking (no runtime yet).
fn read_hello(stream: &mut std::os::unix::net::UnixStream) -> std::io::Result<Hello> {
    use std::io::Read;
    let mut head = [0u8; HEADER_LEN];
    stream.read_exact(&mut head)?;
    let h = protocol::parse_header(&head).map_err(invalid)?;
    if h.kind != Kind::Hello {
        return Err(invalid(ProtocolError::Unexpected(h.kind)));
    }
    let mut payload = Zeroizing::new(vec![0u8; h.len]);
    stream.read_exact(&mut payload)?;
    Hello::decode(&payload).map_err(invalid)
}

/// Tells the server why this fetcher cannot work, synchronously (no runtime needed).
fn report_fatal(mut stream: std::os::unix::net::UnixStream, message: &str) -> i32 {
    use std::io::Write;
    let _ = stream.write_all(&protocol::fatal(message));
    2
}

/// Reads one frame's header, checked; `None` at the channel's end.
pub async fn read_header<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<protocol::Header>> {
    let mut head = [0u8; HEADER_LEN];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    protocol::parse_header(&head).map(Some).map_err(invalid)
}

/// Reads one frame: its checked header, then its payload into a wiped buffer.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(Kind, Zeroizing<Vec<u8>>)>> {
    let Some(h) = read_header(r).await? else {
        return Ok(None);
    };
    let mut payload = Zeroizing::new(vec![0u8; h.len]);
    r.read_exact(&mut payload).await?;
    Ok(Some((h.kind, payload)))
}

pub fn invalid(e: ProtocolError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

async fn serve(
    stream: std::os::unix::net::UnixStream,
    hello: Hello,
    sandbox: String,
) -> std::io::Result<()> {
    stream.set_nonblocking(true)?;
    let (mut rd, mut wr) = tokio::net::UnixStream::from_std(stream)?.into_split();
    let client = match client(&hello) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            wr.write_all(&protocol::fatal(&e)).await?;
            return Err(std::io::Error::other(e));
        }
    };
    drop(hello);
    wr.write_all(&protocol::text(Kind::Ready, &sandbox)).await?;
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    while let Some((kind, payload)) = read_frame(&mut rd).await? {
        match kind {
            Kind::Fetch => {
                let (id, kib) = protocol::decode_fetch(&payload).map_err(invalid)?;
                let (client, wr) = (client.clone(), wr.clone());
                tokio::spawn(async move {
                    let result = client.fetch(kib).await;
                    // A write that fails means the server is gone: the read loop ends too.
                    let _ = answer(&wr, id, result).await;
                });
            }
            Kind::Token => {
                let text = String::from_utf8(payload.to_vec())
                    .map_err(|_| invalid(ProtocolError::Malformed(Kind::Token)))?;
                let token =
                    Token::new(text).map_err(|_| invalid(ProtocolError::Malformed(Kind::Token)))?;
                client.replace_token(token);
            }
            other => return Err(invalid(ProtocolError::Unexpected(other))),
        }
    }
    Ok(())
}

/// The HTTP client the hello describes.
fn client(hello: &Hello) -> Result<HttpClient, String> {
    let endpoint = parse_endpoint(&hello.endpoint).map_err(|e| e.to_string())?;
    let text = String::from_utf8(hello.token.to_vec()).map_err(|_| "token is not UTF-8")?;
    let token = Token::new(text).map_err(|e| e.to_string())?;
    HttpClient::new(
        &HttpConfig {
            endpoint,
            extra_ca_pem: hello.ca_pem.as_ref().map(|c| c.to_vec()),
            connect_timeout: hello.connect_timeout,
            request_timeout: hello.request_timeout,
            max_idle_connections: usize::from(hello.max_idle_connections),
        },
        &token,
    )
    .map_err(|e| e.to_string())
}

/// Sends one request's outcome: its blocks (straight from the wiped buffer), or its failure.
async fn answer(
    wr: &tokio::sync::Mutex<OwnedWriteHalf>,
    id: u64,
    result: Result<crate::upstream::Entropy, FetchError>,
) -> std::io::Result<()> {
    match result {
        Ok(entropy) => {
            let bytes = entropy.bytes();
            let mut head = [0u8; HEADER_LEN + 8];
            head[..HEADER_LEN].copy_from_slice(&protocol::header(Kind::Blocks, 8 + bytes.len()));
            head[HEADER_LEN..].copy_from_slice(&id.to_le_bytes());
            let mut w = wr.lock().await;
            w.write_all(&head).await?;
            w.write_all(bytes).await
        }
        Err(e) => {
            let (kind, code, retry_after) = match &e {
                FetchError::Status { code, retry_after } => {
                    (FailureKind::Status, *code, *retry_after)
                }
                FetchError::Certificate(_) => (FailureKind::Certificate, 0, None),
                FetchError::Validation(_) => (FailureKind::Validation, 0, None),
                FetchError::SizeOutOfRange(_) => (FailureKind::SizeOutOfRange, 0, None),
                FetchError::NoSuchHost(_) => (FailureKind::NoSuchHost, 0, None),
                FetchError::NotTls(_) => (FailureKind::NotTls, 0, None),
                FetchError::Transport(_) | FetchError::Health(_) | FetchError::FetcherLost(_) => {
                    (FailureKind::Transport, 0, None)
                }
            };
            // The inner text: the server wraps it in the same error kind again.
            let message = match &e {
                FetchError::Transport(m)
                | FetchError::Certificate(m)
                | FetchError::NoSuchHost(m)
                | FetchError::NotTls(m) => m.clone(),
                FetchError::Validation(v) => v.to_string(),
                other => other.to_string(),
            };
            let frame = Failure {
                id,
                kind,
                code,
                retry_after,
                message,
            }
            .encode();
            wr.lock().await.write_all(&frame).await
        }
    }
}
