//! Where eddy may connect: the SSRF guard for webhook URLs.
//!
//! Unless `--allow-private-webhooks` is given, webhook URLs and the addresses they resolve to
//! must be public: not loopback, private, link-local (cloud metadata lives at
//! 169.254.169.254), shared (CGNAT), multicast, unspecified, documentation, benchmarking or
//! reserved, for IPv4 and IPv6 alike, including IPv4 embedded in IPv6 (mapped, compatible,
//! NAT64, 6to4). URLs are checked when registered or given, and — what actually stops DNS
//! rebinding — again at connect time: the delivery client resolves names through
//! [`GuardedResolver`], which only hands out public addresses, so the address checked is the
//! address connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A connection refused by the guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blocked by the SSRF guard: {0}")]
pub struct Blocked(pub String);

fn v4_blocked(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // "this network"
        || a == 10                           // private
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || a == 127                          // loopback
        || (a == 169 && b == 254)            // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)    // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)    // documentation
        || (a == 192 && b == 168)            // private
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113)  // documentation
        || a >= 224 // multicast, reserved, broadcast
}

fn v6_blocked(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_blocked(v4);
    }
    // IPv4-compatible (deprecated, ::a.b.c.d) and the unspecified/loopback addresses.
    if s[..6] == [0; 6] {
        return ip.is_unspecified()
            || ip.is_loopback()
            || v4_blocked(Ipv4Addr::new(
                (s[6] >> 8) as u8,
                s[6] as u8,
                (s[7] >> 8) as u8,
                s[7] as u8,
            ));
    }
    // NAT64 well-known prefix 64:ff9b::/96 carries an IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_blocked(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // 6to4 2002::/16 carries an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return v4_blocked(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard 100::/64
        || (s[0] == 0x2001 && s[1] < 0x200)        // IETF protocol assignments 2001::/23
        || (s[0] == 0x2001 && s[1] == 0xdb8)       // documentation
        || (s[0] & 0xfff0) == 0x3ff0              // documentation 3fff::/20
        || (s[0] & 0xfe00) == 0xfc00              // unique local
        || (s[0] & 0xffc0) == 0xfe80              // link-local
        || (s[0] & 0xffc0) == 0xfec0              // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
}

/// Whether the guard lets eddy connect to `ip`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4_blocked(v4),
        IpAddr::V6(v6) => !v6_blocked(v6),
    }
}

/// Checks a URL without resolving names: literal addresses must be public and `localhost`
/// names are refused. The message says why.
pub fn check_literal(url: &reqwest::Url) -> Result<(), Blocked> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
            Err(Blocked(format!("{ip} is not a public address")))
        }
        Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
            Err(Blocked(format!("{ip} is not a public address")))
        }
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Err(Blocked(format!("{name} is a loopback name")))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
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
    if let Ok(Ok(addrs)) = tokio::time::timeout(timeout, lookup).await {
        for addr in addrs {
            if !is_public(addr.ip()) {
                return Err(Blocked(format!(
                    "{name} resolves to {}, which is not a public address",
                    addr.ip()
                )));
            }
        }
    }
    Ok(())
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
                let shown = addrs
                    .first()
                    .map_or_else(|| "nothing".to_string(), |a| a.ip().to_string());
                return Err(Box::new(Blocked(format!(
                    "{host} resolves to {shown}, which is not a public address"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every class of non-public address is refused, in both families and every IPv4
    /// embedding; ordinary public addresses pass.
    #[test]
    fn classification() {
        let blocked = [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "100::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ];
        for ip in blocked {
            assert!(!is_public(ip.parse().unwrap()), "{ip} should be blocked");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    /// The connect-time resolver refuses a name whose addresses are all private (here
    /// `localhost`, from /etc/hosts): a URL that passed the registration check and then
    /// re-resolves to a private address is never connected to.
    #[tokio::test]
    async fn resolver_refuses_private_answers() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match GuardedResolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<Blocked>().is_some(), "{err}");
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
        ] {
            let url = reqwest::Url::parse(bad).unwrap();
            assert!(check_literal(&url).is_err(), "{bad}");
        }
        let ok = reqwest::Url::parse("https://hooks.example.com/mr").unwrap();
        assert!(check_literal(&ok).is_ok());
    }
}
