//! The stanza envelope routed through the server.

use crate::error::StanzaError;
use crate::ns;
use jid::Jid;
use minidom::Element;
use rxml::{Namespace, NcName};

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
#[derive(Debug, Clone)]
pub struct Stanza {
    /// Kind.
    pub kind: StanzaKind,
    /// Sender (stamped by the server; never trusted from a client).
    pub from: Jid,
    /// Recipient, when addressed.
    pub to: Option<Jid>,
    /// The full element (its `from`/`to` attributes kept in sync).
    pub el: Element,
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
        if let Some(to) = &to {
            // Normalised form.
            if el.attr("to") != Some(to.as_str()) {
                set_attr(&mut el, "to", to.as_str());
            }
        }
        Ok(Stanza { kind, from, to, el })
    }

    /// Build a stanza from an element the server created (attributes must be set).
    pub fn new(kind: StanzaKind, from: Jid, to: Option<Jid>, mut el: Element) -> Stanza {
        set_attr(&mut el, "from", from.as_str());
        match &to {
            Some(t) => set_attr(&mut el, "to", t.as_str()),
            None => remove_attr(&mut el, "to"),
        }
        Stanza { kind, from, to, el }
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

    /// Change the recipient.
    pub fn set_to(&mut self, to: Option<Jid>) {
        match &to {
            Some(t) => set_attr(&mut self.el, "to", t.as_str()),
            None => remove_attr(&mut self.el, "to"),
        }
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
            let mut e = self.el.clone();
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
        assert_eq!(st.el.attr("from"), Some("a@localhost/r"));
        assert_eq!(st.el.attr("to"), Some("localhost"));
        let err = st
            .error_reply(&Condition::ServiceUnavailable.into(), None)
            .unwrap();
        assert_eq!(err.to, Some(from));
        assert_eq!(err.el.attr("type"), Some("error"));
        assert_eq!(err.el.attr("id"), Some("x"));
        assert!(
            err.error_reply(&Condition::BadRequest.into(), None)
                .is_none()
        );
        let res = st.iq_result(None);
        assert_eq!(res.el.attr("type"), Some("result"));
        assert_eq!(res.from.as_str(), "localhost");
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
