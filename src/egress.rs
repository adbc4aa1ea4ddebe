//! Where eddy may connect: the SSRF guard for webhook URLs and provider base URLs.
//!
//! Unless `--allow-private-webhooks` (or `--allow-private-providers`) is given, URLs and
//! the addresses they resolve to must be public: outside every range of [`BLOCKED`], one
//! table of every blocked range (IANA's special-purpose registries, and each form that
//! carries an IPv4 address inside an IPv6 one, which is refused when that IPv4 address is).
//! The README's table mirrors it, and a test keeps the two equal. URLs are checked when
//! registered or given, and (what actually stops DNS rebinding) again at connect time:
//! clients resolve names through [`GuardedResolver`], which only hands out public
//! addresses, so the address checked is the address connected to. A refusal never says
//! which private address a name resolved to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

/// A connection refused by the guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blocked by the SSRF guard: {0}")]
pub struct Blocked(pub String);

/// What the guard does with an address in a [`Range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Never connected to.
    Block,
    /// The address carries an IPv4 address in its bits `at..at + 32`: refused when that
    /// IPv4 address is.
    Embeds { at: u32 },
}

/// One row of [`BLOCKED`].
#[derive(Debug, PartialEq, Eq)]
pub struct Range {
    /// `network/prefix`, or `network/mask` for a pattern inside any prefix (ISATAP).
    pub range: &'static str,
    pub what: &'static str,
    pub rule: Rule,
}

const fn row(range: &'static str, what: &'static str, rule: Rule) -> Range {
    Range { range, what, rule }
}

const EMBEDS_LOW: Rule = Rule::Embeds { at: 96 };

/// Every range the guard refuses, first match first.
pub const BLOCKED: &[Range] = &[
    row("0.0.0.0/8", "\"this network\"", Rule::Block),
    row("10.0.0.0/8", "private", Rule::Block),
    row("100.64.0.0/10", "shared address space (CGNAT)", Rule::Block),
    row("127.0.0.0/8", "loopback", Rule::Block),
    row("169.254.0.0/16", "link-local (cloud metadata)", Rule::Block),
    row("172.16.0.0/12", "private", Rule::Block),
    row("192.0.0.0/24", "IETF protocol assignments", Rule::Block),
    row("192.0.2.0/24", "documentation", Rule::Block),
    row(
        "192.88.99.0/24",
        "6to4 relay anycast (deprecated)",
        Rule::Block,
    ),
    row("192.168.0.0/16", "private", Rule::Block),
    row("198.18.0.0/15", "benchmarking", Rule::Block),
    row("198.51.100.0/24", "documentation", Rule::Block),
    row("203.0.113.0/24", "documentation", Rule::Block),
    row("224.0.0.0/4", "multicast", Rule::Block),
    row("240.0.0.0/4", "reserved, broadcast", Rule::Block),
    row("::/128", "unspecified", Rule::Block),
    row("::1/128", "loopback", Rule::Block),
    row("::ffff:0:0/96", "IPv4-mapped", EMBEDS_LOW),
    row("::ffff:0:0:0/96", "IPv4-translated (SIIT)", EMBEDS_LOW),
    row("::/96", "IPv4-compatible (deprecated)", EMBEDS_LOW),
    row("64:ff9b::/96", "NAT64", EMBEDS_LOW),
    row("64:ff9b:1::/48", "local-use NAT64", Rule::Block),
    row("100::/64", "discard-only", Rule::Block),
    row(
        "2001::/23",
        "IETF protocol assignments (Teredo included)",
        Rule::Block,
    ),
    row("2001:db8::/32", "documentation", Rule::Block),
    row("2002::/16", "6to4", Rule::Embeds { at: 16 }),
    row("3fff::/20", "documentation", Rule::Block),
    row("5f00::/16", "segment routing (SRv6) SIDs", Rule::Block),
    row("fc00::/7", "unique local", Rule::Block),
    row("fe80::/10", "link-local", Rule::Block),
    row("fec0::/10", "site-local (deprecated)", Rule::Block),
    row("ff00::/8", "multicast", Rule::Block),
    row(
        "::5efe:0:0/::ffff:ffff:0:0",
        "ISATAP, any prefix",
        EMBEDS_LOW,
    ),
    row(
        "::200:5efe:0:0/::ffff:ffff:0:0",
        "ISATAP, any prefix",
        EMBEDS_LOW,
    ),
];

/// A row as numbers: an address matches when `address & mask == network`. IPv4 rows and
/// addresses are compared as IPv4-mapped values and only with each other.
struct Compiled {
    v4: bool,
    network: u128,
    mask: u128,
    row: &'static Range,
}

fn compile(row: &'static Range) -> Compiled {
    let (network, mask) = row.range.split_once('/').expect("a range has a /");
    let network: IpAddr = network.parse().expect("a range's network is an address");
    // An IPv4 prefix keeps the 96 bits of the mapped form above it.
    let width = if network.is_ipv4() { 32 } else { 128 };
    let mask = match mask.parse::<u32>() {
        Ok(prefix) => u128::MAX.checked_shl(width - prefix).unwrap_or(0),
        Err(_) => u128::from(
            mask.parse::<Ipv6Addr>()
                .expect("a mask is a prefix length or an address"),
        ),
    };
    Compiled {
        v4: network.is_ipv4(),
        network: bits(network),
        mask,
        row,
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

static TABLE: LazyLock<Vec<Compiled>> = LazyLock::new(|| BLOCKED.iter().map(compile).collect());

/// Why the guard refuses an address: its row, and for an embedding form the row of the
/// IPv4 address inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub range: &'static Range,
    pub inner: Option<(Ipv4Addr, &'static Range)>,
}

/// The row that refuses `ip`, if any.
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    let value = bits(ip);
    let hit = TABLE
        .iter()
        .find(|c| c.v4 == ip.is_ipv4() && value & c.mask == c.network)?;
    match hit.row.rule {
        Rule::Block => Some(Refusal {
            range: hit.row,
            inner: None,
        }),
        Rule::Embeds { at } => {
            let inner = Ipv4Addr::from((value >> (96 - at)) as u32);
            classify(IpAddr::V4(inner)).map(|r| Refusal {
                range: hit.row,
                inner: Some((inner, r.range)),
            })
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.inner {
            None => write!(f, "{} ({})", self.range.what, self.range.range),
            Some((v4, inner)) => write!(
                f,
                "{} form of {v4}, which is {} ({})",
                self.range.what, inner.what, inner.range
            ),
        }
    }
}

/// Whether the guard lets eddy connect to `ip`.
pub fn is_public(ip: IpAddr) -> bool {
    classify(ip).is_none()
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

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn embed(row: &'static Range, v4: Ipv4Addr) -> IpAddr {
        let Rule::Embeds { at } = row.rule else {
            unreachable!("{} embeds nothing", row.range)
        };
        let network = compile(row).network;
        IpAddr::V6(Ipv6Addr::from(
            network | u128::from(u32::from(v4)) << (96 - at),
        ))
    }

    /// Every row, one by one: its first and last address are refused by that row (for a
    /// form that embeds IPv4, when the embedded address is loopback, metadata or private,
    /// and not when it is public), and the addresses just outside are not refused by it.
    #[test]
    fn every_row() {
        for row in BLOCKED {
            let c = compile(row);
            let (first, last) = (c.network, c.network | !c.mask);
            let at = |value: u128| {
                if c.v4 {
                    IpAddr::V4(Ipv6Addr::from(value).to_ipv4_mapped().unwrap())
                } else {
                    IpAddr::V6(Ipv6Addr::from(value))
                }
            };
            match row.rule {
                Rule::Block => {
                    for inside in [first, last] {
                        let got = classify(at(inside)).map(|r| r.range.range);
                        assert_eq!(got, Some(row.range), "{} in {}", at(inside), row.range);
                    }
                }
                Rule::Embeds { .. } => {
                    for private in ["127.0.0.1", "169.254.169.254", "10.1.2.3", "192.168.0.1"] {
                        let address = embed(row, private.parse().unwrap());
                        let got = classify(address).map(|r| r.range.range);
                        assert_eq!(got, Some(row.range), "{address} in {}", row.range);
                    }
                    let public = embed(row, Ipv4Addr::new(8, 8, 8, 8));
                    assert!(is_public(public), "{public} carries 8.8.8.8");
                }
            }
            // Just outside a prefix (a pattern, ISATAP's, has no outside next to it).
            if c.mask.leading_ones() + c.mask.trailing_zeros() != 128 {
                continue;
            }
            for outside in [first.checked_sub(1), last.checked_add(1)]
                .into_iter()
                .flatten()
            {
                if c.v4 && Ipv6Addr::from(outside).to_ipv4_mapped().is_none() {
                    continue;
                }
                let got = classify(at(outside)).map(|r| r.range.range);
                assert_ne!(
                    got,
                    Some(row.range),
                    "{} is outside {}",
                    at(outside),
                    row.range
                );
            }
        }
    }

    /// The README's table of blocked ranges is this table, row for row.
    #[test]
    fn readme_mirrors_the_table() {
        let readme = include_str!("../README.md");
        let rows: Vec<(String, String)> = readme
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "| range | what | rule |")
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_string(), cells[2].to_string())
            })
            .collect();
        let table: Vec<(String, String)> = BLOCKED
            .iter()
            .map(|r| (r.range.to_string(), r.what.to_string()))
            .collect();
        assert_eq!(rows, table);
    }

    /// The spellings the issue found accepted (SIIT) and the other embedding forms of
    /// loopback and metadata are refused, each saying why; public addresses pass.
    #[test]
    fn embedding_forms() {
        for (address, needle) in [
            (
                "::ffff:0:a9fe:a9fe",
                "IPv4-translated (SIIT) form of 169.254.169.254",
            ),
            (
                "::ffff:0:7f00:1",
                "IPv4-translated (SIIT) form of 127.0.0.1, which is loopback",
            ),
            ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1"),
            ("::169.254.169.254", "IPv4-compatible"),
            ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
            ("2002:a9fe:a9fe::1", "6to4 form of 169.254.169.254"),
            ("2606:4700::5efe:a9fe:a9fe", "ISATAP"),
            ("2606:4700::200:5efe:7f00:1", "ISATAP"),
            ("::1", "loopback"),
        ] {
            let why = classify(ip(address))
                .map(|r| r.to_string())
                .unwrap_or_default();
            assert!(why.contains(needle), "{address}: {why:?}");
        }
        for address in [
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(address)), "{address}");
        }
    }

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
