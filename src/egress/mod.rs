//! Where eddy may connect: the SSRF guard for webhook URLs and provider base URLs, and the
//! one builder of the clients that go there.
//!
//! Unless `--allow-private-webhooks` (or `--allow-private-providers`) is given, URLs and
//! the addresses they resolve to must be public: outside every range of [`BLOCKED`], one
//! table of every blocked range (IANA's special-purpose registries, and each form that
//! carries an IPv4 address inside an IPv6 one, which is refused when that IPv4 address is).
//! The table is written as the README prints it, and a test keeps the two equal. URLs are
//! checked when registered or given, and (what actually stops DNS rebinding) again at
//! connect time: clients resolve names through [`GuardedResolver`], which only hands out
//! public addresses, so the address checked is the address connected to. A refusal never
//! says which private address a name resolved to. [`client`] builds the webhook and model
//! clients with that resolver, so neither can forget it.

mod ranges;

pub use ranges::{BLOCKED, Range, Refusal, Rule, classify, is_public};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A connection refused by the guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blocked by the SSRF guard: {0}")]
pub struct Blocked(pub String);

/// Installs ring as rustls' process-wide crypto provider (once; later calls are no-ops).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The builder of a client for addresses a tenant names (webhook endpoints, model APIs):
/// no redirects (a 3xx is an answer, not a hop to an address nobody checked), no proxies,
/// a connect timeout of `timeout` up to 10 s, eddy's user agent, and with `guarded` the
/// [`GuardedResolver`]. Callers add their pool settings and build it.
pub fn client(guarded: bool, timeout: Duration) -> reqwest::ClientBuilder {
    install_crypto();
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("eddy/", env!("CARGO_PKG_VERSION")));
    if guarded {
        builder.dns_resolver(Arc::new(GuardedResolver))
    } else {
        builder
    }
}

fn literal(ip: IpAddr) -> Result<(), Blocked> {
    match classify(ip) {
        Some(why) => Err(Blocked(format!("{ip} is not a public address: {why}"))),
        None => Ok(()),
    }
}

/// Refuses `name` if any address it resolved to is not public, without saying which
/// (that would tell a tenant what internal names resolve to).
fn resolved(name: &str, addrs: &[SocketAddr]) -> Result<(), Blocked> {
    if addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(Blocked(format!("{name} resolves to a private address")));
    }
    Ok(())
}

/// Checks a URL without resolving names: literal addresses must be public and `localhost`
/// names are refused. The message says why.
pub fn check_literal(url: &reqwest::Url) -> Result<(), Blocked> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => literal(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => literal(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Err(Blocked(format!("{name} is a loopback name")))
            } else {
                Ok(())
            }
        }
        None => Ok(()),
    }
}

/// [`check_literal`], then resolves the host (bounded by `timeout`) and refuses it if any
/// address it resolves to is not public. A name that does not resolve now passes: the
/// connect-time check still guards it.
pub async fn check_resolving(url: &reqwest::Url, timeout: Duration) -> Result<(), Blocked> {
    check_literal(url)?;
    let (Some(url::Host::Domain(name)), Some(port)) = (url.host(), url.port_or_known_default())
    else {
        return Ok(());
    };
    let lookup = tokio::net::lookup_host((name.to_string(), port));
    match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(addrs)) => resolved(name, &addrs.collect::<Vec<_>>()),
        _ => Ok(()),
    }
}

/// A resolver for the delivery client that returns only public addresses, so a name that
/// resolves (or re-resolves) to a private address is never connected to.
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                let why = resolved(&host, &addrs)
                    .err()
                    .unwrap_or_else(|| Blocked(format!("{host} resolves to no address")));
                return Err(Box::new(why) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A name that resolves to a private address is refused without naming the address.
    #[test]
    fn refusals_do_not_name_resolved_addresses() {
        let addrs = [SocketAddr::from(([10, 9, 8, 7], 443))];
        let err = resolved("internal.example", &addrs)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "blocked by the SSRF guard: internal.example resolves to a private address"
        );
        assert!(resolved("x.example", &[SocketAddr::from(([8, 8, 8, 8], 443))]).is_ok());
    }

    /// The connect-time resolver refuses a name whose addresses are all private (here
    /// `localhost`, from /etc/hosts): a URL that passed the registration check and then
    /// re-resolves to a private address is never connected to, and the refusal does not
    /// say which address it was.
    #[tokio::test]
    async fn resolver_refuses_private_answers() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match GuardedResolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<Blocked>().is_some(), "{err}");
        let text = err.to_string();
        assert!(
            text.ends_with("localhost resolves to a private address"),
            "{text}"
        );
    }

    /// Literal private hosts and localhost names are refused before any lookup.
    #[test]
    fn literal_urls() {
        for bad in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/x",
            "http://localhost/x",
            "http://api.localhost./x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:10.0.0.1]/",
            "http://[::ffff:0:a9fe:a9fe]/",
            "http://[::ffff:0:7f00:1]/",
        ] {
            let url = reqwest::Url::parse(bad).unwrap();
            assert!(check_literal(&url).is_err(), "{bad}");
        }
        let ok = reqwest::Url::parse("https://hooks.example.com/mr").unwrap();
        assert!(check_literal(&ok).is_ok());
    }
}
