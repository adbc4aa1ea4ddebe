//! OpenAI's chat completions, spoken to OpenAI and to every server that copies its API
//! (vLLM, llama.cpp, Ollama, Groq, Together, Mistral, …) at `{base_url}/chat/completions`.
//!
//! The workflow's `system_prompt` goes first as a `system` message; a structured output's
//! schema goes as `response_format: {type: "json_schema", …}` (non-strict: strict mode
//! refuses common schemas, and eddy checks the answer against the schema itself). Usage is
//! read from `usage`; streaming asks for `stream_options.include_usage` so the last chunk
//! carries it.

use reqwest::RequestBuilder;
use serde_json::{Value, json};

use super::call::Wire;
use super::schema::parse_answer;
use super::{AiError, AiOutput, AiRequest};

/// OpenAI's wire format; the provider is `call::Http<OpenAi>`.
pub struct OpenAi;

/// The request body for `request`.
pub fn body(request: &AiRequest<'_>, stream: bool) -> Value {
    let mut messages = Vec::new();
    if let Some(prompt) = request.system_prompt {
        messages.push(json!({"role": "system", "content": prompt}));
    }
    if let Some(list) = request.messages.as_array() {
        messages.extend(list.iter().cloned());
    }
    let mut body = json!({"model": request.model, "messages": messages});
    if let Some(schema) = request.schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "structured_output", "schema": schema, "strict": false},
        });
    }
    if stream {
        body["stream"] = Value::Bool(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The answer's `data`: the parsed JSON for a structured output, else `{content}`.
fn data_of(request: &AiRequest<'_>, content: &str) -> Result<Value, AiError> {
    match request.schema {
        Some(_) => parse_answer(content).map_err(AiError::transient),
        None => Ok(json!({ "content": content })),
    }
}

fn tokens(usage: Option<&Value>, field: &str) -> u64 {
    usage
        .and_then(|u| u.get(field))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A streamed answer: the text so far and the usage of the last chunk that carried one.
#[derive(Default)]
pub struct Chunks {
    content: String,
    usage: Option<Value>,
}

impl Wire for OpenAi {
    type Stream = Chunks;

    fn url(base_url: &str) -> String {
        format!("{}/chat/completions", base_url.trim_end_matches('/'))
    }

    fn headers(post: RequestBuilder, key: Option<&str>) -> RequestBuilder {
        match key {
            Some(key) => post.bearer_auth(key),
            None => post,
        }
    }

    fn body(request: &AiRequest<'_>, stream: bool) -> Value {
        body(request, stream)
    }

    fn output(label: &str, request: &AiRequest<'_>, answer: Value) -> Result<AiOutput, AiError> {
        let message = answer.pointer("/choices/0/message");
        let content = message
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str);
        let usage = answer.get("usage");
        let (prompt_tokens, completion_tokens) = (
            tokens(usage, "prompt_tokens"),
            tokens(usage, "completion_tokens"),
        );
        let Some(content) = content else {
            let refusal = message
                .and_then(|m| m.get("refusal"))
                .and_then(Value::as_str);
            let mut error = AiError::transient(match refusal {
                Some(r) => format!("the model refused: {r}"),
                None => "the response has no choices[0].message.content".to_string(),
            });
            error.usage = (prompt_tokens, completion_tokens);
            return Err(error);
        };
        let data = data_of(request, content).map_err(|mut e| {
            e.usage = (prompt_tokens, completion_tokens);
            e
        })?;
        Ok(AiOutput {
            data,
            content: content.to_string(),
            provider: label.to_string(),
            model: request.model.to_string(),
            prompt_tokens,
            completion_tokens,
            raw: Some(answer),
        })
    }

    fn event(stream: &mut Chunks, event: &Value) -> Result<Option<String>, AiError> {
        if let Some(error) = event.get("error") {
            let said = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error event in the stream");
            return Err(AiError::transient(format!("the stream failed: {said}")));
        }
        if let Some(u) = event.get("usage").filter(|u| u.is_object()) {
            stream.usage = Some(u.clone());
        }
        let piece = event
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str);
        if let Some(piece) = piece {
            stream.content.push_str(piece);
        }
        Ok(piece.map(str::to_string))
    }

    fn finish(stream: Chunks, label: &str, request: &AiRequest<'_>) -> Result<AiOutput, AiError> {
        request.exchange.received(stream.content.as_bytes());
        let usage = stream.usage.as_ref();
        Ok(AiOutput {
            data: data_of(request, &stream.content)?,
            provider: label.to_string(),
            model: request.model.to_string(),
            prompt_tokens: tokens(usage, "prompt_tokens"),
            completion_tokens: tokens(usage, "completion_tokens"),
            content: stream.content,
            raw: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system prompt goes first, the schema as a json_schema response format, and a
    /// stream asks for usage.
    #[test]
    fn request_body() {
        let messages = json!([{"role": "user", "content": "hi"}]);
        let schema = json!({"type": "object"});
        let exchange = crate::ai::Exchange::default();
        let request = AiRequest::sample("gpt-4o", &messages, Some(&schema), &exchange);
        let b = body(&request, true);
        assert_eq!(b["model"], "gpt-4o");
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(b["messages"][1], json!({"role": "user", "content": "hi"}));
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["schema"], schema);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
    }
}
