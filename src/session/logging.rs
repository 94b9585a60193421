//! Logging: stderr in the foreground; syslog (journald picks it up) or a file in the background,
//! or the journal through stderr when no syslog daemon listens.
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use nix::syslog::{self, Facility, LogFlags, Priority, Severity};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

pub enum LogTarget {
    Stderr,
    /// A file opened by [`open_log_file`].
    File(std::fs::File),
    Syslog,
}

/// The `--log-file`, opened, and what to tell the operator about it.
pub struct LogFile {
    pub file: std::fs::File,
    /// Said on the terminal and logged once: a mode tightened, a directory others can write.
    pub notes: Vec<String>,
}

/// Opens (creating it `0600` if missing) the `--log-file` for appending, before going to the
/// background, so a mistake is reported on the terminal. Refused, with the path in the
/// message: a symlink (`O_NOFOLLOW`: one planted in a shared directory would otherwise make
/// us, often root, append to any file it names), anything but a regular file, a file owned by
/// another user, a file with other hard links (the same trick without a symlink). An existing
/// file of ours that group or others may read or write is tightened to `0600` (the log quotes
/// upstream errors and paths: the operator's, like the token file), and a note says so.
pub fn open_log_file(path: &Path) -> anyhow::Result<LogFile> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let context = || format!("log file {}", path.display());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        // Non-blocking: a FIFO put there must not hold start-up (it is refused below).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "log file {} is a symlink: refused (give the path of the file itself)",
                path.display()
            ),
            Some(libc::ENXIO) => anyhow::anyhow!(
                "log file {} is not a regular file (a FIFO or socket): refused",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(context()),
        })?;
    let meta = file.metadata().with_context(context)?;
    if !meta.is_file() {
        anyhow::bail!("log file {} is not a regular file: refused", path.display());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        anyhow::bail!(
            "log file {} belongs to another user (uid {}): refused (they could read it, and \
             swap it for another file; remove it, chown it to uid {me}, or give another \
             --log-file)",
            path.display(),
            meta.uid()
        );
    }
    if meta.nlink() > 1 {
        anyhow::bail!(
            "log file {} has {} hard links: refused (it may be another file's)",
            path.display(),
            meta.nlink()
        );
    }
    // Writes to a regular file never block; keep it an ordinary descriptor anyway.
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_APPEND),
    )
    .with_context(context)?;
    let mut notes = Vec::new();
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        // On the descriptor: the file we checked, whatever the path names by now.
        notes.push(
            match file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => format!(
                    "log file {} had mode {mode:04o} (open to group or others): tightened to 0600",
                    path.display()
                ),
                Err(e) => format!(
                    "log file {} has mode {mode:04o} (open to group or others) and could not be \
                     tightened ({e}): chmod 600 {}",
                    path.display(),
                    path.display()
                ),
            },
        );
    }
    notes.extend(crate::session::check_local::log_dir_warning(path, me));
    Ok(LogFile { file, notes })
}

/// Where syslog(3) sends messages; with nothing listening there, it drops them silently.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// Where the daemon logs in the background when no `--log-file` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Background {
    /// A syslog daemon (or journald) listens on the socket.
    Syslog,
    /// None does, but stderr is the journal's stream: keep it, and log there.
    JournalStderr,
    /// None does and nothing captures stderr: the log is lost.
    Discarded,
}

impl Background {
    /// Chooses, before going to the background (stderr is still the caller's).
    pub fn choose(socket: &Path) -> Background {
        let listening = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(socket))
            .is_ok();
        if listening {
            Background::Syslog
        } else if stderr_is_the_journal() {
            Background::JournalStderr
        } else {
            Background::Discarded
        }
    }

    /// What the start says when the log cannot go to syslog.
    pub fn note(&self, socket: &Path) -> Option<String> {
        let socket = socket.display();
        match self {
            Background::Syslog => None,
            Background::JournalStderr => Some(format!(
                "no syslog daemon listens on {socket}: logging to the journal through stderr"
            )),
            Background::Discarded => Some(format!(
                "no syslog daemon listens on {socket}: the daemon's log is lost; give \
                 --log-file PATH, or run in the foreground (-f) under a supervisor that keeps \
                 stderr"
            )),
        }
    }
}

fn filter(verbose: u8) -> EnvFilter {
    let default = match verbose {
        0 => "qrypt_fs=info,warn",
        1 => "qrypt_fs=debug,info",
        _ => "qrypt_fs=trace,debug",
    };
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// fuser logs an error for each reply the kernel no longer waits for (its reader was
/// interrupted or killed meanwhile: `Failed to send FUSE reply: No such file or directory`).
/// A reader can cause that at will (a caught signal during a paced page-cache refusal makes
/// every one of them fail), so fuser's reply errors pass a few a minute at most.
fn reply_errors_limited<S: tracing::Subscriber>() -> impl Layer<S> {
    static REPLY_ERRORS: crate::read_guard::log_limit::LogLimiter =
        crate::read_guard::log_limit::LogLimiter::new(3, std::time::Duration::from_secs(60));
    const TARGET: &str = "fuser::reply";
    tracing_subscriber::filter::dynamic_filter_fn(|meta: &Metadata<'_>, _| {
        meta.target() != TARGET || REPLY_ERRORS.check().is_some()
    })
    .with_callsite_filter(|meta| {
        if meta.target() == TARGET {
            // Decided event by event.
            Interest::sometimes()
        } else {
            Interest::always()
        }
    })
}

pub fn init(target: LogTarget, verbose: u8) -> anyhow::Result<()> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(verbose));
    let result = match target {
        LogTarget::Stderr => {
            // Colour only for a person at a terminal; journald (which sets JOURNAL_STREAM)
            // stamps each line itself.
            let ansi = io::IsTerminal::is_terminal(&io::stderr());
            let builder = builder.with_ansi(ansi).with_writer(io::stderr);
            if stderr_is_the_journal() {
                builder
                    .without_time()
                    .finish()
                    .with(reply_errors_limited())
                    .try_init()
            } else {
                builder.finish().with(reply_errors_limited()).try_init()
            }
        }
        LogTarget::File(file) => builder
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .finish()
            .with(reply_errors_limited())
            .try_init(),
        LogTarget::Syslog => {
            syslog::openlog(Some(c"qrypt-fs"), LogFlags::LOG_PID, Facility::LOG_DAEMON)
                .context("syslog")?;
            builder
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_writer(Syslog)
                .finish()
                .with(reply_errors_limited())
                .try_init()
        }
    };
    // Already initialised (tests) is fine.
    let _ = result;
    Ok(())
}

/// True when stderr is the journal stream systemd set up (JOURNAL_STREAM names its device and
/// inode); a JOURNAL_STREAM inherited while stderr was redirected elsewhere does not count.
fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let stderr = std::os::fd::AsFd::as_fd(&io::stderr())
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    stderr.is_ok_and(|m| names_this_file(dev, ino, &m))
}

fn names_this_file(dev: &str, ino: &str, m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino())
}

struct Syslog;

/// Collects one formatted event and hands it to syslog(3) when dropped.
pub struct SyslogLine {
    severity: Severity,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        // Without NULs (they would cut the message short) and newlines (one line per event).
        let text: Vec<u8> = self
            .buf
            .iter()
            .copied()
            .filter(|&b| b != 0 && b != b'\n')
            .collect();
        let msg = std::ffi::OsStr::from_bytes(&text);
        let _ = syslog::syslog(Priority::new(self.severity, Facility::LOG_DAEMON), msg);
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            severity: Severity::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine {
        let severity = match *meta.level() {
            Level::ERROR => Severity::LOG_ERR,
            Level::WARN => Severity::LOG_WARNING,
            Level::INFO => Severity::LOG_INFO,
            _ => Severity::LOG_DEBUG,
        };
        SyslogLine {
            severity,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_socket_nobody_listens_on_is_not_syslog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("log");
        let choice = super::Background::choose(&socket);
        assert_ne!(choice, super::Background::Syslog);
        assert!(
            choice
                .note(&socket)
                .is_some_and(|n| n.starts_with("no syslog daemon listens on "))
        );
        let _listener = std::os::unix::net::UnixDatagram::bind(&socket).expect("bind");
        assert_eq!(
            super::Background::choose(&socket),
            super::Background::Syslog
        );
        assert_eq!(super::Background::Syslog.note(&socket), None);
    }

    #[test]
    fn journal_stream_must_name_the_very_file() {
        let f = tempfile::tempfile().expect("tempfile");
        let m = f.metadata().expect("metadata");
        let (dev, ino) = (m.dev().to_string(), m.ino().to_string());
        assert!(super::names_this_file(&dev, &ino, &m));
        assert!(!super::names_this_file(&dev, "1", &m));
        assert!(!super::names_this_file("x", &ino, &m));
    }
}
