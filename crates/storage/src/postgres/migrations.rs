//! Versioned schema migrations for PostgreSQL.
//!
//! The numbering matches the SQLite backend (1: accounts, 2: IM) so
//! `palaver db status` reads the same on both.

use crate::{Result, StorageError};
use sqlx::PgPool;

/// Each entry upgrades the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: accounts
    "CREATE TABLE users (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (host, username)
    );
    CREATE TABLE user_scram (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        hash TEXT NOT NULL,
        salt BYTEA NOT NULL,
        iterations BIGINT NOT NULL,
        stored_key BYTEA NOT NULL,
        server_key BYTEA NOT NULL,
        PRIMARY KEY (host, username, hash)
    );",
    // 2: instant messaging (RFC 6121) and everyday XEPs
    "CREATE TABLE roster_items (
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        name TEXT,
        subscription TEXT NOT NULL,
        ask BOOLEAN NOT NULL DEFAULT FALSE,
        approved BOOLEAN NOT NULL DEFAULT FALSE,
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
        version BIGINT NOT NULL,
        PRIMARY KEY (host, username)
    );
    CREATE TABLE roster_pending_in (
        seq BIGSERIAL PRIMARY KEY,
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        jid TEXT NOT NULL,
        stanza TEXT NOT NULL,
        UNIQUE (host, username, jid)
    );
    CREATE INDEX roster_pending_in_user ON roster_pending_in (host, username, seq);
    CREATE TABLE offline_messages (
        id BIGSERIAL PRIMARY KEY,
        host TEXT NOT NULL,
        username TEXT NOT NULL,
        stanza TEXT NOT NULL,
        stamp BIGINT NOT NULL
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
        seconds BIGINT NOT NULL,
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
    );
    CREATE INDEX user_flags_key ON user_flags (host, key);",
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Key of the transaction-scoped advisory lock that serialises migrations
/// ("palaver" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_616c_6176_6572;

/// The version recorded in the database (0 for a fresh one). Read-only: a
/// database never migrated has no version table and reads as 0.
pub async fn schema_version(pool: &PgPool) -> Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('schema_version') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(pool)
        .await?;
    Ok(v.unwrap_or(0))
}

/// Bring the database to [`SCHEMA_VERSION`].
pub async fn migrate(pool: &PgPool) -> Result<()> {
    migrate_with(pool, MIGRATIONS).await
}

/// Apply `migrations` (a prefix of [`MIGRATIONS`] in tests) up to
/// `migrations.len()`, all in one transaction holding
/// `pg_advisory_xact_lock`, so nodes starting together apply each step once
/// (the later one waits, then finds the schema current).
pub(crate) async fn migrate_with(pool: &PgPool, migrations: &[&str]) -> Result<()> {
    let target = migrations.len() as i64;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    if current > target {
        return Err(StorageError::SchemaTooNew {
            found: current,
            supported: target,
        });
    }
    for v in current..target {
        let Some(sql) = usize::try_from(v).ok().and_then(|i| migrations.get(i)) else {
            return Err(StorageError::Corrupt(format!("schema version {current}")));
        };
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(v + 1)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = v + 1, "applying postgresql migration");
    }
    tx.commit().await?;
    Ok(())
}
