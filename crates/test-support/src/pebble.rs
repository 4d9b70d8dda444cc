//! A real Pebble ACME server and pebble-challtestsrv (its DNS), started for one test.
//!
//! Pebble's validation authority dials fixed ports (`httpPort`, `tlsPort`) on the address its
//! DNS answers (127.0.0.1 here), so the proxy under test must listen on those ports: the
//! harness picks a block of ports below the ephemeral range (32768 and up) at random, and
//! tries another block when something already holds one of them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tempfile::TempDir;

use crate::Portico;

/// Ports of one test's ACME setup.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Pebble's ACME API.
    pub acme: u16,
    /// Pebble's management API (`/roots/0`).
    pub management: u16,
    /// challtestsrv's management API.
    pub chall: u16,
    /// challtestsrv's DNS server.
    pub dns: u16,
    /// Where Pebble validates HTTP-01: the proxy's HTTP listener.
    pub http: u16,
    /// Where Pebble validates TLS-ALPN-01: the proxy's HTTPS listener.
    pub tls: u16,
}

impl Ports {
    /// A random block of six ports between 20000 and 32000.
    pub fn pick() -> Self {
        let base = 20_000 + 6 * fastrand::u16(0..2000);
        Self { acme: base, management: base + 1, chall: base + 2, dns: base + 3, http: base + 4, tls: base + 5 }
    }
}

/// Options of a Pebble run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `certificateValidityPeriod` in seconds (Pebble's default is five years).
    pub validity_secs: Option<u64>,
    /// Require External Account Binding, with the one key [`EAB_KID`] / [`EAB_HMAC_KEY`].
    pub require_eab: bool,
    /// The DNS server Pebble asks (challtestsrv's by default), such as a test's Knot.
    pub dns_server: Option<std::net::SocketAddr>,
}

/// The EAB key id Pebble accepts when [`Options::require_eab`] is set.
pub const EAB_KID: &str = "kid-portico";
/// Its HMAC key, base64url as CAs hand them out.
pub const EAB_HMAC_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

/// Running Pebble and challtestsrv. Both are killed on drop.
pub struct Pebble {
    /// The ports in use.
    pub ports: Ports,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM file of the CA that signed Pebble's own HTTPS listener (for `tls.acme_ca_roots`).
    pub listener_ca: PathBuf,
    pebble: Option<Child>,
    chall: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// The DNS server Pebble asks.
    dns_server: String,
    _dir: TempDir,
}

/// Starts `pebble` with `config`, asking `dns_server`, its output into `log`.
fn spawn_pebble(config: &std::path::Path, dns_server: &str, log: &Arc<Mutex<Vec<String>>>) -> Result<Child, String> {
    let mut pebble = Command::new("pebble")
        .arg("-config")
        .arg(config)
        .args(["-dnsserver", dns_server, "-strict=false"])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pebble does not start: {e}"))?;
    capture(&mut pebble, log, "pebble");
    Ok(pebble)
}

impl Pebble {
    /// Starts challtestsrv and Pebble on `ports`; `Err` if either cannot listen.
    pub fn start(ports: Ports, options: Options) -> Result<Self, String> {
        // A block another test's Pebble holds is passed over at once: waiting for the ports to
        // answer would take that Pebble for this one.
        for port in [ports.acme, ports.management, ports.chall, ports.dns] {
            std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("port {port} is taken: {e}"))?;
        }
        let dir = TempDir::new().map_err(|e| e.to_string())?;
        let listener_ca = dir.path().join("listener-ca.pem");
        let (ca_pem, cert_pem, key_pem) = listener_certificates();
        std::fs::write(&listener_ca, ca_pem).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("cert.pem"), cert_pem).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("key.pem"), key_pem).map_err(|e| e.to_string())?;
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", ports.acme),
            "managementListenAddress": format!("127.0.0.1:{}", ports.management),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": ports.http,
            "tlsPort": ports.tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if options.require_eab {
            config["pebble"]["externalAccountBindingRequired"] = true.into();
            config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ EAB_KID: EAB_HMAC_KEY });
        }
        if let Some(secs) = options.validity_secs {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).map_err(|e| e.to_string())?;

        let log = Arc::new(Mutex::new(Vec::new()));
        let mut chall = Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{}", ports.chall)])
            .args(["-dns01", &format!("127.0.0.1:{}", ports.dns)])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("pebble-challtestsrv does not start (is the pebble package installed?): {e}"))?;
        capture(&mut chall, &log, "challtestsrv");
        let dns_server = options.dns_server.map_or(format!("127.0.0.1:{}", ports.dns), |a| a.to_string());
        let pebble = spawn_pebble(&config_path, &dns_server, &log)?;
        let mut this = Self {
            ports,
            directory: format!("https://127.0.0.1:{}/dir", ports.acme),
            listener_ca,
            pebble: Some(pebble),
            chall: Some(chall),
            log,
            dns_server,
            _dir: dir,
        };
        for port in [ports.acme, ports.management, ports.chall] {
            this.wait_listening(port)?;
        }
        Ok(this)
    }

    /// Starts Pebble again after [`Pebble::stop`]: the same directory URL and HTTPS
    /// listener, a new CA (Pebble keeps no state), no accounts.
    pub fn start_again(&mut self) {
        assert!(self.pebble.is_none(), "pebble is stopped first");
        let config = self._dir.path().join("pebble.json");
        self.pebble = Some(spawn_pebble(&config, &self.dns_server, &self.log).expect("pebble starts again"));
        self.wait_listening(self.ports.acme).expect("pebble listens again");
        self.wait_listening(self.ports.management).expect("pebble's management API listens again");
    }

    /// Starts on a random block of ports, trying others while some are taken.
    pub fn start_anywhere(options: Options) -> Self {
        let mut errors = Vec::new();
        for _ in 0..8 {
            match Self::start(Ports::pick(), options) {
                Ok(pebble) => return pebble,
                Err(e) => errors.push(e),
            }
        }
        panic!("pebble did not start: {errors:?}");
    }

    fn wait_listening(&mut self, port: u16) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            for child in [&mut self.pebble, &mut self.chall].into_iter().flatten() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("exited with {status}: {:?}", self.log.lock().unwrap()));
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("port {port} did not open: {:?}", self.log.lock().unwrap()))
    }

    /// The root that Pebble's issued certificates chain to (`/roots/0`), PEM.
    pub async fn root(&self) -> String {
        self.get(&format!("https://127.0.0.1:{}/roots/0", self.ports.management)).await
    }

    /// Pebble's directory served by a stand-in that adds `meta.profiles` (Debian's Pebble 2.4
    /// has none), every other URL in it still Pebble's: a CA whose directory offers
    /// `profiles`. Pebble takes the orders (it ignores their `profile`).
    pub async fn with_profiles(&self, profiles: &[&str]) -> ProfiledDirectory {
        let mut directory: serde_json::Value = serde_json::from_str(&self.get(&self.directory).await).unwrap();
        let offered: serde_json::Map<String, serde_json::Value> = profiles
            .iter()
            .map(|p| ((*p).to_owned(), format!("https://ca.example/docs/profiles#{p}").into()))
            .collect();
        directory["meta"]["profiles"] = offered.into();
        ProfiledDirectory::serve(directory.to_string()).await
    }

    /// GET `url` on Pebble's HTTPS listeners: the body.
    async fn get(&self, url: &str) -> String {
        let pem = std::fs::read_to_string(&self.listener_ca).unwrap();
        let tls = crate::tls::client_config(Some(crate::tls::roots(&pem)), &[]);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_only()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, crate::client::Body>(connector);
        let response = client.get(url.parse().unwrap()).await.unwrap();
        let answer = crate::client::read(response).await;
        assert!(answer.status.is_success(), "{}", answer.text());
        answer.text()
    }

    /// How many log lines of Pebble's contain `text` (say `/order-plz`, one per new order).
    pub fn count(&self, text: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(text)).count()
    }

    /// New orders so far.
    pub fn orders(&self) -> usize {
        self.count("POST /order-plz")
    }

    /// New accounts so far.
    pub fn accounts(&self) -> usize {
        self.count("POST /sign-me-up")
    }

    /// Makes challtestsrv answer `host` with a CNAME to `target`.
    pub async fn set_cname(&self, host: &str, target: &str) {
        let body = serde_json::json!({"host": format!("{host}."), "target": format!("{target}.")});
        let answer = challtestsrv(self.ports.chall, "/set-cname", body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "set-cname: {answer}");
    }

    /// Freezes Pebble (SIGSTOP): requests to it wait until [`Pebble::resume`].
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Lets a paused Pebble go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let child = self.pebble.as_ref().expect("pebble runs");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Stops Pebble (challtestsrv keeps running): the CA is down.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The proxy settings that point Portico at this Pebble, with its listeners on the ports
    /// Pebble validates.
    pub fn portico_settings(&self) -> Vec<String> {
        vec![
            "tls.issuer=\"acme\"".to_owned(),
            format!("tls.acme_directory=\"{}\"", self.directory),
            format!("tls.acme_ca_roots=[\"{}\"]", self.listener_ca.display()),
            format!("proxy.http=\"127.0.0.1:{}\"", self.ports.http),
            format!("proxy.https=\"127.0.0.1:{}\"", self.ports.tls),
        ]
    }

    /// The address Pebble validates HTTP-01 on.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }
}

/// A directory document served over HTTPS on loopback (see [`Pebble::with_profiles`]).
pub struct ProfiledDirectory {
    /// Its URL.
    pub url: String,
    /// PEM file of its self-signed certificate (for an issuer's `ca_roots`).
    pub cert: PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl ProfiledDirectory {
    async fn serve(document: String) -> Self {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let dir = TempDir::new().unwrap();
        let cert = dir.path().join("directory.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/dir", listener.local_addr().unwrap());
        let document = bytes::Bytes::from(document);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (acceptor, document) = (acceptor.clone(), document.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let service = hyper::service::service_fn(move |_| {
                        let body = http_body_util::Full::new(document.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { url, cert, task, _dir: dir }
    }
}

impl Drop for ProfiledDirectory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pebble, and `bin serve` pointed at it with its listeners on the ports Pebble validates
/// (another block of ports when one is taken), with `extra` settings on top.
pub fn with_portico(bin: impl AsRef<std::path::Path>, options: Options, extra: &[&str]) -> (Pebble, Portico) {
    with_portico_for(bin, options, |_| extra.iter().map(|s| (*s).to_owned()).collect())
}

/// Like [`with_portico`], with extra settings that depend on the Pebble started (its ports).
pub fn with_portico_for(
    bin: impl AsRef<std::path::Path>,
    options: Options,
    extra: impl Fn(&Pebble) -> Vec<String>,
) -> (Pebble, Portico) {
    let mut errors = Vec::new();
    for _ in 0..5 {
        let pebble = Pebble::start_anywhere(options);
        let mut settings = pebble.portico_settings();
        settings.extend(extra(&pebble));
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        match Portico::try_start(bin.as_ref(), &settings) {
            Ok(p) => return (pebble, p),
            Err(e) => errors.push(e),
        }
    }
    panic!("could not start portico beside pebble: {errors:?}");
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [self.pebble.take(), self.chall.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One call to the management API of the challtestsrv on `port`; the raw answer (empty if
/// it could not be reached).
pub async fn challtestsrv(port: u16, path: &str, body: serde_json::Value) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return String::new() };
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer
}

/// Copies a child's output, line by line, into `log`.
fn capture(child: &mut Child, log: &Arc<Mutex<Vec<String>>>, who: &'static str) {
    let outputs: Vec<Box<dyn std::io::Read + Send>> = [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for output in outputs {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                log.lock().unwrap().push(format!("{who}: {line}"));
            }
        });
    }
}

/// A CA and a leaf for 127.0.0.1/localhost, for Pebble's own HTTPS listener (rustls refuses a
/// CA certificate used as a server's).
fn listener_certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "pebble listener test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}
