//! What the emulator answered: counters, optional records of every response's blocks, the
//! recent good blocks that `RepeatBlock` copies, and gauges of concurrency.
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::Fault;

/// Good blocks remembered for `RepeatBlock`.
const RECENT_BLOCKS: usize = 16;
/// Blocks kept for `old_block`: one per 64 KiB of correct bytes, 1 GiB of history in 16 MiB.
const OLD_BLOCKS: usize = 16384;
/// The newest correct bytes kept for `old_window`.
const OLD_STREAM: usize = 8 << 20;
pub(super) const BLOCK: usize = qrypt_api::BLOCK_LEN;

/// One answer to a request on the API (admin requests are not recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// Status sent; 0 when the connection was dropped without a response.
    pub status: u16,
    /// KiB asked for (0 when refused before the size was read, or not a valid size).
    pub kib: u32,
    /// The fault applied ([`Fault::name`]); `None` for a correct response.
    pub fault: Option<String>,
    /// The decoded bytes of every block put in the body, in order. For a faulty body, what
    /// could be decoded of it: a short block is short, a corrupted block is recorded as it was
    /// before corruption, a body cut short records all blocks of the whole body.
    pub blocks: Vec<u8>,
    pub at: Instant,
    /// The request's headers, names in lower case, in order; `authorization` left out (the
    /// emulator checks it, and keeps no copy of a credential).
    pub request_headers: Vec<(String, String)>,
}

/// Counters since start. Requests under `/_emulator/` are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Requests received on the API (any path but the admin one).
    pub total_requests: u64,
    /// Answers per status code; 0 counts connections dropped without a response.
    pub by_status: BTreeMap<u16, u64>,
    /// Entropy bytes in correct 200 responses.
    pub good_bytes: u64,
    /// API requests being answered now (until their body is sent or abandoned).
    pub in_flight: u64,
    pub max_in_flight: u64,
    /// Connections open now (admin ones included).
    pub connections: u64,
    pub max_connections: u64,
}

impl Stats {
    /// How many answers had `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

pub(super) struct Ledger {
    record: bool,
    seq: u64,
    total_requests: u64,
    by_status: BTreeMap<u16, u64>,
    good_bytes: u64,
    records: Vec<ResponseRecord>,
    recent: VecDeque<Vec<u8>>,
    /// One block per 64 KiB of correct bytes: the count of correct bytes before it, the
    /// block, and whether `old_block` has replayed it.
    old: VecDeque<(u64, Vec<u8>, bool)>,
    /// The newest correct bytes, in the order sent (up to [`OLD_STREAM`]).
    stream: VecDeque<u8>,
    /// Headers of requests not answered yet (only when recording).
    pending_headers: BTreeMap<u64, Vec<(String, String)>>,
}

impl Ledger {
    pub fn new(record: bool) -> Ledger {
        Ledger {
            record,
            seq: 0,
            total_requests: 0,
            by_status: BTreeMap::new(),
            good_bytes: 0,
            records: Vec::new(),
            recent: VecDeque::new(),
            old: VecDeque::new(),
            stream: VecDeque::new(),
            pending_headers: BTreeMap::new(),
        }
    }

    /// Counts a request and gives its sequence number.
    pub fn arrive(&mut self, headers: &hyper::HeaderMap) -> u64 {
        self.total_requests += 1;
        self.seq += 1;
        if self.record {
            let kept = headers
                .iter()
                .filter(|(name, _)| *name != hyper::header::AUTHORIZATION)
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            self.pending_headers.insert(self.seq, kept);
        }
        self.seq
    }

    /// Counts an answer; `blocks` is the decoded body (moved, not copied, into the record).
    pub fn answer(
        &mut self,
        seq: u64,
        status: u16,
        kib: u32,
        fault: Option<&Fault>,
        blocks: Vec<u8>,
    ) {
        tracing::debug!(
            "emulator: #{seq} -> {status} ({kib} KiB, fault: {})",
            fault.map_or("none", Fault::name)
        );
        *self.by_status.entry(status).or_default() += 1;
        if status == 200 && fault.is_none() {
            let before = self.good_bytes;
            self.good_bytes += blocks.len() as u64;
            if before == 0 || before >> 16 != self.good_bytes >> 16 {
                if let Some(first) = blocks.get(..BLOCK) {
                    self.old.push_back((before, first.to_vec(), false));
                }
                while self.old.len() > OLD_BLOCKS {
                    self.old.pop_front();
                }
            }
            self.stream.extend(&blocks);
            let over = self.stream.len().saturating_sub(OLD_STREAM);
            self.stream.drain(..over);
            let skip = (blocks.len() / BLOCK).saturating_sub(RECENT_BLOCKS);
            self.recent
                .extend(blocks.chunks_exact(BLOCK).skip(skip).map(<[u8]>::to_vec));
            while self.recent.len() > RECENT_BLOCKS {
                self.recent.pop_front();
            }
        }
        if self.record {
            self.records.push(ResponseRecord {
                seq,
                status,
                kib,
                fault: fault.map(|f| f.name().to_owned()),
                blocks,
                at: Instant::now(),
                request_headers: self.pending_headers.remove(&seq).unwrap_or_default(),
            });
        }
    }

    /// The newest block of an earlier correct response.
    pub fn recent_block(&self) -> Option<Vec<u8>> {
        self.recent.back().cloned()
    }

    /// The recent blocks of earlier correct responses, oldest first.
    pub fn recent_bytes(&self) -> Vec<u8> {
        self.recent.iter().flatten().copied().collect()
    }

    /// The newest kept block, not replayed yet, sent at least `age_mib` MiB of correct bytes
    /// ago, marked replayed.
    pub fn take_old_block(&mut self, age_mib: u64) -> Option<Vec<u8>> {
        let newest = self
            .good_bytes
            .saturating_sub(age_mib.saturating_mul(1 << 20))
            .saturating_sub(BLOCK as u64);
        let (_, block, used) = self
            .old
            .iter_mut()
            .rev()
            .find(|(at, _, used)| *at <= newest && !*used)?;
        *used = true;
        Some(block.clone())
    }

    /// Up to `len` correct bytes from `age_kib` KiB minus `shift` bytes before the newest
    /// one; `None` if fewer are kept.
    pub fn old_window(&self, age_kib: u64, shift: u64, len: usize) -> Option<Vec<u8>> {
        let back = usize::try_from(age_kib.checked_mul(1024)?.checked_sub(shift)?).ok()?;
        let start = self.stream.len().checked_sub(back)?;
        let end = self.stream.len().min(start + len);
        Some(self.stream.range(start..end).copied().collect())
    }

    pub fn has_recent(&self) -> bool {
        !self.recent.is_empty()
    }

    pub fn records(&self) -> Vec<ResponseRecord> {
        self.records.clone()
    }

    pub fn reset_records(&mut self) {
        self.records.clear();
    }

    pub fn stats(&self) -> Stats {
        Stats {
            total_requests: self.total_requests,
            by_status: self.by_status.clone(),
            good_bytes: self.good_bytes,
            ..Stats::default()
        }
    }
}

/// A count of things open now and the most ever open at once.
#[derive(Debug, Default)]
pub(super) struct Gauge {
    now: AtomicU64,
    max: AtomicU64,
}

impl Gauge {
    /// Counts one more until the guard drops.
    pub fn enter(self: &Arc<Self>) -> GaugeGuard {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }

    pub fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub(super) struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_window_repeats_earlier_correct_bytes_at_a_shift() {
        let mut l = Ledger::new(false);
        let first: Vec<u8> = (0..4 * BLOCK).map(|i| (i * 7 % 251) as u8).collect();
        l.answer(1, 200, 4, None, first.clone());
        // A faulty answer is not correct bytes: never repeated.
        l.answer(2, 200, 1, Some(&Fault::AllZeroBlocks), vec![0; BLOCK]);
        assert_eq!(l.old_window(5, 0, BLOCK), None, "older than what was sent");
        assert_eq!(
            l.old_window(4, 3, 2 * BLOCK).as_deref(),
            Some(&first[3..3 + 2 * BLOCK])
        );
        // Runs out at the newest correct byte.
        assert_eq!(
            l.old_window(1, 0, 4 * BLOCK).as_deref(),
            Some(&first[3 * BLOCK..])
        );
    }
}
