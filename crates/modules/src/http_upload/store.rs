//! XEP-0363 upload store: settings, URL signatures, quota and retention
//! of the files `mod_http_upload` hands out slots for.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// `mod_http_upload` options.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadOptions {
    /// Service domain; `@HOST@` is replaced by the virtual host.
    pub host: String,
    /// Largest file in bytes.
    pub max_size: u64,
    /// Per-user quota in bytes (0: none).
    pub quota: u64,
    /// HMAC secret for URL signatures (a random one is generated and kept in the data directory when empty).
    pub secret: String,
    /// Base URL of the HTTP listener as clients reach it (default: `http://HOST:PORT` of the first HTTP listener).
    pub base_url: Option<String>,
    /// Seconds a PUT URL stays valid.
    pub put_expiry: u64,
    /// Days files are kept (0: forever).
    pub retention_days: u64,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            host: "upload.@HOST@".into(),
            max_size: 100 << 20,
            quota: 1 << 30,
            secret: String::new(),
            base_url: None,
            put_expiry: 300,
            retention_days: 30,
        }
    }
}

/// Resolved settings.
pub struct Upload {
    /// Options.
    pub opts: UploadOptions,
    /// Directory of stored files.
    pub dir: PathBuf,
    secret: std::sync::OnceLock<Vec<u8>>,
}

type HmacSha256 = Hmac<Sha256>;

impl Upload {
    /// Settings for `opts`, files under `dir`. Without a secret in the
    /// options, a random one is created and kept under `dir` on first use.
    pub fn open(opts: UploadOptions, dir: PathBuf) -> Upload {
        let secret = std::sync::OnceLock::new();
        if !opts.secret.is_empty() {
            let _ = secret.set(opts.secret.as_bytes().to_vec());
        }
        Upload { opts, dir, secret }
    }

    fn key(&self) -> &[u8] {
        self.secret.get_or_init(|| {
            load_or_create_secret(&self.dir).unwrap_or_else(|| {
                tracing::warn!(
                    dir = %self.dir.display(),
                    "cannot keep the upload secret on disk; URLs will not survive a restart"
                );
                rand::random::<[u8; 32]>().to_vec()
            })
        })
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut m = match HmacSha256::new_from_slice(self.key()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"\n");
        }
        hex::encode(m.finalize().into_bytes())
    }

    /// The signature of a PUT for `path` with the declared size, type and expiry.
    pub fn put_signature(&self, path: &str, size: u64, content_type: &str, expiry: u64) -> String {
        self.mac(&[
            "PUT",
            path,
            &size.to_string(),
            content_type,
            &expiry.to_string(),
        ])
    }

    /// The signature of a GET for `path`.
    pub fn get_signature(&self, path: &str) -> String {
        self.mac(&["GET", path])
    }

    /// Constant-time check.
    pub fn verify(expected: &str, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
    }

    /// The directory of one user's files (a keyed hash: no JID on disk).
    pub fn owner_id(&self, bare_jid: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.key());
        h.update(bare_jid.as_bytes());
        hex::encode(&h.finalize()[..12])
    }

    /// Bytes a user currently stores.
    pub fn usage(&self, owner: &str) -> u64 {
        let mut total = 0;
        if let Ok(slots) = std::fs::read_dir(self.dir.join(owner)) {
            for slot in slots.flatten() {
                if let Ok(files) = std::fs::read_dir(slot.path()) {
                    for f in files.flatten() {
                        if let Ok(m) = f.metadata()
                            && m.is_file()
                            && !f.file_name().to_string_lossy().starts_with('.')
                        {
                            total += m.len();
                        }
                    }
                }
            }
        }
        total
    }

    /// Delete files older than the retention period.
    pub fn cleanup(&self) -> usize {
        if self.opts.retention_days == 0 {
            return 0;
        }
        let max_age = std::time::Duration::from_secs(self.opts.retention_days * 86_400);
        let mut removed = 0;
        let Ok(owners) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        for owner in owners.flatten().filter(|e| e.path().is_dir()) {
            let Ok(slots) = std::fs::read_dir(owner.path()) else {
                continue;
            };
            for slot in slots.flatten() {
                let old = slot
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > max_age);
                if old && std::fs::remove_dir_all(slot.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

fn load_or_create_secret(dir: &std::path::Path) -> Option<Vec<u8>> {
    let path = dir.join(".secret");
    if let Ok(s) = std::fs::read(&path)
        && s.len() >= 32
    {
        return Some(s);
    }
    std::fs::create_dir_all(dir).ok()?;
    let secret: [u8; 32] = rand::random();
    let hexed = hex::encode(secret).into_bytes();
    std::fs::write(&path, &hexed).ok()?;
    Some(hexed)
}

/// A file name safe on every file system: ASCII letters, digits, `.`, `-`,
/// `_`; no leading dot; at most 100 bytes; never empty.
pub fn sanitize_filename(name: &str) -> String {
    let mut out: String = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.starts_with('.') {
        out.remove(0);
    }
    out.truncate(100);
    if out.is_empty() { "file".into() } else { out }
}

/// Whether a string is a syntactically valid MIME type (`type/subtype`).
pub fn valid_content_type(ct: &str) -> bool {
    let base = ct.split(';').next().unwrap_or("").trim();
    let mut parts = base.split('/');
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(t), Some(s), None) if ok(t) && ok(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(sanitize_filename(".hidden"), "hidden");
        assert_eq!(sanitize_filename("é x.png"), "__x.png");
        assert_eq!(sanitize_filename(""), "file");
        assert!(valid_content_type("image/png"));
        assert!(valid_content_type("text/plain; charset=utf-8"));
        assert!(!valid_content_type("image"));
        assert!(!valid_content_type("a/b/c"));
        assert!(!valid_content_type("text/pl ain"));
    }

    #[test]
    fn signatures() {
        let opts = UploadOptions {
            secret: "k".into(),
            ..UploadOptions::default()
        };
        let u = Upload::open(opts, PathBuf::from("/nonexistent"));
        let s = u.put_signature("/upload/a/b/c", 10, "image/png", 99);
        assert!(Upload::verify(
            &s,
            &u.put_signature("/upload/a/b/c", 10, "image/png", 99)
        ));
        assert!(!Upload::verify(
            &s,
            &u.put_signature("/upload/a/b/c", 11, "image/png", 99)
        ));
        assert_ne!(u.get_signature("/x"), u.get_signature("/y"));
    }
}
