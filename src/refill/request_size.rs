//! How much to ask for in one request. Under the rate limit the number of requests, not
//! their size, is what runs out, so a request smaller than the largest useful one wastes a
//! slot; it is made only when a reader is waiting and nothing else is on its way.
use crate::upstream::{BLOCK_LEN, MAX_KIB_PER_REQUEST};

/// Size of the requests made before the first success: the first bytes are readable one
/// short round trip after start, instead of after a 512 KiB body.
pub const FIRST_REQUEST_KIB: u32 = 16;

/// The largest request that is always useful: the API's maximum, or half the buffer (a
/// refill starts when half the buffer is free, so that much always fits then).
pub fn largest_useful_kib(capacity: usize) -> u32 {
    let half = (capacity / 2 / BLOCK_LEN).max(1);
    (half as u32).min(MAX_KIB_PER_REQUEST)
}

/// What the policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    /// Buffer bytes neither filled nor reserved by a request in flight.
    pub free: usize,
    pub capacity: usize,
    /// A reader is waiting for bytes.
    pub reader_waiting: bool,
    pub in_flight: usize,
    /// A request has succeeded since start.
    pub started: bool,
    /// Requests are paced (`--rate-limit`): only then is a request's slot worth more than
    /// its size, so without pacing the buffer is topped up to the last KiB.
    pub paced: bool,
}

/// KiB to request now, or `None` to wait for more room.
pub fn request_kib(n: Need) -> Option<u32> {
    let free_kib = u32::try_from(n.free / BLOCK_LEN).unwrap_or(u32::MAX);
    if free_kib == 0 {
        return None;
    }
    if !n.started {
        return Some(free_kib.min(FIRST_REQUEST_KIB));
    }
    if free_kib >= largest_useful_kib(n.capacity) || !n.paced {
        return Some(free_kib.min(MAX_KIB_PER_REQUEST));
    }
    (n.reader_waiting && n.in_flight == 0).then_some(free_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: usize = 1024;

    fn need(free: usize, capacity: usize) -> Need {
        Need {
            free,
            capacity,
            reader_waiting: false,
            in_flight: 1,
            started: true,
            paced: true,
        }
    }

    #[test]
    fn largest_useful() {
        assert_eq!(largest_useful_kib(4 * K), 2);
        assert_eq!(largest_useful_kib(5 * K), 2);
        assert_eq!(largest_useful_kib(1024 * K), 512);
        assert_eq!(largest_useful_kib(16 << 20), 512);
        assert_eq!(largest_useful_kib(600 * K), 300);
    }

    #[test]
    fn full_requests_or_none() {
        assert_eq!(request_kib(need(1024 * K, 1024 * K)), Some(512));
        assert_eq!(request_kib(need(512 * K, 1024 * K)), Some(512));
        // The 1 MiB case that cost 103 requests per 40 MiB: the rest after one 512 KiB
        // request waits until a whole one fits.
        assert_eq!(request_kib(need(300 * K, 1024 * K)), None);
        assert_eq!(request_kib(need(700 * K, 16 << 20)), Some(512));
        assert_eq!(request_kib(need(4 * K, 4 * K)), Some(4));
        assert_eq!(request_kib(need(1023, 4 * K)), None);
    }

    #[test]
    fn a_partial_request_only_for_a_waiting_reader_with_nothing_in_flight() {
        let mut n = need(300 * K, 1024 * K);
        n.reader_waiting = true;
        assert_eq!(request_kib(n), None, "something is already on its way");
        n.in_flight = 0;
        assert_eq!(request_kib(n), Some(300));
        n.reader_waiting = false;
        assert_eq!(request_kib(n), None);
    }

    #[test]
    fn without_pacing_the_buffer_is_topped_up() {
        let mut n = need(300 * K, 1024 * K);
        n.paced = false;
        assert_eq!(request_kib(n), Some(300));
        n.free = 2048 * K;
        assert_eq!(request_kib(n), Some(512));
    }

    #[test]
    fn first_request_is_small() {
        let mut n = need(1024 * K, 1024 * K);
        n.started = false;
        assert_eq!(request_kib(n), Some(FIRST_REQUEST_KIB));
        n.free = 8 * K;
        assert_eq!(request_kib(n), Some(8));
    }
}
