//! `POST /v1/ai/async` bodies: [`eddy::http::v1::parse_async`] on arbitrary bytes,
//! with and without the SSRF guard.
//!
//! Checks that parsing never panics and that what it accepts is what the engine relies on:
//! a non-empty workflow name, a non-empty array of message objects each with a string
//! `role`, and (guarded) a `webhook_url` whose literal host is a public address. The guard
//! only ever refuses more, so a body accepted guarded is accepted unguarded too.

#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use eddy::engine::AcceptInput;
use eddy::http::v1::parse_async;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let open = parse_async(data, false);
    let guarded = parse_async(data, true);
    if let Ok(input) = &open {
        check(input);
    }
    if let Ok(input) = &guarded {
        check(input);
        let open = open.as_ref().expect("the guard only refuses more");
        assert_eq!(open.webhook_url, input.webhook_url);
        if let Some(url) = &input.webhook_url {
            let url = url::Url::parse(url).expect("an accepted webhook_url parses");
            assert!(public_literal(&url), "guard let through {url}");
        }
    }
});

fn check(input: &AcceptInput) {
    assert!(!input.workflow.trim().is_empty());
    let Value::Array(messages) = &input.messages else {
        panic!("messages is not an array: {}", input.messages);
    };
    assert!(!messages.is_empty());
    for m in messages {
        let Value::Object(m) = m else {
            panic!("message is not an object: {m}");
        };
        assert!(
            matches!(m.get("role"), Some(Value::String(_))),
            "role is not a string: {m:?}"
        );
    }
    if let Some(url) = &input.webhook_url {
        let url = url::Url::parse(url).expect("an accepted webhook_url parses");
        assert!(matches!(url.scheme(), "http" | "https") && url.host().is_some());
    }
}

/// An independent statement of the literal-host rule: IP hosts must not be loopback,
/// private, link-local, unspecified or (for IPv6) an IPv4-mapped form of those.
fn public_literal(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => public_v4(ip),
        Some(url::Host::Ipv6(ip)) => public_v6(ip),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name != "localhost" && !name.ends_with(".localhost")
        }
        None => false,
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.octets()[0] == 0)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_v4(v4);
    }
    let unique_local = (ip.segments()[0] & 0xfe00) == 0xfc00;
    let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
    !(ip.is_loopback() || ip.is_unspecified() || unique_local || link_local)
}
