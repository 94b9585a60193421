//! The filesystem on the mock client, with no kernel: what `lookup`, `open` and `read` answer
//! for each file, with `/random` served from a pool the prefetcher fills.
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;

use fuser::{FileType, FopenFlags, OpenFlags};

use super::*;
use crate::refill::{PrefetchConfig, Prefetcher};
use crate::status::{StaticInfo, Status};
use crate::upstream::mock::MockClient;

/// A reply that sends its answer down a channel.
struct Answer(mpsc::Sender<Result<Vec<u8>, Errno>>);

impl DataReply for Answer {
    fn data(self, data: &[u8]) {
        let _ = self.0.send(Ok(data.to_vec()));
    }

    fn error(self, err: Errno) {
        let _ = self.0.send(Err(err));
    }
}

fn read(
    fs: &EntropyFs,
    ino: INodeNo,
    fh: FileHandle,
    offset: u64,
    size: u32,
    flags: i32,
) -> Result<Vec<u8>, Errno> {
    let (tx, rx) = mpsc::channel();
    fs.read(
        Read {
            ino,
            fh,
            offset,
            size,
            flags: OpenFlags(flags),
            pid: std::process::id(),
            uid: 0,
            lock_owner: Some(1),
        },
        Answer(tx),
    );
    rx.recv_timeout(Duration::from_secs(5)).expect("answered")
}

const RDONLY: OpenFlags = OpenFlags(libc::O_RDONLY);

fn fs_on(pool: Arc<Pool>, render: StatusRenderer) -> EntropyFs {
    EntropyFs::new(pool, render, None)
}

/// Looks up `/random` and opens it read-only: its inode and file handle.
fn open_random(fs: &EntropyFs) -> (INodeNo, FileHandle) {
    let random = fs
        .lookup(INodeNo::ROOT, OsStr::new("random"))
        .expect("ino")
        .ino;
    let (fh, _) = fs.open(random, RDONLY).expect("open");
    (random, fh)
}

#[test]
fn lookup_and_attributes() {
    let fs = fs_on(Arc::new(Pool::new(4096)), Box::new(|_| String::new()));
    let random = fs
        .lookup(INodeNo::ROOT, OsStr::new("random"))
        .expect("random");
    assert_eq!(random.kind, FileType::RegularFile);
    assert_eq!((random.perm, random.size), (0o444, RANDOM_FILE_SIZE));
    assert_eq!(random.blksize, page_size());
    assert_eq!(random.uid, nix::unistd::getuid().as_raw());
    let status = fs
        .lookup(INodeNo::ROOT, OsStr::new("status"))
        .expect("status");
    assert_eq!((status.perm, status.size), (0o444, 0));
    assert_eq!(fs.getattr(status.ino), Ok(status));
    let root = fs.getattr(INodeNo::ROOT).expect("root");
    assert_eq!((root.kind, root.perm), (FileType::Directory, 0o555));
    assert_eq!(
        fs.lookup(INodeNo::ROOT, OsStr::new("nope")),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fs.lookup(random.ino, OsStr::new("random")),
        Err(Errno::ENOENT)
    );
    assert_eq!(fs.getattr(INodeNo(99)), Err(Errno::ENOENT));
    let names: Vec<_> = fs
        .readdir(INodeNo::ROOT, 0)
        .expect("dir")
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [".", "..", "random", "status", "status.json", "metrics"]
    );
    let rest: Vec<_> = fs.readdir(INodeNo::ROOT, 4).expect("dir").collect();
    assert_eq!((rest[0].name, rest[0].next_offset), ("status.json", 5));
    assert!(fs.readdir(random.ino, 0).is_err());
}

#[test]
fn open_flags_per_file() {
    let fs = fs_on(Arc::new(Pool::new(4096)), Box::new(|_| String::new()));
    let ino = |name: &str| fs.lookup(INodeNo::ROOT, OsStr::new(name)).expect("ino").ino;
    let (_, flags) = fs.open(ino("random"), RDONLY).expect("open");
    assert_eq!(
        flags,
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NONSEEKABLE | FopenFlags::FOPEN_STREAM
    );
    assert!(!flags.contains(FopenFlags::FOPEN_KEEP_CACHE));
    for name in ["status", "status.json", "metrics"] {
        let (_, flags) = fs.open(ino(name), RDONLY).expect("open");
        assert_eq!(flags, FopenFlags::FOPEN_DIRECT_IO, "{name}");
    }
    for acc in [libc::O_WRONLY, libc::O_RDWR] {
        assert_eq!(fs.open(ino("random"), OpenFlags(acc)), Err(Errno::EROFS));
    }
    assert_eq!(fs.open(INodeNo::ROOT, RDONLY), Err(Errno::EISDIR));
    assert_eq!(fs.open(INodeNo(99), RDONLY), Err(Errno::ENOENT));
}

#[test]
fn status_is_a_snapshot_taken_at_open_and_read_by_offset() {
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = renders.clone();
    let fs = fs_on(
        Arc::new(Pool::new(4096)),
        Box::new(move |format| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            format!("render: {n}\nformat: {format:?}\n")
        }),
    );
    let ino = fs
        .lookup(INodeNo::ROOT, OsStr::new("status.json"))
        .expect("ino")
        .ino;
    let (fh, _) = fs.open(ino, RDONLY).expect("open");
    let head = read(&fs, ino, fh, 0, 5, 0).expect("read");
    // Another open renders again; this handle keeps its own picture.
    let (other, _) = fs.open(ino, RDONLY).expect("open");
    let tail = read(&fs, ino, fh, 5, 4096, 0).expect("read");
    assert_eq!([head, tail].concat(), b"render: 0\nformat: Json\n");
    assert_eq!(read(&fs, ino, other, 0, 9, 0), Ok(b"render: 1".to_vec()));
    assert_eq!(read(&fs, ino, fh, 1 << 40, 10, 0), Ok(Vec::new()));
    fs.release(fh);
    assert_eq!(read(&fs, ino, fh, 0, 10, 0), Err(Errno::EBADF));
    assert_eq!(renders.load(Ordering::SeqCst), 2);
}

#[test]
fn random_is_served_from_the_pool_the_prefetcher_fills() {
    let capacity = 64 * 1024;
    let pool = Arc::new(Pool::new(capacity));
    let status = Arc::new(Status::new(StaticInfo {
        endpoint: "mock".into(),
        token_source: "test".into(),
        capacity,
        mix_local: false,
        rate_limit: "off".into(),
    }));
    let fs = fs_on(pool.clone(), Box::new(|_| String::new()));
    let (random, fh) = open_random(&fs);
    // Nothing buffered yet: a non-blocking read gets EAGAIN, and poll says not ready.
    assert_eq!(
        read(&fs, random, fh, 0, 32, libc::O_NONBLOCK),
        Err(Errno::EAGAIN)
    );
    assert_eq!(fs.poll(random, fh, None), Ok(PollEvents::empty()));

    // A blocking read waits in the pool until the prefetcher (on the mock client) fills it.
    let (tx, waiting) = mpsc::channel();
    let blocking = Read {
        ino: random,
        fh,
        offset: 0,
        size: 64,
        flags: RDONLY,
        pid: std::process::id(),
        uid: 0,
        lock_owner: Some(1),
    };
    fs.read(blocking, Answer(tx));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cfg = PrefetchConfig::for_capacity(capacity);
    cfg.rate_limit = None;
    // One request at a time, so the stream reaches the pool in order.
    cfg.max_in_flight = 1;
    let client = Arc::new(MockClient::new());
    let (_control, control_rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = Prefetcher::new(client, pool.clone(), status, cfg).run(control_rx);
    rt.block_on(async {
        let worker = tokio::spawn(worker);
        // Full: the waiting read took 64 bytes, and less than a KiB (a request's unit) is free.
        let full = async {
            while pool.buffered() + crate::upstream::BLOCK_LEN <= capacity {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), full)
            .await
            .expect("the prefetcher fills the pool");
        worker.abort();
    });

    let first = waiting
        .recv_timeout(Duration::from_secs(5))
        .expect("answered");
    assert_eq!(first, Ok(MockClient::expected(0, 64)));
    // Offsets are ignored and no byte comes twice: the next read takes the next bytes.
    let second = read(&fs, random, fh, 0, 100, 0).expect("read");
    assert_eq!(second, MockClient::expected(64, 100));
    assert_eq!(
        fs.poll(random, fh, None),
        Ok(PollEvents::POLLIN | PollEvents::POLLRDNORM)
    );
    assert_eq!(pool.buffered(), capacity - 64 - 100);

    // After shutdown, reads fail with EIO and poll reports the error.
    pool.shutdown();
    assert_eq!(read(&fs, random, fh, 0, 8, 0), Err(Errno::EIO));
    assert!(
        fs.poll(random, fh, None)
            .expect("poll")
            .contains(PollEvents::POLLERR)
    );
}

#[test]
fn pool_errors_map_to_errno() {
    assert_eq!(errno_for(ReadError::WouldBlock), Errno::EAGAIN);
    assert_eq!(errno_for(ReadError::Interrupted), Errno::EINTR);
    for e in [
        ReadError::Unavailable,
        ReadError::TimedOut,
        ReadError::ShuttingDown,
    ] {
        assert_eq!(errno_for(e), Errno::EIO);
    }
}

#[test]
fn a_page_cache_fill_of_random_is_refused_and_takes_nothing() {
    let pool = Arc::new(Pool::new(4096));
    assert_eq!(pool.push(&[7u8; 4096]), 4096);
    let fs = fs_on(pool.clone(), Box::new(|_| "snapshot\n".into()));
    let (random, fh) = open_random(&fs);
    let fill = |ino, fh| {
        let (tx, rx) = mpsc::channel();
        fs.read(
            Read {
                ino,
                fh,
                offset: 0,
                size: 4096,
                flags: RDONLY,
                pid: std::process::id(),
                uid: 0,
                lock_owner: None,
            },
            Answer(tx),
        );
        rx.recv_timeout(Duration::from_secs(5)).expect("answered")
    };
    assert_eq!(fill(random, fh), Err(Errno::EIO));
    assert_eq!(pool.served_bytes(), 0);
    assert_eq!(pool.buffered(), 4096);
    // A status file holds no pool byte: its page cache may be filled.
    let status = fs
        .lookup(INodeNo::ROOT, OsStr::new("status"))
        .expect("ino")
        .ino;
    let (sfh, _) = fs.open(status, RDONLY).expect("open");
    assert_eq!(fill(status, sfh), Ok(b"snapshot\n".to_vec()));
}

/// A kernel thread visible here (`PF_KTHREAD` in its stat flags), if any.
fn a_kernel_thread() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let flags: u64 = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(6)?
            .parse()
            .ok()?;
        (flags & 0x0020_0000 != 0).then_some(pid)
    })
}

#[test]
fn a_direct_read_by_a_kernel_thread_or_pid_0_is_refused_and_takes_nothing() {
    let pool = Arc::new(Pool::new(4096));
    assert_eq!(pool.push(&[7u8; 4096]), 4096);
    let fs = fs_on(pool.clone(), Box::new(|_| String::new()));
    let (random, fh) = open_random(&fs);
    let direct_read_by = |pid| {
        let (tx, rx) = mpsc::channel();
        fs.read(
            Read {
                ino: random,
                fh,
                offset: 0,
                size: 64,
                flags: RDONLY,
                pid,
                uid: 0,
                lock_owner: Some(0x5eed),
            },
            Answer(tx),
        );
        rx.recv_timeout(Duration::from_secs(5)).expect("answered")
    };
    assert_eq!(direct_read_by(0), Err(Errno::EIO));
    match a_kernel_thread() {
        Some(kthread) => assert_eq!(direct_read_by(kthread), Err(Errno::EIO), "{kthread}"),
        None => eprintln!("no kernel thread visible here: only pid 0 checked"),
    }
    assert_eq!(pool.served_bytes(), 0);
    assert_eq!(pool.buffered(), 4096);
    // A user thread's direct read is served.
    assert_eq!(direct_read_by(std::process::id()), Ok(vec![7u8; 64]));
    assert_eq!(pool.served_bytes(), 64);
}
