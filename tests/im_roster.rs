//! RFC 6121 rosters, subscriptions and presence, end to end over real sockets.

mod common;
use common::*;
use minidom::Element;
#[path = "common/xclient.rs"]
mod xclient;
use xclient::*;

const MODULES: &str =
    "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {max_roster_size: 3}\n";

fn is_presence(from_prefix: &'static str, kind: Option<&'static str>) -> impl Fn(&Element) -> bool {
    move |e: &Element| {
        e.name() == "presence"
            && e.attr("from").is_some_and(|f| f.starts_with(from_prefix))
            && e.attr("type") == kind
    }
}

fn is_push(jid: &'static str, sub: &'static str, ask: bool) -> impl Fn(&Element) -> bool {
    move |e: &Element| {
        e.name() == "iq"
            && e.attr("type") == Some("set")
            && e.get_child("query", ROSTER)
                .and_then(|q| q.get_child("item", ROSTER))
                .is_some_and(|i| {
                    i.attr("jid") == Some(jid)
                        && i.attr("subscription") == Some(sub)
                        && (i.attr("ask") == Some("subscribe")) == ask
                })
    }
}

fn items(q: &Element) -> Vec<(String, String)> {
    q.get_child("query", ROSTER)
        .map(|q| {
            q.children()
                .map(|i| {
                    (
                        i.attr("jid").unwrap_or("").to_string(),
                        i.attr("subscription").unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn server() -> TestServer {
    let srv = TestServer::start_with("", MODULES).await;
    for u in ["alice", "bob", "carol", "dave", "eve"] {
        srv.add_user(u, DOMAIN, "pw").await;
    }
    srv.add_user("zed", DOMAIN2, "pw").await;
    srv
}

/// Full subscription handshake in both directions; both see each other online.
#[tokio::test]
async fn mutual_subscription_and_presence() {
    let srv = server().await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    let mut b = Client::login(&srv, "bob", DOMAIN, "b").await;
    a.roster(None).await;
    b.roster(None).await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    a.expect("own presence", is_presence("alice@localhost/a", None))
        .await;
    b.expect("own presence", is_presence("bob@localhost/b", None))
        .await;

    // alice → bob: subscribe. alice's roster gets none + ask.
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    a.expect("push none+ask", is_push("bob@localhost", "none", true))
        .await;
    let req = b
        .expect(
            "subscribe request",
            is_presence("alice@localhost", Some("subscribe")),
        )
        .await;
    assert_eq!(
        req.attr("from"),
        Some("alice@localhost"),
        "bare from on subscription requests"
    );
    // bob approves: bob's roster gets alice with from; alice gets to; alice sees bob online.
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    b.expect("push from", is_push("alice@localhost", "from", false))
        .await;
    // alice gets the roster push and the `subscribed` before bob's presence
    // (RFC 6121 §3.1.5-3.1.6): both are already there when it arrives.
    a.expect("bob's presence", is_presence("bob@localhost/b", None))
        .await;
    assert!(
        a.queue.iter().any(is_push("bob@localhost", "to", false))
            && a.queue
                .iter()
                .any(is_presence("bob@localhost", Some("subscribed"))),
        "bob's presence overtook the subscription: {:?}",
        a.queue
    );
    a.expect("push to", is_push("bob@localhost", "to", false))
        .await;
    a.expect(
        "subscribed",
        is_presence("bob@localhost", Some("subscribed")),
    )
    .await;

    // bob → alice, alice approves: both.
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    b.expect("push from+ask", is_push("alice@localhost", "from", true))
        .await;
    a.expect(
        "subscribe from bob",
        is_presence("bob@localhost", Some("subscribe")),
    )
    .await;
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    a.expect("push both", is_push("bob@localhost", "both", false))
        .await;
    b.expect("alice's presence", is_presence("alice@localhost/a", None))
        .await;
    assert!(
        b.queue
            .iter()
            .any(is_push("alice@localhost", "both", false)),
        "alice's presence overtook the subscription: {:?}",
        b.queue
    );
    b.expect("push both", is_push("alice@localhost", "both", false))
        .await;
    assert_eq!(
        items(&a.roster(None).await),
        vec![("bob@localhost".into(), "both".into())]
    );

    // Presence updates and logout reach the contact.
    a.send("<presence><show>away</show></presence>").await;
    b.expect("away", |e| {
        e.name() == "presence"
            && e.attr("from") == Some("alice@localhost/a")
            && e.has_child("show", "jabber:client")
    })
    .await;
    drop(a);
    b.expect(
        "unavailable on disconnect",
        is_presence("alice@localhost/a", Some("unavailable")),
    )
    .await;
    // A new login probes: bob's presence reaches alice's new session.
    let mut a2 = Client::login(&srv, "alice", DOMAIN, "a2").await;
    a2.send("<presence/>").await;
    a2.expect("probe answer", is_presence("bob@localhost/b", None))
        .await;
    b.expect(
        "alice online again",
        is_presence("alice@localhost/a2", None),
    )
    .await;
    srv.stop().await;
}

/// A subscription request to an offline user is stored and delivered at next login.
#[tokio::test]
async fn pending_request_delivered_later() {
    let srv = server().await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    a.roster(None).await;
    a.send("<presence/>").await;
    a.send("<presence to='carol@localhost' type='subscribe'><status>hi carol</status></presence>")
        .await;
    a.expect("push none+ask", is_push("carol@localhost", "none", true))
        .await;
    a.assert_none("anything from carol", |e| {
        e.attr("from") == Some("carol@localhost")
    })
    .await;
    let mut c = Client::login(&srv, "carol", DOMAIN, "c").await;
    c.send("<presence/>").await;
    let req = c
        .expect(
            "stored request",
            is_presence("alice@localhost", Some("subscribe")),
        )
        .await;
    assert_eq!(
        req.get_child("status", "jabber:client").map(|s| s.text()),
        Some("hi carol".into())
    );
    // Denying removes it; it is not delivered again.
    c.send("<presence to='alice@localhost' type='unsubscribed'/>")
        .await;
    a.expect("push none", is_push("carol@localhost", "none", false))
        .await;
    a.expect(
        "unsubscribed",
        is_presence("carol@localhost", Some("unsubscribed")),
    )
    .await;
    drop(c);
    let mut c2 = Client::login(&srv, "carol", DOMAIN, "c2").await;
    c2.send("<presence/>").await;
    c2.assert_none(
        "stale request",
        is_presence("alice@localhost", Some("subscribe")),
    )
    .await;
    srv.stop().await;
}

/// Roster get/set/remove, groups, pushes and XEP-0237 versioning.
#[tokio::test]
async fn roster_management_and_versioning() {
    let srv = server().await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    let mut a2 = Client::login(&srv, "alice", DOMAIN, "b").await;
    let first = a.roster(Some("")).await;
    a2.roster(None).await;
    let v0 = first
        .get_child("query", ROSTER)
        .and_then(|q| q.attr("ver"))
        .expect("ver")
        .to_string();
    let r = a.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='Dave@LocalHost' name='Dave'><group>Friends</group><group>Work</group></item></query></iq>").await;
    assert_eq!(r.attr("type"), Some("result"));
    let push = a2
        .expect(
            "push to other resource",
            is_push("dave@localhost", "none", false),
        )
        .await;
    let v1 = push
        .get_child("query", ROSTER)
        .and_then(|q| q.attr("ver"))
        .expect("ver")
        .to_string();
    assert_ne!(v0, v1);
    a.expect("push to self", is_push("dave@localhost", "none", false))
        .await;
    // Unchanged version → empty result.
    let same = a.roster(Some(&v1)).await;
    assert_eq!(same.attr("type"), Some("result"));
    assert!(
        same.get_child("query", ROSTER).is_none(),
        "expected empty result, got {same:?}"
    );
    // Old version → full roster with the new version.
    let full = a.roster(Some(&v0)).await;
    let q = full.get_child("query", ROSTER).expect("query");
    assert_eq!(q.attr("ver"), Some(v1.as_str()));
    let item = q.get_child("item", ROSTER).expect("item");
    assert_eq!(item.attr("name"), Some("Dave"));
    let groups: Vec<String> = item.children().map(|g| g.text()).collect();
    assert_eq!(groups, vec!["Friends".to_string(), "Work".to_string()]);
    // Bad requests.
    let e = a.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='x@localhost'><group>g</group><group>g</group></item></query></iq>").await;
    assert!(
        e.has_child("error", "jabber:client"),
        "duplicate group: {e:?}"
    );
    let e = a.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='a@localhost'/><item jid='b@localhost'/></query></iq>").await;
    assert_eq!(e.attr("type"), Some("error"));
    let e = a.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='nobody@localhost' subscription='remove'/></query></iq>").await;
    assert!(format!("{e:?}").contains("item-not-found"), "{e:?}");
    // Roster limit (3 in this config).
    for j in ["x1@localhost", "x2@localhost"] {
        let r = a
            .iq(&format!(
                "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{j}'/></query></iq>"
            ))
            .await;
        assert_eq!(r.attr("type"), Some("result"));
    }
    let e = a.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='x3@localhost'/></query></iq>").await;
    assert!(format!("{e:?}").contains("not-acceptable"), "{e:?}");
    // Remove.
    let r = a.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='dave@localhost' subscription='remove'/></query></iq>").await;
    assert_eq!(r.attr("type"), Some("result"));
    a2.expect("remove push", is_push("dave@localhost", "remove", false))
        .await;
    // Another user's roster is not ours to read.
    let e = a
        .iq("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert!(format!("{e:?}").contains("forbidden"), "{e:?}");
    srv.stop().await;
}

/// Pre-approval (RFC 6121 §3.4) and cancellation in both directions.
#[tokio::test]
async fn preapproval_and_cancel() {
    let srv = server().await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    let mut b = Client::login(&srv, "bob", DOMAIN, "b").await;
    a.roster(None).await;
    b.roster(None).await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    // bob pre-approves alice; alice's later request is approved automatically.
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let p = b
        .expect("pre-approval push", |e| {
            is_push("alice@localhost", "none", false)(e)
        })
        .await;
    assert!(format!("{p:?}").contains("approved"), "{p:?}");
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    a.expect("push to", is_push("bob@localhost", "to", false))
        .await;
    b.expect("push from", is_push("alice@localhost", "from", false))
        .await;
    a.expect("bob online", is_presence("bob@localhost/b", None))
        .await;
    // alice unsubscribes: to → none; bob: from → none and bob's unavailable reaches alice.
    a.send("<presence to='bob@localhost' type='unsubscribe'/>")
        .await;
    a.expect("push none", is_push("bob@localhost", "none", false))
        .await;
    b.expect("push none", is_push("alice@localhost", "none", false))
        .await;
    a.expect(
        "unavailable from bob",
        is_presence("bob@localhost/b", Some("unavailable")),
    )
    .await;
    // Presence no longer flows.
    b.send("<presence><status>busy</status></presence>").await;
    b.expect("own", is_presence("bob@localhost/b", None)).await;
    a.assert_none("bob's presence", is_presence("bob@localhost/b", None))
        .await;
    srv.stop().await;
}

/// Subscriptions work between two hosts of the same deployment; probes of
/// an unsubscribed entity reveal nothing.
#[tokio::test]
async fn cross_host_subscription_and_probe_privacy() {
    let srv = server().await;
    let mut a = Client::login(&srv, "alice", DOMAIN, "a").await;
    let mut z = Client::login(&srv, "zed", DOMAIN2, "z").await;
    a.roster(None).await;
    z.roster(None).await;
    a.send("<presence/>").await;
    z.send("<presence/>").await;
    z.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    a.expect(
        "request",
        is_presence("zed@example.test", Some("subscribe")),
    )
    .await;
    a.send("<presence to='zed@example.test' type='subscribed'/>")
        .await;
    z.expect("push to", is_push("alice@localhost", "to", false))
        .await;
    z.expect("alice online", is_presence("alice@localhost/a", None))
        .await;
    // eve is not subscribed: her probe gets nothing.
    let mut e = Client::login(&srv, "eve", DOMAIN, "e").await;
    e.send("<presence/>").await;
    e.send("<presence to='alice@localhost' type='probe'/>")
        .await;
    e.assert_none("alice's presence", |x| {
        x.attr("from").is_some_and(|f| f.starts_with("alice@"))
    })
    .await;
    // A subscription request to a user that does not exist is answered with unsubscribed.
    e.send("<presence to='ghost@localhost' type='subscribe'/>")
        .await;
    e.expect(
        "unsubscribed",
        is_presence("ghost@localhost", Some("unsubscribed")),
    )
    .await;
    srv.stop().await;
}

/// The roster storm of `../shared/bench` in small: users in a ring each
/// subscribe to their `K` nearest neighbours and approve every request, all
/// at once, so both sides of each pair change the same two roster items
/// concurrently. One account's state changes one transition at a time:
/// every roster must end with all `K` contacts in `both`, none pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mutual_subscriptions_all_end_in_both() {
    const N: usize = 40;
    const K: usize = 6;
    let srv = TestServer::start_with("", "modules:\n  mod_ping: {}\n  mod_roster: {}\n").await;
    let name = |i: usize| format!("storm{}", i % N);
    for i in 0..N {
        srv.add_user(&name(i), DOMAIN, "pw").await;
    }
    let mut clients = Vec::new();
    for i in 0..N {
        let mut c = Client::login(&srv, &name(i), DOMAIN, "r").await;
        c.roster(None).await;
        clients.push(c);
    }
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let contacts: Vec<String> = (1..=K / 2)
            .flat_map(|d| [name(i + d), name(i + N - d)])
            .map(|u| format!("{u}@{DOMAIN}"))
            .collect();
        tasks.push(tokio::spawn(async move {
            c.send("<presence/>").await;
            for j in &contacts {
                c.send(&format!("<presence to='{j}' type='subscribe'/>"))
                    .await;
            }
            let (mut approved, mut subscribed) = (0, 0);
            while approved < K || subscribed < K {
                let p = c
                    .expect("subscription presence", |e| {
                        e.name() == "presence"
                            && matches!(e.attr("type"), Some("subscribe" | "subscribed"))
                    })
                    .await;
                let from = p.attr("from").unwrap_or_default().to_string();
                assert!(contacts.contains(&from), "{}: from {from}", c.jid);
                if p.attr("type") == Some("subscribe") {
                    c.send(&format!("<presence to='{from}' type='subscribed'/>"))
                        .await;
                    approved += 1;
                } else {
                    subscribed += 1;
                }
            }
            // Everything this session sent is handled once this is answered.
            c.assert_none("error", |e| e.attr("type") == Some("error"))
                .await;
            c
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("client task"));
    }
    let store = &srv.core().storage().roster;
    let mut bad = Vec::new();
    for i in 0..N {
        let (_, items) = store.roster(DOMAIN, &name(i)).await.expect("roster");
        let both = items
            .iter()
            .filter(|it| it.subscription == palaver_storage::Subscription::Both && !it.ask)
            .count();
        if items.len() != K || both != K {
            bad.push(format!("{}: {both} of {} in both", name(i), items.len()));
        }
    }
    assert!(bad.is_empty(), "rosters not all `both`: {bad:?}");
    drop(done);
    srv.stop().await;
}
