//! XEP-0227 import and export through the modules' account data parts, on
//! a tool core over a fresh SQLite database.

use palaver_admin::piefxis::{self, ImportOptions, PieError, parse_bytes};
use palaver_proto::datetime::format_datetime;
use palaver_server::{Config, Core, Server};
use palaver_storage::{RosterItem, Storage, StorageError, Subscription};
use std::path::Path;
use std::sync::Arc;

const H: &str = "example.com";

fn config(dir: &Path, modules: &str) -> Config {
    Config::parse(&format!(
        "hosts: [{H}]\ndata_dir: {}\n{modules}",
        dir.display()
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn core(dir: &Path) -> Arc<Core> {
    Server::tool_core(config(dir, ""), &palaver_modules::registry())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn wrap(user: &str) -> String {
    format!(
        "<?xml version='1.0'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n<host jid='{H}'>\n{user}\n</host>\n</server-data>"
    )
}

fn parse(xml: &str) -> piefxis::Parsed {
    parse_bytes(xml.as_bytes(), Path::new("test.xml")).unwrap_or_else(|e| panic!("{e}"))
}

async fn import(
    core: &Arc<Core>,
    xml: &str,
    force: bool,
) -> Result<piefxis::ImportReport, PieError> {
    piefxis::import(core, &parse(xml).doc, &ImportOptions { force }).await
}

const JULIET: &str = "<user name='juliet' password='s3crEt'>
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
  <blocklist xmlns='urn:xmpp:blocking'><item jid='spam@example.net'/></blocklist>
</user>";

#[tokio::test]
async fn xep_example_is_imported_by_the_modules() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let core = core(dir.path()).await;
    let rep = import(&core, &wrap(JULIET), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.created, ["juliet@example.com"]);
    assert_eq!(rep.derived, 1);
    for (label, n) in [
        ("roster item(s)", 2),
        ("subscription request(s)", 1),
        ("offline message(s)", 1),
        ("vCard(s)", 1),
        ("private XML element(s)", 1),
        ("blocked JID(s)", 1),
    ] {
        assert_eq!(rep.tally.get(label), n, "{label}: {:?}", rep.tally);
    }
    // Privacy lists are reported by mod_blocking, with their line.
    assert!(
        rep.tally
            .warnings
            .iter()
            .any(|w| w.contains("privacy") && w.starts_with("test.xml:18:3")),
        "{:?}",
        rep.tally.warnings
    );
    let st = core.storage();
    let (_, roster) = st.roster.roster(H, "juliet").await.unwrap_or_default();
    assert_eq!(roster.len(), 2);
    let nurse = &roster[0];
    assert_eq!(nurse.jid, "nurse@capulet.com");
    assert!(nurse.ask && nurse.approved);
    assert_eq!(nurse.subscription, Subscription::From);
    assert_eq!(roster[1].groups, ["Friends"]);
    assert_eq!(roster[1].subscription, Subscription::Both);
    let offline = st
        .offline
        .offline_messages(H, "juliet")
        .await
        .unwrap_or_default();
    assert_eq!(offline.len(), 1);
    assert_eq!(format_datetime(offline[0].2), "1469-07-21T00:32:29.000Z");
    assert!(
        offline[0].1.contains("to='juliet@example.com'"),
        "{}",
        offline[0].1
    );
    let pending = st.roster.pending_in(H, "juliet").await.unwrap_or_default();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0, "romeo@montague.net");
    assert!(pending[0].1.contains("http://jabber.org/protocol/nick"));
    assert!(
        st.xml
            .get_xml(H, "juliet", "private:exodus:prefs:exodus")
            .await
            .ok()
            .flatten()
            .is_some_and(|x| x.contains("Hamlet"))
    );
    assert!(
        st.xml
            .get_xml(H, "juliet", "vcard")
            .await
            .ok()
            .flatten()
            .is_some_and(|x| x.contains("Juliet Capulet"))
    );
    assert_eq!(
        palaver_modules::blocking::store::BlocksSql::new(st.db.clone())
            .blocklist(H, "juliet")
            .await
            .unwrap_or_default(),
        ["spam@example.net"]
    );
}

#[tokio::test]
async fn skipped_items_are_located_warnings() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let core = core(dir.path()).await;
    let rep = import(
        &core,
        &wrap(
            "<user name='a' password='x'>
               <query xmlns='jabber:iq:roster'><item jid='bad@@x'/><item jid='b@x' subscription='remove'/><item jid='c@x' subscription='to'/></query>
               <offline-messages><message xmlns='jabber:client'><body>no from</body></message><message xmlns='jabber:client' from='b@x'><body>no delay</body></message></offline-messages>
               <presence xmlns='jabber:client' type='subscribed' from='c@x'/>
               <query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query>
               <mystery xmlns='urn:example:unknown'/>
             </user>",
        ),
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.tally.get("roster item(s)"), 1);
    assert_eq!(rep.tally.get("offline message(s)"), 1);
    assert_eq!(rep.tally.get("subscription request(s)"), 0);
    assert_eq!(rep.tally.get("private XML element(s)"), 0);
    let w = &rep.tally.warnings;
    assert_eq!(w.len(), 7, "{w:#?}");
    assert!(w.iter().all(|w| w.starts_with("test.xml:")), "{w:#?}");
    assert!(
        w.iter()
            .any(|w| w.contains("urn:example:unknown") && w.contains("does not import"))
    );
    // The message without a stamp got one.
    let offline = core
        .storage()
        .offline
        .offline_messages(H, "a")
        .await
        .unwrap_or_default();
    assert!(offline[0].1.contains("urn:xmpp:delay"), "{}", offline[0].1);
}

#[tokio::test]
async fn unusable_module_data_refuses_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let core = core(dir.path()).await;
    let e = import(
        &core,
        &wrap("<user name='a' password='x'/>\n<user name='b' password='y'><vCard xmlns='vcard-temp'/>\n<vCard xmlns='vcard-temp'/></user>"),
        false,
    )
    .await
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("test.xml:6:1") && e.contains("second vCard"),
        "{e}"
    );
    // Nothing was written, not even the good account before it.
    let users = core
        .storage()
        .accounts
        .list_accounts(H)
        .await
        .unwrap_or_default();
    assert!(users.is_empty(), "{users:?}");
}

#[tokio::test]
async fn a_disabled_module_imports_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(dir.path(), "modules:\n  mod_roster: {}\n");
    let core = Server::tool_core(cfg, &palaver_modules::registry())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rep = import(&core, &wrap(JULIET), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.tally.get("roster item(s)"), 2);
    let w = &rep.tally.warnings;
    assert!(
        w.iter()
            .any(|w| w.contains("vcard-temp") && w.contains("no module enabled")),
        "{w:#?}"
    );
    assert!(w.iter().any(|w| w.contains("offline-messages")), "{w:#?}");
}

#[tokio::test]
async fn export_imports_back_identically() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let core1 = core(dir.path()).await;
    import(&core1, &wrap(JULIET), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (doc, rep) = piefxis::export_host(&core1, H)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.accounts, 1);
    assert!(rep.tally.warnings.is_empty(), "{:?}", rep.tally.warnings);
    let xml = piefxis::to_xml(&doc);
    assert!(
        xml.contains("<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-256'>"),
        "{xml}"
    );
    assert!(
        !xml.contains("s3crEt") && !xml.contains("password="),
        "{xml}"
    );

    let dir2 = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let core2 = core(dir2.path()).await;
    let rep = import(&core2, &xml, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rep.tally.warnings.is_empty(), "{:?}", rep.tally.warnings);
    assert_eq!(rep.derived, 0);
    let (doc2, _) = piefxis::export_host(&core2, H)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(piefxis::to_xml(&doc2), xml);
    // The credentials still check the password.
    let creds = core2
        .storage()
        .accounts
        .credentials(H, "juliet", palaver_proto::sasl::ScramHash::Sha512)
        .await
        .ok()
        .flatten();
    assert!(creds.is_some_and(|c| c.verify_password("s3crEt")));

    // --force replaces every module's data.
    let rep = import(
        &core2,
        &wrap("<user name='juliet' password='new'><vCard xmlns='vcard-temp'><FN>J2</FN></vCard></user>"),
        true,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.replaced, ["juliet@example.com"]);
    let st = core2.storage();
    assert_eq!(
        st.roster.roster(H, "juliet").await.map(|r| r.1.len()).ok(),
        Some(0)
    );
    assert_eq!(st.offline.offline_count(H, "juliet").await.ok(), Some(0));
    assert_eq!(
        palaver_modules::blocking::store::BlocksSql::new(st.db.clone())
            .blocklist(H, "juliet")
            .await
            .map(|b| b.len())
            .ok(),
        Some(0)
    );
    assert!(
        st.xml
            .get_xml(H, "juliet", "vcard")
            .await
            .ok()
            .flatten()
            .is_some_and(|v| v.contains("J2"))
    );
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
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut st = Storage::open_sqlite(&dir.path().join("p.db"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    st.roster = Arc::new(FailFor(st.roster.clone(), "bob"));
    let core =
        Server::tool_core_with_storage(config(dir.path(), ""), &palaver_modules::registry(), st)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let xml = wrap(
        "<user name='alice' password='a'><query xmlns='jabber:iq:roster'><item jid='x@y'/></query></user>
         <user name='bob' password='b'><vCard xmlns='vcard-temp'/><offline-messages><message xmlns='jabber:client' from='x@y'><body>b</body></message></offline-messages><query xmlns='jabber:iq:roster'><item jid='x@y'/></query></user>
         <user name='carol' password='c'/>",
    );
    let e = import(&core, &xml, false).await.map(|_| ()).unwrap_err();
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
    let st = core.storage();
    assert!(
        st.accounts
            .account_exists(H, "alice")
            .await
            .unwrap_or(false)
    );
    assert!(!st.accounts.account_exists(H, "bob").await.unwrap_or(true));
    assert!(!st.accounts.account_exists(H, "carol").await.unwrap_or(true));
    assert_eq!(st.xml.get_xml(H, "bob", "vcard").await.ok(), Some(None));
    assert_eq!(st.offline.offline_count(H, "bob").await.ok(), Some(0));
    // Existing accounts stop before any write.
    let e = import(&core, &xml, false).await.map(|_| ()).unwrap_err();
    assert!(
        matches!(&e, PieError::Exists { accounts } if accounts == &["alice@example.com"]),
        "{e}"
    );
    // A host that is not served, with its location.
    let other = xml.replace("example.com", "elsewhere.example");
    let e = import(&core, &other, false).await.map(|_| ()).unwrap_err();
    assert!(
        e.to_string().contains("test.xml:3:1") && e.to_string().contains("not served"),
        "{e}"
    );
    assert!(!st.accounts.account_exists(H, "carol").await.unwrap_or(true));
}
