//! End-to-end smoke test of the PostgreSQL backend (`default_db: sql`):
//! needs `PALAVER_TEST_PG_URL` (skipped without it, except under `CI`).

mod common;

use common::*;
use palaver_server::config::Config;
use palaver_storage::postgres::testdb::TestDb;
use palaver_storage::{RosterStore, Subscription};

#[tokio::test]
async fn login_message_and_roster_persist_in_postgres() {
    let Some(db) = TestDb::create("login_message_and_roster_persist_in_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", "") + &pg_keys(&db.url);
    let srv = TestServer::start_with_config_text(dir, &text).await;
    assert_eq!(srv.core().storage.backend, "postgresql");
    srv.add_user("alice", DOMAIN, "pw-a").await;
    srv.add_user("bob", DOMAIN, "pw-b").await;

    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw-a", "ra").await;
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw-b", "rb").await;
    a.send(&format!(
        "<message to='bob@{DOMAIN}/rb' type='chat' id='m1'><body>hello over postgres</body></message>"
    ))
    .await;
    b.until("hello over postgres").await;

    a.send(&format!(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@{DOMAIN}' name='Bob'><group>Friends</group></item></query></iq>"
    ))
    .await;
    a.until("r1").await;

    // The item is in PostgreSQL, read through a separate connection pool.
    let store = palaver_storage::postgres::PgStore::open(&db.url, 1)
        .await
        .expect("open");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let item = loop {
        if let Some(it) = store
            .roster_item(DOMAIN, "alice", &format!("bob@{DOMAIN}"))
            .await
            .unwrap()
        {
            break it;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "roster item not stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(item.name.as_deref(), Some("Bob"));
    assert_eq!(item.groups, ["Friends"]);
    assert_eq!(item.subscription, Subscription::None);
    assert!(store.roster_version(DOMAIN, "alice").await.unwrap() >= 1);
    let users = account_count(&store).await;
    assert_eq!(users, 2);
    store.pool().close().await;
    drop(a);
    drop(b);
    srv.stop().await;

    // A restarted server on the same database sees the accounts and roster.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", "") + &pg_keys(&db.url);
    let srv = TestServer::start_with_config_text(dir, &text).await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw-a", "ra2").await;
    a.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let r = a.until("</iq>").await;
    assert!(r.contains(&format!("bob@{DOMAIN}")), "{r}");
    assert!(r.contains("Friends"), "{r}");
    drop(a);
    srv.stop().await;
}

async fn account_count(store: &palaver_storage::postgres::PgStore) -> i64 {
    use palaver_storage::AccountStore;
    store.list_accounts(DOMAIN).await.unwrap().len() as i64
}

#[test]
fn sql_config_builds_urls_and_validates() {
    let base = "hosts: [localhost]\ndata_dir: /tmp/palaver-pg-config-test\n";
    let c = Config::parse(&format!(
        "{base}default_db: sql\nsql_type: pgsql\nsql_server: db.example\nsql_port: 6543\nsql_database: xmpp\nsql_username: pal\nsql_password: \"p@ss:w/rd\"\nsql_pool_size: 3\n"
    ))
    .expect("parts config");
    assert_eq!(
        c.sql_url().as_deref(),
        Some("postgres://pal:p%40ss%3Aw%2Frd@db.example:6543/xmpp")
    );
    assert_eq!(c.sql.pool_size, Some(3));
    let c = Config::parse(&format!("{base}default_db: sql\nsql_type: pgsql\n")).unwrap();
    assert_eq!(
        c.sql_url().as_deref(),
        Some("postgres://palaver@localhost:5432/palaver")
    );
    let c = Config::parse(&format!(
        "{base}default_db: sql\nsql_type: pgsql\nsql_server: \"::1\"\nsql_url: \"postgresql://u@h/d\"\n"
    ))
    .unwrap();
    assert_eq!(c.sql_url().as_deref(), Some("postgresql://u@h/d"));
    // SQLite: no URL.
    assert_eq!(Config::parse(base).unwrap().sql_url(), None);
    // Errors: no sql_type, a non-postgres URL, an empty pool.
    let e = Config::parse(&format!("{base}default_db: sql\n")).unwrap_err();
    assert!(e.to_string().contains("sql_type"), "{e}");
    let e = Config::parse(&format!(
        "{base}default_db: sql\nsql_type: pgsql\nsql_url: \"mysql://h/d\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("sql_url"), "{e}");
    let e = Config::parse(&format!(
        "{base}default_db: sql\nsql_type: pgsql\nsql_pool_size: 0\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("sql_pool_size"), "{e}");
}

#[tokio::test]
async fn db_status_and_migrate_commands() {
    let Some(db) = TestDb::create("db_status_and_migrate_commands").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("palaver.yml");
    std::fs::write(
        &cfg,
        format!(
            "hosts: [localhost]\ndata_dir: {}\n{}",
            dir.path().display(),
            pg_keys(&db.url)
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_palaver"))
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run palaver");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let supported = palaver_storage::postgres::SCHEMA_VERSION;
    let (ok, out) = run(&["db", "status"]);
    assert!(ok, "{out}");
    assert!(out.contains("backend: postgresql"), "{out}");
    assert!(out.contains("schema version: 0"), "{out}");
    assert!(
        out.contains(&format!("supported version: {supported}")),
        "{out}"
    );
    let (ok, out) = run(&["db", "migrate"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("from schema version 0 to {supported}")),
        "{out}"
    );
    let (ok, out) = run(&["db", "migrate"]);
    assert!(ok && out.contains("up to date"), "{out}");
    let (ok, out) = run(&["db", "status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("schema version: {supported}\n")),
        "{out}"
    );
    // A schema from a newer binary: status and migrate fail.
    palaver_storage::postgres::testdb::record_schema_version(&db.url, supported + 1).await;
    let (ok, out) = run(&["db", "status"]);
    assert!(!ok && out.contains("newer than this binary"), "{out}");
    let (ok, out) = run(&["db", "migrate"]);
    assert!(!ok && out.contains("newer than this binary"), "{out}");
}
