//! `qrypt-fs-seed` as it runs: into the kernel's RNG from a real mount, and clean refusals
//! (message and exit status) without a qrypt-fs mount, when the read fails, and without
//! CAP_SYS_ADMIN.

use std::process::{Command, Output};

use crate::common::*;

const SEED: &str = env!("CARGO_BIN_EXE_qrypt-fs-seed");

fn seed(args: &[&str]) -> Output {
    Command::new(SEED)
        .args(args)
        .output()
        .expect("run qrypt-fs-seed")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn seed_refuses_without_a_qrypt_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    let o = seed(&[path]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not a mount point: is qrypt-fs mounted there?"),
        "{}",
        stderr(&o)
    );
    let o = seed(&["/nonexistent/qrypt"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no qrypt-fs mount there"),
        "{}",
        stderr(&o)
    );
    // Another filesystem mounted there is not taken for one.
    let tmpfs = mount_tmpfs(dir.path(), "size=64k");
    let o = seed(&[tmpfs.path().to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is a tmpfs mount, not a qrypt-fs mount"),
        "{}",
        stderr(&o)
    );
    // Out of bounds: a usage error.
    let o = seed(&["--bytes", "513", path]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(seed(&["--bytes", "0", path]).status.code(), Some(2));
}

#[test]
fn seed_fails_cleanly_when_the_read_fails() {
    let emu = emulator();
    // An upstream answering 503: nothing to read, and the job gives up at its timeout.
    let m = failing_mount(&emu, &[]);
    let path = m.path().to_str().expect("utf8");
    let t = std::time::Instant::now();
    let o = seed(&["--timeout", "1", path]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/random: nothing to read within 1s"),
        "{}",
        stderr(&o)
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    // Then a rejected token: the read fails with EIO at once.
    emu.set_fault(Fault::Status(401), None);
    assert_fails_fast(&m, "unauthorized");
    let o = seed(&["--timeout", "5", path]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("Input/output error"), "{}", stderr(&o));
}

#[test]
fn seed_feeds_the_kernel_and_needs_cap_sys_admin() {
    require_program("setpriv");
    let emu = emulator();
    let m = MountBuilder::new(&emu).mount();
    m.wait_full();
    let path = m.path().to_str().expect("utf8");
    // Without CAP_SYS_ADMIN (root, but not in its bounding set): the kernel says EPERM, after
    // the read.
    let served = m.status_u64("served_bytes");
    let o = Command::new("setpriv")
        .args([
            "--bounding-set=-sys_admin",
            "--inh-caps=-sys_admin",
            SEED,
            path,
        ])
        .output()
        .expect("setpriv");
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/dev/random refused RNDADDENTROPY: EPERM")
            && stderr(&o).contains("CAP_SYS_ADMIN"),
        "{}",
        stderr(&o)
    );
    assert_eq!(m.status_u64("served_bytes"), served + 64);
    // As root: 100 bytes read from the mount, added and credited, the CRNG reseeded.
    let o = seed(&["--bytes", "100", path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("added 100 bytes (800 bits credited)") && out.contains("reseeded its CRNG"),
        "{out}"
    );
    assert_eq!(m.status_u64("served_bytes"), served + 164);
}
