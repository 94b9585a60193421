//! The three status files describe one set of fields: `/status` and `/status.json` carry the
//! same keys, and `/metrics` has a `qrypt_fs_*` series for every numeric field of
//! `/status.json`, checked on a real mount in the two states that between them show every
//! field.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;

/// Per-cap keys are compared once, as `budget_PERIOD_...`.
fn per_period(key: &str) -> String {
    ["hour", "day", "month"]
        .iter()
        .fold(key.to_owned(), |k, p| {
            k.replace(&format!("budget_{p}_"), "budget_PERIOD_")
        })
}

/// What one snapshot of the files shows: the keys of `/status`, the keys of `/status.json`, the
/// numeric ones among the latter, and the `qrypt_fs_*` series names of `/metrics` (without
/// labels).
#[derive(Default)]
struct Shown {
    text: BTreeSet<String>,
    json: BTreeSet<String>,
    numeric: BTreeSet<String>,
    metrics: BTreeSet<String>,
}

impl Shown {
    fn of(m: &Mount) -> Shown {
        let mut shown = Shown {
            text: parse_status(&m.read_file("status"))
                .keys()
                .map(|k| per_period(k))
                .collect(),
            ..Shown::default()
        };
        let json = m.status_json();
        for (key, value) in json.as_object().expect("an object") {
            assert!(
                !value.is_array(),
                "{key}: one flat object, as /status: {value}"
            );
            shown.json.insert(per_period(key));
            if value.is_number() {
                shown.numeric.insert(per_period(key));
            }
        }
        shown.metrics = m
            .read_file("metrics")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("qrypt_fs_"))
            .filter_map(|l| l.split([' ', '{']).next())
            .map(str::to_owned)
            .collect();
        shown
    }

    fn extend(&mut self, other: Shown) {
        self.text.extend(other.text);
        self.json.extend(other.json);
        self.numeric.extend(other.numeric);
        self.metrics.extend(other.metrics);
    }

    /// The series a numeric field of `/status.json` goes by (the man page's rule): its name (a
    /// gauge), its name with `_total` (a counter), or for a time `NAME_at` (or `NAME`)
    /// `NAME_timestamp_seconds`; a per-period field `KEY_PERIOD_FIELD` as `KEY_FIELD`,
    /// labelled by period.
    fn has_series(&self, field: &str) -> bool {
        let name = field.replace("_PERIOD_", "_");
        let time = format!("{}_timestamp_seconds", name.trim_end_matches("_at"));
        [name.clone(), format!("{name}_total"), time]
            .iter()
            .any(|n| self.metrics.contains(n))
    }
}

#[test]
fn status_status_json_and_metrics_carry_the_same_fields() {
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
    // (next attempt, last error and failures by class appear only then).
    m.wait_full();
    let mut seen = Shown::of(&m);
    emu.set_fault(Fault::Status(503), None);
    // Drain below the refill line without ever waiting (O_NONBLOCK): the refill then fails.
    let f = open_nonblocking(&m.random());
    while read_once(&f, 1 << 20).is_ok() {}
    m.wait_status("backing off", Duration::from_secs(10), |s| {
        s["state"] == "backing off" && s["next_attempt_in_seconds"] != "none"
    });
    seen.extend(Shown::of(&m));

    for key in [
        "served_bytes",
        "last_error_at",
        "last_success_at",
        "budget_PERIOD_renews_at",
    ] {
        assert!(
            seen.numeric.contains(key),
            "{key} not a number: {:?}",
            seen.numeric
        );
    }
    let only_text: BTreeSet<String> = seen.text.difference(&seen.json).cloned().collect();
    let only_json: BTreeSet<String> = seen.json.difference(&seen.text).cloned().collect();
    let no_metric: BTreeSet<String> = seen
        .numeric
        .iter()
        .filter(|f| !seen.has_series(f))
        .cloned()
        .collect();
    assert_eq!(
        (only_text, only_json),
        (BTreeSet::new(), BTreeSet::new()),
        "keys of /status alone, and of /status.json alone (json: {:?})",
        seen.json
    );
    assert_eq!(
        no_metric,
        BTreeSet::new(),
        "numeric fields of /status.json without a series in /metrics {:?}",
        seen.metrics
    );
}
