//! XEP-0060 on `pubsub.localhost`, over real sockets.

#[path = "support/stanza_client.rs"]
mod client;
mod common;

use client::*;
use common::*;

const MODULES: &str =
    "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_pubsub: {}\n";
const SVC: &str = "pubsub.localhost";

async fn users(srv: &TestServer, names: &[&str]) {
    for n in names {
        srv.add_user(n, DOMAIN, "pw").await;
    }
}

fn publish(node: &str, id: &str, text: &str) -> String {
    format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item id='{id}'><entry xmlns='urn:test'>{text}</entry></item></publish></pubsub></iq>"
    )
}

#[tokio::test]
async fn publish_notifies_two_subscribers_and_items_persist() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol"]).await;
    let mut a = Client::login(&srv, "alice", "r").await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let mut c = Client::login(&srv, "carol", "r").await;

    // The service is listed and describes itself.
    let items = a
        .ok("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    assert!(format!("{items:?}").contains(SVC), "{items:?}");
    let info = a
        .ok(&format!(
            "<iq type='get' id='{{id}}' to='{SVC}'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    let s = String::from(&info);
    assert!(
        s.contains("category=\"pubsub\"") || s.contains("category='pubsub'"),
        "{s}"
    );
    assert!(s.contains("pubsub#publish-options"), "{s}");

    a.ok(&format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='news'/></pubsub></iq>"
    ))
    .await;
    // Creating it again: conflict.
    a.fails(
        &format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='news'/></pubsub></iq>"),
        "conflict",
        None,
    )
    .await;
    for (cl, who) in [(&mut b, "bob"), (&mut c, "carol")] {
        let r = cl
            .ok(&format!(
                "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='news' jid='{who}@localhost'/></pubsub></iq>"
            ))
            .await;
        let sub =
            child(&r, &[("pubsub", NS_PUBSUB), ("subscription", NS_PUBSUB)]).expect("subscription");
        assert_eq!(sub.attr("subscription"), Some("subscribed"));
    }
    // Subscribing someone else: invalid-jid.
    b.fails(
        &format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='news' jid='carol@localhost'/></pubsub></iq>"),
        "bad-request",
        Some("invalid-jid"),
    )
    .await;

    let r = a.ok(&publish("news", "one", "hello")).await;
    let pubd = child(
        &r,
        &[
            ("pubsub", NS_PUBSUB),
            ("publish", NS_PUBSUB),
            ("item", NS_PUBSUB),
        ],
    )
    .expect("published item");
    assert_eq!(pubd.attr("id"), Some("one"));
    for cl in [&mut b, &mut c] {
        let m = cl.event(SVC, "news").await;
        let entry = child(
            &m,
            &[
                ("event", NS_EVENT),
                ("items", NS_EVENT),
                ("item", NS_EVENT),
                ("entry", "urn:test"),
            ],
        )
        .expect("payload in the notification");
        assert_eq!(entry.text(), "hello");
    }
    // A non-publisher may not publish.
    b.fails(&publish("news", "x", "spam"), "forbidden", None)
        .await;
    // Publishing to a missing node auto-creates it (alice may create nodes).
    a.ok(&publish("auto", "1", "first")).await;
    // Errors: no node, missing node.
    a.fails(
        &format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items node='nope'/></pubsub></iq>"),
        "item-not-found",
        None,
    )
    .await;
    a.fails(
        &format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items/></pubsub></iq>"),
        "bad-request",
        Some("nodeid-required"),
    )
    .await;
    // Publish-options that do not match: precondition-not-met.
    a.fails(
        &format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><publish node='news'><item id='2'><entry xmlns='urn:test'>x</entry></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options></pubsub></iq>"),
        "conflict",
        Some("precondition-not-met"),
    )
    .await;

    // Retract with notify.
    a.ok(&publish("news", "two", "second")).await;
    b.event(SVC, "news").await;
    c.event(SVC, "news").await;
    a.ok(&format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><retract node='news' notify='true'><item id='two'/></retract></pubsub></iq>"
    ))
    .await;
    let m = b.event(SVC, "news").await;
    assert!(
        child(
            &m,
            &[
                ("event", NS_EVENT),
                ("items", NS_EVENT),
                ("retract", NS_EVENT)
            ]
        )
        .is_some(),
        "{m:?}"
    );
    // carol leaves: the next item reaches bob only.
    c.ok(&format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><unsubscribe node='news' jid='carol@localhost'/></pubsub></iq>"
    ))
    .await;
    c.event(SVC, "news").await; // the retraction, sent before she left
    a.ok(&publish("news", "three", "third")).await;
    b.event(SVC, "news").await;
    c.sync().await;
    assert!(!c.queued(|e| e.name() == "message"), "carol still notified");

    // Owner: configuration form, affiliations.
    let r = a
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><configure node='news'/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("pubsub#access_model"), "{r:?}");
    b.fails(
        &format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><configure node='news'/></pubsub></iq>"),
        "forbidden",
        None,
    )
    .await;
    // Make bob a publisher: he may publish now.
    a.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><affiliations node='news'><affiliation jid='bob@localhost' affiliation='publisher'/></affiliations></pubsub></iq>")).await;
    b.ok(&publish("news", "four", "by bob")).await;
    // Outcast carol may not read.
    a.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><affiliations node='news'><affiliation jid='carol@localhost' affiliation='outcast'/></affiliations></pubsub></iq>")).await;
    c.fails(
        &format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items node='news'/></pubsub></iq>"),
        "forbidden",
        None,
    )
    .await;
    drop((a, b, c));

    // Items, configuration and affiliations survive a restart.
    let srv = restart(srv, MODULES).await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let r = b
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items node='news' max_items='2'/></pubsub></iq>"))
        .await;
    let items: Vec<String> = child(&r, &[("pubsub", NS_PUBSUB), ("items", NS_PUBSUB)])
        .expect("items")
        .children()
        .filter_map(|i| i.attr("id").map(str::to_string))
        .collect();
    assert_eq!(items, vec!["three".to_string(), "four".to_string()]);
    b.ok(&publish("news", "five", "still a publisher")).await;
    b.event(SVC, "news").await; // bob is a subscriber too
    // Purge and delete by the owner, with notifications.
    let mut a = Client::login(&srv, "alice", "r").await;
    a.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><delete node='news'/></pubsub></iq>")).await;
    let m = b.event(SVC, "news").await;
    assert!(
        child(&m, &[("event", NS_EVENT), ("delete", NS_EVENT)]).is_some(),
        "{m:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn presence_access_model_refuses_a_non_contact() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "eve"]).await;
    befriend(&srv, "alice", "bob").await;
    let mut a = Client::login(&srv, "alice", "r").await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let mut e = Client::login(&srv, "eve", "r").await;
    a.ok(&format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='friends'/><configure><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#access_model'><value>presence</value></field></x></configure></pubsub></iq>"
    ))
    .await;
    a.ok(&publish("friends", "1", "for friends")).await;
    b.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='friends' jid='bob@localhost'/></pubsub></iq>")).await;
    // send_last_published_item on_sub: bob gets the last item.
    b.event(SVC, "friends").await;
    e.fails(
        &format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='friends' jid='eve@localhost'/></pubsub></iq>"),
        "not-authorized",
        Some("presence-subscription-required"),
    )
    .await;
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items node='friends'/></pubsub></iq>"),
        "not-authorized",
        Some("presence-subscription-required"),
    )
    .await;
    // Whitelist: closed to bob too; authorize: pending until the owner approves.
    a.ok(&format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='club'/><configure><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>authorize</value></field></x></configure></pubsub></iq>"
    ))
    .await;
    let r = e
        .ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='club' jid='eve@localhost'/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("pending"), "{r:?}");
    let ask = a
        .expect("approval request", |m| {
            m.name() == "message" && String::from(m).contains("subscribe_authorization")
        })
        .await;
    assert!(String::from(&ask).contains("eve@localhost"));
    e.fails(
        &format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items node='club'/></pubsub></iq>"),
        "not-authorized",
        Some("not-subscribed"),
    )
    .await;
    // bob's request is approved with the owner IQ, eve's by answering the form.
    b.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='club' jid='bob@localhost'/></pubsub></iq>")).await;
    a.expect("bob's approval request", |m| {
        m.name() == "message" && String::from(m).contains("bob@localhost")
    })
    .await;
    a.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><subscriptions node='club'><subscription jid='bob@localhost' subscription='subscribed'/></subscriptions></pubsub></iq>")).await;
    let m = b
        .expect("subscription approved", |m| {
            m.name() == "message" && String::from(m).contains("subscribed")
        })
        .await;
    assert_eq!(m.attr("from"), Some(SVC));
    b.ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items node='club'/></pubsub></iq>")).await;
    let answer = |allow: &str, who: &str| {
        format!(
            "<message to='{SVC}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_authorization</value></field><field var='pubsub#node'><value>club</value></field><field var='pubsub#subscriber_jid'><value>{who}</value></field><field var='pubsub#allow'><value>{allow}</value></field></x></message>"
        )
    };
    // Only an owner may answer.
    e.send(&answer("1", "eve@localhost")).await;
    let m = e
        .expect("refusal", |m| {
            m.name() == "message" && m.attr("type") == Some("error")
        })
        .await;
    assert!(String::from(&m).contains("forbidden"), "{m:?}");
    a.send(&answer("true", "eve@localhost")).await;
    e.expect("subscription approved", |m| {
        m.name() == "message" && String::from(m).contains("subscribed")
    })
    .await;
    e.ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items node='club'/></pubsub></iq>")).await;
    srv.stop().await;
}

#[tokio::test]
async fn subscription_options_turn_delivery_off_and_on() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob"]).await;
    let mut a = Client::login(&srv, "alice", "r").await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let opts = |deliver: &str| {
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_options</value></field><field var='pubsub#deliver'><value>{deliver}</value></field></x>"
        )
    };
    a.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='quiet'/></pubsub></iq>")).await;
    // Options for a subscription that does not exist yet.
    b.fails(
        &format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><options node='quiet' jid='bob@localhost'/></pubsub></iq>"),
        "unexpected-request",
        Some("not-subscribed"),
    )
    .await;
    // Subscribe with options: delivery off.
    b.ok(&format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='quiet' jid='bob@localhost'/><options>{}</options></pubsub></iq>",
        opts("0")
    ))
    .await;
    let r = b
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><options node='quiet' jid='bob@localhost'/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("pubsub#deliver"), "{r:?}");
    a.ok(&publish("quiet", "1", "unheard")).await;
    b.sync().await;
    assert!(!b.queued(|m| m.name() == "message"), "delivery is off");
    // Unsupported options and bad values are refused.
    for (var, v) in [
        ("pubsub#subscription_depth", "1"),
        ("pubsub#show-values", "busy"),
        ("pubsub#expire", "soon"),
    ] {
        b.fails(
            &format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><options node='quiet' jid='bob@localhost'><x xmlns='jabber:x:data' type='submit'><field var='{var}'><value>{v}</value></field></x></options></pubsub></iq>"),
            "not-acceptable",
            Some("invalid-options"),
        )
        .await;
    }
    // A node sending its last item on presence: bob's next session gets it.
    a.ok(&format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='status'/><configure><x xmlns='jabber:x:data' type='submit'><field var='pubsub#send_last_published_item'><value>on_sub_and_presence</value></field></x></configure></pubsub></iq>"
    ))
    .await;
    b.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='status' jid='bob@localhost'/></pubsub></iq>")).await;
    a.ok(&publish("status", "s1", "all good")).await;
    b.event(SVC, "status").await;
    let mut b2 = Client::login(&srv, "bob", "other").await;
    let m = b2.event(SVC, "status").await;
    assert!(String::from(&m).contains("all good"), "{m:?}");
    assert_eq!(m.attr("to"), Some("bob@localhost/other"));
    // Delivery on again.
    b.ok(&format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><options node='quiet' jid='bob@localhost'>{}</options></pubsub></iq>",
        opts("1")
    ))
    .await;
    a.ok(&publish("quiet", "2", "heard")).await;
    let m = b.event(SVC, "quiet").await;
    assert!(String::from(&m).contains("heard"), "{m:?}");
    srv.stop().await;
}

#[tokio::test]
async fn roster_whitelist_members_ids_and_payloadless_notifications() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol"]).await;
    // bob is in alice's "family" group, carol in no group.
    for (who, groups) in [("bob", vec!["family".to_string()]), ("carol", vec![])] {
        let mut it = palaver_storage::im::RosterItem::new(&format!("{who}@{DOMAIN}"));
        it.subscription = palaver_storage::im::Subscription::Both;
        it.groups = groups;
        srv.core()
            .storage()
            .roster
            .put_roster_item(DOMAIN, "alice", &it)
            .await
            .expect("roster");
    }
    let mut a = Client::login(&srv, "alice", "r").await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let mut c = Client::login(&srv, "carol", "r").await;
    let create = |node: &str, fields: &str| {
        format!(
            "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/><configure><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>{fields}</x></configure></pubsub></iq>"
        )
    };
    let items = |node: &str, inner: &str| {
        format!(
            "<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><items node='{node}'>{inner}</items></pubsub></iq>"
        )
    };
    // Roster access: the allowed group only.
    a.ok(&create("family", "<field var='pubsub#access_model'><value>roster</value></field><field var='pubsub#roster_groups_allowed'><value>family</value></field>")).await;
    a.ok(&publish("family", "f1", "dinner")).await;
    a.ok(&publish("family", "f2", "lunch")).await;
    b.ok(&items("family", "")).await;
    c.fails(
        &items("family", ""),
        "not-authorized",
        Some("not-in-roster-group"),
    )
    .await;
    // Retrieval by id.
    let r = b.ok(&items("family", "<item id='f1'/>")).await;
    let s = String::from(&r);
    assert!(s.contains("dinner") && !s.contains("lunch"), "{s}");
    // Whitelist: closed until the owner makes carol a member.
    a.ok(&create("club", "<field var='pubsub#access_model'><value>whitelist</value></field><field var='pubsub#deliver_payloads'><value>0</value></field>")).await;
    c.fails(&items("club", ""), "not-allowed", Some("closed-node"))
        .await;
    a.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><affiliations node='club'><affiliation jid='carol@localhost' affiliation='member'/></affiliations></pubsub></iq>")).await;
    let r = a
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><affiliations node='club'/></pubsub></iq>"))
        .await;
    let s = String::from(&r);
    assert!(
        s.contains("carol@localhost") && s.contains("member") && s.contains("owner"),
        "{s}"
    );
    c.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='club' jid='carol@localhost'/></pubsub></iq>")).await;
    // Notifications without payload (deliver_payloads off), item kept.
    a.ok(&publish("club", "c1", "secret")).await;
    let m = c.event(SVC, "club").await;
    let s = String::from(&m);
    assert!(s.contains("c1") && !s.contains("secret"), "{s}");
    let r = c.ok(&items("club", "")).await;
    assert!(String::from(&r).contains("secret"), "{r:?}");
    // The owner's view of subscriptions; the subscriber's own view.
    let r = a
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><subscriptions node='club'/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("carol@localhost"), "{r:?}");
    let r = c
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscriptions/></pubsub></iq>"))
        .await;
    assert!(String::from(&r).contains("club"), "{r:?}");
    // Purge: items gone.
    a.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_OWNER}'><purge node='club'/></pubsub></iq>")).await;
    let r = c.ok(&items("club", "")).await;
    assert!(!String::from(&r).contains("c1"), "{r:?}");
    // Node disco lists what the requester may see.
    let r = c
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"))
        .await;
    let s = String::from(&r);
    assert!(s.contains("club") && !s.contains("family"), "{s}");
    srv.stop().await;
}

/// A subscribe-options form with these fields (values as given).
fn sub_options(fields: &[(&str, &[&str])]) -> String {
    let mut s = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_options</value></field>",
    );
    for (var, values) in fields {
        s.push_str(&format!("<field var='{var}'>"));
        for v in *values {
            s.push_str(&format!("<value>{v}</value>"));
        }
        s.push_str("</field>");
    }
    s.push_str("</x>");
    s
}

fn subscribe_with(node: &str, jid: &str, form: &str) -> String {
    format!(
        "<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='{node}' jid='{jid}'/><options>{form}</options></pubsub></iq>"
    )
}

fn is_event(m: &minidom::Element) -> bool {
    m.name() == "message" && m.get_child("event", NS_EVENT).is_some()
}

#[tokio::test]
async fn subscription_options_show_values_body_digest_and_expiry() {
    let srv = TestServer::start_with("", MODULES).await;
    users(&srv, &["alice", "bob", "carol", "dave", "eve"]).await;
    let mut a = Client::login(&srv, "alice", "r").await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let mut c = Client::login(&srv, "carol", "r").await;
    let mut d = Client::login(&srv, "dave", "r").await;
    let mut e = Client::login(&srv, "eve", "r").await;
    // The options form lists what is honoured.
    let def = a
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><default/></pubsub></iq>"))
        .await;
    let def = String::from(&def);
    for var in [
        "pubsub#deliver",
        "pubsub#digest",
        "pubsub#digest_frequency",
        "pubsub#include_body",
        "pubsub#show-values",
        "pubsub#expire",
    ] {
        assert!(def.contains(var), "{var}: {def}");
    }
    a.ok(&format!("<iq type='set' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='news'/></pubsub></iq>")).await;

    // Bob: only while his presence is "chat", with a body.
    b.ok(&subscribe_with(
        "news",
        "bob@localhost",
        &sub_options(&[
            ("pubsub#show-values", &["chat"]),
            ("pubsub#include_body", &["1"]),
        ]),
    ))
    .await;
    // Dave: until he goes offline. Eve: until a time already past.
    d.ok(&subscribe_with(
        "news",
        "dave@localhost",
        &sub_options(&[("pubsub#expire", &["presence"])]),
    ))
    .await;
    e.ok(&subscribe_with(
        "news",
        "eve@localhost",
        &sub_options(&[("pubsub#expire", &["2001-01-01T00:00:00Z"])]),
    ))
    .await;
    // Expired: no longer listed, even before any delivery.
    let subs = e
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscriptions/></pubsub></iq>"))
        .await;
    assert!(!String::from(&subs).contains("news"), "{subs:?}");
    a.ok(&publish("news", "n1", "first")).await;
    let m = d.event(SVC, "news").await;
    assert!(m.get_child("body", "jabber:client").is_none(), "{m:?}");
    b.sync().await;
    e.sync().await;
    assert!(!b.queued(is_event), "bob is not in chat mood");
    assert!(!e.queued(is_event), "eve's subscription expired");
    let subs = e
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><subscriptions/></pubsub></iq>"))
        .await;
    assert!(!String::from(&subs).contains("news"), "{subs:?}");

    b.send("<presence><show>chat</show></presence>").await;
    b.sync().await;
    a.ok(&publish("news", "n2", "second")).await;
    let m = b.event(SVC, "news").await;
    let body = m
        .get_child("body", "jabber:client")
        .map(|b| b.text())
        .unwrap_or_default();
    assert!(body.contains("n2") && body.contains("news"), "{m:?}");
    assert_eq!(m.attr("to"), Some("bob@localhost/r"));
    let opts = b
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><options node='news' jid='bob@localhost'/></pubsub></iq>"))
        .await;
    let opts = String::from(&opts);
    assert!(opts.contains("<value>chat</value>"), "{opts}");

    // Dave goes offline: his subscription ends.
    d.send("<presence type='unavailable'/>").await;
    let mut ended = false;
    for _ in 0..50 {
        let subs = a
            .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}#owner'><subscriptions node='news'/></pubsub></iq>"))
            .await;
        if !String::from(&subs).contains("dave@localhost") {
            ended = true;
            break;
        }
    }
    assert!(
        ended,
        "dave's presence-bound subscription should have ended"
    );

    // Carol: a digest every second: three items in one message.
    c.ok(&subscribe_with(
        "news",
        "carol@localhost",
        &sub_options(&[
            ("pubsub#digest", &["true"]),
            ("pubsub#digest_frequency", &["1000"]),
        ]),
    ))
    .await;
    c.event(SVC, "news").await; // the last item, on subscription
    for i in 3..6 {
        a.ok(&publish("news", &format!("n{i}"), "more")).await;
    }
    let m = c.event(SVC, "news").await;
    let items = child(&m, &[("event", NS_EVENT), ("items", NS_EVENT)]).expect("items");
    let ids: Vec<&str> = items
        .children()
        .filter(|i| i.name() == "item")
        .filter_map(|i| i.attr("id"))
        .collect();
    assert_eq!(ids, ["n3", "n4", "n5"], "{m:?}");
    c.sync().await;
    assert!(!c.queued(is_event), "one message for the digest");
    drop((a, b, c, d, e));

    // Options are stored.
    let srv = restart(srv, MODULES).await;
    let mut b = Client::login(&srv, "bob", "r").await;
    let opts = b
        .ok(&format!("<iq type='get' id='{{id}}' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><options node='news' jid='bob@localhost'/></pubsub></iq>"))
        .await;
    let opts = String::from(&opts);
    assert!(opts.contains("<value>chat</value>"), "{opts}");
    srv.stop().await;
}

/// Wait for the answer to IQ `id` on a raw connection: a result.
async fn iq_ok(c: &mut RawTcp, id: &str) {
    let head = c.until(&format!("id='{id}'")).await;
    let tag = c.until(">").await;
    let start = head.rfind("<iq").map_or("", |p| &head[p..]);
    assert!(
        format!("{start}{tag}").contains("type='result'"),
        "{head}{tag}"
    );
}

/// Notifications gathered for a digest are stored: after a `kill -9`, the
/// restarted server sends the digest when it is due, with every item.
#[tokio::test]
async fn a_digest_survives_kill_9() {
    use common::process::{add_user, serve, write_config};
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _pg) = write_config(dir.path(), MODULES, "pubsub digest kill -9").await;
    add_user(&cfg, "alice@localhost");
    add_user(&cfg, "carol@localhost");
    let (mut child, addr) = serve(&cfg).await;
    let mut a = raw_login(addr, "alice", DOMAIN, "pw", "a").await;
    let mut c = raw_login(addr, "carol", DOMAIN, "pw", "c").await;
    a.send(&format!(
        "<iq type='set' id='mk' to='{SVC}'><pubsub xmlns='{NS_PUBSUB}'><create node='news'/></pubsub></iq>"
    ))
    .await;
    iq_ok(&mut a, "mk").await;
    // A digest every 8 s: long enough for the restart below.
    let sub = subscribe_with(
        "news",
        "carol@localhost",
        &sub_options(&[
            ("pubsub#digest", &["true"]),
            ("pubsub#digest_frequency", &["8000"]),
        ]),
    )
    .replace("{id}", "sub");
    c.send(&sub).await;
    iq_ok(&mut c, "sub").await;
    for (i, id) in ["d1", "d2"].iter().enumerate() {
        a.send(&publish("news", id, "item").replace("{id}", &format!("p{i}")))
            .await;
        iq_ok(&mut a, &format!("p{i}")).await;
    }
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");
    drop((a, c));

    let (_child, addr) = serve(&cfg).await;
    let mut c = raw_login(addr, "carol", DOMAIN, "pw", "c2").await;
    c.send("<presence/>").await;
    let m = c.until("</items>").await;
    assert!(
        m.contains("node='news'") && m.contains("id='d1'") && m.contains("id='d2'"),
        "one digest with both items: {m}"
    );
}
