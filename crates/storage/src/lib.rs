//! Storage traits of Palaver and their backends.
//!
//! Each domain (accounts, and later rosters, offline messages, archives…)
//! has one trait; a backend implements all of them. [`Storage`] bundles the
//! trait objects the server uses. The embedded default is SQLite.

mod db;
mod error;
pub mod im;
pub mod postgres;
mod sql;
pub mod sqlite;
mod timed;

use async_trait::async_trait;
pub use db::{BeginWrite, Db, Dialect, ModuleMigration};
pub use error::StorageError;
pub use im::*;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use std::sync::Arc;
pub use timed::timed;

/// Result alias for storage calls.
pub type Result<T> = std::result::Result<T, StorageError>;

/// User accounts and their SCRAM credentials (never plaintext passwords).
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Create an account. `StorageError::Conflict` when it exists.
    async fn create_account(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()>;
    /// Replace the credentials of an existing account. `NotFound` when absent.
    async fn set_credentials(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()>;
    /// Credentials for one hash, `None` when the account or that hash is absent.
    async fn credentials(
        &self,
        host: &str,
        user: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>>;
    /// Whether the account exists.
    async fn account_exists(&self, host: &str, user: &str) -> Result<bool>;
    /// Remove the account. `NotFound` when absent.
    async fn delete_account(&self, host: &str, user: &str) -> Result<()>;
    /// Usernames of a host, sorted.
    async fn list_accounts(&self, host: &str) -> Result<Vec<String>>;
}

/// The set of stores a running server uses.
#[derive(Clone)]
pub struct Storage {
    /// Accounts.
    pub accounts: Arc<dyn AccountStore>,
    /// Rosters and pending subscription requests.
    pub roster: Arc<dyn RosterStore>,
    /// Offline messages.
    pub offline: Arc<dyn OfflineStore>,
    /// Per-user XML documents (vCard, private storage).
    pub xml: Arc<dyn XmlStore>,
    /// Backend name for logs ("sqlite", "postgresql", "memory").
    pub backend: &'static str,
    /// The pool itself, for stores that live beside their module ([`Db`]).
    pub db: Db,
}

impl Storage {
    /// Every store of one backend that implements them all.
    fn of<B>(db: Arc<B>, backend: &'static str, pool: Db) -> Storage
    where
        B: AccountStore + RosterStore + OfflineStore + XmlStore + 'static,
    {
        // Every call timed for the metrics (`palaver_store_seconds`).
        let db = Arc::new(timed::Timed(db));
        Storage {
            accounts: db.clone(),
            roster: db.clone(),
            offline: db.clone(),
            xml: db,
            backend,
            db: pool,
        }
    }

    /// Open the SQLite store at `path` (created when missing), migrated to the current schema.
    pub async fn open_sqlite(path: &std::path::Path) -> Result<Storage> {
        let store = sqlite::SqliteStore::open(path).await?;
        let pool = Db::Sqlite(store.pool().clone());
        Ok(Self::of(Arc::new(store), "sqlite", pool))
    }

    /// Connect to PostgreSQL at `url` with `settings`, migrated to the
    /// current schema.
    pub async fn open_postgres(url: &str, settings: &postgres::PgSettings) -> Result<Storage> {
        let store = postgres::PgStore::open_with(url, settings).await?;
        let pool = Db::Postgres(store.pool().clone());
        Ok(Self::of(Arc::new(store), "postgresql", pool))
    }
}

/// Schema version of a store without migrating it, and the version this
/// binary supports: `(found, supported)`.
pub mod status {
    use super::Result;

    /// SQLite: a missing file reads as version 0.
    pub async fn sqlite(path: &std::path::Path) -> Result<(i64, i64)> {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
        let supported = crate::sqlite::SCHEMA_VERSION;
        if !path.exists() {
            return Ok((0, supported));
        }
        let opts = SqliteConnectOptions::new().filename(path).read_only(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        )
        .fetch_optional(&pool)
        .await?;
        let found = match table {
            None => 0,
            Some(_) => {
                sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(version) FROM schema_version")
                    .fetch_one(&pool)
                    .await?
                    .unwrap_or(0)
            }
        };
        pool.close().await;
        Ok((found, supported))
    }

    /// PostgreSQL: a database never migrated reads as version 0.
    pub async fn postgres(url: &str) -> Result<(i64, i64)> {
        let pool =
            crate::postgres::connect(url, &crate::postgres::PgSettings::with_pool_size(1)).await?;
        let found = crate::postgres::schema_version(&pool).await?;
        pool.close().await;
        Ok((found, crate::postgres::SCHEMA_VERSION))
    }
}
