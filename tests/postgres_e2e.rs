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
    assert_eq!(srv.core().storage().backend, "postgresql");
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

/// A TCP proxy in front of PostgreSQL that the test can cut: while down,
/// every open connection is dropped and new ones are closed at once, which
/// is what the server sees when the database restarts.
struct PgProxy {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    async fn start(target: String) -> PgProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().expect("lock").push(task.abort_handle());
            }
        });
        PgProxy {
            addr,
            up,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `host:port` of a PostgreSQL URL, and the URL with it replaced by `with`.
fn split_pg_url(url: &str, with: &str) -> (String, String) {
    let start = url.find("://").map(|i| i + 3).expect("scheme");
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    let replaced = format!("{}{userinfo}{with}{}", &url[..start], &rest[end..]);
    (hostport, replaced)
}

/// Send an IQ and return its answer (the text up to its end).
async fn iq(c: &mut RawTcp, id: &str, body: &str) -> String {
    c.send(body).await;
    let r = c.until(&format!("id='{id}'")).await + &c.until(">").await;
    if r.ends_with("/>") {
        r
    } else {
        r + &c.until("</iq>").await
    }
}

/// How a test cuts the database and brings it back.
trait Outage {
    /// The database is gone (connections die, new ones fail).
    async fn down(&mut self);
    /// It is back.
    async fn up(&mut self);
}

impl Outage for PgProxy {
    async fn down(&mut self) {
        self.cut();
    }
    async fn up(&mut self) {
        self.restore();
    }
}

/// A server on `url` (sql_connect_timeout 1 s) lives through an outage:
/// while down, writes and messages to offline users answer
/// `resource-constraint` (type wait), logins `temporary-auth-failure`,
/// sessions stay up and what needs no database works; afterwards
/// everything works again without restarting Palaver and nothing committed
/// before is lost.
async fn survives_outage(url: &str, outage: &mut impl Outage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", "") + &pg_keys(url) + "sql_connect_timeout: 1\n";
    let srv = TestServer::start_with_config_text(dir, &text).await;
    for u in ["alice", "bob", "carol"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut a = raw_login(srv.addr, "alice", DOMAIN, "pw", "ra").await;
    let r = iq(
        &mut a,
        "r1",
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='before@localhost'/></query></iq>",
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");

    outage.down().await;
    let r = iq(
        &mut a,
        "r2",
        "<iq type='set' id='r2'><query xmlns='jabber:iq:roster'><item jid='during@localhost'/></query></iq>",
    )
    .await;
    assert!(
        r.contains("type='wait'") && r.contains("resource-constraint"),
        "{r}"
    );
    a.send("<message to='bob@localhost' id='m1' type='chat'><body>while down</body></message>")
        .await;
    let r = a.until("</message>").await;
    assert!(
        r.contains("type='wait'") && r.contains("resource-constraint"),
        "{r}"
    );
    let r = iq(
        &mut a,
        "p1",
        "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");
    // A login that needs the database: a temporary failure, not a wrong password.
    let mut c = Raw::connect(srv.addr).await;
    c.open(DOMAIN).await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGNhcm9sAHB3</auth>")
        .await;
    let r = c.until("</failure>").await;
    assert!(r.contains("temporary-auth-failure"), "{r}");
    drop(c);

    outage.up().await;
    // The pool reconnects by itself: the next request works.
    let r = iq(
        &mut a,
        "r3",
        "<iq type='set' id='r3'><query xmlns='jabber:iq:roster'><item jid='after@localhost'/></query></iq>",
    )
    .await;
    assert!(r.contains("type='result'"), "not recovered: {r}");
    let mut c = raw_login(srv.addr, "carol", DOMAIN, "pw", "rc").await;
    c.send(
        "<message to='bob@localhost' id='m2' type='chat'><body>after the outage</body></message>",
    )
    .await;
    let r = iq(
        &mut a,
        "g1",
        "<iq type='get' id='g1'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .await;
    assert!(
        r.contains("before@localhost") && r.contains("after@localhost") && !r.contains("during@"),
        "{r}"
    );
    let mut b = raw_login(srv.addr, "bob", DOMAIN, "pw", "rb").await;
    b.send("<presence/>").await;
    let r = b.until("after the outage").await;
    assert!(!r.contains("while down"), "{r}");
    drop((a, b, c));
    srv.stop().await;
}

/// The database cut by a proxy that drops every connection.
#[tokio::test]
async fn database_outage_gives_errors_and_recovers() {
    let Some(db) = TestDb::create("database_outage_gives_errors_and_recovers").await else {
        return;
    };
    let (target, _) = split_pg_url(&db.url, "");
    let mut proxy = PgProxy::start(target).await;
    let (_, via_proxy) = split_pg_url(&db.url, &proxy.addr.to_string());
    survives_outage(&via_proxy, &mut proxy).await;
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory,
/// its own port), so the test can really stop and restart it without
/// touching the machine's shared server.
struct OwnPostgres {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnPostgres {
    /// `None` when PostgreSQL tests are skipped; panics under CI when the
    /// server binaries are missing.
    fn create() -> Option<OwnPostgres> {
        palaver_storage::postgres::testdb::admin_url("own postgres")?;
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .find(|p| p.join("pg_ctl").exists())
        });
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are needed in CI"
            );
            eprintln!("own postgres: skipped, no /usr/lib/postgresql/*/bin/pg_ctl");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        // PostgreSQL refuses to run as root: hand the directory to `postgres`.
        if Self::is_root() {
            let out = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown: {out:?}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = OwnPostgres {
            bin,
            data,
            port,
            _dir: dir,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data_str(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.start();
        Some(pg)
    }

    fn is_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    }

    fn data_str(&self) -> &str {
        self.data.to_str().expect("utf-8 path")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if Self::is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data_str()
        );
        let log = self.data.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_str(),
                "-o",
                &opts,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", self.data_str(), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if Self::is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", self.data_str(), "-m", "immediate", "stop"])
            .output();
    }
}

impl Outage for Option<OwnPostgres> {
    async fn down(&mut self) {
        let pg = self.take().expect("running");
        *self = Some(
            tokio::task::spawn_blocking(move || {
                pg.stop();
                pg
            })
            .await
            .expect("stop"),
        );
    }
    async fn up(&mut self) {
        let pg = self.take().expect("stopped");
        *self = Some(
            tokio::task::spawn_blocking(move || {
                pg.start();
                pg
            })
            .await
            .expect("start"),
        );
    }
}

/// The test's own PostgreSQL really stopped (`pg_ctl stop -m fast`) and
/// started again under a running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_is_survived() {
    let mut pg = tokio::task::spawn_blocking(OwnPostgres::create)
        .await
        .expect("create");
    let Some(url) = pg.as_ref().map(OwnPostgres::url) else {
        return;
    };
    survives_outage(&url, &mut pg).await;
}
