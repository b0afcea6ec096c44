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
    ///
    /// Accounts imported with credentials for some hashes only (ejabberd
    /// keeps SCRAM-SHA-1 alone) get the missing ones derived on a successful
    /// check, so their next SCRAM-SHA-256/512 login works too.
    pub async fn check_password(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        let mut missing = false;
        let mut found = None;
        for hash in [ScramHash::Sha256, ScramHash::Sha512, ScramHash::Sha1] {
            match self.storage.accounts.credentials(host, user, hash).await {
                Ok(Some(c)) => {
                    found = Some(c);
                    break;
                }
                Ok(None) => missing = true,
                Err(e) => {
                    tracing::warn!(error = %e, "credential lookup failed");
                    return AuthOutcome::Temporary;
                }
            }
        }
        let Some(creds) = found else {
            return AuthOutcome::Denied;
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
        if !ok {
            return AuthOutcome::Denied;
        }
        if missing {
            let iterations = self.iterations;
            let pw = password.to_string();
            if let Ok(all) = tokio::task::spawn_blocking(move || derive_all(&pw, iterations)).await
            {
                match self
                    .storage
                    .accounts
                    .set_credentials(host, user, &all)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(host, user, "derived missing SCRAM credentials at login");
                        self.remember(host, user, &all, password);
                        return AuthOutcome::Ok;
                    }
                    Err(e) => tracing::warn!(error = %e, "storing derived credentials failed"),
                }
            }
        }
        self.verified.insert(key, token);
        AuthOutcome::Ok
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
