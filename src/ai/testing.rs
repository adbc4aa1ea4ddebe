//! ModelRiver's test mode: no model is called. After `response_delay_ms` the answer is the
//! structured output's `sample_data`, or `{"content": <the last user message>}` when there
//! is none, reported as provider `Testing`, model `test-mode`, zero tokens. Nothing is
//! sent anywhere, so its timeline attempts carry no request or response body (the answer
//! is the request's result).

use super::{AiError, AiOutput, AiRequest, BoxFuture, Provider, last_user_message};

/// The provider name that selects test mode.
pub const NAME: &str = "testing";
/// `meta.provider` of a test-mode result.
pub const PROVIDER_LABEL: &str = "Testing";
/// `meta.model` of a test-mode result.
pub const MODEL_LABEL: &str = "test-mode";

pub struct Testing;

impl Provider for Testing {
    fn generate<'a>(
        &'a self,
        request: &'a AiRequest<'a>,
    ) -> BoxFuture<'a, Result<AiOutput, AiError>> {
        Box::pin(async move {
            if !request.response_delay.is_zero() {
                tokio::time::sleep(request.response_delay).await;
            }
            let (data, content) = match request.sample_data.map(serde_json::from_str) {
                Some(Ok(sample)) => {
                    let sample: serde_json::Value = sample;
                    let text = sample.to_string();
                    (sample, text)
                }
                Some(Err(e)) => {
                    return Err(AiError::fatal(format!(
                        "sample_data is not valid JSON: {e}"
                    )));
                }
                None => {
                    let echo = last_user_message(request.messages);
                    (serde_json::json!({ "content": echo }), echo)
                }
            };
            Ok(AiOutput {
                data,
                content,
                raw: None,
                provider: PROVIDER_LABEL.to_string(),
                model: MODEL_LABEL.to_string(),
                prompt_tokens: 0,
                completion_tokens: 0,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        messages: &'a serde_json::Value,
        sample: Option<&'a str>,
        exchange: &'a crate::ai::Exchange,
    ) -> AiRequest<'a> {
        AiRequest {
            system_prompt: None,
            sample_data: sample,
            ..AiRequest::sample("m", messages, None, exchange)
        }
    }

    /// Without sample data the answer echoes the last user message; with it, the sample.
    #[tokio::test]
    async fn echoes_or_returns_sample() {
        let messages = serde_json::json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]}
        ]);
        let out = Testing
            .generate(&request(&messages, None, &Default::default()))
            .await
            .unwrap();
        assert_eq!(out.data, serde_json::json!({"content": "second"}));
        assert_eq!(out.content, "second");
        assert_eq!(
            (out.provider.as_str(), out.model.as_str()),
            ("Testing", "test-mode")
        );
        let out = Testing
            .generate(&request(
                &messages,
                Some(r#"{"title":"T"}"#),
                &Default::default(),
            ))
            .await
            .unwrap();
        assert_eq!(out.data, serde_json::json!({"title": "T"}));
        assert_eq!(out.content, r#"{"title":"T"}"#);
    }
}
