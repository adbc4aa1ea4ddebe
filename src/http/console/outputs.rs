//! `/console/structured-outputs`: list, create (the schema must be a JSON Schema object,
//! and its `sample_data` valid against it), show, delete (refused while a workflow uses it).

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::{Value, json};

use super::context::Cx;
use crate::catalog::{CatalogError, Resource, StructuredOutput};
use crate::clock::now_ms;
use crate::http::error::{Answer, ApiError};
use crate::http::input::check_name;
use crate::http::json::read_json;
use crate::http::response::{created, ok};
use crate::http::views;
use crate::secret;

pub(super) async fn route(cx: &Cx<'_>, request: Request<Incoming>, tail: &[&str]) -> Answer {
    let catalog = cx.catalog();
    match (&cx.method, tail) {
        (&Method::GET, []) => {
            let all = catalog.structured_outputs(&cx.project.id);
            let data: Vec<_> = all.iter().map(|o| views::structured_output(o)).collect();
            Ok(ok(&json!({ "data": data })))
        }
        (&Method::POST, []) => create(cx, request).await,
        (&Method::GET, [id]) => {
            let output = catalog
                .structured_output(&cx.project.id, id)
                .ok_or_else(|| CatalogError::not_found(Resource::StructuredOutput, *id))?;
            Ok(ok(&views::structured_output(&output)))
        }
        (&Method::DELETE, [id]) => {
            catalog.delete_structured_output(&cx.project.id, id).await?;
            Ok(ok(&json!({ "deleted": true, "id": id })))
        }
        (_, [] | [_]) => Err(ApiError::method_not_allowed()),
        _ => Err(cx.no_route()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputBody {
    name: String,
    schema: Value,
    #[serde(default)]
    sample_data: Option<Value>,
    #[serde(default)]
    description: Option<String>,
}

async fn create(cx: &Cx<'_>, request: Request<Incoming>) -> Answer {
    let body: OutputBody = read_json(request, cx.config()).await?;
    check_name("name", &body.name)?;
    if !body.schema.is_object() {
        return Err(ApiError::invalid("schema: must be a JSON Schema object"));
    }
    if let Some(sample) = &body.sample_data
        && !sample.is_object()
    {
        return Err(ApiError::invalid("sample_data: must be a JSON object"));
    }
    crate::ai::schema::check_output(&body.schema, body.sample_data.as_ref())
        .map_err(ApiError::invalid)?;
    let output = StructuredOutput {
        id: secret::new_id("schema"),
        project: cx.project.id,
        name: body.name,
        schema: body.schema.to_string(),
        sample_data: body.sample_data.map(|s| s.to_string()),
        description: body.description,
        created_ms: now_ms(),
    };
    let saved = cx.catalog().create_structured_output(output).await?;
    Ok(created(&views::structured_output(&saved)))
}
