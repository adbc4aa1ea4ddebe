//! Phoenix Channels serializer v2: every frame is a JSON array
//! `[join_ref, ref, topic, event, payload]`.
//!
//! `join_ref` and `ref` are echoed exactly as the client sent them (the official client
//! sends strings, but any JSON value is kept as given). Server pushes carry `null` refs,
//! as Phoenix's own broadcasts do, so one encoded frame serves every socket.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// A frame from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Value,
    pub msg_ref: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not JSON: {0}")]
    Json(String),
    #[error("frame is not a 5-element array [join_ref, ref, topic, event, payload]")]
    Shape,
}

/// Parses a client frame.
pub fn parse(text: &str) -> Result<Frame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(FrameError::Shape);
    };
    let Ok::<[Value; 5], _>([join_ref, msg_ref, topic, event, payload]) = items.try_into() else {
        return Err(FrameError::Shape);
    };
    let (Value::String(topic), Value::String(event)) = (topic, event) else {
        return Err(FrameError::Shape);
    };
    let ref_ok = |v: &Value| matches!(v, Value::Null | Value::String(_) | Value::Number(_));
    if !ref_ok(&join_ref) || !ref_ok(&msg_ref) {
        return Err(FrameError::Shape);
    }
    Ok(Frame {
        join_ref,
        msg_ref,
        topic,
        event,
        payload,
    })
}

#[derive(Serialize)]
struct Reply<'a> {
    status: &'a str,
    response: &'a Value,
}

/// `phx_reply` to `frame` with `status` (`ok`/`error`) and `response`.
pub fn reply(frame: &Frame, status: &str, response: &Value) -> String {
    let body = Reply { status, response };
    serde_json::to_string(&(
        &frame.join_ref,
        &frame.msg_ref,
        &frame.topic,
        "phx_reply",
        body,
    ))
    .expect("frames serialize")
}

/// `phx_close` for a topic the client left or joined again (ref = the join's join_ref,
/// as Phoenix sends it).
pub fn close(join_ref: &Value, topic: &str) -> String {
    channel_event(join_ref, topic, "phx_close")
}

/// `phx_error` for a joined topic whose server side failed; the phoenix client marks the
/// channel errored and rejoins it.
pub fn error(join_ref: &Value, topic: &str) -> String {
    channel_event(join_ref, topic, "phx_error")
}

fn channel_event(join_ref: &Value, topic: &str, event: &str) -> String {
    serde_json::to_string(&(join_ref, join_ref, topic, event, serde_json::json!({})))
        .expect("frames serialize")
}

/// A server push `[null, null, topic, event, payload]`; `payload` is JSON text.
pub fn push(topic: &str, event: &str, payload: &str) -> String {
    let payload: &RawValue = serde_json::from_str(payload)
        .unwrap_or_else(|_| serde_json::from_str("null").expect("null is JSON"));
    serde_json::to_string(&(Value::Null, Value::Null, topic, event, payload))
        .expect("frames serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A frame parses and its reply echoes both refs and the topic exactly: string refs
    /// (a join), a null join_ref and a number ref (a heartbeat), and refs that are doubles,
    /// which come back as the doubles sent: parsing rounds correctly (serde_json's
    /// `float_roundtrip`), so a 17-digit float is not echoed one unit in the last place off.
    #[test]
    fn replies_echo_refs_and_topic() {
        let ok = r#""phx_reply",{"status":"ok","response":{}}]"#;
        for (refs, topic, event) in [
            (r#""3","3""#, "ai_response:a:b", "phx_join"),
            ("null,7", "phoenix", "heartbeat"),
            ("1.0715660391465826e-75,-1.81996730402717e-179", "t", "e"),
        ] {
            let f = parse(&format!(r#"[{refs},"{topic}","{event}",{{}}]"#)).unwrap();
            assert_eq!(f.event, event);
            assert_eq!(
                reply(&f, "ok", &json!({})),
                format!(r#"[{refs},"{topic}",{ok}"#)
            );
        }
    }

    /// Anything that is not a v2 frame is an error, never a panic.
    #[test]
    fn malformed_frames() {
        for bad in [
            "",
            "{}",
            "[]",
            "[1,2,3,4]",
            r#"[null,null,1,"e",{}]"#,
            r#"[{},null,"t","e",{}]"#,
            r#"[null,null,"t","e",{},6]"#,
            "[",
            "\"x\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    /// `phx_close` and `phx_error` carry the join's ref in both ref fields, so the phoenix
    /// client applies them to that join only.
    #[test]
    fn close_and_error_frames() {
        assert_eq!(
            close(&json!("4"), "ai_response:a:b"),
            r#"["4","4","ai_response:a:b","phx_close",{}]"#
        );
        assert_eq!(
            error(&json!("4"), "ai_response:a:b"),
            r#"["4","4","ai_response:a:b","phx_error",{}]"#
        );
    }

    /// Pushes embed the payload verbatim with null refs.
    #[test]
    fn push_frame() {
        assert_eq!(
            push("t", "response", r#"{"status":"completed"}"#),
            r#"[null,null,"t","response",{"status":"completed"}]"#
        );
    }
}
