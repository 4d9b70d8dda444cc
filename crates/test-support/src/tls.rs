//! TLS clients for tests: a handshake to the proxy with a chosen SNI and ALPN, checked
//! against given roots (or not checked at all, to look at what an untrusted server sends),
//! and the certificate it served; a CA of one's own ([`TestCa`]) for certificates to bring.

use std::net::SocketAddr;
use std::sync::Arc;

use portico_certs::Meta;
pub use portico_certs::testing::TestCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Roots from PEM text (one or more certificates).
pub fn roots(pem: &str) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        store.add(cert.unwrap()).unwrap();
    }
    assert!(!store.is_empty(), "no certificate in {pem:?}");
    store
}

/// A client configuration trusting `roots` (`None`: trusting anything), offering `alpn`.
pub fn client_config(roots: Option<RootCertStore>, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut config = match roots {
        Some(roots) => ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        // The proxy's own unverified-target configuration: looks at what the server sends.
        None => portico_proxy::forward::insecure::client_config(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` with `sni` (an IP literal sends no SNI).
pub async fn connect(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// The leaf certificate a connection was set up with.
pub fn served(stream: &TlsStream<TcpStream>) -> Meta {
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().and_then(|c| c.first()).expect("the server sent a certificate");
    Meta::of(leaf).unwrap()
}

/// The SHA-256 of the leaf certificate served for `sni` (hex), without checking it: the
/// same certificate, byte for byte.
pub async fn fingerprint(addr: SocketAddr, sni: &str) -> String {
    use sha2::Digest as _;
    let stream = connect(addr, sni, client_config(None, &[])).await.expect("TLS handshake");
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("a certificate");
    sha2::Sha256::digest(leaf).iter().map(|b| format!("{b:02x}")).collect()
}

/// The certificate served for `sni`, without checking it.
pub async fn peek(addr: SocketAddr, sni: &str) -> Meta {
    served(&connect(addr, sni, client_config(None, &[])).await.expect("TLS handshake"))
}
