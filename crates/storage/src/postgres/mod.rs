//! The PostgreSQL backend (`default_db: sql`, `sql_type: pgsql`).
//!
//! Mirrors the SQLite backend's behaviour; concurrency between nodes sharing
//! one database is handled with row locks (`FOR UPDATE`, upserts) and a
//! transaction-scoped advisory lock for migrations.

mod im;
mod migrations;

use crate::{AccountStore, Result, StorageError};
use async_trait::async_trait;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

pub use migrations::{SCHEMA_VERSION, schema_version};

/// Default number of pooled connections.
pub const DEFAULT_POOL_SIZE: u32 = 10;

/// Connection pool settings (`sql_pool_size`, `sql_connect_timeout`,
/// `sql_query_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct PgSettings {
    /// Most connections open at once.
    pub pool_size: u32,
    /// How long a caller waits for a connection (from the pool, or a new one)
    /// before its request fails: bounds the wait while the database is down.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of every connection: a query running
    /// longer is cancelled, so a stuck database cannot hold requests forever.
    pub query_timeout: Duration,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(60),
        }
    }
}

impl PgSettings {
    /// Default settings with `pool_size` connections.
    pub fn with_pool_size(pool_size: u32) -> Self {
        PgSettings {
            pool_size,
            ..Default::default()
        }
    }
}

/// PostgreSQL-backed store.
pub struct PgStore {
    pool: PgPool,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Map a unique violation to `Conflict`, anything else through `From`.
fn conflict_or(e: sqlx::Error) -> StorageError {
    if let sqlx::Error::Database(d) = &e
        && d.is_unique_violation()
    {
        return StorageError::Conflict;
    }
    StorageError::from(e)
}

/// A pool on `url` without migrating (for `db status` and tools).
pub async fn connect(url: &str, settings: &PgSettings) -> Result<PgPool> {
    let statement_timeout = format!("{}", settings.query_timeout.as_millis().max(1));
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| StorageError::Backend(format!("invalid PostgreSQL URL: {e}")))?
        .application_name("palaver")
        .options([("statement_timeout", statement_timeout.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.pool_size.max(1))
        .acquire_timeout(settings.connect_timeout)
        .connect_with(opts)
        .await?)
}

impl PgStore {
    /// Connect with default settings and `pool_size` connections, and
    /// migrate to [`SCHEMA_VERSION`].
    pub async fn open(url: &str, pool_size: u32) -> Result<PgStore> {
        Self::open_with(url, &PgSettings::with_pool_size(pool_size)).await
    }

    /// Connect with `settings` and migrate to [`SCHEMA_VERSION`].
    pub async fn open_with(url: &str, settings: &PgSettings) -> Result<PgStore> {
        let pool = connect(url, settings).await?;
        migrations::migrate(&pool).await?;
        Ok(PgStore { pool })
    }

    /// The pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn write_credentials(
        tx: &mut sqlx::PgConnection,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        sqlx::query("DELETE FROM user_scram WHERE host = $1 AND username = $2")
            .bind(host)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        for c in creds {
            sqlx::query(
                "INSERT INTO user_scram (host, username, hash, salt, iterations, stored_key, server_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(host)
            .bind(user)
            .bind(c.hash.name())
            .bind(&c.salt)
            .bind(i64::from(c.iterations))
            .bind(&c.stored_key)
            .bind(&c.server_key)
            .execute(&mut *tx)
            .await
            .map_err(conflict_or)?;
        }
        Ok(())
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_account(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO users (host, username, created_at) VALUES ($1, $2, $3)")
            .bind(host)
            .bind(user)
            .bind(now_secs())
            .execute(&mut *tx)
            .await
            .map_err(conflict_or)?;
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
        let mut tx = self.pool.begin().await?;
        let exists =
            sqlx::query("SELECT 1 FROM users WHERE host = $1 AND username = $2 FOR UPDATE")
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
             WHERE host = $1 AND username = $2 AND hash = $3",
        )
        .bind(host)
        .bind(user)
        .bind(hash.name())
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
            sqlx::query("SELECT 1 FROM users WHERE host = $1 AND username = $2")
                .bind(host)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn delete_account(&self, host: &str, user: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM users WHERE host = $1 AND username = $2")
            .bind(host)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        sqlx::query("DELETE FROM user_scram WHERE host = $1 AND username = $2")
            .bind(host)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_accounts(&self, host: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT username FROM users WHERE host = $1 ORDER BY username COLLATE \"C\"",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Fresh throw-away databases for tests (`PALAVER_TEST_PG_URL`).
#[doc(hidden)]
pub mod testdb {
    use sqlx::Connection;

    /// Replace the database name in a PostgreSQL URL.
    pub fn with_database(url: &str, db: &str) -> String {
        let (base, query) = match url.find('?') {
            Some(i) => (&url[..i], &url[i..]),
            None => (url, ""),
        };
        let auth = base.find("://").map(|i| i + 3).unwrap_or(0);
        let host_end = base[auth..]
            .find('/')
            .map(|i| auth + i)
            .unwrap_or(base.len());
        format!("{}/{db}{query}", &base[..host_end])
    }

    /// The admin URL from `PALAVER_TEST_PG_URL`. `None` (with a notice) when
    /// unset; panics when unset under `CI`, which must not skip silently.
    pub fn admin_url(test: &str) -> Option<String> {
        match std::env::var("PALAVER_TEST_PG_URL") {
            Ok(u) if !u.is_empty() => Some(u),
            _ => {
                if std::env::var_os("CI").is_some() {
                    panic!(
                        "PALAVER_TEST_PG_URL is not set but CI is: PostgreSQL tests must run in CI \
                         (e.g. PALAVER_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/postgres)"
                    );
                }
                eprintln!("{test}: skipped, PALAVER_TEST_PG_URL is not set");
                None
            }
        }
    }

    /// Record `version` in the database's schema table, as a newer binary would.
    pub async fn record_schema_version(url: &str, version: i64) {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(version)
            .execute(&mut c)
            .await
            .expect("insert schema version");
        let _ = c.close().await;
    }

    /// A database created for one test and dropped (best effort) on drop.
    pub struct TestDb {
        /// Admin URL it was created through.
        pub admin: String,
        /// Database name.
        pub name: String,
        /// URL of the fresh database.
        pub url: String,
    }

    impl TestDb {
        /// Create a fresh database, or `None` when PostgreSQL tests are skipped.
        pub async fn create(test: &str) -> Option<TestDb> {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let admin = admin_url(test)?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!(
                "palaver_test_{}_{}_{}",
                std::process::id(),
                nanos,
                N.fetch_add(1, Ordering::Relaxed)
            );
            let mut c = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to PALAVER_TEST_PG_URL: {e}"));
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut c)
                .await
                .expect("CREATE DATABASE");
            let _ = c.close().await;
            let url = with_database(&admin, &name);
            Some(TestDb { admin, name, url })
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let admin = self.admin.clone();
            let name = self.name.clone();
            // Our runtime may be shutting down: drop from a thread of its own.
            let t = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .execute(&mut c)
                        .await;
                        let _ = c.close().await;
                    }
                });
            });
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testdb::TestDb;
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            testdb::with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            testdb::with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            testdb::with_database("postgres://h:1", "x"),
            "postgres://h:1/x"
        );
    }

    #[tokio::test]
    async fn accounts_round_trip() {
        let Some(db) = TestDb::create("accounts_round_trip").await else {
            return;
        };
        let store = PgStore::open(&db.url, 4).await.unwrap();
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
        assert!(!store.account_exists("h2", "alice").await.unwrap());
        let c = store
            .credentials("h", "alice", ScramHash::Sha256)
            .await
            .unwrap()
            .unwrap();
        assert!(c.verify_password("pw"));
        assert_eq!(c, creds[1]);
        assert!(
            store
                .credentials("h", "alice", ScramHash::Sha512)
                .await
                .unwrap()
                .is_none()
        );
        // Replacing credentials drops the old ones.
        let new = vec![ScramCredentials::generate(ScramHash::Sha512, "pw2", 4096)];
        store.set_credentials("h", "alice", &new).await.unwrap();
        assert!(
            store
                .credentials("h", "alice", ScramHash::Sha256)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .credentials("h", "alice", ScramHash::Sha512)
                .await
                .unwrap()
                .unwrap()
                .verify_password("pw2")
        );
        assert!(matches!(
            store.set_credentials("h", "nobody", &new).await,
            Err(StorageError::NotFound)
        ));
        store.create_account("h", "Zed", &[]).await.unwrap();
        store.create_account("h", "bob", &[]).await.unwrap();
        store.create_account("h2", "carol", &[]).await.unwrap();
        // Byte order, whatever the database collation.
        assert_eq!(
            store.list_accounts("h").await.unwrap(),
            ["Zed", "alice", "bob"]
        );
        store.delete_account("h", "alice").await.unwrap();
        assert!(matches!(
            store.delete_account("h", "alice").await,
            Err(StorageError::NotFound)
        ));
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM user_scram WHERE username = 'alice'")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, 0);
        // Reopen: migrations are idempotent.
        store.pool().close().await;
        let store = PgStore::open(&db.url, 2).await.unwrap();
        assert_eq!(schema_version(store.pool()).await.unwrap(), SCHEMA_VERSION);
        let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_version")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(versions, SCHEMA_VERSION);
        assert!(store.account_exists("h", "bob").await.unwrap());
        store.pool().close().await;
    }

    #[tokio::test]
    async fn concurrent_account_creation_conflicts_once() {
        let Some(db) = TestDb::create("concurrent_account_creation_conflicts_once").await else {
            return;
        };
        let s = std::sync::Arc::new(PgStore::open(&db.url, 8).await.unwrap());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.create_account(
                    "h",
                    "dup",
                    &[ScramCredentials::generate(ScramHash::Sha1, "p", 4096)],
                )
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StorageError::Conflict) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(ok, 1);
        s.pool().close().await;
    }
}
