//! What the proxy writes in a forwarded request's headers: hop-by-hop headers removed, the
//! `X-Forwarded-*` set, `X-Real-IP`, `X-Request-Id`, `Host`; and whether a request asks for a
//! WebSocket upgrade.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

use crate::conn::Client;

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1), besides
/// those the `Connection` header names; and `Upgrade`, which the forwarder sets again for the
/// one upgrade it tunnels (WebSocket). `Connection` comes first.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// The request id header, sent to targets and back to clients.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The scheme a request reached the proxy on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the forwarder needs to know about the request beyond the request itself.
#[derive(Debug)]
pub struct Origin<'a> {
    /// The client.
    pub client: &'a Client,
    /// The scheme the client used.
    pub scheme: Scheme,
    /// The authority the client asked for, as sent (`Host` or `:authority`, port included).
    pub authority: &'a str,
    /// This request's id.
    pub request_id: &'a HeaderValue,
    /// The client's address when it is not the peer's (read from a trusted proxy's
    /// `X-Forwarded-For` or a PROXY protocol header): what `X-Real-IP` says.
    pub real_ip: Option<HeaderValue>,
}

/// The `Upgrade` protocol of an HTTP/1.1 WebSocket upgrade request (`Connection: upgrade` +
/// `Upgrade: websocket`).
pub(super) fn upgrade_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let wants = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = request.headers().get(header::UPGRADE).filter(|_| wants)?;
    // Only WebSocket is tunnelled: any other upgrade (`h2c`, say) would carry traffic past
    // routing and header rewriting, so it is forwarded as a plain request.
    protocol.to_str().is_ok_and(|p| p.trim().eq_ignore_ascii_case("websocket")).then(|| protocol.clone())
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which fixed names are present: one pass over the names, no lookups (most requests
    // carry none of them; most responses only `Connection`).
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_index(name.as_str()) {
            present[i] = true;
        }
    }
    // The names `Connection` lists beyond the fixed ones (and `close`, no header): usually
    // none (`keep-alive` or `close` alone is the common value, seen without splitting it).
    let plain = |v: &HeaderValue| {
        v.as_bytes().eq_ignore_ascii_case(b"keep-alive") || v.as_bytes().eq_ignore_ascii_case(b"close")
    };
    if present[0] && !headers.get_all(header::CONNECTION).iter().all(plain) {
        let listed: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|token| token.trim().to_ascii_lowercase())
            .filter(|token| token != "close" && hop_index(token).is_none())
            .collect();
        // A token that is no header name matches nothing.
        for token in listed {
            headers.remove(token.as_str());
        }
    }
    for (hop, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(hop);
        }
    }
}

/// Where a (lower-case) header name is in [`HOP_BY_HOP`]: a match, cheaper than comparing
/// with each.
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP`,
/// `X-Request-Id`, and `Host`: the routed authority.
pub(super) fn add_forwarded(headers: &mut HeaderMap, origin: &Origin<'_>) {
    // Room for the five names added, at once: one growth of the map at most, not one per
    // insertion.
    headers.reserve(5);
    let ip = &origin.client.ip;
    let prior: Vec<&str> = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    let chain = if prior.is_empty() {
        Some(ip.clone())
    } else {
        HeaderValue::from_str(&format!("{}, {}", prior.join(", "), ip.to_str().unwrap_or("-"))).ok()
    };
    // The authority the request was routed by, whatever `Host` the client sent beside it:
    // usually that `Host`, shared rather than copied.
    let host = match headers.get(header::HOST) {
        Some(host) if host.as_bytes() == origin.authority.as_bytes() => Some(host.clone()),
        _ => HeaderValue::from_str(origin.authority).ok(),
    };
    if let Some(chain) = chain {
        headers.insert(X_FORWARDED_FOR, chain);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(origin.scheme.as_str()));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
        headers.insert(header::HOST, host);
    }
    headers.insert(X_REAL_IP, origin.real_ip.clone().unwrap_or_else(|| ip.clone()));
    headers.insert(X_REQUEST_ID, origin.request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_index_names_each_hop_by_hop_header() {
        for (i, hop) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(hop.as_str()), Some(i));
        }
        assert_eq!(hop_index("x-keep"), None);
    }

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-keep"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
        let client = Client::new("[::ffff:192.0.2.7]:5555".parse().unwrap(), crate::conn::Conn::Plain);
        let id = HeaderValue::from_static("abc");
        let origin = Origin {
            client: &client,
            scheme: Scheme::Http,
            authority: "app.example:8080",
            request_id: &id,
            real_ip: None,
        };
        add_forwarded(&mut h, &origin);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.1, 198.51.100.2, 192.0.2.7");
        assert_eq!(h[&X_REAL_IP], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example:8080");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[header::HOST], "app.example:8080");
    }
}
