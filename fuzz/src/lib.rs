//! The checks behind Palaver's fuzz targets (`fuzz_targets/*.rs` are
//! one-line wrappers around these functions).
//!
//! Every check panics (which libFuzzer reports as a crash) when Palaver
//! panics or when one of the invariants written next to it fails.

use palaver_proto::error::StreamErrorCondition;
use palaver_proto::framer::{Frame, Framer, Limits};
use palaver_proto::sasl::{
    ChannelBindingType, ChannelBindings, ScramClient, ScramCredentials, ScramHash, ScramServer,
    decode_sasl_payload, encode_sasl_payload, parse_plain,
};
use palaver_proto::stanza::{Stanza, StanzaKind, StanzaParseError, set_attr};
use palaver_proto::{BareJid, Element, FullJid, Jid, ns, writer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------------------
// Heap accounting
// ---------------------------------------------------------------------------

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts live heap bytes and their peak, so a
/// target can assert that memory stays bounded whatever the input size.
/// Targets install it with `#[global_allocator]`.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; only counters are
// updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

fn grow(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// Starts a measurement: the peak is reset to the bytes live now, which are
/// returned.
pub fn start_measuring() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// Highest live heap bytes since [`start_measuring`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Framer
// ---------------------------------------------------------------------------

/// Small limits, so that inputs of a few KiB reach them.
pub const SMALL: Limits = Limits {
    max_stanza_bytes: 1024,
    max_depth: 12,
    max_attributes: 8,
};

/// Heap the framer may hold for [`SMALL`] limits when it is fed at most
/// 64 bytes per call, whatever the stream length: the element tree of one
/// stanza (a 4-byte `<a/>` becomes an element of about 200 bytes), the
/// parser's buffers and a constant. Within one call `rxml` parses
/// everything it is given before the framer can check its limits, so a
/// caller passing a large slice at once lets it hold heap proportional to
/// that slice (at most [`PER_CHUNK_BYTE`] per byte): the c2s loop passes
/// reads of `READ_CHUNK` bytes, BOSH and WebSocket a body capped by their
/// size limits.
pub const FRAMER_HEAP_BOUND: usize = 160 * 1024;

/// Heap per byte of one `next_frame` call's input (see [`FRAMER_HEAP_BOUND`]).
pub const PER_CHUNK_BYTE: usize = 16;

/// The default stream header used when re-parsing serialized elements.
pub const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// What a feeding produced: frames rendered as text, and the final error.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// One line per frame.
    pub frames: Vec<String>,
    /// The error that ended the stream, if any.
    pub error: Option<StreamErrorCondition>,
}

fn render(frame: &Frame) -> String {
    match frame {
        Frame::Open(h) => format!("open {h:?}"),
        Frame::Element(el) => writer::to_string(el, ns::CLIENT),
        Frame::Close => "close".to_owned(),
    }
}

/// Chunk lengths 1..=64 from a xorshift sequence seeded by `seed`; seed 0
/// feeds everything at once. An iterator, so that the harness itself
/// allocates nothing while the heap is measured.
fn chunks(data: &[u8], seed: u8) -> impl Iterator<Item = &[u8]> {
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if seed == 0 {
            rest.len()
        } else {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 64 + 1) as usize
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        rest = b;
        Some(a)
    })
}

/// Feeds `data` in the chunks of `seed`, calling `each` on every frame.
fn feed(
    limits: Limits,
    data: &[u8],
    seed: u8,
    mut each: impl FnMut(Frame),
) -> Option<StreamErrorCondition> {
    let mut f = Framer::new(limits);
    for chunk in chunks(data, seed) {
        let mut d = chunk;
        loop {
            let before = d.len();
            match f.next_frame(&mut d) {
                Ok(Some(frame)) => each(frame),
                Ok(None) if d.is_empty() || d.len() == before => break,
                Ok(None) => {}
                Err(e) => {
                    // Errors are final.
                    let mut more: &[u8] = b"<presence/>";
                    assert!(f.next_frame(&mut more).is_err(), "error not sticky");
                    return Some(e.condition);
                }
            }
        }
    }
    None
}

/// Parses one serialized element after [`HEADER`], with generous limits.
fn reparse(text: &str, depth: usize) -> Element {
    let limits = Limits {
        max_stanza_bytes: text.len() + 4096,
        max_depth: depth,
        max_attributes: 1024,
    };
    let mut f = Framer::new(limits);
    let mut hdr = HEADER.as_bytes();
    while let Ok(Some(_)) = f.next_frame(&mut hdr) {}
    let mut d = text.as_bytes();
    match f.next_frame(&mut d) {
        Ok(Some(Frame::Element(el))) => el,
        other => panic!("serialized element {text:?} does not parse back: {other:?}"),
    }
}

/// Serialization round trip: what the writer produces parses back to an
/// element that serializes identically.
pub fn assert_round_trip(el: &Element, parent_ns: &str, depth: usize) {
    let text = writer::to_string(el, parent_ns);
    // The header's default namespace is jabber:client; wrap when it differs.
    let again = if parent_ns == ns::CLIENT {
        reparse(&text, depth)
    } else {
        let wrapped = writer::to_string(el, ns::CLIENT);
        reparse(&wrapped, depth)
    };
    assert_eq!(
        writer::to_string(&again, parent_ns),
        text,
        "serialization round trip changed the element"
    );
}

/// The stream framer: arbitrary bytes in arbitrary chunkings.
///
/// Input: `[chunk seed] [repeat] prefix [NUL body]`; the stream is
/// `prefix` followed by `body` repeated `repeat × 16` times (up to 1 MiB), so
/// small inputs reach the limits. Checks: no panic; errors are sticky; the
/// frames and the error do not depend on the chunking; heap stays below
/// [`FRAMER_HEAP_BOUND`] whatever the stream length; every element
/// serializes and parses back to itself.
pub fn framer(data: &[u8]) {
    let [seed, repeat, payload @ ..] = data else {
        return;
    };
    let stream: Vec<u8> = match payload.iter().position(|b| *b == 0) {
        Some(i) if *repeat > 0 => {
            let (prefix, body) = (&payload[..i], &payload[i + 1..]);
            let times = (usize::from(*repeat) * 16).min((1 << 20) / body.len().max(1));
            let mut s = prefix.to_vec();
            for _ in 0..times {
                s.extend_from_slice(body);
            }
            s
        }
        _ => payload.to_vec(),
    };

    // Bounded memory: frames are dropped as soon as they are produced.
    let base = start_measuring();
    feed(SMALL, &stream, seed | 1, drop);
    let used = peak().saturating_sub(base);
    assert!(
        used <= FRAMER_HEAP_BOUND,
        "framer held {used} bytes of heap for a {}-byte stream fed in small chunks",
        stream.len()
    );
    let base = start_measuring();
    feed(SMALL, &stream, 0, drop);
    let used = peak().saturating_sub(base);
    assert!(
        used <= FRAMER_HEAP_BOUND + PER_CHUNK_BYTE * stream.len(),
        "framer held {used} bytes of heap for a {}-byte stream fed at once",
        stream.len()
    );

    // Chunking does not change the outcome; elements round-trip.
    let mut whole = Outcome {
        frames: Vec::new(),
        error: None,
    };
    whole.error = feed(SMALL, &stream, 0, |f| {
        if let Frame::Element(el) = &f {
            assert_round_trip(el, ns::CLIENT, SMALL.max_depth + 1);
        }
        whole.frames.push(render(&f));
    });
    if *seed != 0 {
        let mut chunked = Outcome {
            frames: Vec::new(),
            error: None,
        };
        chunked.error = feed(SMALL, &stream, *seed, |f| chunked.frames.push(render(&f)));
        assert_eq!(whole, chunked, "outcome depends on the chunking");
    }
}

// ---------------------------------------------------------------------------
// SASL
// ---------------------------------------------------------------------------

/// PLAIN and the base64 transport encoding. Checks: no panic; a parsed
/// PLAIN message rebuilds to the same bytes; decode∘encode is the identity;
/// whatever decodes re-encodes and decodes to the same bytes.
pub fn sasl(data: &[u8]) {
    if let Ok((authzid, authcid, password)) = parse_plain(data) {
        assert!(!authcid.is_empty() && !password.is_empty());
        assert!(authzid.as_deref() != Some(""));
        let rebuilt = format!("{}\0{authcid}\0{password}", authzid.unwrap_or_default());
        assert_eq!(rebuilt.as_bytes(), data, "PLAIN fields lost bytes");
    }
    let encoded = encode_sasl_payload(data);
    assert_eq!(decode_sasl_payload(&encoded).as_deref(), Ok(data));
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(decoded) = decode_sasl_payload(text)
    {
        let again = decode_sasl_payload(&encode_sasl_payload(&decoded));
        assert_eq!(again.as_deref(), Ok(&decoded[..]));
    }
}

/// The only password the SCRAM target's account has.
pub const PASSWORD: &str = "pencil";
const SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";
const EXPORTER: [u8; 32] = [7; 32];
const END_POINT: [u8; 32] = [9; 32];

fn hash_of(sel: u8) -> ScramHash {
    [ScramHash::Sha1, ScramHash::Sha256, ScramHash::Sha512][usize::from(sel % 3)]
}

fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The SCRAM server. Input: `[selector] [mode] …`; the selector picks the
/// hash, `-PLUS`, the connection's channel bindings and whether the
/// account exists.
///
/// * Mode even — raw: `client-first NUL client-final`. The server must
///   never accept: nobody can forge a proof by chance.
/// * Mode odd — a real [`ScramClient`]: `username NUL password NUL nonce
///   NUL authzid NUL mutation`. The server accepts exactly when the
///   password is right, the binding data is right and the client-final was
///   not altered by the `mutation` (two bytes of position, one XOR mask).
///   Username and authzid survive the saslname escaping.
pub fn scram(data: &[u8]) {
    let [sel, mode, rest @ ..] = data else {
        return;
    };
    let hash = hash_of(*sel);
    let plus = sel & 0x04 != 0;
    let cb = ChannelBindings {
        tls_exporter: (sel & 0x08 != 0).then(|| EXPORTER.to_vec()),
        tls_server_end_point: (sel & 0x10 != 0).then(|| END_POINT.to_vec()),
    };
    let known = sel & 0x20 == 0;
    let creds = ScramCredentials::derive(hash, PASSWORD, b"QSXCR+Q6sek8bf92", 2);
    let creds = known.then_some(&creds);

    if mode & 1 == 0 {
        let (first, last) = split_nul(rest);
        let Ok(mut server) = ScramServer::new_with_nonce(hash, plus, &cb, first, SERVER_NONCE)
        else {
            return;
        };
        let _ = server.server_first(creds);
        let r = server.client_final(last);
        assert!(r.is_err(), "forged SCRAM proof accepted: {rest:?}");
        assert!(
            server.client_final(last).is_err(),
            "exchange completed twice"
        );
        return;
    }

    let (username, rest) = split_nul(rest);
    let (password, rest) = split_nul(rest);
    let (nonce, rest) = split_nul(rest);
    let (authzid, mutation) = split_nul(rest);
    let (Ok(username), Ok(password), Ok(nonce), Ok(authzid)) = (
        std::str::from_utf8(username),
        std::str::from_utf8(password),
        std::str::from_utf8(nonce),
        std::str::from_utf8(authzid),
    ) else {
        return;
    };
    // `ScramClient::with_nonce` trusts its caller: keep to RFC 5802's
    // `printable` (the server refuses other nonces, tested in raw mode).
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return;
    }
    // The client binds to the right data, to wrong data, or not at all.
    let wrong_binding = sel & 0x40 != 0;
    let client_cb = plus.then(|| {
        let (ty, data) = if sel & 0x80 != 0 {
            (ChannelBindingType::TlsServerEndPoint, END_POINT)
        } else {
            (ChannelBindingType::TlsExporter, EXPORTER)
        };
        let data = if wrong_binding { [0; 32] } else { data };
        (ty, data.to_vec())
    });
    let mut client = ScramClient::new(hash, username, password, client_cb).with_nonce(nonce);
    if !authzid.is_empty() {
        client = client.with_authzid(authzid);
    }
    if !plus && wrong_binding {
        client = client.with_gs2_flag_y();
    }
    let first = client.client_first();
    let Ok(mut server) = ScramServer::new_with_nonce(hash, plus, &cb, &first, SERVER_NONCE) else {
        return;
    };
    assert_eq!(server.username(), username, "username changed by escaping");
    assert_eq!(
        server.authzid(),
        (!authzid.is_empty()).then_some(authzid),
        "authzid changed by escaping"
    );
    let server_first = server.server_first(creds);
    let mut last = match client.handle_server_first(&server_first) {
        Ok(m) => m,
        Err(e) => panic!("client refused our server-first {server_first:?}: {e:?}"),
    };
    let mutated = match mutation {
        [a, b, x, ..] if *x != 0 && !last.is_empty() => {
            let at = usize::from(u16::from_le_bytes([*a, *b])) % last.len();
            last[at] ^= x;
            true
        }
        _ => false,
    };
    let result = server.client_final(&last);
    let should_accept = known && password == PASSWORD && !mutated && !(plus && wrong_binding);
    match result {
        Ok(server_final) => {
            assert!(
                should_accept,
                "accepted: password {password:?}, mutated {mutated}, known {known}, plus {plus}, wrong binding {wrong_binding}"
            );
            assert_eq!(client.verify_server_final(&server_final), Ok(()));
        }
        Err(e) => assert!(!should_accept, "right credentials refused: {e:?}"),
    }
}

// ---------------------------------------------------------------------------
// JIDs and stanzas
// ---------------------------------------------------------------------------

/// JID parsing through the `jid` crate and [`Stanza::from_element`].
/// Input: `[kind] jid-text`. Checks: no panic; `Jid`, `BareJid` and
/// `FullJid` agree; normalization is idempotent; a stanza's `to` is the
/// normalized JID; replies to it build and serialize.
pub fn jid(data: &[u8]) {
    let [kind, text @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let parsed = Jid::new(text);
    let bare = BareJid::new(text);
    let full = FullJid::new(text);
    match &parsed {
        Ok(j) => {
            assert_eq!(j.resource().is_some(), full.is_ok(), "Jid/FullJid disagree");
            assert_eq!(j.resource().is_none(), bare.is_ok(), "Jid/BareJid disagree");
            let again = Jid::new(j.as_str());
            assert_eq!(again.as_ref(), Ok(j), "normalization is not idempotent");
            let b = j.to_bare();
            assert_eq!(BareJid::new(b.as_str()).as_ref(), Ok(&b));
        }
        Err(_) => assert!(
            bare.is_err() && full.is_err(),
            "Jid refused what BareJid/FullJid took"
        ),
    }

    let name = ["message", "presence", "iq", "stream"][usize::from(kind % 4)];
    let mut el = Element::bare(name, ns::CLIENT);
    set_attr(&mut el, "to", text);
    set_attr(&mut el, "type", if kind & 4 != 0 { "error" } else { "get" });
    set_attr(&mut el, "id", "fuzz");
    let from = Jid::new("fuzz@localhost/r").ok();
    let Some(from) = from else {
        unreachable!("a valid literal JID")
    };
    match Stanza::from_element(el, from) {
        Ok(st) => {
            assert!(StanzaKind::of(name).is_some());
            let to = st.to.as_ref().map(Jid::as_str);
            assert_eq!(to, parsed.as_ref().ok().map(Jid::as_str));
            assert_eq!(st.to_element().attr("to"), to);
            assert_eq!(st.el().attr("to"), None);
            let err = palaver_proto::error::Condition::ServiceUnavailable.into();
            if let Some(reply) = st.error_reply(&err, None) {
                assert!(!st.is_error());
                assert_round_trip(&reply.to_element(), ns::CLIENT, 8);
            }
            assert_round_trip(&st.iq_result(None).to_element(), ns::CLIENT, 8);
            assert_round_trip(&st.to_element(), ns::CLIENT, 8);
            // A shared copy writes the same text as the stanza alone.
            let (mut alone, mut shared) = (String::new(), String::new());
            st.write_xml(&mut alone, ns::CLIENT);
            let copy = st.clone();
            copy.write_xml(&mut shared, ns::CLIENT);
            assert_eq!(alone, shared);
        }
        Err(StanzaParseError::NotAStanza) => assert_eq!(name, "stream"),
        Err(StanzaParseError::JidMalformed) => assert!(parsed.is_err()),
    }
}

// ---------------------------------------------------------------------------
// BOSH and WebSocket
// ---------------------------------------------------------------------------

const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";

/// BOSH request bodies (`parse_body`). Checks: no panic; what is accepted
/// is one `<body/>` in the httpbind namespace and survives serialization
/// and a second parse.
pub fn bosh(data: &[u8]) {
    let Some(body) = palaver_http::fuzzing::parse_body(data, SMALL) else {
        return;
    };
    assert!(body.is("body", NS_HTTPBIND), "accepted a non-body");
    let text = writer::to_string(&body, "");
    let big = Limits {
        max_stanza_bytes: text.len() + 4096,
        ..SMALL
    };
    let Some(again) = palaver_http::fuzzing::parse_body(text.as_bytes(), big) else {
        panic!("serialized body {text:?} is refused")
    };
    assert_eq!(writer::to_string(&again, ""), text);
}

/// RFC 7395 messages (`parse_message`). Checks: no panic; an accepted
/// message is one element that survives serialization and a second parse.
pub fn websocket(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(el) = palaver_http::fuzzing::parse_message(text, SMALL) else {
        return;
    };
    let out = writer::to_string(&el, ns::CLIENT);
    let big = Limits {
        max_stanza_bytes: out.len() + 4096,
        ..SMALL
    };
    match palaver_http::fuzzing::parse_message(&out, big) {
        Ok(again) => assert_eq!(writer::to_string(&again, ns::CLIENT), out),
        Err(e) => panic!("serialized message {out:?} is refused: {e:?}"),
    }
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// The config loader on arbitrary YAML text, with a fixed environment.
/// Checks: no panic, no hang (libFuzzer's timeout), bounded memory
/// (libFuzzer's `-rss_limit_mb`).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = [
        ("XMPP_DOMAIN", "example.org"),
        ("EJABBERD_MACRO_HOST", "example.net"),
    ];
    if let Ok(c) = palaver_server::Config::parse_with_env(text, &env) {
        for host in &c.hosts {
            let _ = c.host_options(host);
            let _ = c.access_on(host, "register", "user@example.org/r", false);
        }
    }
}
