//! Portico's web UI in a real browser (Debian's chromium, driven by `browser/ui.mjs` with
//! playwright-core): every page, against a real Portico, a real backend and a fake DNS
//! provider. Screenshots of every step are kept in `browser/artifacts/`.

use std::process::Command;

use portico_test_support::dns_fake::{FakeDns, Provider};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico};

use crate::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_end_to_end() {
    let fake = FakeDns::start(Provider::Cloudflare, &["ui.test"]).await;
    // Metrics on: the overview shows the request rate.
    let p =
        Portico::start(BIN, &[&format!("dns.cloudflare_api=\"{}\"", fake.base()), "metrics.listen=\"127.0.0.1:0\""]);
    let backend = Backend::start("ui-backend").await;
    let second = Backend::start("ui-backend-2").await;
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../browser");
    let artifacts = browser.join("artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    let run = tokio::task::spawn_blocking({
        let (api, http, https, data_dir) = (p.api, p.http, p.https, p.data_dir().to_owned());
        let port = backend.addr.port().to_string();
        let port2 = second.addr.port().to_string();
        let browser = browser.clone();
        let artifacts = artifacts.clone();
        move || {
            Command::new("node")
                .arg(browser.join("ui.mjs"))
                .env("TEST_API", format!("http://{api}"))
                .env("TEST_PASSWORD", ADMIN_PASSWORD)
                .env("TEST_PROXY", http.to_string())
                .env("TEST_PROXY_TLS", https.to_string())
                .env("BACKEND_PORT", port)
                .env("BACKEND_NAME", "ui-backend")
                .env("BACKEND2_PORT", port2)
                .env("TEST_PORTICO_BIN", BIN)
                .env("TEST_DATA_DIR", data_dir)
                .env("ARTIFACTS", &artifacts)
                .output()
                .expect("node (./scripts/test installs it, with the browser tests' packages)")
        }
    });
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all steps passed"), "{stdout}");
    let shots = std::fs::read_dir(&artifacts).unwrap().count();
    assert!(shots >= 14, "a screenshot per step: {shots}");
}
