//! The real client: HTTPS (rustls) to Qrypt's API, or plain HTTP to a loopback emulator.
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use url::Url;
use zeroize::Zeroizing;

use super::buffers::Buffers;
use super::validate::{self, ValidationError};
use super::{BLOCK_LEN, Entropy, EntropyClient, FetchError, MAX_KIB_PER_REQUEST};
use crate::upstream::token::Token;

/// The entropy path, which qrypt-fs adds to the base URL.
const API_PATH: &str = qrypt_api::ENTROPY_PATH;

pub const DEFAULT_ENDPOINT: &str = "https://api-eus.qrypt.com";

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub endpoint: Url,
    pub extra_ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    /// Whole-request limit, body included: a slow-dripping server cannot hold a request forever.
    pub request_timeout: Duration,
    /// Idle connections kept for reuse at most: the requests in flight at once. (hyper keeps
    /// the connection a new request opened while it waited for one to come back, if that one
    /// came back first; without a cap those would be kept too.)
    pub max_idle_connections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("endpoint {0:?} is not a valid URL: {1}")]
    BadUrl(String, url::ParseError),
    #[error(
        "endpoint {0} uses plain http:// to a host that is not loopback; the token would cross \
         the network in clear text (use https://)"
    )]
    Cleartext(String),
    #[error(
        "endpoint {given} has an unknown scheme: use https:// (or http:// to a loopback \
         address), e.g. {suggestion}"
    )]
    Scheme { given: String, suggestion: String },
    #[error(
        "endpoint {0} carries credentials (user:password@): refused. They would be sent \
         besides the token; the token comes only from QRYPT_TOKEN or --token-file"
    )]
    Credentials(String),
    #[error("endpoint {0:?} has no scheme: add https:// (https://{0})")]
    NoScheme(String),
    #[error(
        "endpoint {given} is not a base URL: give {base} (qrypt-fs adds {API_PATH} itself), \
         e.g. {DEFAULT_ENDPOINT}"
    )]
    NotBase { given: String, base: String },
    #[error("CA certificate {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("HTTP client: {0}")]
    Client(String),
}

/// Parses an endpoint and enforces: no credentials (`user:password@`), a base URL (scheme,
/// host, port; no path, query or fragment: the API path is ours to add), https, or http only
/// to loopback. Every message quotes the text through [`mask_credentials`].
pub fn parse_endpoint(text: &str) -> Result<Url, ConfigError> {
    let shown = || mask_credentials(text);
    // An at-sign anywhere: a base URL has none (no path, and none in a host), so it can only
    // be a userinfo's end, however the rest is spelt or misspelt. Checked first, so no later
    // message (a missing scheme, a base URL rebuilt from a misparse) can quote what precedes it.
    if userinfo_end(text).is_some() {
        return Err(ConfigError::Credentials(shown()));
    }
    // `host:443` and `localhost:8080` parse as a URL whose scheme is the host name.
    if !text.contains("://") {
        return Err(ConfigError::NoScheme(shown()));
    }
    let url = Url::parse(text).map_err(|e| ConfigError::BadUrl(shown(), e))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::Credentials(shown()));
    }
    // Before the base-URL check: an unknown scheme (`htp://`) parses with an empty path, and
    // the advice must fix the scheme, not echo what was typed.
    if !["https", "http"].contains(&url.scheme()) {
        return Err(ConfigError::Scheme {
            given: shown(),
            suggestion: scheme_fixed(text),
        });
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        let mut base = url.clone();
        base.set_path("");
        base.set_query(None);
        base.set_fragment(None);
        return Err(ConfigError::NotBase {
            given: shown(),
            base: mask_credentials(base.as_str().trim_end_matches('/')),
        });
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        _ => Err(ConfigError::Cleartext(shown())),
    }
}

/// The base URL `text` most likely meant: its host and port under `http://` for a loopback
/// host (an emulator), `https://` for any other.
fn scheme_fixed(text: &str) -> String {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let rest = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let https = format!("https://{rest}");
    match Url::parse(&https) {
        Ok(u) if is_loopback(&u) => format!("http://{rest}"),
        _ => mask_credentials(&https),
    }
}

/// The endpoint as the budget counts it: one string for every spelling of one service.
/// Scheme and host in lower case, a domain's trailing dot dropped, the port always given
/// (`:443` or not), and every loopback name (`localhost`, `127.0.0.0/8`, `::1`) the same
/// host, since they all reach this machine.
pub fn canonical_endpoint(url: &Url) -> String {
    let host = match url.host() {
        _ if is_loopback(url) => "loopback".to_owned(),
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        None => String::new(),
    };
    let port = url
        .port_or_known_default()
        .map_or_else(String::new, |p| format!(":{p}"));
    format!("{}://{host}{port}/", url.scheme().to_ascii_lowercase())
}

/// What may end a userinfo: `@`, its percent-encoding, and the full-width and small forms
/// that a host name's Unicode mapping turns into `@`.
const AT_SIGNS: [&str; 4] = ["@", "%40", "\u{ff20}", "\u{fe6b}"];

/// The length of a leading `scheme://`, if `text` starts with one (RFC 3986: a letter, then
/// letters, digits, `+`, `-`, `.`), else 0: in `user:pass://x@host` the `user:pass` is no
/// scheme, and is masked with the rest.
fn scheme_len(text: &str) -> usize {
    let Some(i) = text.find("://") else {
        return 0;
    };
    let scheme = &text[..i];
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if valid { i + 3 } else { 0 }
}

/// Where a userinfo would start and where its last at-sign is, if the text has one. The
/// last at-sign in the whole text, not the authority's: a password may hold `/`, `?`, `#`
/// or `@`, and masking too much of an endpoint that is refused anyway costs nothing.
fn userinfo_end(text: &str) -> Option<(usize, usize)> {
    let start = scheme_len(text);
    let rest = &text[start..];
    let at = AT_SIGNS.iter().filter_map(|a| rest.rfind(a)).max()?;
    Some((start, start + at))
}

/// An endpoint as any message may quote it (errors, warnings, logs, `/status`): whatever
/// precedes its last at-sign, after a leading `scheme://`, becomes `***`, whether or not the
/// text parses, has a scheme, or percent-encodes its `@`. Control characters are escaped, so
/// a quoted endpoint cannot start a log line of its own.
pub fn mask_credentials(text: &str) -> String {
    let masked = match userinfo_end(text) {
        Some((start, at)) => format!("{}***{}", &text[..start], &text[at..]),
        None => text.to_owned(),
    };
    let mut out = String::with_capacity(masked.len());
    for c in masked.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
        None => false,
    }
}

/// Reads a PEM file of one or more CA certificates.
pub fn read_ca_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| ConfigError::Ca {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let count = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Ca {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?
        .len();
    if count == 0 {
        return Err(ConfigError::Ca {
            path: path.display().to_string(),
            reason: "no PEM certificate in file".into(),
        });
    }
    Ok(pem)
}

fn tls_config(extra_ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ConfigError::Client(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ConfigError::Client(format!("CA certificate rejected: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

pub struct HttpClient {
    client: reqwest::Client,
    url: Url,
    auth: RwLock<HeaderValue>,
    residue: Arc<Residue>,
    /// Body and decode buffers, reused (see [`super::buffers`]).
    buffers: Arc<Buffers>,
    sweeper: std::sync::Once,
}

/// How long an idle connection (and the base64 left in its read buffer, see [`Residue`]) is
/// kept for reuse.
const POOL_IDLE: Duration = Duration::from_secs(10);
/// How often held body buffers are looked at again.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Chunks held at most, one per connection (a few live at once); past that the oldest is let
/// go unwiped, which only a runaway number of connections could cause.
const MAX_HELD: usize = 32;

/// Which connection a chunk came on: its local and remote addresses, unique among live TCP
/// connections. A pair used again belongs to a new connection only after the old one closed
/// and freed its buffer, so the old chunk is ours alone by then and wiped. A response that
/// does not name its connection (a connector that does not say) is held with `None`, apart
/// from every other.
type Connection = (SocketAddr, SocketAddr);

/// Body chunks whose memory hyper still shares, held until we hold the only reference, then
/// wiped whole.
///
/// hyper hands a body over as slices of its connection's read buffer (`Bytes` sharing one
/// allocation), and keeps reading into the rest of that buffer, for this response and the
/// next ones on the connection, until it needs a bigger one. Dropping a slice frees nothing;
/// the buffer is freed, unwiped, when its last holder lets go, and its base64 would stay in
/// the heap. So we hold one chunk per connection, and once the connection has moved to a new
/// buffer or closed, it is the only reference left: we take the whole allocation back
/// (`try_reclaim`) and zero it.
///
/// Why one is enough: buffers only follow one another. Of a response's chunks (in hyper's
/// order), an earlier one that is still shared lies in the buffer hyper reads into, or in
/// one that a later chunk (ours, now or soon held) also lies in; either way a later chunk
/// keeps the buffer for us, so only the last chunk is kept. Between responses on one
/// connection the same holds, but the order we see them in may not be hyper's: hyper hands
/// the connection on once the body is in its channel, so the next response's task can get
/// here first. So a response's last chunk that is ours alone is wiped and leaves the held one
/// alone; only if both are shared is the held one let go, and then they lie in one buffer
/// (hyper's, or one that the other chunk keeps). (Holding both, as a first version did,
/// pinned them to each other: neither was ever ours alone, and the buffers piled up,
/// unwiped.) The response must be dropped first: its headers are slices of the buffer the
/// body may have left. Out of reach of this reasoning: three responses on one connection
/// held in an order that is neither hyper's nor one swap from it, which can cost one
/// buffer's wipe.
///
/// What cannot be reached: the buffer a live connection still reads into (until it moves on,
/// or closes after [`POOL_IDLE`]), and rustls' plaintext buffers under HTTPS.
#[derive(Default)]
struct Residue {
    held: parking_lot::Mutex<std::collections::VecDeque<(Option<Connection>, Bytes)>>,
}

impl Residue {
    /// Takes one response's chunks, in the order received, once the response is dropped.
    fn hold(&self, connection: Option<Connection>, chunks: Vec<Bytes>) {
        // An empty chunk holds no text and may lie in no read buffer (a static one): it must
        // not stand in for the buffer of the chunk before it.
        let mut last = None;
        for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
            if let Some(earlier) = last.replace(chunk) {
                // Ours alone: wiped. Shared: a later chunk keeps its buffer (see above).
                let _ = wipe_whole(earlier);
            }
        }
        let Some(Err(chunk)) = last.map(wipe_whole) else {
            return;
        };
        let mut held = self.held.lock();
        if let Some(i) = connection.and_then(|c| held.iter().position(|(o, _)| *o == Some(c))) {
            if let Some((_, other)) = held.remove(i) {
                // Ours alone: wiped. Shared: in `chunk`'s buffer (see above), let go.
                let _ = wipe_whole(other);
            }
        }
        held.push_back((connection, chunk));
        while held.len() > MAX_HELD {
            held.pop_front();
        }
    }

    /// Wipes every held buffer that is ours alone now.
    fn sweep(&self) {
        let mut held = self.held.lock();
        let still: std::collections::VecDeque<(Option<Connection>, Bytes)> = held
            .drain(..)
            .filter_map(|(o, c)| wipe_whole(c).err().map(|c| (o, c)))
            .collect();
        *held = still;
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.lock().len()
    }
}

/// Zeroes the whole allocation behind `chunk` if no one else references it, and returns it
/// (to be dropped).
fn wipe_whole(chunk: Bytes) -> Result<bytes::BytesMut, Bytes> {
    let mut owned = chunk.try_into_mut()?;
    owned.clear();
    // With nothing in it, a unique BytesMut can move its start back to the start of the
    // allocation; then its capacity covers all of it.
    let _ = owned.try_reclaim(owned.capacity() + 1);
    let all = owned.capacity();
    owned.resize(all, 0);
    zeroize::Zeroize::zeroize(&mut owned[..]);
    Ok(owned)
}

fn bearer(token: &Token) -> HeaderValue {
    let text = Zeroizing::new(format!("Bearer {}", token.expose()));
    // Token::new admits only visible ASCII, which is always a valid header value.
    let mut v = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

impl HttpClient {
    pub fn new(cfg: &HttpConfig, token: &Token) -> Result<HttpClient, ConfigError> {
        let mut url = cfg.endpoint.clone();
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        let url = url
            // Relative, so an endpoint with a path prefix keeps it.
            .join(qrypt_api::ENTROPY_PATH.trim_start_matches('/'))
            .map_err(|e| ConfigError::BadUrl(mask_credentials(cfg.endpoint.as_str()), e))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(cfg.extra_ca_pem.as_deref())?)
            .http1_only()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(cfg.max_idle_connections)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(cfg.endpoint.scheme() == "https")
            .user_agent(concat!("qrypt-fs/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            // Tells a host that does not exist from a resolver that did not answer.
            .dns_resolver(Arc::new(super::resolve::Resolver))
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(HttpClient {
            client,
            url,
            auth: RwLock::new(bearer(token)),
            residue: Arc::default(),
            // Two per request in flight (a body and its decoded bytes), for up to 8 at once.
            buffers: Buffers::new(super::buffers::CAPACITY, 16),
            sweeper: std::sync::Once::new(),
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Reads the body into `body` (which never grows past its capacity, so never leaves a
    /// copy behind), collecting the chunks for [`Residue`].
    async fn read_body(
        resp: &mut reqwest::Response,
        body: &mut Vec<u8>,
        limit: usize,
        chunks: &mut Vec<Bytes>,
    ) -> Result<(), FetchError> {
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > limit {
                chunks.push(chunk);
                return Err(ValidationError::TooLarge(limit).into());
            }
            body.extend_from_slice(&chunk);
            chunks.push(chunk);
        }
        Ok(())
    }

    /// Starts the task that sweeps [`Residue`] while no request runs (once, from inside the
    /// runtime; it ends with the client).
    fn start_sweeper(&self) {
        self.sweeper.call_once(|| {
            let residue = Arc::downgrade(&self.residue);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SWEEP_EVERY).await;
                    match residue.upgrade() {
                        Some(r) => r.sweep(),
                        None => return,
                    }
                }
            });
        });
    }

    async fn fetch_inner(&self, kib: u32) -> Result<Entropy, FetchError> {
        self.start_sweeper();
        if !(1..=MAX_KIB_PER_REQUEST).contains(&kib) {
            return Err(FetchError::SizeOutOfRange(kib));
        }
        let auth = self.auth.read().clone();
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("size", &kib.to_string());
        let mut resp = self
            .client
            .get(url)
            .header(ACCEPT, "application/json")
            .header(CACHE_CONTROL, "no-store")
            .header(AUTHORIZATION, auth)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| parse_retry_after(s, std::time::SystemTime::now()));
            return Err(FetchError::Status {
                code: status,
                retry_after,
            });
        }
        validate::check_content_type(
            resp.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        )?;
        let limit = validate::body_limit(kib);
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(ValidationError::TooLarge(limit).into());
        }
        // Read with a cap: a misbehaving server must not make us allocate without bound.
        // Sized once up front: growing would free copies of the body without wiping them.
        let mut body = self.buffers.take(limit);
        let connection = resp
            .extensions()
            .get::<hyper_util::client::legacy::connect::HttpInfo>()
            .map(|info| (info.local_addr(), info.remote_addr()));
        let mut chunks = Vec::new();
        let read = Self::read_body(&mut resp, &mut body, limit, &mut chunks).await;
        // Dropped first: its headers are slices of the read buffer too (see `Residue`).
        drop(resp);
        self.residue.hold(connection, chunks);
        self.residue.sweep();
        read?;
        let mut out = self.buffers.take(kib as usize * BLOCK_LEN);
        // `body` (the base64 text) is wiped when it drops, whatever decoding says.
        validate::decode_body(&body, kib, &mut out)?;
        Ok(Entropy(out))
    }
}

fn transport(e: reqwest::Error) -> FetchError {
    if let Some(cert) = rustls_error(&e, is_certificate) {
        return FetchError::Certificate(cert.to_string());
    }
    if let Some(record) = rustls_error(&e, is_not_tls) {
        return FetchError::NotTls(record.to_string());
    }
    if let Some(host) = find_in_chain::<super::resolve::NoSuchHost>(&e) {
        return FetchError::NoSuchHost(host.0.clone());
    }
    // reqwest's Display names the URL (no secret in it) and the cause chain carries the detail.
    let mut msg = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connect failed".to_owned()
    } else if e.is_body() || e.is_decode() {
        "body read failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    FetchError::Transport(msg)
}

fn is_certificate(r: &rustls::Error) -> bool {
    matches!(
        r,
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
    )
}

/// A record header no TLS peer sends: the other end speaks something else (plain HTTP).
fn is_not_tls(r: &rustls::Error) -> bool {
    use rustls::InvalidMessage as M;
    matches!(
        r,
        rustls::Error::InvalidMessage(
            M::InvalidContentType | M::UnknownProtocolVersion | M::MessageTooLarge
        )
    )
}

/// The rustls error somewhere in an error's cause chain that `wanted` picks, if any.
fn rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
    wanted: fn(&rustls::Error) -> bool,
) -> Option<&'a rustls::Error> {
    find_in_chain::<rustls::Error>(e).filter(|r| wanted(r))
}

/// The first error of type `T` somewhere in an error's cause chain, if any. The chain passes
/// through `io::Error`s, whose `source()` skips the error they wrap, so look inside each.
fn find_in_chain<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // An io::Error may wrap another io::Error (hyper-util does), then the one sought.
        let mut inner: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = inner {
            if let Some(found) = e.downcast_ref::<T>() {
                return Some(found);
            }
            inner = e
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .map(|e| e as &(dyn std::error::Error + 'static));
        }
        cur = err.source();
    }
    None
}

impl EntropyClient for HttpClient {
    async fn fetch(&self, kib: u32) -> Result<Entropy, FetchError> {
        self.fetch_inner(kib).await
    }

    fn replace_token(&self, token: Token) {
        *self.auth.write() = bearer(&token);
    }
}

/// `Retry-After` in either form RFC 9110 allows: delay-seconds, or an HTTP-date (a date in
/// the past means "now"). Unparseable: `None`, and the caller backs off on its own.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_one_endpoint_is_one_budget_key() {
        let key = |t: &str| canonical_endpoint(&parse_endpoint(t).expect(t));
        let qrypt = key("https://api-eus.qrypt.com");
        assert_eq!(qrypt, "https://api-eus.qrypt.com:443/");
        for t in [
            "https://api-eus.qrypt.com/",
            "https://API-EUS.Qrypt.com:443/",
            "HTTPS://api-eus.qrypt.com.",
            "https://api-eus.qrypt.com.:443",
        ] {
            assert_eq!(key(t), qrypt, "{t}");
        }
        assert_ne!(key("https://api-eus.qrypt.com:8443"), qrypt);
        assert_ne!(key("https://api-wus.qrypt.com"), qrypt);
        let local = key("http://127.0.0.1:8080");
        assert_eq!(local, "http://loopback:8080/");
        for t in [
            "http://localhost:8080/",
            "http://LOCALHOST:8080",
            "http://127.0.0.2:8080",
            "http://127.1:8080",
            "http://[::1]:8080",
        ] {
            assert_eq!(key(t), local, "{t}");
        }
        assert_ne!(key("http://127.0.0.1:8081"), local);
        assert_ne!(key("https://localhost:8080"), local);
    }

    /// Chunks the way hyper hands them out: slices of one read buffer it keeps using.
    fn hyper_like(text: &[u8]) -> (bytes::BytesMut, Vec<Bytes>) {
        let mut buf = bytes::BytesMut::with_capacity(8192);
        buf.extend_from_slice(text);
        let chunks = (0..3)
            .map(|_| buf.split_to(text.len() / 3).freeze())
            .collect();
        (buf, chunks)
    }

    #[test]
    fn a_body_buffer_is_held_while_shared_then_wiped_whole() {
        let text = b"QUJD".repeat(750);
        let (read_buffer, chunks) = hyper_like(&text);
        let residue = Residue::default();
        residue.hold(None, chunks);
        assert_eq!(residue.held(), 1, "one chunk stands for the buffer");
        residue.sweep();
        assert_eq!(residue.held(), 1, "hyper still uses the buffer");
        drop(read_buffer);
        residue.sweep();
        assert_eq!(residue.held(), 0);
    }

    #[test]
    fn responses_sharing_a_read_buffer_never_pin_it() {
        // Two responses on one connection, one read buffer: the second one's headers lie
        // between the bodies, so their chunks do not touch. Held both, each kept the other
        // alive and the buffer was never wiped.
        let server = SocketAddr::from(([127, 0, 0, 1], 443));
        let conn = Some((SocketAddr::from(([127, 0, 0, 1], 40000)), server));
        let mut read_buffer = bytes::BytesMut::with_capacity(8192);
        read_buffer.extend_from_slice(&b"QUJD".repeat(1000));
        let first = vec![
            read_buffer.split_to(1500).freeze(),
            read_buffer.split_to(500).freeze(),
        ];
        let headers = read_buffer.split_to(100).freeze();
        let second = vec![read_buffer.split_to(1000).freeze()];
        let residue = Residue::default();
        residue.hold(conn, first);
        drop(headers);
        residue.hold(conn, second);
        assert_eq!(residue.held(), 1, "one chunk per connection");
        // An empty chunk (static, in no buffer) must not take the buffer's place.
        residue.hold(conn, vec![Bytes::new()]);
        assert_eq!(residue.held(), 1);
        // Another connection's buffer is held apart.
        let (other_buffer, other) = hyper_like(&b"QUJD".repeat(750));
        residue.hold(
            Some((SocketAddr::from(([127, 0, 0, 1], 40001)), server)),
            other,
        );
        assert_eq!(residue.held(), 2);
        // The connection moves to a new buffer (or closes): ours alone, wiped.
        drop(read_buffer);
        drop(other_buffer);
        residue.sweep();
        assert_eq!(residue.held(), 0, "both buffers wiped and freed");
    }

    #[test]
    fn responses_held_out_of_order_keep_both_buffers_in_reach() {
        // Response 1 ends in buffer X; hyper then moves to buffer Y for response 2, whose
        // task holds its chunks first (hyper handed the connection on before response 1's
        // task got its last chunk).
        let conn = Some((
            SocketAddr::from(([127, 0, 0, 1], 40000)),
            SocketAddr::from(([127, 0, 0, 1], 443)),
        ));
        let mut x = bytes::BytesMut::with_capacity(8192);
        x.extend_from_slice(&b"QUJD".repeat(500));
        let first = vec![x.split_to(2000).freeze()];
        drop(x); // hyper left X for Y
        let mut y = bytes::BytesMut::with_capacity(8192);
        y.extend_from_slice(&b"QUJD".repeat(500));
        let second = vec![y.split_to(1000).freeze(), y.split_to(500).freeze()];
        let residue = Residue::default();
        residue.hold(conn, second);
        assert_eq!(residue.held(), 1, "Y, which hyper reads into, is held");
        residue.hold(conn, first);
        assert_eq!(
            residue.held(),
            1,
            "X was ours alone and wiped; Y still held"
        );
        drop(y);
        residue.sweep();
        assert_eq!(residue.held(), 0, "Y wiped once hyper let go");
    }

    #[test]
    fn wiping_covers_the_whole_allocation() {
        let text = b"QUJD".repeat(750);
        let (read_buffer, mut chunks) = hyper_like(&text);
        drop(read_buffer);
        let last = chunks.pop().expect("3 chunks");
        assert!(
            wipe_whole(last.clone()).is_err(),
            "shared with the other chunks"
        );
        chunks.clear();
        let wiped = wipe_whole(last).expect("ours alone now");
        // All 8192 bytes, the other chunks' text and the unused rest included.
        assert_eq!(wiped.len(), 8192);
        assert!(wiped.iter().all(|&b| b == 0));
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = httpdate::parse_http_date("Sun, 29 Nov 2026 05:00:00 GMT").expect("date");
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 05:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 04:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn endpoint_rules() {
        assert!(parse_endpoint("https://api-eus.qrypt.com").is_ok());
        assert!(parse_endpoint("http://127.0.0.1:8080").is_ok());
        assert!(parse_endpoint("http://[::1]:8080").is_ok());
        assert!(parse_endpoint("http://localhost:1").is_ok());
        assert!(matches!(
            parse_endpoint("http://api-eus.qrypt.com"),
            Err(ConfigError::Cleartext(_))
        ));
        assert!(matches!(
            parse_endpoint("http://10.0.0.1"),
            Err(ConfigError::Cleartext(_))
        ));
        assert!(matches!(
            parse_endpoint("ftp://x"),
            Err(ConfigError::Scheme { .. })
        ));
        assert!(parse_endpoint("not a url").is_err());
        assert!(parse_endpoint("https://api-eus.qrypt.com/").is_ok());
    }

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, cert));
        assert!(rustls_error(&io, is_certificate).is_some());
        let other = io::Error::other(rustls::Error::DecryptError);
        assert!(rustls_error(&other, is_certificate).is_none());
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(rustls_error(&refused, is_certificate).is_none());
    }

    #[test]
    fn a_peer_that_does_not_speak_tls_is_told_from_a_broken_handshake() {
        let http = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let io = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, http));
        assert!(rustls_error(&io, is_not_tls).is_some());
        let other = io::Error::other(rustls::Error::DecryptError);
        assert!(rustls_error(&other, is_not_tls).is_none());
    }

    #[test]
    fn an_unknown_scheme_is_named_and_fixed_not_echoed() {
        assert_eq!(
            parse_endpoint("htp://127.0.0.1:42073")
                .expect_err("htp")
                .to_string(),
            "endpoint htp://127.0.0.1:42073 has an unknown scheme: use https:// (or http:// to \
             a loopback address), e.g. http://127.0.0.1:42073"
        );
        assert_eq!(
            parse_endpoint("htps://api-eus.qrypt.com/x")
                .expect_err("htps")
                .to_string(),
            "endpoint htps://api-eus.qrypt.com/x has an unknown scheme: use https:// (or \
             http:// to a loopback address), e.g. https://api-eus.qrypt.com"
        );
    }

    #[test]
    fn endpoint_without_a_scheme_is_told_to_add_one() {
        for text in [
            "api-eus.qrypt.com",
            "api-eus.qrypt.com:443",
            "localhost:8080",
        ] {
            let e = parse_endpoint(text).expect_err(text).to_string();
            assert_eq!(
                e,
                format!("endpoint {text:?} has no scheme: add https:// (https://{text})")
            );
        }
    }

    #[test]
    fn endpoint_must_be_the_base_url() {
        for (text, base) in [
            (
                "https://api-eus.qrypt.com/api/v1/quantum-entropy",
                "https://api-eus.qrypt.com",
            ),
            (
                "https://api-eus.qrypt.com/?size=4",
                "https://api-eus.qrypt.com",
            ),
            ("https://h.example:8443/prefix", "https://h.example:8443"),
            ("https://h.example/#x", "https://h.example"),
        ] {
            let e = parse_endpoint(text).expect_err(text).to_string();
            assert_eq!(
                e,
                format!(
                    "endpoint {text} is not a base URL: give {base} (qrypt-fs adds \
                     /api/v1/quantum-entropy itself), e.g. https://api-eus.qrypt.com"
                )
            );
        }
    }

    #[test]
    fn endpoint_credentials_are_refused_and_never_shown() {
        for url in [
            "https://user:s3cret@api.example",
            "https://user@api.example/",
            "https://:s3cret@api.example",
            "http://u:s3cret@10.0.0.1",
        ] {
            let e = parse_endpoint(url).expect_err(url).to_string();
            assert!(e.contains("credentials") && e.contains("***@"), "{e}");
            assert!(!e.contains("s3cret") && !e.contains("user@"), "{e}");
        }
        let e = parse_endpoint("https://u:s3cret@host:99999").expect_err("bad port");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        for url in ["https://api.example/?key=1", "https://api.example/#x"] {
            assert!(matches!(
                parse_endpoint(url),
                Err(ConfigError::NotBase { .. })
            ));
        }
    }

    #[test]
    fn credentials_are_masked_in_every_shape() {
        for (text, shown) in [
            ("user:s3cret@api.example", "***@api.example"),
            ("https://user:s3cret@api.example", "https://***@api.example"),
            ("https://user:s3cr@t@api.example", "https://***@api.example"),
            (
                "https://user:s3/cret@api.example",
                "https://***@api.example",
            ),
            (
                "https://user:s3#cret@api.example:99999",
                "https://***@api.example:99999",
            ),
            (
                "https://user:s3cret%40api.example",
                "https://***%40api.example",
            ),
            ("https://us%65r:s3%63ret@h", "https://***@h"),
            ("user:s3cret://x@host", "***@host"),
            (" https://user:s3cret@h", "***@h"),
            ("https://user:s3cret\u{ff20}h", "https://***\u{ff20}h"),
            ("https://h\n@x", "https://***@x"),
            ("https://h\nx", "https://h\\nx"),
            ("https://api.example", "https://api.example"),
            ("", ""),
            ("@", "***@"),
        ] {
            assert_eq!(mask_credentials(text), shown, "{text:?}");
        }
    }

    #[test]
    fn every_refusal_of_an_endpoint_with_credentials_masks_them() {
        for text in [
            "alice:s3cret@api.example",
            "alice:s3cret@api.example:443",
            "alice:s3cret@localhost:8080/path",
            "https://alice:s3cret@api.example/api/v1/quantum-entropy",
            "https://alice:1234/s3cret@api.example",
            "https://alice:s3cret%40api.example/x",
            "ftp://alice:s3cret@x",
            "http://alice:s3cret@10.0.0.1",
            "https://alice:s3cret@[::1",
            "not a url alice:s3cret@",
        ] {
            let e = parse_endpoint(text).expect_err(text).to_string();
            assert!(!e.contains("s3cret") && !e.contains("alice"), "{text}: {e}");
            assert!(e.contains("***"), "{text}: {e}");
        }
    }

    proptest::proptest! {
        /// Whatever the shape around it, a password never reaches a message: with or without
        /// a scheme, `@`, `/`, `?`, `#`, `%` and non-ASCII in user and password, a port, a
        /// path, junk after the host.
        #[test]
        fn a_password_never_survives_masking(
            scheme in "(|https://|http://|ftp://|HTTPS://|x+y.z-1://)",
            user in "[ -)+-~\u{e9}\u{ff20}]{0,12}",
            password in "[ -)+-~\u{e9}\u{ff20}\u{7f}]{4,24}",
            host in "[a-z0-9.-]{0,20}(:[0-9]{1,6})?",
            rest in "(/[ -~]{0,12})?",
        ) {
            // Shapes in which the password is not a password: without a scheme, one that
            // starts `//` makes `user` the scheme; and one that the rest repeats is shown by
            // the rest.
            proptest::prop_assume!(!(scheme.is_empty() && password.starts_with("//")));
            let tail = format!("@{host}{rest}");
            proptest::prop_assume!(!tail.contains(&password) && !scheme.contains(&password));
            let text = format!("{scheme}{user}:{password}{tail}");
            let masked = mask_credentials(&text);
            proptest::prop_assert!(!masked.contains(&password), "{text:?} -> {masked:?}");
            if !user.is_empty() && !tail.contains(&user) && !scheme.contains(&user) {
                proptest::prop_assert!(!masked.contains(&user), "{text:?} -> {masked:?}");
            }
            // The refusal quotes it masked; its own words may hold a short password by chance.
            let e = parse_endpoint(&text).expect_err("credentials").to_string();
            let words = ConfigError::Credentials(String::new()).to_string();
            proptest::prop_assert!(e.contains(&masked), "{text:?} -> {e}");
            proptest::prop_assert!(
                !e.contains(&password) || words.contains(&password),
                "{text:?} -> {e}"
            );
        }
    }

    #[test]
    fn api_url_joins_path() {
        let token = Token::new("t".into()).expect("token");
        for base in ["https://h.example", "https://h.example/"] {
            let c = HttpClient::new(
                &HttpConfig {
                    endpoint: parse_endpoint(base).expect("url"),
                    extra_ca_pem: None,
                    connect_timeout: Duration::from_secs(1),
                    request_timeout: Duration::from_secs(1),
                    max_idle_connections: 4,
                },
                &token,
            )
            .expect("client");
            assert!(
                c.url().as_str().ends_with("/api/v1/quantum-entropy"),
                "{}",
                c.url()
            );
        }
    }

    #[test]
    fn many_responses_on_reused_connections_hold_one_buffer_each() {
        use crate::upstream::EntropyClient;
        let emu = qrypt_emulator::Emulator::start(Default::default()).expect("emulator");
        let token = Token::new("emulator-token".into()).expect("token");
        let client = Arc::new(
            HttpClient::new(
                &HttpConfig {
                    endpoint: parse_endpoint(&emu.url()).expect("url"),
                    extra_ca_pem: None,
                    connect_timeout: Duration::from_secs(5),
                    request_timeout: Duration::from_secs(10),
                    max_idle_connections: 4,
                },
                &token,
            )
            .expect("client"),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // Sizes mixed so that bodies end at different places of the read buffers.
            for round in 0..40 {
                let tasks: Vec<_> = (0..4)
                    .map(|k| {
                        let client = client.clone();
                        let kib = [512, 300, 64, 17][(k + round) % 4];
                        tokio::spawn(async move { client.fetch(kib).await.map(drop) })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("join").expect("fetch");
                }
                client.residue.sweep();
                let connections = emu.stats().connections;
                assert!(
                    client.residue.held() as u64 <= connections,
                    "round {round}: {} chunks held for {connections} live connections",
                    client.residue.held()
                );
            }
        });
    }
}
