//! XEP-0357 Push Notifications, to an app server written here as a module
//! serving `push.localhost` through the routing table: a notification when
//! the account's session is detached (or it is offline), none while it is
//! online, and an app server error removing the registration.
mod common;
use common::*;
use std::sync::Mutex;
use std::time::Duration;

/// The app server: records every notification; answers `node='gone'` with
/// an error (the device is unknown), everything else with a result.
mod app {
    use super::*;
    use minidom::Element;
    use palaver_proto::ns::CLIENT;
    use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
    use palaver_proto::writer::write_element;
    use palaver_server::{HostSetup, Module, ModuleCx, NoOptions};

    pub static GOT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    pub static NEW: tokio::sync::Notify = tokio::sync::Notify::const_new();

    pub struct AppServer;

    impl Module for AppServer {
        const NAME: &'static str = "mod_test_app_server";
        type Options = NoOptions;
        fn start(host: &mut HostSetup, _: NoOptions) -> Result<Self, String> {
            let domain = format!("push.{}", host.host());
            host.on_service_stanza(&domain, answer);
            Ok(AppServer)
        }
    }

    fn answer(cx: &ModuleCx, st: Stanza) {
        if st.kind != StanzaKind::Iq || st.type_attr() != Some("set") {
            return;
        }
        let mut text = String::new();
        write_element(&mut text, &st.el, "");
        let gone = text.contains("node='gone'");
        if let Ok(mut g) = GOT.lock() {
            g.push(text);
        }
        NEW.notify_waiters();
        let Some(me) = st.to.clone() else { return };
        let mut el = Element::bare("iq", CLIENT);
        if let Some(id) = st.id() {
            set_attr(&mut el, "id", id.to_string());
        }
        if gone {
            set_attr(&mut el, "type", "error");
            el.append_child(
                palaver_proto::error::StanzaError::new(
                    palaver_proto::error::Condition::ItemNotFound,
                )
                .to_element(CLIENT),
            );
        } else {
            set_attr(&mut el, "type", "result");
        }
        cx.route(Stanza::new(StanzaKind::Iq, me, Some(st.from.clone()), el));
    }
}

fn got() -> Vec<String> {
    app::GOT.lock().map(|g| g.clone()).unwrap_or_default()
}

/// Wait until the app server has `n` notifications.
async fn wait_for(n: usize) -> Vec<String> {
    let r = tokio::time::timeout(TIMEOUT, async {
        loop {
            let notified = app::NEW.notified();
            let g = got();
            if g.len() >= n {
                return g;
            }
            notified.await;
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("only {:?}", got()))
}

async fn start() -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = config_text(
        dir.path(),
        "",
        "modules:\n  mod_disco: {}\n  mod_offline: {}\n  mod_stream_mgmt: {resume_timeout: 60}\n  mod_push: {include_body: true}\n  mod_test_app_server: {}\n",
    );
    let pg = if backend_is_pg() {
        palaver_storage::postgres::testdb::TestDb::create("push").await
    } else {
        None
    };
    if let Some(db) = &pg {
        text.push_str(&pg_keys(&db.url));
    }
    let config = palaver_server::Config::parse(&text).expect("config");
    let mut registry = palaver_modules::registry();
    registry.push(palaver_server::ModuleDef::of::<app::AppServer>());
    let mut server = palaver_server::Server::start(config, &registry)
        .await
        .expect("start");
    palaver_http::start(&mut server);
    TestServer {
        addr: server.c2s_addr().expect("c2s"),
        tls_addr: server.c2s_tls_addr().expect("tls"),
        http_addr: server.http_addr().expect("http"),
        server: Some(server),
        dir,
        pg,
    }
}

const ENABLE: &str = "<iq type='set' id='e1'><enable xmlns='urn:xmpp:push:0' jid='push.localhost' node='n1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s3cr3t</value></field></x></enable></iq>";

#[tokio::test]
async fn notifications_when_detached_or_offline_not_when_online() {
    let srv = start().await;
    for u in ["alice", "bob", "carol"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "phone").await;
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    bob.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    bob.until("/>").await;
    alice.send("<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(alice.until("</iq>").await.contains("urn:xmpp:push:0"));
    alice
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    alice.until("/>").await;
    alice.send(ENABLE).await;
    let r = alice.until("id='e1'").await + &alice.until(">").await;
    assert!(r.contains("type='result'/>"), "{r}");
    alice.send("<presence/>").await;

    // Online: delivered, no notification (bob's <a/> covers the hooks).
    bob.send("<message to='alice@localhost' type='chat' id='m1'><body>online</body></message>")
        .await;
    alice.until("online</body>").await;
    bob.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    bob.until("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    assert!(got().is_empty(), "{:?}", got());

    // The phone loses its connection: the session waits, detached.
    drop(alice);
    let full: jid::FullJid = "alice@localhost/phone".parse().expect("jid");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !srv.core().sessions().get(&full).is_some_and(|h| h.detached) {
        assert!(tokio::time::Instant::now() < deadline, "never detached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bob.send("<message to='alice@localhost' type='chat' id='m2'><body>wake up</body></message>")
        .await;
    let g = wait_for(1).await;
    let n = &g[0];
    assert!(
        n.contains("from='alice@localhost'")
            && n.contains("to='push.localhost'")
            && n.contains("<publish node='n1'>")
            && n.contains("<notification xmlns='urn:xmpp:push:0'>")
            && n.contains("<value>urn:xmpp:push:summary</value>")
            && n.contains("var='message-count'><value>1</value>")
            && n.contains("var='last-message-sender'><value>bob@localhost/b</value>")
            && n.contains("var='last-message-body'><value>wake up</value>")
            && n.contains("<publish-options>")
            && n.contains("<field var='secret'><value>s3cr3t</value>"),
        "{n}"
    );
    // A second one counts up.
    bob.send("<message to='alice@localhost' type='chat' id='m3'><body>again</body></message>")
        .await;
    let g = wait_for(2).await;
    assert!(
        g[1].contains("var='message-count'><value>2</value>"),
        "{}",
        g[1]
    );

    // Offline (no session at all): carol registers, logs out, gets pinged.
    let mut carol = raw_login(srv.addr, "carol", DOMAIN, "pw", "c").await;
    carol
        .send(&ENABLE.replace("node='n1'", "node='gone'"))
        .await;
    carol.until("id='e1'").await;
    carol.send("</stream:stream>").await;
    carol.until_closed().await;
    let full: jid::FullJid = "carol@localhost/c".parse().expect("jid");
    while srv.core().sessions().get(&full).is_some() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bob.send("<message to='carol@localhost' type='chat' id='m4'><body>offline</body></message>")
        .await;
    let g = wait_for(3).await;
    assert!(
        g[2].contains("<publish node='gone'>") && g[2].contains("to='push.localhost'"),
        "{}",
        g[2]
    );
    // The app server answered with an error: the registration is gone.
    let store = palaver_modules::push::store::PushSql::new(srv.core().storage().db.clone());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !store.list(DOMAIN, "carol").await.expect("list").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "registration kept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.list(DOMAIN, "alice").await.expect("list").len(), 1);
    // No registration, no notification: bob's <a/> covers the offline hooks.
    bob.send("<message to='carol@localhost' type='chat' id='m5'><body>again</body></message>")
        .await;
    bob.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    bob.until("h='5'/>").await;
    assert_eq!(got().len(), 3, "{:?}", got());

    // Disabling removes alice's registration.
    let mut alice = raw_login(srv.addr, "alice", DOMAIN, "pw", "pc").await;
    alice
        .send("<iq type='set' id='x'><disable xmlns='urn:xmpp:push:0' jid='push.localhost'/></iq>")
        .await;
    let r = alice.until("id='x'").await + &alice.until(">").await;
    assert!(r.contains("type='result'/>"), "{r}");
    assert!(store.list(DOMAIN, "alice").await.expect("list").is_empty());
    // Bad requests.
    alice
        .send("<iq type='set' id='y'><enable xmlns='urn:xmpp:push:0' jid='push.localhost'/></iq>")
        .await;
    assert!(alice.until("</iq>").await.contains("bad-request"));
    srv.stop().await;
}
