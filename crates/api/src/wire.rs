//! The shapes of the API's answers, as the handlers build them and as the OpenAPI document
//! describes them (the same types: `utoipa` derives on them). The seed's envelopes —
//! `{results}`, `{item, results}`, a listing of names or records, a record with a `message`
//! — are generic over what they carry.

use std::collections::BTreeMap;

use portico_model::record::Stamps;
use portico_model::user::User;
use serde::Serialize;
use utoipa::ToSchema;

/// `{item, results}`: one record and the name it was asked by.
#[derive(Debug, Serialize, ToSchema)]
pub struct Item<T> {
    item: String,
    results: T,
}

impl<T> Item<T> {
    /// `results`, asked for as `item`.
    pub fn new(item: impl Into<String>, results: T) -> Self {
        Self { item: item.into(), results }
    }
}

/// A record after a write, with a `message` (and, after an update, the name it was asked
/// by, as the seed's `__requestedHost`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Written<T> {
    #[serde(flatten)]
    record: T,
    message: String,
    #[serde(rename = "__requestedHost", skip_serializing_if = "Option::is_none")]
    requested: Option<String>,
}

impl<T> Written<T> {
    /// `record`, written, with `message`.
    pub fn new(record: T, message: String) -> Self {
        Self { record, message, requested: None }
    }

    /// Also names the record asked for (an update's `__requestedHost`).
    pub fn asked_as(mut self, item: impl Into<String>) -> Self {
        self.requested = Some(item.into());
        self
    }
}

/// `{results}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Results<T> {
    results: T,
}

impl<T> Results<T> {
    /// `results` in the envelope.
    pub fn new(results: T) -> Self {
        Self { results }
    }
}

/// A list: names, or whole records with `?detail`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listing<T> {
    results: Vec<Entry<T>>,
}

impl<T> Listing<T> {
    /// The entries.
    pub fn new(results: Vec<Entry<T>>) -> Self {
        Self { results }
    }
}

/// A name, or with `?detail` the whole record.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Entry<T> {
    /// The record's name.
    Name(String),
    /// The record.
    Detail(T),
}

/// A user (never the password hash): its fields, its role, and any field a seed or a newer
/// version stored beside them.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = User)]
pub struct UserView {
    username: String,
    #[schema(value_type = crate::openapi::Role)]
    role: &'static str,
    #[serde(flatten)]
    bookkeeping: Stamps,
    /// Other stored fields, as they are (never a secret).
    #[serde(flatten)]
    other: BTreeMap<String, String>,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        let other = user.extra.iter().filter(|(k, _)| !portico_model::is_secret_field(k));
        Self {
            username: user.username.clone(),
            role: user.role.as_str(),
            bookkeeping: user.stamps.clone(),
            other: other.map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// A deleted user.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedUser {
    username: String,
    results: UserView,
}

impl DeletedUser {
    /// `user`, deleted.
    pub fn new(user: &User) -> Self {
        Self { username: user.username.clone(), results: UserView::from(user) }
    }
}

/// An API token's record (never the token).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Token)]
pub struct TokenView {
    /// Use it to revoke the token.
    id: String,
    name: Option<String>,
    created_by: Option<String>,
    created_on: Option<u64>,
    expires_on: Option<u64>,
}

impl TokenView {
    /// The token record `fields`, kept under `id`.
    pub fn new(id: &str, fields: &portico_store::Fields) -> Self {
        let number = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
        Self {
            id: id.to_owned(),
            name: fields.get("name").cloned(),
            created_by: fields.get("created_by").cloned(),
            created_on: number("created_on"),
            expires_on: number("expires_on"),
        }
    }
}

/// A token just created: `token` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token: send it in `auth-token` (or `Authorization: Bearer`).
    pub token: String,
    /// Its record.
    pub results: TokenView,
}

/// A revoked token.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedToken {
    /// `<id> revoked`
    pub message: String,
    /// Its record.
    pub results: TokenView,
}

/// `{message}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// What happened.
    pub message: String,
}
