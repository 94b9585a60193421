//! Tests of the pool: each byte to one reader, FIFO order, wiping and memory locking.
use std::sync::Arc;

use parking_lot::Mutex;

use super::*;

type Log = Arc<Mutex<Vec<(usize, Result<Vec<u8>, ReadError>)>>>;

struct Sink(usize, Log);

impl ReadSink for Sink {
    fn deliver(self, data: &[u8]) {
        self.1.lock().push((self.0, Ok(data.to_vec())));
    }
    fn fail(self, err: ReadError) {
        self.1.lock().push((self.0, Err(err)));
    }
}

fn req(len: usize) -> ReadRequest {
    ReadRequest {
        len,
        nonblocking: false,
        pid: 0,
        tenant: crate::pool::Tenant::uid(0),
        deadline: None,
    }
}

fn seq(start: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| start.wrapping_add(i as u8)).collect()
}

#[test]
fn small_reads_wait_for_full_count_in_fifo_order() {
    let pool = Pool::new(4096);
    let log: Log = Default::default();
    pool.read(req(32), Sink(1, log.clone()));
    pool.read(req(16), Sink(2, log.clone()));
    pool.push(&seq(0, 20));
    assert!(log.lock().is_empty(), "32-byte read must not be short");
    pool.push(&seq(20, 40));
    let got = log.lock().clone();
    assert_eq!(got, vec![(1, Ok(seq(0, 32))), (2, Ok(seq(32, 16)))]);
    assert_eq!(pool.buffered(), 12);
    assert_eq!(pool.served_bytes(), 48);
}

#[test]
fn large_read_takes_what_is_there_once_256_are() {
    let pool = Pool::new(8192);
    let log: Log = Default::default();
    pool.read(req(4096), Sink(1, log.clone()));
    pool.push(&seq(0, 255));
    assert!(log.lock().is_empty());
    pool.push(&seq(255, 45));
    assert_eq!(log.lock().clone(), vec![(1, Ok(seq(0, 300)))]);
}

#[test]
fn new_reads_queue_behind_waiters() {
    let pool = Pool::new(4096);
    let log: Log = Default::default();
    pool.read(req(100), Sink(1, log.clone()));
    pool.push(&seq(0, 50));
    // 10 bytes could be served, but the earlier read comes first.
    pool.read(req(10), Sink(2, log.clone()));
    assert!(log.lock().is_empty());
    let mut nb = req(10);
    nb.nonblocking = true;
    pool.read(nb, Sink(3, log.clone()));
    assert_eq!(log.lock().clone(), vec![(3, Err(ReadError::WouldBlock))]);
    pool.push(&seq(50, 60));
    let got = log.lock().clone();
    assert_eq!(got[1], (1, Ok(seq(0, 100))));
    assert_eq!(got[2], (2, Ok(seq(100, 10))));
}

#[test]
fn unavailable_fails_waiters_but_serves_buffered() {
    let pool = Pool::new(4096);
    let log: Log = Default::default();
    pool.push(&seq(0, 40));
    pool.read(req(64), Sink(1, log.clone()));
    pool.set_unavailable(true);
    pool.read(req(16), Sink(2, log.clone()));
    pool.read(req(64), Sink(3, log.clone()));
    let got = log.lock().clone();
    assert_eq!(
        got,
        vec![
            (1, Err(ReadError::Unavailable)),
            (2, Ok(seq(0, 16))),
            (3, Err(ReadError::Unavailable))
        ]
    );
    assert!(pool.poll(0, None).error);
}

#[test]
fn cancel_unblocks_the_next_in_line() {
    let pool = Pool::new(4096);
    let log: Log = Default::default();
    pool.read(req(200), Sink(1, log.clone()));
    pool.read(req(8), Sink(2, log.clone()));
    pool.push(&seq(0, 10));
    let w = pool.waiting_reads();
    assert_eq!(w.len(), 2);
    pool.cancel(w[0].id, ReadError::Interrupted);
    assert_eq!(
        log.lock().clone(),
        vec![(1, Err(ReadError::Interrupted)), (2, Ok(seq(0, 8)))]
    );
}

#[test]
fn shutdown_fails_waiters_and_wipes() {
    let pool = Pool::new(4096);
    let log: Log = Default::default();
    pool.push(&seq(0, 10));
    pool.read(req(64), Sink(1, log.clone()));
    pool.shutdown();
    pool.read(req(1), Sink(2, log.clone()));
    assert_eq!(pool.buffered(), 0);
    assert_eq!(
        log.lock().clone(),
        vec![
            (1, Err(ReadError::ShuttingDown)),
            (2, Err(ReadError::ShuttingDown))
        ]
    );
    assert_eq!(pool.push(&[1, 2, 3]), 0);
}

#[test]
fn poll_wakes_when_readable() {
    let pool = Pool::new(4096);
    let woke = Arc::new(Mutex::new(0));
    let w2 = woke.clone();
    let r = pool.poll(1, Some(Box::new(move || *w2.lock() += 1)));
    assert!(!r.readable && !r.error);
    pool.push(&seq(0, 100));
    assert_eq!(
        *woke.lock(),
        0,
        "100 bytes: a 256-byte read would still wait"
    );
    pool.push(&seq(100, 156));
    assert_eq!(*woke.lock(), 1);
    assert!(pool.poll(0, None).readable);
}

#[test]
fn a_file_polling_in_a_loop_keeps_one_waker() {
    let pool = Pool::new(4096);
    let woke = Arc::new(Mutex::new(0));
    for _ in 0..1000 {
        let w = woke.clone();
        pool.poll(7, Some(Box::new(move || *w.lock() += 1)));
    }
    let w = woke.clone();
    pool.poll(8, Some(Box::new(move || *w.lock() += 1)));
    assert_eq!(pool.pollers(), 2);
    pool.forget_poller(8);
    assert_eq!(pool.pollers(), 1);
    pool.push(&seq(0, 256));
    assert_eq!(*woke.lock(), 1, "the newest waker of file 7, once");
    assert_eq!(pool.pollers(), 0);
}

/// Pages of `[ptr, ptr + len)` that are resident, by mincore(2).
fn resident_pages(ptr: *const u8, len: usize) -> (usize, usize) {
    let (start, end) = ring::pages_covering(ptr, len);
    let mut vec = vec![0u8; (end - start) / crate::sys::page_size()];
    // SAFETY: a mapped range (the pool's buffer, rounded out to its pages) and a vector with
    // one byte per page; nix has no mincore.
    let r = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    (vec.iter().filter(|&&b| b & 1 == 1).count(), vec.len())
}

#[test]
fn memory_is_locked_and_faulted_in_as_the_buffer_fills() {
    let pool = Pool::new(8 << 20);
    let (ptr, len) = pool.inner.lock().ring.raw_range();
    let (first, pages) = resident_pages(ptr, len);
    let chunk_pages = ring::LOCK_CHUNK / crate::sys::page_size();
    // At start only a first 128 KiB (32 pages, plus the partial pages at either end).
    assert!(first <= 34, "{first} of {pages} resident at start");
    assert!(pool.memory_locked(), "running as root with CAP_IPC_LOCK");
    // The ring's own count (the pool's also holds its fixed 1 MiB scratch buffer).
    let ring_locked = |pool: &Pool| pool.inner.lock().ring.locked_bytes();
    let at_start = ring_locked(&pool);
    assert!(
        (128 << 10..=(128 << 10) + 4096).contains(&at_start),
        "{at_start}"
    );
    // 3.5 MiB in: four chunks locked, the rest untouched.
    pool.push(&seq(0, 3 * (1 << 20) + (1 << 19)));
    let locked = ring_locked(&pool);
    assert!((4 << 20..=(4 << 20) + 8192).contains(&locked), "{locked}");
    let (resident, _) = resident_pages(ptr, len);
    assert!(resident <= 4 * chunk_pages + 2, "{resident} resident");
    // Ahead of the writer: a request for 1 MiB more locks the chunk it will land in.
    pool.prepare(1 << 20);
    assert!(ring_locked(&pool) >= 5 << 20);
    assert!(
        pool.locked_bytes() >= (5 << 20) + MAX_READ,
        "the scratch buffer counts too"
    );
    let log: Log = Default::default();
    pool.read(req(1000), Sink(1, log.clone()));
    assert_eq!(log.lock().clone(), vec![(1, Ok(seq(0, 1000)))]);
}

/// The largest read the pool serves wraps the ring's end: it is gathered in the scratch buffer
/// allocated (and locked) up front, which neither moves nor keeps a byte of it afterwards.
#[test]
fn a_wrapped_max_read_is_gathered_in_place_and_wiped() {
    let pool = Pool::new(2 * MAX_READ);
    let (ptr, len) = {
        let g = pool.inner.lock();
        (g.scratch.as_ptr(), g.scratch.len())
    };
    assert_eq!(len, MAX_READ);
    let log: Log = Default::default();
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 251) as u8 + 1).collect() };
    pool.push(&pattern(2 * MAX_READ));
    pool.read(req(MAX_READ + 100), Sink(1, log.clone()));
    pool.read(req(1000), Sink(2, log.clone()));
    pool.push(&pattern(MAX_READ));
    // MAX_READ - 1000 bytes left at the ring's end, the rest at its start: this read wraps.
    pool.read(req(2 * MAX_READ), Sink(3, log.clone()));
    let got = log.lock().clone();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0].1.as_ref().map(Vec::len),
        Ok(MAX_READ),
        "capped at MAX_READ"
    );
    let mut want = pattern(2 * MAX_READ)[MAX_READ + 1000..].to_vec();
    want.extend_from_slice(&pattern(1000));
    assert_eq!(got[2].1.as_ref().map(Vec::len), Ok(MAX_READ));
    assert!(got[2].1 == Ok(want), "the wrapped read's bytes, in order");
    let g = pool.inner.lock();
    assert_eq!(
        (g.scratch.as_ptr(), g.scratch.len()),
        (ptr, len),
        "scratch never moves"
    );
    assert!(
        g.scratch.iter().all(|&b| b == 0),
        "scratch wiped after delivery"
    );
}

#[test]
fn scratch_is_no_larger_than_a_small_pool() {
    let pool = Pool::new(4096);
    assert_eq!(pool.inner.lock().scratch.len(), 4096);
}

#[test]
fn a_tenant_may_have_only_so_many_reads_waiting() {
    let pool = Pool::new(4096);
    pool.set_max_waiters(2);
    let log: Log = Arc::default();
    let of = |uid, n| ReadRequest {
        tenant: Tenant::uid(uid),
        ..req(n)
    };
    pool.read(of(1000, 32), Sink(0, log.clone()));
    pool.read(of(1000, 32), Sink(1, log.clone()));
    // The third of uid 1000 is refused at once; another uid still waits.
    pool.read(of(1000, 32), Sink(2, log.clone()));
    pool.read(of(1001, 32), Sink(3, log.clone()));
    assert_eq!(*log.lock(), vec![(2, Err(ReadError::TooManyWaiters))]);
    assert_eq!(pool.refused_waiters(), 1);
    assert_eq!(pool.waiting_reads().len(), 3);
    // Whatever way a wait ends, its place is free again.
    let first = pool.waiting_reads()[0].id;
    pool.cancel(first, ReadError::Interrupted);
    pool.read(of(1000, 32), Sink(4, log.clone()));
    pool.push(&seq(0, 32));
    pool.read(of(1000, 32), Sink(5, log.clone()));
    assert_eq!(pool.waiting_reads().len(), 3, "{:?}", log.lock());
    assert_eq!(pool.refused_waiters(), 1);
    // 0: no limit.
    pool.set_max_waiters(0);
    for i in 6..10 {
        pool.read(of(1000, 32), Sink(i, log.clone()));
    }
    assert_eq!(pool.waiting_reads().len(), 7);
}

mod fair {
    use super::*;

    fn of(tenant: u32, len: usize) -> ReadRequest {
        ReadRequest {
            tenant: Tenant::uid(tenant),
            ..req(len)
        }
    }

    fn nonblocking(tenant: u32, len: usize) -> ReadRequest {
        ReadRequest {
            nonblocking: true,
            ..of(tenant, len)
        }
    }

    #[test]
    fn a_small_read_is_not_held_behind_another_tenants_large_one() {
        let pool = Pool::new(1 << 20);
        let log: Log = Default::default();
        pool.read(of(1, 1 << 20), Sink(1, log.clone()));
        pool.read(of(2, 32), Sink(2, log.clone()));
        pool.push(&seq(0, 100));
        // Tenant 2's read is served; tenant 1's needs 256 and waits.
        assert_eq!(log.lock().clone(), vec![(2, Ok(seq(0, 32)))]);
        // A newcomer's small read passes the waiting large one too.
        pool.read(of(3, 16), Sink(3, log.clone()));
        assert_eq!(log.lock().last().cloned(), Some((3, Ok(seq(32, 16)))));
        // Within one tenant, FIFO: tenant 1's second read waits behind its first.
        pool.read(of(1, 8), Sink(4, log.clone()));
        assert_eq!(log.lock().len(), 2);
        pool.push(&seq(100, 300));
        assert_eq!(log.lock().last().cloned(), Some((1, Ok(seq(48, 352)))));
        pool.push(&seq(0, 8));
        assert_eq!(log.lock().last().cloned(), Some((4, Ok(seq(0, 8)))));
        assert_eq!(pool.counts().2, 0);
    }

    #[test]
    fn waiting_tenants_share_a_refill_by_turns() {
        let pool = Pool::new(4 << 20);
        let log: Log = Default::default();
        for t in 1..=3 {
            pool.read(of(t, 1 << 20), Sink(t as usize, log.clone()));
        }
        pool.push(&vec![7; 3 * QUANTUM_FOR_TEST]);
        let got = log.lock().clone();
        let sizes: Vec<(usize, usize)> = got
            .iter()
            .map(|(id, r)| (*id, r.as_ref().map_or(0, Vec::len)))
            .collect();
        // Each waiting tenant gets a turn; none takes the whole refill.
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        for (_, n) in &sizes {
            assert!(*n >= 256 && *n <= 2 * QUANTUM_FOR_TEST, "{sizes:?}");
        }
        assert_eq!(sizes[0].1, crate::pool::fair::QUANTUM, "{sizes:?}");
    }

    const QUANTUM_FOR_TEST: usize = crate::pool::fair::QUANTUM;

    #[test]
    fn an_endless_reader_leaves_a_recent_readers_reserve() {
        let pool = Pool::new(1 << 20);
        let log: Log = Default::default();
        // Tenant 2 read a little a moment ago.
        pool.push(&seq(0, 64));
        pool.read(of(2, 32), Sink(0, log.clone()));
        // Tenant 1 reads 1 MiB at a time for as long as it gets anything.
        let endless = || {
            let mut got = 0;
            for i in 0..100 {
                let l: Log = Default::default();
                pool.read(nonblocking(1, 1 << 20), Sink(i, l.clone()));
                match l.lock().pop() {
                    Some((_, Ok(b))) => got += b.len(),
                    _ => break,
                }
            }
            got
        };
        pool.push(&vec![1; 512 << 10]);
        // A newcomer has read nothing yet: it may take everything once.
        assert_eq!(endless(), (512 << 10) + 32);
        // Once the shares are looked at again, it has read the most: it leaves a reserve.
        std::thread::sleep(std::time::Duration::from_millis(150));
        pool.push(&vec![1; 512 << 10]);
        let got = endless();
        assert!(got > 400 << 10, "it got most: {got}");
        let left = pool.buffered();
        assert!(left >= crate::pool::fair::MIN_RESERVE, "{left} kept");
        // Tenant 2's small reads are served at once from what was kept.
        for i in 0..100 {
            pool.read(nonblocking(2, 32), Sink(100 + i, log.clone()));
        }
        let ok = log.lock().iter().filter(|(_, r)| r.is_ok()).count();
        assert_eq!(ok, 101);
    }

    #[test]
    fn the_wait_cap_is_per_tenant() {
        let pool = Pool::new(4096);
        pool.set_max_waiters(1);
        let log: Log = Default::default();
        pool.read(of(1, 32), Sink(1, log.clone()));
        pool.read(of(1, 32), Sink(2, log.clone()));
        pool.read(of(2, 32), Sink(3, log.clone()));
        assert_eq!(
            log.lock().clone(),
            vec![(2, Err(ReadError::TooManyWaiters))]
        );
        assert_eq!(pool.counts().2, 2);
        // Cancelling one leaves the other tenant's in place.
        let ids: Vec<u64> = pool.waiting_reads().iter().map(|w| w.id).collect();
        pool.cancel(ids[0], ReadError::Interrupted);
        assert_eq!(pool.counts().2, 1);
    }
}
