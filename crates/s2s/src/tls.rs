//! TLS for s2s: our certificates in both roles (server, and client for SASL
//! EXTERNAL at the peer), any peer certificate accepted during the handshake
//! (its key is still proven by the handshake signature), and the peer's
//! chain checked afterwards against the system roots plus `s2s_cafile` for
//! the domain it claims. A peer whose certificate does not check out may
//! still authenticate with Server Dialback.

use palaver_server::tls::CertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// ALPN protocol of XEP-0368 direct TLS for servers.
pub const ALPN: &[u8] = b"xmpp-server";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trusted roots: the system's plus a PEM file of extra CAs.
pub fn roots(cafile: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(path) = cafile {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("s2s_cafile {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("s2s_cafile {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("s2s_cafile {}: no certificate", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("s2s_cafile {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

/// The TLS side of federation.
pub struct Tls {
    certs: Arc<CertStore>,
    verifier: Option<Arc<WebPkiServerVerifier>>,
    algs: WebPkiSupportedAlgorithms,
    server: Arc<rustls::ServerConfig>,
    server_direct: Arc<rustls::ServerConfig>,
}

#[derive(Debug)]
struct AnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl ClientCertVerifier for AnyCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[derive(Debug)]
struct ServerCert(Arc<CertStore>);

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key(hello.server_name()))
    }
}

#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl Tls {
    /// TLS for s2s over the server's certificates and these roots.
    pub fn new(certs: Arc<CertStore>, roots: RootCertStore) -> Result<Tls, String> {
        let p = provider();
        let algs = p.signature_verification_algorithms;
        let verifier = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), p.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        };
        let server_cfg = |alpn: &[&[u8]]| -> Result<Arc<rustls::ServerConfig>, String> {
            let mut c = rustls::ServerConfig::builder_with_provider(p.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_client_cert_verifier(Arc::new(AnyCert(algs)))
                .with_cert_resolver(Arc::new(ServerCert(certs.clone())));
            c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            Ok(Arc::new(c))
        };
        Ok(Tls {
            server: server_cfg(&[])?,
            server_direct: server_cfg(&[ALPN])?,
            certs,
            verifier,
            algs,
        })
    }

    /// The server config for STARTTLS (`direct: false`) or XEP-0368 direct TLS.
    pub fn server(&self, direct: bool) -> Arc<rustls::ServerConfig> {
        if direct {
            self.server_direct.clone()
        } else {
            self.server.clone()
        }
    }

    /// A client config presenting `local`'s certificate.
    pub fn client(&self, local: &str, direct: bool) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(self.algs)))
            .with_client_cert_resolver(Arc::new(ClientCert(self.certs.certified_key(Some(local)))));
        if direct {
            c.alpn_protocols = vec![ALPN.to_vec()];
        }
        Ok(Arc::new(c))
    }

    /// Whether `chain` (end entity first) is valid for `domain` under the
    /// trusted roots, now.
    pub fn valid_for(&self, chain: &[CertificateDer<'static>], domain: &str) -> bool {
        let (Some(v), Some((ee, rest))) = (&self.verifier, chain.split_first()) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return false;
        };
        v.verify_server_cert(ee, rest, &name, &[], UnixTime::now())
            .is_ok()
    }
}
