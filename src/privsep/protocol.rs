//! The fetch channel's wire format: versioned, length-checked frames between server and fetcher.
//!
//! A frame is `length: u32 LE | version: u8 | kind: u8 | payload`, `length` counting the payload
//! only. The reader checks the version and the kind first and bounds the length by the kind's
//! own limit before it reads (or allocates for) a single payload byte, so a peer cannot make
//! the other side allocate more than the largest legitimate frame. Integers are little-endian.
//!
//! Server to fetcher: [`Kind::Hello`] (endpoint, timeouts, token, CA certificates; once, first),
//! [`Kind::Fetch`] (request id, KiB), [`Kind::Token`] (a new token). Fetcher to server:
//! [`Kind::Ready`] (the client is built), [`Kind::Blocks`] (request id, then exactly
//! `KiB * 1024` bytes), [`Kind::Failed`] (request id and the failure), [`Kind::Fatal`] (the
//! fetcher cannot work at all, and ends). [`Kind::Ready`] and [`Kind::Fatal`] carry one text
//! (the fetcher's sandbox report; why it ends).
use std::time::Duration;

use zeroize::Zeroizing;

use crate::upstream::{BLOCK_LEN, MAX_KIB_PER_REQUEST};

/// The protocol's version; a frame of another version ends the channel.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 6;
/// Longest text a peer may send (an error message), in bytes.
pub const MAX_TEXT: usize = 1024;
/// Largest CA bundle handed to a fetcher.
pub const MAX_CA: usize = 1 << 20;
/// Largest endpoint URL.
pub const MAX_ENDPOINT: usize = 4096;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Fetch = 2,
    Token = 3,
    Ready = 0x81,
    Blocks = 0x82,
    Failed = 0x83,
    Fatal = 0x84,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Fetch,
            3 => Kind::Token,
            0x81 => Kind::Ready,
            0x82 => Kind::Blocks,
            0x83 => Kind::Failed,
            0x84 => Kind::Fatal,
            _ => return None,
        })
    }

    /// The largest payload a frame of this kind may carry.
    pub fn max_payload(self) -> usize {
        match self {
            Kind::Hello => {
                4 + 4
                    + 2
                    + 2
                    + MAX_ENDPOINT
                    + 2
                    + crate::upstream::token::MAX_TOKEN_LEN
                    + 4
                    + MAX_CA
            }
            Kind::Fetch => 12,
            Kind::Token => crate::upstream::token::MAX_TOKEN_LEN,
            Kind::Ready => 2 + MAX_TEXT,
            Kind::Blocks => 8 + MAX_KIB_PER_REQUEST as usize * BLOCK_LEN,
            Kind::Failed => 8 + 1 + 2 + 8 + 2 + MAX_TEXT,
            Kind::Fatal => 2 + MAX_TEXT,
        }
    }

    /// The smallest payload a frame of this kind may carry.
    fn min_payload(self) -> usize {
        match self {
            Kind::Hello => 4 + 4 + 2 + 2 + 2 + 4,
            Kind::Fetch => 12,
            Kind::Token => 1,
            Kind::Ready => 2,
            Kind::Blocks => 8 + BLOCK_LEN,
            Kind::Failed => 8 + 1 + 2 + 8 + 2,
            Kind::Fatal => 2,
        }
    }
}

/// A breach of the protocol: the channel is closed and the peer treated as broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("protocol version {0}, expected {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{kind:?} frame of {len} bytes, outside {min}..={max}")]
    Length {
        kind: Kind,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("{0:?} frame not expected here")]
    Unexpected(Kind),
    #[error("malformed {0:?} frame")]
    Malformed(Kind),
    #[error("answer to request {0}, which is not waiting")]
    UnknownRequest(u64),
    #[error("request {id} asked {asked} KiB, the answer holds {got} bytes")]
    WrongAmount { id: u64, asked: u32, got: usize },
}

/// A checked header: the frame's kind and its payload's length (within the kind's bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: usize,
}

/// Checks a header before anything of its payload is read.
pub fn parse_header(raw: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
    let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    if raw[4] != VERSION {
        return Err(ProtocolError::Version(raw[4]));
    }
    let kind = Kind::from_byte(raw[5]).ok_or(ProtocolError::UnknownKind(raw[5]))?;
    let (min, max) = (kind.min_payload(), kind.max_payload());
    if len < min || len > max {
        return Err(ProtocolError::Length {
            kind,
            len,
            min,
            max,
        });
    }
    Ok(Header { kind, len })
}

/// The header of a frame of `kind` with `len` payload bytes.
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    let l = (len as u32).to_le_bytes();
    [l[0], l[1], l[2], l[3], VERSION, kind as u8]
}

/// A whole frame, header and payload, in a buffer that is wiped when dropped (a hello holds
/// the token).
pub fn frame(kind: Kind, payload: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + payload.len()));
    out.extend_from_slice(&header(kind, payload.len()));
    out.extend_from_slice(payload);
    out
}

/// What a fetcher needs to talk to the upstream; sent once, first. Wiped when dropped.
pub struct Hello {
    pub endpoint: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_idle_connections: u16,
    pub token: Zeroizing<Vec<u8>>,
    pub ca_pem: Option<Zeroizing<Vec<u8>>>,
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

impl Hello {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut p = Zeroizing::new(Vec::new());
        p.extend_from_slice(&millis(self.connect_timeout).to_le_bytes());
        p.extend_from_slice(&millis(self.request_timeout).to_le_bytes());
        p.extend_from_slice(&self.max_idle_connections.to_le_bytes());
        put_short(&mut p, self.endpoint.as_bytes());
        put_short(&mut p, &self.token);
        let ca: &[u8] = self.ca_pem.as_deref().map_or(&[], |c| c.as_slice());
        p.extend_from_slice(&(ca.len() as u32).to_le_bytes());
        p.extend_from_slice(ca);
        frame(Kind::Hello, &p)
    }

    pub fn decode(payload: &[u8]) -> Result<Hello, ProtocolError> {
        let bad = || ProtocolError::Malformed(Kind::Hello);
        let mut r = Reader(payload);
        let connect = r.u32().ok_or_else(bad)?;
        let request = r.u32().ok_or_else(bad)?;
        let idle = r.u16().ok_or_else(bad)?;
        let endpoint = r.short().ok_or_else(bad)?;
        let endpoint = std::str::from_utf8(endpoint).map_err(|_| bad())?.to_owned();
        let token = Zeroizing::new(r.short().ok_or_else(bad)?.to_vec());
        let ca_len = r.u32().ok_or_else(bad)? as usize;
        let ca = r.take(ca_len).ok_or_else(bad)?;
        if !r.0.is_empty() || endpoint.len() > MAX_ENDPOINT || ca_len > MAX_CA {
            return Err(bad());
        }
        Ok(Hello {
            endpoint,
            connect_timeout: Duration::from_millis(connect.into()),
            request_timeout: Duration::from_millis(request.into()),
            max_idle_connections: idle,
            token,
            ca_pem: (!ca.is_empty()).then(|| Zeroizing::new(ca.to_vec())),
        })
    }
}

/// A request: fetch `kib` KiB under the id `id`.
pub fn fetch(id: u64, kib: u32) -> Zeroizing<Vec<u8>> {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&id.to_le_bytes());
    p[8..].copy_from_slice(&kib.to_le_bytes());
    frame(Kind::Fetch, &p)
}

pub fn decode_fetch(payload: &[u8]) -> Result<(u64, u32), ProtocolError> {
    let mut r = Reader(payload);
    match (r.u64(), r.u32(), r.0.is_empty()) {
        (Some(id), Some(kib), true) => Ok((id, kib)),
        _ => Err(ProtocolError::Malformed(Kind::Fetch)),
    }
}

/// How a request failed in the fetcher, as the server's [`crate::upstream::FetchError`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FailureKind {
    Status = 0,
    Transport = 1,
    Certificate = 2,
    Validation = 3,
    SizeOutOfRange = 4,
    /// The resolver's definite "no such host": at start, a typo in the endpoint.
    NoSuchHost = 5,
    /// The endpoint answered TLS with something else: at start, a plain-HTTP port.
    NotTls = 6,
}

/// A failed request's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub id: u64,
    pub kind: FailureKind,
    pub code: u16,
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl Failure {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut p = Vec::new();
        p.extend_from_slice(&self.id.to_le_bytes());
        p.push(self.kind as u8);
        p.extend_from_slice(&self.code.to_le_bytes());
        let ra = self.retry_after.map_or(u64::MAX, |d| {
            d.as_millis().min(u128::from(u64::MAX - 1)) as u64
        });
        p.extend_from_slice(&ra.to_le_bytes());
        put_short(&mut p, truncate(&self.message).as_bytes());
        frame(Kind::Failed, &p)
    }

    pub fn decode(payload: &[u8]) -> Result<Failure, ProtocolError> {
        let bad = || ProtocolError::Malformed(Kind::Failed);
        let mut r = Reader(payload);
        let id = r.u64().ok_or_else(bad)?;
        let kind = match r.u8().ok_or_else(bad)? {
            0 => FailureKind::Status,
            1 => FailureKind::Transport,
            2 => FailureKind::Certificate,
            3 => FailureKind::Validation,
            4 => FailureKind::SizeOutOfRange,
            5 => FailureKind::NoSuchHost,
            6 => FailureKind::NotTls,
            _ => return Err(bad()),
        };
        let code = r.u16().ok_or_else(bad)?;
        let ra = r.u64().ok_or_else(bad)?;
        let text = r.short().ok_or_else(bad)?;
        if !r.0.is_empty() || text.len() > MAX_TEXT {
            return Err(bad());
        }
        Ok(Failure {
            id,
            kind,
            code,
            retry_after: (ra != u64::MAX).then(|| Duration::from_millis(ra)),
            message: printable(text),
        })
    }
}

/// A frame of one text: [`Kind::Ready`] (the sandbox's report) or [`Kind::Fatal`] (why the
/// fetcher cannot work, e.g. its client could not be built).
pub fn text(kind: Kind, message: &str) -> Zeroizing<Vec<u8>> {
    let mut p = Vec::new();
    put_short(&mut p, truncate(message).as_bytes());
    frame(kind, &p)
}

/// A fatal report.
pub fn fatal(message: &str) -> Zeroizing<Vec<u8>> {
    text(Kind::Fatal, message)
}

/// The text of a [`Kind::Ready`] or [`Kind::Fatal`] frame, made printable.
pub fn decode_text(kind: Kind, payload: &[u8]) -> Result<String, ProtocolError> {
    let mut r = Reader(payload);
    match r.short() {
        Some(t) if r.0.is_empty() && t.len() <= MAX_TEXT => Ok(printable(t)),
        _ => Err(ProtocolError::Malformed(kind)),
    }
}

pub fn decode_fatal(payload: &[u8]) -> Result<String, ProtocolError> {
    decode_text(Kind::Fatal, payload)
}

/// A peer's text as logs and `/status` may show it: invalid UTF-8 replaced, control characters
/// escaped (no forged log lines), at most [`MAX_TEXT`] bytes.
pub fn printable(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_TEXT)]);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A u16 length, then the bytes (callers keep them under 64 KiB).
fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&bytes[..len]);
}

/// Reads fields off the front of a payload; `None` when it is too short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn short(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(frame: &[u8]) -> Result<Header, ProtocolError> {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&frame[..HEADER_LEN]);
        parse_header(&h)
    }

    #[test]
    fn a_hello_round_trips() {
        let hello = Hello {
            endpoint: "https://api.example:443/".into(),
            connect_timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_secs(30),
            max_idle_connections: 4,
            token: Zeroizing::new(b"tok".to_vec()),
            ca_pem: Some(Zeroizing::new(b"-----BEGIN".to_vec())),
        };
        let f = hello.encode();
        let h = head(&f).expect("header");
        assert_eq!(h.kind, Kind::Hello);
        let back = Hello::decode(&f[HEADER_LEN..]).expect("decode");
        assert_eq!(back.endpoint, hello.endpoint);
        assert_eq!(back.connect_timeout, hello.connect_timeout);
        assert_eq!(back.request_timeout, hello.request_timeout);
        assert_eq!(back.max_idle_connections, 4);
        assert_eq!(&back.token[..], b"tok");
        assert_eq!(
            back.ca_pem.as_deref().map(|c| &c[..]),
            Some(&b"-----BEGIN"[..])
        );
        // One byte short or long: refused.
        assert!(Hello::decode(&f[HEADER_LEN..f.len() - 1]).is_err());
        let mut long = f[HEADER_LEN..].to_vec();
        long.push(0);
        assert!(Hello::decode(&long).is_err());
    }

    #[test]
    fn a_failure_round_trips_and_its_text_is_made_printable() {
        let fail = Failure {
            id: 7,
            kind: FailureKind::Status,
            code: 429,
            retry_after: Some(Duration::from_secs(3)),
            message: "slow\ndown".into(),
        };
        let f = fail.encode();
        let back = Failure::decode(&f[HEADER_LEN..]).expect("decode");
        assert_eq!(back.message, "slow\\ndown");
        assert_eq!(
            (back.id, back.code, back.retry_after),
            (7, 429, Some(Duration::from_secs(3)))
        );
        let none = Failure {
            retry_after: None,
            ..fail
        };
        let f = none.encode();
        assert_eq!(
            Failure::decode(&f[HEADER_LEN..])
                .expect("decode")
                .retry_after,
            None
        );
    }

    #[test]
    fn a_fetch_round_trips() {
        let f = fetch(u64::MAX - 1, 512);
        assert_eq!(head(&f).expect("header").len, 12);
        assert_eq!(decode_fetch(&f[HEADER_LEN..]), Ok((u64::MAX - 1, 512)));
        assert!(decode_fetch(&f[HEADER_LEN..f.len() - 1]).is_err());
    }

    #[test]
    fn headers_are_checked_before_any_payload_is_read() {
        let ok = header(Kind::Blocks, 8 + 1024);
        assert_eq!(
            parse_header(&ok),
            Ok(Header {
                kind: Kind::Blocks,
                len: 1032
            })
        );
        let mut v = ok;
        v[4] = 2;
        assert_eq!(parse_header(&v), Err(ProtocolError::Version(2)));
        let mut k = ok;
        k[5] = 0x99;
        assert_eq!(parse_header(&k), Err(ProtocolError::UnknownKind(0x99)));
        // Larger than 512 KiB of blocks, or a huge length: refused before allocating.
        let big = header(Kind::Blocks, 8 + 513 * 1024);
        assert!(matches!(
            parse_header(&big),
            Err(ProtocolError::Length { .. })
        ));
        let huge = [0xff, 0xff, 0xff, 0xff, VERSION, Kind::Failed as u8];
        assert!(matches!(
            parse_header(&huge),
            Err(ProtocolError::Length { .. })
        ));
        // Ready carries nothing.
        assert!(parse_header(&header(Kind::Ready, 1)).is_err());
        // Blocks with less than a block: refused.
        assert!(parse_header(&header(Kind::Blocks, 8)).is_err());
    }

    #[test]
    fn a_fatal_report_is_bounded() {
        let long = "x".repeat(5000);
        let f = fatal(&long);
        let text = decode_fatal(&f[HEADER_LEN..]).expect("decode");
        assert_eq!(text.len(), MAX_TEXT);
    }
}
