//! In-memory backend for unit tests.

use crate::{AccountStore, Result, StorageError};
use async_trait::async_trait;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Volatile store.
#[derive(Default)]
pub struct MemoryStore {
    accounts: Mutex<BTreeMap<(String, String), Vec<ScramCredentials>>>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Vec<ScramCredentials>>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create_account(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        let mut m = self.lock();
        let key = (host.to_string(), user.to_string());
        if m.contains_key(&key) {
            return Err(StorageError::Conflict);
        }
        m.insert(key, creds.to_vec());
        Ok(())
    }
    async fn set_credentials(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        match self.lock().get_mut(&(host.to_string(), user.to_string())) {
            Some(c) => {
                *c = creds.to_vec();
                Ok(())
            }
            None => Err(StorageError::NotFound),
        }
    }
    async fn credentials(
        &self,
        host: &str,
        user: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>> {
        Ok(self
            .lock()
            .get(&(host.to_string(), user.to_string()))
            .and_then(|c| c.iter().find(|c| c.hash == hash).cloned()))
    }
    async fn account_exists(&self, host: &str, user: &str) -> Result<bool> {
        Ok(self
            .lock()
            .contains_key(&(host.to_string(), user.to_string())))
    }
    async fn delete_account(&self, host: &str, user: &str) -> Result<()> {
        self.lock()
            .remove(&(host.to_string(), user.to_string()))
            .map(|_| ())
            .ok_or(StorageError::NotFound)
    }
    async fn list_accounts(&self, host: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .keys()
            .filter(|(h, _)| h == host)
            .map(|(_, u)| u.clone())
            .collect())
    }
}
