//! The PostgreSQL backend (`default_db: sql`, `sql_type: pgsql`).
//!
//! Mirrors the SQLite backend's behaviour; concurrency between nodes sharing
//! one database is handled with row locks (`FOR UPDATE`, upserts) and a
//! transaction-scoped advisory lock for migrations.

mod migrations;
#[cfg(test)]
mod tests;

use crate::{Result, StorageError};
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

    /// A write transaction (row locks and upserts serialise what must be).
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// A read-only transaction on one snapshot.
    pub(crate) async fn read_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }
}

crate::sql::sql_stores!(
    PgStore,
    sqlx::Postgres,
    collate = " COLLATE \"C\"",
    for_update = " FOR UPDATE"
);

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
