//! XEP-0227 "Portable Import/Export Format" (PIEFXIS, namespace
//! `urn:xmpp:pie:0`, version 1.1 with its SCRAM credentials extension
//! `urn:xmpp:pie:0#scram`).
//!
//! * [`read_file`] parses a file (following `xi:include` references) into a
//!   [`Document`], checking everything before anything is written: broken
//!   XML, a wrong root namespace, a missing attribute or unusable
//!   credentials are errors with `FILE:LINE:COLUMN`; data Palaver does not
//!   keep (privacy lists, PEP nodes, archives…) and single unusable items
//!   are warnings.
//! * [`import`] writes a [`Document`] through the storage traits only,
//!   account by account (a failed account is rolled back and named).
//! * [`export_host`] reads one host through the storage traits into a
//!   [`Document`]; [`to_xml`] writes it.
//!
//! What a user element carries, both ways:
//!
//! | data | element |
//! |---|---|
//! | credentials | `<scram-credentials xmlns='urn:xmpp:pie:0#scram'>` per hash (export); a plaintext `password` attribute is derived into SCRAM credentials on import |
//! | roster | `<query xmlns='jabber:iq:roster'>` with `subscription`, `ask='subscribe'`, `approved='true'` (RFC 6121 pre-approval), `name`, `<group/>` |
//! | pending inbound subscription requests | `<presence xmlns='jabber:client' type='subscribe'/>` children of the user |
//! | vCard | `<vCard xmlns='vcard-temp'>` |
//! | private XML | `<query xmlns='jabber:iq:private'>` |
//! | offline messages | `<offline-messages>` with `jabber:client` messages carrying a XEP-0203 `<delay/>` |
//! | block list (extension) | `<blocklist xmlns='urn:xmpp:blocking'>` (XEP-0191), ignored by other servers as the XEP allows |
//!
//! Import also understands what other servers write: the pre-1.0 namespace
//! `http://www.xmpp.org/extensions/xep-0227.html#ns`, ejabberd's
//! `password='scram:StoredKey,ServerKey,Salt,IterationCount'` (SCRAM-SHA-1,
//! ejabberd before `scram-credentials` existed) and SCRAM values that are
//! base64-encoded twice (ejabberd 23.01 writes them so).
//!
//! Export limits: last activity (XEP-0012) has no XEP-0227 form and is not
//! exported.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;
use palaver_proto::datetime::{format_datetime, parse_datetime};
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use palaver_proto::stanza::set_attr;
use palaver_proto::{BareJid, Jid, ns};
use palaver_storage::{RosterItem, Storage, StorageError, Subscription};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// XEP-0227 namespace.
pub const NS_PIE: &str = "urn:xmpp:pie:0";
/// Namespace of XEP-0227 before version 1.0 (still read).
pub const NS_PIE_DRAFT: &str = "http://www.xmpp.org/extensions/xep-0227.html#ns";
/// XEP-0227 SCRAM credentials.
pub const NS_SCRAM: &str = "urn:xmpp:pie:0#scram";
/// XInclude.
pub const NS_XINCLUDE: &str = "http://www.w3.org/2001/XInclude";
const NS_ROSTER: &str = "jabber:iq:roster";
const NS_PRIVATE: &str = "jabber:iq:private";
const NS_PRIVACY: &str = "jabber:iq:privacy";
const NS_VCARD: &str = "vcard-temp";
const NS_BLOCKING: &str = "urn:xmpp:blocking";
const NS_LEGACY_DELAY: &str = "jabber:x:delay";

/// Deepest element nesting accepted in a file.
const MAX_DEPTH: usize = 200;
/// Deepest chain of `xi:include` files.
const MAX_INCLUDE_DEPTH: usize = 8;
/// Longest attribute value, name or text chunk the XML parser takes at once.
const MAX_TOKEN: usize = 1 << 20;

/// A place in a file (1-based line and column, in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File as given (or as resolved from an `xi:include`).
    pub file: Arc<Path>,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Why an import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum PieError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a usable XEP-0227 document.
    #[error("{at}: {msg}")]
    Invalid {
        /// Where.
        at: Location,
        /// What.
        msg: String,
    },
    /// Export of a host this configuration does not serve.
    #[error("host `{host}` is not served by this configuration (hosts: {served})")]
    UnknownHost {
        /// The host asked for.
        host: String,
        /// The configured hosts.
        served: String,
    },
    /// Accounts of the file exist already and replacing was not asked for.
    #[error(
        "{} account(s) of the file already exist: {}; nothing was imported (replace them with --force)",
        .accounts.len(),
        .accounts.join(", ")
    )]
    Exists {
        /// `user@host` of each.
        accounts: Vec<String>,
    },
    /// A storage call failed.
    #[error("storage error while {doing}: {source}")]
    Storage {
        /// What was being done.
        doing: String,
        /// The backend error.
        source: StorageError,
    },
    /// The import stopped at one account; the accounts before it were imported.
    #[error(
        "importing {failed} failed ({cause}); {} account(s) before it were imported{}{}",
        .imported.len(),
        if .imported.is_empty() { "" } else { ": " },
        .imported.join(", ")
    )]
    Partial {
        /// `user@host` imported completely.
        imported: Vec<String>,
        /// `user@host` that failed (rolled back when it was new).
        failed: String,
        /// Why.
        cause: Box<PieError>,
    },
}

fn storage(doing: impl Into<String>) -> impl FnOnce(StorageError) -> PieError {
    let doing = doing.into();
    move |source| PieError::Storage { doing, source }
}

// ---------------------------------------------------------------------------
// Data model
// ---------------------------------------------------------------------------

/// The content of a XEP-0227 file.
#[derive(Debug, Clone, Default)]
pub struct Document {
    /// Hosts, in file order.
    pub hosts: Vec<HostData>,
}

/// One `<host/>`.
#[derive(Debug, Clone)]
pub struct HostData {
    /// Domain.
    pub jid: String,
    /// Users, in file order.
    pub users: Vec<UserData>,
    /// Where it was read (none for an export).
    pub at: Option<Location>,
}

/// One `<user/>` and everything Palaver keeps for it.
#[derive(Debug, Clone, Default)]
pub struct UserData {
    /// Localpart (nodeprepped).
    pub name: String,
    /// Plaintext password from the `password` attribute (import only).
    pub password: Option<String>,
    /// SCRAM credentials, one per hash.
    pub scram: Vec<ScramCredentials>,
    /// Roster items.
    pub roster: Vec<RosterItem>,
    /// Pending inbound subscription requests: `(bare JID, presence stanza)`.
    pub pending: Vec<(String, Element)>,
    /// `vcard-temp` vCard.
    pub vcard: Option<Element>,
    /// Private XML elements.
    pub private: Vec<Element>,
    /// Offline messages, oldest first.
    pub offline: Vec<OfflineMessage>,
    /// Blocked JIDs (XEP-0191).
    pub blocklist: Vec<String>,
    /// Where it was read (none for an export).
    pub at: Option<Location>,
}

/// A stored offline message.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineMessage {
    /// The `jabber:client` message, with its `<delay/>`.
    pub stanza: Element,
    /// Receive time, milliseconds since the epoch.
    pub stamp_ms: i64,
}

/// A file read by [`read_file`]: its data and what was skipped.
#[derive(Debug)]
pub struct Parsed {
    /// The data.
    pub doc: Document,
    /// Skipped or adjusted data, each with its location.
    pub warnings: Vec<String>,
}

// ---------------------------------------------------------------------------
// XML tree with locations
// ---------------------------------------------------------------------------

/// An element with the place it starts at; `head` has no children.
#[derive(Debug)]
struct Node {
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
    fn is(&self, name: &str, ns: &str) -> bool {
        self.head.name() == name && self.head.ns() == ns
    }

    fn attr<'a>(&'a self, name: &'a str) -> Option<&'a str> {
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

    fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.content {
            if let Content::Text(t) = c {
                s.push_str(t);
            }
        }
        s
    }

    fn children(&self) -> impl Iterator<Item = &Node> {
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

    fn invalid(&self, msg: impl Into<String>) -> PieError {
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

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

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
        user.roster.sort_by(|a, b| a.jid.cmp(&b.jid));
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
        let name = node.head.name();
        let ns = node.head.ns();
        match (name, ns.as_str()) {
            ("scram-credentials", NS_SCRAM) => {
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
            }
            ("query", NS_ROSTER) => self.roster(user, jid, node),
            ("query", NS_PRIVATE) => self.private(user, jid, node),
            ("vCard", NS_VCARD) => {
                if user.vcard.is_some() {
                    return Err(node.invalid(format!("{jid} has a second vCard")));
                }
                user.vcard = Some(dup(node).into_element());
            }
            ("offline-messages", NS_PIE | NS_PIE_DRAFT) => self.offline(user, jid, node),
            ("presence", ns::CLIENT) => self.presence(user, jid, node),
            ("blocklist", NS_BLOCKING) => {
                for item in node.children() {
                    match item.attr("jid").map(Jid::new) {
                        Some(Ok(j)) if item.is("item", NS_BLOCKING) => {
                            let j = j.to_string();
                            if !user.blocklist.contains(&j) {
                                user.blocklist.push(j);
                            }
                        }
                        _ => self.warn(
                            &item.at,
                            format!("{jid}: ignored block list entry {}", item.describe()),
                        ),
                    }
                }
            }
            ("query", NS_PRIVACY) => self.warn(
                &at,
                format!("{jid}: privacy lists (XEP-0016) are not supported by Palaver; ignored (XEP-0191 block lists are)"),
            ),
            (_, NS_PIE | NS_PIE_DRAFT) => {
                return Err(node.invalid(format!(
                    "unexpected {} in <user/>",
                    node.describe()
                )));
            }
            _ => self.warn(
                &at,
                format!("{jid}: ignored {}: Palaver does not import it", node.describe()),
            ),
        }
        Ok(())
    }

    fn roster(&mut self, user: &mut UserData, jid: &str, node: &Node) {
        for item in node.children() {
            if !item.is("item", NS_ROSTER) {
                self.warn(
                    &item.at,
                    format!("{jid}: ignored {} in the roster", item.describe()),
                );
                continue;
            }
            let Some(contact) = item.attr("jid") else {
                self.warn(&item.at, format!("{jid}: ignored roster item without jid"));
                continue;
            };
            let contact = match BareJid::new(contact) {
                Ok(c) => c.to_string(),
                Err(e) => {
                    self.warn(
                        &item.at,
                        format!("{jid}: ignored roster item `{contact}`: {e}"),
                    );
                    continue;
                }
            };
            let sub = item.attr("subscription").unwrap_or("none");
            let Some(subscription) = Subscription::parse(sub) else {
                self.warn(
                    &item.at,
                    format!("{jid}: ignored roster item {contact} with subscription='{sub}'"),
                );
                continue;
            };
            let mut groups: Vec<String> = item
                .children()
                .filter(|g| g.is("group", NS_ROSTER))
                .map(|g| g.text())
                .filter(|g| !g.is_empty())
                .collect();
            groups.sort();
            groups.dedup();
            let new = RosterItem {
                jid: contact.clone(),
                name: item
                    .attr("name")
                    .filter(|n| !n.is_empty())
                    .map(String::from),
                subscription,
                ask: item.attr("ask") == Some("subscribe"),
                approved: matches!(item.attr("approved"), Some("true" | "1")),
                groups,
            };
            if let Some(old) = user.roster.iter_mut().find(|i| i.jid == contact) {
                self.warn(
                    &item.at,
                    format!("{jid}: roster item {contact} appears twice; the last one is kept"),
                );
                *old = new;
            } else {
                user.roster.push(new);
            }
        }
    }

    fn private(&mut self, user: &mut UserData, jid: &str, node: &Node) {
        for el in node.children() {
            let ns = el.head.ns();
            if ns.is_empty() || matches!(ns.as_str(), ns::CLIENT | ns::SERVER | NS_PRIVATE) {
                self.warn(
                    &el.at,
                    format!(
                        "{jid}: ignored private XML {}: this namespace cannot be stored",
                        el.describe()
                    ),
                );
                continue;
            }
            if let Some(i) = user
                .private
                .iter()
                .position(|p| p.name() == el.head.name() && p.ns() == ns)
            {
                self.warn(
                    &el.at,
                    format!(
                        "{jid}: private XML {} appears twice; the last one is kept",
                        el.describe()
                    ),
                );
                user.private.remove(i);
            }
            user.private.push(dup(el).into_element());
        }
    }

    fn offline(&mut self, user: &mut UserData, jid: &str, node: &Node) {
        let bare = jid;
        for m in node.children() {
            if !m.is("message", ns::CLIENT) {
                self.warn(
                    &m.at,
                    format!(
                        "{jid}: ignored {} in <offline-messages/> (expected jabber:client messages)",
                        m.describe()
                    ),
                );
                continue;
            }
            let from = m.attr("from").map(Jid::new);
            if !matches!(from, Some(Ok(_))) {
                self.warn(
                    &m.at,
                    format!("{jid}: ignored offline message without a valid from"),
                );
                continue;
            }
            let mut el = dup(m).into_element();
            let to_ok = el
                .attr("to")
                .and_then(|t| Jid::new(t).ok())
                .is_some_and(|t| t.to_bare().to_string() == bare);
            if !to_ok {
                set_attr(&mut el, "to", bare.to_string());
            }
            let stamp = el
                .get_child("delay", ns::DELAY)
                .and_then(|d| d.attr("stamp"))
                .and_then(parse_datetime)
                .or_else(|| {
                    el.get_child("x", NS_LEGACY_DELAY)
                        .and_then(|d| d.attr("stamp"))
                        .and_then(parse_legacy_stamp)
                });
            let stamp_ms = match stamp {
                Some(s) => s,
                None => {
                    let now = now_ms();
                    if !el.has_child("delay", ns::DELAY) {
                        let host = bare.rsplit('@').next().unwrap_or(bare);
                        el.append_child(delay_el(host, now));
                    }
                    self.warn(
                        &m.at,
                        format!("{jid}: offline message without a readable delay stamp; stamped with the import time"),
                    );
                    now
                }
            };
            user.offline.push(OfflineMessage {
                stanza: el,
                stamp_ms,
            });
        }
    }

    fn presence(&mut self, user: &mut UserData, jid: &str, node: &Node) {
        if node.attr("type") != Some("subscribe") {
            self.warn(
                &node.at,
                format!(
                    "{jid}: ignored presence of type '{}' (only pending subscribe requests are kept)",
                    node.attr("type").unwrap_or("available")
                ),
            );
            return;
        }
        let from = match node.attr("from").map(Jid::new) {
            Some(Ok(f)) => f.to_bare().to_string(),
            _ => {
                self.warn(
                    &node.at,
                    format!("{jid}: ignored subscription request without a valid from"),
                );
                return;
            }
        };
        let mut el = dup(node).into_element();
        set_attr(&mut el, "from", from.clone());
        set_attr(&mut el, "to", jid.to_string());
        user.pending.retain(|(f, _)| *f != from);
        user.pending.push((from, el));
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

// ---------------------------------------------------------------------------
// SCRAM
// ---------------------------------------------------------------------------

/// `SCRAM-SHA-256` (or its `-PLUS` variant, same credentials) → hash.
fn mechanism_hash(mech: &str) -> Option<ScramHash> {
    let m = mech.strip_suffix("-PLUS").unwrap_or(mech);
    ScramHash::from_name(m.strip_prefix("SCRAM-")?)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(clean.as_bytes()).ok()
}

/// Credentials from base64 stored key, server key and salt; `true` when
/// they were base64-encoded twice (ejabberd 23.01 exports its stored base64
/// text base64-encoded again).
fn scram_values(
    hash: ScramHash,
    iterations: u32,
    stored: &str,
    server: &str,
    salt: &str,
) -> Result<(ScramCredentials, bool), String> {
    let len = hash.output_len();
    let stored1 = b64(stored).ok_or("stored-key is not base64")?;
    let server1 = b64(server).ok_or("server-key is not base64")?;
    let salt1 = b64(salt).ok_or("salt is not base64")?;
    let creds = |stored_key, server_key, salt| ScramCredentials {
        hash,
        salt,
        iterations,
        stored_key,
        server_key,
    };
    if stored1.len() == len && server1.len() == len {
        return Ok((creds(stored1, server1, salt1), false));
    }
    let again = |v: &[u8]| std::str::from_utf8(v).ok().and_then(b64);
    if let (Some(st), Some(sv), Some(sa)) = (again(&stored1), again(&server1), again(&salt1))
        && st.len() == len
        && sv.len() == len
    {
        return Ok((creds(st, sv, sa), true));
    }
    Err(format!(
        "stored-key and server-key must be {len} bytes for SCRAM-{hash} (found {} and {})",
        stored1.len(),
        server1.len()
    ))
}

fn iterations(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "iteration count `{}` is not a positive integer",
            s.trim()
        )),
    }
}

fn scram_element(
    node: &Node,
    hash: ScramHash,
    jid: &str,
) -> Result<(ScramCredentials, bool), PieError> {
    let one = |name: &str| -> Result<String, PieError> {
        let mut it = node.children().filter(|c| c.is(name, NS_SCRAM));
        match (it.next(), it.next()) {
            (Some(c), None) => Ok(c.text()),
            (None, _) => {
                Err(node.invalid(format!("{jid}: <scram-credentials/> without <{name}/>")))
            }
            (Some(_), Some(c)) => Err(c.invalid(format!(
                "{jid}: <scram-credentials/> with a second <{name}/>"
            ))),
        }
    };
    let iter = iterations(&one("iter-count")?).map_err(|m| node.invalid(format!("{jid}: {m}")))?;
    scram_values(
        hash,
        iter,
        &one("stored-key")?,
        &one("server-key")?,
        &one("salt")?,
    )
    .map_err(|m| node.invalid(format!("{jid}: {m}")))
}

/// ejabberd's `password='scram:StoredKey,ServerKey,Salt,IterationCount'`
/// (SCRAM-SHA-1). `None` when the value does not have that form (then it is
/// a plaintext password).
type ScramPassword = Result<(ScramCredentials, bool), String>;

fn ejabberd_scram_password(p: &str) -> Option<ScramPassword> {
    let rest = p.strip_prefix("scram:")?;
    let parts: Vec<&str> = rest.split(',').collect();
    let [stored, server, salt, iter] = parts[..] else {
        return None;
    };
    if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(iterations(iter).and_then(|n| scram_values(ScramHash::Sha1, n, stored, server, salt)))
}

// ---------------------------------------------------------------------------
// Time (XEP-0082)
// ---------------------------------------------------------------------------

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// XEP-0091 legacy stamp `CCYYMMDDThh:mm:ss` (UTC).
fn parse_legacy_stamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once('T')?;
    if date.len() != 8 || !date.is_ascii() {
        return None;
    }
    parse_datetime(&format!(
        "{}-{}-{}T{}Z",
        &date[..4],
        &date[4..6],
        &date[6..],
        time
    ))
}

fn delay_el(host: &str, ms: i64) -> Element {
    let mut delay = Element::bare("delay", ns::DELAY);
    set_attr(&mut delay, "from", host.to_string());
    set_attr(&mut delay, "stamp", format_datetime(ms));
    delay
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

fn text_el(name: &str, ns: &str, text: impl Into<String>) -> Element {
    Element::builder(name, ns).append(text.into()).build()
}

fn user_element(u: &UserData) -> Element {
    let mut el = Element::bare("user", NS_PIE);
    set_attr(&mut el, "name", u.name.clone());
    if let Some(p) = &u.password {
        set_attr(&mut el, "password", p.clone());
    }
    for c in &u.scram {
        let mut s = Element::bare("scram-credentials", NS_SCRAM);
        set_attr(&mut s, "mechanism", format!("SCRAM-{}", c.hash.name()));
        s.append_child(text_el("iter-count", NS_SCRAM, c.iterations.to_string()));
        s.append_child(text_el("salt", NS_SCRAM, B64.encode(&c.salt)));
        s.append_child(text_el("server-key", NS_SCRAM, B64.encode(&c.server_key)));
        s.append_child(text_el("stored-key", NS_SCRAM, B64.encode(&c.stored_key)));
        el.append_child(s);
    }
    if !u.roster.is_empty() {
        let mut q = Element::bare("query", NS_ROSTER);
        for it in &u.roster {
            let mut i = Element::bare("item", NS_ROSTER);
            set_attr(&mut i, "jid", it.jid.clone());
            if let Some(n) = &it.name {
                set_attr(&mut i, "name", n.clone());
            }
            set_attr(&mut i, "subscription", it.subscription.as_str());
            if it.ask {
                set_attr(&mut i, "ask", "subscribe");
            }
            if it.approved {
                set_attr(&mut i, "approved", "true");
            }
            for g in &it.groups {
                i.append_child(text_el("group", NS_ROSTER, g.clone()));
            }
            q.append_child(i);
        }
        el.append_child(q);
    }
    for (_, p) in &u.pending {
        el.append_child(p.clone());
    }
    if let Some(v) = &u.vcard {
        el.append_child(v.clone());
    }
    if !u.private.is_empty() {
        let mut q = Element::bare("query", NS_PRIVATE);
        for p in &u.private {
            q.append_child(p.clone());
        }
        el.append_child(q);
    }
    if !u.offline.is_empty() {
        let mut o = Element::bare("offline-messages", NS_PIE);
        for m in &u.offline {
            o.append_child(m.stanza.clone());
        }
        el.append_child(o);
    }
    if !u.blocklist.is_empty() {
        let mut b = Element::bare("blocklist", NS_BLOCKING);
        for j in &u.blocklist {
            let mut i = Element::bare("item", NS_BLOCKING);
            set_attr(&mut i, "jid", j.clone());
            b.append_child(i);
        }
        el.append_child(b);
    }
    el
}

/// The document as XEP-0227 XML (one file, one user per line).
pub fn to_xml(doc: &Document) -> String {
    let mut out = String::from("<?xml version='1.0' encoding='UTF-8'?>\n");
    out.push_str("<server-data xmlns='");
    out.push_str(NS_PIE);
    out.push_str("'>\n");
    for h in &doc.hosts {
        out.push_str("  <host jid='");
        palaver_proto::writer::escape_into(&mut out, &h.jid);
        out.push_str("'>\n");
        for u in &h.users {
            out.push_str("    ");
            palaver_proto::writer::write_element(&mut out, &user_element(u), NS_PIE);
            out.push('\n');
        }
        out.push_str("  </host>\n");
    }
    out.push_str("</server-data>\n");
    out
}

// ---------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------

/// What an export contains.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Accounts.
    pub accounts: usize,
    /// Roster items.
    pub roster_items: usize,
    /// Pending inbound subscription requests.
    pub pending: usize,
    /// vCards.
    pub vcards: usize,
    /// Private XML elements.
    pub private: usize,
    /// Offline messages.
    pub offline: usize,
    /// Block list entries.
    pub blocked: usize,
    /// Stored data that could not be read and was left out.
    pub warnings: Vec<String>,
}

fn parse_stored(xml: &str) -> Result<Element, String> {
    xml.parse::<Element>().map_err(|e| e.to_string())
}

/// Read every account of `host` through the storage traits.
pub async fn export_host(
    storage: &Storage,
    host: &str,
) -> Result<(Document, ExportReport), PieError> {
    let mut rep = ExportReport::default();
    let mut users = Vec::new();
    let names = storage
        .accounts
        .list_accounts(host)
        .await
        .map_err(storage_err(format!("listing the accounts of {host}")))?;
    for name in names {
        let jid = format!("{name}@{host}");
        let mut u = UserData {
            name: name.clone(),
            ..UserData::default()
        };
        for hash in ScramHash::ALL {
            if let Some(c) = storage
                .accounts
                .credentials(host, &name, hash)
                .await
                .map_err(storage_err(format!("reading the credentials of {jid}")))?
            {
                u.scram.push(c);
            }
        }
        if u.scram.is_empty() {
            rep.warnings.push(format!(
                "{jid} has no credentials; it is exported without any"
            ));
        }
        let (_, roster) = storage
            .roster
            .roster(host, &name)
            .await
            .map_err(storage_err(format!("reading the roster of {jid}")))?;
        rep.roster_items += roster.len();
        u.roster = roster;
        for (from, xml) in storage
            .roster
            .pending_in(host, &name)
            .await
            .map_err(storage_err(format!(
                "reading the subscription requests of {jid}"
            )))?
        {
            match parse_stored(&xml) {
                Ok(mut el) if el.is("presence", ns::CLIENT) => {
                    set_attr(&mut el, "from", from.clone());
                    set_attr(&mut el, "to", jid.clone());
                    set_attr(&mut el, "type", "subscribe");
                    u.pending.push((from, el));
                }
                _ => {
                    // Keep the request itself even when the stanza is unreadable.
                    let mut el = Element::bare("presence", ns::CLIENT);
                    set_attr(&mut el, "from", from.clone());
                    set_attr(&mut el, "to", jid.clone());
                    set_attr(&mut el, "type", "subscribe");
                    u.pending.push((from, el));
                }
            }
        }
        rep.pending += u.pending.len();
        if let Some(xml) = storage
            .xml
            .get_xml(host, &name, "vcard")
            .await
            .map_err(storage_err(format!("reading the vCard of {jid}")))?
        {
            match parse_stored(&xml) {
                Ok(v) if v.is("vCard", NS_VCARD) => {
                    u.vcard = Some(v);
                    rep.vcards += 1;
                }
                Ok(v) => rep.warnings.push(format!(
                    "{jid}: stored vCard is a <{}/>; left out",
                    v.name()
                )),
                Err(e) => rep
                    .warnings
                    .push(format!("{jid}: stored vCard is unreadable ({e}); left out")),
            }
        }
        let keys = storage
            .xml
            .xml_keys(host, &name, "private:")
            .await
            .map_err(storage_err(format!("listing the private XML of {jid}")))?;
        for key in keys {
            if let Some(xml) = storage
                .xml
                .get_xml(host, &name, &key)
                .await
                .map_err(storage_err(format!("reading the private XML of {jid}")))?
            {
                match parse_stored(&xml) {
                    Ok(el) => u.private.push(el),
                    Err(e) => rep.warnings.push(format!(
                        "{jid}: stored private XML {key} is unreadable ({e}); left out"
                    )),
                }
            }
        }
        rep.private += u.private.len();
        for (id, xml, stamp) in storage
            .offline
            .offline_messages(host, &name)
            .await
            .map_err(storage_err(format!(
                "reading the offline messages of {jid}"
            )))?
        {
            match parse_stored(&xml) {
                Ok(mut el) if el.is("message", ns::CLIENT) => {
                    if !el.has_child("delay", ns::DELAY) {
                        el.append_child(delay_el(host, stamp));
                    }
                    u.offline.push(OfflineMessage {
                        stanza: el,
                        stamp_ms: stamp,
                    });
                }
                Ok(_) | Err(_) => rep.warnings.push(format!(
                    "{jid}: stored offline message {id} is unreadable; left out"
                )),
            }
        }
        rep.offline += u.offline.len();
        u.blocklist = storage
            .blocks
            .blocklist(host, &name)
            .await
            .map_err(storage_err(format!("reading the block list of {jid}")))?;
        rep.blocked += u.blocklist.len();
        rep.accounts += 1;
        users.push(u);
    }
    Ok((
        Document {
            hosts: vec![HostData {
                jid: host.to_string(),
                users,
                at: None,
            }],
        },
        rep,
    ))
}

fn storage_err(doing: String) -> impl FnOnce(StorageError) -> PieError {
    storage(doing)
}

// ---------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Replace the credentials, roster, subscription requests, vCard,
    /// private XML, offline messages and block list of accounts that exist
    /// already (without it, any existing account stops the import before
    /// anything is written).
    pub force: bool,
    /// PBKDF2 iterations for credentials derived from plaintext passwords.
    pub iterations: u32,
    /// Hosts this server serves; every host of the file must be one of them.
    pub hosts: Vec<String>,
}

/// What an import wrote.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// `user@host` created.
    pub created: Vec<String>,
    /// `user@host` that existed and were replaced (`force`).
    pub replaced: Vec<String>,
    /// Roster items.
    pub roster_items: usize,
    /// Pending inbound subscription requests.
    pub pending: usize,
    /// vCards.
    pub vcards: usize,
    /// Private XML elements.
    pub private: usize,
    /// Offline messages.
    pub offline: usize,
    /// Block list entries.
    pub blocked: usize,
    /// Accounts whose credentials were derived from a plaintext password.
    pub derived: usize,
    /// Notices about what was adjusted while writing.
    pub warnings: Vec<String>,
}

/// Check the hosts and existing accounts, then write every account.
///
/// Nothing is written when a host is not served or (without `force`) an
/// account exists. A storage failure stops at the failing account, which is
/// rolled back when it was new; the error names it and the accounts
/// imported before it.
pub async fn import(
    storage: &Storage,
    doc: &Document,
    opts: &ImportOptions,
) -> Result<ImportReport, PieError> {
    for h in &doc.hosts {
        if !opts.hosts.contains(&h.jid) {
            let msg = format!(
                "host `{}` is not served by this configuration (hosts: {}); add it to `hosts` first",
                h.jid,
                opts.hosts.join(", ")
            );
            return Err(match &h.at {
                Some(at) => PieError::Invalid {
                    at: at.clone(),
                    msg,
                },
                None => PieError::UnknownHost {
                    host: h.jid.clone(),
                    served: opts.hosts.join(", "),
                },
            });
        }
    }
    let mut existing = BTreeSet::new();
    let mut conflicts = Vec::new();
    for h in &doc.hosts {
        for u in &h.users {
            let jid = format!("{}@{}", u.name, h.jid);
            if storage
                .accounts
                .account_exists(&h.jid, &u.name)
                .await
                .map_err(storage_err(format!("checking whether {jid} exists")))?
            {
                existing.insert(jid.clone());
                conflicts.push(jid);
            }
        }
    }
    if !conflicts.is_empty() && !opts.force {
        return Err(PieError::Exists {
            accounts: conflicts,
        });
    }
    let mut rep = ImportReport::default();
    let mut done: Vec<String> = Vec::new();
    for h in &doc.hosts {
        for u in &h.users {
            let jid = format!("{}@{}", u.name, h.jid);
            let replace = existing.contains(&jid);
            let mut one = ImportReport::default();
            match import_user(storage, &h.jid, u, replace, opts, &mut one).await {
                Ok(()) => {
                    if replace {
                        rep.replaced.push(jid.clone());
                    } else {
                        rep.created.push(jid.clone());
                    }
                    rep.roster_items += one.roster_items;
                    rep.pending += one.pending;
                    rep.vcards += one.vcards;
                    rep.private += one.private;
                    rep.offline += one.offline;
                    rep.blocked += one.blocked;
                    rep.derived += one.derived;
                    rep.warnings.append(&mut one.warnings);
                    done.push(jid);
                }
                Err(e) => {
                    let cause = if replace {
                        e
                    } else {
                        match rollback(storage, &h.jid, &u.name).await {
                            Ok(()) => e,
                            Err(r) => PieError::Storage {
                                doing: format!("{e}; rolling {jid} back also failed"),
                                source: r,
                            },
                        }
                    };
                    return Err(PieError::Partial {
                        imported: done,
                        failed: jid,
                        cause: Box::new(cause),
                    });
                }
            }
        }
    }
    Ok(rep)
}

async fn rollback(storage: &Storage, host: &str, user: &str) -> Result<(), StorageError> {
    storage.roster.remove_roster_user(host, user).await?;
    storage.xml.remove_xml_user(host, user, "vcard").await?;
    storage.xml.remove_xml_user(host, user, "private:").await?;
    storage.offline.remove_offline_user(host, user).await?;
    storage.blocks.unblock(host, user, &[]).await?;
    match storage.accounts.delete_account(host, user).await {
        Ok(()) | Err(StorageError::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn import_user(
    storage: &Storage,
    host: &str,
    u: &UserData,
    replace: bool,
    opts: &ImportOptions,
    rep: &mut ImportReport,
) -> Result<(), PieError> {
    let jid = format!("{}@{host}", u.name);
    let name = u.name.as_str();
    let creds = match &u.password {
        Some(p) => {
            rep.derived += 1;
            crate::auth::derive_all(p, opts.iterations)
        }
        None => u.scram.clone(),
    };
    if replace {
        storage
            .accounts
            .set_credentials(host, name, &creds)
            .await
            .map_err(storage_err(format!("replacing the credentials of {jid}")))?;
        let st = |what: &str| storage_err(format!("clearing the {what} of {jid}"));
        storage
            .roster
            .remove_roster_user(host, name)
            .await
            .map_err(st("roster"))?;
        storage
            .xml
            .remove_xml_user(host, name, "vcard")
            .await
            .map_err(st("vCard"))?;
        storage
            .xml
            .remove_xml_user(host, name, "private:")
            .await
            .map_err(st("private XML"))?;
        storage
            .offline
            .remove_offline_user(host, name)
            .await
            .map_err(st("offline messages"))?;
        storage
            .blocks
            .unblock(host, name, &[])
            .await
            .map_err(st("block list"))?;
    } else {
        match storage.accounts.create_account(host, name, &creds).await {
            Ok(()) => {}
            Err(StorageError::Conflict) => {
                return Err(PieError::Exists {
                    accounts: vec![jid],
                });
            }
            Err(e) => return Err(storage_err(format!("creating {jid}"))(e)),
        }
    }
    for item in &u.roster {
        storage
            .roster
            .put_roster_item(host, name, item)
            .await
            .map_err(storage_err(format!("writing the roster of {jid}")))?;
        rep.roster_items += 1;
    }
    for (from, el) in &u.pending {
        let xml = palaver_proto::writer::to_string(el, "");
        storage
            .roster
            .add_pending_in(host, name, from, &xml)
            .await
            .map_err(storage_err(format!(
                "writing the subscription requests of {jid}"
            )))?;
        rep.pending += 1;
    }
    if let Some(v) = &u.vcard {
        let xml = palaver_proto::writer::to_string(v, "");
        storage
            .xml
            .set_xml(host, name, "vcard", &xml)
            .await
            .map_err(storage_err(format!("writing the vCard of {jid}")))?;
        rep.vcards += 1;
    }
    for p in &u.private {
        let key = format!("private:{}:{}", p.ns(), p.name());
        let xml = palaver_proto::writer::to_string(p, "");
        storage
            .xml
            .set_xml(host, name, &key, &xml)
            .await
            .map_err(storage_err(format!("writing the private XML of {jid}")))?;
        rep.private += 1;
    }
    for m in &u.offline {
        let xml = palaver_proto::writer::to_string(&m.stanza, "");
        let stored = storage
            .offline
            .store_offline(host, name, &xml, m.stamp_ms, usize::MAX)
            .await
            .map_err(storage_err(format!(
                "writing the offline messages of {jid}"
            )))?;
        if stored {
            rep.offline += 1;
        } else {
            rep.warnings.push(format!(
                "{jid}: the store refused an offline message; it was not imported"
            ));
        }
    }
    if !u.blocklist.is_empty() {
        storage
            .blocks
            .block(host, name, &u.blocklist)
            .await
            .map_err(storage_err(format!("writing the block list of {jid}")))?;
        rep.blocked += u.blocklist.len();
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

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
    fn xep_examples_parse() {
        let p = ok(&wrap(
            "<user name='juliet' password='s3crEt'>
               <query xmlns='jabber:iq:roster'>
                 <item jid='romeo@montague.net' name='Romeo' subscription='both'><group>Friends</group></item>
                 <item jid='nurse@capulet.com' subscription='from' ask='subscribe' approved='true'/>
               </query>
               <offline-messages>
                 <message xmlns='jabber:client' from='romeo@montague.net/orchard' to='juliet@capulet.com/balcony' type='chat'>
                   <body>Neither, fair saint, if either thee dislike.</body>
                   <delay xmlns='urn:xmpp:delay' from='capulet.com' stamp='1469-07-21T00:32:29Z'>Offline Storage</delay>
                 </message>
               </offline-messages>
               <query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus></query>
               <vCard xmlns='vcard-temp'><FN>Juliet Capulet</FN></vCard>
               <presence xmlns='jabber:client' type='subscribe' id='xk3h1v69' from='romeo@montague.net/x'><nick xmlns='http://jabber.org/protocol/nick'>Romeo</nick></presence>
               <query xmlns='jabber:iq:privacy'><list name='public'/></query>
             </user>",
        ));
        assert_eq!(p.doc.hosts.len(), 1);
        let u = &p.doc.hosts[0].users[0];
        assert_eq!(u.name, "juliet");
        assert_eq!(u.password.as_deref(), Some("s3crEt"));
        assert_eq!(u.roster.len(), 2);
        let nurse = &u.roster[0];
        assert_eq!(nurse.jid, "nurse@capulet.com");
        assert!(nurse.ask && nurse.approved);
        assert_eq!(nurse.subscription, Subscription::From);
        let romeo = &u.roster[1];
        assert_eq!(romeo.name.as_deref(), Some("Romeo"));
        assert_eq!(romeo.groups, ["Friends"]);
        assert_eq!(romeo.subscription, Subscription::Both);
        assert_eq!(u.offline.len(), 1);
        let m = &u.offline[0];
        // 1469-07-21T00:32:29Z
        assert_eq!(format_datetime(m.stamp_ms), "1469-07-21T00:32:29.000Z");
        assert_eq!(m.stanza.attr("to"), Some("juliet@example.com"));
        assert_eq!(u.private.len(), 1);
        assert!(u.private[0].is("exodus", "exodus:prefs"));
        assert!(
            u.vcard
                .as_ref()
                .is_some_and(|v| v.is("vCard", "vcard-temp"))
        );
        assert_eq!(u.pending.len(), 1);
        assert_eq!(u.pending[0].0, "romeo@montague.net");
        assert_eq!(u.pending[0].1.attr("to"), Some("juliet@example.com"));
        assert!(
            u.pending[0]
                .1
                .has_child("nick", "http://jabber.org/protocol/nick")
        );
        // Privacy lists are reported, with their line.
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("privacy") && w.starts_with("test.xml:18:")),
            "{:?}",
            p.warnings
        );
    }

    fn sample() -> Document {
        let creds = crate::auth::derive_all("pw", 4096);
        let mut vcard = Element::bare("vCard", NS_VCARD);
        vcard.append_child(text_el("FN", NS_VCARD, "Alice <&> 'A'"));
        let mut msg: Element =
            "<message xmlns='jabber:client' from='bob@example.com/r' to='alice@example.com' type='chat'><body>hi &amp; bye</body></message>"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
        msg.append_child(delay_el("example.com", 1_700_000_000_123));
        let mut pres = Element::bare("presence", ns::CLIENT);
        set_attr(&mut pres, "from", "carol@example.org");
        set_attr(&mut pres, "to", "alice@example.com");
        set_attr(&mut pres, "type", "subscribe");
        Document {
            hosts: vec![HostData {
                jid: "example.com".into(),
                at: None,
                users: vec![UserData {
                    name: "alice".into(),
                    scram: creds,
                    roster: vec![
                        RosterItem {
                            jid: "bob@example.com".into(),
                            name: Some("Bob \"B\"".into()),
                            subscription: Subscription::Both,
                            ask: false,
                            approved: false,
                            groups: vec!["A".into(), "B & C".into()],
                        },
                        RosterItem {
                            jid: "dave@example.org".into(),
                            name: None,
                            subscription: Subscription::None,
                            ask: true,
                            approved: true,
                            groups: vec![],
                        },
                    ],
                    pending: vec![("carol@example.org".into(), pres)],
                    vcard: Some(vcard),
                    private: vec![
                        "<storage xmlns='storage:bookmarks'><conference jid='room@muc.example.com' autojoin='true'/></storage>"
                            .parse()
                            .unwrap_or_else(|e| panic!("{e}")),
                    ],
                    offline: vec![OfflineMessage {
                        stanza: msg,
                        stamp_ms: 1_700_000_000_123,
                    }],
                    blocklist: vec!["spam@example.net".into()],
                    ..UserData::default()
                }],
            }],
        }
    }

    #[test]
    fn writer_output_reads_back_identically() {
        let doc = sample();
        let xml = to_xml(&doc);
        assert!(xml.starts_with(
            "<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='urn:xmpp:pie:0'>"
        ));
        assert!(
            xml.contains(
                "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-256'>"
            ),
            "{xml}"
        );
        let p = ok(&xml);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let (a, b) = (&doc.hosts[0].users[0], &p.doc.hosts[0].users[0]);
        assert_eq!(p.doc.hosts[0].jid, "example.com");
        assert_eq!(a.name, b.name);
        assert_eq!(b.password, None);
        assert_eq!(a.scram, b.scram);
        assert_eq!(a.roster, b.roster);
        assert_eq!(a.pending, b.pending);
        assert_eq!(a.vcard, b.vcard);
        assert_eq!(a.private, b.private);
        assert_eq!(a.offline, b.offline);
        assert_eq!(a.blocklist, b.blocklist);
        // And the credentials still check the password.
        assert!(b.scram.iter().all(|c| c.verify_password("pw")));
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
        let xml = to_xml(&sample());
        let bytes = xml.as_bytes();
        for n in 0..bytes.len() {
            let _ = parse_bytes(&bytes[..n], Path::new("t.xml"));
        }
        for i in (0..bytes.len()).step_by(3) {
            for b in [b'<', b'>', b'\'', b'&', 0xFF, b'/', 0] {
                let mut m = bytes.to_vec();
                m[i] = b;
                let _ = parse_bytes(&m, Path::new("t.xml"));
            }
        }
    }

    #[test]
    fn skipped_items_are_warnings() {
        let p = ok(&wrap(
            "<user name='a' password='x'>
               <query xmlns='jabber:iq:roster'><item jid='bad@@x'/><item jid='b@x' subscription='remove'/><item jid='c@x' subscription='to'/></query>
               <offline-messages><message xmlns='jabber:client'><body>no from</body></message><message xmlns='jabber:client' from='b@x'><body>no delay</body></message></offline-messages>
               <presence xmlns='jabber:client' type='subscribed' from='c@x'/>
               <query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query>
               <pubsub xmlns='http://jabber.org/protocol/pubsub'/>
             </user>",
        ));
        let u = &p.doc.hosts[0].users[0];
        assert_eq!(u.roster.len(), 1);
        assert_eq!(u.offline.len(), 1);
        assert!(u.offline[0].stanza.has_child("delay", ns::DELAY));
        assert!(u.pending.is_empty() && u.private.is_empty());
        assert_eq!(p.warnings.len(), 7, "{:#?}", p.warnings);
        assert!(p.warnings.iter().all(|w| w.starts_with("test.xml:")));
    }

    #[test]
    fn includes_are_followed() {
        let dir = std::env::temp_dir().join(format!(
            "palaver-piefxis-{}-{}",
            std::process::id(),
            now_ms()
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
        assert!(u.vcard.is_some());
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
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_datetime("2026-12-02T00:31:40.800984Z"),
            parse_datetime("2026-12-02T00:31:40.800Z")
        );
        assert_eq!(
            parse_datetime("2026-12-02T02:31:40+02:00"),
            parse_datetime("2026-12-02T00:31:40Z")
        );
        assert_eq!(
            parse_datetime("2026-12-01T23:01:40-01:30"),
            parse_datetime("2026-12-02T00:31:40Z")
        );
        assert_eq!(
            parse_legacy_stamp("20261202T00:31:40"),
            parse_datetime("2026-12-02T00:31:40Z")
        );
        for bad in [
            "",
            "2026-12-02",
            "2026-13-02T00:00:00Z",
            "2026-12-02T00:00Z",
            "x-y-zT00:00:00Z",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
        for ms in [0, 1_700_000_000_123, -1, -86_400_000 * 365 * 500 + 7] {
            assert_eq!(parse_datetime(&format_datetime(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn ejabberd_fixture_parses() {
        let main = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/piefxis/20261202-003250.xml");
        let p = read_file(&main).unwrap_or_else(|e| panic!("{e}"));
        let hosts: Vec<_> = p.doc.hosts.iter().map(|h| h.jid.as_str()).collect();
        assert_eq!(hosts, ["example.test", "plain.test"]);
        let users = &p.doc.hosts[0].users;
        let alice = &users[0];
        assert_eq!(alice.scram.len(), 1);
        assert!(alice.scram[0].verify_password("alice-pw"));
        assert_eq!(alice.private.len(), 2);
        let carol = &users[2];
        assert_eq!(carol.offline.len(), 2);
        assert_eq!(carol.pending.len(), 2);
        let dave = &p.doc.hosts[1].users[0];
        assert_eq!(dave.password.as_deref(), Some("dave pw \"quoted\" <&>"));
        assert_eq!(dave.roster[0].subscription, Subscription::From);
    }

    /// A roster store that fails for one user, over a real one.
    struct FailFor(Arc<dyn palaver_storage::RosterStore>, &'static str);

    type SResult<T> = palaver_storage::Result<T>;

    #[async_trait::async_trait]
    impl palaver_storage::RosterStore for FailFor {
        async fn roster(&self, h: &str, u: &str) -> SResult<(i64, Vec<RosterItem>)> {
            self.0.roster(h, u).await
        }
        async fn roster_version(&self, h: &str, u: &str) -> SResult<i64> {
            self.0.roster_version(h, u).await
        }
        async fn roster_item(&self, h: &str, u: &str, j: &str) -> SResult<Option<RosterItem>> {
            self.0.roster_item(h, u, j).await
        }
        async fn roster_count(&self, h: &str, u: &str) -> SResult<usize> {
            self.0.roster_count(h, u).await
        }
        async fn put_roster_item(&self, h: &str, u: &str, i: &RosterItem) -> SResult<i64> {
            if u == self.1 {
                return Err(StorageError::Backend("injected failure".into()));
            }
            self.0.put_roster_item(h, u, i).await
        }
        async fn delete_roster_item(&self, h: &str, u: &str, j: &str) -> SResult<i64> {
            self.0.delete_roster_item(h, u, j).await
        }
        async fn add_pending_in(&self, h: &str, u: &str, j: &str, s: &str) -> SResult<()> {
            self.0.add_pending_in(h, u, j, s).await
        }
        async fn remove_pending_in(&self, h: &str, u: &str, j: &str) -> SResult<bool> {
            self.0.remove_pending_in(h, u, j).await
        }
        async fn pending_in(&self, h: &str, u: &str) -> SResult<Vec<(String, String)>> {
            self.0.pending_in(h, u).await
        }
        async fn remove_roster_user(&self, h: &str, u: &str) -> SResult<()> {
            self.0.remove_roster_user(h, u).await
        }
    }

    #[tokio::test]
    async fn a_failing_account_is_rolled_back_and_named() {
        let path = std::env::temp_dir().join(format!(
            "palaver-piefxis-{}-{}.db",
            std::process::id(),
            now_ms()
        ));
        let mut st = Storage::open_sqlite(&path)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        st.roster = Arc::new(FailFor(st.roster.clone(), "bob"));
        let p = ok(&wrap(
            "<user name='alice' password='a'><query xmlns='jabber:iq:roster'><item jid='x@y'/></query></user>
             <user name='bob' password='b'><vCard xmlns='vcard-temp'/><offline-messages><message xmlns='jabber:client' from='x@y'><body>b</body></message></offline-messages><query xmlns='jabber:iq:roster'><item jid='x@y'/></query></user>
             <user name='carol' password='c'/>",
        ));
        let opts = ImportOptions {
            force: false,
            iterations: 4096,
            hosts: vec!["example.com".into()],
        };
        let e = import(&st, &p.doc, &opts).await.map(|_| ()).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(&e, PieError::Partial { imported, failed, .. }
                if imported == &["alice@example.com"] && failed == "bob@example.com"),
            "{msg}"
        );
        assert!(
            msg.contains("injected failure") && msg.contains("alice@example.com"),
            "{msg}"
        );
        let h = "example.com";
        assert!(
            st.accounts
                .account_exists(h, "alice")
                .await
                .unwrap_or(false)
        );
        assert!(!st.accounts.account_exists(h, "bob").await.unwrap_or(true));
        assert!(!st.accounts.account_exists(h, "carol").await.unwrap_or(true));
        assert_eq!(st.xml.get_xml(h, "bob", "vcard").await.ok(), Some(None));
        assert_eq!(st.offline.offline_count(h, "bob").await.ok(), Some(0));
        // Host checks and existing accounts stop before any write.
        let e = import(&st, &p.doc, &opts).await.map(|_| ()).unwrap_err();
        assert!(
            matches!(&e, PieError::Exists { accounts } if accounts == &["alice@example.com"]),
            "{e}"
        );
        let other = ImportOptions {
            hosts: vec!["elsewhere".into()],
            ..opts.clone()
        };
        let e = import(&st, &p.doc, &other).await.map(|_| ()).unwrap_err();
        assert!(
            e.to_string().contains("test.xml:3:1") && e.to_string().contains("not served"),
            "{e}"
        );
        assert!(!st.accounts.account_exists(h, "carol").await.unwrap_or(true));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
