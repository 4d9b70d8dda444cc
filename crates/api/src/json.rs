//! Request bodies: JSON objects, declared as such (`Content-Type: application/json` or
//! `application/*+json`, as the seed's `express.json()` required). Anything else is a 415: a
//! web page can post `text/plain` or a form to the API without the browser asking first, a
//! JSON body it cannot. Malformed JSON is a 400, never a 5xx.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::state::Api;

/// A JSON object body (an empty body reads as `{}`).
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest<Api> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, api: &Api) -> Result<Self, ApiError> {
        let declared_json = request.headers().get(http::header::CONTENT_TYPE).is_some_and(is_json);
        let bytes = Bytes::from_request(request, api)
            .await
            .map_err(|_| ApiError::Malformed("the request body could not be read".into()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Map::new()));
        }
        if !declared_json {
            return Err(ApiError::NotJson);
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::Malformed("the request body must be a JSON object".into())),
            Err(e) => Err(ApiError::Malformed(format!("the request body is not valid JSON: {e}"))),
        }
    }
}

/// `application/json` or `application/<something>+json`, with any parameters.
fn is_json(value: &http::HeaderValue) -> bool {
    let Ok(text) = value.to_str() else { return false };
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}
