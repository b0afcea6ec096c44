//! Password and SCRAM credential checks for local accounts.

use dashmap::DashMap;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use palaver_storage::{Storage, StorageError};
use sha2::{Digest, Sha256};

/// Outcome of a password check.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Correct.
    Ok,
    /// Wrong password or no such account.
    Denied,
    /// The backend failed; try later.
    Temporary,
}

/// Checks passwords against stored SCRAM credentials.
///
/// A PLAIN login costs a PBKDF2 derivation; to keep repeated logins cheap
/// a keyed SHA-256 digest of (stored key, password) is remembered per
/// account after a successful check, so a correct password is recognised
/// without re-deriving while the stored credentials are unchanged.
pub struct Authenticator {
    storage: Storage,
    iterations: u32,
    secret: [u8; 32],
    verified: DashMap<(String, String), [u8; 32]>,
}

impl Authenticator {
    /// New authenticator over `storage`.
    pub fn new(storage: Storage, iterations: u32) -> Self {
        Authenticator {
            storage,
            iterations,
            secret: rand::random(),
            verified: DashMap::new(),
        }
    }

    fn token(&self, creds: &ScramCredentials, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(&creds.stored_key);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Credentials for SCRAM with `hash`.
    pub async fn credentials(
        &self,
        host: &str,
        user: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, StorageError> {
        self.storage.accounts.credentials(host, user, hash).await
    }

    /// Check a plaintext password (SASL PLAIN).
    pub async fn check_password(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        let creds = match self
            .storage
            .accounts
            .credentials(host, user, ScramHash::Sha256)
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => match self
                .storage
                .accounts
                .credentials(host, user, ScramHash::Sha1)
                .await
            {
                Ok(Some(c)) => c,
                Ok(None) => return AuthOutcome::Denied,
                Err(_) => return AuthOutcome::Temporary,
            },
            Err(e) => {
                tracing::warn!(error = %e, "credential lookup failed");
                return AuthOutcome::Temporary;
            }
        };
        let token = self.token(&creds, password);
        let key = (host.to_string(), user.to_string());
        if let Some(t) = self.verified.get(&key)
            && bool::from(subtle_eq(&t[..], &token[..]))
        {
            return AuthOutcome::Ok;
        }
        let pw = password.to_string();
        let ok = tokio::task::spawn_blocking(move || creds.verify_password(&pw))
            .await
            .unwrap_or(false);
        if ok {
            self.verified.insert(key, token);
            AuthOutcome::Ok
        } else {
            AuthOutcome::Denied
        }
    }

    /// Derive credentials for every supported hash.
    pub fn derive_all(&self, password: &str) -> Vec<ScramCredentials> {
        derive_all(password, self.iterations)
    }

    /// Forget cached verifications for an account (password changed or removed).
    pub fn forget(&self, host: &str, user: &str) {
        self.verified.remove(&(host.to_string(), user.to_string()));
    }

    /// Remember that `password` is correct for freshly derived `creds` (registration, password change).
    pub fn remember(&self, host: &str, user: &str, creds: &[ScramCredentials], password: &str) {
        if let Some(c) = creds.iter().find(|c| c.hash == ScramHash::Sha256) {
            let t = self.token(c, password);
            self.verified
                .insert((host.to_string(), user.to_string()), t);
        }
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    a.ct_eq(b)
}

/// Derive SCRAM credentials for SHA-1, SHA-256 and SHA-512.
pub fn derive_all(password: &str, iterations: u32) -> Vec<ScramCredentials> {
    ScramHash::ALL
        .iter()
        .map(|h| ScramCredentials::generate(*h, password, iterations))
        .collect()
}
