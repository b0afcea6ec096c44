//! Tests of the SQLite backend: the shared store behaviour
//! ([`crate::sql::sql_store_tests`]) and what is SQLite's own (the file,
//! migrations from an older schema, decoding of foreign rows).

use super::*;
use crate::AccountStore as _;
use crate::im::*;

async fn store(_test: &str) -> Option<(tempfile_dir::Dir, SqliteStore)> {
    let dir = tempfile_dir::Dir::new();
    let s = SqliteStore::open(&dir.0.join("db.sqlite"))
        .await
        .expect("open");
    Some((dir, s))
}

/// Another pool on the same file (writers from both must serialise).
async fn second(d: &tempfile_dir::Dir) -> SqliteStore {
    SqliteStore::open(&d.0.join("db.sqlite"))
        .await
        .expect("open")
}

async fn count(s: &SqliteStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap()
}

crate::sql::sql_store_tests!();

mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "palaver-im-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let (_d, s) = store("").await.expect("store");
    sqlx::query(
        "INSERT INTO roster_items (host, username, jid, subscription) VALUES ('h', 'u', 'c@h', 'sideways')",
    )
    .execute(s.pool())
    .await
    .unwrap();
    assert!(matches!(
        s.roster_item("h", "u", "c@h").await,
        Err(StorageError::Corrupt(_))
    ));
    assert!(matches!(
        s.roster("h", "u").await,
        Err(StorageError::Corrupt(_))
    ));
    sqlx::query(
        "INSERT INTO roster_items (host, username, jid, subscription, ask) VALUES ('h', 'v', 'c@h', 'none', 'yes')",
    )
    .execute(s.pool())
    .await
    .unwrap();
    assert!(matches!(
        s.roster_item("h", "v", "c@h").await,
        Err(StorageError::Corrupt(_))
    ));
    sqlx::query("INSERT INTO offline_messages (host, username, stanza, stamp) VALUES ('h', 'u', '<m/>', 'later')")
        .execute(s.pool())
        .await
        .unwrap();
    assert!(matches!(
        s.offline_messages("h", "u").await,
        Err(StorageError::Corrupt(_))
    ));
}

#[tokio::test]
async fn upgrade_from_version_1_keeps_accounts() {
    use super::migrations::{MIGRATIONS, migrate_with};
    use crate::AccountStore;
    use palaver_proto::sasl::{ScramCredentials, ScramHash};
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    let d = tempfile_dir::Dir::new();
    std::fs::create_dir_all(&d.0).unwrap();
    let path = d.0.join("db.sqlite");
    let creds = vec![ScramCredentials::generate(ScramHash::Sha256, "pw", 4096)];
    {
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        migrate_with(&pool, &MIGRATIONS[..1]).await.unwrap();
        assert_eq!(schema_version(&pool).await.unwrap(), 1);
        let v1 = SqliteStore { pool };
        v1.create_account("h", "alice", &creds).await.unwrap();
        // Version 1 has no IM tables.
        assert!(matches!(
            v1.roster("h", "alice").await,
            Err(StorageError::Backend(_))
        ));
        v1.pool.close().await;
    }
    let s = SqliteStore::open(&path).await.unwrap();
    const { assert!(SCHEMA_VERSION >= 2) };
    assert_eq!(schema_version(s.pool()).await.unwrap(), SCHEMA_VERSION);
    assert!(s.account_exists("h", "alice").await.unwrap());
    let c = s
        .credentials("h", "alice", ScramHash::Sha256)
        .await
        .unwrap()
        .unwrap();
    assert!(c.verify_password("pw"));
    assert_eq!(s.roster("h", "alice").await.unwrap(), (0, vec![]));
    assert_eq!(
        s.put_roster_item("h", "alice", &RosterItem::new("b@h"))
            .await
            .unwrap(),
        1
    );
    // An older binary (knowing only version 1) refuses the upgraded file.
    assert!(matches!(
        migrate_with(s.pool(), &MIGRATIONS[..1]).await,
        Err(StorageError::SchemaTooNew {
            found,
            supported: 1
        }) if found == SCHEMA_VERSION
    ));
    // Reopening is a no-op.
    s.pool().close().await;
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(schema_version(s.pool()).await.unwrap(), SCHEMA_VERSION);
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_version")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(versions, SCHEMA_VERSION);
    assert_eq!(s.roster_count("h", "alice").await.unwrap(), 1);
}

#[tokio::test]
async fn concurrent_first_open_migrates_once() {
    let d = tempfile_dir::Dir::new();
    let path = d.0.join("db.sqlite");
    let (a, b) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
    let (a, _b) = (a.unwrap(), b.unwrap());
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(a.pool())
            .await
            .unwrap();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}
