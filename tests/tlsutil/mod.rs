//! TLS client helpers for tests of TLS listeners (c2s direct TLS, HTTPS).
#![allow(dead_code)]

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Write a self-signed certificate for `names` as two files, the way Let's
/// Encrypt lays them out: `dir/fullchain.pem` and `dir/privkey.pem`.
pub fn write_split_cert(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("cert dir");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let g = rcgen::generate_simple_self_signed(names).expect("generate certificate");
    let chain = dir.join("fullchain.pem");
    let key = dir.join("privkey.pem");
    std::fs::write(&chain, g.cert.pem()).expect("write chain");
    std::fs::write(&key, g.signing_key.serialize_pem()).expect("write key");
    (chain, key)
}

/// A client trusting only the certificates in `pem` (no client auth).
pub fn client_config(pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).expect("cert file") {
        roots.add(cert.expect("certificate")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Connect and complete a TLS handshake for server name `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 GET over any stream (`Connection: close`); the whole response.
pub async fn http_get<S>(s: &mut S, host: &str, path: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
