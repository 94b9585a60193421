//! The sandboxes, proven from inside: `qrypt-fs-sandbox-probe` locks itself into a role's
//! sandbox exactly as the fetcher or the server does, then tries one thing an attacker would;
//! each test asserts the exact outcome (an errno, or death by `SIGSYS`), and that the real
//! work of the role still runs inside.
use crate::common::{self, Emulator, EmulatorConfig};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PROBE: &str = env!("CARGO_BIN_EXE_qrypt-fs-sandbox-probe");

/// How one attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The call succeeded.
    Ok,
    /// The call failed with this errno.
    Errno(i32),
    /// The kernel killed the process (seccomp).
    Killed(i32),
}

const EACCES: Outcome = Outcome::Errno(libc::EACCES);
const SIGSYS: Outcome = Outcome::Killed(libc::SIGSYS);

/// Runs the probe with `args`; its report must say the sandbox is complete.
fn probe(args: &[&str], stdin: &[u8]) -> (Outcome, String) {
    let mut child = Command::new(PROBE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the probe");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("probe output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = stdout.lines();
    let report = lines.next().unwrap_or_default().to_owned();
    assert!(
        report.starts_with("report: full (landlock ABI"),
        "{args:?}: the sandbox is not complete on this kernel: {report:?} {stderr}"
    );
    let outcome = match out.status.signal() {
        Some(sig) => Outcome::Killed(sig),
        None => {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout} {stderr}");
            match lines.next().unwrap_or_default() {
                "ok" => Outcome::Ok,
                l => match l.strip_prefix("errno ") {
                    Some(n) => Outcome::Errno(n.parse().expect("errno")),
                    None => panic!("{args:?}: unexpected output {stdout:?} {stderr}"),
                },
            }
        }
    };
    (outcome, stdout)
}

/// What a fetcher allowed to connect to `port` gets when it tries `attempt`.
fn fetcher(port: u16, attempt: &[&str]) -> Outcome {
    let port = port.to_string();
    let mut args = vec!["fetcher", port.as_str()];
    args.extend_from_slice(attempt);
    probe(&args, b"").0
}

/// A server's files: a token file (0600), a state dir, and somewhere else to write.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), common::TOKEN).expect("token");
        std::fs::set_permissions(
            dir.path().join("token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        std::fs::create_dir(dir.path().join("state")).expect("state dir");
        std::fs::write(dir.path().join("state/budget"), "{}").expect("budget");
        Files { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A process standing in for the server: alive until dropped.
struct Bystander(Child);

impl Bystander {
    fn start() -> Bystander {
        Bystander(Command::new("sleep").arg("60").spawn().expect("sleep"))
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
    fn assert_alive(&mut self) {
        assert_eq!(
            self.0.try_wait().expect("try_wait"),
            None,
            "the bystander died"
        );
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_fetcher_can_neither_read_nor_write_files() {
    let f = Files::new();
    let port = 443;
    assert_eq!(fetcher(port, &["read", &f.path("token")]), EACCES);
    assert_eq!(fetcher(port, &["read", "/etc/shadow"]), EACCES);
    assert_eq!(fetcher(port, &["read", &f.path("state")]), EACCES);
    assert_eq!(fetcher(port, &["read", &f.path("state/budget")]), EACCES);
    assert_eq!(fetcher(port, &["write", &f.path("state/new")]), EACCES);
    assert_eq!(fetcher(port, &["write", &f.path("token")]), EACCES);
    assert_eq!(
        fetcher(port, &["write", "/tmp/qrypt-fs-sandbox-probe"]),
        EACCES
    );
    assert!(!Path::new(&f.path("state/new")).exists());
    assert_eq!(
        std::fs::read_to_string(f.path("token")).expect("token"),
        common::TOKEN
    );
    // What name resolution reads stays readable.
    assert_eq!(fetcher(port, &["read", "/etc/hosts"]), Outcome::Ok);
}

#[test]
fn the_fetcher_connects_only_to_the_endpoints_port() {
    let endpoint = TcpListener::bind("127.0.0.1:0").expect("endpoint");
    let other = TcpListener::bind("127.0.0.1:0").expect("other");
    let port = endpoint.local_addr().expect("addr").port();
    let other_port = other.local_addr().expect("addr").port().to_string();
    assert_eq!(fetcher(port, &["connect", &port.to_string()]), Outcome::Ok);
    // A port something listens on: refused by the sandbox, not by the peer.
    assert_eq!(fetcher(port, &["connect", &other_port]), EACCES);
    assert_eq!(fetcher(port, &["bind", "0"]), EACCES);
    // glibc's nscd socket: refused, so name resolution goes on without it.
    assert_eq!(fetcher(port, &["socket-unix"]), EACCES);
}

#[test]
fn the_fetcher_cannot_execute_trace_signal_or_gain_privileges() {
    let mut server = Bystander::start();
    assert_eq!(fetcher(443, &["exec", "/bin/sh"]), SIGSYS);
    assert_eq!(fetcher(443, &["ptrace", &server.pid()]), SIGSYS);
    assert_eq!(fetcher(443, &["kill", &server.pid()]), SIGSYS);
    assert_eq!(fetcher(443, &["capset"]), SIGSYS);
    assert_eq!(fetcher(443, &["setuid"]), SIGSYS);
    server.assert_alive();
}

#[test]
fn the_fetcher_does_its_real_work_inside_the_sandbox() {
    common::default_signal_dispositions();
    let emu = Emulator::start(EmulatorConfig {
        tls: true,
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    let ca = emu.ca_cert_pem().expect("a CA with TLS");
    // https://localhost:PORT: glibc resolves the name, rustls checks the certificate.
    let url = format!("{}{}?size=1", emu.url(), qrypt_api::ENTROPY_PATH);
    assert!(url.starts_with("https://localhost:"), "{url}");
    let port = emu.addr().port().to_string();
    let (outcome, stdout) = probe(&["fetcher", &port, "fetch", &url], ca.as_bytes());
    assert_eq!(outcome, Outcome::Ok, "{stdout}");
    assert_eq!(emu.stats().count(200), 3, "{stdout}");
    assert_eq!(emu.stats().good_bytes, 3 * 1024, "{stdout}");
}

#[test]
fn the_server_has_no_network_no_exec_and_writes_only_its_state() {
    let f = Files::new();
    let mut bystander = Bystander::start();
    let server = |attempt: &[&str]| {
        let (state, token) = (f.path("state"), f.path("token"));
        let mut args = vec!["server", state.as_str(), token.as_str()];
        args.extend_from_slice(attempt);
        probe(&args, b"").0
    };
    assert_eq!(server(&["socket-inet"]), SIGSYS);
    assert_eq!(server(&["exec", "/bin/sh"]), SIGSYS);
    assert_eq!(server(&["setuid"]), SIGSYS);
    assert_eq!(server(&["write", &f.path("elsewhere")]), EACCES);
    assert_eq!(server(&["write", "/tmp/qrypt-fs-sandbox-probe"]), EACCES);
    assert_eq!(server(&["read", "/etc/shadow"]), EACCES);
    // Signals reach only what it starts itself.
    assert_eq!(
        server(&["kill", &bystander.pid()]),
        Outcome::Errno(libc::EPERM)
    );
    bystander.assert_alive();
    // What it needs: the token, its state dir (threads, lock, sync, rename), /proc, syslog's
    // kind of socket.
    assert_eq!(server(&["read", &f.path("token")]), Outcome::Ok);
    assert_eq!(server(&["work", &f.path("state")]), Outcome::Ok);
    assert_eq!(server(&["socket-unix"]), Outcome::Ok);
    assert!(!Path::new(&f.path("elsewhere")).exists());
}

#[test]
fn a_sandboxed_process_shows_no_privilege_in_proc() {
    let f = Files::new();
    for args in [
        vec!["fetcher".to_owned(), "443".to_owned(), "wait".to_owned()],
        vec![
            "server".to_owned(),
            f.path("state"),
            f.path("token"),
            "wait".to_owned(),
        ],
    ] {
        let mut child = Command::new(PROBE)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("probe");
        // The report line comes after the sandbox is in place.
        let mut out = child.stdout.take().expect("stdout");
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut out, &mut first).expect("report");
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{name} missing"))
                .to_owned()
        };
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(caps), "0000000000000000", "{args:?} {caps}");
        }
        assert_eq!(field("NoNewPrivs:"), "1", "{args:?}");
        assert_eq!(field("Seccomp:"), "2", "{args:?}");
        drop(child.stdin.take());
        let exit = common::wait_timeout(&mut child, Duration::from_secs(30)).expect("exits");
        assert!(exit.success(), "{args:?}: {exit:?}");
    }
}
