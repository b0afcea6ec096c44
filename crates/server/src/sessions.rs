//! The session table: bound resources, sharded by bare JID.
//!
//! Modules see it through [`SessionRegistry`] (queries: who is online, with
//! which priority and presence; ending sessions). Only the kernel binds,
//! unbinds and delivers: a stanza reaches a session through the router, never
//! through this table directly.
//!
//! The in-process [`SessionManager`] is today's implementation. A cluster
//! implementation keeps the same trait: the table in Redis (bare JID → the
//! resources and the node each is bound on) with a local replica for
//! queries, and the router delivers to a session on another node through
//! the cluster bus instead of a local channel.

use dashmap::DashMap;
use jid::{BareJid, FullJid};
use palaver_proto::bare_part;
use palaver_proto::stanza::{Stanza, StanzaKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Stanzas a session's queue holds at most (its memory bound: this many
/// stanzas of at most `max_stanza_size` each).
pub const SESSION_QUEUE: usize = 1024;
/// Queue length past which deliveries slow their sender down (see
/// [`SessionMsg::Stanza`]).
pub const SOFT_QUEUE: usize = 32;
/// Longest an error stanza waits for room in a full session queue.
const ERROR_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What can be sent to a session task.
#[derive(Debug)]
pub enum SessionMsg {
    /// Deliver this stanza. The ticket, taken when the session's queue was
    /// already long, holds back the sender's reading (and its XEP-0198
    /// acknowledgement) until this session has written the stanza: a fast
    /// sender is slowed to the pace of its slowest recipient instead of
    /// overrunning its queue.
    Stanza(Box<Stanza>, Option<crate::ack::Ticket>),
    /// Another session bound the same resource: close with `<conflict/>`.
    Replaced,
    /// An administrator ended the session (`policy-violation`), or its
    /// host is no longer served (`host-unknown`): close with that stream
    /// error and text.
    Kick(palaver_proto::error::StreamErrorCondition, String),
    /// A new connection resumes this session (XEP-0198 §5; produced by the
    /// session from its resumption channel, never queued).
    Resume(crate::c2s::ResumeRequest),
}

/// The transport a client session came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// An XML stream over TCP (STARTTLS or direct TLS).
    Tcp,
    /// RFC 7395 WebSocket.
    WebSocket,
    /// XEP-0124/0206 BOSH.
    Bosh,
}

impl Transport {
    /// Label of the `transport` metric dimension.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
            Transport::Bosh => "bosh",
        }
    }
}

/// How a session is connected: recorded at bind, updated when a new
/// connection resumes it (XEP-0198).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The transport.
    pub transport: Transport,
    /// Whether the stream is encrypted (TLS on the connection).
    pub tls: bool,
    /// The client's address (a proxy's, behind one).
    pub peer: std::net::SocketAddr,
    /// When the session was bound.
    pub since: std::time::SystemTime,
}

impl Connection {
    /// ejabberd's name of the connection type: `c2s`, `c2s_tls`,
    /// `websocket`, `http_bind`.
    pub fn ejabberd_name(&self) -> &'static str {
        match (self.transport, self.tls) {
            (Transport::Tcp, false) => "c2s",
            (Transport::Tcp, true) => "c2s_tls",
            (Transport::WebSocket, _) => "websocket",
            (Transport::Bosh, _) => "http_bind",
        }
    }
}

/// Handle to a session, held in the table.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// Unique id of this session (never reused within a process).
    pub id: u64,
    /// Bound resource.
    pub resource: String,
    /// Presence priority; `None` while unavailable (no initial presence yet).
    pub priority: Option<i8>,
    /// The last available presence broadcast by the session (answers probes).
    pub presence: Option<Arc<minidom::Element>>,
    /// Since when the client says it is inactive (XEP-0352), if it does.
    pub inactive_since: Option<std::time::SystemTime>,
    /// The session lost its connection and waits to be resumed (XEP-0198).
    pub detached: bool,
    /// How it is connected.
    pub conn: Arc<Connection>,
    /// Channel to the session task (kernel only: the router delivers).
    pub(crate) tx: mpsc::Sender<SessionMsg>,
}

impl SessionHandle {
    /// Stanzas waiting in the session's queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Why a delivery failed.
#[derive(Debug, PartialEq, Eq)]
pub enum DeliverError {
    /// No such session.
    Gone,
    /// The session's queue is full (slow reader).
    Full,
    /// No session is bound to that full JID.
    NoSession,
}

/// Table of local sessions.
#[derive(Default)]
pub struct SessionManager {
    table: DashMap<String, Vec<SessionHandle>>,
    next_id: AtomicU64,
    count: AtomicU64,
    /// Resumable sessions (XEP-0198): SM-ID → (bare JID, the session's
    /// resumption channel).
    resumable: DashMap<String, (String, mpsc::Sender<crate::c2s::ResumeRequest>)>,
}

impl SessionManager {
    /// A fresh session id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Offer session `id` for resumption by `bare`.
    pub(crate) fn add_resumable(
        &self,
        id: &str,
        bare: &str,
        tx: mpsc::Sender<crate::c2s::ResumeRequest>,
    ) {
        self.resumable
            .insert(id.to_string(), (bare.to_string(), tx));
    }

    /// The resumption channel of SM-ID `id`, if it belongs to `bare`.
    pub(crate) fn resumable(
        &self,
        id: &str,
        bare: &str,
    ) -> Option<mpsc::Sender<crate::c2s::ResumeRequest>> {
        self.resumable
            .get(id)
            .filter(|e| e.0 == bare)
            .map(|e| e.1.clone())
    }

    /// The session behind SM-ID `id` ended for good.
    pub(crate) fn remove_resumable(&self, id: &str) {
        self.resumable.remove(id);
    }

    /// Number of bound sessions.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Bind `jid`; an existing session with the same resource is told it was replaced
    /// (RFC 6120 §7.7.2.2: the new session wins). A new resource beyond
    /// `max` sessions of the account is refused (the handle comes back);
    /// the check and the insertion happen under the account's shard lock, so
    /// parallel logins cannot overshoot.
    pub fn bind(
        &self,
        jid: &FullJid,
        handle: SessionHandle,
        max: usize,
    ) -> Result<(), SessionHandle> {
        let mut entry = self
            .table
            .entry(bare_part(jid.as_str()).to_string())
            .or_default();
        if let Some(pos) = entry.iter().position(|h| h.resource == handle.resource) {
            let old = entry.swap_remove(pos);
            let _ = old.tx.try_send(SessionMsg::Replaced);
        } else if entry.len() >= max {
            return Err(handle);
        } else {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        entry.push(handle);
        Ok(())
    }

    /// Remove the session `id` bound as `jid` (no-op when it was already replaced).
    pub fn unbind(&self, jid: &FullJid, id: u64) {
        let bare = bare_part(jid.as_str());
        let mut removed = false;
        if let Some(mut entry) = self.table.get_mut(bare)
            && let Some(pos) = entry.iter().position(|h| h.id == id)
        {
            entry.swap_remove(pos);
            removed = true;
        }
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.table.remove_if(bare, |_, v| v.is_empty());
        }
    }

    /// Set the presence of a session (`None`: unavailable).
    pub fn set_presence(
        &self,
        jid: &FullJid,
        id: u64,
        presence: Option<(i8, Arc<minidom::Element>)>,
    ) {
        if let Some(mut entry) = self.table.get_mut(bare_part(jid.as_str()))
            && let Some(h) = entry.iter_mut().find(|h| h.id == id)
        {
            match presence {
                Some((p, el)) => {
                    h.priority = Some(p);
                    h.presence = Some(el);
                }
                None => {
                    h.priority = None;
                    h.presence = None;
                }
            }
        }
    }

    /// Record a session's XEP-0352 state (`None`: active).
    pub fn set_inactive(&self, jid: &FullJid, id: u64, since: Option<std::time::SystemTime>) {
        if let Some(mut entry) = self.table.get_mut(bare_part(jid.as_str()))
            && let Some(h) = entry.iter_mut().find(|h| h.id == id)
        {
            h.inactive_since = since;
        }
    }

    /// Record that a session waits, detached, to be resumed (or not any more).
    pub fn set_detached(&self, jid: &FullJid, id: u64, detached: bool) {
        if let Some(mut entry) = self.table.get_mut(bare_part(jid.as_str()))
            && let Some(h) = entry.iter_mut().find(|h| h.id == id)
        {
            h.detached = detached;
        }
    }

    /// Record how a session is connected now (a new connection resumed it).
    pub fn set_connection(&self, jid: &FullJid, id: u64, conn: Connection) {
        if let Some(mut entry) = self.table.get_mut(bare_part(jid.as_str()))
            && let Some(h) = entry.iter_mut().find(|h| h.id == id)
        {
            h.conn = Arc::new(conn);
        }
    }

    /// The handle bound to a full JID.
    pub fn get(&self, jid: &FullJid) -> Option<SessionHandle> {
        let entry = self.table.get(bare_part(jid.as_str()))?;
        let res = jid.resource().as_str();
        entry.iter().find(|h| h.resource == res).cloned()
    }

    /// Queue a stanza for the session bound to `jid` without cloning its handle.
    pub fn deliver_full(
        &self,
        jid: &FullJid,
        st: Stanza,
    ) -> Result<(), (DeliverError, Box<Stanza>)> {
        let Some(entry) = self.table.get(bare_part(jid.as_str())) else {
            return Err((DeliverError::NoSession, Box::new(st)));
        };
        let res = jid.resource().as_str();
        match entry.iter().find(|h| h.resource == res) {
            Some(h) => Self::deliver(h, st),
            None => Err((DeliverError::NoSession, Box::new(st))),
        }
    }

    /// All sessions of a bare JID.
    pub fn sessions(&self, bare: &BareJid) -> Vec<SessionHandle> {
        self.table
            .get(bare.as_str())
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Whether a bare JID has any bound session.
    pub fn has_sessions(&self, bare: &BareJid) -> bool {
        SessionRegistry::has_sessions_of(self, bare.as_str())
    }

    /// Queue a stanza for a session.
    ///
    /// Past [`SOFT_QUEUE`] queued stanzas the delivery carries a ticket of
    /// the sender's stanza (when a session's stanza caused it), so the sender
    /// stops being read until this session catches up. A queue that is full
    /// all the same (many senders at once) refuses the stanza (`Full`: the
    /// sender gets `resource-constraint`), except what cannot be refused
    /// with an error (an error, an IQ result: RFC 6120 §8.3.1), which waits
    /// (bounded) for room instead of disappearing.
    pub(crate) fn deliver(
        handle: &SessionHandle,
        st: Stanza,
    ) -> Result<(), (DeliverError, Box<Stanza>)> {
        let queued = handle.tx.max_capacity() - handle.tx.capacity();
        let ticket = if queued >= SOFT_QUEUE {
            crate::ack::current()
        } else {
            None
        };
        // A static label: no allocation per delivery.
        let kind = st.kind.as_str();
        match handle.tx.try_send(SessionMsg::Stanza(Box::new(st), ticket)) {
            Ok(()) => {
                metrics::counter!("palaver_stanzas_delivered_total", "kind" => kind).increment(1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(msg @ SessionMsg::Stanza(..))) if matches!(&msg, SessionMsg::Stanza(s, _) if unanswerable(s)) =>
            {
                let tx = handle.tx.clone();
                tokio::spawn(async move {
                    if tokio::time::timeout(ERROR_WAIT, tx.send(msg))
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            "session queue stayed full; an error or IQ result was not delivered"
                        );
                    }
                });
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(SessionMsg::Stanza(s, _))) => {
                Err((DeliverError::Full, s))
            }
            Err(mpsc::error::TrySendError::Closed(SessionMsg::Stanza(s, _))) => {
                Err((DeliverError::Gone, s))
            }
            Err(_) => unreachable!("only stanzas are sent here"),
        }
    }
}

/// A stanza no error may answer (RFC 6120 §8.3.1): refused, it would
/// disappear without anyone knowing.
fn unanswerable(st: &Stanza) -> bool {
    st.is_error() || (st.kind == StanzaKind::Iq && st.type_attr() == Some("result"))
}

/// What modules may ask of the session table.
pub trait SessionRegistry: Send + Sync {
    /// The session bound to a full JID.
    fn get(&self, jid: &FullJid) -> Option<SessionHandle>;
    /// Every session of a bare JID (available or not).
    fn sessions(&self, bare: &BareJid) -> Vec<SessionHandle>;
    /// Whether a bare JID has any bound session.
    fn has_sessions(&self, bare: &BareJid) -> bool {
        self.has_sessions_of(bare.as_str())
    }
    /// [`has_sessions`](Self::has_sessions) of a bare JID given as its
    /// (valid) string, for a hot path that has one and no `BareJid`.
    fn has_sessions_of(&self, bare: &str) -> bool;
    /// The available sessions of a bare JID (initial presence sent).
    fn available(&self, bare: &BareJid) -> Vec<SessionHandle> {
        self.sessions(bare)
            .into_iter()
            .filter(|h| h.priority.is_some())
            .collect()
    }
    /// Full JIDs of every bound session of `host`.
    fn online(&self, host: &str) -> Vec<FullJid>;
    /// Number of bound sessions.
    fn count(&self) -> u64;
    /// End every session of `bare` with a `policy-violation` stream error
    /// carrying `reason` (an administrator's kick, a removed account);
    /// returns how many were told.
    fn kick(&self, bare: &BareJid, reason: &str) -> usize;
    /// End the one session bound as `full` the same way; whether there was one.
    fn kick_session(&self, full: &FullJid, reason: &str) -> bool;
}

impl SessionRegistry for SessionManager {
    fn get(&self, jid: &FullJid) -> Option<SessionHandle> {
        SessionManager::get(self, jid)
    }
    fn sessions(&self, bare: &BareJid) -> Vec<SessionHandle> {
        SessionManager::sessions(self, bare)
    }
    fn has_sessions_of(&self, bare: &str) -> bool {
        self.table.get(bare).is_some_and(|e| !e.is_empty())
    }
    fn online(&self, host: &str) -> Vec<FullJid> {
        let mut out = Vec::new();
        for e in self.table.iter() {
            let Ok(bare) = BareJid::new(e.key()) else {
                continue;
            };
            if bare.domain().as_str() != host {
                continue;
            }
            for h in e.value() {
                if let Ok(full) = bare.with_resource_str(&h.resource) {
                    out.push(full);
                }
            }
        }
        out
    }
    fn count(&self) -> u64 {
        SessionManager::count(self)
    }
    fn kick_session(&self, full: &FullJid, reason: &str) -> bool {
        match SessionManager::get(self, full) {
            Some(s) => send_kick(&s, SC::PolicyViolation, reason),
            None => false,
        }
    }
    fn kick(&self, bare: &BareJid, reason: &str) -> usize {
        SessionManager::sessions(self, bare)
            .iter()
            .filter(|s| send_kick(s, SC::PolicyViolation, reason))
            .count()
    }
}

impl SessionManager {
    /// End every session of `host` (bound, or waiting to be resumed) with
    /// the `host-unknown` stream error: the host is no longer served.
    /// Returns how many were told.
    pub(crate) fn close_host(&self, host: &str, reason: &str) -> usize {
        let mut handles = Vec::new();
        for e in self.table.iter() {
            let domain = e.key().rsplit('@').next().unwrap_or_default();
            if domain == host {
                handles.extend(e.value().iter().cloned());
            }
        }
        handles
            .iter()
            .filter(|s| send_kick(s, SC::HostUnknown, reason))
            .count()
    }
}

use palaver_proto::error::StreamErrorCondition as SC;

/// Tell one session to end with `cond` and `reason`; whether it was still there.
fn send_kick(s: &SessionHandle, cond: SC, reason: &str) -> bool {
    match s.tx.try_send(SessionMsg::Kick(cond, reason.to_string())) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(msg)) => {
            // A busy session still gets it, once it has room.
            let tx = s.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Shared handle.
pub type SharedSm = Arc<SessionManager>;

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(capacity: usize) -> (SessionHandle, mpsc::Receiver<SessionMsg>) {
        let (tx, rx) = mpsc::channel(capacity);
        let conn = Arc::new(Connection {
            transport: Transport::Tcp,
            tls: false,
            peer: "127.0.0.1:1".parse().expect("addr"),
            since: std::time::SystemTime::now(),
        });
        let h = SessionHandle {
            id: 1,
            resource: "r".into(),
            priority: Some(0),
            presence: None,
            inactive_since: None,
            detached: false,
            conn,
            tx,
        };
        (h, rx)
    }

    fn stanza(xml: &str) -> Stanza {
        let el: minidom::Element = xml.parse().expect("xml");
        Stanza::from_element(el, jid::Jid::new("a@b/c").expect("jid")).expect("stanza")
    }

    #[tokio::test]
    async fn a_full_queue_refuses_what_can_be_answered_and_holds_the_rest() {
        let (h, mut rx) = handle(1);
        let msg = "<message xmlns='jabber:client' to='u@h/r' type='chat'><body>x</body></message>";
        SessionManager::deliver(&h, stanza(msg)).expect("room for one");
        // Full: a message is refused (its sender gets an error)…
        let refused = SessionManager::deliver(&h, stanza(msg));
        assert!(matches!(refused, Err((DeliverError::Full, _))));
        // … a result and an error wait for room instead.
        let result = "<iq xmlns='jabber:client' to='u@h/r' type='result' id='q1'/>";
        SessionManager::deliver(&h, stanza(result)).expect("held");
        let error = "<message xmlns='jabber:client' to='u@h/r' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>";
        SessionManager::deliver(&h, stanza(error)).expect("held");
        let mut ids = Vec::new();
        for _ in 0..3 {
            match rx.recv().await {
                Some(SessionMsg::Stanza(st, _)) => ids.push(format!(
                    "{}:{}",
                    st.kind.as_str(),
                    st.type_attr().unwrap_or("")
                )),
                _ => panic!("a stanza"),
            }
        }
        ids.sort();
        assert_eq!(ids, ["iq:result", "message:chat", "message:error"]);
    }
}
