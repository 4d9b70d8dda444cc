//! `/api/stream…`: forwarded TCP and UDP ports (admins). A stream's listening address may not
//! be one of this node's listeners, nor another stream's, of the same protocol.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use http::HeaderMap;
use portico_model::FieldError;
use portico_model::stream::{Protocol, Stream};
use portico_store::{Kind, Revision, StoreError};
use serde_json::Value;

use crate::auth::{self, Caller};
use crate::conditional::{self, etag};
use crate::error::ApiError;
use crate::json::JsonObject;
use crate::openapi as doc;
use crate::state::Api;
use crate::wire::{Results, Written};

/// `GET /api/stream`: every stream.
#[utoipa::path(get, path = "/api/stream", tag = "streams",
    responses((status = 200, body = doc::Results<Vec<doc::StreamView>>), doc::AuthErrors),
    security(("token" = []), ("bearer" = [])))]
pub async fn list(State(api): State<Api>, caller: Caller) -> Result<Json<Results<Vec<Value>>>, ApiError> {
    caller.require_admin()?;
    let mut streams = Vec::new();
    for (id, fields) in api.store.records(Kind::Stream).await? {
        match Stream::from_fields(&fields) {
            Ok(stream) => streams.push(stream.view(&id)),
            Err(e) => tracing::warn!(stream = %id, error = %e, "a stream record does not parse"),
        }
    }
    streams.sort_by(|a, b| a["listen"].as_str().cmp(&b["listen"].as_str()));
    Ok(Json(Results::new(streams)))
}

/// `POST /api/stream {listen, protocol, targets, balance, allow, deny, proxyProtocol}`: a new
/// stream, listening from the moment it is stored on every node that proxies.
#[utoipa::path(post, path = "/api/stream", tag = "streams", request_body = doc::NewStream,
    responses((status = 200, body = doc::StreamView), doc::AuthErrors, doc::InputErrors),
    security(("token" = []), ("bearer" = [])))]
pub async fn create(
    State(api): State<Api>,
    caller: Caller,
    body: JsonObject,
) -> Result<Json<Written<Value>>, ApiError> {
    caller.require_admin()?;
    let stream =
        Stream::from_json(&body.0, &caller.username, portico_store::now_ms() as i64).map_err(ApiError::Validation)?;
    let id = auth::new_token()?[..16].to_owned();
    locked(&api, async || {
        free(&api, &stream, None).await?;
        Ok(api.store.create(Kind::Stream, &id, &stream.to_fields()).await?)
    })
    .await?;
    Ok(Json(Written::new(stream.view(&id), format!("Stream {id} on {} added.", stream.listen))))
}

/// How long the streams lock lives, and how long a write waits for another node's.
const LOCK_TTL: Duration = Duration::from_secs(10);
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Runs a stream write under the streams lock (across the cluster): two API calls cannot
/// both find an address free and both take it.
async fn locked<T>(api: &Api, write: impl AsyncFnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
    let lease = crate::state::lock(api, &portico_store::keys::streams_lock(), LOCK_TTL, LOCK_WAIT).await?;
    let result = write().await;
    if let Err(e) = api.store.release(&lease).await {
        tracing::warn!(error = %e, "cannot release the streams lock; it expires by itself");
    }
    result
}

/// `GET /api/stream/{id}`, with its revision as the `ETag`.
#[utoipa::path(get, path = "/api/stream/{id}", tag = "streams", params(("id" = String, Path)),
    responses((status = 200, body = doc::Results<doc::StreamView>, headers(("ETag" = String, description = "The stream's revision, for `If-Match` on a later update"))), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = [])))]
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(HeaderMap, Json<Results<Value>>), ApiError> {
    caller.require_admin()?;
    let (_, stream, revision) = stored(&api, &id).await?;
    Ok((etag(revision), Json(Results::new(stream.view(&id)))))
}

/// `PUT /api/stream/{id}`: only the fields given change; compare-and-set as hosts' updates
/// (`If-Match`, else a lost race starts over).
#[utoipa::path(put, path = "/api/stream/{id}", tag = "streams",
    params(("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "Update only if the stream is still at this `ETag` (else 412)")),
    request_body = doc::NewStream,
    responses((status = 200, body = doc::StreamView, headers(("ETag" = String, description = "The stream's new revision"))), doc::AuthErrors, doc::InputErrors, doc::Missing, doc::Precondition),
    security(("token" = []), ("bearer" = [])))]
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<(HeaderMap, Json<Written<Value>>), ApiError> {
    caller.require_admin()?;
    let changed = |stream: &mut Stream| -> Result<(String, portico_store::Fields), ApiError> {
        stream.apply_json(&body.0).map_err(ApiError::Validation)?;
        stream.stamps.touch(&caller.username, portico_store::now_ms() as i64);
        Ok((id.clone(), stream.to_fields()))
    };
    let (etag, stream) = locked(&api, async || {
        // The address it would take is checked first; under the lock no other API write can
        // take it meanwhile.
        let (_, mut wanted, _) = stored(&api, &id).await?;
        changed(&mut wanted)?;
        free(&api, &wanted, Some(&id)).await?;
        conditional::update(
            api.store.as_ref(),
            Kind::Stream,
            &headers,
            || stored(&api, &id),
            changed,
            |e, _| match e {
                StoreError::NotFound { .. } => missing(&id),
                e => e.into(),
            },
        )
        .await
    })
    .await?;
    Ok((etag, Json(Written::new(stream.view(&id), format!("Stream {id} updated.")))))
}

/// `DELETE /api/stream/{id}`: the port is closed on every node (open connections go on).
#[utoipa::path(delete, path = "/api/stream/{id}", tag = "streams", params(("id" = String, Path)),
    responses((status = 200, body = doc::StreamView), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = [])))]
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Written<Value>>, ApiError> {
    caller.require_admin()?;
    let (_, stream, _) = stored(&api, &id).await?;
    if !api.store.delete(Kind::Stream, &id).await? {
        return Err(missing(&id));
    }
    Ok(Json(Written::new(stream.view(&id), format!("Stream {id} deleted."))))
}

fn missing(id: &str) -> ApiError {
    ApiError::NotFound { kind: "Stream", key: id.to_owned() }
}

/// The stream `id` as stored, with its key and revision.
async fn stored(api: &Api, id: &str) -> Result<(String, Stream, Revision), ApiError> {
    let (fields, revision) = api.store.record_at(Kind::Stream, id).await?.ok_or_else(|| missing(id))?;
    let stream = Stream::from_fields(&fields).map_err(|e| ApiError::Validation(vec![e]))?;
    Ok((id.to_owned(), stream, revision))
}

/// Refuses a listening address one of this node's listeners or another stream (than `own`)
/// of the same protocol has: the port would be taken.
async fn free(api: &Api, stream: &Stream, own: Option<&str>) -> Result<(), ApiError> {
    let clash = |a: std::net::SocketAddr| {
        a.port() == stream.listen.port()
            && (a.ip() == stream.listen.ip() || a.ip().is_unspecified() || stream.listen.ip().is_unspecified())
    };
    // The node's listeners are TCP but `http3` (QUIC, UDP).
    let same_protocol = |name: &str| (name == "http3") == (stream.protocol == Protocol::Udp);
    if let Some(listening) = api.listening.load_full()
        && let Some((name, _)) = listening.iter().find(|(name, a)| same_protocol(name) && clash(**a))
    {
        return Err(ApiError::Validation(vec![FieldError::refused(
            "listen",
            format!("listen {} is this node's {name} listener", stream.listen),
        )]));
    }
    for (id, fields) in api.store.records(Kind::Stream).await? {
        if Some(id.as_str()) != own
            && let Ok(other) = Stream::from_fields(&fields)
            && other.protocol == stream.protocol
            && clash(other.listen)
        {
            return Err(ApiError::Validation(vec![FieldError::refused(
                "listen",
                format!("listen {} ({}) is stream {id}'s already", stream.listen, stream.protocol.as_str()),
            )]));
        }
    }
    Ok(())
}
