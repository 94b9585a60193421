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

/// Child processes killed (and reaped) when the test ends, however it ends.
struct Killed(Vec<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// GET over HTTP/1.0 on loopback: the body, or None while nothing listens.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    r.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The value of the one sample an instant query returns, or None (no answer, no sample yet).
fn query(port: u16, promql: &str) -> Option<f64> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(port, &format!("/api/v1/query?query={q}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{promql}: {body}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn copy_metrics(mount: &Path, dir: &Path) -> String {
    let out = Command::new(contrib("qrypt-fs-metrics"))
        .args([mount, dir])
        .output()
        .expect("run contrib/qrypt-fs-metrics");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(names, ["qrypt-fs.prom"], "only the file, no temporary left");
    std::fs::read_to_string(dir.join("qrypt-fs.prom")).expect("qrypt-fs.prom")
}

#[test]
fn prometheus_scrapes_the_mount_through_node_exporter() {
    for program in ["prometheus", "prometheus-node-exporter"] {
        require_program(program);
    }
    let textfiles = tempfile::tempdir().expect("tempdir");
    let tsdb = tempfile::tempdir().expect("tempdir");
    let (node_port, prom_port) = (free_port(), free_port());
    let config = tsdb.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: node\n    static_configs:\n      \
             - targets: ['127.0.0.1:{node_port}']\n"
        ),
    )
    .expect("config");
    let quiet = || std::process::Stdio::null();
    let mut children = Killed(Vec::new());
    children.0.push(
        Command::new("prometheus-node-exporter")
            .args([
                "--collector.disable-defaults",
                "--collector.textfile",
                &format!(
                    "--collector.textfile.directory={}",
                    textfiles.path().display()
                ),
                &format!("--web.listen-address=127.0.0.1:{node_port}"),
            ])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .expect("start node_exporter"),
    );
    children.0.push(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tsdb.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .expect("start prometheus"),
    );

    let emu = emulator();
    let state = tempfile::tempdir().expect("tempdir");
    let mut m = MountBuilder::new(&emu)
        .args(["--budget", "1G/day", "--buffer-size", "64K"])
        .args(["--state-dir", state.path().to_str().expect("utf8")])
        .mount();
    m.wait_full();
    read_exact(&m.random(), 12_345);
    let text = copy_metrics(m.path(), textfiles.path());
    // Nothing reads in between: /status now shows what the copy holds.
    let s = m.status();
    let served: f64 = status_num(&s, "served_bytes");
    let remaining: f64 = status_num(&s, "budget_day_remaining_bytes");
    assert!(served >= 12_345.0, "{served}");
    assert!(text.contains("\nqrypt_fs_mounted 1\n"), "{text}");
    assert!(
        text.contains(&format!("\nqrypt_fs_served_bytes_total {served}\n")),
        "{text}"
    );

    wait_for("Prometheus holds qrypt_fs_served_bytes_total", 90, || {
        query(prom_port, "qrypt_fs_served_bytes_total") == Some(served)
    });
    assert_eq!(
        query(prom_port, "qrypt_fs_budget_remaining_bytes{period=\"day\"}"),
        Some(remaining)
    );
    assert_eq!(query(prom_port, "qrypt_fs_state{state=\"ok\"}"), Some(1.0));
    assert_eq!(query(prom_port, "qrypt_fs_mounted"), Some(1.0));
    assert!(query(prom_port, "node_textfile_mtime_seconds").is_some());

    // The mount gone: the next copy says so, and the mount's series leave Prometheus.
    m.stop();
    let text = copy_metrics(m.path(), textfiles.path());
    assert!(text.ends_with("\nqrypt_fs_mounted 0\n"), "{text}");
    assert!(!text.contains("qrypt_fs_served_bytes_total"), "{text}");
    wait_for("Prometheus sees qrypt_fs_mounted 0", 60, || {
        query(prom_port, "qrypt_fs_mounted") == Some(0.0)
    });
    wait_for("served bytes gone stale", 60, || {
        query(prom_port, "qrypt_fs_served_bytes_total").is_none()
    });
}
