//! Anthropic's Messages API at `{base_url}/v1/messages`, with `x-api-key` and
//! `anthropic-version` headers. `base_url` is taken as Anthropic's SDKs take it, the root
//! without `/v1` (`https://api.anthropic.com`); a root that already ends in `/v1`, as
//! OpenAI-style roots do, is used as it is.
//!
//! Mapping from the OpenAI-style messages eddy receives: `system` and `developer` messages
//! and the workflow's `system_prompt` become the top-level `system` field; `tool` messages
//! are sent as `user` text; text parts stay text parts and `image_url` parts become image
//! blocks. `max_tokens`, which the API requires, is [`MAX_TOKENS`]. A structured output's
//! schema becomes the input schema of a single tool the model is made to call, and the
//! tool call's `input` is the answer. Usage is `input_tokens` / `output_tokens`.
//!
//! Streaming (only asked without a structured output, see `run`) reads the API's events
//! (`message_start`, `content_block_start`/`_delta`, `message_delta`, `message_stop`,
//! `error`), sends the text on as it comes, and puts the message back together, so a
//! streamed answer is mapped by the same code as a whole one.

use reqwest::RequestBuilder;
use serde_json::{Map, Value, json};

use super::call::Wire;
use super::schema::parse_answer;
use super::{AiError, AiOutput, AiRequest, text_of};

/// The `anthropic-version` header eddy speaks.
pub const VERSION: &str = "2023-06-01";
/// `max_tokens` of every request (workflows have no setting for it).
pub const MAX_TOKENS: u64 = 4096;
/// The tool that carries a structured output.
pub const TOOL: &str = "structured_output";

/// Anthropic's wire format; the provider is `call::Http<Anthropic>`.
pub struct Anthropic;

/// The Messages endpoint under an API root given with or without `/v1`.
pub fn messages_url(base_url: &str) -> String {
    let root = base_url.trim_end_matches('/');
    if root.ends_with("/v1") {
        format!("{root}/messages")
    } else {
        format!("{root}/v1/messages")
    }
}

/// An OpenAI-style content (a string or parts) as Anthropic content.
fn content(value: Option<&Value>) -> Value {
    let Some(Value::Array(parts)) = value else {
        return Value::String(text_of(value));
    };
    let blocks: Vec<Value> = parts
        .iter()
        .filter_map(|part| match part.get("type").and_then(Value::as_str) {
            Some("text") => Some(json!({"type": "text", "text": part.get("text")?})),
            Some("image_url") => {
                let url = part.pointer("/image_url/url").and_then(Value::as_str)?;
                let source = match url
                    .strip_prefix("data:")
                    .and_then(|rest| rest.split_once(";base64,"))
                {
                    Some((media_type, data)) => {
                        json!({"type": "base64", "media_type": media_type, "data": data})
                    }
                    None => json!({"type": "url", "url": url}),
                };
                Some(json!({"type": "image", "source": source}))
            }
            _ => None,
        })
        .collect();
    Value::Array(blocks)
}

/// The request body for `request`; `stream` asks for events.
pub fn body(request: &AiRequest<'_>, stream: bool) -> Value {
    let mut system: Vec<String> = request
        .system_prompt
        .map(str::to_string)
        .into_iter()
        .collect();
    let mut messages = Vec::new();
    for m in request.messages.as_array().into_iter().flatten() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        match role {
            "system" | "developer" => system.push(text_of(m.get("content"))),
            "assistant" => {
                let text = content(m.get("content"));
                if text != json!("") && text != json!([]) {
                    messages.push(json!({"role": "assistant", "content": text}));
                }
            }
            _ => messages.push(json!({"role": "user", "content": content(m.get("content"))})),
        }
    }
    let mut body = json!({
        "model": request.model,
        "max_tokens": MAX_TOKENS,
        "messages": messages,
    });
    let system: Vec<String> = system.into_iter().filter(|s| !s.is_empty()).collect();
    if !system.is_empty() {
        body["system"] = Value::String(system.join("\n\n"));
    }
    if let Some(schema) = request.schema {
        body["tools"] = json!([{
            "name": TOOL,
            "description": "Give the answer as this JSON object.",
            "input_schema": schema,
        }]);
        body["tool_choice"] = json!({"type": "tool", "name": TOOL});
    }
    if stream {
        body["stream"] = Value::Bool(true);
    }
    body
}

impl Wire for Anthropic {
    type Stream = Message;

    fn url(base_url: &str) -> String {
        messages_url(base_url)
    }

    fn headers(post: RequestBuilder, key: Option<&str>) -> RequestBuilder {
        let post = post.header("anthropic-version", VERSION);
        match key {
            Some(key) => post.header("x-api-key", key),
            None => post,
        }
    }

    fn body(request: &AiRequest<'_>, stream: bool) -> Value {
        body(request, stream)
    }

    fn output(label: &str, request: &AiRequest<'_>, answer: Value) -> Result<AiOutput, AiError> {
        let usage = answer.get("usage");
        let count = |field: &str| {
            usage
                .and_then(|u| u.get(field))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let (prompt_tokens, completion_tokens) = (count("input_tokens"), count("output_tokens"));
        let blocks = answer
            .get("content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let text: String = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect();
        let tool_input = blocks
            .iter()
            .find(|b| {
                b.get("type").and_then(Value::as_str) == Some("tool_use")
                    && b.get("name").and_then(Value::as_str) == Some(TOOL)
            })
            .and_then(|b| b.get("input"))
            .cloned();
        let fail = |message: String| {
            let mut e = AiError::transient(message);
            e.usage = (prompt_tokens, completion_tokens);
            e
        };
        let (data, content) = match (request.schema, tool_input) {
            (Some(_), Some(input)) => {
                let text = input.to_string();
                (input, text)
            }
            // A model that answered in text instead of calling the tool may still have
            // written the JSON.
            (Some(_), None) => (parse_answer(&text).map_err(fail)?, text),
            (None, _) if blocks.is_empty() => {
                return Err(fail("the response has no content".to_string()));
            }
            (None, _) => (json!({ "content": text }), text),
        };
        Ok(AiOutput {
            data,
            content,
            provider: label.to_string(),
            model: request.model.to_string(),
            prompt_tokens,
            completion_tokens,
            raw: Some(answer),
        })
    }

    fn event(message: &mut Message, event: &Value) -> Result<Option<String>, AiError> {
        message.apply(event)
    }

    fn finish(message: Message, label: &str, request: &AiRequest<'_>) -> Result<AiOutput, AiError> {
        let answer = message.finish()?;
        request.exchange.received(answer.to_string().as_bytes());
        Anthropic::output(label, request, answer)
    }
}

/// A streamed message being put back together from its events.
#[derive(Default)]
pub struct Message {
    /// The `message` of `message_start`, with `content` and `usage` kept up to date.
    message: Option<Map<String, Value>>,
    /// Content blocks by index.
    blocks: Vec<Value>,
    stopped: bool,
}

impl Message {
    /// Takes one event; returns the text it adds to the answer, if any.
    fn apply(&mut self, event: &Value) -> Result<Option<String>, AiError> {
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "message_start" => {
                self.message = event.get("message").and_then(Value::as_object).cloned();
            }
            "content_block_start" => {
                if self.blocks.len() <= index {
                    self.blocks.resize(index + 1, Value::Null);
                }
                self.blocks[index] = event.get("content_block").cloned().unwrap_or_default();
            }
            "content_block_delta" => {
                let delta = event.get("delta").unwrap_or(&Value::Null);
                let Some(block) = self.blocks.get_mut(index) else {
                    return Err(AiError::transient(format!(
                        "the stream sent a delta for content block {index} before its start"
                    )));
                };
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    match block.get_mut("text") {
                        Some(Value::String(whole)) => whole.push_str(text),
                        _ => block["text"] = Value::String(text.to_string()),
                    }
                    return Ok(Some(text.to_string()));
                }
            }
            "message_delta" => {
                let message = self.message.get_or_insert_with(Map::new);
                if let Some(Value::Object(usage)) = event.get("usage") {
                    let total = message
                        .entry("usage")
                        .or_insert_with(|| json!({}))
                        .as_object_mut();
                    if let Some(total) = total {
                        total.extend(usage.clone());
                    }
                }
                if let Some(reason) = event.pointer("/delta/stop_reason") {
                    message.insert("stop_reason".into(), reason.clone());
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let said = event
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("error event in the stream");
                return Err(AiError::transient(format!("the stream failed: {said}")));
            }
            _ => {}
        }
        Ok(None)
    }

    /// The whole message, as the non-streamed API would have answered it.
    fn finish(self) -> Result<Value, AiError> {
        if !self.stopped {
            return Err(AiError::transient(
                "the stream ended before message_stop".to_string(),
            ));
        }
        let mut message = self.message.unwrap_or_default();
        let blocks = self.blocks.into_iter().filter(|b| !b.is_null()).collect();
        message.insert("content".into(), Value::Array(blocks));
        Ok(Value::Object(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Messages endpoint is `/v1/messages` under a root given as Anthropic's SDKs take
    /// it, and under one that already names `/v1`.
    #[test]
    fn messages_url_with_or_without_v1() {
        for (root, url) in [
            (
                "https://api.anthropic.com",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://api.anthropic.com/",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://api.anthropic.com/v1",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://api.anthropic.com/v1/",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://gw.example/anthropic",
                "https://gw.example/anthropic/v1/messages",
            ),
        ] {
            assert_eq!(messages_url(root), url, "{root}");
        }
    }

    /// The events of a streamed message (as Anthropic documents them) put back together:
    /// text from the deltas, input tokens from `message_start`, output tokens from
    /// `message_delta`; a stream cut before `message_stop` or carrying `error` fails.
    #[test]
    fn streamed_message_reassembles() {
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "content": [], "model": "claude",
                "usage": {"input_tokens": 25, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Hello"}}),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "!"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 15}}),
        ];
        let mut message = Message::default();
        let pieces: Vec<String> = events
            .iter()
            .filter_map(|e| message.apply(e).unwrap())
            .collect();
        assert_eq!(pieces, ["Hello", "!"]);
        let mut cut = Message::default();
        for e in &events {
            cut.apply(e).unwrap();
        }
        assert!(cut.finish().is_err(), "no message_stop");
        message.apply(&json!({"type": "message_stop"})).unwrap();
        let whole = message.finish().unwrap();
        assert_eq!(
            whole["content"],
            json!([{"type": "text", "text": "Hello!"}])
        );
        assert_eq!(
            whole["usage"],
            json!({"input_tokens": 25, "output_tokens": 15})
        );
        assert_eq!(whole["stop_reason"], "end_turn");

        let error = json!({"type": "error", "error": {"type": "overloaded_error",
            "message": "Overloaded"}});
        let e = Message::default().apply(&error).unwrap_err();
        assert!(
            e.retryable && e.message.contains("Overloaded"),
            "{}",
            e.message
        );
    }

    /// System messages and the prompt become the top-level `system`; the schema becomes a
    /// forced tool; parts and images are mapped; `max_tokens` is always set.
    #[test]
    fn request_body() {
        let messages = json!([
            {"role": "system", "content": "in French"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]},
            {"role": "assistant", "content": "une image"},
            {"role": "user", "content": "merci"}
        ]);
        let schema = json!({"type": "object"});
        let exchange = crate::ai::Exchange::default();
        let request = AiRequest::sample("claude-sonnet-4-5", &messages, Some(&schema), &exchange);
        let b = body(&request, false);
        assert_eq!(b["system"], "be brief\n\nin French");
        assert_eq!(b["max_tokens"], MAX_TOKENS);
        assert_eq!(b["messages"].as_array().unwrap().len(), 3);
        assert_eq!(
            b["messages"][0]["content"][0],
            json!({"type": "text", "text": "what is this?"})
        );
        assert_eq!(
            b["messages"][0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
        );
        assert_eq!(
            b["messages"][1],
            json!({"role": "assistant", "content": "une image"})
        );
        assert_eq!(b["tools"][0]["input_schema"], schema);
        assert_eq!(b["tool_choice"], json!({"type": "tool", "name": TOOL}));
    }
}
