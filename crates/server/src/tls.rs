//! TLS: certificates per virtual host (SNI), generated self-signed
//! certificates for hosts without one, and channel-binding data.

use palaver_proto::sasl::ChannelBindings;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnection};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Certificate loading errors.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("certificate file {path}: {msg}")]
    File {
        /// Path.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// Generating a certificate failed.
    #[error("cannot generate a certificate for {0}: {1}")]
    Generate(String, String),
}

struct Entry {
    key: Arc<CertifiedKey>,
    end_point: Vec<u8>,
}

/// One loaded set of certificates by server name.
struct CertSet {
    by_name: HashMap<String, Arc<Entry>>,
    default: Arc<Entry>,
    /// Hosts that no file of `certfiles` covers (they use a generated
    /// self-signed certificate).
    generated: Vec<String>,
}

/// Certificates by server name, reloadable while the server runs
/// ([`CertStore::reload`], on `SIGHUP`): new handshakes use the new set,
/// established connections keep theirs.
pub struct CertStore {
    current: std::sync::RwLock<Arc<CertSet>>,
    /// `certfiles` and the served hosts (a configuration reload changes them).
    sources: std::sync::RwLock<Arc<(Vec<PathBuf>, Vec<String>)>>,
    data_dir: PathBuf,
}

/// Certificates loaded for a new configuration, not in use yet
/// ([`CertStore::install`]).
pub struct PreparedCerts {
    set: CertSet,
    certfiles: Vec<PathBuf>,
    hosts: Vec<String>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("names", &self.set().by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What `palaver config check` says about one served host's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertWarning {
    /// No file of `certfiles` covers the host: a self-signed certificate
    /// is generated (clients and servers will not trust it).
    NotCovered(String),
    /// The host's certificate has expired.
    Expired { host: String, days_ago: i64 },
    /// The host's certificate expires within 14 days.
    ExpiresSoon { host: String, days: i64 },
}

impl std::fmt::Display for CertWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertWarning::NotCovered(h) => write!(
                f,
                "config key `certfiles`: no certificate in `certfiles` covers host {h}: a self-signed one is used, which clients and other servers will not trust"
            ),
            CertWarning::Expired { host, days_ago } => {
                write!(
                    f,
                    "config key `certfiles`: the certificate of host {host} expired {days_ago} day(s) ago"
                )
            }
            CertWarning::ExpiresSoon { host, days } => {
                write!(
                    f,
                    "config key `certfiles`: the certificate of host {host} expires in {days} day(s)"
                )
            }
        }
    }
}

/// RFC 5929 §4.1: hash the certificate with its signature's hash, SHA-256 for MD5/SHA-1.
fn end_point_hash(der: &[u8]) -> Vec<u8> {
    // DER-encoded OIDs of signature algorithms using SHA-384 / SHA-512.
    const SHA384: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    // The outer signatureAlgorithm follows the TBSCertificate; look at the tail.
    let tail = &der[der.len().saturating_sub(160)..];
    let contains = |needle: &[u8]| tail.windows(needle.len()).any(|w| w == needle);
    if SHA512.iter().any(|o| contains(o)) {
        Sha512::digest(der).to_vec()
    } else if SHA384.iter().any(|o| contains(o)) {
        Sha384::digest(der).to_vec()
    } else {
        Sha256::digest(der).to_vec()
    }
}

/// What one PEM file holds: a certificate chain and/or a private key.
fn read_pem(
    path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, Option<PrivateKeyDer<'static>>), TlsError> {
    let err = |msg: String| TlsError::File {
        path: path.to_path_buf(),
        msg,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(path).ok();
    if certs.is_empty() && key.is_none() {
        return Err(err("no certificate or private key found".into()));
    }
    Ok((certs, key))
}

fn load_pem(
    path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let err = |msg: String| TlsError::File {
        path: path.to_path_buf(),
        msg,
    };
    let (certs, key) = read_pem(path)?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    let key = key.ok_or_else(|| err("no usable private key".into()))?;
    Ok((certs, key))
}

/// Expand `certfiles` as ejabberd does: a path with `*`, `?` or `[...]` in
/// it stands for the files it matches (sorted; none is a warning), e.g.
/// `/etc/letsencrypt/live/*/fullchain.pem`; other paths are taken as they are.
pub fn expand_certfiles(patterns: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        let text = p.to_string_lossy();
        if !crate::config::is_glob(&text) {
            out.push(p.clone());
            continue;
        }
        let mut found = vec![PathBuf::new()];
        for comp in p.components() {
            let part = comp.as_os_str().to_string_lossy().into_owned();
            let mut next = Vec::new();
            for base in &found {
                if !crate::config::is_glob(&part) {
                    next.push(base.join(comp.as_os_str()));
                    continue;
                }
                let dir = if base.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    base.clone()
                };
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.') && crate::config::glob_match(&part, n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| base.join(n)));
            }
            found = next;
        }
        found.retain(|f| f.is_file());
        if found.is_empty() {
            tracing::warn!(pattern = %p.display(), "certfiles: no file matches");
        }
        out.extend(found);
    }
    out.dedup();
    out
}

fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    path: &Path,
) -> Result<Entry, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let end_point = end_point_hash(&certs[0]);
    let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    Ok(Entry {
        key: Arc::new(key),
        end_point,
    })
}

fn valid_for(entry: &Entry, name: &str) -> bool {
    let Some(der) = entry.key.cert.first() else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
        return false;
    };
    let Ok(sn) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&sn).is_ok()
}

impl CertStore {
    /// Load `certfiles`, and generate (once, kept under `data_dir/certs`) a
    /// self-signed certificate for each host no file covers.
    pub fn load(
        certfiles: &[PathBuf],
        hosts: &[String],
        data_dir: &Path,
    ) -> Result<CertStore, TlsError> {
        let set = CertSet::load(certfiles, hosts, data_dir)?;
        Ok(CertStore {
            current: std::sync::RwLock::new(Arc::new(set)),
            sources: std::sync::RwLock::new(Arc::new((certfiles.to_vec(), hosts.to_vec()))),
            data_dir: data_dir.to_path_buf(),
        })
    }

    fn sources(&self) -> Arc<(Vec<PathBuf>, Vec<String>)> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Load `certfiles` for `hosts` (a new configuration's), generating
    /// certificates for hosts no file covers; nothing changes until
    /// [`CertStore::install`].
    pub fn prepare(
        &self,
        certfiles: &[PathBuf],
        hosts: &[String],
    ) -> Result<PreparedCerts, TlsError> {
        Ok(PreparedCerts {
            set: CertSet::load(certfiles, hosts, &self.data_dir)?,
            certfiles: certfiles.to_vec(),
            hosts: hosts.to_vec(),
        })
    }

    /// Serve the prepared certificates to new handshakes.
    pub fn install(&self, p: PreparedCerts) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p.set);
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = Arc::new((p.certfiles, p.hosts));
    }

    fn set(&self) -> Arc<CertSet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read `certfiles` again (renewed certificates) and use them for new
    /// handshakes. On an error the current certificates stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let src = self.sources();
        let p = self.prepare(&src.0, &src.1)?;
        self.install(p);
        Ok(())
    }

    /// Hosts whose certificates will not be trusted or expire within 14
    /// days (at `now`, seconds since the Unix epoch).
    pub fn warnings(&self, now: i64) -> Vec<CertWarning> {
        let set = self.set();
        let mut out: Vec<CertWarning> = set
            .generated
            .iter()
            .map(|h| CertWarning::NotCovered(h.clone()))
            .collect();
        let src = self.sources();
        for host in &src.1 {
            if set.generated.contains(host) {
                continue;
            }
            let Some(not_after) = set
                .by_name
                .get(host)
                .and_then(|e| e.key.cert.first())
                .and_then(|der| not_after(der))
            else {
                continue;
            };
            let days = (not_after - now).div_euclid(86_400);
            if not_after <= now {
                out.push(CertWarning::Expired {
                    host: host.clone(),
                    days_ago: (now - not_after).div_euclid(86_400),
                });
            } else if days < 14 {
                out.push(CertWarning::ExpiresSoon {
                    host: host.clone(),
                    days,
                });
            }
        }
        out
    }

    fn entry_for(&self, sni: Option<&str>) -> Arc<Entry> {
        self.set().entry_for(sni).clone()
    }

    /// The certificate and key served for `name` (SNI; the default without
    /// one): for s2s, which presents it as a TLS client too and builds its
    /// own configs (client certificates requested).
    pub fn certified_key(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        self.entry_for(name).key.clone()
    }

    /// A rustls server config with the given ALPN protocols: TLS 1.2 and
    /// 1.3 only (rustls implements nothing older), certificates by SNI from
    /// the current set.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_no_client_auth()
                        .with_cert_resolver(Arc::new(Resolver(self.clone())))
                });
        match &mut cfg {
            Ok(c) => {
                c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                c.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
            }
            Err(e) => tracing::error!(error = %e, "TLS configuration failed"),
        }
        match cfg {
            Ok(c) => Arc::new(c),
            Err(_) => unreachable!("ring provider supports the default protocol versions"),
        }
    }

    /// Channel-binding data of an established server connection.
    pub fn channel_bindings(&self, conn: &ServerConnection) -> ChannelBindings {
        let mut cb = ChannelBindings::default();
        if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            let mut out = vec![0u8; 32];
            if conn
                .export_keying_material(&mut out[..], b"EXPORTER-Channel-Binding", None)
                .is_ok()
            {
                cb.tls_exporter = Some(out);
            }
        }
        cb.tls_server_end_point = Some(self.entry_for(conn.server_name()).end_point.clone());
        cb
    }
}

impl CertSet {
    fn load(certfiles: &[PathBuf], hosts: &[String], data_dir: &Path) -> Result<CertSet, TlsError> {
        let mut loaded = Vec::new();
        // Files may hold a chain and its key together, or apart (Let's
        // Encrypt's fullchain.pem and privkey.pem): pair each chain with the
        // key in its file, else with whichever loose key matches it.
        let mut chains = Vec::new();
        let mut loose_keys = Vec::new();
        for p in expand_certfiles(certfiles) {
            match read_pem(&p)? {
                (certs, Some(key)) if !certs.is_empty() => {
                    loaded.push(Arc::new(certified(certs, key, &p)?));
                }
                (certs, None) => chains.push((p, certs)),
                (_, Some(key)) => loose_keys.push(key),
            }
        }
        for (p, certs) in chains {
            let entry = loose_keys
                .iter()
                .find_map(|k| certified(certs.clone(), k.clone_key(), &p).ok())
                .ok_or_else(|| TlsError::File {
                    path: p.clone(),
                    msg: "no private key in certfiles matches this certificate".into(),
                })?;
            loaded.push(Arc::new(entry));
        }
        let mut by_name = HashMap::new();
        let mut generated = Vec::new();
        for host in hosts {
            let found = loaded.iter().find(|e| valid_for(e, host)).cloned();
            let entry = match found {
                Some(e) => e,
                None => {
                    generated.push(host.clone());
                    Arc::new(Self::self_signed(host, data_dir)?)
                }
            };
            by_name.insert(host.clone(), entry);
        }
        let default = match hosts.first().and_then(|h| by_name.get(h)) {
            Some(e) => e.clone(),
            None => match loaded.first() {
                Some(e) => e.clone(),
                None => Arc::new(Self::self_signed("localhost", data_dir)?),
            },
        };
        Ok(CertSet {
            by_name,
            default,
            generated,
        })
    }

    fn self_signed(host: &str, data_dir: &Path) -> Result<Entry, TlsError> {
        let dir = data_dir.join("certs");
        let path = dir.join(format!("{host}.pem"));
        if path.exists() {
            let (certs, key) = load_pem(&path)?;
            return certified(certs, key, &path);
        }
        let generated =
            rcgen::generate_simple_self_signed(vec![host.to_string(), format!("*.{host}")])
                .map_err(|e| TlsError::Generate(host.into(), e.to_string()))?;
        let pem = format!(
            "{}{}",
            generated.cert.pem(),
            generated.signing_key.serialize_pem()
        );
        std::fs::create_dir_all(&dir)
            .map_err(|e| TlsError::Generate(host.into(), e.to_string()))?;
        std::fs::write(&path, pem).map_err(|e| TlsError::Generate(host.into(), e.to_string()))?;
        tracing::info!(host, path = %path.display(), "generated a self-signed certificate");
        let (certs, key) = load_pem(&path)?;
        certified(certs, key, &path)
    }

    fn entry_for(&self, sni: Option<&str>) -> &Arc<Entry> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.to_ascii_lowercase();
        if let Some(e) = self.by_name.get(&name) {
            return e;
        }
        // Subdomain services (conference.example.org) use their parent host's certificate.
        if let Some((_, parent)) = name.split_once('.')
            && let Some(e) = self.by_name.get(parent)
        {
            return e;
        }
        &self.default
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.entry_for(hello.server_name()).key.clone())
    }
}

/// The `notAfter` of a DER certificate, in seconds since the Unix epoch
/// (RFC 5280 §4.1: Certificate → tbsCertificate → validity).
fn not_after(der: &[u8]) -> Option<i64> {
    /// One DER TLV: (tag, content, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&l0, mut b) = b.split_first()?;
        let len = if l0 < 0x80 {
            l0 as usize
        } else {
            let n = (l0 & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let mut len = 0usize;
            for &x in &b[..n] {
                len = (len << 8) | x as usize;
            }
            b = &b[n..];
            len
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    // [0] version (optional), serial, signature, issuer, then validity.
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
        tbs = tlv(tbs)?.2; // serial
    } else {
        tbs = rest; // that was the serial
    }
    tbs = tlv(tbs)?.2; // signature
    tbs = tlv(tbs)?.2; // issuer
    let (_, validity, _) = tlv(tbs)?;
    let (_, _, after) = tlv(validity)?; // notBefore
    let (tag, t, _) = tlv(after)?;
    let t = std::str::from_utf8(t).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = t.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, t.get(2..)?)
        }
        0x18 => (t.get(0..4)?.parse().ok()?, t.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| -> Option<i64> { rest.get(r)?.parse().ok() };
    let (mo, d, h, mi, se) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod cert_tests {
    use super::*;

    fn cert_valid(host: &str, not_after: (i32, u8, u8)) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).expect("params");
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn reads_not_after() {
        let (pem, _) = cert_valid("a.test", (2031, 7, 15));
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("der");
        // 2031-07-15T00:00:00Z
        assert_eq!(not_after(&der), Some(1_941_840_000));
        assert_eq!(not_after(b"garbage"), None);
    }

    #[test]
    fn warns_about_uncovered_and_expiring_hosts_and_reloads() {
        let dir = tempfile_dir();
        let (pem, key) = cert_valid("soon.test", (2030, 1, 10));
        let file = dir.join("soon.pem");
        std::fs::write(&file, format!("{pem}{key}")).expect("write");
        let hosts = vec!["soon.test".to_string(), "bare.test".to_string()];
        let store = CertStore::load(std::slice::from_ref(&file), &hosts, &dir).expect("load");
        // 2030-01-01: nine days before the end.
        let now = 1_893_456_000;
        let w = store.warnings(now);
        assert!(
            w.contains(&CertWarning::NotCovered("bare.test".into())),
            "{w:?}"
        );
        assert!(
            w.contains(&CertWarning::ExpiresSoon {
                host: "soon.test".into(),
                days: 9
            }),
            "{w:?}"
        );
        let before = store.entry_for(Some("soon.test")).end_point.clone();
        // A renewed certificate, reloaded.
        let (pem, key) = cert_valid("soon.test", (2031, 1, 10));
        std::fs::write(&file, format!("{pem}{key}")).expect("write");
        store.reload().expect("reload");
        assert_ne!(store.entry_for(Some("soon.test")).end_point, before);
        assert_eq!(
            store.warnings(now),
            vec![CertWarning::NotCovered("bare.test".into())]
        );
        // A broken file: the reload fails and the current set stays.
        std::fs::write(&file, "not a pem").expect("write");
        assert!(store.reload().is_err());
        assert_eq!(store.warnings(now).len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "palaver-certs-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
