//! JSON views of stored things: the wire form of catalog resources, requests, timelines
//! and dead letters. Stored types never derive serde; this is where they become JSON.

use serde_json::{Map, Value, json};

use crate::catalog::{ApiKey, Endpoint, ProviderCredential, StructuredOutput, Workflow};
use crate::clock::rfc3339_ms;
use crate::job::{DeadLetter, DeliveryOutcome, Request, Step};
use crate::store::Summary;

/// Stored JSON text as a value (`null` if it is not JSON, which stored text always is).
pub fn raw_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A recorded body: as JSON when it is JSON, else as text.
fn body_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn at(ms: u64) -> Value {
    Value::String(rfc3339_ms(ms))
}

fn opt_at(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, at)
}

pub fn workflow(w: &Workflow) -> Value {
    json!({
        "name": w.name,
        "event_name": w.event_name,
        "provider": w.provider,
        "model": w.model,
        "structured_output_id": w.structured_output_id,
        "fallbacks": w.fallbacks.iter().map(|(p, m)| json!({"provider": p, "model": m})).collect::<Vec<_>>(),
        "system_prompt": w.system_prompt,
        "mode": if w.testing { "testing" } else { "production" },
        "response_delay_ms": w.response_delay_ms,
        "callback_timeout_ms": w.callback_timeout_ms,
        "cache_fields": w.cache_fields,
        "description": w.description,
        "created_at": at(w.created_ms),
        "updated_at": at(w.updated_ms),
    })
}

pub fn structured_output(o: &StructuredOutput) -> Value {
    json!({
        "id": o.id,
        "name": o.name,
        "schema": raw_json(&o.schema),
        "sample_data": o.sample_data.as_deref().map(raw_json),
        "description": o.description,
        "created_at": at(o.created_ms),
    })
}

/// An endpoint; the secret only when `with_secret` (on creation and rotation).
pub fn endpoint(e: &Endpoint, with_secret: bool) -> Value {
    let mut v = json!({
        "id": e.id,
        "url": e.url,
        "description": e.description,
        "events": e.events,
        "created_at": at(e.created_ms),
        "status": if e.disabled.is_some() { "disabled" } else { "enabled" },
        "disabled_reason": e.disabled.as_ref().map(|(why, _)| why),
        "disabled_at": opt_at(e.disabled.as_ref().map(|(_, at)| *at)),
        "failing_since": opt_at(e.failing_since_ms),
    });
    if with_secret {
        v["secret"] = Value::String(e.secret.clone());
    }
    v
}

pub fn api_key(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "key": k.hint,
        "created_at": at(k.created_ms),
        "expires_at": opt_at(k.expires_ms),
    })
}

/// A provider's credentials: the key masked, never whole.
pub fn provider(c: &ProviderCredential) -> Value {
    json!({
        "provider": c.name,
        "kind": c.kind.as_str(),
        "base_url": c.base_url,
        "api_key": c.masked_key(),
        "timeout_ms": c.timeout_ms,
        "created_at": at(c.created_ms),
        "updated_at": at(c.updated_ms),
    })
}

/// One timeline entry: `{at, type, …fields}`.
pub fn step(at_ms: u64, step: &Step) -> Value {
    let mut v = match step {
        Step::Received { workflow } => json!({"type": "request_received", "workflow": workflow}),
        Step::AiAttempt {
            provider,
            model,
            error,
            http_status,
            duration_ms,
            prompt_tokens,
            completion_tokens,
            request_body,
            response_body,
        } => json!({
            "type": "ai_attempt",
            "provider": provider,
            "model": model,
            "status": if error.is_some() { "error" } else { "success" },
            "error": error,
            "http_status": http_status,
            "duration_ms": duration_ms,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "request_body": request_body.as_deref().map(body_json),
            "response_body": response_body.as_deref().map(body_json),
        }),
        Step::WebhookAttempt {
            webhook_id,
            endpoint_id,
            attempt,
            status,
            error,
            duration_ms,
            response_excerpt,
        } => json!({
            "type": "webhook_attempt",
            "webhook_id": webhook_id,
            "endpoint_id": endpoint_id,
            "attempt": attempt,
            "http_status": status,
            "error": error,
            "duration_ms": duration_ms,
            "response_excerpt": response_excerpt,
        }),
        Step::DeadLettered {
            webhook_id,
            endpoint_id,
            reason,
        } => json!({
            "type": "dead_lettered",
            "webhook_id": webhook_id,
            "endpoint_id": endpoint_id,
            "reason": reason,
        }),
        Step::Redriven {
            webhook_id,
            endpoint_id,
        } => json!({
            "type": "retried",
            "webhook_id": webhook_id,
            "endpoint_id": endpoint_id,
        }),
        Step::CallbackReceived { body } => {
            json!({"type": "callback_received", "body": raw_json(body)})
        }
        Step::CallbackError { error, message } => {
            json!({"type": "callback_error", "error": error, "message": message})
        }
        Step::CallbackTimeout { after_ms } => {
            json!({"type": "callback_timeout", "after_ms": after_ms})
        }
        Step::Pushed { status, sockets } => {
            json!({"type": "websocket_push", "status": status, "sockets": sockets})
        }
        Step::Transition { state } => json!({
            "type": "state",
            "state": state.as_str(),
            "failure": state.failure().map(|f| f.as_str()),
        }),
    };
    v["at"] = at(at_ms);
    v["at_ms"] = Value::from(at_ms);
    v
}

/// A request in the log (no timeline).
pub fn request_summary(r: &Summary) -> Value {
    json!({
        "channel_id": r.channel_id.to_string(),
        "workflow": r.workflow,
        "event_name": r.event_name,
        "status": r.state.as_str(),
        "failure": r.failure().map(|f| f.as_str()),
        "created_at": at(r.created_ms),
        "updated_at": at(r.updated_ms),
    })
}

/// A request with everything about it, and its timeline.
pub fn request(r: &Request, timeline: &[(u64, Step)]) -> Value {
    let mut v = request_summary(&Summary::of(r));
    let extra: Map<String, Value> = json!({
        "project_id": r.project_id.to_string(),
        "error": r.error_message,
        "provider": r.workflow.provider,
        "model": r.workflow.model,
        "messages": raw_json(&r.messages),
        "customer_data": raw_json(&r.customer_data),
        "webhook_url": r.webhook_url,
        "test_mode": r.test_mode,
        "ai_response": r.ai.as_ref().map(|ai| json!({
            "data": raw_json(&ai.data),
            "provider": ai.provider,
            "model": ai.model,
            "duration_ms": ai.duration_ms,
            "usage": {
                "prompt_tokens": ai.prompt_tokens,
                "completion_tokens": ai.completion_tokens,
                "total_tokens": ai.prompt_tokens + ai.completion_tokens,
            },
            "generated_at": at(ai.generated_ms),
        })),
        "ai_attempts": crate::payload::attempts(r),
        "callback": r.callback.as_ref().map(|c| json!({
            "data": raw_json(&c.data),
            "task_id": c.task_id,
            "metadata": c.metadata.as_deref().map(raw_json),
            "error": c.error.as_ref().map(|(e, m)| json!({"error": e, "message": m})),
            "received_at": at(c.received_ms),
        })),
        "callback_deadline": opt_at(r.callback_deadline_ms),
        "next_due": opt_at(r.due_ms),
        "deliveries": r.deliveries.iter().map(|d| {
            let attempts: Vec<Value> = timeline
                .iter()
                .filter(|(_, s)| matches!(s, Step::WebhookAttempt { webhook_id, .. } if *webhook_id == d.webhook_id))
                .map(|(at_ms, s)| step(*at_ms, s))
                .collect();
            json!({
                "webhook_id": d.webhook_id,
                "endpoint_id": d.endpoint_id,
                "url": d.url,
                "status": match d.outcome {
                    DeliveryOutcome::Pending => "pending",
                    DeliveryOutcome::Succeeded { .. } => "delivered",
                    DeliveryOutcome::DeadLettered { .. } => "dead_lettered",
                },
                "attempt_count": d.attempts,
                "next_attempt_at": opt_at(d.next_ms),
                "last_http_status": d.last_status,
                "last_error": d.last_error,
                "attempts": attempts,
            })
        }).collect::<Vec<_>>(),
        "timeline": timeline.iter().map(|(at_ms, s)| step(*at_ms, s)).collect::<Vec<_>>(),
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.extend(extra);
    }
    v
}

/// A dead-letter entry.
pub fn dead_letter(d: &DeadLetter) -> Value {
    json!({
        "webhook_id": d.webhook_id,
        "channel_id": d.channel_id.to_string(),
        "endpoint_id": d.endpoint_id,
        "url": d.url,
        "reason": d.reason,
        "dead_at": at(d.dead_ms),
        "payload": raw_json(&d.payload),
        "attempts": d.attempts.iter().map(|a| json!({
            "at": at(a.at_ms),
            "http_status": a.status,
            "error": a.error,
            "duration_ms": a.duration_ms,
            "response_excerpt": a.response_excerpt,
        })).collect::<Vec<_>>(),
    })
}
