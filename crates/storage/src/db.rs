//! Stores that live beside their module.
//!
//! A module that keeps data defines its store trait and its SQL in its own
//! file, over a [`Db`] (the server's pool of either backend), and declares
//! its own tables as [`ModuleMigration`]s applied at start under the
//! module's name. Nothing in this crate changes for a new store:
//!
//! ```ignore
//! pub struct LastSql(Db);
//! impl LastSql {
//!     async fn last(&self, host: &str, user: &str) -> Result<Option<i64>> {
//!         Ok(on_db!(&self.0, |pool| {
//!             sqlx::query_scalar("SELECT seconds FROM last_activity WHERE host = $1 AND username = $2")
//!                 .bind(host)
//!                 .bind(user)
//!                 .fetch_optional(pool)
//!                 .await
//!         })?)
//!     }
//! }
//! ```
//!
//! The body of [`on_db!`] is compiled once per backend, so the same text
//! serves SQLite and PostgreSQL where their SQL agrees (`$N` parameters,
//! `ON CONFLICT`, `RETURNING`); [`Db::dialect`] tells where it does not.

use crate::{Result, StorageError};
use sqlx::{PgPool, SqlitePool};

/// The server's connection pool, of either backend.
#[derive(Clone, Debug)]
pub enum Db {
    /// The embedded SQLite file.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Which SQL dialect a [`Db`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Run the same `sqlx` expression on whichever pool `$db` holds: the body is
/// compiled for each backend, with `$pool` bound to that backend's pool.
#[macro_export]
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

/// A write transaction on either pool: on SQLite `BEGIN IMMEDIATE`, which
/// takes the write lock at once (waiting under the busy timeout), instead
/// of a deferred transaction that may hold a read snapshot while it waits
/// to write and then fail or stall under concurrent writers; on PostgreSQL
/// a plain `BEGIN`. Module stores use it inside [`on_db!`] for every
/// transaction that writes.
pub trait BeginWrite {
    /// The backend.
    type Database: sqlx::Database;
    /// Begin a write transaction.
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>,
    > + Send
    + '_;

    /// Begin a read-only transaction whose statements all see one snapshot
    /// (a count and the page it describes agree): on SQLite a deferred
    /// transaction (WAL keeps its first read's snapshot), on PostgreSQL
    /// `REPEATABLE READ`.
    fn begin_snapshot(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>,
    > + Send
    + '_;
}

impl BeginWrite for SqlitePool {
    type Database = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>,
    > + Send
    + '_ {
        self.begin_with("BEGIN IMMEDIATE")
    }

    fn begin_snapshot(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>,
    > + Send
    + '_ {
        self.begin_with("BEGIN DEFERRED")
    }
}

impl BeginWrite for PgPool {
    type Database = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>,
    > + Send
    + '_ {
        self.begin()
    }

    fn begin_snapshot(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>,
    > + Send
    + '_ {
        self.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    }
}

/// One step of a module's schema, in both dialects. Steps are numbered from
/// 1 in the order given; each runs once, in a transaction, recorded under
/// the module's name.
#[derive(Clone, Copy, Debug)]
pub struct ModuleMigration {
    /// SQLite statements.
    pub sqlite: &'static str,
    /// PostgreSQL statements.
    pub postgres: &'static str,
}

/// Advisory lock key shared with the base schema's migrations, so nodes
/// starting together apply every step once.
const PG_LOCK: i64 = 0x0070_616c_6176_6572;

impl Db {
    /// Close the pool: wait (at most `within`) for the connections in use
    /// to come back, then close them all. Closing a connection ends what it
    /// left open: a transaction whose task was aborted at shutdown would
    /// otherwise keep SQLite's write lock for as long as the idle
    /// connection lives, and a server started again on the same file (a
    /// restart in the same process) would find the database locked.
    pub async fn close(&self, within: std::time::Duration) {
        let closing = async { on_db!(self, |pool| pool.close().await) };
        if tokio::time::timeout(within, closing).await.is_err() {
            tracing::warn!("storage connections still in use at shutdown; left open");
        }
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The schema version of `module`'s own tables (0: none applied).
    pub async fn module_version(&self, module: &str) -> Result<i64> {
        let create = "CREATE TABLE IF NOT EXISTS module_schema (module TEXT PRIMARY KEY, version BIGINT NOT NULL)";
        let v: Option<i64> = on_db!(self, |pool| {
            sqlx::query(create).execute(pool).await?;
            sqlx::query_scalar("SELECT version FROM module_schema WHERE module = $1")
                .bind(module)
                .fetch_optional(pool)
                .await?
        });
        Ok(v.unwrap_or(0))
    }

    /// Bring `module`'s tables to `steps.len()`; a database written by a newer
    /// version of the module is refused.
    ///
    /// (The future is boxed as `Send` here, where the compiler can prove it:
    /// a configuration reload runs it inside a command's boxed future.)
    pub fn migrate_module<'a>(
        &'a self,
        module: &'a str,
        steps: &'a [ModuleMigration],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
        Box::pin(self.migrate_module_now(module, steps))
    }

    async fn migrate_module_now(&self, module: &str, steps: &[ModuleMigration]) -> Result<()> {
        let target = steps.len() as i64;
        self.module_version(module).await?;
        // One step per transaction: read the version under the write lock
        // (SQLite: BEGIN IMMEDIATE; PostgreSQL: the advisory lock), apply the
        // next step, record it.
        macro_rules! one_step {
            ($tx:ident, $sql:ident) => {{
                let current: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM module_schema WHERE module = $1")
                        .bind(module)
                        .fetch_optional(&mut *$tx)
                        .await?;
                let current = current.unwrap_or(0);
                let Some(step) = next_step(module, current, target, steps)? else {
                    return Ok(());
                };
                sqlx::Executor::execute(&mut *$tx, sqlx::raw_sql(step.$sql)).await?;
                sqlx::query(
                    "INSERT INTO module_schema (module, version) VALUES ($1, $2) \
                     ON CONFLICT (module) DO UPDATE SET version = excluded.version",
                )
                .bind(module)
                .bind(current + 1)
                .execute(&mut *$tx)
                .await?;
                $tx.commit().await?;
                current + 1
            }};
        }
        loop {
            let applied = match self {
                Db::Sqlite(pool) => {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    one_step!(tx, sqlite)
                }
                Db::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(PG_LOCK)
                        .execute(&mut *tx)
                        .await?;
                    one_step!(tx, postgres)
                }
            };
            tracing::info!(module, version = applied, "applied module migration");
        }
    }
}

fn next_step<'a>(
    module: &str,
    current: i64,
    target: i64,
    steps: &'a [ModuleMigration],
) -> Result<Option<&'a ModuleMigration>> {
    if current > target {
        return Err(StorageError::Backend(format!(
            "the tables of {module} are at version {current}, newer than this binary's {target}"
        )));
    }
    if current == target {
        return Ok(None);
    }
    usize::try_from(current)
        .ok()
        .and_then(|i| steps.get(i))
        .map(Some)
        .ok_or_else(|| StorageError::Corrupt(format!("{module} schema version {current}")))
}
