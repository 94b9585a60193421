//! Fair shares between tenants: the waiting reads of each tenant in FIFO order, served across
//! tenants by deficit round robin on bytes, and the part of the buffer kept for tenants that
//! read recently, so one reading without end cannot empty it for the others.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Tenant, Waiter};

/// Bytes one tenant may take in its turn while other tenants wait: large enough that a
/// 1 MiB reader needs few replies, small enough that a turn is short.
pub const QUANTUM: usize = 64 << 10;

/// A tenant that read within this long counts as active: its reserve is kept for it.
/// Refills under a sliding window can come 10 s apart, so a reader every few seconds stays
/// active across them.
pub const RECENT: Duration = Duration::from_secs(10);

/// The least kept for an active tenant: 128 reads of 32 bytes.
pub const MIN_RESERVE: usize = 4 << 10;

/// A tenant's recent reading counts half after this many seconds: one value per tenant, decayed
/// for all at once, so no tenant's count looks larger for where its window happens to start.
const HALF_LIFE: f64 = 5.0;

/// Reserves are recomputed at most this often: the read path stays a lookup and an add.
const RECOMPUTE: Duration = Duration::from_millis(100);

/// The most tenants whose recent reads are remembered; a newcomer beyond it gets no reserve
/// (it is served fairly while it waits all the same).
const MAX_TRACKED: usize = 4096;

/// The waiting reads, per tenant, and whose turn it is.
#[derive(Default)]
pub struct Queues {
    per_tenant: HashMap<Tenant, VecDeque<Waiter>>,
    /// Tenants with waiting reads; the front has the turn.
    rotation: VecDeque<Tenant>,
    /// What the front tenant may still take in its turn.
    turn_left: usize,
    len: usize,
}

impl Queues {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `tenant` has waiting.
    pub fn waiting_of(&self, tenant: Tenant) -> usize {
        self.per_tenant.get(&tenant).map_or(0, VecDeque::len)
    }

    pub fn push(&mut self, w: Waiter) {
        let tenant = w.req.tenant;
        let q = self.per_tenant.entry(tenant).or_default();
        if q.is_empty() {
            if self.rotation.is_empty() {
                self.turn_left = QUANTUM;
            }
            self.rotation.push_back(tenant);
        }
        q.push_back(w);
        self.len += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = &Waiter> {
        self.per_tenant.values().flatten()
    }

    /// Takes out every waiting read.
    pub fn drain(&mut self) -> Vec<Waiter> {
        self.rotation.clear();
        self.len = 0;
        self.per_tenant
            .drain()
            .flat_map(|(_, q)| q.into_iter())
            .collect()
    }

    /// Takes out the read `id`, if it waits.
    pub fn remove(&mut self, id: u64) -> Option<Waiter> {
        let tenant = self.iter().find(|w| w.id == id)?.req.tenant;
        let q = self.per_tenant.get_mut(&tenant)?;
        let pos = q.iter().position(|w| w.id == id)?;
        let w = q.remove(pos)?;
        self.len -= 1;
        if q.is_empty() {
            self.per_tenant.remove(&tenant);
            self.leave_rotation(tenant);
        }
        Some(w)
    }

    fn leave_rotation(&mut self, tenant: Tenant) {
        if let Some(pos) = self.rotation.iter().position(|t| *t == tenant) {
            self.rotation.remove(pos);
            if pos == 0 {
                self.turn_left = QUANTUM;
            }
        }
    }

    /// Ends the front tenant's turn: it goes to the back of the line.
    fn next_turn(&mut self) {
        self.rotation.rotate_left(1.min(self.rotation.len()));
        self.turn_left = QUANTUM;
    }

    /// Serves waiting reads, tenant by tenant, until none can be served. `avail(tenant)` is
    /// what that tenant may take of the buffer now; `serve(waiter, n)` hands `n` bytes to it.
    /// Reads up to `small` bytes get their full count or wait; larger ones need `small`
    /// bytes and take up to what the turn allows (all of it when no other tenant waits).
    pub fn serve<S>(
        &mut self,
        state: &mut S,
        (small, max_read): (usize, usize),
        avail: impl Fn(&S, Tenant) -> usize,
        mut serve: impl FnMut(&mut S, Waiter, usize),
    ) {
        // Tenants passed over in a row because the buffer holds too little for them.
        let mut stalled = 0;
        while stalled < self.rotation.len() {
            let Some(&tenant) = self.rotation.front() else {
                break;
            };
            let Some(q) = self.per_tenant.get_mut(&tenant) else {
                // Never so: a tenant is in the rotation while it has reads waiting.
                self.rotation.pop_front();
                continue;
            };
            let Some(len) = q.front().map(|w| w.req.len) else {
                self.per_tenant.remove(&tenant);
                self.rotation.pop_front();
                continue;
            };
            let room = avail(state, tenant);
            let need = len.min(small);
            if room < need {
                self.next_turn();
                stalled += 1;
                continue;
            }
            let turn = if self.rotation.len() > 1 {
                self.turn_left
            } else {
                usize::MAX
            };
            // A small read takes its full count even past the turn's end (the overshoot is
            // at most `small` bytes per turn).
            let n = if len <= small {
                len
            } else {
                len.min(room).min(max_read).min(turn.max(need))
            };
            let Some(w) = q.pop_front() else {
                continue;
            };
            self.len -= 1;
            stalled = 0;
            self.turn_left = self.turn_left.saturating_sub(n);
            serve(state, w, n);
            if q.is_empty() {
                self.per_tenant.remove(&tenant);
                self.rotation.pop_front();
                self.turn_left = QUANTUM;
            } else if self.turn_left == 0 {
                self.next_turn();
            }
        }
    }

    /// When the read waiting longest started to wait.
    pub fn oldest(&self) -> Option<Instant> {
        self.per_tenant
            .values()
            .filter_map(|q| q.front().map(|w| w.since))
            .min()
    }
}

/// What one tenant read lately.
struct Recent {
    /// Its last read (arrival, not service: a waiting tenant is active).
    last: Instant,
    /// Bytes served since the reserves were last computed.
    current: u64,
    /// What it read lately: bytes served, halved every [`HALF_LIFE`] seconds.
    demand: f64,
    /// What the buffer keeps for it now.
    reserve: usize,
    /// What it must leave in the buffer: the reserves of the tenants that read less.
    floor: usize,
}

/// The recently active tenants and what the buffer keeps for each.
#[derive(Default)]
pub struct Shares {
    recent: HashMap<Tenant, Recent>,
    /// The sum of every active tenant's reserve.
    total: usize,
    computed_at: Option<Instant>,
    /// When the demands were last decayed.
    decayed_at: Option<Instant>,
}

impl Shares {
    /// Notes that `tenant` asked to read at `now`. Returns true when the reserves changed.
    pub fn arrived(&mut self, tenant: Tenant, now: Instant, capacity: usize) -> bool {
        let tracked = self.recent.len();
        match self.recent.get_mut(&tenant) {
            Some(r) => r.last = now,
            None if tracked < MAX_TRACKED => {
                self.recent.insert(
                    tenant,
                    Recent {
                        last: now,
                        current: 0,
                        demand: 0.0,
                        reserve: 0,
                        floor: 0,
                    },
                );
                // A newcomer gets its reserve now, not 100 ms later.
                self.computed_at = None;
            }
            None => {}
        }
        self.maybe_recompute(now, capacity)
    }

    /// Counts `n` bytes served to `tenant`.
    pub fn served(&mut self, tenant: Tenant, n: usize) {
        if let Some(r) = self.recent.get_mut(&tenant) {
            r.current = r.current.saturating_add(n as u64);
        }
    }

    /// What `tenant` may take of `buffered` bytes: all but the reserves of the active tenants
    /// that read clearly less than it lately. A heavy reader leaves something for every light
    /// one, the lightest may take it all, and readers alike share by turns while they wait.
    pub fn available(&self, tenant: Tenant, buffered: usize) -> usize {
        let floor = self.recent.get(&tenant).map_or(self.total, |r| r.floor);
        buffered.saturating_sub(floor)
    }

    /// The sum of every active tenant's reserve: with this much more than a read needs, any
    /// tenant's read is served.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Recomputes the reserves if they are older than [`RECOMPUTE`]; true if they changed.
    /// Each active tenant keeps what it read lately (see [`HALF_LIFE`]), at least
    /// [`MIN_RESERVE`], and together never more than a quarter of the buffer: the refill
    /// worker asks for more below half, so a reserve can never hold a waiting read up for
    /// want of a refill.
    pub fn maybe_recompute(&mut self, now: Instant, capacity: usize) -> bool {
        if self
            .computed_at
            .is_some_and(|t| now.saturating_duration_since(t) < RECOMPUTE)
        {
            return false;
        }
        self.computed_at = Some(now);
        self.recent
            .retain(|_, r| now.saturating_duration_since(r.last) < 2 * RECENT);
        let dt = self
            .decayed_at
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.decayed_at = Some(now);
        let keep = 0.5f64.powf(dt / HALF_LIFE);
        let mut active = 0;
        for r in self.recent.values_mut() {
            r.demand = r.demand * keep + r.current as f64;
            r.current = 0;
            if now.saturating_duration_since(r.last) < RECENT {
                active += 1;
            }
        }
        let share = capacity / 4 / active.max(1);
        let mut total = 0;
        let mut by_demand: Vec<(u64, &mut Recent)> = Vec::with_capacity(self.recent.len());
        for r in self.recent.values_mut() {
            // Whole bytes: tenants that read alike (newcomers: nothing) share a tier.
            let demand = r.demand as u64;
            r.reserve = if now.saturating_duration_since(r.last) < RECENT {
                usize::try_from(demand)
                    .unwrap_or(usize::MAX)
                    .max(MIN_RESERVE)
                    .min(share)
            } else {
                0
            };
            total += r.reserve;
            by_demand.push((demand, r));
        }
        // Each tenant's floor: the reserves of those that read clearly less than it (below
        // 4/5 of its count). Readers alike keep nothing from one another (they share by
        // turns), so their shares do not swing with who is ahead by a little.
        by_demand.sort_unstable_by_key(|(d, _)| *d);
        let demands: Vec<u64> = by_demand.iter().map(|(d, _)| *d).collect();
        let mut below = Vec::with_capacity(by_demand.len() + 1);
        below.push(0usize);
        for (_, r) in &by_demand {
            below.push(below[below.len() - 1] + r.reserve);
        }
        let mut changed = total != self.total;
        for (demand, r) in by_demand {
            let lighter =
                demands.partition_point(|d| d.saturating_mul(5) < demand.saturating_mul(4));
            let floor = below[lighter];
            changed |= r.floor != floor;
            r.floor = floor;
        }
        self.total = total;
        changed
    }
}
