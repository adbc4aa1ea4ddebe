//! The library's error type: what can go wrong when serving a request, in terms a client
//! can act on. `http::error` is the one place that maps it to a status code and the JSON
//! error envelope.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is wrong; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("workflow '{0}' not found")]
    WorkflowNotFound(String),
    /// A sync call (`/v1/ai`, `/v1/chat/completions`) on an event-driven workflow.
    #[error("{0}")]
    ModelNotSupported(String),
    /// A callback for a request that already ended (or was already called back).
    #[error("{0}")]
    AlreadyCompleted(String),
    /// The resource exists, or the request is in a state that forbids this.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot read or write; nothing was acknowledged.
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        tracing::error!(error = %e, "store failure");
        Error::Unavailable(format!("the store is unavailable: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;
