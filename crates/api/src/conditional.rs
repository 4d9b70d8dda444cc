//! Conditional updates: every record has a revision (`portico_store::Revision`), shown as its
//! `ETag`. An update is compare-and-set: with `If-Match`, it applies only to the revision the
//! client read (else 412); without, as the seed's clients send it, a lost race starts the
//! update over on the record as it is now. Either way no write is silently overwritten.

use http::{HeaderMap, HeaderValue, header};
use portico_store::Revision;

use crate::error::ApiError;

/// How many times an update without `If-Match` starts over after losing a race.
const ATTEMPTS: u32 = 5;

/// The `ETag` header for a revision: `"<revision>"`.
pub fn etag(revision: Revision) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        headers.insert(header::ETAG, value);
    }
    headers
}

/// What a request's `If-Match` asks for.
#[derive(Debug)]
pub struct Precondition(Option<Vec<String>>);

impl Precondition {
    /// The entity tags of `If-Match`, if the header is there (`*` matches any revision).
    pub fn of(headers: &HeaderMap) -> Self {
        let tags: Vec<String> = headers
            .get_all(header::IF_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        Self((!tags.is_empty()).then_some(tags))
    }

    /// 412 unless the record, at `revision`, is what the client read.
    pub fn check(&self, revision: Revision) -> Result<(), ApiError> {
        let current = format!("\"{revision}\"");
        match &self.0 {
            Some(tags) if !tags.iter().any(|t| t == "*" || *t == current) => Err(ApiError::PreconditionFailed),
            _ => Ok(()),
        }
    }

    /// After the `attempt`-th write lost a race: `Ok` to start over on the record as it is now
    /// (no `If-Match`, attempts left), else the 412.
    pub fn lost_race(&self, attempt: u32) -> Result<(), ApiError> {
        if self.0.is_none() && attempt < ATTEMPTS { Ok(()) } else { Err(ApiError::PreconditionFailed) }
    }
}
