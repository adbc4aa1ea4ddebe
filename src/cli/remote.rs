//! Operator commands against a running server over HTTP: `eddy dlq list|show|retry|purge`
//! and `eddy requests list|show`. Tables for people, `--json` for scripts.

use std::process::ExitCode;

use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::table;
use crate::job::Status;

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Base URL of the server
    #[arg(
        long,
        env = "EDDY_URL",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub url: String,
    /// API key of the project
    #[arg(long, env = "EDDY_API_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// Print the server's JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters, newest first
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue below this entry id
        #[arg(long)]
        before: Option<String>,
    },
    /// One dead letter with its payload and every attempt
    Show { id: String },
    /// Retry one entry, or every entry in a time range and/or for one endpoint
    Retry {
        /// The entry to retry; without it, --since/--until/--endpoint select a range
        id: Option<String>,
        /// Start of the range (RFC 3339 or Unix ms)
        #[arg(long)]
        since: Option<String>,
        /// End of the range (RFC 3339 or Unix ms)
        #[arg(long)]
        until: Option<String>,
        /// Only entries of this endpoint (wh_…)
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Delete one entry
    Purge { id: String },
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Requests, newest first
    List {
        /// Only requests with this status
        #[arg(long, value_parser = PossibleValuesParser::new(Status::ALL.map(Status::as_str)))]
        status: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue below this channel id
        #[arg(long)]
        before: Option<String>,
    },
    /// One request and its timeline
    Show { channel_id: String },
}

impl Remote {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let key = self
            .key
            .as_deref()
            .ok_or("no API key: pass --key or set EDDY_API_KEY")?;
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = reqwest::Client::new()
            .request(method, &url)
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = response.status();
        let value: Value = response
            .json()
            .await
            .map_err(|e| format!("{url}: answer is not JSON: {e}"))?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!(
                "{status}: {}",
                value["error"]["message"]
                    .as_str()
                    .unwrap_or("request failed")
            ))
        }
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            print!("{}", human(value));
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One table row per element of a listing's `data`.
fn rows(listing: &Value, cells: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    listing["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(cells)
        .collect()
}

/// A query string of the given pairs that have values.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// A time given as Unix ms or RFC 3339, as the server takes it.
fn time_arg(s: &str) -> Value {
    s.parse::<u64>().map_or_else(|_| json!(s), |ms| json!(ms))
}

/// One line per timeline entry: offset from the first, type, the details that matter.
pub fn timeline_lines(timeline: &Value) -> Vec<String> {
    let entries = timeline.as_array().cloned().unwrap_or_default();
    let first = entries
        .first()
        .and_then(|e| e["at_ms"].as_u64())
        .unwrap_or(0);
    entries
        .iter()
        .map(|e| {
            let offset = e["at_ms"].as_u64().unwrap_or(first).saturating_sub(first);
            let kind = e["type"].as_str().unwrap_or("?");
            let detail = match kind {
                "request_received" => format!("workflow {}", text(&e["workflow"])),
                "ai_attempt" => format!(
                    "{} {} {} in {} ms{}",
                    text(&e["provider"]),
                    text(&e["model"]),
                    text(&e["status"]),
                    text(&e["duration_ms"]),
                    e["error"]
                        .as_str()
                        .map(|x| format!(": {x}"))
                        .unwrap_or_default()
                ),
                "webhook_attempt" => format!(
                    "{} attempt {} → {} in {} ms{}",
                    text(&e["endpoint_id"]),
                    text(&e["attempt"]),
                    e["http_status"]
                        .as_u64()
                        .map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}")),
                    text(&e["duration_ms"]),
                    e["error"]
                        .as_str()
                        .map(|x| format!(" ({x})"))
                        .unwrap_or_default()
                ),
                "dead_lettered" => format!("{}: {}", text(&e["endpoint_id"]), text(&e["reason"])),
                "retried" => format!("{} {}", text(&e["endpoint_id"]), text(&e["webhook_id"])),
                "callback_error" => format!("{}: {}", text(&e["error"]), text(&e["message"])),
                "callback_timeout" => format!("after {} ms", text(&e["after_ms"])),
                "websocket_push" => {
                    format!(
                        "{} to {} socket(s)",
                        text(&e["status"]),
                        text(&e["sockets"])
                    )
                }
                "state" => match e["failure"].as_str() {
                    Some(f) => format!("failed ({f})"),
                    None => text(&e["state"]),
                },
                _ => String::new(),
            };
            format!("+{offset:>6} ms  {kind:<18} {detail}")
        })
        .collect()
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eddy: {e}");
            ExitCode::FAILURE
        }
    }
}

pub async fn dlq(remote: Remote, command: DlqCommand) -> ExitCode {
    use reqwest::Method;
    let result = async {
        match command {
            DlqCommand::List { limit, before } => {
                let path = format!(
                    "/console/dlq{}",
                    query(&[("limit", Some(limit.to_string())), ("before", before)])
                );
                let v = remote.call(Method::GET, &path, None).await?;
                remote.print(&v, |v| {
                    let rows = rows(v, |d| {
                        vec![
                            text(&d["id"]),
                            text(&d["dead_at"]),
                            text(&d["endpoint_id"]),
                            d["attempts"].as_array().map_or(0, Vec::len).to_string(),
                            text(&d["channel_id"]),
                            text(&d["reason"]),
                        ]
                    });
                    table::render(
                        &["ID", "DEAD AT", "ENDPOINT", "ATTEMPTS", "CHANNEL", "REASON"],
                        &rows,
                    )
                });
            }
            DlqCommand::Show { id } => {
                let v = remote.call(Method::GET, &format!("/console/dlq/{id}"), None).await?;
                remote.print(&v, |d| {
                    let mut out = format!(
                        "{}\n  webhook-id  {}\n  endpoint    {} {}\n  channel     {} ({})\n  dead at     {}\n  reason      {}\n\n",
                        text(&d["id"]),
                        text(&d["webhook_id"]),
                        text(&d["endpoint_id"]),
                        text(&d["url"]),
                        text(&d["channel_id"]),
                        text(&d["request"]["status"]),
                        text(&d["dead_at"]),
                        text(&d["reason"]),
                    );
                    let rows: Vec<Vec<String>> = d["attempts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            vec![
                                text(&a["at"]),
                                text(&a["http_status"]),
                                text(&a["duration_ms"]),
                                text(&a["error"]),
                                a["response_excerpt"].as_str().unwrap_or("").replace('\n', " "),
                            ]
                        })
                        .collect();
                    out.push_str(&table::render(
                        &["AT", "STATUS", "MS", "ERROR", "RESPONSE"],
                        &rows,
                    ));
                    out.push_str(&format!(
                        "\npayload:\n{}\n",
                        serde_json::to_string_pretty(&d["payload"]).unwrap_or_default()
                    ));
                    out
                });
            }
            DlqCommand::Retry {
                id: Some(id),
                since: None,
                until: None,
                endpoint: None,
            } => {
                let v = remote
                    .call(Method::POST, &format!("/console/dlq/{id}/retry"), None)
                    .await?;
                remote.print(&v, |v| {
                    format!("retried {} (channel {})\n", text(&v["id"]), text(&v["channel_id"]))
                });
            }
            DlqCommand::Retry {
                id: Some(_), ..
            } => return Err("give an entry id or a range (--since/--until/--endpoint), not both".into()),
            DlqCommand::Retry {
                id: None,
                since,
                until,
                endpoint,
            } => {
                let mut body = json!({});
                if let Some(s) = since {
                    body["since"] = time_arg(&s);
                }
                if let Some(u) = until {
                    body["until"] = time_arg(&u);
                }
                if let Some(e) = endpoint {
                    body["webhook_id"] = json!(e);
                }
                let v = remote.call(Method::POST, "/console/dlq/retry", Some(body)).await?;
                remote.print(&v, |v| {
                    let retried = v["retried"].as_array().map_or(0, Vec::len);
                    let mut out = format!("retried {retried} entries\n");
                    for s in v["skipped"].as_array().into_iter().flatten() {
                        out.push_str(&format!("skipped {}: {}\n", text(&s["id"]), text(&s["reason"])));
                    }
                    out
                });
            }
            DlqCommand::Purge { id } => {
                let v = remote
                    .call(Method::DELETE, &format!("/console/dlq/{id}"), None)
                    .await?;
                remote.print(&v, |v| format!("purged {}\n", text(&v["id"])));
            }
        }
        Ok(())
    }
    .await;
    finish(result)
}

pub async fn requests(remote: Remote, command: RequestsCommand) -> ExitCode {
    use reqwest::Method;
    let result = async {
        match command {
            RequestsCommand::List {
                status,
                workflow,
                limit,
                before,
            } => {
                let path = format!(
                    "/console/requests{}",
                    query(&[
                        ("status", status),
                        ("workflow", workflow),
                        ("limit", Some(limit.to_string())),
                        ("before", before),
                    ])
                );
                let v = remote.call(Method::GET, &path, None).await?;
                remote.print(&v, |v| {
                    let rows = rows(v, |r| {
                        vec![
                            text(&r["channel_id"]),
                            text(&r["workflow"]),
                            text(&r["status"]),
                            text(&r["failure"]),
                            text(&r["created_at"]),
                        ]
                    });
                    table::render(
                        &["CHANNEL", "WORKFLOW", "STATUS", "FAILURE", "CREATED"],
                        &rows,
                    )
                });
            }
            RequestsCommand::Show { channel_id } => {
                let v = remote
                    .call(
                        Method::GET,
                        &format!("/console/requests/{channel_id}"),
                        None,
                    )
                    .await?;
                remote.print(&v, |r| {
                    let mut out = format!(
                        "{}  {}  {}{}\n  created   {}\n  provider  {} / {}\n\ntimeline:\n",
                        text(&r["channel_id"]),
                        text(&r["workflow"]),
                        text(&r["status"]),
                        r["failure"]
                            .as_str()
                            .map(|f| format!(" ({f})"))
                            .unwrap_or_default(),
                        text(&r["created_at"]),
                        text(&r["provider"]),
                        text(&r["model"]),
                    );
                    for line in timeline_lines(&r["timeline"]) {
                        out.push_str("  ");
                        out.push_str(&line);
                        out.push('\n');
                    }
                    out
                });
            }
        }
        Ok(())
    }
    .await;
    finish(result)
}
