//! What each `/console` resource's routes get: the request's caller, method and path.

use std::sync::Arc;

use hyper::Method;

use crate::catalog::{ApiKey, Catalog, Project};
use crate::engine::Engine;
use crate::http::app::App;
use crate::http::error::ApiError;

/// A `/console` request whose caller is known: what each resource's routes get.
pub(super) struct Cx<'a> {
    pub app: &'a App,
    pub method: Method,
    /// The path after `/console/`, for a 404's message.
    pub path: String,
    pub key: Arc<ApiKey>,
    pub project: Arc<Project>,
}

impl Cx<'_> {
    pub fn engine(&self) -> &Engine {
        &self.app.engine
    }

    pub fn catalog(&self) -> &Catalog {
        self.app.engine.catalog()
    }

    pub fn config(&self) -> &crate::Config {
        self.app.engine.config()
    }

    /// The 404 for a path that is no route.
    pub fn no_route(&self) -> ApiError {
        ApiError::no_route(&self.method, &format!("/console/{}", self.path))
    }
}
