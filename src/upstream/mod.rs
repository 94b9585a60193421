//! The upstream: something that hands out validated entropy in whole KiB.
//!
//! [`EntropyClient`] is the seam between the prefetcher and the network: [`http::HttpClient`]
//! talks to Qrypt (or the emulator); `mock` has in-memory clients for unit tests. [`token`]
//! keeps the secret that authorises each request.
use std::future::Future;
use std::time::Duration;

use token::Token;

pub mod buffers;
pub mod http;
#[cfg(test)]
pub mod mock;
pub mod resolve;
pub mod token;
pub mod validate;

/// The API's per-request limit (KiB) and the bytes in one block of its `random` array.
pub use qrypt_api::{BLOCK_LEN, MAX_KIB_PER_REQUEST};

/// Entropy that passed response validation: `kib * 1024` bytes, wiped on drop.
pub struct Entropy(pub buffers::Buffer);

impl Entropy {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The kinds of failure, each with its own policy in the prefetcher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// A non-200 answer. `retry_after` comes from a 429's `Retry-After`.
    #[error("HTTP {code}{}", retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// Connect failure, reset, TLS error or timeout.
    #[error("transport: {0}")]
    Transport(String),
    /// The resolver answered that the endpoint's host does not exist (NXDOMAIN): a typo at
    /// start; later, perhaps a DNS change, so retried like a transport failure.
    #[error("no such host: {0}")]
    NoSuchHost(String),
    /// The endpoint answered the TLS handshake with something that is not TLS (a plain-HTTP
    /// port): a wrong URL at start, retried like a transport failure later.
    #[error("not TLS: {0}")]
    NotTls(String),
    /// The server's TLS certificate was refused (unknown issuer, wrong name, expired): no
    /// retry will change that, unlike the transport failures above.
    #[error("TLS certificate refused: {0}")]
    Certificate(String),
    /// A 200 whose body breaks the contract.
    #[error("invalid response: {0}")]
    Validation(#[from] validate::ValidationError),
    /// A size the API does not take: refused here, before anything is sent (a bug in the
    /// caller, not an answer from the service, so no HTTP status is made up for it).
    #[error("not sent: {0} KiB is outside the API's 1..=512")]
    SizeOutOfRange(u32),
    /// Bytes that passed validation but failed a health test.
    #[error("health test: {0}")]
    Health(String),
    /// The process that carried the request ended before it answered: nothing was learnt
    /// about the upstream, so the upstream's state does not change.
    #[error("fetcher lost: {0}")]
    FetcherLost(String),
}

impl FetchError {
    /// Short class name for counters and logs.
    pub fn class(&self) -> String {
        match self {
            FetchError::Status { code, .. } => format!("http_{code}"),
            FetchError::Transport(_) => "transport".into(),
            FetchError::Certificate(_) => "tls_certificate".into(),
            FetchError::NoSuchHost(_) => "no_such_host".into(),
            FetchError::NotTls(_) => "not_tls".into(),
            FetchError::Validation(_) => "validation".into(),
            FetchError::Health(_) => "health".into(),
            FetchError::SizeOutOfRange(_) => "size_out_of_range".into(),
            FetchError::FetcherLost(_) => "fetcher_lost".into(),
        }
    }
}

/// A source of validated entropy.
pub trait EntropyClient: Send + Sync + 'static {
    /// Fetches exactly `kib` KiB (1..=512), validated, or fails without returning any of it.
    fn fetch(&self, kib: u32) -> impl Future<Output = Result<Entropy, FetchError>> + Send;

    /// Swaps in a new token (after the token file changed).
    fn replace_token(&self, _token: Token) {}
}
