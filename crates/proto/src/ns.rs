//! XML namespaces used across the server.

/// RFC 6120 client namespace.
pub const CLIENT: &str = "jabber:client";
/// RFC 6120 server namespace.
pub const SERVER: &str = "jabber:server";
/// Stream namespace.
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// Stream error conditions.
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Stanza error conditions.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// STARTTLS.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Resource binding.
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Legacy session establishment (RFC 3921).
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// XEP-0440 SASL channel-binding type capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0030 disco#info.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030 disco#items.
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0199 ping.
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0092 software version.
pub const VERSION: &str = "jabber:iq:version";
/// XEP-0202 entity time.
pub const TIME: &str = "urn:xmpp:time";
/// XEP-0203 delayed delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// The XML namespace (for `xml:lang`), reserved by Namespaces in XML 1.0
/// §3: it can only be written with the `xml` prefix.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
/// XEP-0004 data forms.
pub const DATA_FORMS: &str = "jabber:x:data";
/// XEP-0059 result set management.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
