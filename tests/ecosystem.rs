//! Deploying and watching qrypt-fs the usual ways, and real programs reading from it.
//! The consumer programs come from Debian packages that `scripts/install-test-deps.sh` installs.
// These mount real FUSE filesystems: /dev/fuse and root (or fusermount3) needed. Run by
// scripts/test.sh and CI (`--features fuse-tests`); plain `cargo test` builds them empty.
#![cfg(feature = "fuse-tests")]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

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
        "rw,nodev,nosuid,token_file={},endpoint={},rate_limit=off,buffer_size=64K,_netdev,allow_other",
        token.display(),
        emu.url()
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

/// Runs `script` with `sh` in a private mount namespace in which qrypt-fs is installed where
/// mount(8) looks for programs (it runs its helpers with a fixed PATH) and `fstab` is the
/// system's fstab. Nothing outside the namespace changes; the script's mounts die with it.
fn in_private_mount_namespace(
    dir: &std::path::Path,
    fstab: &str,
    script: &str,
) -> std::process::Output {
    require_program("unshare");
    require_program("mount.fuse3");
    let sbin = dir.join("sbin");
    std::fs::create_dir(&sbin).expect("mkdir");
    std::os::unix::fs::symlink(BIN, sbin.join("qrypt-fs")).expect("symlink");
    let fstab_path = dir.join("fstab");
    std::fs::write(&fstab_path, fstab).expect("fstab");
    let setup = format!(
        "set -e; mount --bind '{}' /usr/local/sbin; mount --bind '{}' /etc/fstab; ",
        sbin.display(),
        fstab_path.display()
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(setup + script)
        .env_remove("QRYPT_TOKEN")
        .output()
        .expect("unshare")
}

/// Inside the namespace: read 64 bytes and the mount's line and status into files the test
/// can check, then unmount (also when something failed, so no daemon outlives the test).
fn read_and_unmount_script(dir: &std::path::Path, mnt: &std::path::Path) -> String {
    let (d, m) = (dir.display(), mnt.display());
    format!(
        "trap 'umount -l {m} 2>/dev/null' EXIT; \
         head -c 64 {m}/random > {d}/random.bin; \
         grep ' {m} ' /proc/self/mounts > {d}/mounts; \
         cat {m}/status > {d}/status; \
         umount {m}; \
         trap - EXIT"
    )
}

fn assert_mounted_from_fstab_shape(
    dir: &std::path::Path,
    out: &std::process::Output,
    emu: &Emulator,
    token: &std::path::Path,
) {
    assert!(
        out.status.success(),
        "{:?}: {}",
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
    assert!(fields[3].split(',').any(|o| o == "allow_other"), "{mounts}");
    let status = std::fs::read_to_string(dir.join("status")).expect("status");
    assert!(
        status.contains(&format!("token_source: file {}", token.display())),
        "{status}"
    );
}

#[test]
fn real_mount_t_fuse_qrypt_fs() {
    let emu = emulator();
    let (dir, token, mnt) = token_file_and_mountpoint();
    let mount = format!(
        "mount -t fuse.qrypt-fs qrypt '{}' -o token_file='{}',endpoint={},rate_limit=off,allow_other; ",
        mnt.display(),
        token.display(),
        emu.url()
    );
    let script = mount + &read_and_unmount_script(dir.path(), &mnt);
    let out = in_private_mount_namespace(dir.path(), "", &script);
    assert_mounted_from_fstab_shape(dir.path(), &out, &emu, &token);
}

#[test]
fn the_fstab_line_from_the_readme() {
    let emu = emulator();
    let (dir, token, mnt) = token_file_and_mountpoint();
    let fstab = format!(
        "qrypt {} fuse.qrypt-fs token_file={},endpoint={},rate_limit=off,allow_other,_netdev 0 0\n",
        mnt.display(),
        token.display(),
        emu.url()
    );
    // `mount MOUNTPOINT` alone: mount(8) takes type, source and options from fstab.
    let script =
        format!("mount '{}'; ", mnt.display()) + &read_and_unmount_script(dir.path(), &mnt);
    let out = in_private_mount_namespace(dir.path(), &fstab, &script);
    assert_mounted_from_fstab_shape(dir.path(), &out, &emu, &token);
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
    let mut child = Command::new(BIN)
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
    assert!(unit.contains("ExecStartPre=-/bin/umount -l /mnt/qrypt"));
    assert!(unit.contains("Type=notify"));
    // verify checks that ExecStart's program exists: point it at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("qrypt-fs.service");
    assert!(
        unit.contains("ExecStart=/usr/bin/qrypt-fs "),
        "the package's path"
    );
    std::fs::write(&path, unit.replace("/usr/bin/qrypt-fs", BIN)).expect("write");
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
    let out = Command::new(BIN)
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
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "64K"])
        .mount();
    m.wait_full();
    let _ = read_exact(&m.random(), 1000);
    m.wait_full();
    let text = m.status();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.path().join("status.json")).expect("json"))
            .expect("valid json");
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
        let in_json = match key.as_str() {
            "last_success" => "last_success_at",
            k => k,
        };
        assert!(
            json.get(in_json).is_some(),
            "{key} missing from status.json"
        );
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
        "\nqrypt_fs_info{{endpoint=\"{}\",rate_limit=\"off\",token_source=\"environment (QRYPT_TOKEN)\"}} 1\n",
        text["endpoint"]
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

#[test]
fn rngd_feeds_the_kernel_pool_from_the_file() {
    require_program("rngd");
    require_program("strace");
    let emu = emulator();
    // A small buffer keeps the provenance index (every 16-byte window sent) small.
    let m = MountBuilder::new(&emu)
        .args(["--buffer-size", "64K"])
        .mount();
    let before = m.status_u64("served_bytes");
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("rngd.trace");
    // -d 1 -n 1: no RDRAND, no TPM, so the file is rngd's only source. -W 4096: keep feeding.
    // strace shows what rngd hands the kernel (ioctl RNDADDENTROPY on /dev/random, root only).
    let out = Command::new("timeout")
        .args([
            "3",
            "strace",
            "-f",
            "-xx",
            "-s",
            "64",
            "-e",
            "trace=ioctl",
            "-o",
        ])
        .arg(&trace)
        .args(["rngd", "-f", "-d", "1", "-n", "1", "-W", "4096", "-r"])
        .arg(m.random())
        .output()
        .expect("rngd under strace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 124: still running when timeout stopped it, as a daemon should be.
    assert_eq!(out.status.code(), Some(124), "rngd exited: {stderr}");
    // rngd runs FIPS 140-2 tests on 2500-byte blocks before feeding any of them.
    let read = m.status_u64("served_bytes") - before;
    assert!(read >= 2500, "rngd read only {read} bytes: {stderr}");
    let trace = std::fs::read_to_string(&trace).expect("trace");
    let fed = entropy_fed_to_the_kernel(&trace);
    assert!(
        !fed.is_empty(),
        "no RNDADDENTROPY accepted by the kernel:\n{trace}"
    );
    let prov = Provenance::from(&emu);
    for buf in &fed {
        assert_eq!(buf.len(), 64);
        assert!(prov.knows_any(buf), "fed bytes the emulator never sent");
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
        (qrypt_fs::fs::RANDOM_FILE_SIZE..=16 * 4096).contains(&served),
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
