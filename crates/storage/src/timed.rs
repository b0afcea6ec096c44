//! Store latency for the metrics: every call of the server's stores
//! ([`AccountStore`], [`RosterStore`], [`OfflineStore`], [`XmlStore`]) is
//! timed into the histogram `palaver_store_seconds{store, op}`, and a
//! failed one counted in `palaver_store_errors_total{store, op}` (the
//! `metrics` facade: nothing is recorded unless the server installed a
//! recorder).

use crate::im::{OfflineStore, RosterItem, RosterStore, XmlStore};
use crate::{AccountStore, Result};
use async_trait::async_trait;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use std::sync::Arc;

/// Time one call of a module's own store (beside its module, over
/// [`crate::Db`]) into `palaver_store_seconds{store, op}` and count its
/// failure in `palaver_store_errors_total{store, op}`, as the server's
/// stores are.
pub async fn timed<T>(
    store: &'static str,
    op: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = std::time::Instant::now();
    let r = call.await;
    metrics::histogram!("palaver_store_seconds", "store" => store, "op" => op)
        .record(started.elapsed().as_secs_f64());
    if r.is_err() {
        metrics::counter!("palaver_store_errors_total", "store" => store, "op" => op).increment(1);
    }
    r
}

/// A backend whose every call is timed.
pub(crate) struct Timed<B>(pub(crate) Arc<B>);

macro_rules! timed {
    ($store:literal, $op:literal, $call:expr) => {{
        let started = std::time::Instant::now();
        let r = $call.await;
        metrics::histogram!("palaver_store_seconds", "store" => $store, "op" => $op)
            .record(started.elapsed().as_secs_f64());
        if r.is_err() {
            metrics::counter!("palaver_store_errors_total", "store" => $store, "op" => $op)
                .increment(1);
        }
        r
    }};
}

#[async_trait]
impl<B: AccountStore + 'static> AccountStore for Timed<B> {
    async fn create_account(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        timed!(
            "accounts",
            "create_account",
            self.0.create_account(host, user, creds)
        )
    }
    async fn set_credentials(
        &self,
        host: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<()> {
        timed!(
            "accounts",
            "set_credentials",
            self.0.set_credentials(host, user, creds)
        )
    }
    async fn credentials(
        &self,
        host: &str,
        user: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>> {
        timed!(
            "accounts",
            "credentials",
            self.0.credentials(host, user, hash)
        )
    }
    async fn account_exists(&self, host: &str, user: &str) -> Result<bool> {
        timed!(
            "accounts",
            "account_exists",
            self.0.account_exists(host, user)
        )
    }
    async fn delete_account(&self, host: &str, user: &str) -> Result<()> {
        timed!(
            "accounts",
            "delete_account",
            self.0.delete_account(host, user)
        )
    }
    async fn list_accounts(&self, host: &str) -> Result<Vec<String>> {
        timed!("accounts", "list_accounts", self.0.list_accounts(host))
    }
}

#[async_trait]
impl<B: RosterStore + 'static> RosterStore for Timed<B> {
    async fn roster(&self, host: &str, user: &str) -> Result<(i64, Vec<RosterItem>)> {
        timed!("roster", "roster", self.0.roster(host, user))
    }
    async fn roster_version(&self, host: &str, user: &str) -> Result<i64> {
        timed!(
            "roster",
            "roster_version",
            self.0.roster_version(host, user)
        )
    }
    async fn roster_item(&self, host: &str, user: &str, jid: &str) -> Result<Option<RosterItem>> {
        timed!("roster", "roster_item", self.0.roster_item(host, user, jid))
    }
    async fn roster_count(&self, host: &str, user: &str) -> Result<usize> {
        timed!("roster", "roster_count", self.0.roster_count(host, user))
    }
    async fn put_roster_item(&self, host: &str, user: &str, item: &RosterItem) -> Result<i64> {
        timed!(
            "roster",
            "put_roster_item",
            self.0.put_roster_item(host, user, item)
        )
    }
    async fn delete_roster_item(&self, host: &str, user: &str, jid: &str) -> Result<i64> {
        timed!(
            "roster",
            "delete_roster_item",
            self.0.delete_roster_item(host, user, jid)
        )
    }
    async fn add_pending_in(&self, host: &str, user: &str, jid: &str, stanza: &str) -> Result<()> {
        timed!(
            "roster",
            "add_pending_in",
            self.0.add_pending_in(host, user, jid, stanza)
        )
    }
    async fn remove_pending_in(&self, host: &str, user: &str, jid: &str) -> Result<bool> {
        timed!(
            "roster",
            "remove_pending_in",
            self.0.remove_pending_in(host, user, jid)
        )
    }
    async fn pending_in(&self, host: &str, user: &str) -> Result<Vec<(String, String)>> {
        timed!("roster", "pending_in", self.0.pending_in(host, user))
    }
    async fn remove_roster_user(&self, host: &str, user: &str) -> Result<()> {
        timed!(
            "roster",
            "remove_roster_user",
            self.0.remove_roster_user(host, user)
        )
    }
}

#[async_trait]
impl<B: OfflineStore + 'static> OfflineStore for Timed<B> {
    async fn store_offline(
        &self,
        host: &str,
        user: &str,
        stanza: &str,
        stamp: i64,
        limit: usize,
    ) -> Result<bool> {
        timed!(
            "offline",
            "store_offline",
            self.0.store_offline(host, user, stanza, stamp, limit)
        )
    }
    async fn offline_count(&self, host: &str, user: &str) -> Result<usize> {
        timed!("offline", "offline_count", self.0.offline_count(host, user))
    }
    async fn offline_messages(&self, host: &str, user: &str) -> Result<Vec<(i64, String, i64)>> {
        timed!(
            "offline",
            "offline_messages",
            self.0.offline_messages(host, user)
        )
    }
    async fn delete_offline_upto(&self, host: &str, user: &str, id: i64) -> Result<()> {
        timed!(
            "offline",
            "delete_offline_upto",
            self.0.delete_offline_upto(host, user, id)
        )
    }
    async fn remove_offline_user(&self, host: &str, user: &str) -> Result<()> {
        timed!(
            "offline",
            "remove_offline_user",
            self.0.remove_offline_user(host, user)
        )
    }
}

#[async_trait]
impl<B: XmlStore + 'static> XmlStore for Timed<B> {
    async fn get_xml(&self, host: &str, user: &str, key: &str) -> Result<Option<String>> {
        timed!("xml", "get_xml", self.0.get_xml(host, user, key))
    }
    async fn set_xml(&self, host: &str, user: &str, key: &str, xml: &str) -> Result<()> {
        timed!("xml", "set_xml", self.0.set_xml(host, user, key, xml))
    }
    async fn xml_keys(&self, host: &str, user: &str, prefix: &str) -> Result<Vec<String>> {
        timed!("xml", "xml_keys", self.0.xml_keys(host, user, prefix))
    }
    async fn remove_xml_user(&self, host: &str, user: &str, prefix: &str) -> Result<()> {
        timed!(
            "xml",
            "remove_xml_user",
            self.0.remove_xml_user(host, user, prefix)
        )
    }
}
