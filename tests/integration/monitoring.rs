//! Monitoring as it runs: the alert rules pass promtool's checks and their own unit tests, and
//! `/status` forecasts the spend on a real mount.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(rel)
}

fn promtool(args: &[&str]) {
    require_program("promtool");
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let rules = contrib("prometheus/qrypt-fs.rules.yml");
    let tests = contrib("prometheus/qrypt-fs.rules.test.yml");
    promtool(&["check", "rules", rules.to_str().expect("utf8")]);
    promtool(&["test", "rules", tests.to_str().expect("utf8")]);
    // Every alert of the rules has a firing and a non-firing case in the tests.
    let rules_text = std::fs::read_to_string(&rules).expect("rules");
    let tests_text = std::fs::read_to_string(&tests).expect("tests");
    let alerts: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = tests_text
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.lines().next().map(str::trim) == Some(alert))
            .collect();
        let silent = cases
            .iter()
            .filter(|c| c.contains("exp_alerts: []"))
            .count();
        assert!(
            silent >= 1 && cases.len() > silent,
            "{alert}: {} cases, {silent} of them silent",
            cases.len()
        );
    }
}

#[test]
fn status_forecasts_the_spend_of_each_cap() {
    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let m = MountBuilder::new(&emu)
        .args(["--budget", "2M/day", "--budget", "1G/month"])
        .args(["--buffer-size", "256K"])
        .args(["--state-dir", state.path().to_str().expect("utf8")])
        .mount();
    m.wait_full();
    read_exact(&m.random(), 200_000);
    m.wait_full();
    let s = m.status_json();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let num = |k: &str| {
        s[k].as_f64()
            .unwrap_or_else(|| panic!("{k} not a number: {s}"))
    };
    // Everything this mount requested was in the last hour (a fresh state file): the hour's
    // rate is that spend over 3600 s, the day's over 86400 s.
    let spent = num("budget_day_spent_bytes");
    assert!(spent >= 200_000.0 + 256.0 * 1024.0 * 0.5, "{s}");
    assert!((num("budget_hour_spend_rate_bytes_per_second") * 3600.0 - spent).abs() < 1.0);
    assert!(
        (num("budget_day_spent_bytes") / 86_400.0 - num("budget_day_spend_rate_bytes_per_second"))
            .abs()
            < 1e-6
    );
    // The day's cap runs out at the hour's pace unless midnight comes first; the month's.
    let pace = num("budget_hour_spend_rate_bytes_per_second");
    for period in ["day", "month"] {
        let remaining = num(&format!("budget_{period}_remaining_bytes"));
        let renews = num(&format!("budget_{period}_renews_at"));
        let expected = now + remaining / pace;
        let shown = &s[format!("budget_{period}_runs_out_at").as_str()];
        if expected < renews - 5.0 {
            let at = shown.as_f64().unwrap_or_else(|| panic!("{period}: {s}"));
            assert!((at - expected).abs() < 5.0, "{period}: {at} vs {expected}");
        } else if expected > renews + 5.0 {
            assert!(shown.is_null(), "{period} renews first: {s}");
        }
    }
    // The text shows a forecast line for each cap.
    let text = m.read_file("status");
    for key in ["budget_day_runs_out_at: ", "budget_month_runs_out_at: none"] {
        assert!(text.contains(key), "{key}\n{text}");
    }
    let metrics = m.read_file("metrics");
    assert!(
        metrics.contains("\nqrypt_fs_budget_spend_rate_bytes_per_second{period=\"hour\"} "),
        "{metrics}"
    );
}
