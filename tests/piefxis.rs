//! `palaver db export` / `palaver db import` (XEP-0227): a round trip on
//! SQLite and on PostgreSQL, the ejabberd fixtures, and bad files.
mod common;

use common::*;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use palaver_storage::postgres::testdb::TestDb;
use palaver_storage::{RosterItem, Storage, Subscription};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_palaver");
const FIXTURE: &str = "tests/fixtures/piefxis/20261202-003250.xml";

/// Write a config for the CLI: both test hosts, `dir` as data directory,
/// PostgreSQL when `pg` is the database URL.
fn write_config(dir: &Path, pg: Option<&str>) -> PathBuf {
    let path = dir.join("palaver.yml");
    let mut text = config_text(dir, "", "");
    if let Some(url) = pg {
        text.push_str(&pg_keys(url));
    }
    std::fs::write(&path, text).expect("write config");
    path
}

fn config_for(dir: &Path, pg: Option<&str>) -> String {
    let mut text = config_text(dir, "", "");
    if let Some(url) = pg {
        text.push_str(&pg_keys(url));
    }
    text
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run palaver");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Send an IQ and return its answer (start tag to end).
async fn iq(c: &mut RawTcp, id: &str, body: &str) -> String {
    c.send(body).await;
    let mut out = c.until(&format!("id='{id}'")).await;
    let head = c.until(">").await;
    out.push_str(&head);
    if !head.ends_with("/>") {
        out.push_str(&c.until("</iq>").await);
    }
    assert!(out.contains("type='result'"), "{out}");
    out
}

/// Read until every needle was seen, in any order; returns all that was read.
async fn until_all(c: &mut RawTcp, needles: &[&str]) -> String {
    let mut acc = String::new();
    for n in needles {
        if !acc.contains(n) {
            acc.push_str(&c.until(n).await);
        }
    }
    acc
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

const ALICE_PW: &str = "alice pw ü";

/// Fill a running server through the protocol: roster states, vCard,
/// private XML, block list, subscription requests, offline messages.
async fn fill(srv: &TestServer) {
    srv.add_user("alice", DOMAIN, ALICE_PW).await;
    srv.add_user("bob", DOMAIN, "bob-pw").await;
    srv.add_user("carol", DOMAIN, "carol-pw").await;
    srv.add_user("dave", DOMAIN2, "dave-pw").await;
    let mut a = raw_login(srv.addr, "alice", DOMAIN, ALICE_PW, "ra").await;
    iq(
        &mut a,
        "r1",
        &format!("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@{DOMAIN}' name='Bobby &amp; co'><group>Work</group><group>Friends</group></item></query></iq>"),
    )
    .await;
    a.send("<presence/>").await;
    // Outbound request to bob (offline): alice's item gets ask, bob a pending request.
    a.send(&format!(
        "<presence to='bob@{DOMAIN}' type='subscribe' id='s1'/>"
    ))
    .await;
    // Pre-approval of carol (RFC 6121 §3.4).
    a.send(&format!(
        "<presence to='carol@{DOMAIN}' type='subscribed'/>"
    ))
    .await;
    // dave asks, alice approves: alice `from`, dave `to`.
    let mut d = raw_login(srv.addr, "dave", DOMAIN2, "dave-pw", "rd").await;
    d.send(&format!("<presence to='alice@{DOMAIN}' type='subscribe'/>"))
        .await;
    a.until(&format!("from='dave@{DOMAIN2}'")).await;
    a.send(&format!(
        "<presence to='dave@{DOMAIN2}' type='subscribed'/>"
    ))
    .await;
    iq(
        &mut a,
        "v1",
        "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice Ünïcode</FN><NICKNAME>al</NICKNAME></vCard></iq>",
    )
    .await;
    iq(
        &mut a,
        "p1",
        "<iq type='set' id='p1'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'><conference jid='room@conference.localhost' autojoin='true' name='Room'><nick>al</nick></conference></storage></query></iq>",
    )
    .await;
    iq(
        &mut a,
        "p2",
        "<iq type='set' id='p2'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:custom-prefs'/></query></iq>",
    )
    .await;
    iq(
        &mut a,
        "b1",
        "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='spam@example.net'/></block></iq>",
    )
    .await;
    for (i, body) in ["first offline <message>", "second offline & last"]
        .iter()
        .enumerate()
    {
        let body = body.replace('&', "&amp;").replace('<', "&lt;");
        a.send(&format!(
            "<message to='bob@{DOMAIN}' type='chat' id='m{i}'><body>{body}</body></message>"
        ))
        .await;
    }
    let st = srv.core().storage().clone();
    wait_for("offline messages and roster states stored", async || {
        let offline = st.offline.offline_count(DOMAIN, "bob").await.unwrap_or(0);
        let (_, items) = st.roster.roster(DOMAIN, "alice").await.expect("roster");
        let (_, dave) = st.roster.roster(DOMAIN2, "dave").await.expect("roster");
        offline == 2
            && items.len() == 3
            && items.iter().any(|i| i.approved)
            && items.iter().any(|i| i.subscription == Subscription::From)
            && dave.iter().any(|i| i.subscription == Subscription::To)
    })
    .await;
    a.send("</stream:stream>").await;
    d.send("</stream:stream>").await;
}

/// Everything the export covers, read through the storage traits.
#[derive(Debug, PartialEq)]
struct Snapshot {
    accounts: Vec<String>,
    creds: Vec<Option<ScramCredentials>>,
    rosters: Vec<Vec<RosterItem>>,
    pending: Vec<Vec<String>>,
    vcards: Vec<Option<String>>,
    bookmarks: Vec<Option<String>>,
    offline: Vec<Vec<(String, i64)>>,
    blocks: Vec<Vec<String>>,
}

async fn snapshot(st: &Storage) -> Snapshot {
    let mut s = Snapshot {
        accounts: vec![],
        creds: vec![],
        rosters: vec![],
        pending: vec![],
        vcards: vec![],
        bookmarks: vec![],
        offline: vec![],
        blocks: vec![],
    };
    for host in [DOMAIN, DOMAIN2] {
        for u in st.accounts.list_accounts(host).await.expect("list") {
            s.accounts.push(format!("{u}@{host}"));
            for h in ScramHash::ALL {
                s.creds
                    .push(st.accounts.credentials(host, &u, h).await.expect("creds"));
            }
            s.rosters
                .push(st.roster.roster(host, &u).await.expect("roster").1);
            s.pending.push(
                st.roster
                    .pending_in(host, &u)
                    .await
                    .expect("pending")
                    .into_iter()
                    .map(|(j, _)| j)
                    .collect(),
            );
            s.vcards
                .push(st.xml.get_xml(host, &u, "vcard").await.expect("vcard"));
            s.bookmarks.push(
                st.xml
                    .get_xml(host, &u, "private:storage:bookmarks:storage")
                    .await
                    .expect("private"),
            );
            s.offline.push(
                st.offline
                    .offline_messages(host, &u)
                    .await
                    .expect("offline")
                    .into_iter()
                    .map(|(_, x, t)| (x, t))
                    .collect(),
            );
            s.blocks.push(
                palaver_modules::blocking::store::BlocksSql::new(st.db.clone())
                    .blocklist(host, &u)
                    .await
                    .expect("blocks"),
            );
        }
    }
    s
}

async fn round_trip(src_pg: Option<&TestDb>, dst_pg: Option<&TestDb>) {
    // Source server, filled through the protocol.
    let dir = tempfile::tempdir().expect("tempdir");
    let src_cfg = write_config(dir.path(), src_pg.map(|d| d.url.as_str()));
    let text = config_for(dir.path(), src_pg.map(|d| d.url.as_str()));
    let out = tempfile::tempdir().expect("tempdir");
    let src = TestServer::start_with_config_text(dir, &text).await;
    fill(&src).await;
    let before = snapshot(src.core().storage()).await;
    assert_eq!(
        before.accounts,
        [
            "alice@localhost",
            "bob@localhost",
            "carol@localhost",
            "dave@example.test"
        ]
    );

    // Export both hosts while the server runs.
    let f1 = out.path().join("localhost.xml");
    let f2 = out.path().join("example.xml");
    let (ok, msg) = run(&[
        "db",
        "export",
        DOMAIN,
        path_str(&f1),
        "--config",
        path_str(&src_cfg),
    ]);
    assert!(ok, "{msg}");
    assert!(msg.contains("exported 3 account(s) of localhost"), "{msg}");
    let (ok, msg) = run(&[
        "db",
        "export",
        DOMAIN2,
        path_str(&f2),
        "--config",
        path_str(&src_cfg),
    ]);
    assert!(ok, "{msg}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f1).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "export readable by its owner only");
    }
    let xml = std::fs::read_to_string(&f1).expect("read export");
    assert!(
        xml.contains("<server-data xmlns='urn:xmpp:pie:0'>"),
        "{xml}"
    );
    assert!(xml.contains("mechanism='SCRAM-SHA-512'"), "{xml}");
    assert!(
        !xml.contains(ALICE_PW) && !xml.contains("password="),
        "no plaintext: {xml}"
    );
    assert!(
        xml.contains("approved='true'") && xml.contains("ask='subscribe'"),
        "{xml}"
    );
    assert!(xml.contains("<presence xmlns='jabber:client'"), "{xml}");
    assert!(xml.contains("<delay xmlns='urn:xmpp:delay'"), "{xml}");
    // Private XML outside the known namespaces cannot be listed by the storage traits.
    assert!(
        xml.contains("urn:example:custom-prefs"),
        "every private namespace: {xml}"
    );
    let stamp = before.offline[1][0].0.clone();
    src.stop().await;

    // Import into a fresh data directory (or database).
    let dir2 = tempfile::tempdir().expect("tempdir");
    let dst_cfg = write_config(dir2.path(), dst_pg.map(|d| d.url.as_str()));
    for f in [&f1, &f2] {
        let (ok, msg) = run(&["db", "import", path_str(f), "--config", path_str(&dst_cfg)]);
        assert!(ok, "{msg}");
        assert!(msg.contains("imported"), "{msg}");
    }
    // Importing again names the existing accounts and writes nothing.
    let (ok, msg) = run(&[
        "db",
        "import",
        path_str(&f1),
        "--config",
        path_str(&dst_cfg),
    ]);
    assert!(!ok, "{msg}");
    assert!(
        msg.contains("already exist: alice@localhost, bob@localhost, carol@localhost")
            && msg.contains("--force"),
        "{msg}"
    );
    let (ok, msg) = run(&[
        "db",
        "import",
        path_str(&f1),
        "--force",
        "--config",
        path_str(&dst_cfg),
    ]);
    assert!(ok && msg.contains("3 replaced"), "{msg}");

    let text = config_for(dir2.path(), dst_pg.map(|d| d.url.as_str()));
    let dst = TestServer::start_with_config_text(dir2, &text).await;
    let after = snapshot(dst.core().storage()).await;
    assert_eq!(after, before, "every exported item is back, unchanged");

    // The same passwords log in; the roster, vCard, private XML are served.
    let mut a = raw_login(dst.addr, "alice", DOMAIN, ALICE_PW, "ra").await;
    let r = iq(
        &mut a,
        "g1",
        "<iq type='get' id='g1'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .await;
    assert!(r.contains("name='Bobby &amp; co'"), "{r}");
    assert!(
        r.contains("<group>Friends</group><group>Work</group>"),
        "{r}"
    );
    assert!(
        r.contains("approved='true'") && r.contains("ask='subscribe'"),
        "{r}"
    );
    let v = iq(
        &mut a,
        "g2",
        "<iq type='get' id='g2'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(v.contains("<FN>Alice Ünïcode</FN>"), "{v}");
    let p = iq(
        &mut a,
        "g3",
        "<iq type='get' id='g3'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>",
    )
    .await;
    assert!(
        p.contains("room@conference.localhost") && p.contains("<nick>al</nick>"),
        "{p}"
    );
    let b = iq(
        &mut a,
        "g4",
        "<iq type='get' id='g4'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
    )
    .await;
    assert!(b.contains("spam@example.net"), "{b}");

    // bob gets his offline messages (with their original delay) and alice's request.
    let mut bob = raw_login(dst.addr, "bob", DOMAIN, "bob-pw", "rb").await;
    bob.send("<presence/>").await;
    let got = until_all(
        &mut bob,
        &[
            "first offline &lt;message&gt;",
            "second offline &amp; last",
            "type='subscribe'",
        ],
    )
    .await;
    let stamp_attr = stamp
        .split("stamp='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("stamp in stored message");
    assert!(got.contains(&format!("stamp='{stamp_attr}'")), "{got}");
    assert!(got.contains("urn:xmpp:delay"), "{got}");
    let _ = raw_login(dst.addr, "dave", DOMAIN2, "dave-pw", "rd").await;
    dst.stop().await;
}

#[tokio::test]
async fn round_trip_sqlite() {
    round_trip(None, None).await;
}

#[tokio::test]
async fn round_trip_postgresql() {
    let Some(src) = TestDb::create("piefxis round trip source").await else {
        return;
    };
    let Some(dst) = TestDb::create("piefxis round trip target").await else {
        return;
    };
    round_trip(Some(&src), Some(&dst)).await;
    // And across backends: PostgreSQL export into SQLite is the same file format.
}

fn fixture_config(dir: &Path, pg: Option<&str>) -> String {
    let mut text = format!(
        "hosts: [example.test, plain.test]\nloglevel: warning\ndata_dir: {}\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    allow_plain_without_tls: true\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    tls: true\n  - port: 0\n    ip: 127.0.0.1\n    module: http\n",
        dir.display()
    );
    if let Some(url) = pg {
        text.push_str(&pg_keys(url));
    }
    text
}

async fn ejabberd_fixture(pg: Option<&TestDb>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = fixture_config(dir.path(), pg.map(|d| d.url.as_str()));
    let cfg = dir.path().join("palaver.yml");
    std::fs::write(&cfg, &text).expect("write config");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let (ok, msg) = run(&[
        "db",
        "import",
        path_str(&fixture),
        "--config",
        path_str(&cfg),
    ]);
    assert!(ok, "{msg}");
    assert!(
        msg.contains("imported 4 account(s)") && msg.contains("1 with credentials derived"),
        "{msg}"
    );
    assert!(msg.contains("base64-encoded twice"), "{msg}");
    let srv = TestServer::start_with_config_text(dir, &text).await;

    // SCRAM-SHA-1 credentials from ejabberd check the original password.
    let mut a = raw_login(srv.addr, "alice", "example.test", "alice-pw", "r").await;
    let r = iq(
        &mut a,
        "g1",
        "<iq type='get' id='g1'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .await;
    assert!(
        r.contains("jid='bob@example.test'") && r.contains("subscription='both'"),
        "{r}"
    );
    assert!(
        r.contains("<group>Friends</group><group>Work</group>"),
        "{r}"
    );
    assert!(
        r.contains("jid='romeo@montague.lit'") && r.contains("subscription='to'"),
        "{r}"
    );
    let v = iq(
        &mut a,
        "g2",
        "<iq type='get' id='g2'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(
        v.contains("<FN>Alice Liddell</FN>") && v.contains("<ORGNAME>Wonderland Ltd</ORGNAME>"),
        "{v}"
    );
    let p = iq(
        &mut a,
        "g3",
        "<iq type='get' id='g3'><query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'/></query></iq>",
    )
    .await;
    assert!(p.contains("<defaultnick>Alice</defaultnick>"), "{p}");

    // carol: two offline messages with ejabberd's delay, two pending requests.
    let mut c = raw_login(srv.addr, "carol", "example.test", "carol-pw", "r").await;
    c.send("<presence/>").await;
    let got = until_all(
        &mut c,
        &[
            "Hello Carol, you are offline",
            "Second message &amp; &lt;markup&gt;",
            "from='romeo@montague.lit'",
            "from='bob@example.test'",
        ],
    )
    .await;
    assert!(got.contains("stamp='2026-12-02T00:31:40.800984Z'"), "{got}");
    assert!(got.contains("type='subscribe'"), "{got}");

    // The plaintext account of the second host, with XML-escaped characters.
    let mut d = raw_login(
        srv.addr,
        "dave",
        "plain.test",
        "dave pw \"quoted\" <&>",
        "r",
    )
    .await;
    let r = iq(
        &mut d,
        "g1",
        "<iq type='get' id='g1'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .await;
    assert!(
        r.contains("name='Alice L.'") && r.contains("subscription='from'"),
        "{r}"
    );
    d.send("<presence/>").await;
    d.until("Cross-host hello").await;
    // A plaintext password gets every hash.
    let st = srv.core().storage();
    for h in ScramHash::ALL {
        assert!(
            st.accounts
                .credentials("plain.test", "dave", h)
                .await
                .expect("creds")
                .is_some()
        );
    }
    assert!(
        st.accounts
            .credentials("example.test", "bob", ScramHash::Sha1)
            .await
            .expect("creds")
            .is_some_and(|c| c.verify_password("b0b&secret"))
    );
    srv.stop().await;
}

#[tokio::test]
async fn ejabberd_export_imports_sqlite() {
    ejabberd_fixture(None).await;
}

#[tokio::test]
async fn ejabberd_export_imports_postgresql() {
    let Some(db) = TestDb::create("piefxis ejabberd fixture").await else {
        return;
    };
    ejabberd_fixture(Some(&db)).await;
}

#[tokio::test]
async fn bad_files_are_refused_with_their_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), None);
    let cfg = path_str(&cfg).to_string();
    let file = dir.path().join("in.xml");
    let import = |text: &str| {
        std::fs::write(&file, text).expect("write");
        run(&["db", "import", path_str(&file), "--config", &cfg])
    };
    let name = path_str(&file).to_string();
    let head = "<?xml version='1.0'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n";

    let (ok, msg) = import(&format!(
        "{head}<host jid='localhost'>\n<user name='a' password='x'>\n</host></server-data>"
    ));
    assert!(
        !ok && msg.contains(&format!("{name}:5:")) && msg.contains("not well-formed"),
        "{msg}"
    );
    let (ok, msg) = import("<server-data xmlns='urn:xmpp:pie:9'/>");
    assert!(
        !ok && msg.contains(&format!("{name}:1:1")) && msg.contains("wrong namespace"),
        "{msg}"
    );
    let (ok, msg) = import("<?xml version='1.0'?>\n<users/>");
    assert!(
        !ok && msg.contains(&format!("{name}:2:1")) && msg.contains("expected <server-data"),
        "{msg}"
    );
    let (ok, msg) = import(&format!(
        "{head}<host jid='elsewhere.example'><user name='a' password='x'/></host></server-data>"
    ));
    assert!(
        !ok && msg.contains(&format!("{name}:3:1"))
            && msg.contains("`elsewhere.example` is not served"),
        "{msg}"
    );
    let (ok, msg) = import(&format!(
        "{head}<host jid='localhost'><user password='x'/></host></server-data>"
    ));
    assert!(!ok && msg.contains("without a name"), "{msg}");
    let (ok, msg) = import(&format!(
        "{head}<host jid='localhost'><x:include xmlns:x='http://www.w3.org/2001/XInclude' href='missing.xml'/></host></server-data>"
    ));
    assert!(
        !ok && msg.contains("missing.xml") && msg.contains(&format!("{name}:3:")),
        "{msg}"
    );
    let (ok, msg) = run(&["db", "import", "/nonexistent/file.xml", "--config", &cfg]);
    assert!(!ok && msg.contains("/nonexistent/file.xml"), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");

    // A bad user after a good one: nothing is written at all.
    let (ok, msg) = import(&format!(
        "{head}<host jid='localhost'><user name='good' password='x'/>\n<user name='bad'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><iter-count>4096</iter-count><salt>AAAA</salt><server-key>AAAA</server-key><stored-key>AAAA</stored-key></scram-credentials></user></host></server-data>"
    ));
    assert!(
        !ok && msg.contains(&format!("{name}:4:1")) && msg.contains("bad@localhost"),
        "{msg}"
    );
    let (ok, msg) = run(&["user", "list", "--config", &cfg]);
    assert!(ok && !msg.contains("good@"), "nothing imported: {msg}");

    // Unknown data is reported, and the rest imported.
    let (ok, msg) = import(&format!(
        "{head}<host jid='localhost'><user name='good' password='x'><query xmlns='jabber:iq:privacy'/><mystery xmlns='urn:example:unknown'/></user></host></server-data>"
    ));
    assert!(ok, "{msg}");
    assert!(
        msg.contains("warning:")
            && msg.contains("privacy lists")
            && msg.contains("urn:example:unknown"),
        "{msg}"
    );
    let (ok, msg) = run(&["user", "list", "--config", &cfg]);
    assert!(ok && msg.contains("good@localhost"), "{msg}");

    // Export of a host that is not served.
    let (ok, msg) = run(&[
        "db",
        "export",
        "nope.example",
        path_str(&dir.path().join("o.xml")),
        "--config",
        &cfg,
    ]);
    assert!(!ok && msg.contains("`nope.example` is not served"), "{msg}");
}
