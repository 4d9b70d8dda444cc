//! `/api/stream…`: forwarded TCP and UDP ports (admins). A stream's listening address may not
//! be one of this node's listeners, nor another stream's, of the same protocol.

use axum::Json;
use axum::extract::{Path, State};
use portico_model::FieldError;
use portico_model::stream::{Protocol, Stream};
use portico_store::Kind;
use serde_json::Value;

use crate::auth::{self, Caller};
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
    free(&api, &stream, None).await?;
    api.store.create(Kind::Stream, &id, &stream.to_fields()).await?;
    Ok(Json(Written::new(stream.view(&id), format!("Stream {id} on {} added.", stream.listen))))
}

/// `GET /api/stream/{id}`.
#[utoipa::path(get, path = "/api/stream/{id}", tag = "streams", params(("id" = String, Path)),
    responses((status = 200, body = doc::Results<doc::StreamView>), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = [])))]
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Results<Value>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(Results::new(stored(&api, &id).await?.view(&id))))
}

/// `PUT /api/stream/{id}`: only the fields given change.
#[utoipa::path(put, path = "/api/stream/{id}", tag = "streams", params(("id" = String, Path)),
    request_body = doc::NewStream,
    responses((status = 200, body = doc::StreamView), doc::AuthErrors, doc::InputErrors, doc::Missing),
    security(("token" = []), ("bearer" = [])))]
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Written<Value>>, ApiError> {
    caller.require_admin()?;
    let mut stream = stored(&api, &id).await?;
    stream.apply_json(&body.0).map_err(ApiError::Validation)?;
    stream.stamps.touch(&caller.username, portico_store::now_ms() as i64);
    free(&api, &stream, Some(&id)).await?;
    api.store.put(Kind::Stream, &id, &stream.to_fields()).await?;
    Ok(Json(Written::new(stream.view(&id), format!("Stream {id} updated."))))
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
    let stream = stored(&api, &id).await?;
    if !api.store.delete(Kind::Stream, &id).await? {
        return Err(missing(&id));
    }
    Ok(Json(Written::new(stream.view(&id), format!("Stream {id} deleted."))))
}

fn missing(id: &str) -> ApiError {
    ApiError::NotFound { kind: "Stream", key: id.to_owned() }
}

async fn stored(api: &Api, id: &str) -> Result<Stream, ApiError> {
    let fields = api.store.record(Kind::Stream, id).await?.ok_or_else(|| missing(id))?;
    Stream::from_fields(&fields).map_err(|e| ApiError::Validation(vec![e]))
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
