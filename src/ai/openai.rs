//! OpenAI's chat completions, spoken to OpenAI and to every server that copies its API
//! (vLLM, llama.cpp, Ollama, Groq, Together, Mistral, …) at `{base_url}/chat/completions`.
//!
//! The workflow's `system_prompt` goes first as a `system` message; a structured output's
//! schema goes as `response_format: {type: "json_schema", …}` (non-strict: strict mode
//! refuses common schemas, and eddy checks the answer against the schema itself). Usage is
//! read from `usage`; streaming asks for `stream_options.include_usage` so the last chunk
//! carries it.

use serde_json::{Value, json};

use super::call::{self, Sse};
use super::schema::parse_answer;
use super::{AiError, AiOutput, AiRequest, BoxFuture, Deltas, Provider};

/// One OpenAI-compatible server with one key.
pub struct OpenAi {
    pub http: reqwest::Client,
    /// Name reported in `meta.provider` (the credential's name).
    pub label: String,
    pub base_url: String,
    pub api_key: Option<String>,
    /// The SSRF guard is on.
    pub guarded: bool,
}

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

impl OpenAi {
    fn url(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }

    fn post(&self) -> reqwest::RequestBuilder {
        let mut request = self.http.post(self.url());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        request
    }

    fn output(&self, request: &AiRequest<'_>, answer: Value) -> Result<AiOutput, AiError> {
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
            provider: self.label.clone(),
            model: request.model.to_string(),
            prompt_tokens,
            completion_tokens,
            raw: Some(answer),
        })
    }
}

impl Provider for OpenAi {
    fn generate<'a>(
        &'a self,
        request: &'a AiRequest<'a>,
    ) -> BoxFuture<'a, Result<AiOutput, AiError>> {
        Box::pin(async move {
            call::check_target(&self.url(), self.guarded)?;
            let sent = body(request, false);
            let answer = call::send_json(self.post(), &sent, request).await?;
            self.output(request, answer)
        })
    }

    fn stream<'a>(
        &'a self,
        request: &'a AiRequest<'a>,
        deltas: &'a Deltas,
    ) -> BoxFuture<'a, Result<AiOutput, AiError>> {
        Box::pin(async move {
            call::check_target(&self.url(), self.guarded)?;
            let streamed = body(request, true);
            let mut events = Sse::open(self.post(), &streamed, request).await?;
            let mut content = String::new();
            let mut usage = None;
            while let Some(event) = events.next_json().await? {
                if let Some(error) = event.get("error") {
                    let said = error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("error event in the stream");
                    return Err(AiError::transient(format!("the stream failed: {said}")));
                }
                if let Some(piece) = event
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                {
                    content.push_str(piece);
                    deltas.send(piece).await;
                }
                if let Some(u) = event.get("usage").filter(|u| u.is_object()) {
                    usage = Some(u.clone());
                }
            }
            request.exchange.received(content.as_bytes());
            Ok(AiOutput {
                data: data_of(request, &content)?,
                provider: self.label.clone(),
                model: request.model.to_string(),
                prompt_tokens: tokens(usage.as_ref(), "prompt_tokens"),
                completion_tokens: tokens(usage.as_ref(), "completion_tokens"),
                content,
                raw: None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The system prompt goes first, the schema as a json_schema response format, and a
    /// stream asks for usage.
    #[test]
    fn request_body() {
        let messages = json!([{"role": "user", "content": "hi"}]);
        let schema = json!({"type": "object"});
        let request = AiRequest {
            model: "gpt-4o",
            messages: &messages,
            system_prompt: Some("be brief"),
            schema: Some(&schema),
            sample_data: None,
            response_delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
            exchange: &crate::ai::Exchange::default(),
        };
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
