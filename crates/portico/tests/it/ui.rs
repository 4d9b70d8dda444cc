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
    // A company CA's certificate for the upload step, and a key that is not its own.
    let uploads = tempfile::tempdir().unwrap();
    let company = portico_test_support::tls::TestCa::root("UI Company Root");
    let (leaf, key) = company.leaf(&["ui.example.test"], -60, 60 * 86400);
    let (_, wrong) = company.leaf(&["ui.example.test"], -60, 60 * 86400);
    for (file, text) in [("chain.pem", leaf), ("key.pem", key), ("wrong-key.pem", wrong)] {
        std::fs::write(uploads.path().join(file), text).unwrap();
    }
    let run = tokio::task::spawn_blocking({
        let (api, http, https, data_dir) = (p.api, p.http, p.https, p.data_dir().to_owned());
        let port = backend.addr.port().to_string();
        let port2 = second.addr.port().to_string();
        let browser = browser.clone();
        let artifacts = artifacts.clone();
        let uploads = uploads.path().to_owned();
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
                .env("UPLOADS", uploads)
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

/// Lighthouse (npm) scores the sign-in page, the overview and the hosts page (with a few hosts,
/// one of them checked, one with an access rule) 100 for accessibility and for best practices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_scores_full_marks_in_lighthouse() {
    let p = Portico::start(BIN, &["metrics.listen=\"127.0.0.1:0\""]);
    let backend = Backend::start("lighthouse-backend").await;
    p.add_host("app.example.test", backend.addr, &[]);
    p.add_host("checked.example.test", backend.addr, &["--health-check", "/"]);
    p.add_host("*.example.test", backend.addr, &["--allow", "127.0.0.1/32"]);
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../browser");
    let api = p.api;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(browser.join("lighthouse.mjs"))
            .env("TEST_API", format!("http://{api}"))
            .env("TEST_PASSWORD", ADMIN_PASSWORD)
            .output()
            .expect("node (./scripts/test installs it, with the browser tests' packages)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for page in ["sign-in", "overview", "hosts"] {
        let line = format!("score: {page} accessibility=100 best-practices=100");
        assert!(stdout.lines().any(|l| l == line), "{page}: {stdout}");
    }
    assert!(!stdout.contains("warning:"), "complete runs, nothing left out: {stdout}");
}
