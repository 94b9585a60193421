//! Start-up's file accesses, each bounded in time. A token file, CA file, log file, state
//! directory or mount point on a hung filesystem (a stopped FUSE daemon, a dead NFS server)
//! would hold a lookup, open or read in the kernel forever; each access runs on a thread of
//! its own instead, and one that does not answer in time fails the start with a sentence
//! naming the file. The stuck thread cannot be cancelled: the process exits with it (a hung
//! FUSE or NFS request ends on the exit's fatal signal), before anything is mounted.
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::Context;

/// How long one start-up access may take: a healthy local or network file answers in
/// milliseconds, a loaded NFS server within seconds.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `f` (an access to `path`, which it describes as `what`) and waits up to `timeout`.
/// A finished access leaves no thread behind, so the process can still fork into the
/// background afterwards.
pub fn within<T: Send + 'static>(
    what: &str,
    path: &Path,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("start-io".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .with_context(|| format!("{what} {}: cannot start a thread", path.display()))?;
    match rx.recv_timeout(timeout) {
        Ok(v) => {
            let _ = thread.join();
            Ok(v)
        }
        Err(RecvTimeoutError::Timeout) => {
            let shown = match timeout.as_secs() {
                0 => format!("{} ms", timeout.as_millis()),
                s => format!("{s} s"),
            };
            anyhow::bail!(
                "{what} {}: no answer within {shown} (a hung filesystem?)",
                path.display()
            )
        }
        Err(RecvTimeoutError::Disconnected) => {
            let _ = thread.join();
            anyhow::bail!("{what} {}: the access failed unexpectedly", path.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_that_never_answers_fails_naming_the_path() {
        let t = std::time::Instant::now();
        let err = within(
            "token file",
            Path::new("/hung/token"),
            Duration::from_millis(200),
            || {
                std::thread::sleep(Duration::from_secs(3600));
            },
        )
        .expect_err("hung");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(
            err.to_string(),
            "token file /hung/token: no answer within 200 ms (a hung filesystem?)"
        );
        assert_eq!(
            within("x", Path::new("/x"), TIMEOUT, || 7).expect("answers"),
            7
        );
    }
}
