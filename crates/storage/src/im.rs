//! Storage traits for instant messaging and presence (RFC 6121) and the
//! everyday XEPs: rosters, offline messages, vCards, private XML, last
//! activity, block lists, messages of the day.

use crate::Result;
use async_trait::async_trait;

/// RFC 6121 subscription state of a roster item (the `subscription` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// Neither direction.
    None,
    /// The user receives the contact's presence.
    To,
    /// The contact receives the user's presence.
    From,
    /// Both directions.
    Both,
}

impl Subscription {
    /// Attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    /// Parse an attribute value.
    pub fn parse(s: &str) -> Option<Subscription> {
        match s {
            "none" => Some(Subscription::None),
            "to" => Some(Subscription::To),
            "from" => Some(Subscription::From),
            "both" => Some(Subscription::Both),
            _ => None,
        }
    }
    /// Whether the user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
    /// Whether the contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
}

/// One roster item with its full RFC 6121 state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// Contact bare JID.
    pub jid: String,
    /// Handle chosen by the user.
    pub name: Option<String>,
    /// Subscription state.
    pub subscription: Subscription,
    /// Pending outbound request (`ask='subscribe'`).
    pub ask: bool,
    /// Pre-approved inbound subscription (RFC 6121 §3.4).
    pub approved: bool,
    /// Groups, sorted, unique.
    pub groups: Vec<String>,
}

impl RosterItem {
    /// A new item without subscription.
    pub fn new(jid: &str) -> Self {
        RosterItem {
            jid: jid.to_string(),
            name: None,
            subscription: Subscription::None,
            ask: false,
            approved: false,
            groups: Vec::new(),
        }
    }
}

/// Rosters with versioning (XEP-0237) and stored inbound subscription requests.
#[async_trait]
pub trait RosterStore: Send + Sync {
    /// The whole roster and its current version (0 for a never-written roster).
    async fn roster(&self, host: &str, user: &str) -> Result<(i64, Vec<RosterItem>)>;
    /// Current roster version.
    async fn roster_version(&self, host: &str, user: &str) -> Result<i64>;
    /// One item.
    async fn roster_item(&self, host: &str, user: &str, jid: &str) -> Result<Option<RosterItem>>;
    /// Number of items.
    async fn roster_count(&self, host: &str, user: &str) -> Result<usize>;
    /// Insert or replace an item; returns the new roster version.
    async fn put_roster_item(&self, host: &str, user: &str, item: &RosterItem) -> Result<i64>;
    /// Remove an item; returns the new roster version (`NotFound` when absent).
    async fn delete_roster_item(&self, host: &str, user: &str, jid: &str) -> Result<i64>;
    /// Store (replace) a pending inbound subscription request from `jid` (the stanza XML).
    async fn add_pending_in(&self, host: &str, user: &str, jid: &str, stanza: &str) -> Result<()>;
    /// Forget a pending inbound request; `true` when there was one.
    async fn remove_pending_in(&self, host: &str, user: &str, jid: &str) -> Result<bool>;
    /// Pending inbound requests: (from JID, stanza XML), oldest first.
    async fn pending_in(&self, host: &str, user: &str) -> Result<Vec<(String, String)>>;
    /// Delete all roster data of a user.
    async fn remove_roster_user(&self, host: &str, user: &str) -> Result<()>;
}

/// Offline message storage (XEP-0160).
#[async_trait]
pub trait OfflineStore: Send + Sync {
    /// Store a message unless the user already has `limit` messages; `false` when full.
    /// `stamp` is the receive time in milliseconds since the epoch.
    async fn store_offline(
        &self,
        host: &str,
        user: &str,
        stanza: &str,
        stamp: i64,
        limit: usize,
    ) -> Result<bool>;
    /// Number of stored messages.
    async fn offline_count(&self, host: &str, user: &str) -> Result<usize>;
    /// Stored messages, oldest first: (id, stanza XML, stamp ms).
    async fn offline_messages(&self, host: &str, user: &str) -> Result<Vec<(i64, String, i64)>>;
    /// Delete messages up to and including `id` (after they were delivered).
    async fn delete_offline_upto(&self, host: &str, user: &str, id: i64) -> Result<()>;
    /// Delete all of a user's messages.
    async fn remove_offline_user(&self, host: &str, user: &str) -> Result<()>;
}

/// Per-user XML documents: vCards (XEP-0054) and private XML (XEP-0049),
/// keyed by a namespace-like key.
#[async_trait]
pub trait XmlStore: Send + Sync {
    /// The stored document for `key`.
    async fn get_xml(&self, host: &str, user: &str, key: &str) -> Result<Option<String>>;
    /// Store (replace) a document; an empty string removes it.
    async fn set_xml(&self, host: &str, user: &str, key: &str, xml: &str) -> Result<()>;
    /// The keys of a user's documents that start with `prefix`, sorted.
    async fn xml_keys(&self, host: &str, user: &str, prefix: &str) -> Result<Vec<String>>;
    /// Delete all documents whose key starts with `prefix`.
    async fn remove_xml_user(&self, host: &str, user: &str, prefix: &str) -> Result<()>;
}
