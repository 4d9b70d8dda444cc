//! The OpenAPI 3.1 document served at `/api/openapi.json`.
//!
//! The paths come from the `#[utoipa::path]` annotation on each handler and are registered
//! together with the handler itself (`utoipa_axum::routes!`), so a route cannot exist without
//! its entry in the document. Answers are described by the structs the handlers send
//! (`wire.rs`, the handlers' own types, and the model's `HostView`, `ProviderView`,
//! `DomainView`, `ProviderTypeInfo`, `Stamps` behind its `openapi` feature). What is
//! described here: the response groups (`AuthErrors`, ...) and the request bodies, with
//! their nested parts (targets, health checks, access specs), which the handlers read
//! loosely on purpose (the seed's `"8080"` for a port, `"true"` for a flag, defaults for what
//! is left out) through the model's `from_json`. These types are only read by the document
//! generator; `tests/responses.rs` checks every documented answer against the live one.
#![allow(dead_code, reason = "schema types: described in the document, never built")]

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The document's fixed parts: title, security schemes, tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portico management API",
        description = "Hosts, users, tokens, DNS providers and certificates of a Portico proxy. \
            Compatible with the seed system's API: the `auth-token` header, its field names and \
            its error shape `{name, message, keys?}`.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&TokenSchemes),
    tags(
        (name = "auth", description = "Login, logout and API tokens"),
        (name = "users", description = "Users and passwords"),
        (name = "hosts", description = "Hosts: the routing table"),
        (name = "dns", description = "DNS providers and the zones they manage"),
        (name = "certs", description = "Certificates"),
        (name = "streams", description = "Streams: TCP and UDP ports forwarded to targets"),
        (name = "health", description = "Liveness and readiness, without auth"),
    )
)]
pub struct ApiDoc;

/// Name of the security requirement every authenticated route lists.
pub const TOKEN: &str = "token";

struct TokenSchemes;

impl Modify for TokenSchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            TOKEN,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "auth-token",
                "A session token from /api/auth/login or an API token from /api/token.",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same token in `Authorization: Bearer`."))
                    .build(),
            ),
        );
    }
}

pub use crate::certs::{CertAnswer, CertView as Cert};
pub use crate::error::{ErrorBody, FieldProblem};
pub use crate::health::{Alive, Ready, Routing, Stats};
pub use crate::hosts::{Lookup, LookupTree, Renewed, RenewedCert};
pub use crate::wire::{
    CreatedToken, DeletedUser, Entry, Item, Listing, Message, Results, RevokedToken, TokenView as Token,
    UserView as User, Written,
};
pub use portico_model::dns::{CredentialField, ProviderDisplay, ProviderTypeInfo as DnsProviderType};
pub use portico_model::dns::{DomainView as Domain, ProviderView as DnsProvider};
pub use portico_model::host_view::HostView as Host;
pub use portico_model::record::Stamps as Bookkeeping;

/// Errors any authenticated route can answer.
#[derive(IntoResponses)]
pub enum AuthErrors {
    /// No token, or an expired or revoked one (`LoginFailed`).
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// The caller's role may not do this (`Forbidden`).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The store is unreachable.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Errors of routes that read a body.
#[derive(IntoResponses)]
pub enum InputErrors {
    /// The body is not a JSON object (`SyntaxError`).
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// A field is missing or invalid (`ObjectValidateError`, `keys` names each field).
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// A body whose `Content-Type` is not JSON (`UnsupportedMediaType`).
    #[response(status = 415)]
    NotJson(ErrorBody),
}

/// The named entry does not exist.
#[derive(IntoResponses)]
#[response(status = 404)]
pub struct Missing(ErrorBody);

/// `If-Match` names another revision than the record's (`PreconditionFailed`): someone
/// changed it since it was read.
#[derive(IntoResponses)]
#[response(status = 412)]
pub struct Precondition(ErrorBody);

/// The name is taken (`EntryNameUsed`).
#[derive(IntoResponses)]
#[response(status = 409)]
pub struct Taken(ErrorBody);

/// Not in this version (the answer says what is missing).
#[derive(IntoResponses)]
#[response(status = 501)]
pub struct NotYet(ErrorBody);

/// An integer, or the same integer as a string (the seed's UI sends `"8080"`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Port {
    /// `8080`
    Number(u16),
    /// `"8080"`
    Text(String),
}

/// A boolean, or `"true"` / `"false"`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Flag {
    /// `true`
    Bool(bool),
    /// `"true"`
    Text(String),
}

/// `POST /api/auth/login`.
#[derive(Serialize, ToSchema)]
pub struct Login {
    username: String,
    password: String,
}

pub use crate::session::LoginReply;

/// A user's role: admins also manage users, DNS providers and key exports.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Hosts, own tokens and password, reading certificates.
    User,
}

/// A new user.
#[derive(Serialize, ToSchema)]
pub struct NewUser {
    /// 3 to 64 letters, digits, `.`, `_`, `-` or `@`.
    username: String,
    /// At least 8 characters.
    password: String,
    /// `user` unless given.
    role: Option<Role>,
}

pub use crate::users::Me;

/// A new password (at least 8 characters).
#[derive(Serialize, ToSchema)]
pub struct NewPassword {
    password: String,
}

/// The caller's new password (at least 8 characters), with the current one
/// (`currentPassword` is read too).
#[derive(Serialize, ToSchema)]
pub struct OwnPassword {
    current_password: String,
    password: String,
}

/// A stream: a listening port forwarded to targets (`POST`/`PUT /api/stream`; an update
/// takes any of the fields).
#[derive(Serialize, ToSchema)]
pub struct NewStream {
    /// Where it listens: `127.0.0.1:5432`, `[::]:2222` (for TCP not one of this node's
    /// listeners; not another stream's of the same protocol).
    listen: String,
    /// `tcp` (the default) or `udp` (a session per client address).
    protocol: Option<String>,
    /// 1 to 64 targets.
    targets: Vec<TargetEntry>,
    /// `round_robin` (default, by weight), `ip_hash`, `first` (`least_conn` is taken as
    /// round robin).
    balance: Option<String>,
    /// Only these clients (addresses or networks) may connect.
    allow: Option<Vec<String>>,
    /// These may not (deny wins).
    deny: Option<Vec<String>>,
    /// Start each connection to a target with a PROXY protocol v1 header naming the client
    /// (TCP only).
    #[serde(rename = "proxyProtocol")]
    proxy_protocol: Option<bool>,
    /// Active checks of the targets (TCP only): `{interval (default "5s"), unhealthy
    /// (default 3), healthy (default 2)}`, a connection made being a pass; `null` removes
    /// them.
    #[serde(rename = "healthCheck")]
    #[schema(value_type = Option<Object>)]
    health_check: Option<()>,
}

/// A stream as the API shows it: `NewStream`'s fields with `id` and the record's stamps.
#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct StreamView(());

/// A certificate and its key to serve for a name (`PUT /api/cert/{host}`).
#[derive(Serialize, ToSchema)]
pub struct CertUpload {
    /// The leaf certificate first, then its issuer, then that one's (PEM).
    fullchain_pem: String,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1). Never shown again.
    privkey_pem: String,
}

/// A new API token.
#[derive(Serialize, ToSchema)]
pub struct NewToken {
    /// 1 to 100 characters.
    name: String,
    /// Lifetime in days (default 365, at most 3650).
    days: Option<u64>,
}

/// A new host. `host` is a pattern: labels, each literal, `*` (one label) or `**` (one or more).
#[derive(Serialize, ToSchema)]
pub struct NewHost {
    host: String,
    /// IPv4, IPv6 or a hostname: the (first) target. Required without `targets`.
    ip: Option<String>,
    /// Required without `targets`.
    #[serde(rename = "targetPort")]
    target_port: Option<Port>,
    #[serde(flatten)]
    policy: HostPolicy,
    /// Redirect plain HTTP to HTTPS (default true).
    forcessl: Option<Flag>,
    /// Speak TLS to the target (default false).
    targetssl: Option<Flag>,
}

/// Where a host's traffic goes and how it is shared.
#[derive(Serialize, ToSchema)]
pub struct HostPolicy {
    /// Every target (1 to 64); `ip`/`targetPort` are always the first.
    targets: Option<Vec<TargetEntry>>,
    /// `round_robin` (default), `least_conn`, `ip_hash` or `first`.
    balance: Option<String>,
    /// Active health checks of the targets (`null` removes them).
    #[serde(rename = "healthCheck")]
    health_check: Option<HealthCheckSpec>,
    /// Users who may pass: `{username, password}` (stored hashed; shown as `{username}`
    /// only); `{username}` alone keeps that user's password.
    #[serde(rename = "basicAuth")]
    basic_auth: Option<Vec<BasicAuthUser>>,
    /// Only these addresses or networks may pass.
    allow: Option<Vec<String>>,
    /// These may not (deny wins).
    deny: Option<Vec<String>>,
    /// An authentication service asked about every request.
    #[serde(rename = "forwardAuth")]
    forward_auth: Option<ForwardAuthSpec>,
    /// Requests per client address.
    #[serde(rename = "rateLimit")]
    rate_limit: Option<RateLimitSpec>,
    /// `proxy` (default: forwards to its targets), `redirect` or `static` (neither needs a
    /// target), or `passthrough` (the TLS connections for its names are forwarded to its
    /// targets unterminated, chosen by SNI; only `allow` and `deny` apply to it).
    kind: Option<String>,
    /// A passthrough host's `{proxyProtocol (default false): a PROXY protocol v1 header
    /// naming the client goes to the target first}`.
    #[schema(value_type = Option<Object>)]
    passthrough: Option<()>,
    /// A redirect host's `{url (an http(s) URL or a host name), code (301, 302, 307, 308;
    /// default 301), keepPath (default true)}`.
    #[schema(value_type = Option<Object>)]
    redirect: Option<()>,
    /// A static host's `{status (default 200), contentType (default text/html), body}`.
    #[serde(rename = "static")]
    #[schema(value_type = Option<Object>)]
    static_answer: Option<()>,
    /// Header rules `{request: {set: {name: value}, add: {…}, remove: [names]}, response:
    /// {…}}`; values may use `{client_ip}`, `{request_id}`, `{host}`, `{scheme}`; hop-by-hop
    /// headers, `Host` and `Content-Length` are refused (`null` removes the rules).
    #[schema(value_type = Option<Object>)]
    headers: Option<()>,
    /// Strict-Transport-Security on HTTPS answers: `{maxAge (default a year),
    /// includeSubDomains, preload}` (`null` removes it).
    #[schema(value_type = Option<Object>)]
    hsts: Option<()>,
    /// Pages for Portico's own error answers, from a status (`"502"`) or `"default"` to HTML
    /// with `{status}` and `{request_id}` replaced (`null` removes them).
    #[serde(rename = "errorPages")]
    #[schema(value_type = Option<Object>)]
    error_pages: Option<()>,
    /// Compress answers (zstd, brotli, gzip, by the client's `Accept-Encoding`) of
    /// compressible types of 1 KiB or more (default false).
    compress: Option<Flag>,
}

/// A basic-auth user.
#[derive(Serialize, ToSchema)]
pub struct BasicAuthUser {
    username: String,
    /// Written only: 8 characters at least; never shown.
    password: Option<String>,
}

/// `{url, copyHeaders}`.
#[derive(Serialize, ToSchema)]
pub struct ForwardAuthSpec {
    /// An `http://` or `https://` URL.
    url: String,
    /// Headers of the service's 2xx answer set on the request.
    #[serde(rename = "copyHeaders")]
    copy_headers: Option<Vec<String>>,
}

/// A token bucket per client address.
#[derive(Serialize, ToSchema)]
pub struct RateLimitSpec {
    #[serde(rename = "perSecond")]
    per_second: f64,
    burst: Option<u32>,
}

/// One target.
#[derive(Serialize, ToSchema)]
pub struct TargetEntry {
    ip: String,
    port: u16,
    /// 1 to 100 (default 1).
    weight: Option<u16>,
    /// `GET /api/host/{item}` only: this node's view, `healthy`, `ejected` (failed
    /// connections; tried again after a back-off of at most 30 s), `down` (failing its
    /// health checks) or `unknown` (no traffic yet).
    health: Option<String>,
    /// With `health`: failures in a row.
    failures: Option<u32>,
    /// With `health`: the last failure.
    last_error: Option<String>,
}

/// `GET path` every `interval`; `unhealthy` failures in a row take a target out, `healthy`
/// passes put it back.
#[derive(Serialize, ToSchema)]
pub struct HealthCheckSpec {
    /// A path starting with `/`.
    path: String,
    /// A duration such as `"5s"` (1 s to 1 h; default 5 s).
    interval: Option<String>,
    /// The status a healthy target answers (default 200).
    expect: Option<u16>,
    /// Default 3.
    unhealthy: Option<u32>,
    /// Default 2.
    healthy: Option<u32>,
}

/// A partial update: any of the fields; a new `host` renames.
#[derive(Serialize, ToSchema)]
pub struct HostUpdate {
    host: Option<String>,
    ip: Option<String>,
    #[serde(rename = "targetPort")]
    target_port: Option<Port>,
    #[serde(flatten)]
    policy: HostPolicy,
    forcessl: Option<Flag>,
    targetssl: Option<Flag>,
}

/// A DNS provider account: `name`, `dnsProvider` (`Cloudflare`, `DigitalOcean`, `PorkBun`) and
/// that type's credential fields (`token`; or `apiKey` and `secretApiKey`).
#[derive(Serialize, ToSchema)]
pub struct NewDnsProvider {
    name: String,
    #[serde(rename = "dnsProvider")]
    dns_provider: String,
    #[serde(flatten)]
    credentials: std::collections::BTreeMap<String, String>,
}

/// A zone a DNS provider manages.
#[derive(Serialize, ToSchema)]
pub struct NewDomain {
    domain: String,
    #[serde(rename = "dnsProvider_id")]
    dns_provider_id: String,
    #[serde(rename = "zoneId")]
    zone_id: Option<String>,
}
