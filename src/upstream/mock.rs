//! In-memory clients for tests of the layers above the network.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::{BLOCK_LEN, Entropy, EntropyClient, FetchError};

/// Serves a deterministic counter stream (so tests can check order and uniqueness), with a
/// scripted queue of answers served first.
#[derive(Default)]
pub struct MockClient {
    next: AtomicU64,
    pub requests: AtomicU64,
    script: Mutex<VecDeque<Step>>,
    pub delay: Mutex<Option<Duration>>,
}

/// One scripted answer: after `delay`, fail with `error`, or deliver the stream's next bytes.
pub struct Step {
    pub delay: Duration,
    pub error: Option<FetchError>,
}

impl Step {
    pub fn ok_after(delay: Duration) -> Step {
        Step { delay, error: None }
    }

    pub fn fail(error: FetchError) -> Step {
        Step {
            delay: Duration::ZERO,
            error: Some(error),
        }
    }
}

impl MockClient {
    pub fn new() -> MockClient {
        MockClient::default()
    }

    /// The next calls fail with these errors, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = FetchError>) {
        self.script
            .lock()
            .extend(errors.into_iter().map(Step::fail));
    }

    /// The next calls answer as these steps say, in the order the calls are made.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.script.lock().extend(steps);
    }

    /// The bytes the mock's stream holds at positions `start..start+len`.
    pub fn expected(start: u64, len: usize) -> Vec<u8> {
        (start..start + len as u64).map(stream_byte).collect()
    }
}

/// A deterministic stream that looks random (splitmix64 of the word index), so it passes the
/// health tests and never repeats a block.
pub fn stream_byte(pos: u64) -> u8 {
    let mut z = (pos / 8).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> ((pos % 8) * 8)) as u8
}

impl EntropyClient for MockClient {
    async fn fetch(&self, kib: u32) -> Result<Entropy, FetchError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let step = self.script.lock().pop_front();
        if let Some(step) = step {
            tokio::time::sleep(step.delay).await;
            if let Some(e) = step.error {
                return Err(e);
            }
        }
        let len = kib as usize * BLOCK_LEN;
        let start = self.next.fetch_add(len as u64, Ordering::SeqCst);
        Ok(Entropy(MockClient::expected(start, len).into()))
    }
}
