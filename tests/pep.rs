//! XEP-0163 PEP on accounts, with XEP-0115 `+notify` filtering, and the
//! XEP-0402 / XEP-0048 bookmarks bridge (XEP-0411), over real sockets.

#[path = "support/stanza_client.rs"]
mod client;
mod common;

use client::*;
use common::*;

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_private: {}\n  mod_pubsub: {}\n";
const AVATAR: &str = "urn:xmpp:avatar:metadata";
const OMEMO: &str = "eu.siacs.conversations.axolotl.devicelist";
const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";

fn options(fields: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
    );
    for (k, v) in fields {
        s.push_str(&format!("<field var='{k}'><value>{v}</value></field>"));
    }
    s.push_str("</x></publish-options>");
    s
}

fn avatar(id: &str) -> String {
    format!(
        "<iq type='set' id='{{id}}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{AVATAR}'><item id='{id}'><metadata xmlns='{AVATAR}'><info bytes='12' id='{id}' height='64' width='64' type='image/png'/></metadata></item></publish></pubsub></iq>"
    )
}

#[tokio::test]
async fn avatar_reaches_only_contacts_with_notify_and_last_item_on_presence() {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "carol", "eve"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    befriend(&srv, "alice", "bob").await;
    befriend(&srv, "alice", "carol").await;
    let mut a = Client::login(&srv, "alice", "r").await;
    let mut b = Client::login_silent(&srv, "bob", "r").await;
    b.available_with_notify(&[AVATAR]).await;
    let mut c = Client::login(&srv, "carol", "r").await; // a contact without +notify
    let mut e = Client::login_silent(&srv, "eve", "r").await; // +notify, not a contact
    e.available_with_notify(&[AVATAR]).await;
    b.sync().await;
    e.sync().await;

    // The account advertises PEP.
    let info = a
        .ok(&format!(
            "<iq type='get' id='{{id}}' to='alice@localhost'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    let s = String::from(&info);
    assert!(
        s.contains("pep") && s.contains("pubsub#publish-options"),
        "{s}"
    );

    // Auto-create on publish; the notification goes to bob only.
    a.ok(&avatar("aaa")).await;
    let m = b.event("alice@localhost", AVATAR).await;
    assert!(
        String::from(&m).contains("id=\"aaa\"") || String::from(&m).contains("id='aaa'"),
        "{m:?}"
    );
    assert_eq!(m.attr("to"), Some("bob@localhost/r"));
    c.sync().await;
    e.sync().await;
    a.sync().await;
    let is_event =
        |m: &minidom::Element| m.name() == "message" && m.get_child("event", NS_EVENT).is_some();
    assert!(!c.queued(is_event), "carol has no +notify");
    assert!(!e.queued(is_event), "eve is not a contact");
    assert!(!a.queued(is_event), "alice's session asked for nothing");

    // Presence access model: eve may not read, bob may.
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{AVATAR}'/></pubsub></iq>"),
        "not-authorized",
        Some("presence-subscription-required"),
    )
    .await;
    b.ok(&format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{AVATAR}'/></pubsub></iq>")).await;
    // Only the owner publishes to its PEP service.
    b.fails(
        &format!("<iq type='set' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><publish node='{AVATAR}'><item id='x'><metadata xmlns='{AVATAR}'/></item></publish></pubsub></iq>"),
        "forbidden",
        None,
    )
    .await;

    // A new session of bob gets the last item on its initial presence.
    let mut b2 = Client::login_silent(&srv, "bob", "r2").await;
    b2.available_with_notify(&[AVATAR]).await;
    let m = b2.event("alice@localhost", AVATAR).await;
    assert!(String::from(&m).contains("aaa"), "{m:?}");
    assert_eq!(m.attr("to"), Some("bob@localhost/r2"));
    srv.stop().await;
}

#[tokio::test]
async fn omemo_device_list_with_publish_options_read_by_a_contact() {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "eve"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    befriend(&srv, "alice", "bob").await;
    let mut a = Client::login(&srv, "alice", "r").await;
    let mut b = Client::login_silent(&srv, "bob", "r").await;
    b.available_with_notify(&[OMEMO]).await;
    b.sync().await;
    let devicelist = |id: &str, opts: &str| {
        format!(
            "<iq type='set' id='{{id}}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{OMEMO}'><item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='{id}'/></list></item></publish>{opts}</pubsub></iq>"
        )
    };
    let open = options(&[("pubsub#access_model", "open")]);
    a.ok(&devicelist("1234", &open)).await;
    let m = b.event("alice@localhost", OMEMO).await;
    assert!(String::from(&m).contains("1234"), "{m:?}");
    // The contact reads it; with access model open, so does a stranger.
    let r = b
        .ok(&format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{OMEMO}' max_items='1'/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("1234"), "{r:?}");
    let mut e = Client::login(&srv, "eve", "r").await;
    e.ok(&format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{OMEMO}'/></pubsub></iq>")).await;
    // Same options again: fine, and the item is replaced (max_items 1).
    a.ok(&devicelist("5678", &open)).await;
    b.event("alice@localhost", OMEMO).await;
    let r = e
        .ok(&format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{OMEMO}'/></pubsub></iq>"))
        .await;
    let s = String::from(&r);
    assert!(s.contains("5678") && !s.contains("1234"), "{s}");
    // Options that contradict the node: precondition-not-met, nothing stored.
    a.fails(
        &devicelist("9999", &options(&[("pubsub#access_model", "whitelist")])),
        "conflict",
        Some("precondition-not-met"),
    )
    .await;
    // Malformed options: bad-request.
    a.fails(
        &devicelist(
            "9999",
            "<publish-options><x xmlns='jabber:x:data' type='bogus'/></publish-options>",
        ),
        "bad-request",
        None,
    )
    .await;
    // Bundles on their own node, configured by the owner form.
    a.ok(&format!(
        "<iq type='set' id='{{id}}'><pubsub xmlns='{NS_PUBSUB}'><publish node='eu.siacs.conversations.axolotl.bundles:5678'><item id='current'><bundle xmlns='eu.siacs.conversations.axolotl'/></item></publish>{open}</pubsub></iq>"
    ))
    .await;
    let r = a
        .ok(&format!("<iq type='get' id='{{id}}'><pubsub xmlns='{NS_OWNER}'><configure node='eu.siacs.conversations.axolotl.bundles:5678'/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("open"), "{r:?}");
    drop((a, b, e));

    // The device list survives a restart; removing alice removes her PEP data.
    let srv = restart(srv, MODULES).await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let r = b
        .ok(&format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{OMEMO}'/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("5678"), "{r:?}");
    // On pubsub.localhost: a node alice alone owns, and her subscription to bob's.
    let mut a = Client::login(&srv, "alice", "r").await;
    let svc = "pubsub.localhost";
    a.ok(&format!("<iq type='set' id='{{id}}' to='{svc}'><pubsub xmlns='{NS_PUBSUB}'><create node='alices'/></pubsub></iq>")).await;
    b.ok(&format!("<iq type='set' id='{{id}}' to='{svc}'><pubsub xmlns='{NS_PUBSUB}'><create node='bobs'/></pubsub></iq>")).await;
    a.ok(&format!("<iq type='set' id='{{id}}' to='{svc}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='bobs' jid='alice@localhost/r'/></pubsub></iq>")).await;
    drop(a);
    srv.core()
        .cx_of(DOMAIN)
        .expect("host")
        .remove_user(DOMAIN, "alice")
        .await
        .expect("remove");
    let db = palaver_modules::pubsub::store::PubsubSql::new(srv.core().storage().db.clone());
    assert!(db.nodes("alice@localhost").await.expect("nodes").is_empty());
    assert_eq!(db.node(svc, "alices").await.expect("node"), None);
    assert!(
        db.subscriptions(svc, "bobs")
            .await
            .expect("subs")
            .is_empty()
    );
    assert_eq!(
        db.affiliation(svc, "bobs", "bob@localhost")
            .await
            .expect("aff"),
        "owner"
    );
    srv.stop().await;
}

#[tokio::test]
async fn bookmarks_bridge_between_pep_and_private_storage() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut a = Client::login_silent(&srv, "alice", "r").await;
    a.available_with_notify(&[BOOKMARKS]).await;
    a.sync().await;
    // A XEP-0402 client adds a room.
    let opts = options(&[
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ]);
    a.ok(&format!(
        "<iq type='set' id='{{id}}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{BOOKMARKS}'><item id='room1@conference.localhost'><conference xmlns='{BOOKMARKS}' name='Room one' autojoin='true'><nick>al</nick></conference></item></publish>{opts}</pubsub></iq>"
    ))
    .await;
    a.event("alice@localhost", BOOKMARKS).await;
    // A XEP-0048 client sees it in private storage.
    let r = a
        .ok("<iq type='get' id='{id}'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>")
        .await;
    let s = String::from(&r);
    assert!(
        s.contains("room1@conference.localhost")
            && s.contains("Room one")
            && s.contains("<nick>al</nick>"),
        "{s}"
    );
    // The XEP-0048 client replaces the list: room1 out, room2 in.
    a.ok("<iq type='set' id='{id}'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'><conference jid='room2@conference.localhost' name='Room two' autojoin='false'/><url name='site' url='https://example.org'/></storage></query></iq>").await;
    let r = a
        .ok(&format!("<iq type='get' id='{{id}}'><pubsub xmlns='{NS_PUBSUB}'><items node='{BOOKMARKS}'/></pubsub></iq>"))
        .await;
    let s = String::from(&r);
    assert!(
        s.contains("room2@conference.localhost") && !s.contains("room1@"),
        "{s}"
    );
    // The XEP-0402 session was told about both changes.
    let m = a
        .expect("retraction of room1", |m| {
            m.name() == "message" && String::from(m).contains("retract")
        })
        .await;
    assert!(String::from(&m).contains("room1@conference.localhost"));
    // The bookmarks node is private: nobody else reads it.
    srv.add_user("eve", DOMAIN, "pw").await;
    let mut e = Client::login(&srv, "eve", "r").await;
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{BOOKMARKS}'/></pubsub></iq>"),
        "not-allowed",
        Some("closed-node"),
    )
    .await;
    // XEP-0402 retract: private storage follows, the URL bookmark stays.
    a.ok(&format!("<iq type='set' id='{{id}}'><pubsub xmlns='{NS_PUBSUB}'><retract node='{BOOKMARKS}' notify='true'><item id='room2@conference.localhost'/></retract></pubsub></iq>")).await;
    let r = a
        .ok("<iq type='get' id='{id}'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>")
        .await;
    let s = String::from(&r);
    assert!(
        !s.contains("room2@") && s.contains("https://example.org"),
        "{s}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn pep_nodes_in_xep0227_export_and_import() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("eve", DOMAIN, "pw").await;
    let mut a = Client::login(&srv, "alice", "r").await;
    let open = options(&[("pubsub#access_model", "open")]);
    a.ok(&format!(
        "<iq type='set' id='{{id}}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{OMEMO}'><item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='4242'/></list></item></publish>{open}</pubsub></iq>"
    ))
    .await;
    a.ok(&avatar("bbb")).await;
    let run = |command: &str, args: serde_json::Value| {
        let req = palaver_admin::Request {
            command: command.into(),
            args: args.as_object().cloned().unwrap_or_default(),
        };
        let core = srv.core().clone();
        async move { palaver_admin::execute(&core, true, &req).await }
    };
    let out = run(
        "export_piefxis_host",
        serde_json::json!({"host": DOMAIN, "file": "-"}),
    )
    .await
    .expect("export");
    let xml = out["xml"].as_str().expect("xml").to_string();
    assert!(
        xml.contains("http://jabber.org/protocol/pubsub#owner")
            && xml.contains("4242")
            && xml.contains("bbb"),
        "{xml}"
    );
    assert!(
        out["message"].as_str().unwrap_or("").contains("PEP"),
        "{out}"
    );
    // Lose the PEP data, then import the file over the account.
    let db = palaver_modules::pubsub::store::PubsubSql::new(srv.core().storage().db.clone());
    db.delete_service("alice@localhost").await.expect("delete");
    let path = srv.dir.path().join("export.xml");
    std::fs::write(&path, &xml).expect("write");
    run(
        "import_piefxis",
        serde_json::json!({"file": path.display().to_string(), "force": true}),
    )
    .await
    .expect("import");
    assert_eq!(
        db.nodes("alice@localhost").await.expect("nodes"),
        [OMEMO.to_string(), AVATAR.to_string()]
    );
    // The node's configuration came back too: a stranger reads the open device list.
    let mut e = Client::login(&srv, "eve", "r").await;
    let r = e
        .ok(&format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{OMEMO}'/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("4242"), "{r:?}");
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{AVATAR}'/></pubsub></iq>"),
        "not-authorized",
        None,
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn a_contact_on_another_virtual_host_is_notified() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("alice", DOMAIN, "pw").await;
    srv.add_user("bob", DOMAIN2, "pw").await;
    use palaver_storage::im::{RosterItem, Subscription};
    for (user, host, contact) in [
        ("alice", DOMAIN, format!("bob@{DOMAIN2}")),
        ("bob", DOMAIN2, format!("alice@{DOMAIN}")),
    ] {
        let mut it = RosterItem::new(&contact);
        it.subscription = Subscription::Both;
        srv.core()
            .storage()
            .roster
            .put_roster_item(host, user, &it)
            .await
            .expect("roster");
    }
    let mut a = Client::login(&srv, "alice", "r").await;
    a.ok(&avatar("ccc")).await;
    // bob's first session: the last item on its presence.
    let mut b = Client::login_at(&srv, "bob", DOMAIN2, "r").await;
    b.available_with_notify(&[AVATAR]).await;
    let m = b.event("alice@localhost", AVATAR).await;
    assert!(String::from(&m).contains("ccc"), "{m:?}");
    // A new item reaches him too.
    a.ok(&avatar("ddd")).await;
    let m = b.event("alice@localhost", AVATAR).await;
    assert!(String::from(&m).contains("ddd"), "{m:?}");
    assert_eq!(m.attr("to"), Some(format!("bob@{DOMAIN2}/r").as_str()));
    srv.stop().await;
}

fn publish_to(node: &str, id: &str, opts: &str) -> String {
    format!(
        "<iq type='set' id='{{id}}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item id='{id}'><entry xmlns='urn:test'>{id}</entry></item></publish>{opts}</pubsub></iq>"
    )
}

fn item_nodes(r: &minidom::Element) -> Vec<String> {
    r.get_child("query", DISCO_ITEMS)
        .map(|q| {
            q.children()
                .filter_map(|i| i.attr("node"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const OPEN: &str = "urn:test:open";
const DIARY: &str = "urn:test:diary";
const FRIENDS: &str = "urn:test:friends";

fn authorization(node: &str, jid: &str, allow: bool) -> String {
    format!(
        "<message to='alice@localhost' id='ans'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_authorization</value></field><field var='pubsub#node'><value>{node}</value></field><field var='pubsub#subscriber_jid'><value>{jid}</value></field><field var='pubsub#allow'><value>{allow}</value></field></x></message>"
    )
}

#[tokio::test]
async fn pep_nodes_in_disco_items_and_authorize_access_model() {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "carol", "eve"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    befriend(&srv, "alice", "bob").await;
    let mut a = Client::login(&srv, "alice", "r").await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let mut c = Client::login(&srv, "carol", "r").await;
    let mut e = Client::login(&srv, "eve", "r").await;
    a.ok(&publish_to(
        OPEN,
        "o1",
        &options(&[("pubsub#access_model", "open")]),
    ))
    .await;
    a.ok(&publish_to(FRIENDS, "f1", "")).await; // presence access (the PEP default)
    a.ok(&publish_to(
        DIARY,
        "d1",
        &options(&[("pubsub#access_model", "authorize")]),
    ))
    .await;

    // disco#items of the account lists the nodes each requester may see.
    let items = |_who: &str| {
        format!(
            "<iq type='get' id='{{id}}' to='alice@localhost'><query xmlns='{DISCO_ITEMS}'/></iq>"
        )
    };
    let mine = item_nodes(&a.ok(&items("a")).await);
    assert!(
        mine.contains(&OPEN.to_string())
            && mine.contains(&FRIENDS.to_string())
            && mine.contains(&DIARY.to_string()),
        "{mine:?}"
    );
    let bobs = item_nodes(&b.ok(&items("b")).await);
    assert!(
        bobs.contains(&OPEN.to_string())
            && bobs.contains(&FRIENDS.to_string())
            && !bobs.contains(&DIARY.to_string()),
        "{bobs:?}"
    );
    let eves = item_nodes(&e.ok(&items("e")).await);
    assert_eq!(eves, [OPEN.to_string()]);
    let r = e.ok(&items("e")).await;
    let item = child(&r, &[("query", DISCO_ITEMS), ("item", DISCO_ITEMS)]).expect("item");
    assert_eq!(item.attr("jid"), Some("alice@localhost"));
    // A node's disco#info on the account.
    let info = e
        .ok(&format!(
            "<iq type='get' id='{{id}}' to='alice@localhost'><query xmlns='{DISCO_INFO}' node='{OPEN}'/></iq>"
        ))
        .await;
    let s = String::from(&info);
    assert!(s.contains("leaf") && s.contains("pubsub#meta-data"), "{s}");
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='alice@localhost'><query xmlns='{DISCO_INFO}' node='{FRIENDS}'/></iq>"),
        "not-authorized",
        None,
    )
    .await;
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='alice@localhost'><query xmlns='{DISCO_INFO}' node='urn:test:none'/></iq>"),
        "item-not-found",
        None,
    )
    .await;

    // Authorize: eve's request is pending and goes to alice as a form.
    let sub = e
        .ok(&format!("<iq type='set' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='{DIARY}' jid='eve@localhost'/></pubsub></iq>"))
        .await;
    assert!(String::from(&sub).contains("pending"), "{sub:?}");
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{DIARY}'/></pubsub></iq>"),
        "not-authorized",
        Some("not-subscribed"),
    )
    .await;
    let ask = a
        .expect("authorization request", |m| {
            m.name() == "message" && String::from(m).contains("pubsub#subscribe_authorization")
        })
        .await;
    let s = String::from(&ask);
    assert!(
        ask.attr("from") == Some("alice@localhost")
            && s.contains("eve@localhost")
            && s.contains(DIARY)
            && s.contains("pubsub#subid"),
        "{s}"
    );
    // Someone else answering in alice's name is not taken as her answer:
    // the message simply reaches alice.
    b.send(&authorization(DIARY, "eve@localhost", true)).await;
    a.expect("bob's message", |m| {
        m.name() == "message" && m.attr("from") == Some("bob@localhost/r")
    })
    .await;
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{DIARY}'/></pubsub></iq>"),
        "not-authorized",
        None,
    )
    .await;
    // Alice approves: eve is told and may read and see the node.
    a.send(&authorization(DIARY, "eve@localhost", true)).await;
    let m = e
        .expect("subscription approved", |m| {
            m.name() == "message" && String::from(m).contains("subscribed")
        })
        .await;
    assert_eq!(m.attr("from"), Some("alice@localhost"));
    e.ok(&format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{DIARY}'/></pubsub></iq>")).await;
    let eves = item_nodes(&e.ok(&items("e")).await);
    assert!(eves.contains(&DIARY.to_string()), "{eves:?}");
    a.ok(&publish_to(DIARY, "d2", "")).await;
    let ev = e.event("alice@localhost", DIARY).await;
    assert!(String::from(&ev).contains("d2"), "{ev:?}");

    // Carol asks; alice denies.
    let sub = c
        .ok(&format!("<iq type='set' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='{DIARY}' jid='carol@localhost'/></pubsub></iq>"))
        .await;
    assert!(String::from(&sub).contains("pending"), "{sub:?}");
    a.expect("carol's request", |m| {
        m.name() == "message" && String::from(m).contains("carol@localhost")
    })
    .await;
    a.send(&authorization(DIARY, "carol@localhost", false))
        .await;
    let m = c
        .expect("subscription denied", |m| {
            m.name() == "message" && String::from(m).contains("subscription")
        })
        .await;
    assert!(
        String::from(&m).contains("'none'") || String::from(&m).contains("\"none\""),
        "{m:?}"
    );
    c.fails(
        &format!("<iq type='get' id='{{id}}' to='alice@localhost'><pubsub xmlns='{NS_PUBSUB}'><items node='{DIARY}'/></pubsub></iq>"),
        "not-authorized",
        None,
    )
    .await;
    // An answer about a request that is not pending is refused.
    a.send(&authorization(DIARY, "carol@localhost", true)).await;
    let err = a
        .expect("error", |m| {
            m.name() == "message" && m.attr("type") == Some("error")
        })
        .await;
    assert!(String::from(&err).contains("unexpected-request"), "{err:?}");
    srv.stop().await;
}
