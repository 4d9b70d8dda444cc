//! Conditional updates: every record has a revision (`portico_store::Revision`), shown as its
//! `ETag`. An update is compare-and-set: with `If-Match`, it applies only to the revision the
//! client read (else 412); without, as the seed's clients send it, a lost race starts the
//! update over on the record as it is now. Either way no write is silently overwritten.

use http::{HeaderMap, HeaderValue, header};
use portico_store::{Fields, Kind, Revision, Store, StoreError};

use crate::error::ApiError;

/// How many times an update without `If-Match` starts over after losing a race.
const ATTEMPTS: u32 = 5;

/// Updates a record of `kind` as compare-and-set, honouring the request's `If-Match`:
/// `read` gives the record's key, its value and revision; `change` applies the update to the
/// value and gives the key to write it under and its fields. The write happens only if the
/// record is still at the revision read; a lost race starts over (or, with `If-Match`, is a
/// 412). `failed` maps any other store error. Returns the new `ETag` and the written value.
pub async fn update<T, F>(
    store: &dyn Store,
    kind: Kind,
    headers: &HeaderMap,
    mut read: impl FnMut() -> F,
    mut change: impl FnMut(&mut T) -> Result<(String, Fields), ApiError>,
    failed: impl Fn(StoreError, &str) -> ApiError,
) -> Result<(HeaderMap, T), ApiError>
where
    F: Future<Output = Result<(String, T, Revision), ApiError>>,
{
    let precondition = Precondition::of(headers);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (key, mut value, revision) = read().await?;
        precondition.check(revision)?;
        let (new_key, fields) = change(&mut value)?;
        match store.replace_if(kind, &key, &new_key, &fields, revision).await {
            Ok(revision) => return Ok((etag(revision), value)),
            Err(StoreError::Stale { .. }) => precondition.lost_race(attempt)?,
            Err(e) => return Err(failed(e, &new_key)),
        }
    }
}

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
struct Precondition(Option<Vec<String>>);

impl Precondition {
    /// The entity tags of `If-Match`, if the header is there (`*` matches any revision).
    fn of(headers: &HeaderMap) -> Self {
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
    fn check(&self, revision: Revision) -> Result<(), ApiError> {
        let current = format!("\"{revision}\"");
        match &self.0 {
            Some(tags) if !tags.iter().any(|t| t == "*" || *t == current) => Err(ApiError::PreconditionFailed),
            _ => Ok(()),
        }
    }

    /// After the `attempt`-th write lost a race: `Ok` to start over on the record as it is now
    /// (no `If-Match`, attempts left), else the 412.
    fn lost_race(&self, attempt: u32) -> Result<(), ApiError> {
        if self.0.is_none() && attempt < ATTEMPTS { Ok(()) } else { Err(ApiError::PreconditionFailed) }
    }
}
