//! The embedded SQLite backend (one file, WAL journal).

mod im;
mod migrations;

use crate::{AccountStore, Result, StorageError};
use async_trait::async_trait;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::time::Duration;

pub use migrations::{SCHEMA_VERSION, schema_version};

/// SQLite-backed store.
pub struct SqliteStore {
    pool: SqlitePool,
}

fn hash_name(h: ScramHash) -> &'static str {
    h.name()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl SqliteStore {
    /// Open (creating if needed) and migrate.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        migrations::migrate(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// The pool (for tests and tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes SQLite's write lock up
    /// front, waiting up to the busy timeout, so writers serialise and a
    /// read-then-write sequence (count then insert, exists then update) never
    /// fails with `SQLITE_BUSY` when a deferred transaction's read snapshot
    /// cannot be upgraded.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn write_credentials(
        tx: &mut sqlx::SqliteConnection,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        sqlx::query("DELETE FROM user_scram WHERE host = ?1 AND username = ?2")
            .bind(host)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        for c in creds {
            sqlx::query(
                "INSERT INTO user_scram (host, username, hash, salt, iterations, stored_key, server_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(host)
            .bind(user)
            .bind(hash_name(c.hash))
            .bind(&c.salt)
            .bind(i64::from(c.iterations))
            .bind(&c.stored_key)
            .bind(&c.server_key)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("INSERT INTO users (host, username, created_at) VALUES (?1, ?2, ?3)")
            .bind(host)
            .bind(user)
            .bind(now_secs())
            .execute(&mut *tx)
            .await;
        if let Err(sqlx::Error::Database(e)) = &r
            && e.is_unique_violation()
        {
            return Err(StorageError::Conflict);
        }
        r?;
        Self::write_credentials(&mut tx, host, user, creds).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_credentials(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM users WHERE host = ?1 AND username = ?2")
            .bind(host)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StorageError::NotFound);
        }
        Self::write_credentials(&mut tx, host, user, creds).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn credentials(
        &self,
        host: &str,
        user: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>> {
        let row = sqlx::query(
            "SELECT salt, iterations, stored_key, server_key FROM user_scram \
             WHERE host = ?1 AND username = ?2 AND hash = ?3",
        )
        .bind(host)
        .bind(user)
        .bind(hash_name(hash))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let iterations: i64 = row.try_get("iterations")?;
        Ok(Some(ScramCredentials {
            hash,
            salt: row.try_get("salt")?,
            iterations: u32::try_from(iterations)
                .map_err(|_| StorageError::Corrupt(format!("iteration count {iterations}")))?,
            stored_key: row.try_get("stored_key")?,
            server_key: row.try_get("server_key")?,
        }))
    }

    async fn account_exists(&self, host: &str, user: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM users WHERE host = ?1 AND username = ?2")
                .bind(host)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn delete_account(&self, host: &str, user: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM user_scram WHERE host = ?1 AND username = ?2")
            .bind(host)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM users WHERE host = ?1 AND username = ?2")
            .bind(host)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_accounts(&self, host: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT username FROM users WHERE host = ?1 ORDER BY username")
            .bind(host)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>("username")
                    .map_err(StorageError::from)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accounts_round_trip() {
        let dir = std::env::temp_dir().join(format!("palaver-sqlite-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir.join("db.sqlite")).await.unwrap();
        let creds = vec![
            ScramCredentials::generate(ScramHash::Sha1, "pw", 4096),
            ScramCredentials::generate(ScramHash::Sha256, "pw", 4096),
        ];
        store.create_account("h", "alice", &creds).await.unwrap();
        assert!(matches!(
            store.create_account("h", "alice", &creds).await,
            Err(StorageError::Conflict)
        ));
        assert!(store.account_exists("h", "alice").await.unwrap());
        let c = store
            .credentials("h", "alice", ScramHash::Sha256)
            .await
            .unwrap()
            .unwrap();
        assert!(c.verify_password("pw"));
        assert!(
            store
                .credentials("h", "alice", ScramHash::Sha512)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.list_accounts("h").await.unwrap(),
            vec!["alice".to_string()]
        );
        store.delete_account("h", "alice").await.unwrap();
        assert!(matches!(
            store.delete_account("h", "alice").await,
            Err(StorageError::NotFound)
        ));
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user_scram")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(rows, 0);
        // Reopen: migrations are idempotent.
        drop(store);
        let store = SqliteStore::open(&dir.join("db.sqlite")).await.unwrap();
        assert_eq!(schema_version(store.pool()).await.unwrap(), SCHEMA_VERSION);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
