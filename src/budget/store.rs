//! The durable record of spend: one small JSON file per account (endpoint and token), updated
//! under an exclusive lock and replaced atomically (temporary file, fsync, rename, fsync of
//! the directory), so a crash leaves either the old record or the new one, never a torn one.
//!
//! The file's name is a keyed digest of the canonical endpoint and the token itself (HMAC-SHA256
//! under a random key kept in the state directory, mode 0600), so every spelling of one
//! account shares one count, and the name lets nobody without the key test guesses of the
//! token.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::ledger::Spend;

/// Written in every state file; a file without it was not written by this program.
const FORMAT: &str = "qrypt-fs budget v2";
/// The format of files named after how the endpoint and token source were spelled.
const LEGACY_FORMAT: &str = "qrypt-fs budget v1";
/// A state file is ~300 bytes; anything much larger is not ours.
const MAX_FILE_LEN: u64 = 64 << 10;
/// The key of the account digests, beside the records.
const KEY_FILE: &str = "budget.key";
const KEY_LEN: usize = 32;
/// How long a request waits for a lock held by someone else before it is refused (and the
/// refusal shown): another mount of the same account holds it for a write and two fsyncs,
/// milliseconds, so only a stuck holder makes anyone wait this long.
pub const LOCK_WAIT: Duration = Duration::from_secs(1);
/// How often a waiting request tries the lock again: short, so waiters that poll are not
/// starved by one another.
const LOCK_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: String,
    endpoint: String,
    account: String,
    spend: Spend,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyOnDisk {
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
    /// Another process holds the lock for longer than [`LOCK_WAIT`].
    Locked(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Corrupt(s) | StoreError::Io(s) | StoreError::Locked(s) => f.write_str(s),
        }
    }
}

/// What an update starts from.
#[derive(Debug, Clone, Copy)]
pub enum Base {
    /// Nothing, whatever the file holds (`--reset-budget`).
    Fresh,
    /// The file (missing: nothing). An unusable file is an error.
    File,
    /// The file, but never less than this (what the running process knows it spent): a file
    /// that vanished, went back or is unusable is written again from it.
    AtLeast(Spend),
}

/// The random key of the account digests of one state directory. Wiped on drop.
pub struct AccountKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountKey(<redacted>)")
    }
}

impl AccountKey {
    /// Reads the directory's key, creating it (32 random bytes, mode 0600) if there is none.
    /// Two processes starting at once agree: the key is written aside and linked into place,
    /// which fails if another was linked first, whose key is then read.
    pub fn load_or_create(dir: &Path) -> Result<AccountKey, String> {
        let path = dir.join(KEY_FILE);
        match Self::read(&path)? {
            Some(k) => Ok(k),
            None => {
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                getrandom::getrandom(&mut key[..])
                    .map_err(|e| format!("budget key {}: no random bytes: {e}", path.display()))?;
                let key = AccountKey(key);
                key.write(dir, false)?;
                Self::read(&path)?.ok_or_else(|| {
                    format!("budget key {}: vanished as it was written", path.display())
                })
            }
        }
    }

    fn read(path: &Path) -> Result<Option<AccountKey>, String> {
        let bad = |why: String| format!("budget key {} is unusable: {why}", path.display());
        let Some((mut file, meta)) = open_own_file(path).map_err(bad)? else {
            return Ok(None);
        };
        if meta.mode() & 0o077 != 0 {
            // Whoever reads it can test guesses of the token against the file names.
            return Err(bad(format!(
                "mode {:o} lets other users read it (it must be 0600)",
                meta.mode() & 0o7777
            )));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let mut extra = [0u8; 1];
        file.read_exact(&mut key[..])
            .map_err(|e| bad(format!("not {KEY_LEN} bytes: {e}")))?;
        if file.read(&mut extra).map_err(|e| bad(e.to_string()))? != 0 {
            return Err(bad(format!("longer than {KEY_LEN} bytes")));
        }
        Ok(Some(AccountKey(key)))
    }

    /// Puts this key in `dir`: linked into place (fails quietly if a key is there), or, with
    /// `replace`, renamed over whatever is there.
    fn write(&self, dir: &Path, replace: bool) -> Result<(), String> {
        let path = dir.join(KEY_FILE);
        let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
        let err = |e: std::io::Error| format!("budget key {}: {e}", path.display());
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(&self.0[..])?;
            f.sync_all()?;
            if replace {
                fs::rename(&tmp, &path)
            } else {
                match fs::hard_link(&tmp, &path) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                    _ => Ok(()),
                }
            }
        })();
        let _ = fs::remove_file(&tmp);
        written.map_err(err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }

    /// Whether `dir` holds this key; if not (removed, replaced), puts it back, so the next
    /// start finds the same names. Returns what was wrong.
    fn restore(&self, dir: &Path) -> Result<Option<String>, String> {
        let path = dir.join(KEY_FILE);
        let why = match Self::read(&path) {
            Ok(Some(k)) if k.0[..] == self.0[..] => return Ok(None),
            Ok(Some(_)) => "was replaced".to_owned(),
            Ok(None) => "was removed".to_owned(),
            Err(e) => e,
        };
        self.write(dir, true)?;
        Ok(Some(format!("budget key {}: {why}", path.display())))
    }

    /// The account's identity: HMAC-SHA256 of the canonical endpoint and the token, 128 bits
    /// in hex.
    pub fn account(&self, endpoint: &str, token: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0[..]);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(b"qrypt-fs budget account\0");
        ctx.update(endpoint.as_bytes());
        ctx.update(b"\0");
        ctx.update(token);
        let tag = ctx.sign();
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Where a record of the way state used to be keyed (by the endpoint and the token source as
/// spelled) would be: its count still counts after an upgrade.
#[derive(Debug, Clone)]
pub struct Legacy {
    pub endpoint: String,
    pub token_source: String,
}

/// Where the state file of one account lives.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    tmp_path: PathBuf,
    endpoint: String,
    account: String,
    /// Put back in the directory if it goes missing.
    key: Option<Arc<AccountKey>>,
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

/// The pid holding a lock on the file with inode `ino`, from `/proc/locks`.
fn lock_holder(ino: u64) -> Option<u32> {
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF`; waiters have `->` after the id.
        if f.get(1) == Some(&"->") {
            return None;
        }
        let inode = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        (inode == ino).then(|| f.get(4)?.parse().ok()).flatten()
    })
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

/// Opens `path` for reading if it is a regular file of this user's, reached without a
/// symbolic link and without blocking on a FIFO; `None` if there is none. The error says why
/// not, for the caller to name the file.
fn open_own_file(path: &Path) -> Result<Option<(File, fs::Metadata)>, String> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err("it is a symbolic link".into());
        }
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if !owned_by_us(meta.uid()) {
        return Err(format!(
            "owned by uid {}, not by uid {}",
            meta.uid(),
            state_owner()
        ));
    }
    Ok(Some((file, meta)))
}

/// The uid the state files belong to, set once at start by a process that runs as another
/// user after its mount (it hands them over then); else this process's.
static STATE_OWNER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Sets the uid the state files belong to (see [`state_owner`]); once, before any is opened.
pub fn set_state_owner(uid: u32) {
    let _ = STATE_OWNER.set(uid);
}

/// The uid the state files belong to.
pub fn state_owner() -> u32 {
    STATE_OWNER
        .get()
        .copied()
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw())
}

/// Whether a state file owned by `uid` is ours: the state owner's, this process's, or root's
/// (who put it there before handing the files over, or could anyway).
pub fn owned_by_us(uid: u32) -> bool {
    uid == state_owner() || uid == nix::unistd::geteuid().as_raw() || uid == 0
}

impl StateFile {
    /// The file of `account` (see [`AccountKey::account`]) at `endpoint` (canonical) in `dir`.
    /// The endpoint is written inside in clear for an operator to read; the token never is.
    pub fn new(dir: &Path, endpoint: &str, account: &str) -> StateFile {
        let mut file = StateFile::named(dir, &format!("budget-{account}"));
        file.endpoint = endpoint.to_owned();
        file.account = account.to_owned();
        file
    }

    /// A record `NAME.json` in `dir`, locked through `NAME.lock`, of no account: for other
    /// records kept the same way (the per-tenant spend).
    pub(super) fn named(dir: &Path, name: &str) -> StateFile {
        StateFile {
            dir: dir.to_owned(),
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
            tmp_path: dir.join(format!("{name}.json.tmp")),
            endpoint: String::new(),
            account: String::new(),
            key: None,
        }
    }

    /// Keeps `key` in the directory: put back whenever it is found missing or changed.
    pub fn with_key(mut self, key: Arc<AccountKey>) -> StateFile {
        self.key = Some(key);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// Creates the directory (mode 0700) if it is missing; see [`prepare_state_dir`].
    pub fn create_dir(&self) -> Result<(), String> {
        prepare_state_dir(&self.dir, "budget state directory")
    }

    /// Runs `f` on the recorded spend with the file locked against every other process
    /// using it, and writes the result back if `f` says it changed (or the file had to be
    /// repaired). Returns `f`'s answer, the spend now recorded, and what was repaired: a
    /// record below `base`'s floor, missing or unusable, or a missing key.
    pub fn update<T>(
        &self,
        base: Base,
        f: impl FnOnce(&mut Spend) -> (T, bool),
    ) -> Result<(T, Spend, Option<String>), StoreError> {
        let _lock = self.lock()?;
        let mut repaired = match &self.key {
            Some(key) => key.restore(&self.dir).map_err(StoreError::Io)?,
            None => None,
        };
        let mut spend = match base {
            Base::Fresh => Spend::default(),
            Base::File => self.load()?.unwrap_or_default(),
            Base::AtLeast(floor) => {
                let shown = self.path.display();
                let (kept, why) = match self.load() {
                    Ok(Some(on_disk)) => {
                        let mut kept = on_disk;
                        kept.raise_to(&floor);
                        let why = (kept != on_disk).then(|| {
                            format!("budget state file {shown} holds less than was spent")
                        });
                        (kept, why)
                    }
                    Ok(None) => (floor, Some(format!("budget state file {shown} is missing"))),
                    Err(StoreError::Corrupt(why)) => (floor, Some(why)),
                    Err(e) => return Err(e),
                };
                if let Some(why) = why {
                    repaired = Some(match repaired {
                        Some(r) => format!("{r}; {why}"),
                        None => why,
                    });
                }
                kept
            }
        };
        let (out, changed) = f(&mut spend);
        if changed || repaired.is_some() {
            self.store(&spend)?;
        }
        Ok((out, spend, repaired))
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Io(format!("budget state {what} {}: {e}", path.display()))
    }

    fn open_lock_file(&self) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.lock_path)
    }

    /// A lock on a file beside the record, not on the record itself: the record is replaced
    /// by rename, so a lock on it would lock an inode nobody else opens any more. Never waits
    /// longer than [`LOCK_WAIT`]: a lock held by a stuck process is an error that names it,
    /// not a refill stalled in the kernel. A state directory removed while running is made
    /// again (the spend is known; the file is written again from it).
    pub(super) fn lock(&self) -> Result<Flock<File>, StoreError> {
        let mut file = match self.open_lock_file() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.create_dir().map_err(StoreError::Io)?;
                self.open_lock_file()
            }
            other => other,
        }
        .map_err(|e| self.io("lock file", &self.lock_path, e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(LOCK_POLL);
                }
                Err((f, Errno::EWOULDBLOCK)) => {
                    let holder = f
                        .metadata()
                        .ok()
                        .and_then(|m| lock_holder(m.ino()))
                        .map_or_else(|| "another process".to_owned(), |p| format!("process {p}"));
                    return Err(StoreError::Locked(format!(
                        "budget state lock file {} is held by {holder} for more than {} s",
                        self.lock_path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                Err((_, e)) => return Err(self.io("lock file", &self.lock_path, e.into())),
            }
        }
    }

    /// The text of a record at `path` that only this user could have written, `None` if
    /// there is none.
    pub(super) fn read_record(path: &Path) -> Result<Option<String>, StoreError> {
        let corrupt = |why: String| {
            StoreError::Corrupt(format!(
                "budget state file {} is unusable: {why}",
                path.display()
            ))
        };
        // Not written by us: someone else may have put a smaller spend there.
        let Some((mut file, meta)) = open_own_file(path).map_err(corrupt)? else {
            return Ok(None);
        };
        if meta.len() > MAX_FILE_LEN {
            return Err(corrupt(format!("{} bytes is far too large", meta.len())));
        }
        let mut text = String::new();
        Read::by_ref(&mut file)
            .take(MAX_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(|e| corrupt(format!("cannot read it: {e}")))?;
        Ok(Some(text))
    }

    /// The recorded spend, `None` if there is no file yet.
    fn load(&self) -> Result<Option<Spend>, StoreError> {
        let corrupt = |why: String| {
            StoreError::Corrupt(format!(
                "budget state file {} is unusable: {why}",
                self.path.display()
            ))
        };
        let Some(text) = Self::read_record(&self.path)? else {
            return Ok(None);
        };
        // serde_json's messages give a position, never the text.
        let disk: OnDisk =
            serde_json::from_str(&text).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        if disk.format != FORMAT {
            return Err(corrupt(format!("format is not {FORMAT:?}")));
        }
        if disk.endpoint != self.endpoint || disk.account != self.account {
            return Err(corrupt("it records another endpoint or account".into()));
        }
        disk.spend.check().map_err(corrupt)?;
        Ok(Some(disk.spend))
    }

    /// The file a release that keyed state by spelling would have used for `legacy`.
    pub fn legacy_path(&self, legacy: &Legacy) -> PathBuf {
        let mut h = Sha256::new();
        h.update(b"qrypt-fs budget\0");
        h.update(legacy.endpoint.as_bytes());
        h.update(b"\0");
        h.update(legacy.token_source.as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("budget-{hex}.json"))
    }

    /// The spend recorded the old way for `legacy`, if there is such a record, and its path.
    pub fn read_legacy(&self, legacy: &Legacy) -> Result<Option<(PathBuf, Spend)>, StoreError> {
        let path = self.legacy_path(legacy);
        let corrupt = |why: String| {
            StoreError::Corrupt(format!(
                "budget state file {} is unusable: {why}",
                path.display()
            ))
        };
        let Some(text) = Self::read_record(&path)? else {
            return Ok(None);
        };
        let disk: LegacyOnDisk =
            serde_json::from_str(&text).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        if disk.format != LEGACY_FORMAT
            || disk.endpoint != legacy.endpoint
            || disk.token_source != legacy.token_source
        {
            return Err(corrupt(
                "it records another endpoint or token source".into(),
            ));
        }
        disk.spend.check().map_err(corrupt)?;
        Ok(Some((path, disk.spend)))
    }

    /// Moves a migrated old record aside (`.migrated`), so it is counted once.
    pub fn retire_legacy(path: &Path) -> Result<(), String> {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".migrated");
        fs::rename(path, &aside).map_err(|e| format!("budget state file {}: {e}", path.display()))
    }

    /// Replaces the record atomically and durably.
    fn store(&self, spend: &Spend) -> Result<(), StoreError> {
        let disk = OnDisk {
            format: FORMAT.into(),
            endpoint: self.endpoint.clone(),
            account: self.account.clone(),
            spend: *spend,
        };
        let mut text = serde_json::to_string_pretty(&disk)
            .map_err(|e| StoreError::Io(format!("budget state: {e}")))?;
        text.push('\n');
        self.replace(&text)
    }

    /// Replaces the record's text atomically and durably (the lock held).
    pub(super) fn replace(&self, text: &str) -> Result<(), StoreError> {
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

    const ACCOUNT: &str = "00112233445566778899aabbccddeeff";

    fn file(dir: &Path) -> StateFile {
        StateFile::new(dir, "https://api.example:443/", ACCOUNT)
    }

    #[test]
    fn round_trip_mode_0600_and_no_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = file(dir.path());
        let (_, s, _) = f.update(Base::File, |_| ((), false)).expect("empty");
        assert_eq!(s, Spend::default());
        assert!(!f.path().exists(), "nothing written when nothing changed");
        f.update(Base::File, |s| {
            s.roll(1_795_867_200);
            s.add(4096);
            ((), true)
        })
        .expect("write");
        let (_, s, _) = f.update(Base::File, |_| ((), false)).expect("read back");
        assert_eq!((s.hour.spent, s.month.spent), (4096, 4096));
        let meta = fs::metadata(f.path()).expect("meta");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!f.tmp_path.exists());
        let text = fs::read_to_string(f.path()).expect("text");
        assert!(
            text.contains(&format!("\"account\": \"{ACCOUNT}\"")),
            "{text}"
        );
    }

    #[test]
    fn the_account_is_a_keyed_digest_of_endpoint_and_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = AccountKey::load_or_create(dir.path()).expect("key");
        let meta = fs::metadata(dir.path().join(KEY_FILE)).expect("key file");
        assert_eq!((meta.mode() & 0o777, meta.len()), (0o600, KEY_LEN as u64));
        let a = key.account("https://a:443/", b"token-1");
        assert_eq!(a.len(), 32);
        assert_eq!(a, key.account("https://a:443/", b"token-1"));
        assert_ne!(a, key.account("https://b:443/", b"token-1"));
        assert_ne!(a, key.account("https://a:443/", b"token-2"));
        // Not a plain digest of the token: without the key, a guess cannot be tested.
        let plain: String = Sha256::digest(b"token-1")[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(a, plain);
        // The same key next time; another directory's key names the account differently.
        let again = AccountKey::load_or_create(dir.path()).expect("again");
        assert_eq!(again.account("https://a:443/", b"token-1"), a);
        let other = tempfile::tempdir().expect("tempdir");
        let k2 = AccountKey::load_or_create(other.path()).expect("key");
        assert_ne!(k2.account("https://a:443/", b"token-1"), a);
        // A key others may read is refused.
        fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = AccountKey::load_or_create(dir.path()).expect_err("readable");
        assert!(err.contains("lets other users read it"), "{err}");
    }

    #[test]
    fn a_record_that_vanished_or_went_back_is_written_again_from_the_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Arc::new(AccountKey::load_or_create(dir.path()).expect("key"));
        let f = file(dir.path()).with_key(key.clone());
        let now = 1_795_867_200;
        let add = |n: u64| {
            move |s: &mut Spend| {
                s.roll(now);
                s.add(n);
                ((), true)
            }
        };
        let ((), old, r) = f.update(Base::File, add(1024)).expect("write");
        assert_eq!(r, None);
        let older_copy = fs::read(f.path()).expect("copy");
        let ((), mine, r) = f.update(Base::AtLeast(old), add(4096)).expect("write");
        assert_eq!((mine.day.spent, r), (5120, None));
        type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
        let damages: [(Damage, &str); 3] = [
            (Box::new(|p| fs::remove_file(p).expect("rm")), "is missing"),
            (
                Box::new(|p| fs::write(p, &older_copy).expect("older copy")),
                "holds less",
            ),
            (
                Box::new(|p| fs::write(p, b"").expect("truncate")),
                "not valid JSON",
            ),
        ];
        for (damage, why) in damages {
            damage(f.path());
            let ((), s, r) = f.update(Base::AtLeast(mine), add(1024)).expect("repaired");
            let r = r.expect("repair reported");
            assert!(
                r.contains(why) && r.contains(&f.path().display().to_string()),
                "{r}"
            );
            assert_eq!(s.day.spent, mine.day.spent + 1024, "{why}");
            let ((), on_disk, _) = f.update(Base::File, |_| ((), false)).expect("read");
            assert_eq!(on_disk, s);
            f.update(Base::File, |s| {
                let starts = s.starts();
                s.refund(1024, starts);
                ((), true)
            })
            .expect("refund");
        }
        // The key removed, then the whole directory: both come back.
        fs::remove_file(dir.path().join(KEY_FILE)).expect("rm key");
        let ((), _, r) = f
            .update(Base::AtLeast(mine), |_| ((), false))
            .expect("key back");
        assert!(r.expect("reported").contains("was removed"));
        fs::remove_dir_all(dir.path()).expect("rm -r");
        let ((), s, r) = f
            .update(Base::AtLeast(mine), |_| ((), false))
            .expect("dir back");
        assert!(r.expect("reported").contains("is missing"));
        assert_eq!(s, mine);
        let back = AccountKey::load_or_create(dir.path()).expect("key back");
        assert_eq!(back.account("e", b"t"), key.account("e", b"t"));
    }

    #[test]
    fn a_lock_held_elsewhere_is_an_error_naming_it_within_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = file(dir.path());
        f.update(Base::File, |_| ((), true)).expect("write");
        let held = Flock::lock(
            File::open(&f.lock_path).expect("open"),
            FlockArg::LockExclusive,
        )
        .expect("lock");
        let t = Instant::now();
        match f.update(Base::File, |_| ((), true)) {
            Err(StoreError::Locked(m)) => {
                assert!(m.contains(&f.lock_path.display().to_string()), "{m}");
                assert!(m.contains("is held by"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            t.elapsed() < LOCK_WAIT + Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        drop(held);
        assert!(f.update(Base::File, |_| ((), true)).is_ok());
    }

    #[test]
    fn a_bad_file_is_named_and_never_zeroed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = file(dir.path());
        for (content, why) in [
            ("garbage", "not valid JSON"),
            (
                "{\"format\":\"other\",\"endpoint\":\"\",\"account\":\"\",\"spend\":{\"hour\":{\"start\":0,\"spent\":0},\"day\":{\"start\":0,\"spent\":0},\"month\":{\"start\":0,\"spent\":0}}}",
                "format",
            ),
            (
                "{\"format\":\"qrypt-fs budget v2\",\"endpoint\":\"https://other/\",\"account\":\"00112233445566778899aabbccddeeff\",\"spend\":{\"hour\":{\"start\":0,\"spent\":0},\"day\":{\"start\":0,\"spent\":0},\"month\":{\"start\":0,\"spent\":0}}}",
                "another endpoint",
            ),
            (
                "{\"format\":\"qrypt-fs budget v2\",\"endpoint\":\"https://api.example:443/\",\"account\":\"00112233445566778899aabbccddeeff\",\"spend\":{\"hour\":{\"start\":5,\"spent\":0},\"day\":{\"start\":0,\"spent\":0},\"month\":{\"start\":0,\"spent\":0}}}",
                "not the start of a hour",
            ),
        ] {
            fs::write(f.path(), content).expect("write");
            match f.update(Base::File, |_| ((), true)) {
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
            matches!(f.update(Base::File, |_| ((), true)), Err(StoreError::Corrupt(m)) if m.contains("symbolic link"))
        );
        // Starting fresh replaces whatever is there.
        let (_, s, _) = f.update(Base::Fresh, |_| ((), true)).expect("reset");
        assert_eq!(s, Spend::default());
        assert!(f.update(Base::File, |_| ((), false)).is_ok());
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
            f.update(Base::File, |s| {
                s.roll(1_795_867_200);
                s.add(1024);
                ((), true)
            })
            .expect("write");
            std::os::unix::fs::chown(f.path(), Some(65534), None).expect("chown");
            match f.update(Base::File, |_| ((), false)) {
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
                        f.update(Base::File, |s| {
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
        let (_, s, _) = file(dir.path())
            .update(Base::File, |_| ((), false))
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
            f.update(Base::File, |_| ((), true)),
            Err(StoreError::Io(_))
        ));
    }
}
