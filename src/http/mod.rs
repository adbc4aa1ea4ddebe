//! The HTTP face of eddy on raw hyper: handlers parse a request, call the engine or the
//! catalog, and render the answer as JSON. No business rules live here, and nothing here
//! commits: the catalog and the engine return once what they did is durable.
//!
//! - [`listen`]: the accept loop and connection caps ([`limits`]); [`conn`]: one
//!   connection's clocks and the checks of request heads before hyper, which [`head`]
//!   makes.
//! - [`route`]: where a request goes (the `/api` alias), `/healthz`, `/metrics`, the
//!   console page; [`app`]: what handlers share, bearer tokens, the caller.
//! - [`v1`]: the `/v1` routes (the event-driven flow, and [`v1::sync`]: `/v1/ai` and
//!   `/v1/chat/completions`); [`console`]: the `/console` routes, a file per resource;
//!   [`admin`]: `/admin/projects`; [`upgrade`]: the WebSocket upgrade.
//! - [`input`]: every check of input (names, URLs, messages, ids, query strings, times);
//!   [`json`]: request bodies within their limits; [`views`]: JSON views of stored
//!   things; [`response`]: response bodies.
//! - [`error`]: the one place errors become statuses and the JSON envelope.
//!
//! Dependencies run one way, from routes down to `input`, `json`, `views`, `error` and
//! `response`; no module here uses one that uses it.

pub mod admin;
pub mod app;
pub mod conn;
pub mod console;
pub mod error;
pub mod head;
pub mod input;
pub mod json;
pub mod limits;
pub mod listen;
pub mod response;
pub mod route;
pub mod upgrade;
pub mod v1;
pub mod views;

pub use app::App;
pub use listen::serve;
pub use route::Face;
