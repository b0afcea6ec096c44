//! Incremental XML stream framer (RFC 6120 §4, §11) on top of `rxml`.
//!
//! The framer is fed raw bytes as they arrive and yields [`Frame`]s: the
//! stream header, each complete top-level element (a stanza or a
//! negotiation element) as a `minidom::Element`, and the end of the stream.
//! It enforces the limits an XMPP server needs: bytes per top-level element,
//! nesting depth, attributes per element. Restricted XML (comments,
//! processing instructions, DTDs, entity declarations) is refused by `rxml`.

use crate::error::{StreamError, StreamErrorCondition as C};
use crate::ns;
use minidom::Element;
use rxml::{Event, Parse, Parser, WithOptions};

/// Limits applied by the framer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum bytes of one top-level element (stanza).
    pub max_stanza_bytes: usize,
    /// Maximum nesting depth inside a stanza (the stanza itself is depth 1).
    pub max_depth: usize,
    /// Maximum number of attributes on one element.
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 48,
            max_attributes: 64,
        }
    }
}

/// Attributes of a received stream header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// `to` attribute.
    pub to: Option<String>,
    /// `from` attribute.
    pub from: Option<String>,
    /// `version` attribute.
    pub version: Option<String>,
    /// `xml:lang` attribute.
    pub lang: Option<String>,
    /// `id` attribute.
    pub id: Option<String>,
    /// Element namespace and local name were `http://etherx.jabber.org/streams` / `stream`.
    pub is_stream: bool,
    /// The default namespace declared on the header (`jabber:client`, `jabber:server`…).
    pub default_ns: Option<String>,
}

/// One unit produced by the framer.
#[derive(Debug)]
pub enum Frame {
    /// The stream header was received.
    Open(StreamHeader),
    /// A complete top-level element.
    Element(Element),
    /// The peer closed its stream (`</stream:stream>`).
    Close,
}

/// The framer state machine.
pub struct Framer {
    parser: Parser,
    limits: Limits,
    stack: Vec<Element>,
    opened: bool,
    closed: bool,
    /// Raw bytes of the stream header while it is being received.
    header_raw: Vec<u8>,
    stanza_bytes: usize,
    failed: Option<StreamError>,
}

fn parser_for(limits: &Limits) -> Parser {
    // A single name or attribute value longer than a whole stanza cannot be
    // part of an acceptable stanza.
    Parser::with_options(rxml::Options {
        max_token_length: limits.max_stanza_bytes.clamp(1024, 1 << 20),
        ..Default::default()
    })
}

/// Map an `rxml` error to the RFC 6120 stream error.
fn map_error(e: rxml::Error) -> StreamError {
    match e {
        rxml::Error::RestrictedXml(what) => {
            if what.contains("long") {
                StreamError::with_text(C::PolicyViolation, "token too long")
            } else if what.contains("encoding") {
                StreamError::with_text(C::UnsupportedEncoding, "only UTF-8 is supported")
            } else {
                StreamError::with_text(C::RestrictedXml, format!("restricted XML: {what}"))
            }
        }
        rxml::Error::InvalidUtf8Byte(_) => {
            StreamError::with_text(C::NotWellFormed, "invalid UTF-8")
        }
        other => StreamError::with_text(C::NotWellFormed, other.to_string()),
    }
}

impl Framer {
    /// A framer expecting a stream header.
    pub fn new(limits: Limits) -> Self {
        Framer {
            parser: parser_for(&limits),
            limits,
            stack: Vec::new(),
            opened: false,
            closed: false,
            header_raw: Vec::new(),
            stanza_bytes: 0,
            failed: None,
        }
    }

    /// Restart the stream (after STARTTLS or SASL success): a fresh parser
    /// expecting a new stream header.
    pub fn reset(&mut self) {
        *self = Framer::new(self.limits);
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a partial top-level element is buffered.
    pub fn in_stanza(&self) -> bool {
        !self.stack.is_empty()
    }

    /// Consume bytes from `data` until one frame is complete, or all bytes
    /// are consumed (`Ok(None)`: feed more). Call again with the remaining
    /// slice after each frame. Errors are final.
    pub fn next_frame(&mut self, data: &mut &[u8]) -> Result<Option<Frame>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.next_inner(data);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.stack.clear();
        }
        r
    }

    fn next_inner(&mut self, data: &mut &[u8]) -> Result<Option<Frame>, StreamError> {
        loop {
            if self.closed {
                if data.iter().all(|b| b.is_ascii_whitespace()) {
                    *data = &[];
                    return Ok(None);
                }
                return Err(StreamError::with_text(
                    C::NotWellFormed,
                    "data after stream end",
                ));
            }
            if !self.opened && self.header_raw.is_empty() {
                // Whitespace before the header is skipped (whether it arrives
                // alone or with the header); anything but markup is not XML
                // (e.g. an HTTP request).
                match data.iter().position(|b| !b.is_ascii_whitespace()) {
                    Some(i) if data[i] == b'<' => *data = &data[i..],
                    Some(_) => {
                        return Err(StreamError::with_text(
                            C::NotWellFormed,
                            "expected a stream header",
                        ));
                    }
                    None => {
                        *data = &[];
                        return Ok(None);
                    }
                }
            }
            let before = data.len();
            let start = *data;
            let ev = self.parser.parse(data, false);
            let consumed = before - data.len();
            if !self.opened {
                self.header_raw.extend_from_slice(&start[..consumed]);
                if self.header_raw.len() > self.limits.max_stanza_bytes.min(65_536) {
                    return Err(StreamError::with_text(
                        C::PolicyViolation,
                        "stream header too large",
                    ));
                }
            }
            if self.opened {
                self.stanza_bytes = self.stanza_bytes.saturating_add(consumed);
                if self.stanza_bytes > self.limits.max_stanza_bytes {
                    return Err(StreamError::with_text(
                        C::PolicyViolation,
                        format!("stanza larger than {} bytes", self.limits.max_stanza_bytes),
                    ));
                }
            }
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    self.closed = true;
                    return Ok(None);
                }
                Err(rxml::error::EndOrError::NeedMoreData) => return Ok(None),
                Err(rxml::error::EndOrError::Error(e)) => return Err(map_error(e)),
            };
            match ev {
                Event::XmlDeclaration(..) => {}
                Event::StartElement(_, (ns, name), attrs) => {
                    if ns.as_str() == ns::XML {
                        // `<xml:x/>`: no XMPP element lives there, and it
                        // could only be written again with the `xml`
                        // prefix (the namespace cannot be a default one),
                        // so a peer would refuse it. rxml refuses the
                        // declaration `xmlns='…/XML/1998/namespace'` alike.
                        return Err(StreamError::with_text(
                            C::NotWellFormed,
                            "element in the reserved xml namespace",
                        ));
                    }
                    if !self.opened {
                        self.opened = true;
                        if attrs.len() > self.limits.max_attributes {
                            return Err(StreamError::with_text(
                                C::PolicyViolation,
                                "too many attributes",
                            ));
                        }
                        let mut h = header(&ns, name.as_str(), &attrs);
                        h.default_ns = default_ns(&self.header_raw);
                        self.header_raw = Vec::new();
                        return Ok(Some(Frame::Open(h)));
                    }
                    if attrs.len() > self.limits.max_attributes {
                        return Err(StreamError::with_text(
                            C::PolicyViolation,
                            "too many attributes",
                        ));
                    }
                    if self.stack.len() >= self.limits.max_depth {
                        return Err(StreamError::with_text(
                            C::PolicyViolation,
                            "elements nested too deeply",
                        ));
                    }
                    let mut el = Element::bare(name.as_str(), ns.as_str());
                    *el.attrs_mut() = attrs;
                    self.stack.push(el);
                }
                Event::Text(_, text) => {
                    match self.stack.last_mut() {
                        Some(top) => top.append_text(text),
                        None => self.stanza_bytes = 0,
                    }
                    // Text between top-level elements: whitespace keepalives.
                }
                Event::EndElement(_) => match self.stack.pop() {
                    None => {
                        self.closed = true;
                        return Ok(Some(Frame::Close));
                    }
                    Some(el) => match self.stack.last_mut() {
                        Some(parent) => {
                            parent.append_child(el);
                        }
                        None => {
                            self.stanza_bytes = 0;
                            return Ok(Some(Frame::Element(el)));
                        }
                    },
                },
            }
        }
    }
}

fn header(ns: &rxml::Namespace, name: &str, attrs: &rxml::AttrMap) -> StreamHeader {
    let get = |n: &str| attrs.get(rxml::Namespace::none(), n).cloned();
    StreamHeader {
        to: get("to"),
        from: get("from"),
        version: get("version"),
        id: get("id"),
        lang: attrs.get(rxml::Namespace::xml(), "lang").cloned(),
        is_stream: name == "stream" && ns.as_str() == ns::STREAM,
        default_ns: None,
    }
}

/// The value of the default namespace declaration (`xmlns='…'`) in the raw
/// bytes of a start tag; `rxml` resolves namespaces but does not report them.
fn default_ns(raw: &[u8]) -> Option<String> {
    let mut i = 0;
    while let Some(pos) = raw[i..].windows(5).position(|w| w == b"xmlns") {
        let at = i + pos;
        i = at + 5;
        if at == 0 || !raw[at - 1].is_ascii_whitespace() {
            continue;
        }
        let mut j = i;
        while j < raw.len() && raw[j].is_ascii_whitespace() {
            j += 1;
        }
        if raw.get(j) != Some(&b'=') {
            continue;
        }
        j += 1;
        while j < raw.len() && raw[j].is_ascii_whitespace() {
            j += 1;
        }
        let quote = *raw.get(j)?;
        if quote != b'\'' && quote != b'"' {
            continue;
        }
        let rest = &raw[j + 1..];
        let end = rest.iter().position(|b| *b == quote)?;
        return std::str::from_utf8(&rest[..end]).ok().map(str::to_string);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' xml:lang='en'>";

    fn run(framer: &mut Framer, input: &[u8]) -> Result<Vec<Frame>, StreamError> {
        let mut out = Vec::new();
        let mut data = input;
        while let Some(f) = framer.next_frame(&mut data)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn an_element_in_the_xml_namespace_is_refused() {
        // A child `<xml:x/>` could only be forwarded as
        // `<x xmlns='http://www.w3.org/XML/1998/namespace'/>`, which every
        // XML parser refuses: the recipient's stream would fail.
        let mut f = Framer::new(Limits::default());
        let input = format!("{HDR}<message to='a@b'><xml:x/></message>");
        let e = run(&mut f, input.as_bytes()).unwrap_err();
        assert_eq!(e.condition, C::NotWellFormed);
        let mut f = Framer::new(Limits::default());
        assert!(run(&mut f, b"<xml:stream/>").is_err());
        // The prefix on attributes is what it is for.
        let mut f = Framer::new(Limits::default());
        let input =
            format!("{HDR}<message to='a@b' xml:lang='de'><body xml:lang='fr'>x</body></message>");
        assert_eq!(run(&mut f, input.as_bytes()).unwrap().len(), 2);
    }

    #[test]
    fn header_and_stanzas() {
        let mut f = Framer::new(Limits::default());
        let input = format!(
            "{HDR}<message to='a@b' type='chat'><body>hi &amp; bye</body></message> <presence/></stream:stream>"
        );
        let frames = run(&mut f, input.as_bytes()).unwrap();
        assert_eq!(frames.len(), 4);
        match &frames[0] {
            Frame::Open(h) => {
                assert!(h.is_stream);
                assert_eq!(h.default_ns.as_deref(), Some("jabber:client"));
                assert_eq!(h.to.as_deref(), Some("localhost"));
                assert_eq!(h.version.as_deref(), Some("1.0"));
                assert_eq!(h.lang.as_deref(), Some("en"));
            }
            other => panic!("{other:?}"),
        }
        match &frames[1] {
            Frame::Element(e) => {
                assert!(e.is("message", ns::CLIENT));
                assert_eq!(e.attr("to"), Some("a@b"));
                assert_eq!(
                    e.get_child("body", ns::CLIENT).map(|b| b.text()),
                    Some("hi & bye".into())
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&frames[2], Frame::Element(e) if e.is("presence", ns::CLIENT)));
        assert!(matches!(frames[3], Frame::Close));
    }

    #[test]
    fn byte_by_byte() {
        let mut f = Framer::new(Limits::default());
        let input = format!("{HDR}<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>");
        let mut frames = Vec::new();
        for b in input.as_bytes() {
            let mut data: &[u8] = std::slice::from_ref(b);
            while let Some(fr) = f.next_frame(&mut data).unwrap() {
                frames.push(fr);
            }
        }
        assert_eq!(frames.len(), 2);
        assert!(matches!(&frames[1], Frame::Element(e) if e.has_child("ping", ns::PING)));
    }

    #[test]
    fn reset_after_restart() {
        let mut f = Framer::new(Limits::default());
        run(
            &mut f,
            format!("{HDR}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").as_bytes(),
        )
        .unwrap();
        f.reset();
        let frames = run(&mut f, HDR.as_bytes()).unwrap();
        assert!(matches!(&frames[0], Frame::Open(_)));
    }

    fn err_of(input: &str, limits: Limits) -> StreamError {
        let mut f = Framer::new(limits);
        match run(&mut f, input.as_bytes()) {
            Err(e) => e,
            Ok(frames) => panic!("expected error, got {frames:?}"),
        }
    }

    #[test]
    fn restricted_constructs() {
        let l = Limits::default();
        assert_eq!(
            err_of(&format!("{HDR}<!-- hi -->"), l).condition,
            C::RestrictedXml
        );
        assert_eq!(
            err_of(&format!("{HDR}<?pi x?>"), l).condition,
            C::RestrictedXml
        );
        let dtd = err_of(
            "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream/>",
            l,
        )
        .condition;
        assert!(
            matches!(dtd, C::RestrictedXml | C::NotWellFormed),
            "{dtd:?}"
        );
        assert_eq!(
            err_of(&format!("{HDR}<message><body>&foo;</body></message>"), l).condition,
            C::NotWellFormed
        );
    }

    #[test]
    fn malformed() {
        let l = Limits::default();
        assert_eq!(
            err_of(&format!("{HDR}<message></presence>"), l).condition,
            C::NotWellFormed
        );
        assert_eq!(
            err_of(&format!("{HDR}<a b='1' b='2'/>"), l).condition,
            C::NotWellFormed
        );
        assert_eq!(
            err_of(&format!("{HDR}<x:y/>"), l).condition,
            C::NotWellFormed
        );
        let mut bad = HDR.as_bytes().to_vec();
        bad.extend_from_slice(b"<message><body>\xff\xfe</body></message>");
        let mut f = Framer::new(l);
        let mut data = &bad[..];
        let mut res = Ok(None);
        for _ in 0..10 {
            res = f.next_frame(&mut data);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res.err().map(|e| e.condition), Some(C::NotWellFormed));
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_stanza_bytes: 2000,
            max_depth: 5,
            max_attributes: 3,
        };
        let big = "x".repeat(5000);
        assert_eq!(
            err_of(&format!("{HDR}<message><body>{big}</body></message>"), l).condition,
            C::PolicyViolation
        );
        // Unterminated huge element is cut before it completes.
        assert_eq!(
            err_of(&format!("{HDR}<message><body>{big}"), l).condition,
            C::PolicyViolation
        );
        assert_eq!(
            err_of(&format!("{HDR}<a><b><c><d><e><f/></e></d></c></b></a>"), l).condition,
            C::PolicyViolation
        );
        assert_eq!(
            err_of(&format!("{HDR}<a p='1' q='2' r='3' s='4'/>"), l).condition,
            C::PolicyViolation
        );
        let attrs: String = (0..3000).map(|i| format!(" a{i}='v'")).collect();
        assert_eq!(
            err_of(&format!("{HDR}<a{attrs}"), l).condition,
            C::PolicyViolation
        );
        // Within limits is fine.
        let mut f = Framer::new(l);
        assert_eq!(
            run(
                &mut f,
                format!("{HDR}<a><b><c><d><e/></d></c></b></a>").as_bytes()
            )
            .unwrap()
            .len(),
            2
        );
    }

    /// Found by fuzzing: whitespace before the header was skipped when it
    /// arrived alone but refused by the parser when it arrived with the
    /// header.
    #[test]
    fn whitespace_before_header_in_any_chunking() {
        let input = format!("\r\n  {HDR}<presence/>");
        let whole = run(&mut Framer::new(Limits::default()), input.as_bytes()).unwrap();
        assert_eq!(whole.len(), 2);
        let mut f = Framer::new(Limits::default());
        let mut split = run(&mut f, b"\r\n  ").unwrap();
        split.extend(run(&mut f, format!("{HDR}<presence/>").as_bytes()).unwrap());
        assert_eq!(split.len(), 2);
        assert!(matches!(&whole[0], Frame::Open(h) if h.default_ns.as_deref() == Some(ns::CLIENT)));
    }

    #[test]
    fn error_is_sticky() {
        let mut f = Framer::new(Limits::default());
        assert!(run(&mut f, format!("{HDR}<a></b>").as_bytes()).is_err());
        assert!(run(&mut f, b"<presence/>").is_err());
    }
}
