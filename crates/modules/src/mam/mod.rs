//! XEP-0313 Message Archive Management for user archives (`urn:xmpp:mam:2`
//! and `#extended`), with XEP-0359 stanza and origin ids.
//!
//! **What is archived.** One-to-one messages (`chat` and `normal`) with a
//! body, an end-to-end encrypted payload or a `<store/>` hint; never
//! `groupchat` (the room archives), `headline`, errors, carbon copies, or
//! messages with `<no-store/>`/`<no-permanent-store/>`. Both sides of a
//! conversation between local users are archived, each in its own archive:
//!
//! - the **received** side when the router takes a message for a local
//!   account ([`MessageIn`]), whoever sent it and whether or not the
//!   account is online: the server adds `<stanza-id by='user@host'/>`
//!   with the archive id (the client sees it, also in offline messages);
//! - the **sent** side when a local session sends one (the last
//!   [`UserSend`] hook, where its id is taken in the order the account sent
//!   them). Carbon copies are not archived again.
//!
//! Both writes hold the sending client's XEP-0198 ticket: its `<a/>`
//! means the message is in both archives.
//!
//! **Ids.** An archive id is a microsecond timestamp made strictly
//! increasing in the process (and above everything already stored), so
//! date and id order agree and `start`/`end` are id ranges. On the wire it
//! is 16 hex digits and an 8-digit keyed tag (a per-process secret), which
//! lets the module tell its own `stanza-id` (a message routed again after
//! its session ended) from one a sender made up. Any other `stanza-id`
//! claiming to be by the recipient's account is removed (XEP-0359 §4).
//! (`origin-id`s are kept as the sender wrote them and stored.)
//!
//! **Preferences** (§6): `always`, `never` or `roster` by default, with
//! `always`/`never` JID lists; the module option `default` sets the
//! default for accounts that set none. Preferences are cached once read.
//! When an account's preferences are not cached yet, or depend on the
//! roster, the `stanza-id` is added before the decision is made; if the
//! message then turns out not to be archived, that id names nothing (a
//! query for it answers `item-not-found`).
//!
//! **Queries**: `with` (bare: any resource; full: that resource), `start`,
//! `end`, `before-id`, `after-id`, `ids`; XEP-0059 paging forward
//! (`<after/>`) and backward (`<before/>`), `<index/>`, `first`/`last`/
//! `count` and `complete`; `<flip-page/>`; the form (`get`) and the
//! archive's metadata. Pages hold at most 250 messages (50 by default).
//!
//! **Retention**: option `retention_days` (0: forever) deletes older
//! messages hourly. **Account removal** deletes the archive and
//! preferences. **XEP-0227**: the archive is exported and imported as
//! `<archive xmlns='urn:xmpp:pie:0#mam'>` of `<result/>` elements (the
//! form XEP-0227 1.1 gives); imported messages get new ids, in the order of
//! their timestamps, and their spoofable stanza-ids are removed.

pub mod store;

use dashmap::DashMap;
use jid::{BareJid, FullJid, Jid};
use minidom::{Element, Node};
use palaver_proto::datetime::{format_datetime, parse_datetime};
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::forms::{DataForm, Field, FieldType, FormType};
use palaver_proto::ns;
use palaver_proto::rsm::{RsmRequest, RsmResult};
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_proto::writer::write_element;
use palaver_server::hooks::{MessageIn, RemoveUser, SessionBound, UserSend};
use palaver_server::{
    HookAction, HookCx, HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleCx,
    ModuleDef,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use store::{Filter, Item, MamSql, StoredPrefs};

/// XEP-0313 version 2.
pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// `before-id`, `after-id`, `ids` and metadata.
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359.
pub const NS_SID: &str = "urn:xmpp:sid:0";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_HINTS: &str = "urn:xmpp:hints";
const NS_CARBONS: &str = "urn:xmpp:carbons:2";
/// Payloads that are archived without a body (end-to-end encryption,
/// reactions, retractions).
const STORED_PAYLOADS: &[&str] = &[
    "eu.siacs.conversations.axolotl",
    "urn:xmpp:omemo:2",
    "urn:xmpp:openpgp:0",
    "urn:xmpp:reactions:0",
    "urn:xmpp:message-retract:1",
];
/// Messages per page when the client does not say, and at most.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 250;

/// `mod_mam`.
pub struct Mam;

/// `mod_mam` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Mam>();

/// Options of `mod_mam` (ejabberd's names where it has them).
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Archiving default for accounts without preferences:
    /// `always`, `never` or `roster`.
    pub default: String,
    /// Delete messages older than this many days (0: keep forever).
    pub retention_days: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            default: "always".into(),
            retention_days: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Always,
    Never,
    Roster,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "always" => Mode::Always,
            "never" => Mode::Never,
            "roster" => Mode::Roster,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Mode::Always => "always",
            Mode::Never => "never",
            Mode::Roster => "roster",
        }
    }
}

/// An account's preferences.
#[derive(Debug, Clone)]
struct Prefs {
    default: Mode,
    always: Vec<String>,
    never: Vec<String>,
}

/// What the preferences say about one correspondent.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Yes,
    No,
    /// Archived if the correspondent is in the roster.
    IfInRoster,
}

impl Prefs {
    fn verdict(&self, with: &Jid) -> Verdict {
        let (full, bare) = (with.as_str(), bare_of(with));
        let listed = |l: &[String]| l.iter().any(|j| j == full || j == bare);
        if listed(&self.never) {
            return Verdict::No;
        }
        if listed(&self.always) {
            return Verdict::Yes;
        }
        match self.default {
            Mode::Always => Verdict::Yes,
            Mode::Never => Verdict::No,
            Mode::Roster => Verdict::IfInRoster,
        }
    }

    fn from_stored(p: StoredPrefs, fallback: Mode) -> Prefs {
        Prefs {
            default: Mode::parse(&p.default).unwrap_or(fallback),
            always: p.always,
            never: p.never,
        }
    }
}

struct State {
    default: Mode,
    /// Bare JID → preferences read from storage (or the default).
    prefs: DashMap<String, Arc<Prefs>, foldhash::fast::RandomState>,
    /// The archive writer (see [`State::archive`]).
    writer: tokio::sync::mpsc::Sender<Write>,
}

/// One message waiting for the archive writer, with the ticket of the
/// stanza it came from: the writer releases the ticket once the message is
/// committed, so `<a/>` means archived. (No task waits for the commit.)
struct Write {
    host: String,
    user: String,
    item: Item,
    ticket: Option<palaver_server::ack::Ticket>,
}

/// Write `w` here, not by the writer (the writer is gone: the module is
/// stopping); its ticket is released afterwards.
async fn write_now(cx: &ModuleCx, w: Write) {
    if let Err(e) = MamSql::of(cx)
        .insert(&w.host, &w.user, std::slice::from_ref(&w.item))
        .await
    {
        tracing::warn!(error = %e, "archiving a message failed");
    }
    drop(w.ticket);
}

/// Most messages one transaction of the archive writer holds (one
/// statement: [`store::ROWS_PER_INSERT`]).
const BATCH: usize = store::ROWS_PER_INSERT;
/// Messages waiting for the writer before senders wait for room: enough
/// for the rows that arrive while a fold runs (30,000 rows a second in the
/// benchmark, folds of up to half a second), so that a hook hands its row
/// over at once (a full queue costs a task per message until the writer
/// catches up: a tenth of the server's CPU in the benchmark with the old
/// queue of 1,024). Senders are held back by their tickets meanwhile.
const WRITER_QUEUE: usize = 65_536;
/// Rows written but not yet indexed (SQLite, see [`MamSql::insert_many`])
/// the writer lets accumulate before it folds them into the indexes…
const FOLD_ROWS: u64 = 65_536;
/// … or once the oldest has waited this long …
const FOLD_AGE: std::time::Duration = std::time::Duration::from_secs(5);
/// … or once it has been idle this long.
const FOLD_IDLE: std::time::Duration = std::time::Duration::from_millis(250);

/// The archive writer: one task per host that commits what arrived while
/// the previous batch was written, in one statement. Under load one
/// commit serves many messages (archiving is cheap per message); alone, a
/// message is written at once. On SQLite it also folds the rows written
/// since the last fold into the archive's indexes, every [`FOLD_ROWS`],
/// [`FOLD_AGE`] and when idle. Rarer folds cost less per row (a fold
/// dirties much the same index pages for 30,000 rows as for 60,000), but
/// a fold holds the database's write lock while it runs: 0.4–0.7 s for
/// [`FOLD_ROWS`] on run 12's (slow) benchmark machine. The age bound keeps
/// folds short under a light steady load. A read indexes only its own
/// account's rows first: it does not fold everyone's itself (it still
/// waits for a fold the writer is running).
async fn writer(cx: ModuleCx, mut rx: tokio::sync::mpsc::Receiver<Write>) {
    let store = MamSql::of(&cx).for_writer().await;
    let mut batch: Vec<Write> = Vec::with_capacity(BATCH);
    let mut own = store::Writer::default();
    let mut staged: u64 = 0;
    let mut batches: u64 = 0;
    let mut since = std::time::Instant::now();
    loop {
        let next = if staged == 0 {
            rx.recv().await
        } else {
            match tokio::time::timeout(FOLD_IDLE, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    fold(&store, &mut own, &mut staged, &mut batches).await;
                    continue;
                }
            }
        };
        let Some(w) = next else { break };
        batch.push(w);
        drain(&mut rx, &mut batch);
        if batch.len() >= COALESCE_FROM && batch.len() < BATCH {
            // Under load: let the batch fill for a moment (fewer commits).
            tokio::time::sleep(COALESCE).await;
            drain(&mut rx, &mut batch);
        }
        let mut tickets = Vec::with_capacity(batch.len());
        let rows: Vec<(String, String, Item)> = batch
            .drain(..)
            .map(|w| {
                tickets.push(w.ticket);
                (w.host, w.user, w.item)
            })
            .collect();
        match store.insert_many(&rows, &mut own).await {
            Ok(()) => {
                if staged == 0 {
                    since = std::time::Instant::now();
                }
                staged += rows.len() as u64;
                batches += 1;
            }
            Err(e) => {
                // One at a time, so one bad row does not cost the others.
                tracing::warn!(error = %e, "an archive batch failed; writing its messages one by one");
                for (host, user, item) in &rows {
                    if let Err(e) = store.insert(host, user, std::slice::from_ref(item)).await {
                        tracing::warn!(error = %e, "archiving a message failed");
                    }
                }
            }
        }
        // Committed (or written one by one): the stanzas may be acknowledged.
        drop(tickets);
        if staged >= FOLD_ROWS || (staged > 0 && since.elapsed() >= FOLD_AGE) {
            fold(&store, &mut own, &mut staged, &mut batches).await;
        }
    }
    if staged > 0 {
        fold(&store, &mut own, &mut staged, &mut batches).await;
    }
}

/// Take what waits in the writer's queue, up to a whole batch.
fn drain(rx: &mut tokio::sync::mpsc::Receiver<Write>, batch: &mut Vec<Write>) {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
}

/// A batch that finds at least this many rows waiting (the writer is
/// under load) …
const COALESCE_FROM: usize = 8;
/// … waits this long for more before it is written: several times fewer
/// commits, each a round trip to SQLite's thread and a write of the last
/// page again (a batch of 30 rows became one of about 150 in the benchmark,
/// BENCHMARKS.md run 13). The stanzas' acknowledgements wait as long; a
/// lone message is written at once.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);

/// Fold the staged rows into the archive (see [`MamSql::fold_staged`]).
async fn fold(store: &MamSql, own: &mut store::Writer, staged: &mut u64, batches: &mut u64) {
    let started = std::time::Instant::now();
    match store.fold_written(own).await {
        Ok(rows) => {
            *staged = 0;
            tracing::debug!(
                rows,
                batches = std::mem::take(batches),
                ms = started.elapsed().as_millis() as u64,
                "archive rows folded"
            );
        }
        // Kept staged: reads archive theirs first, and the writer tries again.
        Err(e) => tracing::warn!(error = %e, "folding staged archive rows failed"),
    }
}

impl State {
    fn default_prefs(&self) -> Prefs {
        Prefs {
            default: self.default,
            always: vec![],
            never: vec![],
        }
    }

    /// Hand `item` for `user@host` to the archive writer (waiting while its
    /// queue is full) with the ticket of the stanza being handled, which
    /// the writer keeps until the message is committed.
    async fn archive(&self, cx: &ModuleCx, host: &str, user: &str, item: Item) {
        let w = Write {
            host: host.to_string(),
            user: user.to_string(),
            item,
            ticket: cx.ticket(),
        };
        self.send(cx, w).await;
    }

    /// Hand `w` to the writer, waiting while its queue is full; written
    /// here when the writer is gone.
    async fn send(&self, cx: &ModuleCx, w: Write) {
        if let Err(e) = self.writer.send(w).await {
            // Boxed: the storage future is large, and this one is spawned
            // for every row that finds the writer's queue full.
            Box::pin(write_now(cx, e.0)).await;
        }
    }

    /// [`State::archive`] when the account's preferences let `with`'s
    /// messages in (decided by a task that holds the stanza's ticket).
    async fn archive_if_allowed(
        &self,
        cx: &ModuleCx,
        host: &str,
        user: &str,
        with: &Jid,
        item: Item,
    ) {
        match allowed(self, cx, host, user, with).await {
            Ok(true) => self.archive(cx, host, user, item).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = ?e, "archive preferences unavailable"),
        }
    }

    async fn load(&self, cx: &ModuleCx, host: &str, user: &str) -> Result<Arc<Prefs>, StanzaError> {
        let key = format!("{user}@{host}");
        if let Some(p) = self.prefs.get(&key) {
            return Ok(p.clone());
        }
        let stored = MamSql::of(cx)
            .prefs(host, user)
            .await
            .map_err(|e| palaver_server::module::storage_failure("archive preferences", &e))?;
        let p = Arc::new(match stored {
            Some(s) => Prefs::from_stored(s, self.default),
            None => self.default_prefs(),
        });
        self.prefs.insert(key, p.clone());
        Ok(p)
    }
}

impl Module for Mam {
    const NAME: &'static str = "mod_mam";
    type Options = Options;

    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        let default = Mode::parse(&o.default).ok_or_else(|| {
            format!(
                "default: {:?} is not one of always, never, roster",
                o.default
            )
        })?;
        host.migrations(store::MIGRATIONS);
        let (writer_tx, writer_rx) = tokio::sync::mpsc::channel(WRITER_QUEUE);
        let state = Arc::new(State {
            default,
            prefs: DashMap::default(),
            writer: writer_tx,
        });
        host.spawn_task(move |cx| writer(cx, writer_rx));
        for f in [NS_MAM, NS_MAM_EXTENDED, NS_SID] {
            host.add_feature(f);
            host.add_account_feature(f);
        }
        let s = state.clone();
        host.on_iq(IqScope::Account, IqType::Set, NS_MAM, move |req| {
            let s = s.clone();
            async move {
                match req.payload().map(|p| p.name()) {
                    Some("query") => query(req).await,
                    Some("prefs") => set_prefs(req, &s).await,
                    _ => Err(StanzaError::new(Condition::BadRequest)),
                }
            }
        });
        let s = state.clone();
        host.on_iq(IqScope::Account, IqType::Get, NS_MAM, move |req| {
            let s = s.clone();
            async move {
                req.own_account()?;
                match req.payload().map(|p| p.name()) {
                    Some("query") => Ok(Some(query_form())),
                    Some("prefs") => get_prefs(req, &s).await,
                    Some("metadata") => metadata(req).await,
                    _ => Err(StanzaError::new(Condition::BadRequest)),
                }
            }
        });
        let s = state.clone();
        host.hook::<MessageIn>(0, move |cx, st| {
            received(&s, cx, st);
            HookAction::Continue
        });
        let s = state.clone();
        // Last of the send hooks: a stanza that reaches it is routed.
        host.hook::<UserSend>(-1000, move |cx, st| {
            if let Some(session) = cx.session() {
                archive_sent(&s, cx, session, st);
            }
            HookAction::Continue
        });
        let s = state.clone();
        host.hook_async::<SessionBound, _>(0, move |cx, jid| {
            let s = s.clone();
            async move {
                if let Some(node) = jid.node() {
                    let _ = s.load(&cx, jid.domain().as_str(), node.as_str()).await;
                }
                HookAction::Continue
            }
        });
        let s = state.clone();
        host.hook_async::<RemoveUser, _>(50, move |cx, a| {
            s.prefs.remove(&a.jid());
            async move {
                let st = MamSql::of(&cx);
                if let Err(e) = st.remove_archive(&a.host, &a.user).await {
                    tracing::warn!(error = %e, "removing the message archive failed");
                }
                if let Err(e) = st.remove_prefs(&a.host, &a.user).await {
                    tracing::warn!(error = %e, "removing archive preferences failed");
                }
                HookAction::Continue
            }
        });
        host.account_data(portable::ArchiveData);
        let retention = o.retention_days;
        host.spawn_task(move |cx| async move {
            match MamSql::of(&cx).max_id().await {
                Ok(Some(max)) => {
                    LAST_ID.fetch_max(max, Ordering::SeqCst);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the archive's last id failed"),
            }
            if retention == 0 {
                return;
            }
            loop {
                let cutoff = now_us() - (retention as i64) * 86_400_000_000;
                match MamSql::of(&cx).expire(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "expired archived messages"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "archive retention failed"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
        });
        Ok(Mam)
    }
}

// ---------------------------------------------------------------- ids

static LAST_ID: AtomicI64 = AtomicI64::new(0);

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A new archive id: the current time in microseconds, above every id
/// given out or stored before.
fn next_id() -> i64 {
    let now = now_us();
    let prev = LAST_ID
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(prev + 1)
}

/// SipHash keyed with this process's random secret (std's `RandomState`):
/// a keyed pseudo-random function, so a tag cannot be forged without the
/// key, and a fraction of HMAC-SHA-256's cost (it runs for every archived
/// message).
fn keyed() -> &'static std::hash::RandomState {
    static KEY: OnceLock<std::hash::RandomState> = OnceLock::new();
    KEY.get_or_init(std::hash::RandomState::new)
}

fn tag(account: &str, n: i64) -> u32 {
    use std::hash::BuildHasher;
    (keyed().hash_one((account, n)) >> 32) as u32
}

/// The wire form of archive id `n` of `account`.
fn encode_id(account: &str, n: i64) -> String {
    format!("{:016x}{:08x}", n as u64, tag(account, n))
}

/// The archive id of a wire id (the tag is not checked: any id the
/// archive gave out, also by an earlier process, is accepted).
fn decode_id(s: &str) -> Option<i64> {
    if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&s[..16], 16).ok().map(|n| n as i64)
}

/// Whether `s` is an id this process gave out for `account`.
fn is_ours(account: &str, s: &str) -> bool {
    decode_id(s).is_some_and(|n| s[16..] == format!("{:08x}", tag(account, n)))
}

// ---------------------------------------------------------------- archiving

/// Whether a message is archived at all (before preferences).
fn archivable(st: &Stanza) -> bool {
    if st.kind != StanzaKind::Message {
        return false;
    }
    if matches!(st.type_attr(), Some("groupchat" | "headline" | "error")) {
        return false;
    }
    let el = st.el();
    if el.has_child("no-store", NS_HINTS)
        || el.has_child("no-permanent-store", NS_HINTS)
        || el.has_child("received", NS_CARBONS)
        || el.has_child("sent", NS_CARBONS)
        || el.has_child("result", NS_MAM)
    {
        return false;
    }
    el.has_child("body", ns::CLIENT)
        || el.has_child("store", NS_HINTS)
        || el
            .children()
            .any(|c| STORED_PAYLOADS.contains(&c.ns().as_str()))
}

/// Whether `el` carries a `<stanza-id/>` claiming to be by `account`.
pub fn claims_stanza_id(el: &Element, account: &str) -> bool {
    el.children()
        .any(|c| c.is("stanza-id", NS_SID) && c.attr("by") == Some(account))
}

/// Remove the `<stanza-id/>`s claiming to be by `account` from `el`;
/// returns the one this process gave out, if any (kept out of `el` too).
pub fn strip_stanza_ids(el: &mut Element, account: &str) -> Option<String> {
    if !claims_stanza_id(el, account) {
        return None;
    }
    let mut ours = None;
    for node in el.take_nodes() {
        match node {
            Node::Element(c) if c.is("stanza-id", NS_SID) && c.attr("by") == Some(account) => {
                if let Some(id) = c.attr("id")
                    && ours.is_none()
                    && is_ours(account, id)
                {
                    ours = Some(id.to_string());
                }
            }
            other => el.append_node(other),
        }
    }
    ours
}

/// The bare part of `j` (no copy, unlike `Jid::to_bare`).
fn bare_of(j: &Jid) -> &str {
    palaver_proto::bare_part(j.as_str())
}

fn serialize(el: &Element) -> String {
    let mut s = String::with_capacity(256);
    write_element(&mut s, el, "");
    s
}

fn item_for(id: i64, with: &Jid, el: &Element) -> Item {
    item_with(id, with, el, serialize(el))
}

/// The archive item of a whole stanza (`to` included), serialized without
/// copying its element.
fn stanza_item(id: i64, with: &Jid, st: &Stanza) -> Item {
    let mut xml = String::with_capacity(256);
    // Kept: the sent side's serialization serves the received side's
    // (the same stanza, unchanged between the two hooks).
    st.write_xml_kept(&mut xml, "");
    item_with(id, with, st.el(), xml)
}

fn item_with(id: i64, with: &Jid, el: &Element, xml: String) -> Item {
    Item {
        id,
        with_bare: bare_of(with).to_string(),
        with_res: with.resource().map(|r| r.to_string()).unwrap_or_default(),
        origin_id: el
            .get_child("origin-id", NS_SID)
            .and_then(|o| o.attr("id"))
            .map(str::to_string),
        xml,
    }
}

/// Whether the preferences let `with`'s messages into the account's archive.
async fn allowed(
    state: &State,
    cx: &ModuleCx,
    host: &str,
    user: &str,
    with: &Jid,
) -> Result<bool, StanzaError> {
    let prefs = state.load(cx, host, user).await?;
    Ok(match prefs.verdict(with) {
        Verdict::Yes => true,
        Verdict::No => false,
        Verdict::IfInRoster => {
            let bare = with.to_bare().to_string();
            matches!(
                cx.storage().roster.roster_item(host, user, &bare).await,
                Ok(Some(_))
            )
        }
    })
}

/// A message for a local account: strip spoofed stanza-ids, add ours and
/// archive it (holding the sender's ticket).
fn received(state: &Arc<State>, cx: &HookCx<'_>, st: &mut Stanza) {
    let Some(to) = st.to.as_ref() else {
        return;
    };
    let Some(node) = to.node() else {
        return;
    };
    // `user@host`, and its parts (sliced: no copies).
    let account = bare_of(to).to_string();
    let (node, host) = (&account[..node.len()], &account[node.len() + 1..]);
    // Looked at first: a stanza shared by a fan-out is not copied for nothing.
    let ours = if claims_stanza_id(st.el(), &account) {
        strip_stanza_ids(st.el_mut(), &account)
    } else {
        None
    };
    if let Some(id) = ours {
        // Routed again (its session ended unacknowledged): archived already.
        st.el_mut().append_child(stanza_id(&id, &account));
        return;
    }
    if !archivable(st)
        || (bare_of(&st.from) == account && st.el().has_child("forwarded", NS_FORWARD))
    {
        return;
    }
    let verdict = state.prefs.get(&account).map(|p| p.verdict(&st.from));
    let likely = match &verdict {
        Some(v) => *v != Verdict::No,
        None => state.default != Mode::Never,
    };
    if !likely {
        return;
    }
    let n = next_id();
    let item = stanza_item(n, &st.from, st);
    st.el_mut()
        .append_child(stanza_id(&encode_id(&account, n), &account));
    // Without a session the account may not exist (the router answers
    // that later): nothing is archived for a name no one has.
    let check_account = !cx.sessions().has_sessions_of(&account);
    if !check_account && verdict == Some(Verdict::Yes) {
        // The common case, decided here: queued without a task of its own.
        queue(state, cx, host.to_string(), node.to_string(), item);
        return;
    }
    let (state, cx2) = (state.clone(), cx.cx().clone());
    let (host, user, from) = (host.to_string(), node.to_string(), st.from.clone());
    cx.spawn(async move {
        if check_account
            && !matches!(
                cx2.storage().accounts.account_exists(&host, &user).await,
                Ok(true)
            )
        {
            return;
        }
        state
            .archive_if_allowed(&cx2, &host, &user, &from, item)
            .await;
    });
}

fn stanza_id(id: &str, by: &str) -> Element {
    let mut e = Element::bare("stanza-id", NS_SID);
    set_attr(&mut e, "id", id.to_string());
    set_attr(&mut e, "by", by.to_string());
    e
}

/// Hand a row to the archive writer with the current stanza's ticket: at
/// once when the writer's queue has room, else from a task that waits for
/// room (or writes the row itself when the writer is gone).
fn queue(state: &Arc<State>, cx: &HookCx<'_>, host: String, user: String, item: Item) {
    let w = Write {
        host,
        user,
        item,
        ticket: cx.cx().ticket(),
    };
    let w = match state.writer.try_send(w) {
        Ok(()) => return,
        Err(
            tokio::sync::mpsc::error::TrySendError::Full(w)
            | tokio::sync::mpsc::error::TrySendError::Closed(w),
        ) => w,
    };
    let (state, cx2) = (state.clone(), cx.cx().clone());
    cx.spawn(async move { state.send(&cx2, w).await });
}

/// The sent side of a message a local session sends, from the last of the
/// send hooks (a stanza that reaches it is routed). Its archive id is taken
/// here, so the archive keeps the conversation's order: a reply routed
/// before this message is written still comes after it. The write goes to
/// the archive writer, which holds the stanza's ticket until it is
/// committed (`<a/>` means archived); with the account's preferences known,
/// no task is spawned for it.
fn archive_sent(state: &Arc<State>, cx: &HookCx<'_>, session: &FullJid, st: &Stanza) {
    let Some(to) = st.to.as_ref() else { return };
    // The sender's bare JID; a message to the account itself is archived
    // once, as received.
    let me = palaver_proto::bare_part(session.as_str());
    if bare_of(to) == me || !archivable(st) {
        return;
    }
    let (Some(node), host) = (session.node(), session.domain().as_str()) else {
        return;
    };
    let n = next_id();
    let verdict = state.prefs.get(me).map(|p| p.verdict(to));
    if verdict == Some(Verdict::No) {
        return;
    }
    let item = if claims_stanza_id(st.el(), me) {
        let mut el = st.to_element();
        strip_stanza_ids(&mut el, me);
        item_for(n, to, &el)
    } else {
        stanza_item(n, to, st)
    };
    let (host, user) = (host.to_string(), node.to_string());
    if verdict == Some(Verdict::Yes) {
        queue(state, cx, host, user, item);
        return;
    }
    // Preferences not loaded yet, or "roster": decided by a task that
    // holds the ticket.
    let (state, cx2, to) = (state.clone(), cx.cx().clone(), to.clone());
    cx.spawn(async move {
        state
            .archive_if_allowed(&cx2, &host, &user, &to, item)
            .await
    });
}

// ---------------------------------------------------------------- queries

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::new(Condition::BadRequest).text(text.into())
}

fn internal(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("message archive", &e)
}

/// The query form (§4.1.5 / `get`).
fn query_form() -> Element {
    let form = DataForm::with_form_type(FormType::Form, NS_MAM)
        .field(Field::new("with", FieldType::JidSingle, vec![]))
        .field(Field::new("start", FieldType::TextSingle, vec![]))
        .field(Field::new("end", FieldType::TextSingle, vec![]))
        .field(Field::new("before-id", FieldType::TextSingle, vec![]))
        .field(Field::new("after-id", FieldType::TextSingle, vec![]))
        .field(Field::new("ids", FieldType::TextMulti, vec![]));
    let mut q = Element::bare("query", NS_MAM);
    q.append_child(form.to_element());
    q
}

fn tighten_min(f: &mut Filter, v: i64) {
    f.min = Some(f.min.map_or(v, |m| m.max(v)));
}

fn tighten_max(f: &mut Filter, v: i64) {
    f.max = Some(f.max.map_or(v, |m| m.min(v)));
}

/// An id the client names must be in the archive (§4.1.? `item-not-found`).
async fn known_id(store: &MamSql, host: &str, user: &str, id: &str) -> Result<i64, StanzaError> {
    let n = decode_id(id).ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
    if store.exists(host, user, n).await.map_err(internal)? {
        Ok(n)
    } else {
        Err(StanzaError::new(Condition::ItemNotFound))
    }
}

/// The filter of a query's form.
async fn filter_of(
    q: &Element,
    store: &MamSql,
    host: &str,
    user: &str,
) -> Result<Filter, StanzaError> {
    let mut f = Filter::default();
    let Some(form) = DataForm::find_in(q) else {
        return Ok(f);
    };
    let form = form.map_err(|e| bad(e.to_string()))?;
    if form.form_type().is_some_and(|t| t != NS_MAM) {
        return Err(bad("unknown FORM_TYPE"));
    }
    for field in &form.fields {
        let Some(var) = field.var.as_deref() else {
            continue;
        };
        let value = field.values.first().map(String::as_str).unwrap_or("");
        if value.is_empty() && var != "ids" {
            continue;
        }
        match var {
            "FORM_TYPE" => {}
            "with" => {
                let j = Jid::new(value).map_err(|_| StanzaError::new(Condition::JidMalformed))?;
                f.with_bare = Some(j.to_bare().to_string());
                f.with_res = j.resource().map(|r| r.to_string());
            }
            "start" => {
                let ms = parse_datetime(value).ok_or_else(|| bad("start is not a date"))?;
                tighten_min(&mut f, ms.saturating_mul(1000));
            }
            "end" => {
                let ms = parse_datetime(value).ok_or_else(|| bad("end is not a date"))?;
                tighten_max(&mut f, ms.saturating_mul(1000).saturating_add(999));
            }
            "after-id" => {
                let n = known_id(store, host, user, value).await?;
                tighten_min(&mut f, n + 1);
            }
            "before-id" => {
                let n = known_id(store, host, user, value).await?;
                tighten_max(&mut f, n - 1);
            }
            "ids" => {
                if field.values.len() > MAX_PAGE {
                    return Err(StanzaError::new(Condition::PolicyViolation)
                        .text(format!("at most {MAX_PAGE} ids")));
                }
                // Ids that are not ours cannot be in the archive.
                f.ids = Some(field.values.iter().filter_map(|v| decode_id(v)).collect());
            }
            other => {
                return Err(StanzaError::new(Condition::FeatureNotImplemented)
                    .text(format!("field {other:?} is not supported")));
            }
        }
    }
    Ok(f)
}

/// `<query/>` (§4): send the page's messages to the requester, then `<fin/>`.
async fn query(req: IqRequest) -> IqResult {
    let (me, host, user) = req.own_account()?;
    let requester = req
        .stanza
        .from
        .try_as_full()
        .map_err(|_| StanzaError::new(Condition::BadRequest))?
        .clone();
    let q = req.payload().ok_or_else(|| bad("no query"))?.clone();
    let store = MamSql::of(&req.cx);
    let f = filter_of(&q, &store, &host, &user).await?;
    let rsm = RsmRequest::find_in(&q)
        .map_err(|e| bad(e.to_string()))?
        .unwrap_or_default();
    let limit = rsm.limit(DEFAULT_PAGE, MAX_PAGE);
    let mut pf = f.clone();
    let mut backward = false;
    if let Some(a) = &rsm.after {
        let n = known_id(&store, &host, &user, a).await?;
        tighten_min(&mut pf, n + 1);
    }
    if let Some(b) = rsm.before_id() {
        let n = known_id(&store, &host, &user, b).await?;
        tighten_max(&mut pf, n - 1);
        backward = true;
    }
    if rsm.wants_last_page() {
        backward = true;
    }
    let offset = if backward || rsm.after.is_some() {
        0
    } else {
        rsm.index.unwrap_or(0)
    };
    let (count, mut rows) = store
        .count_and_page(&host, &user, &f, &pf, limit + 1, offset, backward)
        .await
        .map_err(internal)?;
    let more = rows.len() > limit;
    if more {
        if backward {
            rows.remove(0);
        } else {
            rows.pop();
        }
    }
    // The page's position, where it is known without another count.
    let index = if backward && rsm.before_id().is_none() {
        Some(count.saturating_sub(rows.len()))
    } else if !backward && rsm.after.is_none() {
        Some(offset)
    } else {
        None
    };
    if q.has_child("flip-page", NS_MAM) {
        rows.reverse();
    }
    let account = me.to_string();
    let queryid = q.attr("queryid").map(str::to_string);
    let mut ids = Vec::with_capacity(rows.len());
    for (n, xml) in rows {
        let id = encode_id(&account, n);
        let Ok(msg) = xml.parse::<Element>() else {
            tracing::warn!(id, "an archived message cannot be read; skipped");
            continue;
        };
        let st = result_message(&me, &requester, queryid.as_deref(), &id, n, msg);
        if req.cx.deliver_waiting(st).await.is_err() {
            // The requester is gone.
            return Err(StanzaError::new(Condition::RecipientUnavailable));
        }
        ids.push(id);
    }
    let mut fin = Element::bare("fin", NS_MAM);
    if !more || f.ids.is_some() {
        set_attr(&mut fin, "complete", "true");
    }
    fin.append_child(
        RsmResult::of_page(&ids, index.filter(|_| !ids.is_empty()), Some(count)).to_element(),
    );
    Ok(Some(fin))
}

fn result_message(
    me: &BareJid,
    to: &FullJid,
    queryid: Option<&str>,
    id: &str,
    n: i64,
    msg: Element,
) -> Stanza {
    let mut delay = Element::bare("delay", ns::DELAY);
    set_attr(&mut delay, "stamp", format_datetime(n.div_euclid(1000)));
    let mut fwd = Element::bare("forwarded", NS_FORWARD);
    fwd.append_child(delay);
    fwd.append_child(msg);
    let mut result = Element::bare("result", NS_MAM);
    if let Some(q) = queryid {
        set_attr(&mut result, "queryid", q.to_string());
    }
    set_attr(&mut result, "id", id.to_string());
    result.append_child(fwd);
    let mut el = Element::bare("message", ns::CLIENT);
    set_attr(&mut el, "id", format!("mam-{id}"));
    el.append_child(result);
    Stanza::new(
        StanzaKind::Message,
        Jid::from(me.clone()),
        Some(Jid::from(to.clone())),
        el,
    )
}

/// `<metadata/>` (#extended): the first and last message of the archive.
async fn metadata(req: IqRequest) -> IqResult {
    let (me, host, user) = req.own_account()?;
    let b = MamSql::of(&req.cx)
        .bounds(&host, &user)
        .await
        .map_err(internal)?;
    let mut m = Element::bare("metadata", NS_MAM);
    if let Some((first, last)) = b {
        for (name, n) in [("start", first), ("end", last)] {
            let mut e = Element::bare(name, NS_MAM);
            set_attr(&mut e, "id", encode_id(me.as_str(), n));
            set_attr(&mut e, "timestamp", format_datetime(n.div_euclid(1000)));
            m.append_child(e);
        }
    }
    Ok(Some(m))
}

// ---------------------------------------------------------------- preferences

fn prefs_element(p: &Prefs) -> Element {
    let mut el = Element::bare("prefs", NS_MAM);
    set_attr(&mut el, "default", p.default.as_str());
    for (name, list) in [("always", &p.always), ("never", &p.never)] {
        let mut l = Element::bare(name, NS_MAM);
        for j in list {
            l.append_child(Element::builder("jid", NS_MAM).append(j.as_str()).build());
        }
        el.append_child(l);
    }
    el
}

async fn get_prefs(req: IqRequest, state: &State) -> IqResult {
    let (_, host, user) = req.own_account()?;
    let p = state.load(&req.cx, &host, &user).await?;
    Ok(Some(prefs_element(&p)))
}

async fn set_prefs(req: IqRequest, state: &State) -> IqResult {
    let (me, host, user) = req.own_account()?;
    let el = req.payload().ok_or_else(|| bad("no prefs"))?;
    let default = match el.attr("default") {
        Some(d) => Mode::parse(d).ok_or_else(|| bad("default must be always, never or roster"))?,
        None => state.load(&req.cx, &host, &user).await?.default,
    };
    let list = |name: &str| -> Result<Vec<String>, StanzaError> {
        let mut out = Vec::new();
        if let Some(l) = el.get_child(name, NS_MAM) {
            for j in l.children().filter(|c| c.is("jid", NS_MAM)) {
                let j = Jid::new(j.text().trim())
                    .map_err(|_| StanzaError::new(Condition::JidMalformed))?
                    .to_string();
                if !out.contains(&j) {
                    out.push(j);
                }
            }
        }
        Ok(out)
    };
    let p = Prefs {
        default,
        always: list("always")?,
        never: list("never")?,
    };
    MamSql::of(&req.cx)
        .set_prefs(
            &host,
            &user,
            &StoredPrefs {
                default: p.default.as_str().to_string(),
                always: p.always.clone(),
                never: p.never.clone(),
            },
        )
        .await
        .map_err(internal)?;
    let el = prefs_element(&p);
    state.prefs.insert(me.to_string(), Arc::new(p));
    Ok(Some(el))
}

// ---------------------------------------------------------------- XEP-0227

/// The archive's part of portable account data.
mod portable {
    use super::store::{Filter, MamSql};
    use super::*;
    use palaver_server::account_data::{AccountData, Tally, describe};
    use palaver_server::hooks::Account;
    use palaver_storage::StorageError;

    /// XEP-0227's namespace for message archives.
    pub const NS_PIE_MAM: &str = "urn:xmpp:pie:0#mam";
    const MESSAGES: &str = "archived message(s)";
    const CHUNK: usize = 500;

    pub(super) struct ArchiveData;

    impl AccountData for ArchiveData {
        /// (timestamp in µs, the other party, the message).
        type Data = Vec<(i64, Jid, Element)>;
        const ELEMENTS: &'static [(&'static str, &'static str)] = &[("archive", NS_PIE_MAM)];

        async fn export(
            &self,
            cx: &ModuleCx,
            a: &Account,
            tally: &mut Tally,
        ) -> Result<Vec<Element>, StorageError> {
            let store = MamSql::of(cx);
            let account = a.jid();
            let mut archive = Element::bare("archive", NS_PIE_MAM);
            let mut f = Filter::default();
            let mut n = 0;
            loop {
                let rows = store.page(&a.host, &a.user, &f, CHUNK, 0, false).await?;
                let Some(last) = rows.last().map(|r| r.0) else {
                    break;
                };
                for (id, xml) in &rows {
                    match xml.parse::<Element>() {
                        Ok(msg) => {
                            let mut delay = Element::bare("delay", ns::DELAY);
                            set_attr(&mut delay, "stamp", format_datetime(id.div_euclid(1000)));
                            let mut fwd = Element::bare("forwarded", NS_FORWARD);
                            fwd.append_child(delay);
                            fwd.append_child(msg);
                            let mut r = Element::bare("result", NS_MAM);
                            set_attr(&mut r, "id", encode_id(&account, *id));
                            r.append_child(fwd);
                            archive.append_child(r);
                            n += 1;
                        }
                        Err(_) => tally.warn(format!(
                            "{account}: archived message {id} cannot be read; not exported"
                        )),
                    }
                }
                f.min = Some(last + 1);
            }
            tally.count(MESSAGES, n);
            Ok(if n == 0 { vec![] } else { vec![archive] })
        }

        fn read(
            &self,
            a: &Account,
            el: &Element,
            data: &mut Self::Data,
            tally: &mut Tally,
        ) -> Result<(), String> {
            let account = a.jid();
            for r in el.children() {
                let fwd = r.get_child("forwarded", NS_FORWARD);
                let msg = fwd.and_then(|f| {
                    f.children().find(|c| {
                        c.name() == "message" && (c.ns() == ns::CLIENT || c.ns() == ns::SERVER)
                    })
                });
                let stamp = fwd
                    .and_then(|f| f.get_child("delay", ns::DELAY))
                    .and_then(|d| d.attr("stamp"))
                    .and_then(parse_datetime);
                let (Some(msg), Some(ms), true) = (msg, stamp, r.is("result", NS_MAM)) else {
                    tally.warn(format!("{account}: ignored archive entry {}", describe(r)));
                    continue;
                };
                let mut msg = msg.clone();
                if msg.ns() == ns::SERVER {
                    let mut c = Element::bare("message", ns::CLIENT);
                    for a in ["from", "to", "type", "id"] {
                        if let Some(v) = msg.attr(a) {
                            set_attr(&mut c, a, v.to_string());
                        }
                    }
                    for node in msg.take_nodes() {
                        c.append_node(node);
                    }
                    msg = c;
                }
                // The other party: whichever of from/to is not the account.
                let from = msg.attr("from").and_then(|j| Jid::new(j).ok());
                let to = msg.attr("to").and_then(|j| Jid::new(j).ok());
                let with = match (from, to) {
                    (Some(f), _) if f.to_bare().as_str() != account => f,
                    (_, Some(t)) => t,
                    (Some(f), None) => f,
                    (None, None) => {
                        tally.warn(format!(
                            "{account}: archived message without from/to ignored"
                        ));
                        continue;
                    }
                };
                strip_stanza_ids(&mut msg, &account);
                data.push((ms.saturating_mul(1000), with, msg));
            }
            Ok(())
        }

        async fn clear(&self, cx: &ModuleCx, a: &Account) -> Result<(), StorageError> {
            MamSql::of(cx).remove_archive(&a.host, &a.user).await
        }

        async fn write(
            &self,
            cx: &ModuleCx,
            a: &Account,
            mut data: Self::Data,
            tally: &mut Tally,
        ) -> Result<(), StorageError> {
            tally.count(MESSAGES, 0);
            data.sort_by_key(|d| d.0);
            let mut prev = i64::MIN;
            let mut items = Vec::with_capacity(data.len());
            for (ts, with, msg) in data {
                let id = ts.max(prev + 1);
                prev = id;
                items.push(item_for(id, &with, &msg));
            }
            LAST_ID.fetch_max(prev, Ordering::SeqCst);
            let store = MamSql::of(cx);
            for chunk in items.chunks(CHUNK) {
                store.insert(&a.host, &a.user, chunk).await?;
            }
            tally.count(MESSAGES, items.len());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_tagged_per_account() {
        let a = encode_id("a@h", 42);
        assert!(is_ours("a@h", &a));
        assert!(!is_ours("b@h", &a));
        assert_eq!(decode_id(&a), Some(42));
        assert_eq!(a, encode_id("a@h", 42));
    }
}
