//! The embedded SQLite backend (one file, WAL journal).

mod migrations;
#[cfg(test)]
mod tests;

use crate::{Result, StorageError};
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
        // No ping before each use: a connection to a local file does not
        // go stale (the ping was a round trip to the connection's thread
        // per statement).
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
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

    /// A read transaction: several queries see one snapshot (WAL).
    pub(crate) async fn read_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin().await?)
    }
}

crate::sql::sql_stores!(SqliteStore, sqlx::Sqlite, collate = "", for_update = "");
