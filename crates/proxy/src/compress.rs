//! Compression of a host's answers (`compress`): zstd, brotli or gzip by the client's
//! `Accept-Encoding` (q-values honoured), streamed through async-compression's encoders, for
//! compressible types of at least [`MIN_BYTES`] (or of unknown length); never for an answer
//! the target already encoded, one marked `Cache-Control: no-transform`, a range, a `HEAD`,
//! or a stream of events. `Vary: Accept-Encoding` is added, a strong `ETag` weakened.

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::response::ProxyBody;

/// Answers shorter than this are sent as they are: compression would save nothing worth
/// its CPU (nginx's `gzip_min_length` is 20, Caddy's `minimum_length` 512; a TCP segment
/// holds about 1,400 bytes).
pub const MIN_BYTES: u64 = 1024;

/// A content coding Portico produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// Zstandard (level 3): the best ratio for its CPU; preferred when the client ranks
    /// codings equally.
    Zstd,
    /// Brotli (quality 4: at its default, 11, it costs a hundred times more CPU).
    Brotli,
    /// gzip (level 5).
    Gzip,
}

impl Coding {
    /// Its `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Brotli => "br",
            Self::Gzip => "gzip",
        }
    }
}

/// The coding to answer a request with, by its `Accept-Encoding`: the one it gives the
/// highest quality (explicitly, or through `*`), zstd before brotli before gzip on a tie;
/// none when it accepts none of them (or sends no header).
pub fn choose(accept_encoding: Option<&HeaderValue>) -> Option<Coding> {
    let text = accept_encoding?.to_str().ok()?;
    let mut explicit = [None::<f32>; 3];
    let mut any = None::<f32>;
    for (token, q) in qualities(text) {
        match token.as_str() {
            "zstd" => explicit[0] = Some(q),
            "br" => explicit[1] = Some(q),
            "gzip" | "x-gzip" => explicit[2] = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    let codings = [Coding::Zstd, Coding::Brotli, Coding::Gzip];
    let mut best: Option<(Coding, f32)> = None;
    for (coding, q) in codings.into_iter().zip(explicit) {
        let q = q.or(any).unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

/// The items of a header that ranks them (`Accept`, `Accept-Encoding`): each one's token,
/// lower-cased and without parameters, and its quality (`q`, 1 unless given).
pub(crate) fn qualities(text: &str) -> impl Iterator<Item = (String, f32)> + '_ {
    text.split(',').map(|item| {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q =
            parts.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok())).unwrap_or(1.0);
        (token, q)
    })
}

/// Whether a media type is worth compressing: text (but a stream of events, which must
/// reach the client as each event is written), JSON, JavaScript, XML, SVG, WebAssembly.
fn compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence == "text/event-stream" {
        return false;
    }
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
        )
}

/// Whether `response` may be compressed: a full answer with a body (200, or another 2xx but
/// 204/206, or a 4xx/5xx page) of a compressible type and enough bytes (or of unknown
/// length), not encoded already, not `no-transform`, not a range.
fn eligible(response: &Response<ProxyBody>) -> bool {
    let status = response.status();
    let has_body = status.is_success() && status != StatusCode::NO_CONTENT && status != StatusCode::PARTIAL_CONTENT
        || status.is_client_error()
        || status.is_server_error();
    let headers = response.headers();
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let long_enough = text(header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok()).is_none_or(|l| l >= MIN_BYTES);
    has_body
        && long_enough
        && text(header::CONTENT_TYPE).is_some_and(compressible)
        && !headers.contains_key(header::CONTENT_ENCODING)
        && !headers.contains_key(header::CONTENT_RANGE)
        && !headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-transform"))))
}

/// `response`, compressed with `coding` when it is eligible (a compressible type, long enough,
/// not encoded, no `no-transform`, no range); as it is
/// otherwise. Either way it says it varies by `Accept-Encoding` when it could have been
/// compressed for another client.
pub fn compress(mut response: Response<ProxyBody>, coding: Option<Coding>) -> Response<ProxyBody> {
    if !eligible(&response) {
        return response;
    }
    add_vary(response.headers_mut());
    let Some(coding) = coding else { return response };
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    // The encoded bytes differ from what a strong validator names.
    if let Some(tag) = headers.get(header::ETAG).filter(|t| !t.as_bytes().starts_with(b"W/")) {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, weak);
        }
    }
    response.map(|body| encode(body, coding))
}

/// `Vary: Accept-Encoding`, beside whatever the answer varies by already.
fn add_vary(headers: &mut HeaderMap) {
    let named = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|n| matches!(n.trim(), "*") || n.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !named {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// The body, streamed through `coding`'s encoder: read as it arrives, each piece sent as
/// soon as the encoder gives it out.
fn encode(body: ProxyBody, coding: Coding) -> ProxyBody {
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    match coding {
        Coding::Zstd => framed(ZstdEncoder::with_quality(reader, Level::Precise(3))),
        Coding::Brotli => framed(BrotliEncoder::with_quality(reader, Level::Precise(4))),
        Coding::Gzip => framed(GzipEncoder::with_quality(reader, Level::Precise(5))),
    }
}

/// An encoder's output as a body, in pieces of up to 16 KiB.
fn framed(encoder: impl tokio::io::AsyncRead + Send + 'static) -> ProxyBody {
    let frames = ReaderStream::with_capacity(encoder, 16 * 1024)
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    StreamBody::new(frames).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str) -> Option<Coding> {
        choose(Some(&HeaderValue::from_str(accept).unwrap()))
    }

    #[test]
    fn the_client_chooses_by_quality() {
        assert_eq!(pick("gzip, deflate, br, zstd"), Some(Coding::Zstd), "a browser: ties go to zstd");
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=1.0, gzip;q=0.8"), Some(Coding::Brotli));
        assert_eq!(pick("zstd;q=0.1, gzip"), Some(Coding::Gzip));
        assert_eq!(pick("*"), Some(Coding::Zstd));
        assert_eq!(pick("*, zstd;q=0"), Some(Coding::Brotli), "q=0 refuses");
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("deflate"), None);
        assert_eq!(choose(None), None);
    }

    #[test]
    fn only_what_is_worth_it() {
        let answer = |headers: &[(&str, &str)], status: u16| {
            let mut response = Response::new(crate::response::full(String::new()));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (n, v) in headers {
                response
                    .headers_mut()
                    .append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            response
        };
        let html = [("content-type", "text/html; charset=utf-8"), ("content-length", "5000")];
        assert!(eligible(&answer(&html, 200)));
        assert!(eligible(&answer(&[("content-type", "application/problem+json")], 502)), "unknown length");
        assert!(!eligible(&answer(&[("content-type", "text/html"), ("content-length", "100")], 200)), "too short");
        assert!(!eligible(&answer(&[("content-type", "image/png")], 200)));
        assert!(!eligible(&answer(&[("content-type", "text/event-stream")], 200)));
        assert!(!eligible(&answer(&[html[0], ("content-encoding", "gzip")], 200)));
        assert!(!eligible(&answer(&[html[0], ("cache-control", "public, No-Transform")], 200)));
        assert!(!eligible(&answer(&[html[0], ("content-range", "bytes 0-9/100")], 206)));
        assert!(!eligible(&answer(&[html[0]], 304)));
        let mut vary = answer(&[("vary", "Origin")], 200);
        add_vary(vary.headers_mut());
        let all: Vec<_> = vary.headers().get_all("vary").iter().collect();
        assert_eq!(all, ["Origin", "Accept-Encoding"]);
        add_vary(vary.headers_mut());
        assert_eq!(vary.headers().get_all("vary").iter().count(), 2, "once");
    }
}
