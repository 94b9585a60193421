//! The emulator over HTTP, through reqwest: its counters, and one entropy round trip.
use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::ACCEPT;

use crate::{Res, ctx};

/// The part of `/_emulator/stats` this driver prints.
#[derive(serde::Deserialize)]
pub struct Stats {
    pub total_requests: u64,
    pub by_status: BTreeMap<String, u64>,
}

/// A client that keeps no idle connection: every request pays a fresh connect, as the first
/// request of a freshly started qrypt-fs does.
pub fn client() -> Res<Client> {
    // reqwest is built without a default TLS provider (rustls with ring, as the product).
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    ctx(
        Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build(),
        "HTTP client",
    )
}

fn url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// `GET {base}/_emulator/stats`.
pub fn emulator_stats(base: &str) -> Res<Stats> {
    let u = url(base, "_emulator/stats");
    let r = ctx(client()?.get(&u).send(), &u)?;
    if !r.status().is_success() {
        return Err(format!("{u}: HTTP {}", r.status()));
    }
    ctx(r.json(), format!("{u}: stats JSON"))
}

/// One entropy request of `kib` KiB: the HTTP status and the body's length.
pub fn entropy(client: &Client, base: &str, token: &str, kib: u32) -> Res<(u16, usize)> {
    let u = url(base, &format!("{}?size={kib}", qrypt_api::ENTROPY_PATH));
    let r = ctx(
        client
            .get(&u)
            .bearer_auth(token)
            .header(ACCEPT, "application/json")
            .send(),
        &u,
    )?;
    let code = r.status().as_u16();
    let body = ctx(r.bytes(), &u)?;
    Ok((code, body.len()))
}
