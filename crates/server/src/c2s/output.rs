//! What a c2s session writes to its client, framed for its transport.
//!
//! The session writes frames — the stream header, top-level elements, the
//! stream's end — and never text for one transport in particular. With
//! [`Framing::Stream`] (TCP, TLS) they are serialized back to back into one
//! reused buffer, exactly the bytes of an XML stream; with
//! [`Framing::Documents`] (WebSocket, BOSH) each element is serialized on
//! its own as a standalone document that declares its namespaces, and the
//! transport frames it (an RFC 7395 message, or a child of a BOSH `<body/>`).
//! Nothing is ever parsed again.

use minidom::Element;
use palaver_proto::error::StreamError;
use palaver_proto::ns;
use palaver_proto::stanza::Stanza;
use palaver_proto::writer::{escape_into, write_element};

/// How a transport frames the session's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One XML stream: a header, elements in the stream's default namespace
    /// `jabber:client`, and `</stream:stream>`.
    Stream,
    /// Standalone documents, one per frame.
    Documents,
}

/// The attributes of the stream header the session sends (besides
/// `version='1.0'` and `xml:lang='en'`, which are fixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpen {
    /// The stream ID.
    pub id: String,
    /// The serving domain.
    pub from: String,
}

/// One unit of [`Framing::Documents`] output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// The stream header.
    Open(StreamOpen),
    /// A top-level element, serialized as a standalone document: stanzas
    /// carry `xmlns='jabber:client'`, stream-namespace elements declare the
    /// `stream` prefix.
    Element(String),
    /// The end of the stream.
    Close,
}

/// Output of a session waiting to be written by its transport.
#[derive(Debug)]
pub enum Output {
    /// [`Framing::Stream`]: the stream's text, appended to one buffer.
    Stream(String),
    /// [`Framing::Documents`]: one frame per header, element or end.
    Documents(Vec<OutFrame>),
}

/// Buffers kept between writes; larger ones are freed after a burst.
const KEEP_BYTES: usize = 512;
const KEEP_FRAMES: usize = 16;

impl Output {
    /// Empty output with this framing (no allocation until written).
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Stream => Output::Stream(String::new()),
            Framing::Documents => Output::Documents(Vec::new()),
        }
    }

    /// The framing.
    pub fn framing(&self) -> Framing {
        match self {
            Output::Stream(_) => Framing::Stream,
            Output::Documents(_) => Framing::Documents,
        }
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        match self {
            Output::Stream(s) => s.is_empty(),
            Output::Documents(f) => f.is_empty(),
        }
    }

    /// The default namespace in scope for a top-level element: `jabber:client`
    /// on a stream, none in a standalone document.
    pub fn scope(&self) -> &'static str {
        match self {
            Output::Stream(_) => ns::CLIENT,
            Output::Documents(_) => "",
        }
    }

    /// The stream text written so far ([`Framing::Stream`]; empty otherwise).
    pub fn text(&self) -> &str {
        match self {
            Output::Stream(s) => s,
            Output::Documents(_) => "",
        }
    }

    /// Take the frames written so far ([`Framing::Documents`]; none otherwise).
    pub fn drain_frames(&mut self) -> impl Iterator<Item = OutFrame> + '_ {
        match self {
            Output::Stream(_) => None,
            Output::Documents(f) => Some(f.drain(..)),
        }
        .into_iter()
        .flatten()
    }

    /// Forget what was written (after the transport wrote it). A small
    /// buffer is kept for the next burst; idle sessions hold little.
    pub fn clear(&mut self) {
        match self {
            Output::Stream(s) if s.capacity() > KEEP_BYTES => *s = String::new(),
            Output::Stream(s) => s.clear(),
            Output::Documents(f) if f.capacity() > KEEP_FRAMES => *f = Vec::new(),
            Output::Documents(f) => f.clear(),
        }
    }

    /// The stream header.
    pub fn open(&mut self, id: &str, from: &str) {
        match self {
            Output::Stream(s) => {
                s.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='");
                s.push_str(id);
                s.push_str("' from='");
                escape_into(s, from);
                s.push_str("' version='1.0' xml:lang='en'>");
            }
            Output::Documents(f) => f.push(OutFrame::Open(StreamOpen {
                id: id.to_string(),
                from: from.to_string(),
            })),
        }
    }

    /// The end of the stream.
    pub fn close(&mut self) {
        match self {
            Output::Stream(s) => s.push_str("</stream:stream>"),
            Output::Documents(f) => f.push(OutFrame::Close),
        }
    }

    /// A top-level element not in the stream namespace (a stanza, a nonza).
    pub fn element(&mut self, el: &Element) {
        self.element_with(|out, scope| write_element(out, el, scope));
    }

    /// A stanza (serialized once for every copy of a fan-out,
    /// [`Stanza::write_xml`]).
    pub fn stanza(&mut self, st: &Stanza) {
        self.element_with(|out, scope| st.write_xml(out, scope));
    }

    /// A complete top-level element whose text declares its own namespace
    /// (so it reads the same on a stream and standalone).
    pub fn raw(&mut self, xml: &str) {
        self.element_with(|out, _| out.push_str(xml));
    }

    /// A top-level element written by `write`, which gets the buffer and the
    /// default namespace in scope ([`Output::scope`]).
    pub fn element_with(&mut self, write: impl FnOnce(&mut String, &'static str)) {
        match self {
            Output::Stream(s) => write(s, ns::CLIENT),
            Output::Documents(f) => {
                let mut s = String::with_capacity(256);
                write(&mut s, "");
                f.push(OutFrame::Element(s));
            }
        }
    }

    /// `<stream:{name}>` with content written by `write` (which gets the
    /// default namespace in scope inside it).
    pub fn stream_element(&mut self, name: &str, write: impl FnOnce(&mut String, &'static str)) {
        self.element_with(|out, scope| {
            out.push_str("<stream:");
            out.push_str(name);
            if scope.is_empty() {
                out.push_str(" xmlns:stream='");
                out.push_str(ns::STREAM);
                out.push('\'');
            }
            out.push('>');
            write(out, scope);
            out.push_str("</stream:");
            out.push_str(name);
            out.push('>');
        });
    }

    /// `<stream:error>`.
    pub fn stream_error(&mut self, e: &StreamError) {
        self.stream_element("error", |out, _| e.write_children(out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palaver_proto::error::StreamErrorCondition as SC;

    fn write_all(out: &mut Output) {
        out.open("x", "local'host");
        out.stream_element("features", |s, scope| {
            s.push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
            write_element(s, &Element::bare("c", ns::CLIENT), scope);
        });
        let mut iq = Element::bare("iq", ns::CLIENT);
        palaver_proto::stanza::set_attr(&mut iq, "type", "result");
        out.element(&iq);
        out.raw("<r xmlns='urn:xmpp:sm:3'/>");
        out.stream_error(&StreamError::with_text(SC::Conflict, "a<b"));
        out.close();
    }

    #[test]
    fn stream_framing_is_one_xml_stream() {
        let mut out = Output::new(Framing::Stream);
        assert!(out.is_empty());
        write_all(&mut out);
        assert_eq!(
            out.text(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='x' from='local&apos;host' version='1.0' xml:lang='en'>\
             <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><c/></stream:features>\
             <iq type='result'/><r xmlns='urn:xmpp:sm:3'/>\
             <stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a&lt;b</text></stream:error>\
             </stream:stream>"
        );
        assert_eq!(out.drain_frames().count(), 0);
        out.clear();
        assert!(out.is_empty());
    }

    #[test]
    fn document_framing_makes_standalone_elements() {
        let mut out = Output::new(Framing::Documents);
        write_all(&mut out);
        assert_eq!(out.text(), "");
        let frames: Vec<OutFrame> = out.drain_frames().collect();
        assert!(out.is_empty());
        let el = |s: &str| OutFrame::Element(s.to_string());
        assert_eq!(
            frames,
            vec![
                OutFrame::Open(StreamOpen {
                    id: "x".into(),
                    from: "local'host".into()
                }),
                el(
                    "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><c xmlns='jabber:client'/></stream:features>"
                ),
                el("<iq xmlns='jabber:client' type='result'/>"),
                el("<r xmlns='urn:xmpp:sm:3'/>"),
                el(
                    "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a&lt;b</text></stream:error>"
                ),
                OutFrame::Close,
            ]
        );
        // Every element frame is a well-formed document on its own.
        for f in &frames {
            if let OutFrame::Element(s) = f {
                assert!(s.parse::<Element>().is_ok(), "{s}");
            }
        }
    }
}
