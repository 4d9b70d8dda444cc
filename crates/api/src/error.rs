//! The API's errors and their one mapping to the wire: the seed's `{name, message, keys?}`
//! with its names and statuses. Internals are logged, never shown.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
pub use portico_model::FieldError;
use portico_model::report::chain;
use portico_store::{Kind, StoreError};
use serde::Serialize;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Missing, wrong, expired or revoked credentials.
    #[error("Invalid Credentials, login failed.")]
    LoginFailed,
    /// Authenticated, but the role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The record does not exist.
    #[error("{kind}:{key} does not exist")]
    NotFound {
        /// The seed's model name.
        kind: &'static str,
        /// The key asked for.
        key: String,
    },
    /// The name is taken.
    #[error("{kind}:{key} already exists")]
    NameUsed {
        /// The seed's model name.
        kind: &'static str,
        /// The key in use.
        key: String,
        /// The field holding it.
        field: &'static str,
    },
    /// Fields failed validation.
    #[error("{}", summary(.0))]
    Validation(Vec<FieldError>),
    /// The body is not JSON (or not a JSON object).
    #[error("{0}")]
    Malformed(String),
    /// The body is not declared as JSON (`Content-Type: application/json`).
    #[error("the request body must be JSON (Content-Type: application/json)")]
    NotJson,
    /// `If-Match` names another revision: the record changed since the caller read it.
    #[error("the record changed since it was read (If-Match does not match its ETag)")]
    PreconditionFailed,
    /// Too many attempts; try again after this many seconds.
    #[error("too many attempts, try again in {0} seconds")]
    TooManyRequests(u64),
    /// The route does not exist.
    #[error("Page not found")]
    RouteNotFound,
    /// The route exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The feature this route needs is not in this version.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A certificate authority (or another service this route needs) failed.
    #[error("{0}")]
    Upstream(String),
    /// A DNS provider's API failed (not a refusal of the credentials); its message.
    #[error("DNS API Error {0}")]
    DnsApi(String),
    /// The store failed (or lost its identity: `StoreIdentityLost`, with what to do).
    #[error("{}", store_message(.0))]
    Store(#[source] StoreError),
    /// Something else went wrong inside.
    #[error("internal error")]
    Internal(&'static str),
}

fn store_message(e: &StoreError) -> String {
    match e {
        StoreError::IdentityLost | StoreError::TooLarge { .. } => e.to_string(),
        StoreError::Corrupt { kind, key, source } => {
            format!("the stored {kind} {key} cannot be used ({source}): delete it and add it again")
        }
        _ => "the store is unavailable".to_owned(),
    }
}

/// A field's error as a sentence: its text with a full stop, unless it ends a sentence
/// already (a provider's own words may).
fn sentence(e: &FieldError) -> String {
    let text = e.to_string();
    if text.ends_with(['.', '!', '?']) { text } else { format!("{text}.") }
}

fn summary(errors: &[FieldError]) -> String {
    errors.iter().map(sentence).collect::<Vec<_>>().join(" ")
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// An error as the API sends it: `name` is the seed's error name (`LoginFailed`,
/// `Forbidden`, `EntryNotFound`, `EntryNameUsed`, `ObjectValidateError`, `SyntaxError`,
/// `TooManyRequests`, ...).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    name: &'static str,
    message: String,
    /// With `ObjectValidateError` and `EntryNameUsed`: one entry per field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<FieldProblem>>,
}

/// One field at fault in a 409 or 422: the field, with the seed's spelling, and what is
/// wrong with it, as a sentence.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    key: &'static str,
    message: String,
}

impl FieldProblem {
    fn of(e: &FieldError) -> Self {
        Self { key: e.field(), message: sentence(e) }
    }
}

impl ApiError {
    /// A store write's error: a key already taken is the seed's `EntryNameUsed`, naming the
    /// field that holds the key; anything else is a store error.
    pub fn from_write(e: StoreError, kind: Kind, key: &str, field: &'static str) -> Self {
        match e {
            StoreError::Conflict { .. } => Self::NameUsed { kind: kind.name(), key: key.to_owned(), field },
            other => other.into(),
        }
    }

    /// The seed's error name and the status.
    pub fn name_and_status(&self) -> (&'static str, StatusCode) {
        match self {
            Self::LoginFailed => ("LoginFailed", StatusCode::UNAUTHORIZED),
            Self::Forbidden(_) => ("Forbidden", StatusCode::FORBIDDEN),
            Self::NotFound { .. } => ("EntryNotFound", StatusCode::NOT_FOUND),
            Self::NameUsed { .. } => ("EntryNameUsed", StatusCode::CONFLICT),
            Self::Validation(_) => ("ObjectValidateError", StatusCode::UNPROCESSABLE_ENTITY),
            Self::Malformed(_) => ("SyntaxError", StatusCode::BAD_REQUEST),
            Self::NotJson => ("UnsupportedMediaType", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            Self::TooManyRequests(_) => ("TooManyRequests", StatusCode::TOO_MANY_REQUESTS),
            Self::PreconditionFailed => ("PreconditionFailed", StatusCode::PRECONDITION_FAILED),
            Self::RouteNotFound => ("Error", StatusCode::NOT_FOUND),
            Self::MethodNotAllowed => ("MethodNotAllowed", StatusCode::METHOD_NOT_ALLOWED),
            Self::Unavailable(_) => ("NotImplemented", StatusCode::NOT_IMPLEMENTED),
            Self::Upstream(_) => ("UpstreamError", StatusCode::BAD_GATEWAY),
            // The seed's name and status for a provider's failure.
            Self::DnsApi(_) => ("OtherDnsApiError", StatusCode::FAILED_DEPENDENCY),
            Self::Store(StoreError::IdentityLost) => ("StoreIdentityLost", StatusCode::SERVICE_UNAVAILABLE),
            Self::Store(StoreError::TooLarge { .. }) => ("ObjectValidateError", StatusCode::UNPROCESSABLE_ENTITY),
            Self::Store(StoreError::Corrupt { .. }) => ("UnreadableRecord", StatusCode::UNPROCESSABLE_ENTITY),
            Self::Store(_) => ("StoreUnavailable", StatusCode::SERVICE_UNAVAILABLE),
            Self::Internal(_) => ("InternalError", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (name, status) = self.name_and_status();
        match &self {
            // Said once, when it was found, by the store.
            Self::Store(StoreError::IdentityLost | StoreError::TooLarge { .. }) => {}
            Self::Store(e) => tracing::error!(error = %chain(e), "store error in an API request"),
            Self::Internal(what) => tracing::error!(what, "internal error in an API request"),
            _ => {}
        }
        let keys = match &self {
            Self::Validation(errors) => Some(errors.iter().map(FieldProblem::of).collect()),
            Self::NameUsed { field, .. } => Some(vec![FieldProblem { key: field, message: self.to_string() }]),
            _ => None,
        };
        let mut response = (status, Json(ErrorBody { name, message: self.to_string(), keys })).into_response();
        if let Self::TooManyRequests(seconds) = self
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_is_one_sentence() {
        let ours = FieldError::refused("name", "name must be 1 to 100 characters");
        let theirs = FieldError::refused("token", "Cloudflare refused the credentials: Invalid API Token.");
        assert_eq!(sentence(&ours), "name must be 1 to 100 characters.");
        assert_eq!(sentence(&theirs), "Cloudflare refused the credentials: Invalid API Token.");
        let both = summary(&[ours, theirs]);
        assert_eq!(both, "name must be 1 to 100 characters. Cloudflare refused the credentials: Invalid API Token.");
    }
}
