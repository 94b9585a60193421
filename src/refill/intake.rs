//! What an answer must pass before its bytes enter the pool: the health tests, then (with
//! `--mix-local`) the XOR with the local CSPRNG.
use zeroize::Zeroizing;

use crate::refill::health::journal::{Journal, Place};
use crate::refill::health::{HealthTests, Precheck, Prechecked};
use crate::state_machine::Outcome;
use crate::upstream::buffers::Buffer;
use crate::upstream::{Entropy, FetchError};

/// Why a finished request put nothing in the pool.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// `--mix-local` could not get the local bytes to mix in: without the hedge the user asked
    /// for, serve nothing rather than less. A local failure, not the upstream's.
    #[error("local RNG for --mix-local: {0}")]
    LocalRng(getrandom::Error),
}

impl Refused {
    /// Short class name for counters and logs.
    pub fn class(&self) -> String {
        match self {
            Refused::Fetch(e) => e.class(),
            Refused::LocalRng(_) => "local_rng".into(),
        }
    }

    /// What it tells the state machine.
    pub fn outcome(&self) -> Outcome {
        match self {
            Refused::Fetch(e) => Outcome::from(e),
            Refused::LocalRng(_) => Outcome::Failed,
        }
    }
}

pub struct Intake {
    health: HealthTests,
    mix_local: bool,
}

impl Intake {
    /// `history`: where the replay history is kept across restarts (`None`: in memory only).
    /// A place that cannot be used is logged and the history kept in memory: a weaker
    /// promise, never a failed start.
    pub fn new(mix_local: bool, history: Option<Place>) -> Intake {
        let health = match history.map(|p| (p.dir.clone(), Journal::open(p))) {
            None => HealthTests::new(),
            Some((_, Ok((journal, key)))) => HealthTests::persistent(journal, &key),
            Some((dir, Err(e))) => {
                tracing::warn!(
                    "replay history kept in memory only, not in {}: {e}. After a restart, \
                     bytes served before it are not recognised if the upstream sends them again",
                    dir.display()
                );
                HealthTests::new()
            }
        };
        Intake { health, mix_local }
    }

    /// Upstream bytes the replay history covers now, and whether it is kept on disk.
    pub fn history(&self) -> (u64, bool) {
        (self.health.history_bytes(), self.health.history_saved())
    }

    /// What a request's task runs on its answer before it comes back (see [`Precheck`]).
    pub fn precheck(&self) -> Precheck {
        self.health.precheck()
    }

    /// The bytes of an answer that passed, mixed if asked for; or why there are none, and how
    /// many bytes were thrown away.
    #[cfg(test)]
    pub fn accept(
        &mut self,
        result: Result<Entropy, FetchError>,
    ) -> Result<Buffer, (Refused, usize)> {
        self.accept_prechecked(result, None)
    }

    /// [`Intake::accept`] for an answer whose task ran the [`Precheck`] already (`pre`;
    /// `None`: run it here).
    pub fn accept_prechecked(
        &mut self,
        result: Result<Entropy, FetchError>,
        pre: Option<Result<Prechecked, crate::refill::health::HealthFailure>>,
    ) -> Result<Buffer, (Refused, usize)> {
        let entropy = result.map_err(|e| (e.into(), 0))?;
        let len = entropy.bytes().len();
        let health = match pre {
            Some(pre) => self.health.commit(entropy.bytes(), pre),
            None => self.health.check(entropy.bytes()),
        };
        if let Err(h) = health {
            return Err((FetchError::Health(h.to_string()).into(), len));
        }
        let mut bytes = entropy.0;
        if self.mix_local {
            let mut local = Zeroizing::new(vec![0u8; len]);
            getrandom::getrandom(&mut local).map_err(|e| (Refused::LocalRng(e), len))?;
            bytes
                .iter_mut()
                .zip(local.iter())
                .for_each(|(b, l)| *b ^= l);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::mock::MockClient;

    #[test]
    fn mixing_changes_every_answer_and_a_failed_health_test_discards_it() {
        let good = || Entropy(MockClient::expected(0, 4096).into());
        let plain = Intake::new(false, None).accept(Ok(good())).expect("passes");
        assert_eq!(*plain, MockClient::expected(0, 4096));
        let mixed = Intake::new(true, None).accept(Ok(good())).expect("passes");
        assert_eq!(mixed.len(), 4096);
        assert_ne!(*mixed, *plain);
        let (refused, discarded) = Intake::new(false, None)
            .accept(Ok(Entropy(vec![0; 1024].into())))
            .expect_err("all zeros");
        assert_eq!((refused.class().as_str(), discarded), ("health", 1024));
        assert_eq!(refused.outcome(), Outcome::Failed);
        let (refused, discarded) = Intake::new(false, None)
            .accept(Err(FetchError::Status {
                code: 503,
                retry_after: None,
            }))
            .expect_err("no answer");
        assert_eq!((refused.class().as_str(), discarded), ("http_503", 0));
    }
}
