//! The emulator against a real HTTP client: every status, every fault, the rate limit, the
//! quota, recording, stats, the admin API, TLS and the binary.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use qrypt_emulator::{Emulator, EmulatorConfig, Fault, RateLimit, Stats};
use reqwest::{Client, Response, StatusCode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "emulator-token";

fn start(cfg: EmulatorConfig) -> Emulator {
    Emulator::start(cfg).expect("start emulator")
}

fn recording() -> Emulator {
    start(EmulatorConfig {
        record: true,
        ..EmulatorConfig::default()
    })
}

/// A client that trusts only `ca_pem` (if any), with the ring provider.
fn client_trusting(ca_pem: Option<&str>) -> Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("PEM")).expect("CA");
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

fn client() -> Client {
    client_trusting(None)
}

async fn get_as(c: &Client, emu: &Emulator, token: &str, query: &str) -> reqwest::Result<Response> {
    c.get(format!("{}/api/v1/quantum-entropy{query}", emu.url()))
        .header("Accept", "application/json")
        .bearer_auth(token)
        .send()
        .await
}

async fn get(c: &Client, emu: &Emulator, query: &str) -> Response {
    get_as(c, emu, TOKEN, query).await.expect("response")
}

async fn status(c: &Client, emu: &Emulator, query: &str) -> u16 {
    get(c, emu, query).await.status().as_u16()
}

fn content_type(r: &Response) -> String {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn retry_after(r: &Response) -> Option<String> {
    r.headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// Checks the documented shape of a 200 body and returns its decoded blocks.
fn good_blocks(v: &Value, n: usize) -> Vec<Vec<u8>> {
    assert_eq!(v["size"], json!(n), "{v:.200}");
    let random = v["random"].as_array().expect("random is an array");
    assert_eq!(random.len(), n);
    random
        .iter()
        .map(|s| {
            let b = STANDARD
                .decode(s.as_str().expect("string"))
                .expect("base64");
            assert_eq!(b.len(), 1024);
            b
        })
        .collect()
}

async fn good(c: &Client, emu: &Emulator, n: usize) -> Vec<Vec<u8>> {
    let r = get(c, emu, &format!("?size={n}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(content_type(&r), "application/json");
    good_blocks(&parse_body(r).await.expect("json"), n)
}

/// The error body every non-200 carries.
async fn assert_error(r: Response, code: u16) {
    assert_eq!(r.status().as_u16(), code);
    assert_eq!(content_type(&r), "application/json");
    let v: Value = parse_body(r).await.expect("error body is JSON");
    assert!(v["error"].is_string(), "{v}");
}

/// The body as JSON (reqwest's `json` feature is off).
async fn parse_body(r: Response) -> Result<Value, String> {
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Reads the whole body, or the transport error that cut it.
async fn body(r: Response) -> reqwest::Result<Vec<u8>> {
    r.bytes().await.map(|b| b.to_vec())
}

fn last_fault(emu: &Emulator) -> Option<String> {
    emu.records().last().expect("a record").fault.clone()
}

#[tokio::test]
async fn serves_fresh_blocks_of_the_documented_shape() {
    let emu = recording();
    let c = client();
    let r = get(&c, &emu, "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let one = good_blocks(&parse_body(r).await.expect("json"), 1);
    let three = good(&c, &emu, 3).await;
    let max = good(&c, &emu, 512).await;
    let all: HashSet<&Vec<u8>> = one.iter().chain(&three).chain(&max).collect();
    assert_eq!(all.len(), 516, "every block is fresh");
    let recs = emu.records();
    assert_eq!(recs.len(), 3);
    assert_eq!(
        recs.iter()
            .map(|r| (r.seq, r.status, r.kib))
            .collect::<Vec<_>>(),
        [(1, 200, 1), (2, 200, 3), (3, 200, 512)]
    );
    assert!(recs.iter().all(|r| r.fault.is_none()));
    assert_eq!(recs[1].blocks, three.concat(), "records hold what was sent");
    assert_eq!(recs[2].blocks, max.concat());
    let s = emu.stats();
    assert_eq!(s.total_requests, 3);
    assert_eq!(s.count(200), 3);
    assert_eq!(s.good_bytes, 516 * 1024);
    emu.reset_records();
    assert!(emu.records().is_empty());
}

#[tokio::test]
async fn bad_sizes_are_400() {
    let emu = start(EmulatorConfig::default());
    let c = client();
    for q in [
        "?size=0",
        "?size=513",
        "?size=abc",
        "?size=1.5",
        "?size=",
        "?size=-1",
        "?size=%2B5",
        "?size",
    ] {
        assert_error(get(&c, &emu, q).await, 400).await;
    }
    assert_eq!(emu.stats().count(400), 8);
    assert_eq!(emu.stats().count(200), 0);
}

#[tokio::test]
async fn tokens_are_checked_and_can_rotate() {
    let emu = recording();
    let c = client();
    let url = format!("{}/api/v1/quantum-entropy", emu.url());
    assert_error(c.get(&url).send().await.expect("response"), 401).await;
    let basic = c.get(&url).basic_auth(TOKEN, Some("x")).send().await;
    assert_error(basic.expect("response"), 401).await;
    assert_error(get_as(&c, &emu, "other", "").await.expect("response"), 401).await;
    assert_error(get_as(&c, &emu, "", "").await.expect("response"), 401).await;
    // The token is checked before the size.
    assert_error(
        get_as(&c, &emu, "x", "?size=0").await.expect("response"),
        401,
    )
    .await;
    good(&c, &emu, 1).await;

    emu.set_tokens(vec!["new-1".into(), "new-2".into()]);
    assert_error(get(&c, &emu, "").await, 401).await;
    for t in ["new-1", "new-2"] {
        let r = get_as(&c, &emu, t, "?size=2").await.expect("response");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let s = emu.stats();
    assert_eq!((s.count(401), s.count(200)), (6, 3));
    assert!(
        emu.records()
            .iter()
            .filter(|r| r.status == 401)
            .all(|r| r.kib == 0)
    );
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405() {
    let emu = start(EmulatorConfig::default());
    let c = client();
    for path in [
        "/",
        "/api/v1/quantum-entropy/",
        "/api/v2/quantum-entropy",
        "/_emulatorx",
    ] {
        let r = c
            .get(format!("{}{path}", emu.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("response");
        assert_error(r, 404).await;
    }
    let r = c
        .post(format!("{}/api/v1/quantum-entropy", emu.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("response");
    assert_eq!(r.headers()["allow"], "GET");
    assert_error(r, 405).await;
}

#[tokio::test]
async fn rate_limit_lets_exactly_r_through_per_window() {
    let emu = start(EmulatorConfig {
        rate_limit: Some(RateLimit {
            requests: 3,
            window: Duration::from_secs(1),
        }),
        tokens: vec![TOKEN.into(), "second".into()],
        ..EmulatorConfig::default()
    });
    let c = client();
    for _ in 0..3 {
        assert_eq!(status(&c, &emu, "").await, 200);
    }
    let last_accepted = Instant::now();
    for _ in 0..2 {
        let r = get(&c, &emu, "").await;
        assert_eq!(retry_after(&r).as_deref(), Some("1"));
        assert_error(r, 429).await;
    }
    // Each token has its own window.
    let r = get_as(&c, &emu, "second", "").await.expect("response");
    assert_eq!(r.status(), StatusCode::OK);

    // The 429s took no slot: once the window has passed, exactly 3 more.
    tokio::time::sleep((last_accepted + Duration::from_millis(1050)) - Instant::now()).await;
    for _ in 0..3 {
        assert_eq!(status(&c, &emu, "").await, 200);
    }
    assert_eq!(status(&c, &emu, "").await, 429);
    let s = emu.stats();
    assert_eq!((s.count(200), s.count(429)), (7, 3));

    // Retry-After: whole seconds until the oldest slot frees, rounded up.
    emu.set_rate_limit(Some(RateLimit {
        requests: 1,
        window: Duration::from_millis(2500),
    }));
    assert_eq!(status(&c, &emu, "").await, 200);
    let r = get(&c, &emu, "").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r).as_deref(), Some("3"));

    emu.set_rate_limit(None);
    for _ in 0..5 {
        assert_eq!(status(&c, &emu, "").await, 200);
    }
}

#[tokio::test]
async fn quota_gives_403() {
    let emu = start(EmulatorConfig {
        quota_bytes: Some(4096),
        tokens: vec![TOKEN.into(), "second".into()],
        ..EmulatorConfig::default()
    });
    let c = client();
    assert_eq!(status(&c, &emu, "?size=3").await, 200);
    assert_error(get(&c, &emu, "?size=2").await, 403).await;
    assert_eq!(status(&c, &emu, "?size=1").await, 200);
    assert_error(get(&c, &emu, "?size=1").await, 403).await;
    let r = get_as(&c, &emu, "second", "?size=4")
        .await
        .expect("response");
    assert_eq!(r.status(), StatusCode::OK, "a quota per token");

    emu.set_quota(Some(1024));
    // A status fault sends no entropy and is not charged.
    emu.set_fault(Fault::Status(500), Some(1));
    assert_eq!(status(&c, &emu, "?size=1").await, 500);
    assert_eq!(status(&c, &emu, "?size=1").await, 200);
    assert_eq!(status(&c, &emu, "?size=1").await, 403);
    emu.set_quota(None);
    assert_eq!(status(&c, &emu, "?size=512").await, 200);
}

#[tokio::test]
async fn status_faults_answer_with_json_errors_then_stop() {
    let emu = recording();
    let c = client();
    for code in [400, 401, 403, 500, 503] {
        emu.set_fault(Fault::Status(code), Some(2));
        assert_error(get(&c, &emu, "?size=2").await, code).await;
        assert_error(get(&c, &emu, "?size=2").await, code).await;
        good(&c, &emu, 2).await;
        let recs = emu.records();
        let tail = &recs[recs.len() - 3..];
        assert_eq!(tail[0].fault.as_deref(), Some("status"));
        assert_eq!((tail[1].status, tail[1].kib), (code, 2));
        assert!(tail[1].blocks.is_empty());
        assert_eq!(tail[2].fault, None);
    }
    assert_eq!(emu.stats().count(200), 5);
}

#[tokio::test]
async fn too_many_requests_fault_with_and_without_retry_after() {
    let emu = recording();
    let c = client();
    emu.set_fault(
        Fault::TooManyRequests {
            retry_after: Some(7),
        },
        Some(1),
    );
    let r = get(&c, &emu, "").await;
    assert_eq!(retry_after(&r).as_deref(), Some("7"));
    assert_error(r, 429).await;
    emu.set_fault(Fault::TooManyRequests { retry_after: None }, Some(1));
    let r = get(&c, &emu, "").await;
    assert_eq!(retry_after(&r), None);
    assert_error(r, 429).await;
    assert_eq!(last_fault(&emu).as_deref(), Some("too_many_requests"));
    let past = "Sun, 06 Nov 1994 08:49:37 GMT";
    emu.set_fault(
        Fault::TooManyRequestsText {
            retry_after: past.into(),
        },
        Some(1),
    );
    let r = get(&c, &emu, "").await;
    assert_eq!(retry_after(&r).as_deref(), Some(past));
    assert_error(r, 429).await;
    assert_eq!(last_fault(&emu).as_deref(), Some("too_many_requests_text"));
    good(&c, &emu, 1).await;
}

/// Arms `fault` once, fetches `size=n`, and returns the 200 response's body text.
async fn faulty_body(emu: &Emulator, fault: Fault, n: usize) -> String {
    let name = fault.name();
    emu.set_fault(fault, Some(1));
    let c = client();
    let r = get(&c, emu, &format!("?size={n}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(last_fault(emu).as_deref(), Some(name));
    let text = r.text().await.expect("body");
    // Applied once only.
    good(&c, emu, n).await;
    text
}

#[tokio::test]
async fn malformed_json() {
    let emu = recording();
    let text = faulty_body(&emu, Fault::MalformedJson, 4).await;
    assert!(text.starts_with("{\"random\": [\""));
    assert!(serde_json::from_str::<Value>(&text).is_err());
}

#[tokio::test]
async fn wrong_types() {
    let emu = recording();
    let text = faulty_body(&emu, Fault::WrongTypes, 3).await;
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(v["size"].is_string(), "{v}");
    let random = v["random"].as_array().expect("array");
    assert!(
        !random.is_empty() && random.iter().all(Value::is_number),
        "{v}"
    );
    assert!(emu.records()[0].blocks.is_empty());
}

#[tokio::test]
async fn size_mismatch() {
    let emu = recording();
    let text = faulty_body(&emu, Fault::SizeMismatch, 3).await;
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    let len = v["random"].as_array().expect("array").len();
    let size = v["size"].as_u64().expect("number");
    assert_eq!(len, 3);
    assert!(size != 3 && size as usize != len, "{size}");
}

#[tokio::test]
async fn short_block() {
    let emu = recording();
    let text = faulty_body(&emu, Fault::ShortBlock, 3).await;
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    let lens: Vec<usize> = v["random"]
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            STANDARD
                .decode(s.as_str().expect("string"))
                .expect("base64")
                .len()
        })
        .collect();
    assert_eq!(lens, [1024, 1024, 1000]);
    assert_eq!(emu.records()[0].blocks.len(), 3048);
}

#[tokio::test]
async fn non_base64() {
    let emu = recording();
    let text = faulty_body(&emu, Fault::NonBase64, 3).await;
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    let strings: Vec<&str> = v["random"]
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string"))
        .collect();
    let bad: Vec<&&str> = strings
        .iter()
        .filter(|s| STANDARD.decode(s).is_err())
        .collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0].contains('*'));
    assert_eq!(v["size"], 3);
}

#[tokio::test]
async fn all_zero_blocks() {
    let emu = recording();
    let text = faulty_body(&emu, Fault::AllZeroBlocks, 2).await;
    let blocks = good_blocks(&serde_json::from_str(&text).expect("json"), 2);
    assert!(blocks.iter().all(|b| b.iter().all(|&x| x == 0)));
    assert_eq!(emu.records()[0].blocks, vec![0; 2048]);
    assert_eq!(emu.stats().good_bytes, 2048, "only the later good response");
}

#[tokio::test]
async fn wrong_content_type() {
    let emu = recording();
    emu.set_fault(Fault::WrongContentType, Some(1));
    let r = get(&client(), &emu, "?size=2").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(content_type(&r).starts_with("text/html"));
    good_blocks(&parse_body(r).await.expect("json"), 2);
    assert_eq!(last_fault(&emu).as_deref(), Some("wrong_content_type"));
}

#[tokio::test]
async fn repeat_block_copies_an_earlier_response() {
    let emu = recording();
    let c = client();
    let first = good(&c, &emu, 2).await;
    let text = faulty_body(&emu, Fault::RepeatBlock, 3).await;
    let blocks = good_blocks(&serde_json::from_str(&text).expect("json"), 3);
    assert_eq!(blocks[2], first[1], "the newest earlier block");
    assert!(!first.contains(&blocks[0]) && !first.contains(&blocks[1]));
    assert_eq!(emu.records()[1].blocks, blocks.concat(), "what was sent");
}

#[tokio::test]
async fn repeat_block_without_history() {
    // Nothing earlier, two blocks: the second repeats the first.
    let emu = recording();
    let text = faulty_body(&emu, Fault::RepeatBlock, 2).await;
    let blocks = good_blocks(&serde_json::from_str(&text).expect("json"), 2);
    assert_eq!(blocks[0], blocks[1]);

    // Nothing earlier, one block: nothing to repeat, so the fault waits, unspent.
    let emu = recording();
    let c = client();
    emu.set_fault(Fault::RepeatBlock, Some(1));
    let first = good(&c, &emu, 1).await;
    assert_eq!(last_fault(&emu), None);
    let again = good(&c, &emu, 1).await;
    assert_eq!(again, first);
    assert_eq!(last_fault(&emu).as_deref(), Some("repeat_block"));
    let third = good(&c, &emu, 1).await;
    assert_ne!(third, first);
}

#[tokio::test]
async fn oversized_body_is_huge_valid_json() {
    let emu = recording();
    emu.set_fault(Fault::OversizedBody, Some(1));
    let mut r = get(&client(), &emu, "?size=2").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.content_length(), None, "streamed, no length up front");
    let mut all = Vec::new();
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        all.extend_from_slice(&chunk);
    }
    assert!(all.len() > 64 << 20, "{}", all.len());
    let v: Value = serde_json::from_slice(&all).expect("valid JSON");
    let blocks = good_blocks(&v, 2);
    assert_eq!(emu.records()[0].blocks, blocks.concat());
    assert_eq!(last_fault(&emu).as_deref(), Some("oversized_body"));
}

#[tokio::test]
async fn delay_comes_before_the_headers() {
    let emu = recording();
    emu.set_fault(Fault::Delay(Duration::from_millis(300)), Some(2));
    let c = client();
    let t = Instant::now();
    let r = get(&c, &emu, "?size=2").await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    good_blocks(&parse_body(r).await.expect("json"), 2);
    assert_eq!(last_fault(&emu).as_deref(), Some("delay"));

    let err = c
        .get(format!("{}/api/v1/quantum-entropy", emu.url()))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .expect_err("times out");
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn drop_connection_gives_no_response() {
    let emu = recording();
    let c = client();
    good(&c, &emu, 1).await; // so the failing request goes on a reused connection
    emu.set_fault(Fault::DropConnection, Some(1));
    let err = get_as(&c, &emu, TOKEN, "").await.expect_err("no response");
    assert!(err.status().is_none() && !err.is_timeout(), "{err}");
    let rec = emu.records().pop().expect("record");
    assert_eq!(
        (rec.status, rec.fault.as_deref()),
        (0, Some("drop_connection"))
    );
    good(&c, &emu, 1).await;
    let s = emu.stats();
    assert_eq!((s.count(0), s.count(200)), (1, 2));
}

/// Sends one raw request and reads until the server ends the connection: what came, and how it
/// ended (`Ok` for a clean close).
async fn raw_request(emu: &Emulator) -> (Vec<u8>, std::io::Result<()>) {
    let mut s = tokio::net::TcpStream::connect(emu.addr())
        .await
        .expect("connect");
    let req = format!(
        "GET /api/v1/quantum-entropy?size=4 HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {TOKEN}\r\nAccept: application/json\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Splits a raw response into its Content-Length and the body bytes that came.
fn length_and_body(raw: &[u8]) -> (usize, usize) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers came");
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .expect("number");
    (len, raw.len() - end - 4)
}

#[tokio::test]
async fn reset_mid_body() {
    let emu = recording();
    emu.set_fault(Fault::ResetMidBody, Some(2));
    let r = get(&client(), &emu, "?size=4").await;
    assert_eq!(r.status(), StatusCode::OK);
    let len = r.content_length().expect("Content-Length");
    let err = body(r).await.expect_err("the body is cut");
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err}"
    );
    assert_eq!(last_fault(&emu).as_deref(), Some("reset_mid_body"));
    assert_eq!(emu.records()[0].blocks.len(), 4096);

    let (raw, ending) = raw_request(&emu).await;
    let (announced, came) = length_and_body(&raw);
    assert_eq!(announced as u64, len);
    assert!(came < announced, "{came} of {announced}");
    let e = ending.expect_err("a reset, not a clean close");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn truncated_body() {
    let emu = recording();
    emu.set_fault(Fault::TruncatedBody, Some(2));
    let r = get(&client(), &emu, "?size=4").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.content_length().is_some());
    body(r).await.expect_err("fewer bytes than Content-Length");
    assert_eq!(last_fault(&emu).as_deref(), Some("truncated_body"));

    let (raw, ending) = raw_request(&emu).await;
    let (announced, came) = length_and_body(&raw);
    assert_eq!(came, announced / 2);
    ending.expect("a clean close");
}

#[tokio::test]
async fn slow_drip_sends_a_correct_body_slowly() {
    let emu = recording();
    emu.set_fault(
        Fault::SlowDrip {
            bytes_per_sec: 4000,
        },
        Some(1),
    );
    let t = Instant::now();
    let mut r = get(&client(), &emu, "?size=1").await;
    let len = r.content_length().expect("length") as usize;
    let mut chunks = 0;
    let mut all = Vec::new();
    while let Some(c) = r.chunk().await.expect("chunk") {
        chunks += 1;
        all.extend_from_slice(&c);
    }
    assert_eq!(all.len(), len);
    // About 20 pieces a second: 200 bytes each here.
    assert!(chunks >= 4, "{chunks} chunks");
    let expected = Duration::from_secs_f64(len as f64 / 4000.0);
    assert!(t.elapsed() >= expected.mul_f64(0.8), "{:?}", t.elapsed());
    good_blocks(&serde_json::from_slice(&all).expect("json"), 1);
    assert_eq!(last_fault(&emu).as_deref(), Some("slow_drip"));
}

#[tokio::test]
async fn faults_are_replaced_cleared_and_skip_refused_requests() {
    let emu = recording();
    let c = client();
    emu.set_fault(Fault::MalformedJson, None);
    for _ in 0..3 {
        let r = get(&c, &emu, "").await;
        assert!(parse_body(r).await.is_err());
    }
    emu.set_fault(Fault::Status(503), None);
    assert_eq!(status(&c, &emu, "").await, 503);
    // Refused before the fault: does not spend it.
    emu.set_fault(Fault::Status(500), Some(1));
    assert_eq!(
        get_as(&c, &emu, "bad", "")
            .await
            .expect("response")
            .status(),
        401
    );
    assert_eq!(status(&c, &emu, "?size=600").await, 400);
    assert_eq!(status(&c, &emu, "").await, 500);
    assert_eq!(status(&c, &emu, "").await, 200);
    emu.set_fault(Fault::Status(503), None);
    emu.clear_fault();
    good(&c, &emu, 1).await;
}

#[tokio::test]
async fn stats_show_keep_alive_and_concurrency() {
    let emu = start(EmulatorConfig::default());
    let c = client();
    for _ in 0..5 {
        good(&c, &emu, 1).await;
    }
    let s = emu.stats();
    assert_eq!(
        (s.max_connections, s.max_in_flight),
        (1, 1),
        "one reused connection"
    );

    emu.set_fault(Fault::Delay(Duration::from_millis(800)), None);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let c = c.clone();
        let url = format!("{}/api/v1/quantum-entropy?size=2", emu.url());
        set.spawn(async move { c.get(url).bearer_auth(TOKEN).send().await });
    }
    // All four are held in the delay at once.
    let deadline = Instant::now() + Duration::from_millis(600);
    while emu.stats().in_flight < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(emu.stats().in_flight, 4);
    while let Some(r) = set.join_next().await {
        let r = r.expect("task").expect("response");
        good_blocks(&parse_body(r).await.expect("json"), 2);
    }
    let s = emu.stats();
    assert_eq!(s.max_in_flight, 4);
    assert_eq!(s.in_flight, 0);
    assert!(s.max_connections >= 4);
    assert_eq!(s.total_requests, 9);
    assert_eq!(s.count(429), 0);
    assert_eq!(s.by_status.len(), 1);
    assert_eq!(s.good_bytes, 5 * 1024, "delayed answers carry a fault");
    assert!(emu.records().is_empty(), "not recording");
}

async fn admin(c: &Client, emu: &Emulator, path: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(format!("{}/_emulator/{path}", emu.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("response");
    let code = r.status().as_u16();
    (code, parse_body(r).await.expect("json"))
}

#[tokio::test]
async fn admin_api() {
    let emu = recording();
    let c = client();
    let ok = (200, json!({"ok": true}));

    assert_eq!(
        admin(
            &c,
            &emu,
            "fault",
            json!({"fault": "status", "status": 503, "times": 2})
        )
        .await,
        ok
    );
    assert_eq!(status(&c, &emu, "").await, 503);
    assert_eq!(status(&c, &emu, "").await, 503);
    assert_eq!(status(&c, &emu, "").await, 200);

    let f = json!({"fault": "too_many_requests", "retry_after": 2});
    assert_eq!(admin(&c, &emu, "fault", f).await, ok);
    assert_eq!(retry_after(&get(&c, &emu, "").await).as_deref(), Some("2"));
    assert_eq!(admin(&c, &emu, "fault", json!({"fault": "none"})).await, ok);
    assert_eq!(status(&c, &emu, "").await, 200);

    // Every name parses (their effects are tested above through the library API).
    for f in [
        json!({"fault": "malformed_json"}),
        json!({"fault": "wrong_types"}),
        json!({"fault": "size_mismatch"}),
        json!({"fault": "short_block"}),
        json!({"fault": "non_base64"}),
        json!({"fault": "all_zero_blocks"}),
        json!({"fault": "repeat_block"}),
        json!({"fault": "wrong_content_type"}),
        json!({"fault": "oversized_body"}),
        json!({"fault": "delay", "ms": 2000}),
        json!({"fault": "drop_connection"}),
        json!({"fault": "reset_mid_body"}),
        json!({"fault": "truncated_body"}),
        json!({"fault": "slow_drip", "bytes_per_sec": 100}),
        json!({"fault": "too_many_requests"}),
    ] {
        assert_eq!(admin(&c, &emu, "fault", f.clone()).await, ok, "{f}");
    }
    for bad in [
        json!({"fault": "bogus"}),
        json!({"fault": "status"}),
        json!({"fault": "delay"}),
        json!({"fault": "slow_drip", "bytes_per_sec": 0}),
        json!({"fault": "malformed_json", "times": -1}),
        json!({"nothing": 1}),
    ] {
        let (code, v) = admin(&c, &emu, "fault", bad.clone()).await;
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].is_string());
    }
    // A refused change leaves the last good one armed.
    let r = get(&c, &emu, "").await;
    assert_eq!(retry_after(&r), None);
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = c
        .post(format!("{}/_emulator/fault", emu.url()))
        .body("{not json")
        .send()
        .await
        .expect("response");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(admin(&c, &emu, "fault", json!({"fault": "none"})).await, ok);

    assert_eq!(
        admin(&c, &emu, "tokens", json!({"tokens": ["t1"]})).await,
        ok
    );
    assert_eq!(status(&c, &emu, "").await, 401);
    assert_eq!(get_as(&c, &emu, "t1", "").await.expect("r").status(), 200);
    assert_eq!(
        admin(&c, &emu, "tokens", json!({"tokens": "t1"})).await.0,
        400
    );
    assert_eq!(
        admin(&c, &emu, "tokens", json!({"tokens": [TOKEN]})).await,
        ok
    );

    assert_eq!(admin(&c, &emu, "quota", json!({"bytes": 1024})).await, ok);
    assert_eq!(status(&c, &emu, "").await, 200);
    assert_eq!(status(&c, &emu, "").await, 403);
    assert_eq!(admin(&c, &emu, "quota", json!({"bytes": null})).await, ok);
    assert_eq!(status(&c, &emu, "").await, 200);

    let rl = json!({"requests": 1, "window_secs": 60});
    assert_eq!(admin(&c, &emu, "rate_limit", rl).await, ok);
    assert_eq!(status(&c, &emu, "").await, 200);
    assert_eq!(retry_after(&get(&c, &emu, "").await).as_deref(), Some("60"));
    assert_eq!(
        admin(&c, &emu, "rate_limit", json!({"requests": null})).await,
        ok
    );
    assert_eq!(status(&c, &emu, "").await, 200);
    let bad = json!({"requests": 0, "window_secs": 1});
    assert_eq!(admin(&c, &emu, "rate_limit", bad).await.0, 400);

    assert_eq!(admin(&c, &emu, "reset_records", json!({})).await, ok);
    assert!(emu.records().is_empty());

    let r = c
        .get(format!("{}/_emulator/stats", emu.url()))
        .send()
        .await
        .expect("response");
    assert_eq!(content_type(&r), "application/json");
    let v: Value = parse_body(r).await.expect("json");
    let s: Stats = emu.stats();
    assert_eq!(v["total_requests"], json!(s.total_requests));
    assert_eq!(s.total_requests, 14, "admin requests are not counted");
    assert_eq!(v["by_status"]["200"], json!(s.count(200)));
    assert_eq!(v["by_status"]["429"], json!(3));
    assert_eq!(v["good_bytes"], json!(s.good_bytes));
    for k in [
        "in_flight",
        "max_in_flight",
        "connections",
        "max_connections",
    ] {
        assert!(v[k].is_u64(), "{k}: {v}");
    }
    let r = c
        .get(format!("{}/_emulator/nope", emu.url()))
        .send()
        .await
        .expect("response");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tls_with_the_generated_ca() {
    let emu = start(EmulatorConfig {
        tls: true,
        ..EmulatorConfig::default()
    });
    let url = emu.url();
    assert_eq!(url, format!("https://localhost:{}", emu.addr().port()));
    let pem = emu.ca_cert_pem().expect("a CA");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let c = client_trusting(Some(&pem));
    good(&c, &emu, 2).await;
    let by_ip = format!(
        "https://127.0.0.1:{}/api/v1/quantum-entropy",
        emu.addr().port()
    );
    let r = c
        .get(by_ip)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("IP SAN");
    assert_eq!(r.status(), StatusCode::OK);

    let err = get_as(&client(), &emu, TOKEN, "")
        .await
        .expect_err("untrusted");
    assert!(err.is_connect(), "{err}");
    let plain = format!(
        "http://127.0.0.1:{}/api/v1/quantum-entropy",
        emu.addr().port()
    );
    assert!(client().get(plain).bearer_auth(TOKEN).send().await.is_err());
    assert!(start(EmulatorConfig::default()).ca_cert_pem().is_none());
}

#[test]
fn dropping_the_emulator_closes_its_port() {
    let emu = start(EmulatorConfig::default());
    let addr = emu.addr();
    std::net::TcpStream::connect(addr).expect("listening");
    drop(emu);
    assert!(std::net::TcpStream::connect(addr).is_err());
}

mod binary {
    use super::*;
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    const BIN: &str = env!("CARGO_BIN_EXE_qrypt-emulator");

    #[test]
    fn help_says_it_is_not_quantum_entropy() {
        for flag in ["-h", "--help"] {
            let out = Command::new(BIN).arg(flag).output().expect("run");
            assert!(out.status.success());
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("NOT a source of quantum entropy"), "{text}");
        }
        let out = Command::new(BIN)
            .args(["--rate-limit", "30"])
            .output()
            .expect("run");
        assert!(!out.status.success());
        let out = Command::new(BIN)
            .args(["--cert-out", "/nonexistent/x.pem"])
            .output()
            .expect("run");
        assert!(!out.status.success(), "--cert-out needs --tls");
    }

    #[tokio::test]
    async fn serves_until_sigterm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("ca.pem");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "file-token\n\n").expect("write");
        let mut child = Command::new(BIN)
            .args([
                "--tls",
                "--rate-limit",
                "2/60",
                "--quota",
                "3K",
                "--token",
                "argv-token",
            ])
            .arg("--cert-out")
            .arg(&cert)
            .arg("--token-file")
            .arg(&tokens)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        let url = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{line:?}"))
            .to_owned();
        assert!(url.starts_with("https://localhost:"), "{url}");
        let c = client_trusting(Some(&std::fs::read_to_string(&cert).expect("cert")));
        let get = |token: &'static str, q: &'static str| {
            c.get(format!("{url}/api/v1/quantum-entropy{q}"))
                .bearer_auth(token)
                .send()
        };
        assert_eq!(get("argv-token", "?size=2").await.expect("r").status(), 200);
        assert_eq!(get("argv-token", "?size=2").await.expect("r").status(), 403);
        let r = get("argv-token", "").await.expect("r");
        assert_eq!(r.status(), 429);
        assert_eq!(retry_after(&r).as_deref(), Some("60"));
        assert_eq!(get("file-token", "").await.expect("r").status(), 200);
        assert_eq!(get("emulator-token", "").await.expect("r").status(), 401);

        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                assert!(st.success(), "{st}");
                break;
            }
            assert!(Instant::now() < deadline, "still running after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
