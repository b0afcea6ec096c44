//! Configuration reload without a restart, on a real server over real
//! sockets with a configuration file the test rewrites: modules enabled and
//! disabled while a client stays connected (and in a MUC room, whose module
//! keeps running), hosts added and removed, a bad file refused with nothing
//! changed, settings that need a restart reported; through the REST API
//! (`/api/reload_config`), `palaver ctl reload_config` and `SIGHUP`.
mod common;
#[path = "common/xclient.rs"]
mod xclient;
use common::*;
use minidom::Element;
use palaver_server::config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};

use xclient::*;

const BIN: &str = env!("CARGO_BIN_EXE_palaver");
const TIME: &str = "urn:xmpp:time";
const VERSION: &str = "jabber:iq:version";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

/// A configuration with `hosts`, the c2s/TLS/HTTP listeners on `port`s
/// (0: any) and `modules` (a YAML block under `modules:`).
fn config_text(dir: &Path, hosts: &[&str], c2s_port: u16, modules: &str, db: &str) -> String {
    format!(
        "hosts: [{h}]\nloglevel: info\ndata_dir: {d}\nlisten:\n  - port: {c2s_port}\n    ip: 127.0.0.1\n    module: c2s\n    allow_plain_without_tls: true\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    tls: true\n  - port: 0\n    ip: 127.0.0.1\n    module: http\nacl:\n  admin:\n    user: admin@localhost\nmodules:\n{modules}{db}",
        h = hosts.join(", "),
        d = dir.display(),
    )
}

/// A server started from a file (so that it can read it again).
struct Reloadable {
    srv: TestServer,
    path: PathBuf,
    /// The storage keys of the suite's backend (PostgreSQL or nothing).
    db: String,
    token: String,
}

impl Reloadable {
    async fn start(hosts: &[&str], modules: &str) -> Reloadable {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = if backend_is_pg() {
            Some(
                palaver_storage::postgres::testdb::TestDb::create("reload")
                    .await
                    .expect("PALAVER_TEST_BACKEND=pgsql needs PALAVER_TEST_PG_URL"),
            )
        } else {
            None
        };
        let db = pg.as_ref().map(|d| pg_keys(&d.url)).unwrap_or_default();
        let path = dir.path().join("palaver.yml");
        std::fs::write(&path, config_text(dir.path(), hosts, 0, modules, &db)).expect("write");
        let config = Config::load(&path).expect("config");
        let mut server = palaver_server::Server::start(config, &palaver_admin::registry())
            .await
            .expect("server starts");
        palaver_http::start(&mut server);
        let (_, token) = palaver_admin::tokens::create(
            &server.core.config().data_dir,
            vec!["config".into()],
            "reload test".into(),
        )
        .await
        .expect("token");
        let srv = TestServer {
            addr: server.c2s_addr().expect("c2s"),
            tls_addr: server.c2s_tls_addr().expect("tls"),
            http_addr: server.http_addr().expect("http"),
            server: Some(server),
            dir,
            pg,
        };
        Reloadable {
            srv,
            path,
            db,
            token,
        }
    }

    /// Write a new configuration file (the server does not see it yet).
    fn rewrite(&self, hosts: &[&str], c2s_port: u16, modules: &str) {
        let text = config_text(self.srv.dir.path(), hosts, c2s_port, modules, &self.db);
        std::fs::write(&self.path, text).expect("rewrite");
    }

    /// `POST /api/reload_config`: (status, JSON answer).
    async fn reload(&self) -> (u16, Value) {
        let (status, _, body) = http_request(
            self.srv.http_addr,
            "POST",
            "/api/reload_config",
            &format!(
                "Content-Type: application/json\r\nAuthorization: Bearer {}\r\n",
                self.token
            ),
            b"{}",
        )
        .await;
        let v: Value = serde_json::from_slice(&body).expect("JSON answer");
        (status, v)
    }

    async fn reload_ok(&self) -> Value {
        let (s, v) = self.reload().await;
        assert_eq!(s, 200, "reload: {v}");
        v
    }
}

fn features(info: &Element) -> Vec<String> {
    info.get_child("query", DISCO_INFO)
        .map(|q| {
            q.children()
                .filter(|c| c.name() == "feature")
                .filter_map(|c| c.attr("var").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn server_features(c: &mut Client, host: &str) -> Vec<String> {
    let r = c
        .iq(&format!(
            "<iq type='get' to='{host}'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    features(&r)
}

/// The answer to an IQ get of `<name xmlns=ns/>` addressed to `host`.
async fn ask(c: &mut Client, host: &str, name: &str, ns: &str) -> Element {
    c.iq(&format!(
        "<iq type='get' to='{host}'><{name} xmlns='{ns}'/></iq>"
    ))
    .await
}

const MUC: &str = "  mod_muc: {}\n";
const BASE: &str = "  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n";

/// The test the issue names: a module enabled (and one disabled) by a
/// reload while a client stays connected; it sees the change in disco and
/// in the answers to its IQs without reconnecting. A module whose options
/// did not change keeps running: the client stays in its MUC room.
#[tokio::test]
async fn reload_keeps_sessions_while_modules_are_enabled_and_disabled() {
    let r = Reloadable::start(&[DOMAIN], &format!("{BASE}{MUC}  mod_version: {{}}\n")).await;
    r.srv.add_user("alice", DOMAIN, "pw").await;
    let mut alice = Client::login(&r.srv, "alice", DOMAIN, "r").await;
    alice.send("<presence/>").await;
    // A GC 1.0 join: an instant room, Alice its only occupant.
    alice
        .send("<presence to='room@conference.localhost/Alice'/>")
        .await;
    alice
        .expect("room self-presence", |e| {
            e.name() == "presence" && e.attr("from") == Some("room@conference.localhost/Alice")
        })
        .await;

    let before = server_features(&mut alice, DOMAIN).await;
    assert!(!before.iter().any(|f| f == TIME), "{before:?}");
    assert!(before.iter().any(|f| f == VERSION), "{before:?}");
    let t = ask(&mut alice, DOMAIN, "time", TIME).await;
    assert_eq!(
        condition(&t).as_deref(),
        Some("service-unavailable"),
        "{}",
        xml(&t)
    );

    // mod_time enabled, mod_version disabled; the rest unchanged.
    r.rewrite(&[DOMAIN], 0, &format!("{BASE}{MUC}  mod_time: {{}}\n"));
    let v = r.reload_ok().await;
    assert_eq!(
        v["modules"][DOMAIN]["started"],
        serde_json::json!(["mod_time"]),
        "{v}"
    );
    assert_eq!(
        v["modules"][DOMAIN]["stopped"],
        serde_json::json!(["mod_version"]),
        "{v}"
    );
    assert_eq!(
        v["modules"][DOMAIN]["restarted"],
        serde_json::json!([]),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("started mod_time"),
        "{v}"
    );

    // The same connection: the new module answers, the old one is gone.
    let after = server_features(&mut alice, DOMAIN).await;
    assert!(after.iter().any(|f| f == TIME), "{after:?}");
    assert!(!after.iter().any(|f| f == VERSION), "{after:?}");
    let t = ask(&mut alice, DOMAIN, "time", TIME).await;
    assert_eq!(t.attr("type"), Some("result"), "{}", xml(&t));
    assert!(t.get_child("time", TIME).is_some(), "{}", xml(&t));
    let ver = ask(&mut alice, DOMAIN, "query", VERSION).await;
    assert_eq!(
        condition(&ver).as_deref(),
        Some("service-unavailable"),
        "{}",
        xml(&ver)
    );

    // mod_muc was not restarted: Alice is still in the room.
    alice
        .send("<message to='room@conference.localhost' type='groupchat' id='g1'><body>still here</body></message>")
        .await;
    let echo = alice
        .expect("the room's echo", |e| {
            e.name() == "message" && e.attr("from") == Some("room@conference.localhost/Alice")
        })
        .await;
    assert_eq!(echo.attr("type"), Some("groupchat"), "{}", xml(&echo));
    alice
        .assert_none("an unavailable presence from the room", |e| {
            e.name() == "presence" && e.attr("type") == Some("unavailable")
        })
        .await;

    // Options changed: the module restarts (a new instance serves).
    r.rewrite(
        &[DOMAIN],
        0,
        &format!("{BASE}  mod_muc:\n    max_users: 10\n  mod_time: {{}}\n"),
    );
    let v = r.reload_ok().await;
    assert_eq!(
        v["modules"][DOMAIN]["restarted"],
        serde_json::json!(["mod_muc"]),
        "{v}"
    );
    let items = alice
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    assert!(
        xml(&items).contains("conference.localhost"),
        "{}",
        xml(&items)
    );
    let info = ask(&mut alice, "conference.localhost", "query", DISCO_INFO).await;
    assert_eq!(info.attr("type"), Some("result"), "{}", xml(&info));

    // A reload that changes nothing says so.
    let v = r.reload_ok().await;
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no host or module changed"),
        "{v}"
    );

    // A new connection sees the same as the old one.
    let mut again = Client::login(&r.srv, "alice", DOMAIN, "second").await;
    let f = server_features(&mut again, DOMAIN).await;
    assert!(
        f.iter().any(|f| f == TIME) && !f.iter().any(|f| f == VERSION),
        "{f:?}"
    );
    r.srv.stop().await;
}

/// A connected session takes its host's new instance on its next input:
/// XEP-0198, refused before `mod_stream_mgmt` is enabled, works on the same
/// stream after the reload.
#[tokio::test]
async fn a_connected_session_takes_the_new_host() {
    let r = Reloadable::start(&[DOMAIN], BASE).await;
    r.srv.add_user("alice", DOMAIN, "pw").await;
    let mut alice = raw_login(r.srv.addr, "alice", DOMAIN, "pw", "r").await;
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let refused = alice.until("</failed>").await;
    assert!(refused.contains("<failed"), "{refused}");

    r.rewrite(&[DOMAIN], 0, &format!("{BASE}  mod_stream_mgmt: {{}}\n"));
    let v = r.reload_ok().await;
    assert_eq!(
        v["modules"][DOMAIN]["started"],
        serde_json::json!(["mod_stream_mgmt"]),
        "{v}"
    );
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let enabled = alice.until("/>").await;
    assert!(enabled.contains("<enabled"), "{enabled}");
    alice
        .send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    alice.until("id='p1'").await;
    alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    alice.until("<a ").await;
    let h = alice.until("/>").await;
    assert!(h.contains("h='1'"), "the ping is counted: {h}");
    r.srv.stop().await;
}

/// A module's HTTP routes and service subdomain come and go with it.
#[tokio::test]
async fn module_http_routes_and_services_follow_reloads() {
    let r = Reloadable::start(&[DOMAIN], BASE).await;
    r.srv.add_user("alice", DOMAIN, "pw").await;
    let mut alice = Client::login(&r.srv, "alice", DOMAIN, "r").await;
    let put = async |r: &Reloadable| {
        let (status, _, body) =
            http_request(r.srv.http_addr, "PUT", "/upload/a/b/c.txt", "", b"x").await;
        (status, String::from_utf8_lossy(&body).to_string())
    };
    assert_eq!(put(&r).await.0, 404, "no upload module, no route");

    r.rewrite(&[DOMAIN], 0, &format!("{BASE}  mod_http_upload: {{}}\n"));
    r.reload_ok().await;
    let (status, body) = put(&r).await;
    assert_eq!(
        (status, body.trim()),
        (400, "invalid upload path"),
        "the module's route answers"
    );
    let info = ask(&mut alice, "upload.localhost", "query", DISCO_INFO).await;
    assert_eq!(info.attr("type"), Some("result"), "{}", xml(&info));

    r.rewrite(&[DOMAIN], 0, BASE);
    let v = r.reload_ok().await;
    assert_eq!(
        v["modules"][DOMAIN]["stopped"],
        serde_json::json!(["mod_http_upload"]),
        "{v}"
    );
    assert_eq!(put(&r).await.0, 404, "the route left with the module");
    let gone = ask(&mut alice, "upload.localhost", "query", DISCO_INFO).await;
    assert_eq!(
        condition(&gone).as_deref(),
        Some("remote-server-not-found"),
        "{}",
        xml(&gone)
    );
    r.srv.stop().await;
}

/// Hosts added serve logins; hosts removed leave the routing table and their
/// sessions end with `host-unknown`; other hosts' sessions stay.
#[tokio::test]
async fn hosts_added_and_removed() {
    let r = Reloadable::start(&[DOMAIN, DOMAIN2], &format!("{BASE}{MUC}")).await;
    r.srv.add_user("alice", DOMAIN, "pw").await;
    r.srv.add_user("bob", DOMAIN2, "pw").await;
    r.srv.add_user("carol", "new.test", "pw").await;
    let mut alice = Client::login(&r.srv, "alice", DOMAIN, "r").await;
    alice.send("<presence/>").await;
    let mut bob = Client::login(&r.srv, "bob", DOMAIN2, "r").await;
    bob.drain().await;

    // new.test is not served yet.
    let mut c = Raw::connect(r.srv.addr).await;
    c.send(&header("new.test")).await;
    let refused = c.until_closed().await;
    assert!(refused.contains("host-unknown"), "{refused}");

    // The new host has options of its own: its modules and SASL ANONYMOUS.
    r.rewrite(
        &[DOMAIN, "new.test"],
        0,
        &format!(
            "{BASE}{MUC}host_config:\n  new.test:\n    auth_method: [internal, anonymous]\n    modules:\n      mod_disco: {{}}\n      mod_ping: {{}}\n      mod_muc: {{}}\n      mod_time: {{}}\n"
        ),
    );
    let v = r.reload_ok().await;
    assert_eq!(v["hosts_added"], serde_json::json!(["new.test"]), "{v}");
    assert_eq!(v["hosts_removed"], serde_json::json!([DOMAIN2]), "{v}");
    assert_eq!(v["sessions_closed"], 1, "{v}");

    // Bob's host is gone: his stream ends with host-unknown.
    let closed = bob.raw.until_closed().await;
    assert!(
        closed.contains("<host-unknown") && closed.contains("</stream:stream>"),
        "{closed}"
    );
    // Carol logs in on the new host, and its MUC service answers.
    let mut carol = Client::login(&r.srv, "carol", "new.test", "r").await;
    let info = ask(&mut carol, "conference.new.test", "query", DISCO_INFO).await;
    assert_eq!(info.attr("type"), Some("result"), "{}", xml(&info));
    // Its own modules and authentication; localhost keeps the global ones.
    let t = ask(&mut carol, "new.test", "time", TIME).await;
    assert_eq!(t.attr("type"), Some("result"), "{}", xml(&t));
    let t = ask(&mut alice, DOMAIN, "time", TIME).await;
    assert_eq!(
        condition(&t).as_deref(),
        Some("service-unavailable"),
        "{}",
        xml(&t)
    );
    let mut c = Raw::connect(r.srv.addr).await;
    let f = c.open("new.test").await;
    assert!(f.contains("<mechanism>ANONYMOUS</mechanism>"), "{f}");
    let mut c = Raw::connect(r.srv.addr).await;
    let f = c.open(DOMAIN).await;
    assert!(!f.contains("ANONYMOUS") && f.contains("PLAIN"), "{f}");
    // The routing table follows.
    let domains = r.srv.core().routes().domains();
    assert!(domains.iter().any(|d| d == "new.test"), "{domains:?}");
    assert!(
        domains.iter().any(|d| d == "conference.new.test"),
        "{domains:?}"
    );
    assert!(!domains.iter().any(|d| d.ends_with(DOMAIN2)), "{domains:?}");
    // A stanza to the removed host goes nowhere local now.
    let to_bob = alice
        .iq(&format!(
            "<iq type='get' to='bob@{DOMAIN2}'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    assert_eq!(
        condition(&to_bob).as_deref(),
        Some("remote-server-not-found"),
        "{}",
        xml(&to_bob)
    );
    // Alice and Carol talk across hosts; Alice never reconnected.
    carol
        .send("<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
        .await;
    let m = alice
        .expect("carol's message", |e| {
            e.name() == "message" && e.attr("from") == Some("carol@new.test/r")
        })
        .await;
    assert!(xml(&m).contains("hi"), "{}", xml(&m));
    // Commands know the new host list.
    let vhosts = r.srv.core().config().hosts.clone();
    assert_eq!(vhosts, vec![DOMAIN.to_string(), "new.test".to_string()]);
    r.srv.stop().await;
}

/// A file that does not parse, an unknown module or a bad option: the
/// reload fails with a message naming the problem and nothing changes.
/// Settings that need a restart are reported and keep their running value.
#[tokio::test]
async fn bad_config_is_refused_and_restart_only_changes_are_reported() {
    let modules = format!("{BASE}  mod_time: {{}}\n");
    let r = Reloadable::start(&[DOMAIN], &modules).await;
    r.srv.add_user("alice", DOMAIN, "pw").await;
    let mut alice = Client::login(&r.srv, "alice", DOMAIN, "r").await;

    let bad = [
        ("  mod_disco: {}\n  mod_ping: [\n", "palaver.yml"),
        (
            "  mod_disco: {}\n  mod_no_such_thing: {}\n",
            "unknown module",
        ),
        (
            "  mod_disco: {}\n  mod_muc:\n    max_users: 0\n",
            "max_users",
        ),
    ];
    for (block, expect) in bad {
        r.rewrite(&[DOMAIN], 0, block);
        let (s, v) = r.reload().await;
        assert_eq!(s, 400, "{block}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(expect), "{block}: {msg}");
        assert!(msg.contains("unchanged"), "{block}: {msg}");
        // Nothing changed: mod_time still answers, no MUC service appeared.
        let t = ask(&mut alice, DOMAIN, "time", TIME).await;
        assert_eq!(t.attr("type"), Some("result"), "{}", xml(&t));
        assert!(
            !r.srv
                .core()
                .routes()
                .domains()
                .iter()
                .any(|d| d.starts_with("conference.")),
            "{block}"
        );
    }
    // Without credentials the command is refused.
    let (s, _, _) = http_request(r.srv.http_addr, "POST", "/api/reload_config", "", b"{}").await;
    assert_eq!(s, 401);

    // A listener change needs a restart: said, and the running one stays.
    r.rewrite(&[DOMAIN], 1, &modules);
    let v = r.reload_ok().await;
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("`listen` changed: this needs a restart"),
        "{v}"
    );
    let mut again = Client::login(&r.srv, "alice", DOMAIN, "r2").await;
    let t = ask(&mut again, DOMAIN, "time", TIME).await;
    assert_eq!(t.attr("type"), Some("result"), "{}", xml(&t));
    let t = ask(&mut alice, DOMAIN, "time", TIME).await;
    assert_eq!(t.attr("type"), Some("result"), "{}", xml(&t));
    r.srv.stop().await;
}

/// Access rules take effect without restarting the modules that use them:
/// in-band registration is advertised, and allowed, once the `register`
/// rule allows it.
#[tokio::test]
async fn access_rules_apply_after_a_reload() {
    let modules = |rule: &str| {
        format!("{BASE}  mod_register: {{}}\naccess_rules:\n  register:\n    {rule}: all\n")
    };
    let r = Reloadable::start(&[DOMAIN], &modules("deny")).await;
    let register = async |r: &Reloadable, user: &str| {
        let mut c = Raw::connect(r.srv.addr).await;
        let features = c.open(DOMAIN).await;
        c.send(&format!(
            "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{user}</username><password>pw</password></query></iq>"
        ))
        .await;
        let head = c.until("id='reg'").await;
        let rest = c.until(">").await;
        let tail = if rest.ends_with("/>") {
            String::new()
        } else {
            c.until("</iq>").await
        };
        (features, format!("{head}{rest}{tail}"))
    };
    let (features, answer) = register(&r, "dave").await;
    assert!(!features.contains("iq-register"), "{features}");
    assert!(
        answer.contains("forbidden") || answer.contains("not-allowed"),
        "{answer}"
    );

    r.rewrite(&[DOMAIN], 0, &modules("allow"));
    let v = r.reload_ok().await;
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no host or module changed"),
        "the rule changed, not the module: {v}"
    );
    let (features, answer) = register(&r, "dave").await;
    assert!(features.contains("iq-register"), "{features}");
    assert!(answer.contains("type='result'"), "{answer}");
    let dave = Client::login(&r.srv, "dave", DOMAIN, "r").await;
    assert_eq!(dave.jid, "dave@localhost/r");
    r.srv.stop().await;
}

/// The binary: `palaver ctl reload_config` and `SIGHUP` reload the file the
/// server was started with; a connected client stays connected throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_and_sighup_reload_the_running_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("palaver.yml");
    let write = |modules: &str| {
        let text = format!(
            "hosts: [{DOMAIN}]\nloglevel: info\ndata_dir: {d}\nlisten:\n  - port: 0\n    ip: 127.0.0.1\n    module: c2s\n    allow_plain_without_tls: true\nmodules:\n{modules}",
            d = dir.path().display()
        );
        std::fs::write(&cfg, text).expect("write config");
    };
    let cfg_s = cfg.to_str().expect("utf-8 path").to_string();
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--config", &cfg_s])
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
    };
    write("  mod_disco: {}\n  mod_ping: {}\n");
    let (ok, out) = ctl(&["user", "add", "alice@localhost", "pw"]);
    assert!(ok, "{out}");
    // Without a running server there is nothing to reload.
    let (ok, out) = ctl(&["ctl", "reload_config"]);
    assert!(!ok && out.contains("needs a running server"), "{out}");

    let served = common::process::spawn_serve(&cfg).await;
    let addr = served.c2s();
    let (mut child, mut log) = (served.child, served.log);
    let mut alice = raw_login(addr, "alice", DOMAIN, "pw", "r").await;
    let mut n = 0;
    let mut time = async |alice: &mut RawTcp| {
        n += 1;
        let id = format!("t{n}");
        alice
            .send(&format!(
                "<iq type='get' id='{id}' to='localhost'><time xmlns='{TIME}'/></iq>"
            ))
            .await;
        alice.until(&format!("id='{id}'")).await;
        alice.until("</iq>").await
    };
    assert!(time(&mut alice).await.contains("service-unavailable"));

    // `palaver ctl reload_config` after enabling mod_time.
    write("  mod_disco: {}\n  mod_ping: {}\n  mod_time: {}\n");
    let (ok, out) = ctl(&["ctl", "reload_config"]);
    assert!(ok && out.contains("started mod_time"), "{out}");
    let answer = time(&mut alice).await;
    assert!(answer.contains("<utc>"), "{answer}");

    // SIGHUP after disabling it again.
    write("  mod_disco: {}\n  mod_ping: {}\n");
    let pid = child.id().expect("pid") as i32;
    // SAFETY: kill(2) with our own child's PID and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let logged = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = log.recv().await {
            // (The ctl reload's line came before.)
            if line.contains("configuration reloaded") && !line.contains("started mod_time") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the server logged the reload");
    assert!(logged.contains("stopped mod_time"), "{logged}");
    assert!(time(&mut alice).await.contains("service-unavailable"));

    // A broken file: an error and a non-zero exit; the server goes on as it was.
    write("  mod_disco: {}\n  mod_ping: {}\n  mod_time: {max: 1}\n");
    let (ok, out) = ctl(&["ctl", "reload_config"]);
    assert!(
        !ok && out.contains("mod_time") && out.contains("unchanged"),
        "{out}"
    );
    assert!(time(&mut alice).await.contains("service-unavailable"));
    alice
        .send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    alice.until("id='p1'").await;

    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = tokio::time::timeout(TIMEOUT, child.wait()).await;
}
