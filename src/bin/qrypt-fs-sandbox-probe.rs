//! Test-only: locks itself into a role's sandbox, then tries one thing an attacker would.
//!
//! Built only with the `sandbox-probe` feature (the integration tests' `fuse-tests` turns it
//! on), never packaged. `tests/integration/sandbox.rs` runs it once per attempt and asserts
//! the outcome: `ok`, `errno N` on stdout, or death by `SIGSYS`.
//!
//! ```text
//! qrypt-fs-sandbox-probe fetcher PORT ATTEMPT [ARG]
//! qrypt-fs-sandbox-probe server STATE_DIR READ_FILE ATTEMPT [ARG]
//! ```
use qrypt_fs::sandbox::{self, FetcherPolicy, ServerPolicy};
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// The daemon's allocator, with its background thread (started inside the sandbox), so its
/// system calls are tried too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// As the daemon's: no background thread before the sandbox (it needs a single thread).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 49] = b"background_thread:false,max_background_threads:1\0";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(outcome) => {
            println!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qrypt-fs-sandbox-probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .ok_or_else(|| format!("argument {i} missing"))
    };
    // What `fetch` needs from outside comes before the sandbox, as the real fetcher's does
    // over its channel: the CA certificate on stdin.
    let (report, attempt, target) = match arg(0)?.as_str() {
        "fetcher" => {
            let port: u16 = arg(1)?.parse().map_err(|e| format!("port: {e}"))?;
            let attempt = arg(2)?;
            let mut ca = Vec::new();
            if attempt == "fetch" {
                std::io::stdin()
                    .read_to_end(&mut ca)
                    .map_err(|e| format!("stdin: {e}"))?;
            }
            let report =
                sandbox::apply_fetcher(&FetcherPolicy::new(port)).map_err(|e| e.to_string())?;
            if attempt == "fetch" {
                print_report(&report);
                let _ = tikv_jemalloc_ctl::background_thread::write(true);
                return fetch(&arg(3)?, &ca).map(|_| "ok".to_owned());
            }
            (report, attempt, args.get(3).cloned())
        }
        "server" => {
            let policy = ServerPolicy::new(
                Some(PathBuf::from(arg(1)?)),
                None,
                vec![PathBuf::from(arg(2)?)],
            );
            let report = sandbox::apply_server(&policy).map_err(|e| e.to_string())?;
            (report, arg(3)?, args.get(4).cloned())
        }
        other => return Err(format!("unknown role {other}")),
    };
    print_report(&report);
    let target = || {
        target
            .clone()
            .ok_or_else(|| format!("{attempt} needs an argument"))
    };
    let result = match attempt.as_str() {
        "read" => std::fs::File::open(target()?).map(drop),
        "write" => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(target()?)
            .and_then(|mut f| f.write_all(b"x")),
        "exec" => exec(&target()?),
        "connect" => connect(&target()?),
        "bind" => {
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port(&target()?)?)).map(drop)
        }
        "socket-inet" => socket(libc::AF_INET),
        "socket-unix" => socket(libc::AF_UNIX),
        "ptrace" => ptrace(pid(&target()?)?),
        "kill" => errno_of(unsafe_kill(pid(&target()?)?)),
        "capset" => caps::raise(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .map_err(|e| std::io::Error::other(e.to_string())),
        // Holds still (until stdin closes) so a test can read /proc/PID/status.
        "wait" => std::io::stdin().read_to_end(&mut Vec::new()).map(drop),
        "setuid" => nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).map_err(Into::into),
        "work" => {
            let dir = PathBuf::from(target()?);
            tikv_jemalloc_ctl::background_thread::write(true)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|()| server_work(&dir))
        }
        other => return Err(format!("unknown attempt {other}")),
    };
    Ok(match result {
        Ok(()) => "ok".into(),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("errno {n}"),
            None => format!("error {e}"),
        },
    })
}

/// Printed before the attempt: the report must be seen even when the attempt kills.
fn print_report(report: &sandbox::SandboxReport) {
    println!(
        "report: {report} (landlock ABI {}, {} system calls allowed)",
        report.landlock_abi, report.allowed_syscalls
    );
    let _ = std::io::stdout().flush();
}

fn port(s: &str) -> Result<u16, String> {
    s.parse().map_err(|e| format!("port {s}: {e}"))
}

fn pid(s: &str) -> Result<i32, String> {
    s.parse().map_err(|e| format!("pid {s}: {e}"))
}

fn errno_of(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unsafe_kill(pid: i32) -> libc::c_int {
    // SAFETY: kill with integer arguments only.
    unsafe { libc::kill(pid, libc::SIGTERM) }
}

fn exec(path: &str) -> std::io::Result<()> {
    let prog = CString::new(path).map_err(std::io::Error::other)?;
    let argv = [prog.as_ptr(), std::ptr::null()];
    // SAFETY: a NUL-terminated path and a NULL-terminated argv that outlive the call; it
    // returns only on failure.
    unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
    Err(std::io::Error::last_os_error())
}

fn connect(port_text: &str) -> std::io::Result<()> {
    let p = port(port_text).map_err(std::io::Error::other)?;
    TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)).map(drop)
}

fn socket(family: libc::c_int) -> std::io::Result<()> {
    // SAFETY: socket with integer arguments; the descriptor is closed right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor just opened, owned by nobody else.
    unsafe { libc::close(fd) };
    Ok(())
}

fn ptrace(pid: i32) -> std::io::Result<()> {
    // SAFETY: PTRACE_ATTACH takes no memory from us.
    let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What the fetcher really does: a tokio runtime with worker threads, a name to resolve
/// (`localhost`), TLS with rustls and a certificate from its channel, HTTP with hyper.
fn fetch(url: &str, ca_pem: &[u8]) -> Result<usize, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| e.to_string())?;
        let mut total = 0;
        // Several requests: new connections and a reused one, as the refill makes them.
        for _ in 0..3 {
            let body = client
                .get(url)
                .bearer_auth("emulator-token")
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?
                .error_for_status()
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            total += body.len();
        }
        Ok(total)
    })
}

/// What the server does with its files: threads, the state dir's write, lock, sync and
/// rename, `/proc` of a task, a socketpair.
fn server_work(state_dir: &std::path::Path) -> std::io::Result<()> {
    let dir = state_dir.to_path_buf();
    let worker = std::thread::Builder::new()
        .name("probe-worker".into())
        .spawn(move || -> std::io::Result<()> {
            let tmp = dir.join("probe.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            nix::fcntl::Flock::lock(f.try_clone()?, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| std::io::Error::from(e))?;
            f.write_all(b"state")?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join("probe.state"))?;
            std::fs::File::open(&dir)?.sync_all()?;
            std::fs::remove_file(dir.join("probe.state"))?;
            std::fs::read_to_string(format!("/proc/{}/status", std::process::id()))?;
            let (_a, _b) = std::os::unix::net::UnixStream::pair()?;
            Ok(())
        })?;
    worker
        .join()
        .map_err(|_| std::io::Error::other("worker panicked"))?
}
