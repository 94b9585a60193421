//! A hostile token file: whatever is swapped in for it (a FIFO, a device, a huge file, a
//! directory, a socket, a chain of symlinks, a file on a filesystem that hangs), the refill goes
//! on with the token in use, `/status` says why, and a good file put back is taken on the next
//! SIGHUP. At start, such a file is a clear error and nothing is mounted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

const OLD: &str = "old-token";
const NEW: &str = "new-token";

/// Puts `make`'s creation at `path` in place of whatever is there.
fn swap_in(path: &Path, make: impl FnOnce(&Path)) {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&tmp);
    make(&tmp);
    let _ = std::fs::remove_dir_all(path);
    let _ = std::fs::remove_file(path);
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// Makes what is swapped in for the token file.
type Make = Box<dyn FnOnce(&Path)>;

fn regular(text: &'static str) -> impl FnOnce(&Path) {
    move |p: &Path| std::fs::write(p, text).expect("write")
}

fn fifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

fn hundred_mb(p: &Path) {
    // 100 MB in one line, sparse: it must be refused without being read.
    std::fs::File::create(p)
        .and_then(|f| f.set_len(100_000_000))
        .expect("sparse file");
}

fn symlink_to(target: &'static str) -> impl FnOnce(&Path) {
    move |p: &Path| std::os::unix::fs::symlink(target, p).expect("symlink")
}

/// Reads three buffers' worth, which needs refills, within the read timeout.
fn refill_goes_on(m: &Mount, emu: &Emulator) {
    let ok_before = emu.stats().count(200);
    let data = read_exact(&m.random(), 3 * 65536);
    Provenance::from(emu).check_run(&data[..65536]);
    assert!(emu.stats().count(200) > ok_before, "refilled");
    assert_eq!(emu.stats().count(401), 0, "never a rejected token");
    assert_eq!(m.status()["state"], "ok");
}

/// An emulator that takes only `OLD`, a token file in a temporary directory holding it, and a
/// mount that reads it.
fn mounted_with_old_token() -> (Emulator, tempfile::TempDir, PathBuf, Mount) {
    let emu = emulator();
    emu.set_tokens(vec![OLD.into()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{OLD}\n")).expect("write");
    let m = mount_with_token_file(&emu, &token_file);
    (emu, dir, token_file, m)
}

fn mount_with_token_file(emu: &Emulator, token_file: &Path) -> Mount {
    MountBuilder::new(emu)
        .token(None)
        .args([
            "--buffer-size",
            "64K",
            "--read-timeout",
            "10",
            "--token-file",
        ])
        .arg(token_file.to_str().expect("utf8"))
        .mount()
}

#[test]
fn a_fifo_swapped_in_keeps_the_old_token_and_a_file_put_back_is_taken() {
    let (emu, _dir, token_file, m) = mounted_with_old_token();
    m.wait_full();

    swap_in(&token_file, fifo);
    m.sighup();
    m.wait_status("token_error", Duration::from_secs(5), |s| {
        s["token_error"].contains("is a FIFO, not a regular file")
    });
    let s = m.status();
    assert!(s["token_error"].contains(token_file.to_str().expect("utf8")));
    assert!(s["token_error"].contains("keeping the token in use"));
    assert!(s["last_error"].contains("is a FIFO"), "{s:?}");
    // The refill never waits for the FIFO, and a second SIGHUP is not logged again.
    refill_goes_on(&m, &emu);
    m.sighup();
    std::thread::sleep(Duration::from_millis(300));
    refill_goes_on(&m, &emu);
    assert_eq!(m.log_text().matches("is a FIFO").count(), 1, "logged once");

    // A regular file again, with a new token (the old one now rejected): taken on SIGHUP.
    m.wait_full();
    emu.set_tokens(vec![NEW.into()]);
    swap_in(&token_file, regular("new-token\n"));
    m.sighup();
    m.wait_status("the new token", Duration::from_secs(5), |s| {
        s["token_error"] == "none"
    });
    refill_goes_on(&m, &emu);
    let log = m.log_text();
    assert!(
        !log.contains(OLD) && !log.contains(NEW),
        "no token in the log"
    );
}

#[test]
fn every_kind_of_hostile_file_is_refused_and_the_refill_goes_on() {
    let (emu, dir, token_file, m) = mounted_with_old_token();
    let socket_at = dir.path().join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket_at).expect("socket");
    let chain_mid = dir.path().join("mid");
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &chain_mid).expect("symlink");
    std::fs::write(dir.path().join("elsewhere"), format!("{NEW}\n")).expect("write");
    let socket_target: &'static str = Box::leak(socket_at.to_str().expect("utf8").into());
    let mid_target: &'static str = Box::leak(chain_mid.to_str().expect("utf8").into());

    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "/dev/zero",
            Box::new(symlink_to("/dev/zero")),
            "is a character device",
        ),
        (
            "a 100 MB file",
            Box::new(hundred_mb),
            "larger than 16384 bytes",
        ),
        (
            "a directory",
            Box::new(|p: &Path| std::fs::create_dir(p).expect("mkdir")),
            "is a directory",
        ),
        (
            "a socket",
            Box::new(symlink_to(socket_target)),
            "is a socket",
        ),
        (
            "a symlink to a symlink",
            Box::new(symlink_to(mid_target)),
            "symlink to a symlink",
        ),
        (
            "a 9000-byte token",
            Box::new(|p: &Path| std::fs::write(p, "x".repeat(9000)).expect("write")),
            "a token is at most 8192",
        ),
    ];
    for (what, make, why) in cases {
        swap_in(&token_file, make);
        m.sighup();
        m.wait_status(what, Duration::from_secs(5), |s| {
            s["token_error"].contains(why)
        });
        refill_goes_on(&m, &emu);
    }
    // One symlink to a regular file is followed (systemd credentials, Kubernetes secrets).
    m.wait_full();
    emu.set_tokens(vec![NEW.into()]);
    swap_in(&token_file, symlink_to("elsewhere"));
    m.sighup();
    m.wait_status("the new token", Duration::from_secs(5), |s| {
        s["token_error"] == "none"
    });
    refill_goes_on(&m, &emu);
}

#[test]
fn a_token_file_on_a_hung_filesystem_never_holds_up_a_sighup_or_a_file_put_back() {
    let (emu, _dir, token_file, m) = mounted_with_old_token();
    // A second qrypt-fs, whose daemon is then stopped: its /status stands for a file on a hung
    // network filesystem.
    let mut hung = MountBuilder::new(&emu)
        .token(Some(OLD))
        .args(["--buffer-size", "64K"])
        .mount();
    m.wait_full();
    let on_hung = hung.path().join("status");
    swap_in(&token_file, |p| {
        std::os::unix::fs::symlink(&on_hung, p).expect("symlink")
    });
    let stopped = Stopped::stop(&hung);

    m.sighup();
    m.wait_status("the overdue read", Duration::from_secs(10), |s| {
        s["token_error"].contains("no answer within 5 s (a hung filesystem?)")
    });
    let s = m.status();
    assert!(s["token_error"].contains(token_file.to_str().expect("utf8")));
    assert!(s["token_error"].contains("keeping the token in use"));
    refill_goes_on(&m, &emu);

    // A good file put back is read on the next SIGHUP, although the first read still hangs.
    swap_in(&token_file, regular("old-token\n"));
    m.sighup();
    m.wait_status("the file put back", Duration::from_secs(3), |s| {
        s["token_error"] == "none"
    });

    // Hung again, and the token rotated: the refill is refused, and the file is looked at
    // every 2 s, each look hanging.
    swap_in(&token_file, |p| {
        std::os::unix::fs::symlink(&on_hung, p).expect("symlink")
    });
    m.sighup();
    m.wait_status("the overdue read", Duration::from_secs(10), |s| {
        s["token_error"].contains("no answer within 5 s")
    });
    m.wait_full();
    emu.set_tokens(vec![NEW.into()]);
    let _drained = read_exact(&m.random(), 65536);
    m.wait_status("unauthorized", Duration::from_secs(5), |s| {
        s["state"] == "unauthorized"
    });
    // Long enough for a look at the file to be overdue and fresh ones to hang too.
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(m.status()["state"], "unauthorized");

    // The new token in a regular file, and a SIGHUP: taken at once. (`degraded`: working, with
    // the 401 less than a minute ago.)
    swap_in(&token_file, regular("new-token\n"));
    m.sighup();
    m.wait_status("the new token", Duration::from_secs(3), |s| {
        s["state"] == "degraded" && s["token_error"] == "none"
    });
    let ok_before = emu.stats().count(200);
    let data = read_exact(&m.random(), 3 * 65536);
    Provenance::from(&emu).check_run(&data[..65536]);
    assert!(emu.stats().count(200) > ok_before, "refilled");
    assert_eq!(emu.stats().count(401), 1, "the old token was tried once");
    let s = m.status();
    assert_eq!(s["state"], "degraded");
    assert_eq!(s["token_error"], "none");
    assert_eq!(s["failures"], "http_401=1");
    assert_eq!(s["consecutive_failures"], "0");
    let log = m.log_text();
    assert!(log.contains("token reloaded from"), "{log}");
    assert!(
        !log.contains(OLD) && !log.contains(NEW),
        "no token in the log"
    );

    // Continued, the stopped daemon ends on SIGTERM like any other.
    drop(stopped);
    let exit = hung.stop();
    assert!(exit.success(), "{exit}");
}

/// Starts qrypt-fs on a fresh directory with `token_file`; it must exit 1 at once, say why
/// (naming the file) and mount nothing.
fn refused_at_start(token_file: &Path, why: &str) {
    let emu = emulator();
    let mnt = tempfile::tempdir().expect("tempdir");
    let mut child = qrypt_fs()
        .args(["-f", "--endpoint", &emu.url(), "--token-file"])
        .arg(token_file)
        .arg(mnt.path())
        .env_remove("QRYPT_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        if is_mounted(mnt.path()) {
            let _ = nix::mount::umount2(mnt.path(), nix::mount::MntFlags::MNT_DETACH);
        }
        panic!(
            "qrypt-fs did not exit with token file {}",
            token_file.display()
        );
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(token_file.to_str().expect("utf8")),
        "{stderr}"
    );
    assert!(stderr.contains(why), "{stderr}");
    assert!(!is_mounted(mnt.path()));
    assert_eq!(emu.stats().total_requests, 0);
}

#[test]
fn a_hostile_token_file_at_start_is_an_error_and_nothing_is_mounted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| -> PathBuf { dir.path().join(name) };
    fifo(&at("fifo"));
    refused_at_start(&at("fifo"), "is a FIFO, not a regular file");
    hundred_mb(&at("big"));
    refused_at_start(&at("big"), "larger than 16384 bytes");
    refused_at_start(dir.path(), "is a directory");
    std::os::unix::fs::symlink("/dev/zero", at("zero")).expect("symlink");
    refused_at_start(&at("zero"), "is a character device");
}
