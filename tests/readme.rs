//! The README's list of status fields, checked against what a real mount shows, both ways:
//! every field `/status`, `/status.json` and `/metrics` carry is listed, and every listed
//! field exists.
// These mount real FUSE filesystems: /dev/fuse and root (or fusermount3) needed. Run by
// scripts/test.sh and CI (`--features fuse-tests`); plain `cargo test` builds them empty.
#![cfg(feature = "fuse-tests")]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const README: &str = include_str!("../README.md");

/// The field table: the rows after the header `| `status` | `status.json` | `metrics` |`, as
/// the backticked names of each of the first three columns.
fn readme_fields() -> [BTreeSet<String>; 3] {
    let mut cols: [BTreeSet<String>; 3] = Default::default();
    let mut lines = README
        .lines()
        .skip_while(|l| !l.starts_with("| `status` | `status.json` | `metrics` |"));
    assert!(lines.next().is_some(), "README has no status field table");
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        for (col, cell) in cols.iter_mut().zip(&cells) {
            for name in cell.split('`').skip(1).step_by(2) {
                // A metric family without its labels: `qrypt_fs_state{state=...}`.
                col.insert(name.split('{').next().unwrap_or(name).to_owned());
            }
        }
    }
    cols
}

/// The fields one snapshot of each file shows.
fn shown(m: &Mount) -> [BTreeSet<String>; 3] {
    let read = |f: &str| std::fs::read_to_string(m.path().join(f)).expect("read");
    // Per-cap keys are listed once, as budget_PERIOD_...
    let text = parse_status(&read("status"))
        .into_keys()
        .map(|k| {
            ["hour", "day", "month"].iter().fold(k, |k, p| {
                k.replace(&format!("budget_{p}_"), "budget_PERIOD_")
            })
        })
        .collect();
    let json: serde_json::Value = serde_json::from_str(&read("status.json")).expect("json");
    let json = json
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    let metrics = read("metrics")
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    [text, json, metrics]
}

#[test]
fn the_readme_lists_every_status_field_and_only_those() {
    let listed = readme_fields();
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    // With a budget and pacing, so their fields show too.
    let m = MountBuilder::new(&emu)
        .rate_limit("30/10")
        .args([
            "--max-backoff",
            "60",
            "--budget",
            "1G/month",
            "--buffer-size",
            "32K",
        ])
        .args(["--state-dir", state.path().to_str().expect("utf8")])
        .mount();
    // Two states between them show every field: serving, and backing off after a failure
    // (next attempt, last error and failures by class appear only then in /metrics).
    m.wait_full();
    let mut seen = shown(&m);
    emu.set_fault(Fault::Status(503), None);
    // Drain below the refill line without ever waiting (O_NONBLOCK): the refill then fails.
    let f = open_nonblocking(&m.random());
    while read_once(&f, 1 << 20).is_ok() {}
    m.wait_status("backing off", Duration::from_secs(10), |s| {
        s["state"] == "backing off" && s["next_attempt_in_seconds"] != "none"
    });
    for (all, now) in seen.iter_mut().zip(shown(&m)) {
        all.extend(now);
    }
    for (i, file) in ["status", "status.json", "metrics"].iter().enumerate() {
        let missing: Vec<_> = seen[i].difference(&listed[i]).collect();
        let extra: Vec<_> = listed[i].difference(&seen[i]).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{file}: shown but not in the README: {missing:?}; in the README but never \
             shown: {extra:?}"
        );
    }
}
