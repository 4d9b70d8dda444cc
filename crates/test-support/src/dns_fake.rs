//! In-process fakes of the DNS providers' APIs, faithful to their documentation (see
//! `rust-stack.md` §6): Cloudflare API v4, DigitalOcean API v2, Porkbun API v3, with their
//! authentication, error bodies, pagination and id types. A fake can publish the TXT records
//! it holds to a `pebble-challtestsrv` (`/set-txt`, `/clear-txt`), so that Pebble validates
//! DNS-01 against what the client created through the API.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::pebble::challtestsrv;

/// Which API a fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Cloudflare API v4.
    Cloudflare,
    /// DigitalOcean API v2.
    DigitalOcean,
    /// Porkbun API v3.
    Porkbun,
}

impl Provider {
    /// The stored provider type (`dnsProvider`).
    pub fn kind(self) -> &'static str {
        match self {
            Self::Cloudflare => "Cloudflare",
            Self::DigitalOcean => "DigitalOcean",
            Self::Porkbun => "PorkBun",
        }
    }

    /// The provider record's credential fields this fake accepts.
    pub fn credentials(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::Cloudflare => vec![("token", CLOUDFLARE_TOKEN)],
            Self::DigitalOcean => vec![("token", DIGITALOCEAN_TOKEN)],
            Self::Porkbun => vec![("apiKey", PORKBUN_KEY), ("secretApiKey", PORKBUN_SECRET)],
        }
    }

    /// Credential fields it refuses.
    pub fn wrong_credentials(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::Cloudflare | Self::DigitalOcean => vec![("token", "not-the-token")],
            Self::Porkbun => vec![("apiKey", "pk1_wrong"), ("secretApiKey", "sk1_wrong")],
        }
    }
}

/// The Cloudflare API token the fake accepts.
pub const CLOUDFLARE_TOKEN: &str = "cf-token-0123456789";
/// The legacy Cloudflare e-mail and Global API Key it accepts.
pub const CLOUDFLARE_EMAIL: &str = "owner@example.test";
/// See [`CLOUDFLARE_EMAIL`].
pub const CLOUDFLARE_GLOBAL_KEY: &str = "cf-global-key-abcdef";
/// The DigitalOcean token it accepts.
pub const DIGITALOCEAN_TOKEN: &str = "dop_v1_0123456789";
/// The Porkbun keys it accepts.
pub const PORKBUN_KEY: &str = "pk1_0123456789";
/// See [`PORKBUN_KEY`].
pub const PORKBUN_SECRET: &str = "sk1_0123456789";

/// A TXT record the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The zone it is in.
    pub zone: String,
    /// Its full name, without a trailing dot.
    pub fqdn: String,
    /// Its value, unquoted.
    pub value: String,
}

#[derive(Default)]
struct State {
    zones: Vec<String>,
    records: BTreeMap<u64, Record>,
    next_id: u64,
    /// Creates that succeed before the next ones fail (`None`: all succeed).
    creates_left: Option<usize>,
    /// Every request fails as in an outage.
    down: bool,
    /// `METHOD path` of every request.
    requests: Vec<String>,
    /// challtestsrv's management port, to publish TXT records to.
    challtestsrv: Option<u16>,
}

/// A running fake; stops when dropped.
pub struct FakeDns {
    /// Which API it speaks.
    pub provider: Provider,
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeDns {
    /// Starts a fake of `provider` holding `zones`.
    pub async fn start(provider: Provider, zones: &[&str]) -> Self {
        let state = Arc::new(Mutex::new(State {
            zones: zones.iter().map(|z| z.to_string()).collect(),
            next_id: 106_926_659,
            ..State::default()
        }));
        let shared = state.clone();
        let (addr, task) = serve(move |req| handle(provider, shared.clone(), req)).await;
        Self { provider, addr, state, task }
    }

    /// The base URL a client is configured with (with the version path where the real one
    /// has it in the base).
    pub fn base(&self) -> String {
        match self.provider {
            Provider::Cloudflare => format!("http://{}/client/v4", self.addr),
            Provider::DigitalOcean => format!("http://{}", self.addr),
            Provider::Porkbun => format!("http://{}/api/json/v3", self.addr),
        }
    }

    /// Publishes every TXT record, as it changes, to the challtestsrv whose management API
    /// is on `port`.
    pub fn publish_to(&self, port: u16) {
        self.state.lock().unwrap().challtestsrv = Some(port);
    }

    /// Stops publishing TXT records anywhere (as a provider whose changes take long to be
    /// served).
    pub fn publish_nowhere(&self) {
        self.state.lock().unwrap().challtestsrv = None;
    }

    /// Lets `n` more creates succeed, then fails every later one as the provider fails.
    pub fn fail_creates_after(&self, n: usize) {
        self.state.lock().unwrap().creates_left = Some(n);
    }

    /// Every request fails (`true`) or works again.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// The TXT records held now.
    pub fn records(&self) -> Vec<Record> {
        self.state.lock().unwrap().records.values().cloned().collect()
    }

    /// `METHOD path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

type Body = Full<Bytes>;

/// Serves `handle` on a loopback port: the address, and the accept loop's task.
async fn serve<F, Fut>(handle: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    (addr, task)
}

/// One request, as the providers' handlers read it.
#[derive(Clone, Copy)]
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a BTreeMap<String, String>,
    header: &'a (dyn Fn(&str) -> Option<String> + Sync),
    json: &'a Value,
}

/// Porkbun's 503, an HTML page.
fn porkbun_unavailable() -> Response<Body> {
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "text/html")
        .body(Full::new(Bytes::from_static(b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>")))
        .unwrap()
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn handle(
    provider: Provider,
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = parts.uri.path().to_owned();
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (response, publish) = {
        let call = Call { method: &parts.method, path: &path, query: &query, header: &header, json: &json };
        let mut state = state.lock().unwrap();
        state.requests.push(format!("{} {}", parts.method, parts.uri));
        let before = state.records.clone();
        let response = if state.down {
            outage(provider)
        } else {
            match provider {
                Provider::Cloudflare => cloudflare(&mut state, &call),
                Provider::DigitalOcean => digitalocean(&mut state, &call),
                Provider::Porkbun => porkbun(&mut state, &path, &json),
            }
        };
        // The names whose TXT values changed, with their values now.
        let mut changed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for record in before.values().chain(state.records.values()) {
            changed.entry(record.fqdn.clone()).or_default();
        }
        let now: Vec<Record> = state.records.values().cloned().collect();
        let publish = state.challtestsrv.filter(|_| before != state.records).map(|port| {
            for values in changed.values_mut() {
                values.clear();
            }
            for record in &now {
                changed.entry(record.fqdn.clone()).or_default().push(record.value.clone());
            }
            (port, changed)
        });
        (response, publish)
    };
    if let Some((port, names)) = publish {
        for (fqdn, values) in names {
            let host = format!("{fqdn}.");
            challtestsrv(port, "/clear-txt", json!({"host": host})).await;
            for value in values {
                challtestsrv(port, "/set-txt", json!({"host": host, "value": value})).await;
            }
        }
    }
    Ok(response)
}

fn outage(provider: Provider) -> Response<Body> {
    match provider {
        Provider::Cloudflare => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"success": false, "errors": [{"code": 10001, "message": "service temporarily unavailable"}], "messages": [], "result": null}),
        ),
        Provider::DigitalOcean => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"id": "server_error", "message": "Server was unable to give you a response."}),
        ),
        Provider::Porkbun => porkbun_unavailable(),
    }
}

/// Takes one create from the budget; false when creates fail now.
fn take_create(state: &mut State) -> bool {
    match &mut state.creates_left {
        None => true,
        Some(0) => false,
        Some(n) => {
            *n -= 1;
            true
        }
    }
}

fn add(state: &mut State, zone: &str, fqdn: &str, value: &str) -> u64 {
    let id = state.next_id;
    state.next_id += 1;
    state.records.insert(id, Record { zone: zone.to_owned(), fqdn: fqdn.to_owned(), value: value.to_owned() });
    id
}

// Cloudflare ----------------------------------------------------------------------------

fn cf_error(status: StatusCode, code: u64, message: &str) -> Response<Body> {
    reply(
        status,
        json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
    )
}

fn cf_ok(result: Value) -> Value {
    json!({"success": true, "errors": [], "messages": [], "result": result})
}

fn cf_zone_id(zone: &str) -> String {
    format!("{:032x}", zone.bytes().fold(0u128, |h, b| h.wrapping_mul(31).wrapping_add(b as u128)))
}

fn cloudflare(state: &mut State, call: &Call<'_>) -> Response<Body> {
    let Call { method, path, query, header, json } = *call;
    let Some(path) = path.strip_prefix("/client/v4") else {
        return cf_error(StatusCode::NOT_FOUND, 7000, "No route for that URI");
    };
    match (header("authorization"), header("x-auth-email"), header("x-auth-key")) {
        (Some(auth), _, _) => match auth.strip_prefix("Bearer ") {
            Some(token) if token == CLOUDFLARE_TOKEN => {}
            Some(_) => return cf_error(StatusCode::FORBIDDEN, 10000, "Authentication error"),
            None => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"success": false, "errors": [{"code": 6003, "message": "Invalid request headers",
                        "error_chain": [{"code": 6111, "message": "Invalid format for Authorization header"}]}], "messages": [], "result": null}),
                );
            }
        },
        (None, Some(email), Some(key)) if email == CLOUDFLARE_EMAIL && key == CLOUDFLARE_GLOBAL_KEY => {}
        (None, Some(_), Some(_)) => return cf_error(StatusCode::FORBIDDEN, 9103, "Unknown X-Auth-Key or X-Auth-Email"),
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"success": false, "errors": [{"code": 6003, "message": "Invalid request headers",
                    "error_chain": [{"code": 6103, "message": "Invalid format for X-Auth-Key header"}]}], "messages": [], "result": null}),
            );
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["zones"]) => {
            let matching: Vec<&String> =
                state.zones.iter().filter(|z| query.get("name").is_none_or(|n| n == *z)).collect();
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(20).clamp(5, 50);
            let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
            let total_pages = matching.len().div_ceil(per_page).max(1);
            let result: Vec<Value> = matching
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|z| json!({"id": cf_zone_id(z), "name": z, "status": "active"}))
                .collect();
            let mut body = cf_ok(Value::Array(result.clone()));
            body["result_info"] = json!({"page": page, "per_page": per_page, "count": result.len(),
                "total_count": matching.len(), "total_pages": total_pages});
            reply(StatusCode::OK, body)
        }
        (&Method::POST, ["zones", zone_id, "dns_records"]) => {
            let Some(zone) = state.zones.iter().find(|z| cf_zone_id(z) == *zone_id).cloned() else {
                return cf_error(
                    StatusCode::NOT_FOUND,
                    7003,
                    "Could not route to /zones/dns_records, perhaps your object identifier is invalid?",
                );
            };
            let (Some(name), Some(content)) = (json["name"].as_str(), json["content"].as_str()) else {
                return cf_error(StatusCode::BAD_REQUEST, 9000, "DNS name is invalid.");
            };
            if json["type"] != "TXT" {
                return cf_error(StatusCode::BAD_REQUEST, 9004, "This record type is not supported by this fake.");
            }
            if name != zone && !name.ends_with(&format!(".{zone}")) {
                return cf_error(
                    StatusCode::BAD_REQUEST,
                    9005,
                    "Content for TXT record is invalid: the name is outside the zone.",
                );
            }
            if !take_create(state) {
                return cf_error(StatusCode::INTERNAL_SERVER_ERROR, 1000, "An internal error has occurred.");
            }
            let value = content.trim_matches('"');
            let id = add(state, &zone, name, value);
            reply(
                StatusCode::OK,
                cf_ok(
                    json!({"id": format!("{id:032x}"), "type": "TXT", "name": name, "content": content, "ttl": json["ttl"]}),
                ),
            )
        }
        (&Method::DELETE, ["zones", _zone_id, "dns_records", record_id]) => {
            let found = state.records.keys().copied().find(|id| format!("{id:032x}") == *record_id);
            match found {
                Some(id) => {
                    state.records.remove(&id);
                    reply(StatusCode::OK, cf_ok(json!({"id": record_id})))
                }
                None => cf_error(StatusCode::NOT_FOUND, 81044, "Record does not exist."),
            }
        }
        _ => cf_error(StatusCode::NOT_FOUND, 7000, "No route for that URI"),
    }
}

// DigitalOcean --------------------------------------------------------------------------

fn do_error(status: StatusCode, id: &str, message: &str) -> Response<Body> {
    reply(status, json!({"id": id, "message": message}))
}

fn digitalocean(state: &mut State, call: &Call<'_>) -> Response<Body> {
    let Call { method, path, query, header, json } = *call;
    if header("authorization").as_deref() != Some(&format!("Bearer {DIGITALOCEAN_TOKEN}")) {
        return do_error(StatusCode::UNAUTHORIZED, "unauthorized", "Unable to authenticate you");
    }
    let not_found =
        || do_error(StatusCode::NOT_FOUND, "not_found", "The resource you were accessing could not be found.");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let domain = |z: &str| json!({"name": z, "ttl": 1800, "zone_file": ""});
    match (method, segments.as_slice()) {
        (&Method::GET, ["v2", "domains"]) => {
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(20).clamp(1, 200);
            let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
            let total = state.zones.len();
            let domains: Vec<Value> =
                state.zones.iter().skip((page - 1) * per_page).take(per_page).map(|z| domain(z)).collect();
            let mut pages = json!({});
            if page * per_page < total {
                pages["next"] =
                    format!("https://api.digitalocean.com/v2/domains?page={}&per_page={per_page}", page + 1).into();
                pages["last"] = format!(
                    "https://api.digitalocean.com/v2/domains?page={}&per_page={per_page}",
                    total.div_ceil(per_page)
                )
                .into();
            }
            let links =
                if pages.as_object().is_some_and(|p| p.is_empty()) { json!({}) } else { json!({"pages": pages}) };
            reply(StatusCode::OK, json!({"domains": domains, "links": links, "meta": {"total": total}}))
        }
        (&Method::GET, ["v2", "domains", name]) => match state.zones.iter().find(|z| z == name) {
            Some(z) => reply(StatusCode::OK, json!({"domain": domain(z)})),
            None => not_found(),
        },
        (&Method::POST, ["v2", "domains", zone, "records"]) => {
            let Some(zone) = state.zones.iter().find(|z| z == zone).cloned() else { return not_found() };
            let (Some(name), Some(data)) = (json["name"].as_str(), json["data"].as_str()) else {
                return do_error(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity", "Name can't be blank");
            };
            if !take_create(state) {
                return do_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "Server was unable to give you a response.",
                );
            }
            let fqdn = match name {
                "@" => zone.clone(),
                n if n.ends_with('.') => n.trim_end_matches('.').to_owned(),
                n => format!("{n}.{zone}"),
            };
            let id = add(state, &zone, &fqdn, data);
            reply(
                StatusCode::CREATED,
                json!({"domain_record": {"id": id, "type": "TXT", "name": name, "data": data, "priority": null,
                    "port": null, "ttl": json["ttl"], "weight": null, "flags": null, "tag": null}}),
            )
        }
        (&Method::DELETE, ["v2", "domains", _zone, "records", id]) => {
            match id.parse::<u64>().ok().and_then(|id| state.records.remove(&id)) {
                Some(_) => Response::builder().status(StatusCode::NO_CONTENT).body(Full::new(Bytes::new())).unwrap(),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

// Porkbun -------------------------------------------------------------------------------

fn pb_error(message: &str) -> Response<Body> {
    reply(StatusCode::BAD_REQUEST, json!({"status": "ERROR", "message": message}))
}

fn porkbun(state: &mut State, path: &str, json: &Value) -> Response<Body> {
    let Some(path) = path.strip_prefix("/api/json/v3") else { return pb_error("Invalid endpoint.") };
    if json["apikey"] != PORKBUN_KEY || json["secretapikey"] != PORKBUN_SECRET {
        return pb_error("Invalid API key. (001)");
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["ping"] => reply(StatusCode::OK, json!({"status": "SUCCESS", "yourIp": "127.0.0.1"})),
        ["domain", "listAll"] => {
            let start: usize = json["start"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            let domains: Vec<Value> = state
                .zones
                .iter()
                .skip(start)
                .take(1000)
                .map(|z| json!({"domain": z, "status": "ACTIVE", "tld": z.rsplit('.').next(), "autoRenew": "1"}))
                .collect();
            reply(StatusCode::OK, json!({"status": "SUCCESS", "domains": domains}))
        }
        ["dns", "create", domain] => {
            let Some(zone) = state.zones.iter().find(|z| z == domain).cloned() else {
                return pb_error("Invalid domain.");
            };
            let Some(content) = json["content"].as_str() else { return pb_error("Content is required.") };
            if !take_create(state) {
                return porkbun_unavailable();
            }
            let name = json["name"].as_str().unwrap_or("");
            let fqdn = if name.is_empty() { zone.clone() } else { format!("{name}.{zone}") };
            let id = add(state, &zone, &fqdn, content);
            // `create` answers the id as a number; `retrieve` as a string.
            reply(StatusCode::OK, json!({"status": "SUCCESS", "id": id}))
        }
        ["dns", "retrieve", domain] => {
            let records: Vec<Value> = state
                .records
                .iter()
                .filter(|(_, r)| r.zone == *domain)
                .map(|(id, r)| json!({"id": id.to_string(), "name": r.fqdn, "type": "TXT", "content": r.value, "ttl": "600"}))
                .collect();
            reply(StatusCode::OK, json!({"status": "SUCCESS", "records": records}))
        }
        ["dns", "delete", _domain, id] => match id.parse::<u64>().ok().and_then(|id| state.records.remove(&id)) {
            Some(_) => reply(StatusCode::OK, json!({"status": "SUCCESS"})),
            None => pb_error("Invalid record ID."),
        },
        _ => pb_error("Invalid endpoint."),
    }
}

/// The secret the webhook stand-in takes (`Authorization: Bearer …`).
pub const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

/// A stand-in for an admin's DNS webhook as lego's `httpreq` convention has it: `POST
/// /present` and `POST /cleanup` with `{"fqdn", "value"}` and the shared secret as a bearer
/// token (401 otherwise); it publishes the TXT records it holds to a `pebble-challtestsrv`.
pub struct WebhookDns {
    addr: SocketAddr,
    state: Arc<Mutex<WebhookState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct WebhookState {
    /// Values by name (no trailing dot).
    records: BTreeMap<String, Vec<String>>,
    /// `METHOD /path {body}` of each request.
    requests: Vec<String>,
    challtestsrv: Option<u16>,
}

impl Drop for WebhookDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookDns {
    /// Starts it on a loopback port.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(WebhookState::default()));
        let shared = state.clone();
        let (addr, task) = serve(move |req| webhook(shared.clone(), req)).await;
        Self { addr, state, task }
    }

    /// Its URL (the provider's `url`).
    pub fn base(&self) -> String {
        format!("http://{}/dns", self.addr)
    }

    /// Publishes its TXT records, as they change, to the challtestsrv on `port`.
    pub fn publish_to(&self, port: u16) {
        self.state.lock().unwrap().challtestsrv = Some(port);
    }

    /// The TXT values it holds, by name.
    pub fn records(&self) -> BTreeMap<String, Vec<String>> {
        self.state.lock().unwrap().records.clone()
    }

    /// Every request it took, `METHOD /path {body}`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

async fn webhook(state: Arc<Mutex<WebhookState>>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    state.lock().unwrap().requests.push(format!("{} {} {text}", parts.method, parts.uri.path()));
    let authorized = parts.headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {WEBHOOK_SECRET}").as_str());
    if !authorized {
        return Ok(reply(StatusCode::UNAUTHORIZED, json!({"error": "bad or missing bearer token"})));
    }
    let action = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/dns/present") => true,
        (&Method::POST, "/dns/cleanup") => false,
        _ => return Ok(reply(StatusCode::NOT_FOUND, json!({"error": "not found"}))),
    };
    let asked: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (Some(fqdn), Some(value)) = (asked["fqdn"].as_str(), asked["value"].as_str()) else {
        return Ok(reply(StatusCode::BAD_REQUEST, json!({"error": "fqdn and value are required"})));
    };
    let name = fqdn.trim_end_matches('.').to_owned();
    let (port, values) = {
        let mut state = state.lock().unwrap();
        let values = state.records.entry(name.clone()).or_default();
        if action {
            values.push(value.to_owned());
        } else {
            values.retain(|v| v != value);
        }
        let values = values.clone();
        if values.is_empty() {
            state.records.remove(&name);
        }
        (state.challtestsrv, values)
    };
    if let Some(port) = port {
        let host = format!("{name}.");
        challtestsrv(port, "/clear-txt", json!({"host": host})).await;
        for value in values {
            challtestsrv(port, "/set-txt", json!({"host": host, "value": value})).await;
        }
    }
    Ok(reply(StatusCode::OK, json!({})))
}

/// An operator's webhook that takes JSON posts (`tls.notify_url`) and keeps each body.
pub struct Hook {
    addr: SocketAddr,
    posted: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hook {
    /// Starts it on a loopback port.
    pub async fn start() -> Self {
        let posted = Arc::new(Mutex::new(Vec::new()));
        let shared = posted.clone();
        let (addr, task) = serve(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move {
                let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                shared.lock().unwrap().push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                Ok::<_, Infallible>(reply(StatusCode::OK, json!({})))
            }
        })
        .await;
        Self { addr, posted, task }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/portico", self.addr)
    }

    /// The bodies posted so far, oldest first.
    pub fn posted(&self) -> Vec<Value> {
        self.posted.lock().unwrap().clone()
    }
}

/// A stand-in for an acme-dns server (joohoi/acme-dns's HTTP API): `POST /register` makes a
/// registration; `POST /update` with `X-Api-User` and `X-Api-Key` and `{"subdomain", "txt"}`
/// sets one of the registration's two TXT values (the newest two are kept; 401
/// `{"error": "forbidden"}` for wrong credentials, 400 `{"error": "bad_txt"}` for a value that
/// is not 43 characters). The values are served at `fulldomain` by the `pebble-challtestsrv`
/// it publishes to, as acme-dns's own DNS server would.
pub struct AcmeDnsServer {
    addr: SocketAddr,
    state: Arc<Mutex<AcmeDnsState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct AcmeDnsState {
    /// By username: (password, subdomain, the newest values).
    accounts: BTreeMap<String, (String, String, Vec<String>)>,
    /// Updates taken.
    updates: usize,
    challtestsrv: Option<u16>,
}

/// The acme-dns server's own domain.
pub const ACME_DNS_DOMAIN: &str = "auth.acme-dns.test";

impl Drop for AcmeDnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AcmeDnsServer {
    /// Starts it on a loopback port, publishing to the challtestsrv on `port`.
    pub async fn start(challtestsrv: u16) -> Self {
        let state = Arc::new(Mutex::new(AcmeDnsState { challtestsrv: Some(challtestsrv), ..AcmeDnsState::default() }));
        let shared = state.clone();
        let (addr, task) = serve(move |req| acme_dns(shared.clone(), req)).await;
        Self { addr, state, task }
    }

    /// Its URL (the provider's `server`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Updates it took.
    pub fn updates(&self) -> usize {
        self.state.lock().unwrap().updates
    }
}

async fn acme_dns(state: Arc<Mutex<AcmeDnsState>>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/register") => {
            let n = fastrand::u64(..);
            let (username, password, subdomain) =
                (format!("user-{n:016x}"), format!("pass-{:032x}", fastrand::u128(..)), format!("sub-{n:016x}"));
            state.lock().unwrap().accounts.insert(username.clone(), (password.clone(), subdomain.clone(), Vec::new()));
            let fulldomain = format!("{subdomain}.{ACME_DNS_DOMAIN}");
            Ok(reply(
                StatusCode::CREATED,
                json!({"username": username, "password": password, "fulldomain": fulldomain, "subdomain": subdomain, "allowfrom": []}),
            ))
        }
        (&Method::POST, "/update") => {
            let header =
                |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let asked: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (Some(subdomain), Some(txt)) = (asked["subdomain"].as_str(), asked["txt"].as_str()) else {
                return Ok(reply(StatusCode::BAD_REQUEST, json!({"error": "malformed_json_payload"})));
            };
            let (port, values) = {
                let mut state = state.lock().unwrap();
                let Some((password, sub, values)) = state.accounts.get_mut(&header("x-api-user")) else {
                    return Ok(reply(StatusCode::UNAUTHORIZED, json!({"error": "forbidden"})));
                };
                if *password != header("x-api-key") || sub != subdomain {
                    return Ok(reply(StatusCode::UNAUTHORIZED, json!({"error": "forbidden"})));
                }
                if txt.len() != 43 {
                    return Ok(reply(StatusCode::BAD_REQUEST, json!({"error": "bad_txt"})));
                }
                values.push(txt.to_owned());
                let extra = values.len().saturating_sub(2);
                values.drain(..extra);
                let values = values.clone();
                state.updates += 1;
                (state.challtestsrv, values)
            };
            if let Some(port) = port {
                let host = format!("{subdomain}.{ACME_DNS_DOMAIN}.");
                challtestsrv(port, "/clear-txt", json!({"host": host})).await;
                for value in values {
                    challtestsrv(port, "/set-txt", json!({"host": host, "value": value})).await;
                }
            }
            Ok(reply(StatusCode::OK, json!({"txt": txt})))
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, json!({"error": "not found"}))),
    }
}
