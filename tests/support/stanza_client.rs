//! A logged-in raw client that reads whole stanzas (for the pubsub, PEP and
//! ad-hoc tests), and XEP-0115 capabilities it can announce.
#![allow(dead_code)]

use crate::common::*;
use minidom::Element;
use palaver_proto::framer::{Frame, Framer, Limits};
use std::collections::VecDeque;
use tokio::io::AsyncReadExt;

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

pub struct Client {
    pub raw: RawTcp,
    framer: Framer,
    queue: VecDeque<Element>,
    pub jid: String,
    n: u32,
}

impl Client {
    /// Log in and send initial presence.
    pub async fn login(srv: &TestServer, user: &str, resource: &str) -> Client {
        let mut c = Client::login_silent(srv, user, resource).await;
        c.send("<presence/>").await;
        c
    }

    /// Log in without sending presence.
    pub async fn login_silent(srv: &TestServer, user: &str, resource: &str) -> Client {
        Client::login_at(srv, user, DOMAIN, resource).await
    }

    /// Log in to `host` without sending presence.
    pub async fn login_at(srv: &TestServer, user: &str, host: &str, resource: &str) -> Client {
        let mut raw = Raw::connect(srv.addr).await;
        let jid = raw.login_plain(user, host, "pw", resource).await;
        let mut framer = Framer::new(Limits::default());
        let mut hdr: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
        while let Ok(Some(_)) = framer.next_frame(&mut hdr) {}
        let mut c = Client {
            raw,
            framer,
            queue: VecDeque::new(),
            jid,
            n: 0,
        };
        let left = std::mem::take(&mut c.raw.buf);
        c.feed(left.as_bytes());
        c
    }

    fn feed(&mut self, mut data: &[u8]) {
        while let Some(f) = self
            .framer
            .next_frame(&mut data)
            .expect("well-formed server output")
        {
            if let Frame::Element(e) = f {
                self.queue.push_back(e);
            }
        }
    }

    pub async fn send(&mut self, xml: &str) {
        self.raw.send(xml).await;
    }

    /// The next stanza matching `pred`; others are kept for later.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        let r = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(pos) = self.queue.iter().position(&pred) {
                    return self.queue.remove(pos).expect("present");
                }
                let mut chunk = [0u8; 8192];
                let n = self.raw.s.read(&mut chunk).await.unwrap_or(0);
                assert!(
                    n > 0,
                    "{}: connection closed while waiting for {what}; queued {:?}",
                    self.jid,
                    self.queue
                );
                self.feed(&chunk[..n]);
            }
        })
        .await;
        match r {
            Ok(e) => e,
            Err(_) => panic!(
                "{}: timed out waiting for {what}; queued {:?}",
                self.jid, self.queue
            ),
        }
    }

    /// Send an IQ (`{id}` in `xml` is replaced by a fresh id) and return its answer.
    pub async fn iq(&mut self, xml: &str) -> Element {
        self.n += 1;
        let id = format!("q{}", self.n);
        self.send(&xml.replace("{id}", &id)).await;
        self.expect(&format!("answer to {xml}"), |e| {
            e.name() == "iq"
                && e.attr("id") == Some(id.as_str())
                && matches!(e.attr("type"), Some("result" | "error"))
        })
        .await
    }

    /// An IQ that must succeed.
    pub async fn ok(&mut self, xml: &str) -> Element {
        let r = self.iq(xml).await;
        assert_eq!(r.attr("type"), Some("result"), "{xml} → {r:?}");
        r
    }

    /// An IQ that must fail with `condition` (and the pubsub `app` condition, if given).
    pub async fn fails(&mut self, xml: &str, condition: &str, app: Option<&str>) -> Element {
        let r = self.iq(xml).await;
        assert_eq!(r.attr("type"), Some("error"), "{xml} → {r:?}");
        let err = r
            .get_child("error", "jabber:client")
            .unwrap_or_else(|| panic!("error element in {r:?}"));
        assert!(
            err.get_child(condition, "urn:ietf:params:xml:ns:xmpp-stanzas")
                .is_some(),
            "{xml}: expected {condition}, got {r:?}"
        );
        if let Some(app) = app {
            assert!(
                err.children().any(|c| c.name() == app),
                "{xml}: expected {app}, got {r:?}"
            );
        }
        r
    }

    /// The next pubsub event message for `node` (from `from`).
    pub async fn event(&mut self, from: &str, node: &str) -> Element {
        let (from, node) = (from.to_string(), node.to_string());
        self.expect(&format!("event for {node} from {from}"), move |e| {
            e.name() == "message"
                && e.attr("from") == Some(from.as_str())
                && e.get_child("event", NS_EVENT)
                    .is_some_and(|ev| ev.children().any(|c| c.attr("node") == Some(node.as_str())))
        })
        .await
    }

    /// Whether a stanza matching `pred` arrives within `ms` (for checking
    /// that nothing comes: call after a later stanza proved ordering).
    pub fn queued(&self, pred: impl Fn(&Element) -> bool) -> bool {
        self.queue.iter().any(pred)
    }

    /// Ping the server and wait for the answer: everything the server sent
    /// before is then in the queue.
    pub async fn sync(&mut self) {
        self.ok("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
    }

    /// Send available presence with XEP-0115 caps asking for `notify` nodes,
    /// and answer the server's disco#info query for them.
    pub async fn available_with_notify(&mut self, notify: &[&str]) {
        let mut feats: Vec<String> = vec![
            DISCO_INFO.to_string(),
            "http://jabber.org/protocol/caps".into(),
        ];
        for n in notify {
            feats.push(format!("{n}+notify"));
        }
        feats.sort();
        // A name of its own per session, so every session is asked (a
        // verification string seen before is answered from the cache).
        let name = format!("Test {}", self.jid);
        let mut s = format!("client/pc//{name}<");
        for f in &feats {
            s.push_str(f);
            s.push('<');
        }
        use base64::Engine;
        use sha1::Digest;
        let ver =
            base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()));
        let node = "https://palaver.test/client";
        self.send(&format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{node}' ver='{ver}'/></presence>"
        ))
        .await;
        let q = self
            .expect("disco#info query for caps", |e| {
                e.name() == "iq"
                    && e.attr("type") == Some("get")
                    && e.get_child("query", DISCO_INFO).is_some()
            })
            .await;
        let mut reply = format!(
            "<iq type='result' id='{}' to='{}'><query xmlns='{DISCO_INFO}' node='{node}#{ver}'><identity category='client' type='pc' name='{name}'/>",
            q.attr("id").unwrap_or(""),
            q.attr("from").unwrap_or("")
        );
        for f in &feats {
            reply.push_str(&format!("<feature var='{f}'/>"));
        }
        reply.push_str("</query></iq>");
        self.send(&reply).await;
    }
}

/// Make `a` and `b` (of `localhost`) contacts subscribed both ways.
pub async fn befriend(srv: &TestServer, a: &str, b: &str) {
    use palaver_storage::im::{RosterItem, Subscription};
    for (x, y) in [(a, b), (b, a)] {
        let mut it = RosterItem::new(&format!("{y}@{DOMAIN}"));
        it.subscription = Subscription::Both;
        srv.core()
            .storage()
            .roster
            .put_roster_item(DOMAIN, x, &it)
            .await
            .expect("roster item");
    }
}

pub fn child<'a>(e: &'a Element, path: &[(&str, &str)]) -> Option<&'a Element> {
    let mut cur = e;
    for (name, ns) in path {
        cur = cur.get_child(name, *ns)?;
    }
    Some(cur)
}

/// Stop the server and start it again on the same data (and database).
pub async fn restart(mut srv: TestServer, modules: &str) -> TestServer {
    if let Some(s) = srv.server.take() {
        s.shutdown().await;
    }
    let mut text = config_text(srv.dir.path(), "", modules);
    if let Some(db) = &srv.pg {
        text.push_str(&pg_keys(&db.url));
    }
    let pg = srv.pg.take();
    let mut n = TestServer::start_with_config_text(srv.dir, &text).await;
    n.pg = pg;
    n
}
