//! A logged-in test client that reads whole stanzas (shared by the
//! isolation, error-handling and subscription-state tests).
#![allow(dead_code)]

use crate::common::*;
use minidom::Element;
use palaver_proto::framer::{Frame, Framer, Limits};
use std::collections::VecDeque;
use tokio::io::AsyncReadExt;

pub const ROSTER: &str = "jabber:iq:roster";

/// A logged-in client that reads whole stanzas.
pub struct Client {
    pub raw: RawTcp,
    pub framer: Framer,
    pub queue: VecDeque<Element>,
    pub jid: String,
    pub n: u32,
}

impl Client {
    pub async fn login(srv: &TestServer, user: &str, host: &str, resource: &str) -> Client {
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

    pub fn feed(&mut self, mut data: &[u8]) {
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

    /// Assert nothing matching `pred` arrives before a ping round trip.
    pub async fn assert_none(&mut self, what: &str, pred: impl Fn(&Element) -> bool) {
        self.n += 1;
        let id = format!("sync{}", self.n);
        self.raw
            .send(&format!(
                "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        self.expect("ping result", |e| e.attr("id") == Some(id.as_str()))
            .await;
        assert!(
            !self.queue.iter().any(&pred),
            "{}: unexpected {what}: {:?}",
            self.jid,
            self.queue
        );
    }

    pub async fn iq(&mut self, body: &str) -> Element {
        self.n += 1;
        let id = format!("q{}", self.n);
        self.raw
            .send(&body.replacen("<iq ", &format!("<iq id='{id}' "), 1))
            .await;
        self.expect("iq reply", |e| {
            e.name() == "iq" && e.attr("id") == Some(id.as_str())
        })
        .await
    }

    pub async fn roster(&mut self, ver: Option<&str>) -> Element {
        let v = ver.map(|v| format!(" ver='{v}'")).unwrap_or_default();
        self.iq(&format!("<iq type='get'><query xmlns='{ROSTER}'{v}/></iq>"))
            .await
    }

    pub async fn send(&mut self, s: &str) {
        self.raw.send(s).await;
    }
}

impl Client {
    /// Ping round trip: everything the server sent before it is queued;
    /// returns (and removes) the queued stanzas.
    pub async fn drain(&mut self) -> Vec<Element> {
        self.n += 1;
        let id = format!("sync{}", self.n);
        self.raw
            .send(&format!(
                "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        self.expect("ping result", |e| e.attr("id") == Some(id.as_str()))
            .await;
        self.queue.drain(..).collect()
    }
}

/// The stanza error condition of `e` (the first child of `<error/>` in the
/// stanzas namespace), if it is an error.
pub fn condition(e: &Element) -> Option<String> {
    if e.attr("type") != Some("error") {
        return None;
    }
    e.get_child("error", palaver_proto::ns::CLIENT)
        .and_then(|err| {
            err.children()
                .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
                .map(|c| c.name().to_string())
        })
}

/// Serialized, for messages.
pub fn xml(e: &Element) -> String {
    palaver_proto::writer::to_string(e, "")
}
