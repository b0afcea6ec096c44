//! XEP-0357 Push Notifications, to an app server written here as a module
//! serving `push.localhost` through the routing table: a notification when
//! the account's session is detached (or it is offline), none while it is
//! online, one when a session detaches with an unacknowledged message, and
//! an app server error removing the registration.
mod common;
use common::*;
use std::sync::Mutex;
use std::time::Duration;

/// The app server: records every notification, with what the app servers
/// of Conversations (p2) and Monal (`mod_push_appserver`) would find wrong
/// in it; answers nodes named `gone…` with an error (the device is
/// unknown), `busy…` with a `wait` error (try later), everything else with
/// a result.
mod app {
    use super::*;
    use minidom::Element;
    use palaver_proto::ns::CLIENT;
    use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
    use palaver_proto::writer::write_element;
    use palaver_server::{HostSetup, Module, ModuleCx, NoOptions};
    use std::collections::BTreeMap;

    /// One notification as received.
    #[derive(Clone, Debug)]
    pub struct Note {
        pub node: String,
        pub text: String,
        /// The summary form's fields (`urn:xmpp:push:summary`).
        pub summary: BTreeMap<String, String>,
        /// The publish-options fields.
        pub options: BTreeMap<String, String>,
        /// What p2 or Monal's app server would refuse.
        pub problems: Vec<String>,
    }

    pub static GOT: Mutex<Vec<Note>> = Mutex::new(Vec::new());
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

    fn form_fields(x: &Element) -> BTreeMap<String, String> {
        x.children()
            .filter(|f| f.name() == "field")
            .filter_map(|f| {
                let var = f.attr("var")?.to_string();
                let v = f
                    .get_child("value", palaver_proto::ns::DATA_FORMS)
                    .map(|v| v.text())
                    .unwrap_or_default();
                Some((var, v))
            })
            .collect()
    }

    /// Read a publish the way the two app servers do.
    fn read(st: &Stanza) -> Note {
        const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
        const XDATA: &str = palaver_proto::ns::DATA_FORMS;
        let mut problems = Vec::new();
        let mut text = String::new();
        write_element(&mut text, &st.to_element(), "");
        // p2: the sender must be a bare JID (it looks the node up by its domain).
        if st.from.resource().is_some() {
            problems.push(format!("from {} is not bare", st.from));
        }
        let pubsub = st.el().get_child("pubsub", PUBSUB);
        let publish = pubsub.and_then(|p| p.get_child("publish", PUBSUB));
        let node = publish
            .and_then(|p| p.attr("node"))
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            problems.push("no publish node".into());
        }
        // Monal: item/notification/x must be there and read as the summary form.
        let summary_x = publish
            .and_then(|p| p.get_child("item", PUBSUB))
            .and_then(|i| i.get_child("notification", "urn:xmpp:push:0"))
            .and_then(|n| n.get_child("x", XDATA));
        let summary = summary_x.map(form_fields).unwrap_or_default();
        match summary_x {
            None => problems.push("no summary form".into()),
            Some(x) if x.attr("type") != Some("submit") => {
                problems.push("summary form is not a submit form".into())
            }
            Some(_) => {}
        }
        if summary.get("FORM_TYPE").map(String::as_str) != Some("urn:xmpp:push:summary") {
            problems.push("summary FORM_TYPE".into());
        }
        for k in summary.keys() {
            if ![
                "FORM_TYPE",
                "message-count",
                "pending-subscription-count",
                "last-message-sender",
                "last-message-body",
            ]
            .contains(&k.as_str())
            {
                problems.push(format!("unknown summary field {k}"));
            }
        }
        if let Some(n) = summary.get("message-count")
            && n.parse::<u32>().is_err()
        {
            problems.push(format!("message-count {n:?}"));
        }
        if let Some(j) = summary.get("last-message-sender")
            && jid::BareJid::new(j).is_err()
        {
            problems.push(format!("last-message-sender {j:?} is not a bare JID"));
        }
        // Both: publish-options with the secret.
        let options_x = pubsub
            .and_then(|p| p.get_child("publish-options", PUBSUB))
            .and_then(|o| o.get_child("x", XDATA));
        let options = options_x.map(form_fields).unwrap_or_default();
        if options.get("FORM_TYPE").map(String::as_str)
            != Some("http://jabber.org/protocol/pubsub#publish-options")
        {
            problems.push("publish-options FORM_TYPE".into());
        }
        if options.get("secret").is_none_or(|s| s.is_empty()) {
            problems.push("no secret".into());
        }
        Note {
            node,
            text,
            summary,
            options,
            problems,
        }
    }

    fn answer(cx: &ModuleCx, st: Stanza) {
        if st.kind != StanzaKind::Iq || st.type_attr() != Some("set") {
            return;
        }
        let note = read(&st);
        let node = note.node.clone();
        if let Ok(mut g) = GOT.lock() {
            g.push(note);
        }
        NEW.notify_waiters();
        let Some(me) = st.to.clone() else { return };
        let mut el = Element::bare("iq", CLIENT);
        if let Some(id) = st.id() {
            set_attr(&mut el, "id", id.to_string());
        }
        let err = if node.starts_with("gone") {
            Some(palaver_proto::error::Condition::ItemNotFound)
        } else if node.starts_with("busy") {
            Some(palaver_proto::error::Condition::ResourceConstraint)
        } else {
            None
        };
        match err {
            Some(cond) => {
                set_attr(&mut el, "type", "error");
                el.append_child(palaver_proto::error::StanzaError::new(cond).to_element(CLIENT));
            }
            None => set_attr(&mut el, "type", "result"),
        }
        cx.route(Stanza::new(StanzaKind::Iq, me, Some(st.from.clone()), el));
    }
}

/// The notifications to the given nodes (tests run side by side, each
/// with its own nodes).
fn got(nodes: &[&str]) -> Vec<app::Note> {
    app::GOT
        .lock()
        .map(|g| {
            g.iter()
                .filter(|n| nodes.contains(&n.node.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the app server has `n` notifications for `nodes`.
async fn wait_for(nodes: &[&str], n: usize) -> Vec<app::Note> {
    let r = tokio::time::timeout(TIMEOUT, async {
        loop {
            let notified = app::NEW.notified();
            let g = got(nodes);
            if g.len() >= n {
                return g;
            }
            notified.await;
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("only {:?}", got(nodes)))
}

async fn start(push_options: &str) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = config_text(
        dir.path(),
        "",
        &format!(
            "modules:\n  mod_disco: {{}}\n  mod_offline: {{}}\n  mod_stream_mgmt: {{resume_timeout: 60}}\n  mod_push: {push_options}\n  mod_test_app_server: {{}}\n"
        ),
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
    let srv = start("{include_body: true, include_sender: true}").await;
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
    assert!(got(&["n1"]).is_empty(), "{:?}", got(&["n1"]));

    // The phone loses its connection: the session waits, detached.
    drop(alice);
    let full: jid::FullJid = "alice@localhost/phone".parse().expect("jid");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !srv.core().sessions().get(&full).is_some_and(|h| h.detached) {
        assert!(tokio::time::Instant::now() < deadline, "never detached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The phone never acknowledged the message it got while online: it
    // may not have reached the device, so losing the connection notifies
    // (ejabberd's session-pending notification).
    let g = wait_for(&["n1"], 1).await;
    assert!(g[0].problems.is_empty(), "{:?}", g[0]);
    assert_eq!(g[0].summary["message-count"], "1", "{:?}", g[0]);
    assert_eq!(g[0].summary["last-message-body"], "online", "{:?}", g[0]);
    // A message while detached.
    bob.send("<message to='alice@localhost' type='chat' id='m2'><body>wake up</body></message>")
        .await;
    let g = wait_for(&["n1"], 2).await;
    assert!(g[1].problems.is_empty(), "{:?}", g[1]);
    let n = &g[1].text;
    assert!(
        n.contains("from='alice@localhost'")
            && n.contains("to='push.localhost'")
            && n.contains("<publish node='n1'>")
            && n.contains("<notification xmlns='urn:xmpp:push:0'>")
            && n.contains("<value>urn:xmpp:push:summary</value>")
            && n.contains("var='message-count'><value>2</value>")
            && n.contains("var='last-message-sender'><value>bob@localhost</value>")
            && n.contains("var='last-message-body'><value>wake up</value>")
            && n.contains("<publish-options>")
            && n.contains("<field var='secret'><value>s3cr3t</value>"),
        "{n}"
    );
    // A second one counts up.
    bob.send("<message to='alice@localhost' type='chat' id='m3'><body>again</body></message>")
        .await;
    let g = wait_for(&["n1"], 3).await;
    assert_eq!(g[2].summary["message-count"], "3", "{:?}", g[2]);
    // include_body: true and an OMEMO message without a body text.
    bob.send("<message to='alice@localhost' type='chat' id='m3e'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/><payload>AAAA</payload></encrypted></message>")
        .await;
    let g = wait_for(&["n1"], 4).await;
    assert_eq!(g[3].summary["message-count"], "4", "{:?}", g[3]);
    assert_eq!(
        g[3].summary["last-message-body"], "(encrypted)",
        "{:?}",
        g[3]
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
    let g = wait_for(&["gone"], 1).await;
    assert!(
        g[0].text.contains("<publish node='gone'>") && g[0].text.contains("to='push.localhost'"),
        "{:?}",
        g[0]
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
    bob.until("h='6'/>").await;
    assert_eq!(got(&["n1", "gone"]).len(), 5, "{:?}", got(&["n1", "gone"]));

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

/// Log `user` in as `phone` with resumable stream management and the given
/// push registrations, then lose the connection: the session waits,
/// detached.
async fn detached_with(srv: &TestServer, user: &str, enables: &[String]) {
    let mut c = raw_login(srv.addr, user, DOMAIN, "pw", "phone").await;
    c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    c.until("/>").await;
    for (i, e) in enables.iter().enumerate() {
        c.send(&format!(
            "<iq type='set' id='en{i}'><enable xmlns='urn:xmpp:push:0' jid='push.localhost' {e}</enable></iq>"
        ))
        .await;
        let r = c.until(&format!("id='en{i}'")).await + &c.until(">").await;
        assert!(r.contains("type='result'"), "{r}");
    }
    c.send("<presence/>").await;
    c.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    c.until("id='sync'").await;
    drop(c);
    let full: jid::FullJid = format!("{user}@localhost/phone").parse().expect("jid");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !srv.core().sessions().get(&full).is_some_and(|h| h.detached) {
        assert!(tokio::time::Instant::now() < deadline, "never detached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publish-options as Conversations (p2: `secret`, and an `endpoint`) and
/// Monal (`secret`) send them.
fn options(fields: &[(&str, &str)]) -> String {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
    );
    for (k, v) in fields {
        x.push_str(&format!("<field var='{k}'><value>{v}</value></field>"));
    }
    x + "</x>"
}

const PROPOSE: &str = "<propose xmlns='urn:xmpp:jingle-message:0' id='call1'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>";

/// ejabberd's defaults (`notify_on: all`, `include_sender: false`,
/// `include_body: "New message"`), read by app servers as Conversations'
/// p2 and Monal's read them; a `wait` error keeps the registration.
#[tokio::test]
async fn ejabberd_defaults_and_app_server_conventions() {
    let srv = start("{}").await;
    for u in ["dave", "bob"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    bob.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    bob.until("/>").await;
    let conv = format!(
        "node='conv'>{}",
        options(&[
            ("secret", "c0nv-s3cret"),
            ("endpoint", "https://push.example/up/abc")
        ])
    );
    let monal = format!("node='monal'>{}", options(&[("secret", "m0nal")]));
    let busy = format!("node='busy'>{}", options(&[("secret", "b")]));
    let gone = format!("node='gone-dave'>{}", options(&[("secret", "g")]));
    detached_with(&srv, "dave", &[conv, monal, busy, gone]).await;
    let nodes = ["conv", "monal", "busy"];

    // A message with a body: one notification per registration, each
    // readable by both app servers, the fixed text instead of the body
    // (p2's high-priority signal), no sender.
    bob.send(
        "<message to='dave@localhost' type='chat' id='m1'><body>secret plans</body></message>",
    )
    .await;
    let g = wait_for(&["conv", "monal", "busy", "gone-dave"], 4).await;
    for n in &g {
        assert!(n.problems.is_empty(), "{n:?}");
        assert_eq!(n.summary["message-count"], "1", "{n:?}");
        assert_eq!(n.summary["last-message-body"], "New message", "{n:?}");
        assert!(!n.summary.contains_key("last-message-sender"), "{n:?}");
        assert!(!n.text.contains("secret plans"), "{n:?}");
        assert!(n.text.contains("from='dave@localhost'"), "{n:?}");
    }
    let c = g.iter().find(|n| n.node == "conv").expect("conv");
    assert_eq!(c.options["secret"], "c0nv-s3cret");
    assert_eq!(c.options["endpoint"], "https://push.example/up/abc");
    let m = g.iter().find(|n| n.node == "monal").expect("monal");
    assert_eq!(m.options["secret"], "m0nal");
    // `gone-dave` answered item-not-found: removed. `busy` answered with
    // a wait error (published before it, answered before it): kept.
    let store = palaver_modules::push::store::PushSql::new(srv.core().storage().db.clone());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while store
        .list(DOMAIN, "dave")
        .await
        .expect("list")
        .iter()
        .any(|(_, node, _)| node == "gone-dave")
    {
        assert!(tokio::time::Instant::now() < deadline, "gone kept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left: Vec<String> = store
        .list(DOMAIN, "dave")
        .await
        .expect("list")
        .into_iter()
        .map(|(_, node, _)| node)
        .collect();
    assert_eq!(left, ["busy", "conv", "monal"]);

    // notify_on: all — a call proposal without a body wakes the phone
    // (no body field then); a presence broadcast does not.
    bob.send(&format!(
        "<message to='dave@localhost/phone' id='c1'>{PROPOSE}</message>"
    ))
    .await;
    let g = wait_for(&nodes, 6).await;
    assert_eq!(g.len(), 6, "{g:?}");
    for n in &g[3..] {
        assert!(n.problems.is_empty(), "{n:?}");
        assert_eq!(n.summary["message-count"], "2", "{n:?}");
        assert!(!n.summary.contains_key("last-message-body"), "{n:?}");
    }
    bob.send("<presence to='dave@localhost/phone'/>").await;
    bob.send("<message to='dave@localhost' type='chat' id='m2'><body>x</body></message>")
        .await;
    let g = wait_for(&nodes, 9).await;
    assert_eq!(g.len(), 9, "the presence notified: {g:?}");
    for n in &g[6..] {
        assert_eq!(n.summary["message-count"], "3", "{n:?}");
    }
    srv.stop().await;
}

/// `notify_on: messages` with `include_sender: true` and `include_body:
/// false`: a bodiless message does not notify, an encrypted one does; the
/// sender is the bare JID, the body never leaves.
#[tokio::test]
async fn notify_on_messages_with_sender() {
    let srv = start("{notify_on: messages, include_sender: true, include_body: false}").await;
    for u in ["erin", "bob"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    let reg = format!("node='erin-n'>{}", options(&[("secret", "e")]));
    detached_with(&srv, "erin", &[reg]).await;
    bob.send(&format!(
        "<message to='erin@localhost/phone' id='c1'>{PROPOSE}</message>"
    ))
    .await;
    bob.send("<message to='erin@localhost' type='chat' id='m1'><body>hello</body></message>")
        .await;
    let g = wait_for(&["erin-n"], 1).await;
    let n = &g[0];
    assert!(n.problems.is_empty(), "{n:?}");
    assert_eq!(
        n.summary["message-count"], "1",
        "the call proposal did not notify: {n:?}"
    );
    assert_eq!(n.summary["last-message-sender"], "bob@localhost");
    assert!(!n.summary.contains_key("last-message-body"), "{n:?}");
    assert!(!n.text.contains("hello"), "{n:?}");
    // OMEMO without a body counts as a message.
    bob.send("<message to='erin@localhost' type='chat' id='m2'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/><payload>AAAA</payload></encrypted></message>")
        .await;
    let g = wait_for(&["erin-n"], 2).await;
    assert_eq!(g[1].summary["message-count"], "2", "{:?}", g[1]);
    assert_eq!(g[1].summary["last-message-sender"], "bob@localhost");
    srv.stop().await;
}

/// A session that detaches with an unacknowledged message does not notify
/// while another session of the account is connected (that one got the
/// message too, or will); once none is, the next message does, counting
/// from one.
#[tokio::test]
async fn no_pending_push_while_another_session_is_connected() {
    let srv = start("{include_body: true}").await;
    for u in ["frank", "bob"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    let mut bob = raw_login(srv.addr, "bob", DOMAIN, "pw", "b").await;
    let mut phone = raw_login(srv.addr, "frank", DOMAIN, "pw", "phone").await;
    phone
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    phone.until("/>").await;
    phone
        .send(&format!(
            "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='push.localhost' node='frank-n'>{}</enable></iq>",
            options(&[("secret", "f")])
        ))
        .await;
    phone.until("id='en'").await;
    phone.send("<presence/>").await;
    let mut laptop = raw_login(srv.addr, "frank", DOMAIN, "pw", "laptop").await;
    laptop.send("<presence/>").await;
    // Both get it (equal priority); the phone never acknowledges it.
    bob.send("<message to='frank@localhost' type='chat' id='m1'><body>first</body></message>")
        .await;
    phone.until("first</body>").await;
    laptop.until("first</body>").await;
    drop(phone);
    let full: jid::FullJid = "frank@localhost/phone".parse().expect("jid");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !srv.core().sessions().get(&full).is_some_and(|h| h.detached) {
        assert!(tokio::time::Instant::now() < deadline, "never detached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The laptop leaves too; the next message notifies, as the first one.
    laptop.send("</stream:stream>").await;
    laptop.until_closed().await;
    let lap: jid::FullJid = "frank@localhost/laptop".parse().expect("jid");
    while srv.core().sessions().get(&lap).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "laptop stays");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bob.send("<message to='frank@localhost' type='chat' id='m2'><body>second</body></message>")
        .await;
    let g = wait_for(&["frank-n"], 1).await;
    assert_eq!(g[0].summary["last-message-body"], "second", "{:?}", g[0]);
    assert_eq!(g[0].summary["message-count"], "1", "{:?}", g[0]);
    assert_eq!(g.len(), 1, "{g:?}");
    srv.stop().await;
}
