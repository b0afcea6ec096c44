//! XEP-0352 Client State Indication (`mod_client_state`).
//!
//! While a client is inactive (a phone in a pocket), what it does not need
//! at once waits in its session (the kernel keeps the queue, `c2s/csi.rs`):
//!
//! - presence (`queue_presence`): only the latest per contact;
//! - chat states (`queue_chat_states`): the latest per contact; receipts
//!   and chat markers without a body, in order;
//! - PEP notifications (`queue_pep`): the latest per contact and node.
//!
//! Anything else — a message with a body (also inside a carbon copy), an
//! error, an IQ, subscription requests — is written at once, after
//! everything held, so the client sees the stream in order. At most
//! `max_queue` stanzas wait; then all are written. The time since a
//! client went inactive is what XEP-0012 reports as its idle time
//! (`mod_last`, through the session table).

use jid::Jid;
use minidom::Element;
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind};
use palaver_server::hooks::{ClientStateChanged, CsiFilter};
use palaver_server::{HookAction, HostSetup, Module, ModuleDef};
use std::sync::Arc;

/// `mod_client_state`.
pub struct ClientStateIndication;

/// `mod_client_state` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<ClientStateIndication>();

const NS_CSI: &str = "urn:xmpp:csi:0";
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// Payloads of messages that only report on other messages.
const NOTICES: &[&str] = &["urn:xmpp:receipts", "urn:xmpp:chat-markers:0"];

/// Options (ejabberd's names, and the queue bound).
#[derive(serde::Deserialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    pub queue_presence: bool,
    pub queue_chat_states: bool,
    pub queue_pep: bool,
    /// Most stanzas held for one session before all are written.
    pub max_queue: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue_presence: true,
            queue_chat_states: true,
            queue_pep: true,
            max_queue: 100,
        }
    }
}

impl Module for ClientStateIndication {
    const NAME: &'static str = "mod_client_state";
    type Options = Options;

    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        if o.max_queue == 0 {
            return Err("max_queue: must be at least 1".into());
        }
        host.add_stream_features(Arc::new(|_h| vec![Element::bare("csi", NS_CSI)]));
        host.hook::<ClientStateChanged>(0, move |_cx, s| {
            s.accepted = true;
            s.max_held = o.max_queue;
            HookAction::Continue
        });
        host.hook::<CsiFilter>(0, move |_cx, h| {
            h.hold = hold(&o, &h.stanza);
            HookAction::Continue
        });
        Ok(ClientStateIndication)
    }
}

/// The queue key of a stanza that may wait (`Some("")`: no key), or `None`.
fn hold(o: &Options, st: &Stanza) -> Option<String> {
    match st.kind {
        StanzaKind::Iq => None,
        StanzaKind::Presence => match st.type_attr() {
            None | Some("unavailable") if o.queue_presence => Some(format!("p {}", st.from)),
            _ => None,
        },
        StanzaKind::Message => {
            if st.is_error() {
                return None;
            }
            let el = carbon_inner(st.el()).unwrap_or(st.el());
            if el.has_child("body", ns::CLIENT) {
                return None;
            }
            if let Some(ev) = st.el().get_child("event", NS_PUBSUB_EVENT) {
                let node = ev
                    .get_child("items", NS_PUBSUB_EVENT)
                    .and_then(|i| i.attr("node"))
                    .unwrap_or("");
                return o.queue_pep.then(|| format!("pep {} {node}", st.from));
            }
            let mut payloads = el.children().filter(|c| {
                !(c.is("thread", ns::CLIENT)
                    || c.ns() == "urn:xmpp:hints"
                    || c.ns() == "urn:xmpp:sid:0")
            });
            let first = payloads.next()?;
            let with = Jid::from(st.from.to_bare());
            if first.ns() == NS_CHATSTATES && payloads.next().is_none() {
                return o.queue_chat_states.then(|| format!("cs {with}"));
            }
            let all_notices = std::iter::once(first)
                .chain(payloads)
                .all(|c| NOTICES.contains(&c.ns().as_str()) || c.ns() == NS_CHATSTATES);
            (o.queue_chat_states && all_notices).then(String::new)
        }
    }
}

/// The message inside a carbon copy, if `el` is one.
fn carbon_inner(el: &Element) -> Option<&Element> {
    el.children()
        .find(|c| c.ns() == NS_CARBONS)?
        .get_child("forwarded", NS_FORWARD)?
        .get_child("message", ns::CLIENT)
}
