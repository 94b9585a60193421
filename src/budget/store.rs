//! The durable record of spend: one small JSON file per endpoint and token source, updated
//! under an exclusive lock and replaced atomically (temporary file, fsync, rename, fsync of
//! the directory), so a crash leaves either the old record or the new one, never a torn one.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ledger::Spend;

/// Written in every state file; a file without it was not written by this program.
const FORMAT: &str = "qrypt-fs budget v1";
/// A state file is ~300 bytes; anything much larger is not ours.
const MAX_FILE_LEN: u64 = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: String,
    endpoint: String,
    token_source: String,
    spend: Spend,
}

/// Why the state file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The file exists but is not a record this program wrote (or cannot be read at all).
    /// At start this is fatal unless the operator resets the budget.
    Corrupt(String),
    /// Reading or writing failed (disk full, read-only, permissions).
    Io(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Corrupt(s) | StoreError::Io(s) => f.write_str(s),
        }
    }
}

/// Where the state file of one endpoint and token source lives.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    tmp_path: PathBuf,
    endpoint: String,
    token_source: String,
}

/// The default `--state-dir`: `/var/lib/qrypt-fs` for root, else `$XDG_STATE_HOME/qrypt-fs`
/// or `~/.local/state/qrypt-fs` (XDG Base Directory specification).
pub fn default_state_dir() -> Result<PathBuf, String> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/qrypt-fs"));
    }
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(x) = absolute(std::env::var_os("XDG_STATE_HOME")) {
        return Ok(x.join("qrypt-fs"));
    }
    absolute(std::env::var_os("HOME"))
        .map(|h| h.join(".local/state/qrypt-fs"))
        .ok_or_else(|| "no home directory for the budget state: pass --state-dir DIR".to_owned())
}

/// Creates the state directory (mode 0700) if it is missing, and refuses one that other users
/// may write to without the sticky bit: they could replace what is kept there (a smaller
/// spend, an emptier replay history). `what` names it in the error.
pub fn prepare_state_dir(dir: &Path, what: &str) -> Result<(), String> {
    let shown = dir.display();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{what} {shown}: {e}"))?;
    let meta = fs::metadata(dir).map_err(|e| format!("{what} {shown}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!("{what} {shown}: not a directory"));
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(format!(
            "{what} {shown} is writable by other users (mode {:o}), who could replace what \
             is kept there: chmod go-w it or choose another",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

impl StateFile {
    /// The file for `endpoint` and `token_source` in `dir`. Its name is a digest of both, so
    /// mounts on different accounts never share a count, and it shows neither (paths can be
    /// long or odd); both are written inside it in clear for an operator to read. Nothing
    /// derived from the token itself is used: the file holds no secret.
    pub fn new(dir: &Path, endpoint: &str, token_source: &str) -> StateFile {
        let mut h = Sha256::new();
        h.update(b"qrypt-fs budget\0");
        h.update(endpoint.as_bytes());
        h.update(b"\0");
        h.update(token_source.as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("budget-{hex}");
        StateFile {
            dir: dir.to_owned(),
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
            tmp_path: dir.join(format!("{name}.json.tmp")),
            endpoint: endpoint.to_owned(),
            token_source: token_source.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory (mode 0700) if it is missing; see [`prepare_state_dir`].
    pub fn create_dir(&self) -> Result<(), String> {
        prepare_state_dir(&self.dir, "budget state directory")
    }

    /// Runs `f` on the recorded spend with the file locked against every other process
    /// using it, and writes the result back if `f` says it changed. `fresh`: start from
    /// nothing instead of reading the file (`--reset-budget`).
    pub fn update<T>(
        &self,
        fresh: bool,
        f: impl FnOnce(&mut Spend) -> (T, bool),
    ) -> Result<(T, Spend), StoreError> {
        let _lock = self.lock()?;
        let mut spend = if fresh {
            Spend::default()
        } else {
            self.load()?.unwrap_or_default()
        };
        let (out, changed) = f(&mut spend);
        if changed {
            self.store(&spend)?;
        }
        Ok((out, spend))
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Io(format!("budget state {what} {}: {e}", path.display()))
    }

    /// A lock on a file beside the record, not on the record itself: the record is replaced
    /// by rename, so a lock on it would lock an inode nobody else opens any more.
    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.lock_path)
            .map_err(|e| self.io("lock file", &self.lock_path, e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| self.io("lock file", &self.lock_path, e.into()))
    }

    /// The recorded spend, `None` if there is no file yet.
    fn load(&self) -> Result<Option<Spend>, StoreError> {
        let corrupt = |why: String| {
            StoreError::Corrupt(format!(
                "budget state file {} is unusable: {why}",
                self.path.display()
            ))
        };
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(corrupt("it is a symbolic link".into()));
            }
            Err(e) => return Err(corrupt(format!("cannot open it: {e}"))),
        };
        let meta = file
            .metadata()
            .map_err(|e| corrupt(format!("cannot stat it: {e}")))?;
        if !meta.file_type().is_file() {
            return Err(corrupt("not a regular file".into()));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            // Not written by us: someone else may have put a smaller spend there.
            return Err(corrupt(format!(
                "owned by uid {}, not by uid {me}",
                meta.uid()
            )));
        }
        if meta.len() > MAX_FILE_LEN {
            return Err(corrupt(format!("{} bytes is far too large", meta.len())));
        }
        let mut text = String::new();
        Read::by_ref(&mut file)
            .take(MAX_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(|e| corrupt(format!("cannot read it: {e}")))?;
        // serde_json's messages give a position, never the text.
        let disk: OnDisk =
            serde_json::from_str(&text).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        if disk.format != FORMAT {
            return Err(corrupt(format!("format is not {FORMAT:?}")));
        }
        if disk.endpoint != self.endpoint || disk.token_source != self.token_source {
            return Err(corrupt(
                "it records another endpoint or token source".into(),
            ));
        }
        disk.spend.check().map_err(corrupt)?;
        Ok(Some(disk.spend))
    }

    /// Replaces the record atomically and durably.
    fn store(&self, spend: &Spend) -> Result<(), StoreError> {
        let disk = OnDisk {
            format: FORMAT.into(),
            endpoint: self.endpoint.clone(),
            token_source: self.token_source.clone(),
            spend: *spend,
        };
        let mut text = serde_json::to_string_pretty(&disk)
            .map_err(|e| StoreError::Io(format!("budget state: {e}")))?;
        text.push('\n');
        // A temporary file left by a crash: ours (we hold the lock), so replace it.
        match fs::remove_file(&self.tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("temporary file", &self.tmp_path, e)),
        }
        let written = (|| {
            let mut tmp = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&self.tmp_path)?;
            // The mode given at creation is filtered by the umask; 0600 is what we promise.
            tmp.set_permissions(fs::Permissions::from_mode(0o600))?;
            tmp.write_all(text.as_bytes())?;
            tmp.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&self.tmp_path);
            return Err(self.io("temporary file", &self.tmp_path, e));
        }
        fs::rename(&self.tmp_path, &self.path).map_err(|e| {
            let _ = fs::remove_file(&self.tmp_path);
            self.io("file", &self.path, e)
        })?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("directory", &self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path) -> StateFile {
        StateFile::new(dir, "https://api.example/", "file /etc/qrypt/token")
    }

    #[test]
    fn round_trip_mode_0600_and_no_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = file(dir.path());
        let (_, s) = f.update(false, |_| ((), false)).expect("empty");
        assert_eq!(s, Spend::default());
        assert!(!f.path().exists(), "nothing written when nothing changed");
        f.update(false, |s| {
            s.roll(1_795_867_200);
            s.add(4096);
            ((), true)
        })
        .expect("write");
        let (_, s) = f.update(false, |_| ((), false)).expect("read back");
        assert_eq!((s.hour.spent, s.month.spent), (4096, 4096));
        let meta = fs::metadata(f.path()).expect("meta");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!f.tmp_path.exists());
        let text = fs::read_to_string(f.path()).expect("text");
        assert!(
            text.contains("\"token_source\": \"file /etc/qrypt/token\""),
            "{text}"
        );
    }

    #[test]
    fn keyed_by_endpoint_and_token_source() {
        let dir = Path::new("/x");
        let a = StateFile::new(dir, "https://a/", "environment (QRYPT_TOKEN)");
        let b = StateFile::new(dir, "https://a/", "file /t");
        let c = StateFile::new(dir, "https://b/", "environment (QRYPT_TOKEN)");
        assert_ne!(a.path(), b.path());
        assert_ne!(a.path(), c.path());
        assert_eq!(
            a.path(),
            StateFile::new(dir, "https://a/", "environment (QRYPT_TOKEN)").path()
        );
    }

    #[test]
    fn a_bad_file_is_named_and_never_zeroed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = file(dir.path());
        for (content, why) in [
            ("garbage", "not valid JSON"),
            (
                "{\"format\":\"other\",\"endpoint\":\"\",\"token_source\":\"\",\"spend\":{\"hour\":{\"start\":0,\"spent\":0},\"day\":{\"start\":0,\"spent\":0},\"month\":{\"start\":0,\"spent\":0}}}",
                "format",
            ),
            (
                "{\"format\":\"qrypt-fs budget v1\",\"endpoint\":\"https://other/\",\"token_source\":\"file /etc/qrypt/token\",\"spend\":{\"hour\":{\"start\":0,\"spent\":0},\"day\":{\"start\":0,\"spent\":0},\"month\":{\"start\":0,\"spent\":0}}}",
                "another endpoint",
            ),
            (
                "{\"format\":\"qrypt-fs budget v1\",\"endpoint\":\"https://api.example/\",\"token_source\":\"file /etc/qrypt/token\",\"spend\":{\"hour\":{\"start\":5,\"spent\":0},\"day\":{\"start\":0,\"spent\":0},\"month\":{\"start\":0,\"spent\":0}}}",
                "not the start of a hour",
            ),
        ] {
            fs::write(f.path(), content).expect("write");
            match f.update(false, |_| ((), true)) {
                Err(StoreError::Corrupt(m)) => {
                    assert!(m.contains(&f.path().display().to_string()), "{m}");
                    assert!(m.contains(why), "{m}");
                }
                other => panic!("{content}: {other:?}"),
            }
            assert_eq!(fs::read_to_string(f.path()).expect("kept"), content);
        }
        fs::remove_file(f.path()).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", f.path()).expect("symlink");
        assert!(
            matches!(f.update(false, |_| ((), true)), Err(StoreError::Corrupt(m)) if m.contains("symbolic link"))
        );
        // Starting fresh replaces whatever is there.
        let (_, s) = f.update(true, |_| ((), true)).expect("reset");
        assert_eq!(s, Spend::default());
        assert!(f.update(false, |_| ((), false)).is_ok());
    }

    #[test]
    fn a_file_of_another_owner_or_a_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
        let f = file(dir.path());
        let err = f.create_dir().expect_err("world-writable");
        assert!(err.contains("writable by other users"), "{err}");
        // The sticky bit (as on /tmp) keeps others from replacing our files.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert_eq!(f.create_dir(), Ok(()));
        if nix::unistd::geteuid().is_root() {
            f.update(false, |s| {
                s.roll(1_795_867_200);
                s.add(1024);
                ((), true)
            })
            .expect("write");
            std::os::unix::fs::chown(f.path(), Some(65534), None).expect("chown");
            match f.update(false, |_| ((), false)) {
                Err(StoreError::Corrupt(m)) => assert!(m.contains("owned by uid 65534"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn concurrent_updates_are_never_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let f = file(dir.path());
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        f.update(false, |s| {
                            s.roll(1_795_867_200);
                            s.add(1024);
                            ((), true)
                        })
                        .expect("update");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        let (_, s) = file(dir.path())
            .update(false, |_| ((), false))
            .expect("read");
        assert_eq!(s.day.spent, 100 * 1024);
    }

    #[test]
    fn an_unwritable_directory_is_an_io_error() {
        if nix::unistd::geteuid().is_root() {
            // Root writes through permissions; a read-only bind mount would be needed.
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o500)).expect("chmod");
        let f = file(dir.path());
        assert!(matches!(
            f.update(false, |_| ((), true)),
            Err(StoreError::Io(_))
        ));
    }
}
