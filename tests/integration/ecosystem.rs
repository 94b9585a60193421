//! Deploying and watching qrypt-fs the usual ways, and real programs reading from it.
//! The consumer programs come from Debian packages that `scripts/install-test-deps.sh` installs.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn mount_type_and_source(path: &std::path::Path) -> Option<(String, String)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let p = path.to_string_lossy();
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&p.as_ref())).then(|| (f[2].to_owned(), f[0].to_owned()))
    })
}

/// Unmounts and waits for the daemon to go, whatever the test did.
struct Unmount<'a>(&'a std::path::Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
        if is_mounted(self.0) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
}

/// A temporary directory holding a token file and an empty mount point, as an admin sets up
/// for an fstab line.
fn token_file_and_mountpoint() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    (dir, token, mnt)
}

#[test]
fn invoked_the_way_mount_fuse3_invokes_it() {
    let emu = emulator();
    // `_dir` (not `_`) keeps the directory until the end of the test.
    let (_dir, token, mnt) = token_file_and_mountpoint();
    let opts = format!(
        "rw,nodev,nosuid,token_file={},endpoint={},rate_limit=off,buffer_size=64K,_netdev,allow_other,state_dir={}",
        token.display(),
        emu.url(),
        run_state_dir().display()
    );
    // mount.fuse3 runs: TYPE SOURCE MOUNTPOINT -o OPTIONS, and waits for it to return.
    let out = Command::new(BIN)
        .arg("qrypt")
        .arg(&mnt)
        .args(["-o", &opts])
        .env_remove("QRYPT_TOKEN")
        .output()
        .expect("run");
    let _guard = Unmount(&mnt);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        mount_type_and_source(&mnt),
        Some(("fuse.qrypt-fs".to_owned(), "qrypt".to_owned()))
    );
    assert_eq!(read_exact(&mnt.join("random"), 32).len(), 32);
    let status = std::fs::read_to_string(mnt.join("status")).expect("status");
    assert!(status.contains("capacity_bytes: 65536"), "{status}");
    assert!(status.contains(&format!("token_source: file {}", token.display())));
}

/// The README's line that follows the line `after` in one of its code blocks, exactly.
fn readme_line_after(after: &str) -> String {
    const README: &str = include_str!("../../README.md");
    let mut lines = README.lines().skip_while(|l| *l != after);
    assert!(lines.next().is_some(), "README has no line {after:?}");
    lines.next().expect("a line after it").to_owned()
}

/// Runs the README's `line` as written, as root in a private mount namespace set up as the
/// README assumes: qrypt-fs in /usr/local/sbin, the token in /etc/qrypt/token, the fstab line
/// in /etc/fstab, /mnt/qrypt empty (/etc, /var/lib, where the budget's state goes, and /mnt
/// are overlaid there, nothing outside changes). QRYPT_ENDPOINT points the default endpoint at the emulator: the line is not
/// edited. Then reads from the mount and unmounts.
fn run_readme_line(dir: &std::path::Path, emu: &Emulator, fstab: &str, line: &str) {
    require_program("unshare");
    require_program("mount.fuse3");
    let sbin = dir.join("sbin");
    std::fs::create_dir(&sbin).expect("mkdir");
    std::os::unix::fs::symlink(BIN, sbin.join("qrypt-fs")).expect("symlink");
    let ovl = dir.join("ovl");
    std::fs::create_dir(&ovl).expect("mkdir");
    std::fs::write(dir.join("fstab"), format!("{fstab}\n")).expect("fstab");
    let d = dir.display();
    let script = format!(
        "set -e; mount --bind {d}/sbin /usr/local/sbin; \
         mount -t tmpfs tmpfs {d}/ovl; mkdir {d}/ovl/up {d}/ovl/work; \
         mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/ovl/up,workdir={d}/ovl/work /etc; \
         mkdir {d}/ovl/vup {d}/ovl/vwork; \
         mount -t overlay overlay -o lowerdir=/var/lib,upperdir={d}/ovl/vup,workdir={d}/ovl/vwork /var/lib; \
         mkdir -p /etc/qrypt; printf '%s\\n' '{TOKEN}' > /etc/qrypt/token; \
         chmod 600 /etc/qrypt/token; cp {d}/fstab /etc/fstab; \
         mount -t tmpfs tmpfs /mnt; mkdir /mnt/qrypt; \
         trap 'umount -l /mnt/qrypt 2>/dev/null' EXIT; \
         {line}\n\
         head -c 64 /mnt/qrypt/random > {d}/random.bin; \
         grep ' /mnt/qrypt ' /proc/self/mounts > {d}/mounts; \
         cat /mnt/qrypt/status > {d}/status; \
         umount /mnt/qrypt; trap - EXIT"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_remove("QRYPT_TOKEN")
        .env("QRYPT_ENDPOINT", emu.url())
        .output()
        .expect("unshare");
    assert!(
        out.status.success(),
        "{line}: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let random = std::fs::read(dir.join("random.bin")).expect("random.bin");
    assert_eq!(random.len(), 64);
    assert!(Provenance::from(emu).knows_any(&random));
    let mounts = std::fs::read_to_string(dir.join("mounts")).expect("mounts");
    let fields: Vec<&str> = mounts.split(' ').collect();
    assert_eq!(
        (fields[0], fields[2]),
        ("qrypt", "fuse.qrypt-fs"),
        "{mounts}"
    );
    let allow_other = fields[3].split(',').any(|o| o == "allow_other");
    assert_eq!(
        allow_other,
        line.contains("allow_other") || fstab.contains("allow_other")
    );
    let status = std::fs::read_to_string(dir.join("status")).expect("status");
    // The recommended budget, as every way to mount in the README shows it.
    for cap in [
        "budget_day_limit_bytes: 104857600",
        "budget_month_limit_bytes: 1073741824",
    ] {
        assert!(status.contains(cap), "{cap}: {status}");
    }
    assert!(
        status.contains("token_source: file /etc/qrypt/token"),
        "{status}"
    );
    assert!(
        status.contains(&format!("endpoint: {}/", emu.url())),
        "{status}"
    );
}

#[test]
fn the_mount_t_line_from_the_readme() {
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    const README: &str = include_str!("../../README.md");
    let line = README
        .lines()
        .find(|l| l.starts_with("mount -t fuse.qrypt-fs"))
        .expect("README has a mount -t line");
    run_readme_line(dir.path(), &emu, "", line);
}

#[test]
fn the_fstab_line_from_the_readme() {
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let fstab = readme_line_after("# /etc/fstab");
    assert!(fstab.contains(" /mnt/qrypt "), "{fstab}");
    // `mount MOUNTPOINT` alone: mount(8) takes type, source and options from fstab.
    run_readme_line(dir.path(), &emu, &fstab, "mount /mnt/qrypt");
}

fn read_as_nobody(path: &std::path::Path) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "head",
            "-c",
            "32",
        ])
        .arg(path)
        .output()
        .expect("setpriv")
}

#[test]
fn allow_other_lets_other_users_read_and_its_absence_does_not() {
    require_program("setpriv");
    let emu = emulator();
    let private = MountBuilder::new(&emu).mount();
    let out = read_as_nobody(&private.random());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shared = MountBuilder::new(&emu).arg("--allow-other").mount();
    let out = read_as_nobody(&shared.random());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 32);
}

#[test]
fn foreground_reports_readiness_to_systemd() {
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mnt = tempfile::tempdir().expect("tempdir");
    let mut child = qrypt_fs()
        .args(["-f", "--endpoint", &emu.url(), "--rate-limit", "off"])
        .arg(mnt.path())
        .env("QRYPT_TOKEN", TOKEN)
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Readiness means the mount is live.
    let live = is_mounted(mnt.path());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let st = wait_timeout(&mut child, Duration::from_secs(5)).expect("exit");
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(live);
    assert_eq!(st.code(), Some(0));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    require_program("systemd-analyze");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/qrypt-fs.service"
    ))
    .expect("unit");
    assert!(
        unit.contains(
            "ExecStartPre=+/usr/libexec/qrypt-fs/qrypt-fs-mount --allow-other /mnt/qrypt"
        )
    );
    assert!(
        unit.contains("ExecStopPost=+-/usr/libexec/qrypt-fs/qrypt-fs-mount --unmount /mnt/qrypt")
    );
    assert!(unit.contains("Type=notify"));
    // verify checks that ExecStart's program exists: point it at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("qrypt-fs.service");
    assert!(
        unit.contains("ExecStart=/usr/bin/qrypt-fs "),
        "the package's path"
    );
    let unit = unit.replace("/usr/bin/qrypt-fs", BIN).replace(
        "/usr/libexec/qrypt-fs/qrypt-fs-mount",
        env!("CARGO_BIN_EXE_qrypt-fs-mount"),
    );
    std::fs::write(&path, unit).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    // Unknown keys and bad values are only warnings: any output at all is a failure.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn background_logs_to_the_log_file() {
    let emu = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("qrypt.log");
    let mnt = tempfile::tempdir().expect("tempdir");
    let out = qrypt_fs()
        .args([
            "--endpoint",
            &emu.url(),
            "--rate-limit",
            "off",
            "--log-file",
        ])
        .arg(&log)
        .arg(mnt.path())
        .env("QRYPT_TOKEN", TOKEN)
        .output()
        .expect("run");
    let _guard = Unmount(mnt.path());
    assert_eq!(out.status.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("mounted on") {
            assert!(!text.contains(TOKEN));
            break;
        }
        assert!(Instant::now() < deadline, "log: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_json_and_metrics_carry_the_same_numbers() {
    let emu = emulator();
    let m = full_mount(&emu);
    let _ = read_exact(&m.random(), 1000);
    m.wait_full();
    let text = m.status();
    let json: serde_json::Value = m.status_json();
    let metrics = std::fs::read_to_string(m.path().join("metrics")).expect("metrics");
    // Every number of /status, under the same name in JSON and with Prometheus' conventions
    // (`_total` for counters) in /metrics. The buffer is full and idle, so nothing moves.
    for (key, metric) in [
        ("buffered_bytes", "buffered_bytes"),
        ("capacity_bytes", "capacity_bytes"),
        ("buffer_fill_percent", "buffer_fill_percent"),
        ("served_bytes", "served_bytes_total"),
        ("fetched_bytes", "fetched_bytes_total"),
        ("discarded_bytes", "discarded_bytes_total"),
        ("requests_ok", "requests_ok_total"),
        ("requests_failed", "requests_failed_total"),
        ("consecutive_failures", "consecutive_failures"),
        ("waiting_readers", "waiting_readers"),
    ] {
        assert!(json[key].is_u64(), "{key} is not an integer: {json}");
        assert_eq!(
            json[key].as_u64().map(|v| v.to_string()).as_ref(),
            text.get(key),
            "{key}"
        );
        assert!(
            metrics.contains(&format!("\nqrypt_fs_{metric} {}\n", text[key])),
            "{metric} != {key} {}: {metrics}",
            text[key]
        );
    }
    for key in text.keys() {
        assert!(json.get(key).is_some(), "{key} missing from status.json");
    }
    assert_eq!(json["state"], "ok");
    assert_eq!(json["memory_locked"], true);
    assert!(metrics.contains("\nqrypt_fs_memory_locked 1\n"));
    assert!(metrics.contains("\nqrypt_fs_mix_local 0\n"));
    assert!(metrics.contains(&format!(
        "\nqrypt_fs_last_success_timestamp_seconds {}\n",
        json["last_success_at"]
    )));
    assert!(metrics.contains(&format!(
        "\nqrypt_fs_info{{endpoint=\"{}\",token_source=\"environment (QRYPT_TOKEN)\",\
         sandbox=\"{}\",rate_limit=\"off\",budget=\"off\",budget_state_file=\"none\",\
         tenant_by=\"uid\",tenant_budget=\"off\"}} 1\n",
        text["endpoint"], text["sandbox"]
    )));
    let mut helps = std::collections::HashSet::new();
    let mut types = std::collections::HashSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split(' ').next().expect("name").to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split(' ');
            types.insert(f.next().expect("name").to_owned());
            assert!(matches!(f.next(), Some("gauge" | "counter")), "{line}");
        } else {
            let (name, value) = line.rsplit_once(' ').expect("sample line");
            let base = name.split('{').next().expect("name");
            assert!(base.starts_with("qrypt_fs_"), "{line}");
            assert!(
                helps.contains(base) && types.contains(base),
                "no HELP/TYPE for {base}"
            );
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
        }
    }
    assert!(metrics.contains(&format!(
        "qrypt_fs_served_bytes_total {}\n",
        text["served_bytes"]
    )));
    assert!(metrics.contains("qrypt_fs_state{state=\"ok\"} 1\n"));
}

#[test]
fn rngtest_fips_140_2_over_1000_blocks() {
    require_program("rngtest");
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    let input = std::fs::File::open(m.random()).expect("open");
    let out = Command::new("rngtest")
        .args(["-c", "1000"])
        .stdin(input)
        .output()
        .expect("rngtest");
    let report = String::from_utf8_lossy(&out.stderr);
    let failures: u64 = report
        .lines()
        .find_map(|l| l.split("FIPS 140-2 failures: ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no failure count in: {report}"));
    let successes: u64 = report
        .lines()
        .find_map(|l| l.split("FIPS 140-2 successes: ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no success count in: {report}"));
    assert_eq!(successes + failures, 1000, "{report}");
    // About 0.8 failures per 1000 blocks are expected of a perfect source.
    assert!(failures <= 5, "{report}");
}

/// The buffers of the successful `ioctl(RNDADDENTROPY)` calls in an `strace -xx` log.
fn entropy_fed_to_the_kernel(trace: &str) -> Vec<Vec<u8>> {
    trace
        .lines()
        .filter(|l| l.contains("RNDADDENTROPY") && l.trim_end().ends_with("= 0"))
        .filter_map(|l| {
            let hex = l.split("buf=\"").nth(1)?.split('"').next()?;
            hex.split("\\x")
                .filter(|h| !h.is_empty())
                .map(|h| u8::from_str_radix(h, 16).ok())
                .collect()
        })
        .collect()
}

/// Runs `rngd -f ARGS -r FILE` under strace for 3 s; returns the bytes it read from the file,
/// the buffers the kernel accepted (ioctl RNDADDENTROPY), and the trace.
fn rngd_for_3s(m: &Mount, args: &[&str]) -> (u64, Vec<Vec<u8>>, String) {
    require_program("rngd");
    require_program("strace");
    let before = m.status_u64("served_bytes");
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("rngd.trace");
    // strace shows what rngd hands the kernel (ioctl RNDADDENTROPY on /dev/random, root only)
    // and what it waits for.
    let out = Command::new("timeout")
        .args([
            "3",
            "strace",
            "-f",
            "-xx",
            "-s",
            "64",
            "-e",
            "trace=ioctl,poll",
            "-o",
        ])
        .arg(&trace)
        .args(["rngd", "-f", "-p"])
        .arg(dir.path().join("rngd.pid"))
        .args(args)
        .arg("-r")
        .arg(m.random())
        .output()
        .expect("rngd under strace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 124: still running when timeout stopped it, as a daemon should be.
    assert_eq!(out.status.code(), Some(124), "rngd exited: {stderr}");
    let read = m.status_u64("served_bytes") - before;
    let trace = std::fs::read_to_string(&trace).expect("trace");
    (read, entropy_fed_to_the_kernel(&trace), trace)
}

/// What the README says of rngd (rng-tools5) on this kernel: with `-d 1 -n 1` the file is its
/// only source; it reads one 2500-byte block (after 8 bytes to start its FIPS tests), feeds
/// the kernel one 64-byte step, then waits in poll(POLLOUT) on /dev/random, which since Linux
/// 5.18 never reports writable once the kernel's CRNG is ready. `-W 4096` (the fill
/// watermark) does not change that: it only writes write_wakeup_threshold, which the kernel
/// no longer uses. So rngd feeds once, not continuously.
#[test]
fn rngd_feeds_the_kernel_one_step_then_waits_for_the_kernel_to_ask() {
    let emu = emulator();
    // A small buffer keeps the provenance index (every 16-byte window sent) small.
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "64K"])
        .mount();
    for args in [
        &["-d", "1", "-n", "1"][..],
        &["-d", "1", "-n", "1", "-W", "4096"],
    ] {
        let (read, fed, trace) = rngd_for_3s(&m, args);
        assert_eq!(read, 8 + 2500, "rngd {args:?} read {read} bytes:\n{trace}");
        assert_eq!(
            fed.len(),
            1,
            "rngd {args:?} fed {} times:\n{trace}",
            fed.len()
        );
        assert_eq!(fed[0].len(), 64);
        let prov = Provenance::from(&emu);
        assert!(prov.knows_any(&fed[0]), "fed bytes the emulator never sent");
        let last = trace.lines().rfind(|l| !l.contains("SIG")).unwrap_or("");
        assert!(
            last.contains("poll([{fd=") && last.contains("events=POLLOUT}]"),
            "rngd {args:?} is not waiting for the kernel to ask: {last}\n{trace}"
        );
    }
}

/// Without `-d 1` rngd prefers the CPU's RDRAND: it reads only 8 bytes from the file and feeds
/// the kernel bytes that did not come from it (why the README's command has `-d 1 -n 1`).
#[test]
fn rngd_without_no_drng_feeds_rdrand_not_the_file() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.split_whitespace().any(|w| w == "rdrand") {
        eprintln!("no RDRAND on this CPU: rngd has no other source to prefer");
        return;
    }
    let emu = emulator();
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "64K"])
        .mount();
    let (read, fed, trace) = rngd_for_3s(&m, &[]);
    assert_eq!(read, 8, "{trace}");
    assert!(!fed.is_empty(), "{trace}");
    let prov = Provenance::from(&emu);
    for buf in &fed {
        assert!(!prov.knows_any(buf), "fed bytes from the file: {trace}");
    }
}

#[test]
fn openssl_rand_with_rand_file_terminates() {
    require_program("openssl");
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    m.wait_full();
    let t = Instant::now();
    let mut child = Command::new("openssl")
        .args(["rand", "-rand"])
        .arg(m.random())
        .args(["-hex", "32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    let st = wait_timeout(&mut child, Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "openssl rand -rand did not finish"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // It read the file "to its size" and stopped.
    let served = m.status_u64("served_bytes");
    assert!(
        (qrypt_fs::RANDOM_FILE_SIZE..=16 * 4096).contains(&served),
        "served {served}"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read");
    assert_eq!(out.trim().len(), 64, "{out}");
}

#[test]
fn java_securerandom_seeded_through_egd() {
    require_program("java");
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    m.wait_full();
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("Seed.java");
    std::fs::write(
        &src,
        "public class Seed { public static void main(String[] a) throws Exception {\n\
         java.security.SecureRandom r = java.security.SecureRandom.getInstance(\"SHA1PRNG\");\n\
         byte[] s = r.generateSeed(32); System.out.println(s.length); } }\n",
    )
    .expect("write");
    let before = m.status_u64("served_bytes");
    let out = Command::new("java")
        .arg(format!("-Djava.security.egd=file:{}", m.random().display()))
        .arg(&src)
        .output()
        .expect("java");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "32");
    assert!(
        m.status_u64("served_bytes") >= before + 32,
        "Java did not read the file"
    );
}

#[test]
fn python_dd_and_cat_head() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    let p = m.random();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys; f = open(sys.argv[1], 'rb', buffering=0); print(len(f.read(32)))",
        ])
        .arg(&p)
        .output()
        .expect("python");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "32");
    let out = Command::new("dd")
        .arg(format!("if={}", p.display()))
        .args([
            "of=/dev/stdout",
            "bs=1M",
            "count=8",
            "iflag=fullblock",
            "status=none",
        ])
        .output()
        .expect("dd");
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 8 << 20);
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("cat '{}' | head -c 1000 | wc -c", p.display()),
        ])
        .output()
        .expect("sh");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
}

/// `cp` probes a regular file for holes with lseek(SEEK_DATA); /random is a stream and refuses
/// any seek (ESPIPE), so cp stops at once, having read nothing (the README says so).
#[test]
fn cp_stops_at_once_with_illegal_seek() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let out = Command::new("cp")
        .arg(m.random())
        .arg(dir.path().join("out"))
        .output()
        .expect("cp");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot lseek '{}': Illegal seek",
            m.random().display()
        )),
        "{stderr}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(m.status_u64("served_bytes"), 0);
}

/// The README's way to mix Qrypt's bytes into the kernel's pool whenever one likes (rngd only
/// feeds when the kernel asks): write them to /dev/random.
#[test]
fn dd_into_dev_random_mixes_bytes_into_the_kernel_pool() {
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    let out = Command::new("dd")
        .arg(format!("if={}", m.random().display()))
        .args(["of=/dev/random", "bs=64", "count=1", "iflag=fullblock"])
        .output()
        .expect("dd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("64 bytes copied"), "{stderr}");
    assert_eq!(m.status_u64("served_bytes"), 64);
}
