//! The stanza envelope routed through the server.

use crate::error::StanzaError;
use crate::ns;
use crate::writer::write_root;
use jid::Jid;
use minidom::Element;
use rxml::{Namespace, NcName};
use std::sync::{Arc, OnceLock};

/// Build an attribute name from a static identifier.
///
/// Only used with literal attribute names written in this code base.
pub fn attr_name(name: &'static str) -> NcName {
    match NcName::try_from(name) {
        Ok(n) => n,
        Err(_) => unreachable!("attribute name literal {name:?} is not an NCName"),
    }
}

/// Set (or replace) an un-namespaced attribute.
pub fn set_attr(el: &mut Element, name: &'static str, value: impl Into<String>) {
    el.set_attr(Namespace::NONE, attr_name(name), value.into());
}

/// Remove an un-namespaced attribute.
pub fn remove_attr(el: &mut Element, name: &str) {
    el.attrs_mut().remove(Namespace::none(), name);
}

/// The three stanza kinds (RFC 6120 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
    /// `<iq/>`
    Iq,
}

impl StanzaKind {
    /// Classify an element by name (namespace checked by the caller).
    pub fn of(name: &str) -> Option<StanzaKind> {
        match name {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }

    /// The element name (`message`, `presence`, `iq`).
    pub fn as_str(self) -> &'static str {
        match self {
            StanzaKind::Message => "message",
            StanzaKind::Presence => "presence",
            StanzaKind::Iq => "iq",
        }
    }
}

/// A stanza in flight: the element plus parsed addressing.
///
/// The element always lives in the `jabber:client` namespace inside the
/// server; the s2s edge rewrites it to `jabber:server`.
///
/// **Shared on fan-out.** The element is held behind an [`Arc`] without its
/// `to` attribute (the [`Stanza::to`] field is the recipient), and its
/// serialization is cached beside it: a stanza cloned for many recipients
/// (a room's message to its occupants, a presence to a roster, a PubSub
/// notification) shares one element and is serialized once, whoever writes
/// it first; each write puts the recipient's `to` into that text. Changing
/// the element ([`Stanza::el_mut`]) detaches the copy from the others
/// (copy on write) and forgets the cached text.
#[derive(Debug, Clone)]
pub struct Stanza {
    /// Kind.
    pub kind: StanzaKind,
    /// Sender (stamped by the server; never trusted from a client).
    pub from: Jid,
    /// Recipient, when addressed.
    pub to: Option<Jid>,
    /// The element, without `to` (its `from` attribute kept in sync).
    el: Arc<Element>,
    /// The element serialized with `jabber:client` in scope, without `to`;
    /// shared by every clone until one of them changes the element.
    wire: Arc<OnceLock<(String, usize)>>,
}

/// Why an element could not become a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StanzaParseError {
    /// Not message/presence/iq.
    NotAStanza,
    /// A `to` or `from` that is not a valid JID.
    JidMalformed,
}

impl Stanza {
    /// Wrap an element received from an entity whose address is `from`
    /// (the attribute value is overwritten).
    pub fn from_element(mut el: Element, from: Jid) -> Result<Stanza, StanzaParseError> {
        let kind = StanzaKind::of(el.name()).ok_or(StanzaParseError::NotAStanza)?;
        let to = match el.attr("to") {
            None => None,
            Some(t) => Some(Jid::new(t).map_err(|_| StanzaParseError::JidMalformed)?),
        };
        set_attr(&mut el, "from", from.as_str());
        remove_attr(&mut el, "to");
        Ok(Stanza::wrap(kind, from, to, el))
    }

    /// Build a stanza from an element the server created (its `from` and
    /// `to` attributes are set from `from` and `to`).
    pub fn new(kind: StanzaKind, from: Jid, to: Option<Jid>, mut el: Element) -> Stanza {
        set_attr(&mut el, "from", from.as_str());
        remove_attr(&mut el, "to");
        Stanza::wrap(kind, from, to, el)
    }

    fn wrap(kind: StanzaKind, from: Jid, to: Option<Jid>, el: Element) -> Stanza {
        Stanza {
            kind,
            from,
            to,
            el: Arc::new(el),
            wire: Arc::default(),
        }
    }

    /// The element, without its `to` attribute (read [`Stanza::to`]); see
    /// [`Stanza::to_element`] for the whole stanza as an element.
    pub fn el(&self) -> &Element {
        &self.el
    }

    /// The element, to change it. A copy that shares its element with
    /// others (a fan-out) gets its own element first, and the cached
    /// serialization is forgotten. Setting `to` here has no effect: use
    /// [`Stanza::set_to`].
    pub fn el_mut(&mut self) -> &mut Element {
        match Arc::get_mut(&mut self.wire) {
            Some(w) => {
                w.take();
            }
            None => self.wire = Arc::default(),
        }
        Arc::make_mut(&mut self.el)
    }

    /// The whole stanza as an element, `to` included (for storage, a
    /// carbon's `<forwarded/>`, an archive).
    pub fn to_element(&self) -> Element {
        let mut el = (*self.el).clone();
        if let Some(to) = &self.to {
            set_attr(&mut el, "to", to.as_str());
        }
        el
    }

    /// The whole stanza as an element, `to` included, without a copy when
    /// this is the element's only holder.
    pub fn into_element(self) -> Element {
        let mut el = Arc::try_unwrap(self.el).unwrap_or_else(|shared| (*shared).clone());
        if let Some(to) = &self.to {
            set_attr(&mut el, "to", to.as_str());
        }
        el
    }

    /// Serialize the stanza, `to` included, into `out` where `parent_ns` is
    /// the default namespace in scope (`jabber:client` on a client stream
    /// or, inherited as `jabber:server`, on a server stream; none for a
    /// standalone document). A stanza shared with other copies is
    /// serialized once for all of them; each write adds only its own `to`.
    pub fn write_xml(&self, out: &mut String, parent_ns: &str) {
        let shared = Arc::strong_count(&self.wire) > 1 || self.wire.get().is_some();
        self.write_xml_keeping(out, parent_ns, shared);
    }

    /// [`Stanza::write_xml`], keeping the serialization for the next
    /// writes even when this copy is not shared: for a stanza written
    /// twice on its way (an archive's sent and received sides).
    pub fn write_xml_kept(&self, out: &mut String, parent_ns: &str) {
        self.write_xml_keeping(out, parent_ns, true);
    }

    fn write_xml_keeping(&self, out: &mut String, parent_ns: &str, keep: bool) {
        let to = self.to.as_ref().map(Jid::as_str);
        if !keep || !self.el.has_ns(ns::CLIENT) {
            // Written once: straight into the output.
            write_root(out, &self.el, parent_ns, to);
            return;
        }
        let (wire, to_at) = self.wire.get_or_init(|| {
            let mut s = String::with_capacity(256);
            let at = write_root(&mut s, &self.el, ns::CLIENT, None);
            (s, at)
        });
        // `<name` + (xmlns when the scope differs) + the attributes before
        // `to` + ` to='…'` + the rest.
        let name_end = 1 + self.el.name().len();
        out.push_str(&wire[..name_end]);
        if parent_ns != ns::CLIENT {
            out.push_str(" xmlns='");
            out.push_str(ns::CLIENT);
            out.push('\'');
        }
        out.push_str(&wire[name_end..*to_at]);
        if let Some(to) = to {
            crate::writer::write_attr(out, "to", to);
        }
        out.push_str(&wire[*to_at..]);
    }

    /// Whether this copy shares its element (and its serialization) with
    /// another copy.
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.el) > 1
    }

    /// The `type` attribute.
    pub fn type_attr(&self) -> Option<&str> {
        self.el.attr("type")
    }

    /// The `id` attribute.
    pub fn id(&self) -> Option<&str> {
        self.el.attr("id")
    }

    /// Whether this is an error stanza (which must never be answered with an error).
    pub fn is_error(&self) -> bool {
        self.type_attr() == Some("error")
    }

    /// Change the recipient (the element, shared or not, is untouched: the
    /// recipient is written from this field).
    pub fn set_to(&mut self, to: Option<Jid>) {
        self.to = to;
    }

    /// The bounce for this stanza: same element with swapped addresses, `type='error'`
    /// and the error child (RFC 6120 §8.3.1). `None` for error stanzas.
    /// `error_from` is the entity generating the error (normally the original recipient).
    pub fn error_reply(&self, err: &StanzaError, error_from: Option<Jid>) -> Option<Stanza> {
        if self.is_error() {
            return None;
        }
        let from = error_from.or_else(|| self.to.clone())?;
        let mut el = if self.kind == StanzaKind::Iq {
            // Keep only the request payload is allowed; we send none to stay small.
            Element::bare("iq", ns::CLIENT)
        } else {
            let mut e = (*self.el).clone();
            e.attrs_mut().clear();
            e
        };
        if let Some(id) = self.id() {
            set_attr(&mut el, "id", id);
        }
        if let Some(lang) = self.el.attr_ns(Namespace::xml(), "lang") {
            el.set_attr(Namespace::XML, attr_name("lang"), lang.to_string());
        }
        set_attr(&mut el, "type", "error");
        el.append_child(err.to_element(ns::CLIENT));
        Some(Stanza::new(self.kind, from, Some(self.from.clone()), el))
    }

    /// An IQ result for this IQ request, optionally with a payload.
    pub fn iq_result(&self, payload: Option<Element>) -> Stanza {
        let mut el = Element::bare("iq", ns::CLIENT);
        if let Some(id) = self.id() {
            set_attr(&mut el, "id", id);
        }
        set_attr(&mut el, "type", "result");
        if let Some(p) = payload {
            el.append_child(p);
        }
        let from = self
            .to
            .clone()
            .unwrap_or_else(|| self.from.to_bare().into());
        Stanza::new(StanzaKind::Iq, from, Some(self.from.clone()), el)
    }

    /// The first child element (the IQ payload).
    pub fn payload(&self) -> Option<&Element> {
        self.el.children().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Condition;

    #[test]
    fn stamping_and_errors() {
        let el: Element = "<iq xmlns='jabber:client' type='get' id='x' to='Localhost' from='evil@x'><ping xmlns='urn:xmpp:ping'/></iq>"
            .parse()
            .unwrap();
        let from = Jid::new("a@localhost/r").unwrap();
        let st = Stanza::from_element(el, from.clone()).unwrap();
        assert_eq!(st.el().attr("from"), Some("a@localhost/r"));
        assert_eq!(st.el().attr("to"), None);
        assert_eq!(st.to_element().attr("to"), Some("localhost"));
        let err = st
            .error_reply(&Condition::ServiceUnavailable.into(), None)
            .unwrap();
        assert_eq!(err.to, Some(from));
        assert_eq!(err.el().attr("type"), Some("error"));
        assert_eq!(err.el().attr("id"), Some("x"));
        assert!(
            err.error_reply(&Condition::BadRequest.into(), None)
                .is_none()
        );
        let res = st.iq_result(None);
        assert_eq!(res.el().attr("type"), Some("result"));
        assert_eq!(res.from.as_str(), "localhost");
    }

    fn msg(to: &str) -> Stanza {
        let el: Element = "<message xmlns='jabber:client' type='groupchat' id='m1' xml:lang='en'><body>a &lt; b</body><x xmlns='urn:x' a='1'/></message>"
            .parse()
            .unwrap();
        Stanza::new(
            StanzaKind::Message,
            Jid::new("room@conference.localhost/nick").unwrap(),
            Some(Jid::new(to).unwrap()),
            el,
        )
    }

    fn written(st: &Stanza, scope: &str) -> String {
        let mut out = String::new();
        st.write_xml(&mut out, scope);
        out
    }

    #[test]
    fn a_fan_out_is_serialized_once_and_reads_the_same() {
        let template = msg("a@localhost/r");
        let alone = [written(&template, ns::CLIENT), written(&template, "")];
        assert!(
            template.wire.get().is_none(),
            "an unshared stanza is not cached"
        );
        // Clones for other recipients share the element and its text.
        let mut copies: Vec<Stanza> = ["a@localhost/r", "b@localhost/x'y"]
            .iter()
            .map(|to| {
                let mut c = template.clone();
                c.set_to(Some(Jid::new(to).unwrap()));
                c
            })
            .collect();
        assert!(copies[0].is_shared());
        assert_eq!(written(&copies[0], ns::CLIENT), alone[0]);
        assert_eq!(written(&copies[0], ""), alone[1]);
        assert!(Arc::ptr_eq(&copies[0].wire, &copies[1].wire));
        assert!(copies[1].wire.get().is_some(), "serialized once for all");
        let b = written(&copies[1], ns::CLIENT);
        assert!(
            b.starts_with("<message from='room@conference.localhost/nick' id='m1' to='b@localhost/x&apos;y' type="),
            "{b}"
        );
        // The text parses back to the same stanza, `to` included.
        for scope in [ns::CLIENT, ""] {
            let text = written(&copies[1], scope);
            let text = if scope.is_empty() {
                text
            } else {
                text.replacen("<message", "<message xmlns='jabber:client'", 1)
            };
            let back: Element = text.parse().unwrap();
            assert_eq!(back, copies[1].to_element());
        }
        // A change detaches that copy only.
        copies[1]
            .el_mut()
            .append_child(Element::bare("extra", "urn:y"));
        assert!(!Arc::ptr_eq(&copies[0].wire, &copies[1].wire));
        assert!(copies[1].el().has_child("extra", "urn:y"));
        assert!(!copies[0].el().has_child("extra", "urn:y"));
        assert!(written(&copies[1], ns::CLIENT).contains("<extra xmlns='urn:y'/>"));
        assert_eq!(written(&copies[0], ns::CLIENT), alone[0]);
        assert_eq!(copies[0].clone().into_element(), template.to_element());
    }

    #[test]
    fn a_kept_serialization_serves_the_next_write_until_a_change() {
        let el: Element = "<message xmlns='jabber:client' type='chat'><body>x</body></message>"
            .parse()
            .unwrap();
        let mut st = Stanza::new(
            StanzaKind::Message,
            Jid::new("a@b/r").unwrap(),
            Some(Jid::new("c@d").unwrap()),
            el,
        );
        let whole = "<message xmlns='jabber:client' from='a@b/r' to='c@d' type='chat'><body>x</body></message>";
        let mut first = String::new();
        st.write_xml_kept(&mut first, "");
        assert_eq!(first, whole);
        assert!(st.wire.get().is_some());
        assert_eq!(written(&st, ""), whole);
        st.el_mut().append_child(Element::bare("extra", "urn:y"));
        assert!(st.wire.get().is_none());
        assert!(written(&st, "").contains("<extra xmlns='urn:y'/>"));
    }

    #[test]
    fn a_stanza_out_of_jabber_client_is_written_whole() {
        let el: Element = "<message xmlns='jabber:server'><body>x</body></message>"
            .parse()
            .unwrap();
        let st = Stanza::new(
            StanzaKind::Message,
            Jid::new("a@b").unwrap(),
            Some(Jid::new("c@d").unwrap()),
            el,
        );
        let copy = st.clone();
        assert_eq!(
            written(&copy, ns::CLIENT),
            "<message xmlns='jabber:server' from='a@b' to='c@d'><body>x</body></message>"
        );
    }

    #[test]
    fn bad_jid() {
        let el: Element = "<message xmlns='jabber:client' to='@@'/>".parse().unwrap();
        assert_eq!(
            Stanza::from_element(el, Jid::new("a@b").unwrap()).err(),
            Some(StanzaParseError::JidMalformed)
        );
    }
}

#[cfg(test)]
mod jid_tests {
    use jid::{BareJid, FullJid, Jid};

    #[test]
    fn normalisation() {
        let j = Jid::new("Alice@LocalHost/Phone").unwrap();
        assert_eq!(j.as_str(), "alice@localhost/Phone");
        assert_eq!(j.to_bare().as_str(), "alice@localhost");
        let f = FullJid::new("bob@example.test/a/b").unwrap();
        assert_eq!(f.resource().as_str(), "a/b");
        assert!(BareJid::new("localhost").unwrap().node().is_none());
    }

    #[test]
    fn invalid() {
        for bad in [
            "",
            "@localhost",
            "a@",
            "a@b/",
            "a@@b",
            &format!("{}@x", "n".repeat(1024)),
            "a b@c",
        ] {
            assert!(Jid::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(FullJid::new("a@b").is_err());
        assert!(BareJid::new("a@b/c").is_err());
    }
}
