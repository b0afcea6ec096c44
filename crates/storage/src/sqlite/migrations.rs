//! Versioned schema migrations for SQLite.

use crate::{Result, StorageError};
use sqlx::SqlitePool;

/// Each entry upgrades the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: accounts
    "CREATE TABLE users (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (host, username)
    );
    CREATE TABLE user_scram (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        hash TEXT NOT NULL,
        salt BLOB NOT NULL,
        iterations INTEGER NOT NULL,
        stored_key BLOB NOT NULL,
        server_key BLOB NOT NULL,
        PRIMARY KEY (host, username, hash)
    );",
    // 2: instant messaging (RFC 6121) and everyday XEPs
    "CREATE TABLE roster_items (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        name TEXT,
        subscription TEXT NOT NULL,
        ask INTEGER NOT NULL DEFAULT 0,
        approved INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (host, username, jid)
    );
    CREATE TABLE roster_groups (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        grp TEXT NOT NULL,
        PRIMARY KEY (host, username, jid, grp)
    );
    CREATE TABLE roster_versions (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (host, username)
    );
    CREATE TABLE roster_pending_in (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        stanza TEXT NOT NULL,
        UNIQUE (host, username, jid)
    );
    CREATE TABLE offline_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        stanza TEXT NOT NULL,
        stamp INTEGER NOT NULL
    );
    CREATE INDEX offline_messages_user ON offline_messages (host, username, id);
    CREATE TABLE xml_documents (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        key TEXT NOT NULL,
        xml TEXT NOT NULL,
        PRIMARY KEY (host, username, key)
    );
    CREATE TABLE last_activity (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        seconds INTEGER NOT NULL,
        status TEXT NOT NULL,
        PRIMARY KEY (host, username)
    );
    CREATE TABLE blocklist (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        PRIMARY KEY (host, username, jid)
    );
    CREATE TABLE host_kv (
        host TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (host, key)
    );
    CREATE TABLE user_flags (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (host, username, key)
    );",
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The version recorded in the database (0 for a fresh one).
pub async fn schema_version(pool: &SqlitePool) -> Result<i64> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .execute(pool)
        .await?;
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(pool)
        .await?;
    Ok(v.unwrap_or(0))
}

/// Bring the database to [`SCHEMA_VERSION`], each step in its own transaction.
pub async fn migrate(pool: &SqlitePool) -> Result<()> {
    migrate_with(pool, MIGRATIONS).await
}

/// Apply `migrations` (a prefix of [`MIGRATIONS`] in tests) up to
/// `migrations.len()`. Each step runs in a `BEGIN IMMEDIATE` transaction that
/// re-reads the version first, so two processes opening the same fresh file
/// do not both apply a step.
pub(crate) async fn migrate_with(pool: &SqlitePool, migrations: &[&str]) -> Result<()> {
    let target = migrations.len() as i64;
    // Creates the version table when missing.
    schema_version(pool).await?;
    loop {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                .fetch_one(&mut *tx)
                .await?;
        if current > target {
            return Err(StorageError::SchemaTooNew {
                found: current,
                supported: target,
            });
        }
        if current == target {
            return Ok(());
        }
        let Some(sql) = usize::try_from(current)
            .ok()
            .and_then(|i| migrations.get(i))
        else {
            return Err(StorageError::Corrupt(format!("schema version {current}")));
        };
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version) VALUES (?1)")
            .bind(current + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = current + 1, "applied sqlite migration");
    }
}
