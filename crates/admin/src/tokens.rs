//! REST API bearer tokens: created by `palaver ctl api_token_create` (or
//! `palaver ctl token create --scope …`), shown once, stored hashed
//! (SHA-256) in `DATA_DIR/api_tokens.json` (mode 0600). A token is
//! `pvt_<id>_<secret>`; its scopes are `admin` (every command), a command
//! group (`accounts`, `sessions`, …) or command names.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the token store in the data directory.
pub const FILE_NAME: &str = "api_tokens.json";

/// One stored token (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenEntry {
    /// Public id (the part after `pvt_`).
    pub id: String,
    /// SHA-256 of the whole token, hex.
    pub hash: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

impl TokenEntry {
    /// Whether the token grants `command` (of `group`).
    pub fn allows(&self, command: &str, group: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s == "admin" || s == command || s == group)
    }
}

/// Why the token store failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the file.
    #[error("token store {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file is not a token store.
    #[error("token store {0} is unreadable: {1}")]
    Corrupt(PathBuf, String),
}

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the tokens of a data directory are.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Every stored token.
pub async fn load(data_dir: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    let p = path(data_dir);
    match tokio::fs::read(&p).await {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| TokenError::Corrupt(p, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(TokenError::Io(p, e)),
    }
}

async fn save(data_dir: &Path, all: &[TokenEntry]) -> Result<(), TokenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = path(data_dir);
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let body = serde_json::to_vec_pretty(all)
        .map_err(|e| TokenError::Corrupt(p.clone(), e.to_string()))?;
    let t = tmp.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let _ = std::fs::remove_file(&t);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&t)?;
        f.write_all(&body)?;
        f.sync_all()
    })
    .await
    .map_err(|e| TokenError::Io(tmp.clone(), std::io::Error::other(e)))?
    .map_err(|e| TokenError::Io(tmp.clone(), e))?;
    tokio::fs::rename(&tmp, &p)
        .await
        .map_err(|e| TokenError::Io(p, e))
}

/// Create a token; returns its entry and the token (shown once).
pub async fn create(
    data_dir: &Path,
    scopes: Vec<String>,
    description: String,
) -> Result<(TokenEntry, String), TokenError> {
    let _g = LOCK.lock().await;
    let mut all = load(data_dir).await?;
    let id = hex(&rand::random::<[u8; 6]>());
    let secret = hex(&rand::random::<[u8; 24]>());
    let token = format!("pvt_{id}_{secret}");
    let entry = TokenEntry {
        id,
        hash: hash(&token),
        scopes,
        description,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    all.push(entry.clone());
    save(data_dir, &all).await?;
    Ok((entry, token))
}

/// Remove the token `id`; whether it existed.
pub async fn revoke(data_dir: &Path, id: &str) -> Result<bool, TokenError> {
    let _g = LOCK.lock().await;
    let mut all = load(data_dir).await?;
    let before = all.len();
    all.retain(|e| e.id != id);
    if all.len() == before {
        return Ok(false);
    }
    save(data_dir, &all).await?;
    Ok(true)
}

/// The entry of a presented token, when it is valid.
pub async fn verify(data_dir: &Path, token: &str) -> Result<Option<TokenEntry>, TokenError> {
    use subtle::ConstantTimeEq;
    let Some(id) = token
        .strip_prefix("pvt_")
        .and_then(|r| r.split_once('_'))
        .map(|(id, _)| id)
    else {
        return Ok(None);
    };
    let h = hash(token);
    Ok(load(data_dir)
        .await?
        .into_iter()
        .find(|e| e.id == id && bool::from(e.hash.as_bytes().ct_eq(h.as_bytes()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (e, tok) = create(dir.path(), vec!["accounts".into()], "t".into())
            .await
            .unwrap();
        let file = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(!file.contains(&tok), "the token itself is never stored");
        let got = verify(dir.path(), &tok).await.unwrap().unwrap();
        assert_eq!(got, e);
        assert!(got.allows("register", "accounts"));
        assert!(!got.allows("kick_user", "sessions"));
        let mut wrong = tok.clone();
        wrong.pop();
        wrong.push('x');
        assert!(verify(dir.path(), &wrong).await.unwrap().is_none());
        assert!(revoke(dir.path(), &e.id).await.unwrap());
        assert!(verify(dir.path(), &tok).await.unwrap().is_none());
        assert!(!revoke(dir.path(), &e.id).await.unwrap());
    }
}
