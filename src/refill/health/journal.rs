//! The replay history kept across restarts, in `--state-dir`.
//!
//! # Files
//! - `replay.key`: the installation's fingerprint key (32 random bytes behind an 8-byte
//!   magic), shared by every mount using the directory, created once (a temporary file
//!   hard-linked into place, so two daemons starting together agree on one key), mode 0600.
//!   The anchors' Gear table and XXH3 seed and the block digests' seed come from it, so a
//!   restart computes the same fingerprints for the same bytes.
//! - `replay-ID.SLOT.lock`, `replay-ID.SLOT-SEQ.journal`: one daemon's history, ID a digest
//!   of the endpoint and the token source (the upstream account whose bytes could come back,
//!   wherever it is mounted). A daemon takes the first slot (0 to [`SLOTS`] − 1) whose lock is
//!   free and holds it while it runs: two daemons never share a journal, and a daemon that
//!   restarts alone finds its own history again.
//!
//! # Segment format (version 1, little-endian)
//! A 32-byte header: magic `QFSRPLAY`, version `u32`, 0 `u32`, key id `u64` (a digest of the
//! key: a file under another key is not comparable), sequence number `u64` (the one in its
//! name). Then records:
//! count `u32` (1 ..= [`MAX_RECORD`]), 0 `u32`, `count` fingerprints `u64`, and a check `u64`
//! (XXH3 of the record so far, seeded with the key id). Reading stops at the first record that
//! is short or fails its check: what came before it is kept.
//!
//! # Bound
//! A segment holds at most [`SEGMENT_FINGERPRINTS`] (`CAPACITY / 8`); a new one is started when
//! it is full, and the oldest are deleted while the others still hold `CAPACITY`: at most
//! `1.25 * CAPACITY` fingerprints on disk (43 MB) for the 34 MB of a full history.
//!
//! # When
//! Accepted fingerprints are left for a thread of the journal's own, which writes them as a
//! record and `fdatasync`s every [`FLUSH_EVERY`]: a `kill -9` or a power loss
//! loses at most the last second (plus what the disk's own cache hides). At start that
//! thread loads the history, hands it to the intake, then starts a new segment.
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64_with_seed;
use zeroize::Zeroizing;

use super::replay::CAPACITY;

const SEGMENT_MAGIC: [u8; 8] = *b"QFSRPLAY";
const KEY_MAGIC: [u8; 8] = *b"QFSRKEY1";
/// The segment format written (see the module documentation).
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
const KEY_LEN: usize = 32;
const KEY_FILE: &str = "replay.key";
/// Seed of the key id: any fixed value.
const ID_SEED: u64 = 0x7172_7970_742d_6673;
/// Most fingerprints in one record.
pub const MAX_RECORD: usize = 1 << 16;
/// Bytes a record adds to its fingerprints.
const RECORD_OVERHEAD: usize = 16;
/// Fingerprints in a full segment.
pub const SEGMENT_FINGERPRINTS: usize = CAPACITY / 8;
/// A segment file longer than this is not ours (records of one fingerprint each, the worst).
const MAX_SEGMENT_LEN: u64 = (HEADER_LEN + SEGMENT_FINGERPRINTS * (8 + RECORD_OVERHEAD)) as u64;
/// How long accepted fingerprints may wait before they are on disk.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Daemons of one account that can keep a history in one directory at once.
pub const SLOTS: usize = 8;
/// More segments than this at start are rewritten as few full ones.
const MAX_SEGMENTS_KEPT: usize = 32;

/// The installation's fingerprint key.
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl Key {
    pub fn random() -> Result<Key, getrandom::Error> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::getrandom(&mut k[..])?;
        Ok(Key(k))
    }

    fn word(&self, i: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    }

    /// Seed of the anchors (Gear table and XXH3 seed).
    pub fn anchor_seed(&self) -> u64 {
        self.word(0)
    }

    /// Seed of the aligned block digests.
    pub fn block_seed(&self) -> u64 {
        self.word(1)
    }

    /// Written in every segment: a file under another key holds incomparable fingerprints.
    pub fn id(&self) -> u64 {
        xxh3_64_with_seed(&self.0[..], ID_SEED)
    }
}

/// The header of segment `seq`.
pub fn header(key_id: u64, seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&key_id.to_le_bytes());
    h[24..32].copy_from_slice(&seq.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Appends one record of `fps` (1 ..= [`MAX_RECORD`] of them) to `out`.
pub fn encode_record(fps: &[u64], key_id: u64, out: &mut Vec<u8>) {
    debug_assert!((1..=MAX_RECORD).contains(&fps.len()));
    let start = out.len();
    out.extend_from_slice(&(fps.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for fp in fps {
        out.extend_from_slice(&fp.to_le_bytes());
    }
    let check = xxh3_64_with_seed(&out[start..], key_id);
    out.extend_from_slice(&check.to_le_bytes());
}

/// Decodes a whole segment file: its fingerprints in order (never 0, the replay memory's
/// empty slot) into `out`, and why it stopped before the end, if it did. A header that is
/// not ours, another version or another key keeps nothing.
pub fn decode_segment(file: &[u8], key_id: u64, seq: u64, out: &mut Vec<u64>) -> Option<String> {
    if file.len() < HEADER_LEN {
        return Some(format!("{} bytes, shorter than a header", file.len()));
    }
    if file[..8] != SEGMENT_MAGIC {
        return Some("not a replay journal (wrong magic)".into());
    }
    let version = u32_at(file, 8);
    if version != VERSION {
        return Some(format!("format version {version}, not {VERSION}"));
    }
    if u32_at(file, 12) != 0 {
        return Some("corrupt header".into());
    }
    if u64_at(file, 16) != key_id {
        return Some(format!("written under another key than {KEY_FILE}'s"));
    }
    if u64_at(file, 24) != seq {
        return Some("its header names another segment (renamed or copied)".into());
    }
    let mut at = HEADER_LEN;
    while at < file.len() {
        let rest = &file[at..];
        if rest.len() < 8 {
            return Some(format!("truncated record at byte {at}"));
        }
        let count = u32_at(rest, 0) as usize;
        if !(1..=MAX_RECORD).contains(&count) || u32_at(rest, 4) != 0 {
            return Some(format!("corrupt record header at byte {at}"));
        }
        let len = 8 + count * 8;
        if rest.len() < len + 8 {
            return Some(format!("truncated record at byte {at}"));
        }
        if xxh3_64_with_seed(&rest[..len], key_id) != u64_at(rest, len) {
            return Some(format!("record at byte {at} fails its check"));
        }
        out.extend((0..count).map(|i| u64_at(rest, 8 + i * 8).max(1)));
        at += len + 8;
    }
    None
}

/// Takes the lock at `path` if no one holds it (`None` if someone does). Created, then held
/// open read-only: a descriptor open for writing for the whole run would keep the state
/// directory from being remounted read-only.
fn lock_slot(path: &Path) -> Result<Option<Flock<File>>, String> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|_| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        })
        .map_err(|e| format!("replay history lock {}: {e}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(format!("replay history lock {}: {e}", path.display())),
    }
}

/// Where one mount's history lives.
#[derive(Debug, Clone)]
pub struct Place {
    pub dir: PathBuf,
    /// Digest of the account, then (once a slot is taken) `.SLOT`: the journal's name.
    pub id: String,
}

impl Place {
    /// The history of the upstream `account` (endpoint and token source, never the token)
    /// in `dir`.
    pub fn new(dir: &Path, account: &str) -> Place {
        let mut h = Sha256::new();
        h.update(b"qrypt-fs replay\0");
        h.update(account.as_bytes());
        let hex: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Place {
            dir: dir.to_owned(),
            id: hex,
        }
    }

    fn segment(&self, seq: u64) -> PathBuf {
        self.dir
            .join(format!("replay-{}-{seq:016x}.journal", self.id))
    }

    /// The sequence numbers of this mount's segments, in order.
    fn segments(&self) -> Vec<u64> {
        let prefix = format!("replay-{}-", self.id);
        let mut seqs: Vec<u64> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let hex = name.strip_prefix(&prefix)?.strip_suffix(".journal")?;
                u64::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 16)
            })
            .collect();
        seqs.sort_unstable();
        seqs
    }
}

/// Opens `path` for reading if it is a regular file of ours, not a link.
fn open_ours(path: &Path) -> Result<Option<File>, String> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if !crate::budget::owned_by_us(meta.uid()) {
        return Err(format!(
            "owned by uid {}, not by uid {}",
            meta.uid(),
            crate::budget::state_owner()
        ));
    }
    Ok(Some(file))
}

/// Creates `path` (which must not exist) with `bytes`, mode 0600, durably.
fn create_file(path: &Path, bytes: &[u8]) -> std::io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // The mode given at creation is filtered by the umask; 0600 is what we promise.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(f)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// The key in `dir`, created if there is none. A key file that is unusable is replaced
/// (logged): the history written under it can no longer be compared, so it is dropped.
pub fn load_or_create_key(dir: &Path) -> Result<Key, String> {
    let path = dir.join(KEY_FILE);
    let shown = path.display();
    let problem = match open_ours(&path) {
        Ok(Some(mut f)) => {
            let mut buf = Zeroizing::new(Vec::with_capacity(8 + KEY_LEN + 1));
            match Read::by_ref(&mut f)
                .take((8 + KEY_LEN + 1) as u64)
                .read_to_end(&mut buf)
            {
                Ok(n) if n == 8 + KEY_LEN && buf[..8] == KEY_MAGIC => {
                    let mut k = Zeroizing::new([0u8; KEY_LEN]);
                    k.copy_from_slice(&buf[8..]);
                    return Ok(Key(k));
                }
                Ok(n) => format!("{n} bytes, not a key this program wrote"),
                Err(e) => format!("cannot read it: {e}"),
            }
        }
        Ok(None) => String::new(),
        Err(why) => why,
    };
    let key = Key::random().map_err(|e| format!("replay key: OS random generator: {e}"))?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(8 + KEY_LEN));
    bytes.extend_from_slice(&KEY_MAGIC);
    bytes.extend_from_slice(&key.0[..]);
    let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    create_file(&tmp, &bytes).map_err(|e| format!("replay key {}: {e}", tmp.display()))?;
    let placed = if problem.is_empty() {
        // A link fails if another daemon placed its key first: then that one is the key.
        match fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(&tmp);
                return load_or_create_key_existing(&path);
            }
            Err(e) => Err(e),
        }
    } else {
        warn!(
            "replay key {shown} is unusable ({problem}): a new key replaces it, and the replay history kept under the old one is dropped"
        );
        fs::rename(&tmp, &path)
    };
    let _ = fs::remove_file(&tmp);
    placed
        .and_then(|()| sync_dir(dir))
        .map_err(|e| format!("replay key {shown}: {e}"))?;
    Ok(key)
}

/// The key another daemon just created.
fn load_or_create_key_existing(path: &Path) -> Result<Key, String> {
    let shown = path.display();
    let mut f = open_ours(path)
        .map_err(|e| format!("replay key {shown}: {e}"))?
        .ok_or_else(|| format!("replay key {shown}: vanished"))?;
    let mut buf = Zeroizing::new(Vec::new());
    Read::by_ref(&mut f)
        .take((8 + KEY_LEN + 1) as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("replay key {shown}: {e}"))?;
    if buf.len() != 8 + KEY_LEN || buf[..8] != KEY_MAGIC {
        return Err(format!("replay key {shown}: not a key this program wrote"));
    }
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    k.copy_from_slice(&buf[8..]);
    Ok(Key(k))
}

/// What a start finds on disk.
pub struct Loaded {
    /// The last (at most) `CAPACITY` fingerprints, oldest first.
    pub fingerprints: Vec<u64>,
    /// Segments that hold them, oldest first, with how many of theirs count (all of them).
    segments: Vec<(u64, usize)>,
    /// Segments to delete once the history is written again (unusable, or rewritten).
    stale: Vec<u64>,
    /// Rewrite the history into new segments (a damaged or a scattered journal).
    rewrite: bool,
    next_seq: u64,
}

/// Reads this mount's segments, newest first until `capacity` fingerprints are found. Every
/// problem is logged once, with the file's name; none is fatal.
pub fn load(place: &Place, key_id: u64, capacity: usize) -> Loaded {
    let seqs = place.segments();
    let next_seq = seqs.last().map_or(0, |s| s + 1);
    let mut parts: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut stale = Vec::new();
    let mut rewrite = seqs.len() > MAX_SEGMENTS_KEPT;
    let mut total = 0usize;
    for &seq in seqs.iter().rev() {
        if total >= capacity {
            stale.push(seq);
            continue;
        }
        let path = place.segment(seq);
        let mut fps = Vec::new();
        let problem = match open_ours(&path) {
            Ok(Some(f)) => {
                let mut bytes = Vec::new();
                match f.take(MAX_SEGMENT_LEN + 1).read_to_end(&mut bytes) {
                    Ok(_) if bytes.len() as u64 > MAX_SEGMENT_LEN => {
                        bytes.truncate(MAX_SEGMENT_LEN as usize);
                        decode_segment(&bytes, key_id, seq, &mut fps)
                            .or_else(|| Some("longer than a segment can be".into()))
                    }
                    Ok(_) => decode_segment(&bytes, key_id, seq, &mut fps),
                    Err(e) => Some(format!("cannot read it: {e}")),
                }
            }
            Ok(None) => continue,
            Err(why) => Some(why),
        };
        if let Some(why) = problem {
            warn!(
                "replay history {}: {why}; kept the {} fingerprints before it",
                path.display(),
                fps.len()
            );
            rewrite = true;
        }
        if fps.is_empty() {
            stale.push(seq);
            continue;
        }
        total += fps.len();
        parts.push((seq, fps));
    }
    parts.reverse();
    let mut fingerprints = Vec::with_capacity(total.min(capacity));
    let mut segments = Vec::new();
    let skip = total.saturating_sub(capacity);
    let mut seen = 0usize;
    for (seq, fps) in parts {
        let from = skip.saturating_sub(seen).min(fps.len());
        seen += fps.len();
        fingerprints.extend_from_slice(&fps[from..]);
        segments.push((seq, fps.len()));
    }
    if rewrite {
        stale.extend(segments.drain(..).map(|(seq, _)| seq));
    }
    Loaded {
        fingerprints,
        segments,
        stale,
        rewrite,
        next_seq,
    }
}

/// Appends to this mount's segments, starting new ones and deleting old ones.
struct Writer {
    place: Place,
    key_id: u64,
    capacity: usize,
    /// Open only from a write to its sync: a file held open for writing would keep an
    /// operator from remounting the state directory read-only.
    file: Option<File>,
    /// Segment `seq` exists and is appended to.
    current: bool,
    seq: u64,
    in_current: usize,
    /// Closed segments, oldest first, with their fingerprint counts.
    closed: VecDeque<(u64, usize)>,
    buf: Vec<u8>,
}

impl Writer {
    fn write(&mut self, mut fps: &[u64]) -> std::io::Result<()> {
        while !fps.is_empty() {
            if !self.current || self.in_current >= SEGMENT_FINGERPRINTS {
                self.rotate()?;
            }
            if self.file.is_none() {
                self.file = Some(
                    OpenOptions::new()
                        .append(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(self.place.segment(self.seq))?,
                );
            }
            let n = fps
                .len()
                .min(MAX_RECORD)
                .min(SEGMENT_FINGERPRINTS - self.in_current);
            self.buf.clear();
            encode_record(&fps[..n], self.key_id, &mut self.buf);
            if let Some(f) = self.file.as_mut() {
                f.write_all(&self.buf)?;
            }
            self.in_current += n;
            fps = &fps[n..];
        }
        Ok(())
    }

    /// Makes what was written durable, and closes the file.
    fn sync(&mut self) -> std::io::Result<()> {
        match self.file.take() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// After a failed write: the current segment (perhaps with a torn record at its end,
    /// which a load cuts off) is closed, and the next write starts a new one.
    fn abandon(&mut self) {
        self.file = None;
        if self.current {
            self.closed.push_back((self.seq, self.in_current));
        }
        self.current = false;
        self.seq += 1;
    }

    /// Closes the current segment, starts the next, and deletes the oldest ones not needed
    /// to hold `capacity` fingerprints.
    fn rotate(&mut self) -> std::io::Result<()> {
        if self.current {
            if let Some(f) = self.file.take() {
                f.sync_all()?;
            }
            self.closed.push_back((self.seq, self.in_current));
            self.seq += 1;
            self.current = false;
        }
        self.file = Some(create_file(
            &self.place.segment(self.seq),
            &header(self.key_id, self.seq),
        )?);
        self.current = true;
        self.in_current = 0;
        let mut held: usize = self.closed.iter().map(|&(_, n)| n).sum();
        while let Some(&(seq, n)) = self.closed.front() {
            if held - n < self.capacity {
                break;
            }
            self.closed.pop_front();
            held -= n;
            remove(&self.place.segment(seq));
        }
        sync_dir(&self.place.dir)
    }
}

fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("replay history {}: cannot delete it: {e}", path.display()),
    }
}

/// Accepted fingerprints not yet written, and whether the intake is gone.
#[derive(Default)]
struct Pending {
    fingerprints: parking_lot::Mutex<Vec<u64>>,
    closed: AtomicBool,
}

/// A mount's journal: takes accepted fingerprints, hands the loaded history over once.
pub struct Journal {
    pending: Arc<Pending>,
    loaded: Option<mpsc::Receiver<Arc<Vec<u64>>>>,
    saving: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _lock: Flock<File>,
}

impl Journal {
    /// Prepares `place` (the directory 0700, the lock, the key) and starts the journal's
    /// thread, which loads the history. An error means no history is kept in `place`.
    pub fn open(place: Place) -> Result<(Journal, Key), String> {
        Self::open_with_capacity(place, CAPACITY)
    }

    pub fn open_with_capacity(place: Place, capacity: usize) -> Result<(Journal, Key), String> {
        crate::budget::prepare_state_dir(&place.dir, "state directory")?;
        let mut held = None;
        for slot in 0..SLOTS {
            let id = format!("{}.{slot}", place.id);
            if let Some(lock) = lock_slot(&place.dir.join(format!("replay-{id}.lock")))? {
                held = Some((lock, id));
                break;
            }
        }
        let Some((lock, id)) = held else {
            return Err(format!(
                "all {SLOTS} replay history slots of this endpoint and token source in {} are \
                 held by other running qrypt-fs daemons",
                place.dir.display()
            ));
        };
        let place = Place { id, ..place };
        let key = load_or_create_key(&place.dir)?;
        let key_id = key.id();
        let saving = Arc::new(AtomicBool::new(true));
        let pending = Arc::new(Pending::default());
        let (loaded_tx, loaded_rx) = mpsc::sync_channel(1);
        let thread_saving = saving.clone();
        let thread_pending = pending.clone();
        let thread = std::thread::Builder::new()
            .name("replay-journal".into())
            .spawn(move || {
                run(
                    place,
                    key_id,
                    capacity,
                    loaded_tx,
                    &thread_pending,
                    &thread_saving,
                )
            })
            .map_err(|e| format!("replay history thread: {e}"))?;
        Ok((
            Journal {
                pending,
                loaded: Some(loaded_rx),
                saving,
                thread: Some(thread),
                _lock: lock,
            },
            key,
        ))
    }

    /// The loaded history, once: waits for the load to finish (empty if it failed).
    pub fn take_loaded(&mut self) -> Option<Arc<Vec<u64>>> {
        self.loaded.take().and_then(|rx| rx.recv().ok())
    }

    /// Hands accepted fingerprints to the journal's thread, which takes them within
    /// [`FLUSH_EVERY`]: a copy under a lock nobody holds for long, no wake-up.
    pub fn append(&self, fps: impl IntoIterator<Item = u64>) {
        self.pending.fingerprints.lock().extend(fps);
    }

    /// True while the history is being written to disk.
    pub fn saving(&self) -> bool {
        self.saving.load(Ordering::Relaxed)
    }
}

impl Drop for Journal {
    /// Writes what is pending and waits for it: a clean stop loses nothing.
    fn drop(&mut self) {
        self.pending.closed.store(true, Ordering::SeqCst);
        self.loaded = None;
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The journal's thread: load, hand over, write the history again if it must, then write
/// what was accepted every [`FLUSH_EVERY`] until the intake goes.
fn run(
    place: Place,
    key_id: u64,
    capacity: usize,
    loaded_tx: mpsc::SyncSender<Arc<Vec<u64>>>,
    pending: &Pending,
    saving: &AtomicBool,
) {
    let started = Instant::now();
    let loaded = load(&place, key_id, capacity);
    let history = Arc::new(loaded.fingerprints);
    info!(
        "replay history: {} fingerprints (about {} MiB of past upstream bytes) loaded from {} in {} ms",
        history.len(),
        (history.len() as u64 * super::BYTES_PER_ANCHOR) >> 20,
        place.dir.display(),
        started.elapsed().as_millis()
    );
    let _ = loaded_tx.send(history.clone());
    let mut w = Writer {
        place,
        key_id,
        capacity,
        file: None,
        current: false,
        seq: loaded.next_seq,
        in_current: 0,
        closed: loaded.segments.into_iter().collect(),
        buf: Vec::with_capacity(8 * MAX_RECORD + RECORD_OVERHEAD),
    };
    let first = if loaded.rewrite {
        w.write(&history).and_then(|()| w.sync())
    } else {
        w.rotate().and_then(|()| w.sync())
    };
    drop(history);
    match first {
        Ok(()) => {
            for seq in &loaded.stale {
                remove(&w.place.segment(*seq));
            }
        }
        Err(e) => failed(&e, &mut w, saving),
    }
    let mut taken: Vec<u64> = Vec::new();
    loop {
        let closed = pending.closed.load(Ordering::SeqCst);
        taken.extend(pending.fingerprints.lock().drain(..));
        // While writes fail, the newest history is kept for when they work again.
        let over = taken.len().saturating_sub(capacity);
        taken.drain(..over);
        if !taken.is_empty() {
            match w.write(&taken).and_then(|()| w.sync()) {
                Ok(()) => {
                    taken.clear();
                    if !saving.swap(true, Ordering::SeqCst) {
                        info!("replay history in {}: written again", w.place.dir.display());
                    }
                }
                Err(e) => failed(&e, &mut w, saving),
            }
        }
        if closed {
            return;
        }
        // Woken early only by the intake going (`Journal::drop`).
        std::thread::park_timeout(FLUSH_EVERY);
    }
}

/// After a write failed: say so once, and start a new segment at the next try.
fn failed(e: &std::io::Error, w: &mut Writer, saving: &AtomicBool) {
    if saving.swap(false, Ordering::SeqCst) {
        warn!(
            "replay history in {}: cannot write it ({e}): tried again every second; until it \
             works, a restart forgets what was accepted since",
            w.place.dir.display()
        );
    }
    w.abandon();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn place(dir: &Path) -> Place {
        Place::new(dir, "https://api.example/\0environment")
    }

    /// The files of the first daemon of `place`'s account.
    fn slot0(dir: &Path) -> Place {
        let p = place(dir);
        Place {
            id: format!("{}.0", p.id),
            ..p
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn journal_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
            .map(|e| e.metadata().expect("meta").len())
            .sum()
    }

    fn open(dir: &Path, capacity: usize) -> (Journal, Key, Vec<u64>) {
        let (mut j, k) = Journal::open_with_capacity(place(dir), capacity).expect("open");
        let loaded = j.take_loaded().expect("loaded");
        (j, k, loaded.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Records round trip; any cut keeps exactly the whole records before it; any flipped
        /// byte keeps a prefix of the fingerprints and says why.
        #[test]
        fn records_round_trip_and_damage_keeps_a_prefix(
            records in proptest::collection::vec(proptest::collection::vec(1u64.., 1..40), 1..8),
            cut in 0usize..10_000,
            flip in 0usize..10_000,
            bit in 0u8..8,
        ) {
            let key_id = 42;
            let mut file = header(key_id, 7).to_vec();
            let mut ends = vec![];
            for r in &records {
                encode_record(r, key_id, &mut file);
                ends.push(file.len());
            }
            let all: Vec<u64> = records.concat();
            let mut out = vec![];
            prop_assert_eq!(decode_segment(&file, key_id, 7, &mut out), None);
            prop_assert_eq!(&out, &all);

            let cut = HEADER_LEN + cut % (file.len() - HEADER_LEN);
            let whole = ends.iter().take_while(|&&e| e <= cut).count();
            let mut out = vec![];
            let why = decode_segment(&file[..cut], key_id, 7, &mut out);
            prop_assert_eq!(why.is_some(), cut != HEADER_LEN && !ends.contains(&cut));
            prop_assert_eq!(&out[..], &records[..whole].concat()[..]);

            let mut bad = file.clone();
            let at = flip % bad.len();
            bad[at] ^= 1 << bit;
            let mut out = vec![];
            let why = decode_segment(&bad, key_id, 7, &mut out);
            prop_assert!(why.is_some(), "a flipped bit at {} went unnoticed", at);
            prop_assert!(all.starts_with(&out));
        }
    }

    #[test]
    fn foreign_wrong_version_and_other_key_keep_nothing() {
        let mut file = header(1, 0).to_vec();
        encode_record(&[5, 6], 1, &mut file);
        let mut out = vec![];
        assert!(decode_segment(&file, 2, 0, &mut out).is_some_and(|w| w.contains("another key")));
        let mut v2 = file.clone();
        v2[8] = 2;
        assert!(decode_segment(&v2, 1, 0, &mut out).is_some_and(|w| w.contains("version 2")));
        assert!(decode_segment(b"{\"format\": 1}", 1, 0, &mut out).is_some());
        let mut foreign = vec![0u8; 64];
        foreign[..4].copy_from_slice(b"\x7fELF");
        assert!(decode_segment(&foreign, 1, 0, &mut out).is_some_and(|w| w.contains("magic")));
        assert!(out.is_empty());
    }

    #[test]
    fn history_survives_a_restart_with_the_same_key_and_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, k1, loaded) = open(dir.path(), 1000);
        assert!(loaded.is_empty());
        j.append(1..=300);
        j.append(301..=500);
        drop(j);
        let (j, k2, loaded) = open(dir.path(), 1000);
        assert_eq!(k1.id(), k2.id());
        assert_eq!(k1.anchor_seed(), k2.anchor_seed());
        assert_eq!(loaded, (1..=500).collect::<Vec<u64>>());
        assert!(j.saving());
        for name in files(dir.path()) {
            let mode = fs::metadata(dir.path().join(&name)).expect("meta").mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let dir_mode = fs::metadata(dir.path()).expect("meta").mode();
        assert_eq!(dir_mode & 0o022, 0);
    }

    #[test]
    fn appends_reach_the_disk_within_a_second_without_a_clean_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, _, _) = open(dir.path(), 1000);
        j.append(1..=100);
        let deadline = Instant::now() + Duration::from_secs(10);
        while journal_bytes(dir.path()) < (HEADER_LEN + 100 * 8 + RECORD_OVERHEAD) as u64 {
            assert!(Instant::now() < deadline, "not flushed");
            std::thread::sleep(Duration::from_millis(20));
        }
        // What a kill -9 leaves: read it as the next start would, the lock still held.
        let key = load_or_create_key(dir.path()).expect("key");
        let l = load(&slot0(dir.path()), key.id(), 1000);
        assert_eq!(l.fingerprints, (1..=100).collect::<Vec<u64>>());
        drop(j);
    }

    #[test]
    fn the_journal_stays_within_its_bound_and_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = 8 * 1000;
        let (j, _, _) = open(dir.path(), capacity);
        let mut next = 1u64;
        for _ in 0..60 {
            j.append(next..next + 997);
            next += 997;
        }
        drop(j);
        // SEGMENT_FINGERPRINTS is CAPACITY / 8; with a small capacity each segment still
        // holds up to SEGMENT_FINGERPRINTS, so the bound is capacity + two segments.
        let bound = HEADER_LEN as u64 * 64 + (capacity + 2 * SEGMENT_FINGERPRINTS) as u64 * 24;
        assert!(journal_bytes(dir.path()) <= bound);
        let (_j, _, loaded) = open(dir.path(), capacity);
        assert_eq!(loaded.len(), capacity);
        assert_eq!(loaded.last(), Some(&(next - 1)));
        assert_eq!(loaded[0], next - capacity as u64);
    }

    #[test]
    fn full_segments_rotate_and_old_ones_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = 2 * SEGMENT_FINGERPRINTS;
        let (j, _, _) = open(dir.path(), capacity);
        let mut next = 1u64;
        for _ in 0..5 * SEGMENT_FINGERPRINTS / MAX_RECORD + 1 {
            j.append(next..next + MAX_RECORD as u64);
            next += MAX_RECORD as u64;
        }
        drop(j);
        // At most capacity in closed segments plus one more, plus the current one.
        let segments = files(dir.path())
            .iter()
            .filter(|n| n.ends_with(".journal"))
            .count();
        assert!(segments <= 4, "{:?}", files(dir.path()));
        assert!(
            journal_bytes(dir.path()) <= ((capacity + 2 * SEGMENT_FINGERPRINTS) * 9) as u64,
            "{}",
            journal_bytes(dir.path())
        );
        let (_j, _, loaded) = open(dir.path(), capacity);
        assert_eq!(loaded.len(), capacity);
        assert_eq!(loaded.last(), Some(&(next - 1)));
    }

    #[test]
    fn damage_keeps_the_good_prefix_and_never_fails_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, _, _) = open(dir.path(), 1000);
        j.append(1..=10);
        drop(j);
        let (j, _, _) = open(dir.path(), 1000);
        j.append(11..=20);
        drop(j);
        // The newer segment loses its last bytes (a torn write); a stray file of another
        // program sits among the segments.
        let p = slot0(dir.path());
        let seqs = p.segments();
        let newest = p.segment(*seqs.last().expect("segments"));
        let len = fs::metadata(&newest).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&newest)
            .expect("open")
            .set_len(len - 3)
            .expect("truncate");
        fs::write(p.segment(0x100), b"garbage").expect("write");
        let (j, _, loaded) = open(dir.path(), 1000);
        assert_eq!(loaded, (1..=10).collect::<Vec<u64>>());
        drop(j);
        // Rewritten: the next start finds the same history and no complaint to repeat.
        let (_j, _, loaded) = open(dir.path(), 1000);
        assert_eq!(loaded, (1..=10).collect::<Vec<u64>>());
        assert!(!p.segments().contains(&0x100), "{:?}", files(dir.path()));
    }

    #[test]
    fn a_failed_write_is_retried_in_a_new_segment_and_nothing_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, _, _) = open(dir.path(), 1000);
        let p = slot0(dir.path());
        let first = p.segment(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !first.exists() {
            assert!(Instant::now() < deadline, "no segment");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The segment becomes a directory: appending to it fails.
        fs::remove_file(&first).expect("remove");
        fs::create_dir(&first).expect("mkdir");
        j.append(1..=10);
        let deadline = Instant::now() + Duration::from_secs(10);
        while j.saving() {
            assert!(Instant::now() < deadline, "the failure went unnoticed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !j.saving() {
            assert!(Instant::now() < deadline, "not retried");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(j);
        let (_j, _, loaded) = open(dir.path(), 1000);
        assert_eq!(loaded, (1..=10).collect::<Vec<u64>>());
    }

    #[test]
    fn a_damaged_key_is_replaced_and_its_history_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, k1, _) = open(dir.path(), 1000);
        j.append([1, 2, 3]);
        drop(j);
        fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        let (_j, k2, loaded) = open(dir.path(), 1000);
        assert_ne!(k1.id(), k2.id());
        assert!(loaded.is_empty());
    }

    #[test]
    fn two_daemons_of_one_account_take_two_slots_and_each_finds_its_own_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, _, _) = open(dir.path(), 1000);
        let (b, _, _) = open(dir.path(), 1000);
        a.append(1..=5);
        b.append(6..=9);
        drop(b);
        // The first keeps running; a restart of the second takes the free slot, its own.
        let (_b, _, loaded) = open(dir.path(), 1000);
        assert_eq!(loaded, (6..=9).collect::<Vec<u64>>());
        drop(a);
        // Another account in the same directory: its own journal, the same key.
        let (mut other, _) =
            Journal::open_with_capacity(Place::new(dir.path(), "https://other/\0env"), 1000)
                .expect("other account");
        assert!(other.take_loaded().expect("loaded").is_empty());
    }

    #[test]
    fn with_every_slot_taken_a_daemon_keeps_no_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held: Vec<_> = (0..SLOTS).map(|_| open(dir.path(), 1000)).collect();
        let err = Journal::open_with_capacity(place(dir.path()), 1000)
            .err()
            .expect("no slot");
        assert!(err.contains("held by other running qrypt-fs"), "{err}");
        drop(held);
    }
}
