//! Reading a XEP-0227 file: XML with locations, `xi:include`, the
//! `<server-data>`/`<host>`/`<user>` structure and credentials. Located
//! errors (`FILE:LINE:COLUMN`) for what makes the file unusable; every other
//! child of a `<user/>` is kept, with its location, for the module that
//! owns it (see [`super::import()`]).

use super::credentials::{ejabberd_scram_password, mechanism_hash, scram_element};
use super::model::{Document, HostData, Item, Location, UserData};
use super::{NS_PIE, NS_PIE_DRAFT, NS_SCRAM, NS_XINCLUDE, PieError};
use minidom::Element;
use palaver_proto::BareJid;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Deepest element nesting accepted in a file.
pub(crate) const MAX_DEPTH: usize = 200;
/// Deepest chain of `xi:include` files.
const MAX_INCLUDE_DEPTH: usize = 8;
/// Longest attribute value, name or text chunk the XML parser takes at once.
const MAX_TOKEN: usize = 1 << 20;
/// The `<user/>` children XEP-0227 itself defines in its namespace, besides
/// credentials: kept for the module that owns them.
const PIE_USER_DATA: &[&str] = &["offline-messages"];

/// A file read by [`read_file`]: its data and what was skipped.
#[derive(Debug)]
pub struct Parsed {
    /// The data.
    pub doc: Document,
    /// Skipped or adjusted data, each with its location.
    pub warnings: Vec<String>,
}

/// An element with the place it starts at; `head` has no children.
#[derive(Debug)]
pub(super) struct Node {
    head: Element,
    content: Vec<Content>,
    at: Location,
}

#[derive(Debug)]
enum Content {
    Text(String),
    Node(Node),
}

impl Node {
    pub(super) fn is(&self, name: &str, ns: &str) -> bool {
        self.head.name() == name && self.head.ns() == ns
    }

    pub(super) fn attr<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.head.attr(name)
    }

    fn describe(&self) -> String {
        let ns = self.head.ns();
        if ns.is_empty() {
            format!("<{}/> (no namespace)", self.head.name())
        } else {
            format!("<{} xmlns='{}'/>", self.head.name(), ns)
        }
    }

    pub(super) fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.content {
            if let Content::Text(t) = c {
                s.push_str(t);
            }
        }
        s
    }

    pub(super) fn children(&self) -> impl Iterator<Item = &Node> {
        self.content.iter().filter_map(|c| match c {
            Content::Node(n) => Some(n),
            Content::Text(_) => None,
        })
    }

    fn into_children(self) -> impl Iterator<Item = Node> {
        self.content.into_iter().filter_map(|c| match c {
            Content::Node(n) => Some(n),
            Content::Text(_) => None,
        })
    }

    fn into_element(self) -> Element {
        let mut el = self.head;
        for c in self.content {
            match c {
                Content::Text(t) => el.append_text_node(t),
                Content::Node(n) => {
                    el.append_child(n.into_element());
                }
            }
        }
        el
    }

    pub(super) fn invalid(&self, msg: impl Into<String>) -> PieError {
        PieError::Invalid {
            at: self.at.clone(),
            msg: msg.into(),
        }
    }
}

/// Byte offset to line and column, for offsets that only grow.
struct Lines<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    line_start: usize,
}

impl Lines<'_> {
    fn at(&mut self, file: &Arc<Path>, offset: usize) -> Location {
        let offset = offset.min(self.bytes.len());
        if offset >= self.pos {
            for (i, b) in self.bytes[self.pos..offset].iter().enumerate() {
                if *b == b'\n' {
                    self.line += 1;
                    self.line_start = self.pos + i + 1;
                }
            }
            self.pos = offset;
        }
        let start = self.line_start.min(offset);
        // Columns count characters, not bytes (UTF-8 continuation bytes are 0b10xxxxxx).
        let column = self.bytes[start..offset]
            .iter()
            .filter(|b| (**b & 0xC0) != 0x80)
            .count()
            + 1;
        Location {
            file: file.clone(),
            line: self.line,
            column,
        }
    }
}

/// Parse a whole document into a located tree.
fn parse_tree(data: &[u8], file: &Arc<Path>) -> Result<Node, PieError> {
    use rxml::{Event, Parse as _, WithOptions as _};
    // A UTF-8 byte order mark is allowed at the very start.
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut lines = Lines {
        bytes: data,
        pos: 0,
        line: 1,
        line_start: 0,
    };
    let opts = rxml::Options {
        max_token_length: MAX_TOKEN,
        comments: rxml::parser::CommentMode::Discard,
        ..rxml::Options::default()
    };
    let mut parser = rxml::Parser::with_options(opts);
    let mut buf = data;
    let mut offset = 0usize;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let ev = match parser.parse(&mut buf, true) {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                let at = lines.at(file, data.len() - buf.len());
                let msg = match e {
                    rxml::error::EndOrError::NeedMoreData => "unexpected end of file".to_string(),
                    rxml::error::EndOrError::Error(e) => format!("not well-formed XML: {e}"),
                };
                return Err(PieError::Invalid { at, msg });
            }
        };
        let start = offset;
        offset += ev.metrics().len();
        match ev {
            Event::XmlDeclaration(..) => {}
            Event::StartElement(_, (ns, name), attrs) => {
                // The whitespace before the root is counted in its event.
                let mut s = start;
                while s < offset.min(data.len()) && data[s].is_ascii_whitespace() {
                    s += 1;
                }
                let at = lines.at(file, s);
                if stack.len() >= MAX_DEPTH {
                    return Err(PieError::Invalid {
                        at,
                        msg: format!("elements nested deeper than {MAX_DEPTH} levels"),
                    });
                }
                let mut head = Element::bare(name.as_str(), ns.as_str());
                *head.attrs_mut() = attrs;
                stack.push(Node {
                    head,
                    content: Vec::new(),
                    at,
                });
            }
            Event::EndElement(_) => {
                let Some(node) = stack.pop() else {
                    return Err(PieError::Invalid {
                        at: lines.at(file, start),
                        msg: "unbalanced end tag".into(),
                    });
                };
                match stack.last_mut() {
                    Some(parent) => parent.content.push(Content::Node(node)),
                    None => root = Some(node),
                }
            }
            Event::Text(_, text) => {
                if let Some(top) = stack.last_mut() {
                    match top.content.last_mut() {
                        Some(Content::Text(t)) => t.push_str(&text),
                        _ => top.content.push(Content::Text(text)),
                    }
                }
            }
        }
    }
    root.ok_or_else(|| PieError::Invalid {
        at: lines.at(file, data.len()),
        msg: "the file has no root element".into(),
    })
}

/// Read and check a XEP-0227 file and every file it includes.
pub fn read_file(path: &Path) -> Result<Parsed, PieError> {
    let data = std::fs::read(path).map_err(|source| PieError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_bytes(&data, path)
}

/// Check a document held in memory; `path` names it in messages and is the
/// base for relative `xi:include` references.
pub fn parse_bytes(data: &[u8], path: &Path) -> Result<Parsed, PieError> {
    let file: Arc<Path> = Arc::from(path);
    let root = parse_tree(data, &file)?;
    let mut r = Reader {
        warnings: Vec::new(),
        includes: vec![canonical(path)],
        hosts: Vec::new(),
        index: HashMap::new(),
    };
    if !(root.is("server-data", NS_PIE) || root.is("server-data", NS_PIE_DRAFT)) {
        let msg = if root.head.name() == "server-data" {
            format!(
                "the root element {} is in the wrong namespace; expected <server-data xmlns='{NS_PIE}'/>",
                root.describe()
            )
        } else {
            format!(
                "expected <server-data xmlns='{NS_PIE}'/> as the root element, found {}",
                root.describe()
            )
        };
        return Err(root.invalid(msg));
    }
    r.server_data(root)?;
    Ok(Parsed {
        doc: Document { hosts: r.hosts },
        warnings: r.warnings,
    })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn is_pie(node: &Node) -> bool {
    let ns = node.head.ns();
    ns == NS_PIE || ns == NS_PIE_DRAFT
}

/// A child after `xi:include` resolution: the node and, for an included
/// file, its path (kept on the include stack while it is processed).
struct Resolved {
    node: Node,
    file: Option<PathBuf>,
}

struct Reader {
    warnings: Vec<String>,
    /// Files being read, outermost first (cycle and depth check).
    includes: Vec<PathBuf>,
    hosts: Vec<HostData>,
    /// Host domain → index in `hosts`.
    index: HashMap<String, usize>,
}

impl Reader {
    fn warn(&mut self, at: &Location, msg: impl fmt::Display) {
        self.warnings.push(format!("{at}: {msg}"));
    }

    /// Replace an `xi:include` by the root of the file it names.
    fn resolve(&mut self, node: Node) -> Result<Resolved, PieError> {
        if !node.is("include", NS_XINCLUDE) {
            return Ok(Resolved { node, file: None });
        }
        let Some(href) = node.attr("href") else {
            return Err(node.invalid("xi:include without an href attribute"));
        };
        if let Some(p) = node.attr("parse")
            && p != "xml"
        {
            return Err(node.invalid(format!("xi:include parse='{p}' is not supported")));
        }
        if node.attr("xpointer").is_some() {
            return Err(node.invalid("xi:include with an xpointer is not supported"));
        }
        let rel = percent_decode(href)
            .ok_or_else(|| node.invalid(format!("xi:include href='{href}' is not a valid URI")))?;
        if rel.is_empty()
            || rel.contains("://")
            || rel.starts_with('/')
            || rel.starts_with('\\')
            || rel.split(['/', '\\']).any(|s| s == "..")
        {
            return Err(node.invalid(format!(
                "xi:include href='{href}' must be a relative path below the including file's directory"
            )));
        }
        let base = node.at.file.parent().unwrap_or(Path::new(""));
        let path = base.join(&rel);
        let canon = canonical(&path);
        if self.includes.contains(&canon) {
            return Err(node.invalid(format!("xi:include of {} includes itself", path.display())));
        }
        if self.includes.len() > MAX_INCLUDE_DEPTH {
            return Err(node.invalid(format!(
                "xi:include nested deeper than {MAX_INCLUDE_DEPTH} files"
            )));
        }
        let data = std::fs::read(&path)
            .map_err(|e| node.invalid(format!("xi:include of {} failed: {e}", path.display())))?;
        let file: Arc<Path> = Arc::from(path.as_path());
        let root = parse_tree(&data, &file)?;
        self.includes.push(canon);
        Ok(Resolved {
            node: root,
            file: Some(path),
        })
    }

    fn done(&mut self, r: &Resolved) {
        if r.file.is_some() {
            self.includes.pop();
        }
    }

    fn server_data(&mut self, root: Node) -> Result<(), PieError> {
        for child in root.into_children() {
            let Resolved { node, file } = self.resolve(child)?;
            if is_pie(&node) && node.head.name() == "host" {
                self.host(node)?;
            } else {
                self.server_data_child(&node)?;
            }
            if file.is_some() {
                self.includes.pop();
            }
        }
        Ok(())
    }

    /// Anything but a `<host/>` under `<server-data/>`.
    fn server_data_child(&mut self, node: &Node) -> Result<(), PieError> {
        if is_pie(node) {
            if node.head.name() != "host" {
                return Err(node.invalid(format!(
                    "unexpected {} in <server-data/> (expected <host/>)",
                    node.describe()
                )));
            }
        } else {
            let at = node.at.clone();
            self.warn(
                &at,
                format!("ignored {}: not part of XEP-0227", node.describe()),
            );
        }
        Ok(())
    }

    fn host(&mut self, node: Node) -> Result<(), PieError> {
        let Some(jid) = node.attr("jid") else {
            return Err(node.invalid("<host/> without a jid attribute"));
        };
        let domain = match BareJid::new(jid) {
            Ok(j) if j.node().is_none() => j.domain().to_string(),
            _ => return Err(node.invalid(format!("<host jid='{jid}'/> is not a domain"))),
        };
        let idx = match self.index.get(&domain) {
            Some(i) => *i,
            None => {
                self.hosts.push(HostData {
                    jid: domain.clone(),
                    users: Vec::new(),
                    at: Some(node.at.clone()),
                });
                self.index.insert(domain.clone(), self.hosts.len() - 1);
                self.hosts.len() - 1
            }
        };
        for child in node.into_children() {
            let r = self.resolve(child)?;
            if is_pie(&r.node) && r.node.head.name() == "user" {
                let user = self.user(&r.node, &domain)?;
                let host = &mut self.hosts[idx];
                if let Some(prev) = host.users.iter().find(|u| u.name == user.name) {
                    let first = prev
                        .at
                        .as_ref()
                        .map(|a| format!(" (first at {a})"))
                        .unwrap_or_default();
                    return Err(r.node.invalid(format!(
                        "user `{}@{domain}` appears twice{first}",
                        user.name
                    )));
                }
                host.users.push(user);
            } else if is_pie(&r.node) {
                return Err(r.node.invalid(format!(
                    "unexpected {} in <host/> (expected <user/>)",
                    r.node.describe()
                )));
            } else {
                let at = r.node.at.clone();
                let d = r.node.describe();
                self.warn(&at, format!("ignored {d}: not part of XEP-0227"));
            }
            self.done(&r);
        }
        Ok(())
    }

    fn user(&mut self, node: &Node, host: &str) -> Result<UserData, PieError> {
        let Some(name) = node.attr("name") else {
            return Err(node.invalid("<user/> without a name attribute"));
        };
        let bare = BareJid::new(&format!("{name}@{host}"))
            .ok()
            .filter(|j| j.node().is_some())
            .ok_or_else(|| {
                node.invalid(format!(
                    "<user name='{name}'/> is not a valid JID localpart"
                ))
            })?;
        let name = bare.node().map(|n| n.to_string()).unwrap_or_default();
        let jid = bare.to_string();
        let mut user = UserData {
            name,
            at: Some(node.at.clone()),
            ..UserData::default()
        };
        let mut scram_mech: BTreeSet<String> = BTreeSet::new();
        match node.attr("password") {
            None | Some("") => {}
            Some(p) => match ejabberd_scram_password(p) {
                Some(Ok((creds, twice))) => {
                    if twice {
                        let at = node.at.clone();
                        self.warn(&at, format!("{jid}: SCRAM values in the password attribute are base64-encoded twice; decoded accordingly"));
                    }
                    scram_mech.insert(creds.hash.name().to_string());
                    user.scram.push(creds);
                }
                Some(Err(msg)) => {
                    return Err(node.invalid(format!(
                        "{jid}: password attribute in ejabberd's scram: form: {msg}"
                    )));
                }
                None => user.password = Some(p.to_string()),
            },
        }
        for child in node.children() {
            // Children are user data; xi:include is resolved at this level only.
            if child.is("include", NS_XINCLUDE) {
                let r = self.resolve(dup(child))?;
                let res = self.user_child(&mut user, &jid, &r.node, &mut scram_mech);
                self.done(&r);
                res?;
            } else {
                self.user_child(&mut user, &jid, child, &mut scram_mech)?;
            }
        }
        if user.password.is_none() && user.scram.is_empty() {
            return Err(node.invalid(format!(
                "{jid} has neither a password attribute nor usable <scram-credentials/>; add one so the account can log in"
            )));
        }
        Ok(user)
    }

    fn user_child(
        &mut self,
        user: &mut UserData,
        jid: &str,
        node: &Node,
        mechs: &mut BTreeSet<String>,
    ) -> Result<(), PieError> {
        let at = node.at.clone();
        if node.is("scram-credentials", NS_SCRAM) {
            let mech = node.attr("mechanism").unwrap_or("");
            let Some(hash) = mechanism_hash(mech) else {
                self.warn(
                    &at,
                    format!("{jid}: ignored SCRAM credentials for mechanism `{mech}`"),
                );
                return Ok(());
            };
            let (creds, twice) = scram_element(node, hash, jid)?;
            if twice {
                self.warn(&at, format!("{jid}: {mech} values are base64-encoded twice (as ejabberd 23.01 writes them); decoded accordingly"));
            }
            if !mechs.insert(hash.name().to_string()) {
                self.warn(
                    &at,
                    format!("{jid}: second set of SCRAM-{hash} credentials ignored"),
                );
                return Ok(());
            }
            user.scram.push(creds);
            return Ok(());
        }
        if is_pie(node) && !PIE_USER_DATA.contains(&node.head.name()) {
            return Err(node.invalid(format!("unexpected {} in <user/>", node.describe())));
        }
        // Module data: checked by the module that owns it, at import.
        user.data.push(Item {
            el: dup(node).into_element(),
            at: Some(at),
        });
        Ok(())
    }
}

/// Deep copy of a node (used for user data, which is kept as elements).
fn dup(node: &Node) -> Node {
    Node {
        head: node.head.clone(),
        content: node
            .content
            .iter()
            .map(|c| match c {
                Content::Text(t) => Content::Text(t.clone()),
                Content::Node(n) => Content::Node(dup(n)),
            })
            .collect(),
        at: node.at.clone(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use palaver_proto::sasl::{ScramCredentials, ScramHash};

    fn parse(xml: &str) -> Result<Parsed, PieError> {
        parse_bytes(xml.as_bytes(), Path::new("test.xml"))
    }

    fn ok(xml: &str) -> Parsed {
        match parse(xml) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(xml: &str) -> String {
        match parse(xml) {
            Ok(p) => panic!("parsed: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn wrap(user: &str) -> String {
        format!(
            "<?xml version='1.0'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n<host jid='example.com'>\n{user}\n</host>\n</server-data>"
        )
    }

    #[test]
    fn module_data_is_kept_with_its_location() {
        let p = ok(&wrap(
            "<user name='Juliet' password='s3crEt'>\n<query xmlns='jabber:iq:roster'/>\n  <vCard xmlns='vcard-temp'><FN>J</FN></vCard><offline-messages/><pubsub xmlns='x'/></user>",
        ));
        let u = &p.doc.hosts[0].users[0];
        assert_eq!(u.name, "juliet");
        assert_eq!(u.password.as_deref(), Some("s3crEt"));
        let at: Vec<String> = u
            .data
            .iter()
            .map(|i| i.at.as_ref().map(|a| a.to_string()).unwrap_or_default())
            .collect();
        assert_eq!(
            at,
            [
                "test.xml:5:1",
                "test.xml:6:3",
                "test.xml:6:47",
                "test.xml:6:66"
            ]
        );
        assert!(u.data[1].el.is("vCard", "vcard-temp"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn scram_credentials_single_double_and_ejabberd_password() {
        let c = ScramCredentials::derive(ScramHash::Sha1, "secret", b"0123456789abcdef", 4096);
        let one = |b: &[u8]| B64.encode(b);
        let two = |b: &[u8]| B64.encode(B64.encode(b));
        for (enc, twice) in [(&one as &dyn Fn(&[u8]) -> String, false), (&two, true)] {
            let user = format!(
                "<user name='a'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><iter-count>4096</iter-count><salt>{}</salt><server-key>{}</server-key><stored-key>{}</stored-key></scram-credentials></user>",
                enc(&c.salt),
                enc(&c.server_key),
                enc(&c.stored_key)
            );
            let p = ok(&wrap(&user));
            let u = &p.doc.hosts[0].users[0];
            assert_eq!(u.scram, std::slice::from_ref(&c));
            assert_eq!(p.warnings.iter().any(|w| w.contains("twice")), twice);
        }
        let pw = format!(
            "scram:{},{},{},4096",
            one(&c.stored_key),
            one(&c.server_key),
            one(&c.salt)
        );
        let p = ok(&wrap(&format!("<user name='a' password='{pw}'/>")));
        assert_eq!(p.doc.hosts[0].users[0].scram, std::slice::from_ref(&c));
        assert_eq!(p.doc.hosts[0].users[0].password, None);
        // A plaintext password that only looks a bit like it stays plaintext.
        let p = ok(&wrap("<user name='a' password='scram:not,really'/>"));
        assert_eq!(
            p.doc.hosts[0].users[0].password.as_deref(),
            Some("scram:not,really")
        );
        // Broken values in that form are errors, not passwords.
        let e = err(&wrap(
            "<user name='a' password='scram:AAAA,AAAA,AAAA,4096'/>",
        ));
        assert!(e.contains("test.xml:4:1") && e.contains("20 bytes"), "{e}");
        // Unknown mechanisms are skipped; a user left without credentials is an error.
        let e = err(&wrap(
            "<user name='a'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA3-512'/></user>",
        ));
        assert!(e.contains("neither a password"), "{e}");
        let e = err(&wrap(
            "<user name='a'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><iter-count>0</iter-count></scram-credentials></user>",
        ));
        assert!(
            e.contains("without <salt/>") || e.contains("iteration"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_located_errors() {
        let e = err("<server-data xmlns='urn:xmpp:pie:0'>\n  <host jid='a'>\n</server-data>");
        assert!(e.starts_with("test.xml:3:"), "{e}");
        assert!(e.contains("not well-formed"), "{e}");
        let e = err("<server-data xmlns='urn:xmpp:pie:1'/>");
        assert!(
            e.contains("test.xml:1:1") && e.contains("wrong namespace"),
            "{e}"
        );
        let e = err("<?xml version='1.0'?>\n\n   <root/>");
        assert!(
            e.contains("test.xml:3:4") && e.contains("expected <server-data"),
            "{e}"
        );
        let e = err("<server-data xmlns='urn:xmpp:pie:0'><host jid='a'>");
        assert!(e.contains("unexpected end") || e.contains("eof"), "{e}");
        let e = err("");
        assert!(e.starts_with("test.xml:1:1"), "{e}");
        let e = err(&wrap("<user password='x'/>"));
        assert!(
            e.contains("test.xml:4:1") && e.contains("without a name"),
            "{e}"
        );
        let e = err(&wrap("<user name='a@b' password='x'/>"));
        assert!(e.contains("not a valid JID"), "{e}");
        let e = err(&wrap(
            "<user name='a' password='x'/><user name='A' password='y'/>",
        ));
        assert!(
            e.contains("appears twice") && e.contains("first at test.xml:4:1"),
            "{e}"
        );
        let e = err(&wrap("<user name='a' password='x'><message/></user>"));
        assert!(
            e.contains("unexpected <message xmlns='urn:xmpp:pie:0'/>"),
            "{e}"
        );
        let e = err("<server-data xmlns='urn:xmpp:pie:0'><host/></server-data>");
        assert!(e.contains("without a jid"), "{e}");
        let e = err(
            "<server-data xmlns='urn:xmpp:pie:0'><x:include xmlns:x='http://www.w3.org/2001/XInclude' href='/etc/passwd'/></server-data>",
        );
        assert!(e.contains("relative path"), "{e}");
        let e = err(
            "<server-data xmlns='urn:xmpp:pie:0'><x:include xmlns:x='http://www.w3.org/2001/XInclude' href='nope-missing.xml'/></server-data>",
        );
        assert!(
            e.contains("nope-missing.xml") && e.contains("failed"),
            "{e}"
        );
        let deep = format!(
            "<server-data xmlns='urn:xmpp:pie:0'>{}",
            "<a>".repeat(MAX_DEPTH + 5)
        );
        assert!(err(&deep).contains("nested deeper"));
        // Columns count characters.
        let e = err(
            "<server-data xmlns='urn:xmpp:pie:0'><host jid='é'><user\u{1}/></host></server-data>",
        );
        assert!(e.starts_with("test.xml:1:"), "{e}");
    }

    #[test]
    fn truncated_or_mangled_files_never_panic() {
        let xml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/piefxis/20261202-003250_example_test.xml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bytes = xml.as_bytes();
        for n in (0..bytes.len()).step_by(7) {
            let _ = parse_bytes(&bytes[..n], Path::new("t.xml"));
        }
        for i in (0..bytes.len()).step_by(13) {
            for b in [b'<', b'>', b'\'', b'&', 0xFF, b'/', 0] {
                let mut m = bytes.to_vec();
                m[i] = b;
                let _ = parse_bytes(&m, Path::new("t.xml"));
            }
        }
    }

    #[test]
    fn includes_are_followed() {
        let dir = std::env::temp_dir().join(format!(
            "palaver-piefxis-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(dir.join("h")).unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"))
        };
        write(
            "main.xml",
            "<server-data xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude'><xi:include href='h%2Ehost.xml'/></server-data>",
        );
        write(
            "h.host.xml",
            "<host xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude' jid='Example.COM'><xi:include href='h/juliet.xml'/></host>",
        );
        write(
            "h/juliet.xml",
            "<user xmlns='urn:xmpp:pie:0' name='Juliet' password='p'>\n<vCard xmlns='vcard-temp'/></user>",
        );
        let p = read_file(&dir.join("main.xml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.doc.hosts[0].jid, "example.com");
        let u = &p.doc.hosts[0].users[0];
        assert_eq!(u.name, "juliet");
        assert!(u.data.iter().any(|i| i.el.is("vCard", "vcard-temp")));
        assert_eq!(
            u.at.as_ref().map(|a| a.file.ends_with("h/juliet.xml")),
            Some(true)
        );
        // Errors in an included file name that file.
        write(
            "h/juliet.xml",
            "<user xmlns='urn:xmpp:pie:0' name='j'>\n<oops></user>",
        );
        let e = read_file(&dir.join("main.xml"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("juliet.xml:2:"), "{e}");
        // A file including itself.
        write(
            "h.host.xml",
            "<host xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude' jid='example.com'><xi:include href='h.host.xml'/></host>",
        );
        let e = read_file(&dir.join("main.xml"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("includes itself"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ejabberd_fixture_parses() {
        let main = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/piefxis/20261202-003250.xml");
        let p = read_file(&main).unwrap_or_else(|e| panic!("{e}"));
        let hosts: Vec<_> = p.doc.hosts.iter().map(|h| h.jid.as_str()).collect();
        assert_eq!(hosts, ["example.test", "plain.test"]);
        let alice = &p.doc.hosts[0].users[0];
        assert_eq!(alice.scram.len(), 1);
        assert!(alice.scram[0].verify_password("alice-pw"));
        let dave = &p.doc.hosts[1].users[0];
        assert_eq!(dave.password.as_deref(), Some("dave pw \"quoted\" <&>"));
    }
}
