//! The blocked ranges: one table, written as the README prints it (a test keeps the two
//! equal), compiled once into masks, and the classification of an address against it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

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

/// Every range the guard refuses, first match first, in the README's words: `refused`, or
/// `refused when the IPv4 address in bits A–B is` (`its last 32 bits`: 96–128).
const TABLE: &str = "\
| `0.0.0.0/8` | \"this network\" | refused |
| `10.0.0.0/8` | private | refused |
| `100.64.0.0/10` | shared address space (CGNAT) | refused |
| `127.0.0.0/8` | loopback | refused |
| `169.254.0.0/16` | link-local (cloud metadata) | refused |
| `172.16.0.0/12` | private | refused |
| `192.0.0.0/24` | IETF protocol assignments | refused |
| `192.0.2.0/24` | documentation | refused |
| `192.88.99.0/24` | 6to4 relay anycast (deprecated) | refused |
| `192.168.0.0/16` | private | refused |
| `198.18.0.0/15` | benchmarking | refused |
| `198.51.100.0/24` | documentation | refused |
| `203.0.113.0/24` | documentation | refused |
| `224.0.0.0/4` | multicast | refused |
| `240.0.0.0/4` | reserved, broadcast | refused |
| `::/128` | unspecified | refused |
| `::1/128` | loopback | refused |
| `::ffff:0:0/96` | IPv4-mapped | refused when the IPv4 address in its last 32 bits is |
| `::ffff:0:0:0/96` | IPv4-translated (SIIT) | refused when the IPv4 address in its last 32 bits is |
| `::/96` | IPv4-compatible (deprecated) | refused when the IPv4 address in its last 32 bits is |
| `64:ff9b::/96` | NAT64 | refused when the IPv4 address in its last 32 bits is |
| `64:ff9b:1::/48` | local-use NAT64 | refused |
| `100::/64` | discard-only | refused |
| `2001::/23` | IETF protocol assignments (Teredo included) | refused |
| `2001:db8::/32` | documentation | refused |
| `2002::/16` | 6to4 | refused when the IPv4 address in bits 16–48 is |
| `3fff::/20` | documentation | refused |
| `5f00::/16` | segment routing (SRv6) SIDs | refused |
| `fc00::/7` | unique local | refused |
| `fe80::/10` | link-local | refused |
| `fec0::/10` | site-local (deprecated) | refused |
| `ff00::/8` | multicast | refused |
| `::5efe:0:0/::ffff:ffff:0:0` | ISATAP, any prefix | refused when the IPv4 address in its last 32 bits is |
| `::200:5efe:0:0/::ffff:ffff:0:0` | ISATAP, any prefix | refused when the IPv4 address in its last 32 bits is |
";

/// [`TABLE`]'s rows.
pub static BLOCKED: LazyLock<Vec<Range>> = LazyLock::new(|| TABLE.lines().map(row).collect());

/// One line of [`TABLE`] (a fixed text: a line it cannot read is a bug the tests catch).
fn row(line: &'static str) -> Range {
    let cells: Vec<&'static str> = line
        .split(" | ")
        .map(|c| c.trim_matches('|').trim())
        .collect();
    let [range, what, rule] = cells[..] else {
        panic!("a row of the blocked table has three cells: {line}")
    };
    let rule = match rule.strip_prefix("refused when the IPv4 address in ") {
        None if rule == "refused" => Rule::Block,
        Some("its last 32 bits is") => Rule::Embeds { at: 96 },
        Some(bits) => {
            let (from, to) = bits
                .strip_suffix(" is")
                .and_then(|b| b.strip_prefix("bits "))
                .and_then(|b| b.split_once('–'))
                .unwrap_or_else(|| panic!("an unknown rule: {line}"));
            let at: u32 = from.parse().expect("bits are numbers");
            assert_eq!(to.parse::<u32>().ok(), Some(at + 32), "{line}");
            Rule::Embeds { at }
        }
        None => panic!("an unknown rule: {line}"),
    };
    Range {
        range: range.trim_matches('`'),
        what,
        rule,
    }
}
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

static COMPILED: LazyLock<Vec<Compiled>> = LazyLock::new(|| BLOCKED.iter().map(compile).collect());

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
    let hit = COMPILED
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
        for row in BLOCKED.iter() {
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

    /// The README's table of blocked ranges is this table, line for line.
    #[test]
    fn readme_mirrors_the_table() {
        let readme = include_str!("../../README.md");
        let rows: Vec<&str> = readme
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "| range | what | rule |")
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert_eq!(rows, TABLE.lines().collect::<Vec<_>>());
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
}
