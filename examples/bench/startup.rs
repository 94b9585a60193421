//! Time to the first bytes: qrypt-fs started as a user starts it, against one API round trip
//! plus mounting the null filesystem.
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{KillOnDrop, pids_with_arg, wait_until};
use crate::trials::median;
use crate::{Res, ctx, http};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn startup(
    qrypt_fs: &Path,
    null_fs: &Path,
    endpoint: &str,
    token: &str,
    dir: &Path,
    rounds: usize,
) -> Res<()> {
    let mnt = dir.join("startup-mnt");
    ctx(std::fs::create_dir_all(&mnt), mnt.display())?;
    let random = mnt.join("random");
    let client = http::client()?;
    let (mut startup, mut mounted, mut baseline, mut rtts, mut mounts) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // qrypt-fs, as a user starts it: daemon mode, returns once mounted.
        let t0 = Instant::now();
        let st = ctx(
            Command::new(qrypt_fs)
                .arg("--endpoint")
                .arg(endpoint)
                .arg("--log-file")
                .arg(dir.join("startup-qrypt-fs.log"))
                .arg(&mnt)
                .env("QRYPT_TOKEN", token)
                .stdin(Stdio::null())
                .status(),
            qrypt_fs.display(),
        )?;
        let t_mounted = t0.elapsed();
        if !st.success() {
            return Err(format!("qrypt-fs exited with {st}"));
        }
        let mut first = [0u8; 32];
        let r = File::open(&random).and_then(|mut f| f.read_exact(&mut first));
        let t_first = t0.elapsed();
        let daemons = pids_with_arg(&mnt);
        ctx(
            nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()),
            "umount",
        )?;
        ctx(r, random.display())?;
        wait_until("qrypt-fs to exit", Duration::from_secs(5), || {
            daemons
                .iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        })?;

        // Baseline: one round trip for what qrypt-fs asks first, then mounting a null FS.
        let t0 = Instant::now();
        let first = qrypt_fs::FIRST_REQUEST_KIB;
        let (code, body_len) = http::entropy(&client, endpoint, token, first)?;
        let rtt = t0.elapsed();
        if code != 200 || body_len < first as usize * qrypt_api::BLOCK_LEN {
            return Err(format!("round trip: HTTP {code}, {body_len} bytes"));
        }
        let t0 = Instant::now();
        let child = ctx(
            Command::new(null_fs).arg(&mnt).stdin(Stdio::null()).spawn(),
            null_fs.display(),
        )?;
        let pid = child.id();
        let child = KillOnDrop(child);
        ctx(
            std::fs::write(dir.join("startup-null_fs.pid"), pid.to_string()),
            "pid file",
        )?;
        wait_until("null_fs to mount", Duration::from_secs(10), || {
            random.exists()
        })?;
        let mount = t0.elapsed();
        // SIGTERM: it unmounts and exits.
        ctx(
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            ),
            "kill null_fs",
        )?;
        let mut child = child;
        let _ = child.0.wait();
        let _ = std::fs::remove_file(dir.join("startup-null_fs.pid"));
        wait_until("null_fs to unmount", Duration::from_secs(5), || {
            !random.exists()
        })?;

        eprintln!(
            "  round {round}: first byte {:.1} ms (mounted {:.1} ms); round trip {:.1} ms + null mount {:.1} ms",
            ms(t_first),
            ms(t_mounted),
            ms(rtt),
            ms(mount)
        );
        startup.push(ms(t_first));
        mounted.push(ms(t_mounted));
        baseline.push(ms(rtt + mount));
        rtts.push(ms(rtt));
        mounts.push(ms(mount));
    }
    for (k, v) in [
        ("startup", startup),
        ("mounted", mounted),
        ("baseline", baseline),
        ("rtt", rtts),
        ("null_mount", mounts),
    ] {
        println!("{k} {:.3}", median(&v).unwrap_or(f64::NAN));
    }
    Ok(())
}
