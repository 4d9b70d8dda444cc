//! Hosts beyond proxying and how answers are dressed: redirect and static hosts (over HTTP
//! and HTTPS, with certificates as any host), header rules with placeholders, HSTS on HTTPS
//! only, error pages per host and by default, HTML or JSON by `Accept`; refusals of rules
//! that would break the proxy.

use http::StatusCode;
use portico_test_support::client::Proxy;
use portico_test_support::{Backend, eventually};
use serde_json::json;

use crate::{admin, portico};

#[tokio::test]
async fn redirect_and_static_hosts_answer_over_http_and_https() {
    let p = portico(&[]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let hosts = [
        json!({"host": "old.kinds.test", "kind": "redirect", "forcessl": false,
               "redirect": {"url": "https://new.kinds.test", "code": 308}}),
        json!({"host": "bare.kinds.test", "kind": "redirect", "forcessl": false,
               "redirect": {"url": "www.kinds.test", "keepPath": false}}),
        json!({"host": "gone.kinds.test", "kind": "static", "forcessl": false,
               "static": {"status": 404, "contentType": "text/plain", "body": "nothing here"}}),
        json!({"host": "maint.kinds.test", "kind": "static", "static": {"status": 503, "body": "<h1>back soon</h1>"}}),
    ];
    for host in hosts {
        let made = api.call("POST", "/api/host", r, Some(host.clone())).await;
        assert_eq!(made.status, StatusCode::OK, "{host}: {}", made.raw);
        assert!(made.json.get("ip").is_none(), "no target asked of a host that does not forward: {}", made.raw);
    }
    let shown = api.call("GET", "/api/host/old.kinds.test", r, None).await;
    assert_eq!(shown.json["results"]["kind"], "redirect");
    assert_eq!(
        shown.json["results"]["redirect"],
        json!({"url": "https://new.kinds.test", "code": 308, "keepPath": true})
    );

    let plain = Proxy::h1(p.http);
    let moved = eventually(std::time::Duration::from_secs(5), "the redirect host routed", || async {
        let a = plain.get("old.kinds.test", "/a/b?c=1").await;
        (a.status != StatusCode::NOT_FOUND).then_some(a)
    })
    .await;
    assert_eq!(moved.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(moved.headers["location"], "https://new.kinds.test/a/b?c=1", "path and query kept");
    let bare = plain.get("bare.kinds.test", "/x?y").await;
    assert_eq!(
        (bare.status, bare.headers["location"].to_str().unwrap()),
        (StatusCode::MOVED_PERMANENTLY, "http://www.kinds.test/")
    );
    let gone = plain.get("gone.kinds.test", "/anything").await;
    assert_eq!((gone.status, gone.text().as_str()), (StatusCode::NOT_FOUND, "nothing here"));
    assert_eq!(gone.headers["content-type"], "text/plain");
    let head = plain.ask("HEAD", "gone.kinds.test", "/", &[]).await;
    assert_eq!((head.status, head.body.len()), (StatusCode::NOT_FOUND, 0), "HEAD: no body");

    // HTTPS with a certificate as any host: the maintenance page (whose plain HTTP goes to
    // HTTPS first, forcessl by default) and the redirect.
    let secure = Proxy::https(p.https, crate::https::trusted(&p), false);
    let maint = secure.get("maint.kinds.test", "/").await;
    assert_eq!((maint.status, maint.text().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "<h1>back soon</h1>"));
    assert_eq!(plain.get("maint.kinds.test", "/").await.status, StatusCode::PERMANENT_REDIRECT, "forcessl first");
    let bare = secure.get("bare.kinds.test", "/").await;
    assert_eq!(bare.headers["location"], "https://www.kinds.test/", "the request's scheme kept");

    // The CLI speaks the same fields.
    let added = p.cli(
        "host",
        &[
            "add",
            "cli.kinds.test",
            "--kind",
            "static",
            "--static",
            r#"{"status": 410, "body": "gone for good"}"#,
            "--hsts",
            r#"{"maxAge": 60}"#,
        ],
        "",
    );
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let cli = eventually(std::time::Duration::from_secs(5), "the CLI's host routed", || async {
        let a = plain.get("cli.kinds.test", "/").await;
        (a.status == StatusCode::GONE).then_some(a)
    })
    .await;
    assert_eq!(cli.text(), "gone for good");
    let bad = p.cli("host", &["update", "cli.kinds.test", "--headers", r#"{"request": {"set": {"Host": "x"}}}"#], "");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("headers"), "{}", String::from_utf8_lossy(&bad.stderr));
    let listed = String::from_utf8(p.cli("host", &["ls"], "").stdout).unwrap();
    assert!(listed.lines().any(|l| l.starts_with("cli.kinds.test") && l.contains("static 410")), "{listed}");

    // A proxy host with checked targets turned into a static one: its targets are kept, but
    // neither checked nor shown with a health of their own any more.
    let checked = Backend::start("checked").await;
    let body = json!({"host": "checked.kinds.test", "forcessl": false, "healthCheck": {"path": "/healthz", "interval": "1s"},
        "targets": [{"ip": "127.0.0.1", "port": checked.addr.port()}, {"ip": "127.0.0.1", "port": 1}]});
    assert_eq!(api.call("POST", "/api/host", r, Some(body)).await.status, StatusCode::OK);
    eventually(std::time::Duration::from_secs(10), "the unreachable target checked and down", || async {
        let shown = api.call("GET", "/api/host/checked.kinds.test", r, None).await;
        (shown.json["results"]["targets"][1]["health"] == "down").then_some(())
    })
    .await;
    let to_static = json!({"kind": "static", "static": {"status": 503}});
    assert_eq!(api.call("PUT", "/api/host/checked.kinds.test", r, Some(to_static)).await.status, StatusCode::OK);
    eventually(std::time::Duration::from_secs(10), "no health for a static host's targets", || async {
        let shown = api.call("GET", "/api/host/checked.kinds.test", r, None).await;
        let targets = shown.json["results"]["targets"].as_array().cloned().unwrap_or_default();
        (targets.len() == 2 && targets.iter().all(|t| t.get("health").is_none())).then_some(())
    })
    .await;

    // A redirect host becomes a proxy host once given a target, and back.
    let backend = Backend::start("kinds").await;
    let turn = json!({"kind": "proxy", "ip": "127.0.0.1", "targetPort": backend.addr.port()});
    let turned = api.call("PUT", "/api/host/gone.kinds.test", r, Some(turn)).await;
    assert_eq!(turned.status, StatusCode::OK, "{}", turned.raw);
    eventually(std::time::Duration::from_secs(5), "proxying", || async {
        (plain.get("gone.kinds.test", "/").await.status == StatusCode::OK).then_some(())
    })
    .await;
    let no_target = api.call("PUT", "/api/host/old.kinds.test", r, Some(json!({"kind": "proxy"}))).await;
    assert_eq!(no_target.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", no_target.raw);
    for (body, field) in [
        (json!({"host": "x.kinds.test", "kind": "redirect"}), "redirect"),
        (json!({"host": "x.kinds.test", "kind": "redirect", "redirect": {"url": "ftp://x"}}), "redirect"),
        (json!({"host": "x.kinds.test", "kind": "static", "static": {"status": 204}}), "static"),
        (json!({"host": "x.kinds.test", "kind": "passthrough"}), "ip"),
        (json!({"host": "x.kinds.test", "kind": "mirror"}), "kind"),
        (json!({"host": "x.kinds.test"}), "ip"),
    ] {
        let refused = api.call("POST", "/api/host", r, Some(body.clone())).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(refused.json["keys"].as_array().unwrap().iter().any(|k| k["key"] == field), "{body}: {}", refused.raw);
    }
}

#[tokio::test]
async fn header_rules_hsts_and_error_pages() {
    let dir = tempfile::tempdir().unwrap();
    let default_page = dir.path().join("error.html");
    std::fs::write(&default_page, "<p>default {status} for {request_id}</p>").unwrap();
    let p = portico(&[&format!("proxy.error_page={:?}", default_page.to_str().unwrap())]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let backend = Backend::start("dressed").await;
    let port = backend.addr.port();
    let rules = json!({
        "request": {"set": {"X-Client": "{client_ip}", "X-Seen-Host": "{host} over {scheme}"}, "remove": ["X-Secret"]},
        "response": {"set": {"X-Frame-Options": "DENY"}, "add": {"X-Request": "id {request_id}"}, "remove": ["X-Powered-By"]}
    });
    let host = json!({"host": "dressed.kinds.test", "ip": "127.0.0.1", "targetPort": port, "forcessl": false,
        "headers": rules, "hsts": {"maxAge": 600, "includeSubDomains": true},
        "errorPages": {"502": "<h1>{status}: the app is down ({request_id})</h1>"}});
    let made = api.call("POST", "/api/host", r, Some(host)).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    // Its target gone, and a host without pages of its own.
    let down = json!({"host": "down.kinds.test", "ip": "127.0.0.1", "targetPort": 1, "forcessl": false,
        "errorPages": {"502": "<h1>down {request_id}</h1>"}});
    assert_eq!(api.call("POST", "/api/host", r, Some(down)).await.status, StatusCode::OK);
    let plain_down = json!({"host": "plain.kinds.test", "ip": "127.0.0.1", "targetPort": 1, "forcessl": false});
    assert_eq!(api.call("POST", "/api/host", r, Some(plain_down)).await.status, StatusCode::OK);

    let plain = Proxy::h1(p.http);
    let echo = eventually(std::time::Duration::from_secs(5), "routed", || async {
        let a = plain.ask("GET", "dressed.kinds.test", "/", &[("x-secret", "hunter2")]).await;
        (a.status == StatusCode::OK).then_some(a)
    })
    .await;
    let seen = echo.json();
    assert_eq!(seen["headers"]["x-client"], json!(["127.0.0.1"]), "{seen}");
    assert_eq!(seen["headers"]["x-seen-host"], json!(["dressed.kinds.test over http"]));
    assert!(seen["headers"].get("x-secret").is_none(), "removed before the target: {seen}");
    assert_eq!(echo.headers["x-frame-options"], "DENY");
    let id = echo.headers["x-request-id"].to_str().unwrap();
    assert_eq!(echo.headers["x-request"], format!("id {id}").as_str());
    assert!(echo.headers.get("x-powered-by").is_none(), "the target's X-Powered-By removed");
    assert!(echo.headers.get("strict-transport-security").is_none(), "never over plain HTTP");
    let secure = Proxy::https(p.https, crate::https::trusted(&p), false);
    let over_tls = secure.get("dressed.kinds.test", "/").await;
    assert_eq!(over_tls.headers["strict-transport-security"], "max-age=600; includeSubDomains");
    assert_eq!(over_tls.json()["headers"]["x-seen-host"], json!(["dressed.kinds.test over https"]));

    // Error pages: the host's, the default, and JSON for a client that prefers it.
    let own = plain.ask("GET", "down.kinds.test", "/", &[("accept", "text/html")]).await;
    let id = own.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!((own.status, own.text()), (StatusCode::BAD_GATEWAY, format!("<h1>down {id}</h1>")));
    let default = plain.get("plain.kinds.test", "/").await;
    let id = default.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(default.text(), format!("<p>default 502 for {id}</p>"));
    let json = plain.ask("GET", "down.kinds.test", "/", &[("accept", "application/json")]).await;
    assert_eq!(json.headers["content-type"], "application/json");
    let body = json.json();
    assert_eq!(
        (body["status"].as_u64(), body["request_id"].as_str()),
        (Some(502), json.headers["x-request-id"].to_str().ok())
    );
    assert!(body["message"].as_str().unwrap().contains("could not be reached"), "{body}");
    // A name no host has is Portico's own answer too: the default page.
    assert!(plain.get("nobody.kinds.test", "/").await.text().starts_with("<p>default 404 for "));
    // A target's own 5xx is its answer, left as it is.
    let forced = json!({"host": "forced.kinds.test", "ip": "127.0.0.1", "targetPort": port, "forcessl": false,
        "errorPages": {"default": "replaced"}});
    assert_eq!(api.call("POST", "/api/host", r, Some(forced)).await.status, StatusCode::OK);
    backend.set_health(503);
    let theirs = eventually(std::time::Duration::from_secs(5), "routed", || async {
        let a = plain.get("forced.kinds.test", "/healthz").await;
        (a.status == StatusCode::SERVICE_UNAVAILABLE).then_some(a)
    })
    .await;
    assert_eq!(theirs.text(), "health 503", "the target's own answer");

    for (rules, says) in [
        (json!({"request": {"set": {"Host": "evil"}}}), "no rule may change it"),
        (json!({"response": {"remove": ["Transfer-Encoding"]}}), "no rule may change it"),
        (json!({"request": {"set": {"X-A": "{secret}"}}}), "is not a placeholder"),
    ] {
        let refused = api.call("PUT", "/api/host/dressed.kinds.test", r, Some(json!({"headers": rules}))).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
        assert_eq!(refused.json["keys"][0]["key"], "headers");
        assert!(refused.raw.contains(says), "{}", refused.raw);
    }
    let unchanged = api.call("GET", "/api/host/dressed.kinds.test", r, None).await;
    assert_eq!(unchanged.json["results"]["headers"]["response"]["set"]["x-frame-options"], "DENY", "nothing lost");
}

/// What curl (libcurl's zstd, brotli and zlib decoders) got from `p` for `host` and `path`
/// asking with `accept_encoding` (and `extra` options): the response headers, lower-cased,
/// and the body (decoded, unless `extra` says `--raw`).
fn curl(
    p: &portico_test_support::Portico,
    host: &str,
    path: &str,
    accept_encoding: &str,
    extra: &[&str],
) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let decode: &[&str] = if extra.contains(&"--raw") { &[] } else { &["--compressed"] };
    let out = std::process::Command::new("curl")
        .arg("-s")
        .args(decode)
        .arg("-D")
        .arg(&headers)
        .args(["-H", &format!("Accept-Encoding: {accept_encoding}"), "-H", &format!("Host: {host}")])
        .args(extra)
        .arg(format!("http://127.0.0.1:{}{path}", p.http.port()))
        .output()
        .expect("curl (./scripts/test installs it)");
    assert!(out.status.success(), "curl {host}{path}: {}", String::from_utf8_lossy(&out.stderr));
    (std::fs::read_to_string(headers).unwrap().to_ascii_lowercase(), out.stdout)
}

// curl runs on a worker thread of its own while the backend (a task here) answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_compressed_as_the_client_asks_and_only_when_it_is_worth_it() {
    let p = portico(&[]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let backend = Backend::start("compressing").await;
    let port = backend.addr.port();
    for (name, compress) in [("zip.kinds.test", true), ("plain-zip.kinds.test", false)] {
        let host =
            json!({"host": name, "ip": "127.0.0.1", "targetPort": port, "forcessl": false, "compress": compress});
        assert_eq!(api.call("POST", "/api/host", r, Some(host)).await.status, StatusCode::OK);
    }
    let shown = api.call("GET", "/api/host/zip.kinds.test", r, None).await;
    assert_eq!(shown.json["results"]["compress"], true);
    let page = portico_test_support::backend::html(100 * 1024);
    eventually(std::time::Duration::from_secs(5), "routed", || async {
        curl(&p, "plain-zip.kinds.test", "/html/10", "identity", &[]).0.starts_with("http/1.1 200").then_some(())
    })
    .await;

    let ask = |accept: &str| curl(&p, "zip.kinds.test", "/html/102400", accept, &[]);
    for (accept, coding) in [
        ("zstd", "zstd"),
        ("br", "br"),
        ("gzip", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("br;q=1, zstd;q=0.5", "br"),
    ] {
        let (headers, body) = ask(accept);
        assert!(headers.contains(&format!("content-encoding: {coding}\r\n")), "{accept}: {headers}");
        assert!(headers.contains("vary: accept-encoding"), "{headers}");
        assert!(headers.contains("etag: w/\"page-v1\""), "the ETag weakened: {headers}");
        assert!(!headers.contains("content-length"), "streamed: {headers}");
        assert_eq!(body, page.as_bytes(), "{accept}: decoded by curl, the page whole");
    }
    let (_, on_the_wire) = curl(&p, "zip.kinds.test", "/html/102400", "zstd", &["--raw"]);
    assert!(on_the_wire.len() * 5 < page.len(), "100 KiB of HTML sent in {} bytes", on_the_wire.len());

    // Not compressed: no Accept-Encoding, too short, a range, no-transform, already encoded,
    // a host that does not compress.
    let not = |host: &str, path: &str, accept: &str, extra: &[&str]| {
        let (headers, body) = curl(&p, host, path, accept, extra);
        assert!(
            !headers.contains("content-encoding: zstd") && !headers.contains("content-encoding: gzip"),
            "{path} {extra:?}: {headers}"
        );
        (headers, body)
    };
    let (headers, body) = not("zip.kinds.test", "/html/102400", "identity", &[]);
    assert!(headers.contains("vary: accept-encoding") && headers.contains("etag: \"page-v1\""), "{headers}");
    assert_eq!(body, page.as_bytes());
    not("zip.kinds.test", "/html/500", "zstd, gzip", &[]);
    not("zip.kinds.test", "/html/102400", "zstd, gzip", &["-r", "0-99"]);
    not("zip.kinds.test", "/html/102400?no-transform", "zstd, gzip", &[]);
    let (headers, _) = not("zip.kinds.test", "/html/102400?encoded", "zstd, gzip", &["--raw"]);
    assert!(headers.contains("content-encoding: br"), "the target's own coding kept: {headers}");
    let (headers, _) = not("plain-zip.kinds.test", "/html/102400", "zstd, gzip", &[]);
    assert!(!headers.contains("vary: accept-encoding"), "{headers}");
}
