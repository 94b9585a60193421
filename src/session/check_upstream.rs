//! Failing early: the first upstream answer decides whether a new mount is reported ready.
//!
//! Like mountpoint-s3 checking its bucket before it reports a mount, qrypt-fs waits (up to
//! `--startup-timeout`) for the answer to its first request, which is the first fill anyway,
//! so the check costs nothing extra. An answer that no retry can fix (the token refused, the
//! quota used up, a wrong endpoint, a host the DNS says does not exist, a port that does not
//! speak TLS, an untrusted certificate, a body that is not the API's)
//! ends the start with one sentence saying what to do. No answer, or a failure the network
//! may cure later (a timeout, a refused connection, a DNS server that did not answer, a 5xx),
//! mounts anyway (`_netdev`: the
//! network may come later) with a warning: the prefetcher keeps retrying. So does a first
//! answer that failed a health test: its bytes were discarded, so nothing is ready to serve,
//! and the user is told why.
//!
//! The prefetcher records the first answer in a [`FirstAnswerCell`] once it has passed (or
//! failed) everything a response must pass to enter the pool, health tests included;
//! [`verdict`] turns that answer into a [`Verdict`].
use std::time::Duration;

pub use crate::refill::first_answer::{FirstAnswer, FirstAnswerCell};

use crate::upstream::FetchError;
use crate::upstream::http::DEFAULT_ENDPOINT;

/// What the start does with the first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Report the mount ready.
    Ready,
    /// Report ready, and print this warning: the upstream may still come.
    Warn(String),
    /// Unmount and exit 1 with this message.
    Fatal(String),
}

/// What the messages name.
pub struct Context<'a> {
    /// The base URL, as given (without credentials).
    pub endpoint: &'a str,
    /// The API URL requests go to.
    pub api_url: &'a str,
    /// Where the token came from: a file path, or the environment variable's name.
    pub token_source: &'a str,
    /// How long the start waited.
    pub waited: Duration,
}

/// Decides from the first answer (`None`: none within the startup timeout).
pub fn verdict(answer: Option<&FirstAnswer>, ctx: &Context<'_>) -> Verdict {
    let keeps_retrying = "mounted anyway; qrypt-fs keeps retrying and readers wait";
    let not_base = |code: u16| {
        Verdict::Fatal(format!(
            "HTTP {code} from {}: --endpoint must be the base URL, e.g. {DEFAULT_ENDPOINT}",
            ctx.api_url
        ))
    };
    let Some(answer) = answer else {
        return Verdict::Warn(format!(
            "no answer from {} within {}s; {keeps_retrying}",
            ctx.endpoint,
            ctx.waited.as_secs_f64()
        ));
    };
    let err = match answer {
        FirstAnswer::Delivered => return Verdict::Ready,
        FirstAnswer::LocalFailure(detail) => {
            return Verdict::Warn(format!("{detail}; {keeps_retrying}"));
        }
        FirstAnswer::Failed(e) => e,
    };
    match err {
        FetchError::Status { code: 401, .. } => Verdict::Fatal(format!(
            "token rejected (HTTP 401): check {}",
            ctx.token_source
        )),
        FetchError::Status { code: 403, .. } => Verdict::Fatal(format!(
            "quota used up (HTTP 403): the token from {} has no entropy left this month; wait \
             for the quota to renew or use another token",
            ctx.token_source
        )),
        FetchError::Status { code: 400, .. } => Verdict::Fatal(format!(
            "request refused (HTTP 400) by {}: --endpoint must be the base URL of Qrypt's API, \
             e.g. {DEFAULT_ENDPOINT}",
            ctx.api_url
        )),
        // 408 and 429 are "try again later"; any other 3xx/4xx means the URL is not the API.
        FetchError::Status { code, .. }
            if (300..500).contains(code) && ![408, 429].contains(code) =>
        {
            not_base(*code)
        }
        FetchError::Status { code, .. } => Verdict::Warn(format!(
            "{} answered HTTP {code}; {keeps_retrying}",
            ctx.endpoint
        )),
        FetchError::Certificate(detail) => Verdict::Fatal(format!(
            "TLS certificate of {} refused ({detail}): if a proxy intercepts TLS, trust its CA \
             with --ca-cert PATH",
            ctx.endpoint
        )),
        FetchError::Validation(detail) => Verdict::Fatal(format!(
            "{} answered with a body that is not the API's ({detail}): --endpoint must be the \
             base URL of Qrypt's API, e.g. {DEFAULT_ENDPOINT}",
            ctx.api_url
        )),
        FetchError::NoSuchHost(host) => Verdict::Fatal(format!(
            "no such host {host} (the DNS answered that it does not exist): check the spelling \
             of --endpoint {}, e.g. {DEFAULT_ENDPOINT}",
            ctx.endpoint
        )),
        FetchError::NotTls(detail) => Verdict::Fatal(format!(
            "{} does not speak TLS ({detail}): for a plain-HTTP server on this machine use \
             http://, else check the port of --endpoint",
            ctx.endpoint
        )),
        FetchError::Transport(detail) => Verdict::Warn(format!(
            "no answer from {} ({detail}); {keeps_retrying}",
            ctx.endpoint
        )),
        // The service's fault, not a setting: it may answer well next time.
        FetchError::Health(detail) => Verdict::Warn(format!(
            "the first answer from {} failed a health test and was discarded ({detail}); \
             {keeps_retrying}",
            ctx.endpoint
        )),
        // Never sent (a bug of ours), or the fetcher carrying it ended: not the service's
        // answer, nothing to judge it by.
        FetchError::SizeOutOfRange(_) | FetchError::FetcherLost(_) => Verdict::Warn(format!(
            "no answer from {} ({err}); {keeps_retrying}",
            ctx.endpoint
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::validate::ValidationError;
    use std::sync::Arc;
    use std::time::Instant;

    fn ctx() -> Context<'static> {
        Context {
            endpoint: "https://host.example",
            api_url: "https://host.example/api/v1/quantum-entropy",
            token_source: "/etc/qrypt/token",
            waited: Duration::from_secs(10),
        }
    }

    fn status(code: u16) -> Option<FirstAnswer> {
        Some(FirstAnswer::Failed(FetchError::Status {
            code,
            retry_after: None,
        }))
    }

    fn fatal(v: Verdict) -> String {
        match v {
            Verdict::Fatal(m) => m,
            other => panic!("not fatal: {other:?}"),
        }
    }

    fn warn(v: Verdict) -> String {
        match v {
            Verdict::Warn(m) => m,
            other => panic!("not a warning: {other:?}"),
        }
    }

    #[test]
    fn answers_no_retry_can_fix_are_fatal_with_what_to_do() {
        let c = ctx();
        assert_eq!(
            fatal(verdict(status(401).as_ref(), &c)),
            "token rejected (HTTP 401): check /etc/qrypt/token"
        );
        assert_eq!(
            fatal(verdict(status(404).as_ref(), &c)),
            "HTTP 404 from https://host.example/api/v1/quantum-entropy: --endpoint must be the \
             base URL, e.g. https://api-eus.qrypt.com"
        );
        assert!(fatal(verdict(status(403).as_ref(), &c)).starts_with("quota used up (HTTP 403)"));
        assert!(fatal(verdict(status(400).as_ref(), &c)).contains("--endpoint must be the base"));
        for code in [301, 405, 410] {
            assert!(fatal(verdict(status(code).as_ref(), &c)).starts_with(&format!("HTTP {code}")));
        }
        let cert = Some(FirstAnswer::Failed(FetchError::Certificate(
            "invalid peer certificate: UnknownIssuer".into(),
        )));
        assert_eq!(
            fatal(verdict(cert.as_ref(), &c)),
            "TLS certificate of https://host.example refused (invalid peer certificate: \
             UnknownIssuer): if a proxy intercepts TLS, trust its CA with --ca-cert PATH"
        );
        let typo = Some(FirstAnswer::Failed(FetchError::NoSuchHost(
            "host.example".into(),
        )));
        assert_eq!(
            fatal(verdict(typo.as_ref(), &c)),
            "no such host host.example (the DNS answered that it does not exist): check the \
             spelling of --endpoint https://host.example, e.g. https://api-eus.qrypt.com"
        );
        let plain = Some(FirstAnswer::Failed(FetchError::NotTls(
            "received corrupt message of type InvalidContentType".into(),
        )));
        assert_eq!(
            fatal(verdict(plain.as_ref(), &c)),
            "https://host.example does not speak TLS (received corrupt message of type \
             InvalidContentType): for a plain-HTTP server on this machine use http://, else \
             check the port of --endpoint"
        );
        let bad = Some(FirstAnswer::Failed(FetchError::Validation(
            ValidationError::ContentType("text/html".into()),
        )));
        assert!(fatal(verdict(bad.as_ref(), &c)).contains("not the API's"));
    }

    #[test]
    fn answers_the_network_may_cure_mount_with_a_warning() {
        let c = ctx();
        assert_eq!(verdict(Some(&FirstAnswer::Delivered), &c), Verdict::Ready);
        assert_eq!(
            warn(verdict(None, &c)),
            "no answer from https://host.example within 10s; mounted anyway; qrypt-fs keeps \
             retrying and readers wait"
        );
        let refused = Some(FirstAnswer::Failed(FetchError::Transport(
            "connect failed: Connection refused".into(),
        )));
        assert_eq!(
            warn(verdict(refused.as_ref(), &c)),
            "no answer from https://host.example (connect failed: Connection refused); mounted \
             anyway; qrypt-fs keeps retrying and readers wait"
        );
        // A DNS server that did not answer is not a name that does not exist.
        let no_dns = Some(FirstAnswer::Failed(FetchError::Transport(
            "connect failed: Temporary failure in name resolution".into(),
        )));
        assert!(warn(verdict(no_dns.as_ref(), &c)).contains("mounted anyway"));
        for code in [408, 429, 500, 503] {
            assert!(warn(verdict(status(code).as_ref(), &c)).contains(&format!("HTTP {code}")));
        }
    }

    #[test]
    fn the_first_answer_is_kept_and_later_ones_ignored() {
        let cell = FirstAnswerCell::default();
        assert_eq!(cell.wait(Duration::from_millis(10)), None);
        cell.record(status(401).expect("answer"));
        cell.record(FirstAnswer::Delivered);
        assert_eq!(cell.wait(Duration::ZERO), status(401));
    }

    #[test]
    fn a_first_answer_that_fails_a_health_test_mounts_with_the_reason() {
        let c = ctx();
        let unhealthy = Some(FirstAnswer::Failed(FetchError::Health(
            "repetition count test: 7 equal bytes in a row".into(),
        )));
        assert_eq!(
            warn(verdict(unhealthy.as_ref(), &c)),
            "the first answer from https://host.example failed a health test and was \
             discarded (repetition count test: 7 equal bytes in a row); mounted anyway; \
             qrypt-fs keeps retrying and readers wait"
        );
        let local = Some(FirstAnswer::LocalFailure(
            "local RNG for --mix-local: unavailable".into(),
        ));
        assert_eq!(
            warn(verdict(local.as_ref(), &c)),
            "local RNG for --mix-local: unavailable; mounted anyway; qrypt-fs keeps retrying \
             and readers wait"
        );
    }

    #[test]
    fn wait_returns_when_the_answer_arrives() {
        let cell = Arc::new(FirstAnswerCell::default());
        let c2 = cell.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.record(FirstAnswer::Delivered);
        });
        let start = Instant::now();
        assert_eq!(
            cell.wait(Duration::from_secs(10)),
            Some(FirstAnswer::Delivered)
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().expect("join");
    }
}
