//! TLS to targets (`targetssl` hosts): verified, or as nginx's `proxy_ssl_verify off`.

use crate::ProxyConfig;

/// The TLS client configuration for targets (`targetssl` hosts): verified or not, as
/// `proxy.target_tls_verify` says; HTTP/1.1 only.
pub(crate) fn target_tls(config: &ProxyConfig) -> rustls::ClientConfig {
    let mut tls = if config.target_tls_verify {
        portico_certs::client_tls(rustls::RootCertStore::empty())
    } else {
        insecure::client_config()
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls
}

/// TLS to targets without certificate verification, as nginx's default
/// `proxy_ssl_verify off`: the handshake's signatures are still checked, the chain is not.
pub mod insecure {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

    /// A client configuration that checks the server's signatures but not its chain or name.
    pub fn client_config() -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(SkipChainVerification(provider.clone()));
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
            // The ring provider supports the default versions.
            .expect("ring supports TLS 1.2 and 1.3")
    }

    #[derive(Debug)]
    struct SkipChainVerification(Arc<CryptoProvider>);

    impl ServerCertVerifier for SkipChainVerification {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
