//! Phoenix Channels v2 frames: [`eddy::ws::frame::parse`] on arbitrary UTF-8.
//!
//! Checks that parsing never panics and that the encoders agree with the parser: a reply
//! to an accepted frame parses back as a `phx_reply` with the same topic and with refs
//! that a client reads as the ones it sent (numbers compared with a correctly rounding
//! parser, as a JavaScript client reads them), and a `phx_close` and a push on the same
//! topic parse back with that topic too.

#![no_main]

use eddy::ws::frame::{self, Frame};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::{Value, json};

fuzz_target!(|text: &str| {
    let Ok(f) = frame::parse(text) else {
        return;
    };
    let sent = raw_items(text);
    let response = json!({"reason": "unmatched topic"});
    let reply = frame::reply(&f, "error", &response);
    let back = parse_ok(&reply);
    let echoed = raw_items(&reply);
    assert!(
        same_value(sent[0], echoed[0]),
        "join_ref {sent:?} came back as {reply}"
    );
    assert!(
        same_value(sent[1], echoed[1]),
        "ref {sent:?} came back as {reply}"
    );
    assert_eq!(back.join_ref, f.join_ref, "join_ref of {reply}");
    assert_eq!(back.msg_ref, f.msg_ref, "ref of {reply}");
    assert_eq!(back.topic, f.topic);
    assert_eq!(back.event, "phx_reply");
    assert_eq!(
        back.payload,
        json!({"status": "error", "response": response})
    );

    let close = frame::close(&f.join_ref, &f.topic);
    let back = parse_ok(&close);
    let echoed = raw_items(&close);
    assert!(
        same_value(sent[0], echoed[0]) && same_value(sent[0], echoed[1]),
        "{close}"
    );
    assert_eq!((&back.join_ref, &back.msg_ref), (&f.join_ref, &f.join_ref));
    assert_eq!(
        (back.topic.as_str(), back.event.as_str()),
        (f.topic.as_str(), "phx_close")
    );

    let payload = f.payload.to_string();
    let push = frame::push(&f.topic, &f.event, &payload);
    let back = parse_ok(&push);
    assert_eq!(
        (&back.join_ref, &back.msg_ref),
        (&Value::Null, &Value::Null)
    );
    assert_eq!((&back.topic, &back.event), (&f.topic, &f.event));
});

fn parse_ok(text: &str) -> Frame {
    frame::parse(text).unwrap_or_else(|e| panic!("{text} does not parse: {e}"))
}

/// The five elements of a frame as the text that was sent.
fn raw_items(text: &str) -> Vec<&RawValue> {
    serde_json::from_str(text).expect("a parsed frame is a JSON array")
}

/// Whether a client reads `a` and `b` as the same JSON value: strings and `null` as JSON
/// says, integers exactly, other numbers as the nearest double (Rust's `f64::from_str`
/// rounds correctly, as JavaScript's `JSON.parse` does).
fn same_value(a: &RawValue, b: &RawValue) -> bool {
    let (a, b) = (a.get().trim(), b.get().trim());
    let (Ok(va), Ok(vb)) = (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) else {
        return false;
    };
    match (&va, &vb) {
        (Value::Number(_), Value::Number(_)) => match (a.parse::<i128>(), b.parse::<i128>()) {
            (Ok(x), Ok(y)) => x == y,
            _ => a.parse::<f64>().ok() == b.parse::<f64>().ok(),
        },
        _ => va == vb,
    }
}
