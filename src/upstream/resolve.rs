//! Name resolution for the HTTP client: getaddrinfo(3), telling a name that does not exist
//! (a typo, which no retry fixes) from a resolver that did not answer (which may come back).
use std::net::SocketAddr;

use dns_lookup::{AddrInfoHints, LookupErrorKind};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The resolver's definite answer that the name has no address: NXDOMAIN, or a name with no
/// address record. A resolver that cannot be reached or timed out (`EAI_AGAIN`) is not this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no such host: {0}")]
pub struct NoSuchHost(pub String);

/// getaddrinfo(3) on tokio's blocking pool, like reqwest's own resolver, with its errors kept
/// apart: [`NoSuchHost`] for a name that does not exist, an `io::Error` for anything else.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resolver;

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = tokio::task::spawn_blocking(move || lookup(&host)).await??;
            Ok::<Addrs, BoxError>(Box::new(addrs.into_iter()))
        })
    }
}

/// The addresses of `host` (port 0: the client sets the URL's).
fn lookup(host: &str) -> Result<Vec<SocketAddr>, BoxError> {
    // RFC 6761: names under .invalid never resolve, and resolvers should say so at once
    // without asking anyone.
    if is_special_invalid(host) {
        return Err(Box::new(NoSuchHost(host.to_owned())));
    }
    let hints = AddrInfoHints {
        socktype: libc::SOCK_STREAM,
        ..AddrInfoHints::default()
    };
    match dns_lookup::getaddrinfo(Some(host), None, Some(hints)) {
        Ok(found) => {
            let addrs: Vec<SocketAddr> = found.filter_map(Result::ok).map(|a| a.sockaddr).collect();
            if addrs.is_empty() {
                return Err(Box::new(NoSuchHost(host.to_owned())));
            }
            Ok(addrs)
        }
        Err(e) if is_definite(e.kind()) => Err(Box::new(NoSuchHost(host.to_owned()))),
        Err(e) => Err(Box::new(std::io::Error::from(e))),
    }
}

/// Whether getaddrinfo's error says the name has no address, rather than that it could not
/// find out (`EAI_AGAIN`: no DNS server answered; `EAI_FAIL`, `EAI_SYSTEM`, ...).
fn is_definite(kind: LookupErrorKind) -> bool {
    matches!(kind, LookupErrorKind::NoName | LookupErrorKind::NoData)
}

/// `invalid` or a name under it (RFC 6761, section 6.4), any case, a trailing dot or not.
fn is_special_invalid(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "invalid" || host.ends_with(".invalid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_definite_answer_is_no_such_host() {
        assert!(is_definite(LookupErrorKind::NoName));
        assert!(is_definite(LookupErrorKind::NoData));
        // No DNS server answered, or it failed: the name may resolve later.
        for kind in [
            LookupErrorKind::Again,
            LookupErrorKind::Fail,
            LookupErrorKind::System,
            LookupErrorKind::Memory,
        ] {
            assert!(!is_definite(kind), "{kind:?}");
        }
    }

    #[test]
    fn names_under_invalid_fail_without_asking() {
        for host in ["api.qrypt.invalid", "X.INVALID.", "invalid"] {
            let e = lookup(host).expect_err(host);
            assert_eq!(
                e.downcast_ref::<NoSuchHost>(),
                Some(&NoSuchHost(host.to_owned()))
            );
        }
        assert!(!is_special_invalid("invalid.example"));
    }

    #[test]
    fn loopback_names_resolve() {
        let addrs = lookup("127.0.0.1").expect("a literal address resolves");
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 0))]);
    }
}
