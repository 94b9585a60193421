//! What the log says about an outage: each failure with what was decided, throttled so a long
//! outage does not flood the log, and one line when the upstream recovers.
use std::collections::BTreeMap;
use std::path::Path;

use tracing::{info, warn};

use crate::state_machine::Decision;

/// Logs each failure class the first time it occurs in an outage, then at its 10th, 100th, ...
/// occurrence, so a long outage (even one alternating between classes) does not flood the log.
#[derive(Default)]
pub struct OutageLog {
    repeats: BTreeMap<String, u64>,
}

impl OutageLog {
    fn should_log(&mut self, class: &str) -> Option<u64> {
        let r = self.repeats.entry(class.to_owned()).or_default();
        *r += 1;
        let r = *r;
        // A 1 and then only zeros (trimming every leading 1 would also log the 11th, 110th...).
        r.to_string()
            .strip_prefix('1')
            .is_some_and(|zeros| zeros.bytes().all(|b| b == b'0'))
            .then_some(r)
    }

    /// A failure of `class` and what was decided about it; `token_file`: where a new token
    /// would come from, for the advice after a 401.
    pub fn failure(
        &mut self,
        class: &str,
        message: &str,
        decision: Decision,
        token_file: Option<&Path>,
    ) {
        let Some(n) = self.should_log(class) else {
            return;
        };
        let action = explain(decision, token_file);
        if n == 1 {
            warn!("upstream failure ({class}): {message}; {action}");
        } else {
            warn!("upstream failure ({class}) repeated {n} times: {message}; {action}");
        }
    }

    /// A success that ended an outage: summarises its failures by class, and forgets them.
    pub fn recovered(&mut self) {
        let summary = std::mem::take(&mut self.repeats)
            .into_iter()
            .map(|(class, n)| format!("{class}={n}"))
            .collect::<Vec<_>>();
        if !summary.is_empty() {
            info!("upstream recovered after failures ({})", summary.join(" "));
        }
    }
}

/// A stop state's reason and what ends it, for `last_error` (None: not a stop, it retries).
pub(super) fn stop(decision: Decision, token_file: Option<&Path>) -> Option<(String, String)> {
    match decision {
        Decision::StopBadRequest => Some((
            "request refused (HTTP 400): stopped requesting".into(),
            "--endpoint and the configuration are fixed and SIGHUP is sent".into(),
        )),
        Decision::StopUnauthorized => Some((
            "token rejected (HTTP 401): stopped requesting".into(),
            match token_file {
                Some(p) => format!(
                    "a valid token is put in {} (picked up automatically) or SIGHUP is sent",
                    p.display()
                ),
                None => "qrypt-fs is restarted with a valid QRYPT_TOKEN".into(),
            },
        )),
        Decision::QuotaWait(wait) => Some((
            "monthly quota used up (HTTP 403)".into(),
            format!(
                "the next try at {} (SIGHUP tries now)",
                crate::status::time_text(std::time::SystemTime::now() + wait)
            ),
        )),
        Decision::RateLimited { .. } | Decision::Retry(_) => None,
    }
}

/// What happens next, in the operator's words.
fn explain(decision: Decision, token_file: Option<&Path>) -> String {
    match decision {
        Decision::StopBadRequest => {
            "stopped requesting; check --endpoint and the configuration, then send SIGHUP".into()
        }
        Decision::StopUnauthorized => {
            let how = match token_file {
                Some(p) => format!(
                    "put a valid token in {} (picked up automatically) or send SIGHUP",
                    p.display()
                ),
                None => "a token from the environment can only be replaced by restarting \
                         qrypt-fs with a new QRYPT_TOKEN (or use --token-file)"
                    .to_owned(),
            };
            format!("token rejected; stopped requesting: {how}")
        }
        Decision::QuotaWait(wait) => format!(
            "monthly quota used up; next try in {}s (SIGHUP retries now)",
            wait.as_secs()
        ),
        Decision::RateLimited { wait, asked } => format!(
            "rate limited; retrying after {:.1}s (asked: {}s)",
            wait.as_secs_f64(),
            asked.as_secs()
        ),
        Decision::Retry(delay) => format!("retrying in {:.1}s", delay.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stop_says_what_ends_it() {
        use std::time::Duration;
        let (reason, until) = stop(
            Decision::StopUnauthorized,
            Some(Path::new("/etc/qrypt/token")),
        )
        .expect("stop");
        assert_eq!(reason, "token rejected (HTTP 401): stopped requesting");
        assert_eq!(
            until,
            "a valid token is put in /etc/qrypt/token (picked up automatically) or SIGHUP is sent"
        );
        let (reason, until) =
            stop(Decision::QuotaWait(Duration::from_secs(3600)), None).expect("stop");
        assert_eq!(reason, "monthly quota used up (HTTP 403)");
        assert!(until.starts_with("the next try at 20"), "{until}");
        assert!(stop(Decision::StopBadRequest, None).is_some());
        assert_eq!(stop(Decision::Retry(Duration::from_secs(1)), None), None);
    }

    #[test]
    fn logs_the_first_then_powers_of_ten() {
        let mut log = OutageLog::default();
        let logged: Vec<u64> = (0..1000).filter_map(|_| log.should_log("x")).collect();
        assert_eq!(logged, vec![1, 10, 100, 1000]);
        assert_eq!(log.should_log("y"), Some(1), "counted per class");
        log.recovered();
        assert_eq!(log.should_log("x"), Some(1), "a new outage starts over");
    }
}
