//! What an emulator starts with: address, tokens, rate limit, quota, TLS, recording.
use std::net::SocketAddr;

use qrypt_api::RateLimit;

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free one (see [`super::Emulator::addr`]).
    pub bind: SocketAddr,
    /// Accepted bearer tokens.
    pub tokens: Vec<String>,
    /// Per-token limit answered with 429 and `Retry-After`; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// Bytes each token may fetch before it gets 403; `None`: unlimited.
    pub quota_bytes: Option<u64>,
    /// HTTPS with a freshly generated CA and a leaf for `localhost`, 127.0.0.1 and ::1.
    pub tls: bool,
    /// Keep a copy of every response's blocks (see [`super::Emulator::records`]).
    pub record: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: vec!["emulator-token".into()],
            rate_limit: None,
            quota_bytes: None,
            tls: false,
            record: false,
        }
    }
}
