//! Tests of the PostgreSQL backend: the shared store behaviour
//! ([`crate::sql::sql_store_tests`]) on a fresh database per test, and what
//! is PostgreSQL's own (URLs, migrations under the advisory lock, decoding).

use super::migrations::{MIGRATIONS, migrate_with};
use super::testdb::{self, TestDb};
use super::*;
use crate::AccountStore as _;
use crate::im::*;
use palaver_proto::sasl::{ScramCredentials, ScramHash};

/// A store on a fresh database, or `None` when PostgreSQL tests are skipped.
async fn store(test: &str) -> Option<(TestDb, PgStore)> {
    let db = TestDb::create(test).await?;
    let s = PgStore::open(&db.url, 4).await.expect("open");
    Some((db, s))
}

/// A second pool on the same database, as a second node would have.
async fn second(d: &TestDb) -> PgStore {
    PgStore::open(&d.url, 4).await.expect("open")
}

async fn count(s: &PgStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap()
}

crate::sql::sql_store_tests!();

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

#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let Some((_d, s)) = store("undecodable_rows_are_corrupt").await else {
        return;
    };
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
}

#[tokio::test]
async fn upgrade_from_version_1_keeps_accounts() {
    use palaver_proto::sasl::{ScramCredentials, ScramHash};
    let Some(d) = TestDb::create("upgrade_from_version_1_keeps_accounts").await else {
        return;
    };
    let creds = vec![ScramCredentials::generate(ScramHash::Sha256, "pw", 4096)];
    {
        let pool = connect(&d.url, &PgSettings::with_pool_size(1))
            .await
            .unwrap();
        assert_eq!(schema_version(&pool).await.unwrap(), 0);
        migrate_with(&pool, &MIGRATIONS[..1]).await.unwrap();
        assert_eq!(schema_version(&pool).await.unwrap(), 1);
        let v1 = PgStore { pool };
        v1.create_account("h", "alice", &creds).await.unwrap();
        // Version 1 has no IM tables.
        assert!(matches!(
            v1.roster("h", "alice").await,
            Err(StorageError::Backend(_))
        ));
        v1.pool.close().await;
    }
    let s = PgStore::open(&d.url, 2).await.unwrap();
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
    // An older binary (knowing only version 1) refuses the upgraded database.
    assert!(matches!(
        migrate_with(s.pool(), &MIGRATIONS[..1]).await,
        Err(StorageError::SchemaTooNew {
            found,
            supported: 1
        }) if found == SCHEMA_VERSION
    ));
    // A version from the future is refused at open, and nothing is changed.
    sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
        .bind(SCHEMA_VERSION + 5)
        .execute(s.pool())
        .await
        .unwrap();
    assert!(matches!(
        PgStore::open(&d.url, 1).await,
        Err(StorageError::SchemaTooNew { found, supported })
            if found == SCHEMA_VERSION + 5 && supported == SCHEMA_VERSION
    ));
    sqlx::query("DELETE FROM schema_version WHERE version > $1")
        .bind(SCHEMA_VERSION)
        .execute(s.pool())
        .await
        .unwrap();
    // Reopening is a no-op.
    s.pool().close().await;
    let s = PgStore::open(&d.url, 2).await.unwrap();
    assert_eq!(schema_version(s.pool()).await.unwrap(), SCHEMA_VERSION);
    assert_eq!(
        count(&s, "SELECT COUNT(*) FROM schema_version").await,
        SCHEMA_VERSION
    );
    assert_eq!(s.roster_count("h", "alice").await.unwrap(), 1);
    s.pool().close().await;
}

#[tokio::test]
async fn concurrent_first_open_migrates_once() {
    let Some(d) = TestDb::create("concurrent_first_open_migrates_once").await else {
        return;
    };
    let (a, b, c) = tokio::join!(
        PgStore::open(&d.url, 1),
        PgStore::open(&d.url, 1),
        PgStore::open(&d.url, 1)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(a.pool())
            .await
            .unwrap();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    for s in [a, b, c] {
        s.pool().close().await;
    }
}
