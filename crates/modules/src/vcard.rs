//! XEP-0054 vCards with XEP-0153 avatar hashes in presence (server side).

use base64::Engine;
use dashmap::DashMap;
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::stanza::StanzaKind;
use palaver_server::HookAction;
use palaver_server::hooks::{RemoveUser, SessionBound, SessionClosed, UserSend};
use palaver_server::{HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleDef};
use sha1::Digest;
use std::sync::Arc;

/// `mod_vcard`.
pub struct Vcard;

/// `mod_vcard` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Vcard>();

impl Module for Vcard {
    const NAME: &'static str = "mod_vcard";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Vcard)
    }
}

const NS_VCARD: &str = "vcard-temp";
const NS_UPDATE: &str = "vcard-temp:x:update";

/// `mod_vcard` options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Largest vCard in bytes.
    max_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_size: 65_536 }
    }
}

/// Bare JID of an online user with a photo → SHA-1 hex of the photo.
type Hashes = DashMap<String, String>;

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    let max = o.max_size;
    let hashes: Arc<Hashes> = Arc::new(DashMap::new());
    host.add_feature(NS_VCARD);
    host.on_iq(IqScope::Account, IqType::Get, NS_VCARD, get);
    let h = hashes.clone();
    host.on_iq(IqScope::Account, IqType::Set, NS_VCARD, move |req| {
        let h = h.clone();
        async move { set(req, max, h).await }
    });
    host.on_iq(IqScope::Server, IqType::Get, NS_VCARD, |_req| async {
        Ok(Some(Element::bare("vCard", NS_VCARD)))
    });
    let h = hashes.clone();
    host.hook_async::<SessionBound, _>(50, move |cx, jid| {
        let h = h.clone();
        async move {
            let bare = jid.to_bare();
            let Some(node) = bare.node() else {
                return HookAction::Continue;
            };
            let xml = cx
                .storage()
                .xml
                .get_xml(bare.domain().as_str(), node.as_str(), "vcard")
                .await;
            let hash = match xml {
                Ok(Some(x)) => x.parse::<Element>().ok().and_then(|v| photo_hash(&v)),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "loading a vCard failed");
                    None
                }
            };
            if let Some(hash) = hash {
                h.insert(bare.to_string(), hash);
            }
            HookAction::Continue
        }
    });
    // Forget the hash when the user's last session is gone (the table holds
    // online users only). The check runs under the map's shard lock, so a
    // session bound meanwhile keeps (or re-inserts) its entry.
    let h = hashes.clone();
    host.hook_async::<SessionClosed, _>(50, move |cx, jid| {
        let bare = jid.to_bare();
        h.remove_if(bare.as_str(), |_, _| !cx.sessions().has_sessions(&bare));
        async { HookAction::Continue }
    });
    let h = hashes.clone();
    host.hook::<UserSend>(50, move |cx, st| {
        if st.kind == StanzaKind::Presence
            && matches!(st.type_attr(), None | Some("unavailable"))
            && !st.el().has_child("x", NS_UPDATE)
            && let Some(me) = cx.session()
            && let Some(hash) = h.get(me.to_bare().as_str())
        {
            st.el_mut().append_child(
                Element::builder("x", NS_UPDATE)
                    .append(Element::builder("photo", NS_UPDATE).append(hash.as_str()))
                    .build(),
            );
        }
        HookAction::Continue
    });
    host.account_data(portable::VcardData);
    let h = hashes;
    host.hook_async::<RemoveUser, _>(50, move |cx, a| {
        h.remove(&format!("{}@{}", a.user, a.host));
        async move {
            let xml = &cx.storage().xml;
            if let Err(e) = xml.remove_xml_user(&a.host, &a.user, "vcard").await {
                tracing::warn!(error = %e, "removing a vCard failed");
            }
            HookAction::Continue
        }
    });
    Ok(())
}

/// SHA-1 (hex) of the decoded PHOTO/BINVAL.
fn photo_hash(vcard: &Element) -> Option<String> {
    let bin = vcard
        .get_child("PHOTO", NS_VCARD)?
        .get_child("BINVAL", NS_VCARD)?
        .text();
    let clean: String = bin.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean)
        .ok()?;
    let d = sha1::Sha1::digest(&bytes);
    Some(d.iter().map(|b| format!("{b:02x}")).collect())
}

fn target(req: &IqRequest) -> Result<(String, String), StanzaError> {
    let to = req
        .stanza
        .to
        .as_ref()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let node = to
        .node()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    Ok((to.domain().to_string(), node.to_string()))
}

fn internal(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("vcard", &e)
}

async fn get(req: IqRequest) -> IqResult {
    let (host, user) = target(&req)?;
    if !req
        .cx
        .storage()
        .accounts
        .account_exists(&host, &user)
        .await
        .map_err(internal)?
    {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    match req
        .cx
        .storage()
        .xml
        .get_xml(&host, &user, "vcard")
        .await
        .map_err(internal)?
    {
        Some(x) => Ok(Some(x.parse::<Element>().map_err(|e| {
            palaver_server::module::internal_error("stored vCard", e)
        })?)),
        None => Ok(Some(Element::bare("vCard", NS_VCARD))),
    }
}

async fn set(req: IqRequest, max: usize, hashes: Arc<Hashes>) -> IqResult {
    let (host, user) = target(&req)?;
    if req.stanza.to.as_ref().map(|t| t.to_bare()) != Some(req.stanza.from.to_bare()) {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    let v = req
        .payload()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    if !v.is("vCard", NS_VCARD) {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    let xml = palaver_proto::writer::to_string(v, "");
    if xml.len() > max {
        return Err(StanzaError::new(Condition::NotAcceptable)
            .text(format!("vCard larger than {max} bytes")));
    }
    req.cx
        .storage()
        .xml
        .set_xml(&host, &user, "vcard", &xml)
        .await
        .map_err(internal)?;
    let bare = format!("{user}@{host}");
    match photo_hash(v) {
        Some(hash) => hashes.insert(bare, hash),
        None => hashes.remove(&bare).map(|(_, h)| h),
    };
    Ok(None)
}

/// The vCard's part of portable account data (XEP-0227): `<vCard xmlns='vcard-temp'>`.
mod portable {
    use super::NS_VCARD;
    use minidom::Element;
    use palaver_server::ModuleCx;
    use palaver_server::account_data::{AccountData, Tally};
    use palaver_server::hooks::Account;
    use palaver_storage::StorageError;

    const VCARDS: &str = "vCard(s)";

    pub(super) struct VcardData;

    impl AccountData for VcardData {
        type Data = Option<Element>;
        const ELEMENTS: &'static [(&'static str, &'static str)] = &[("vCard", NS_VCARD)];

        async fn export(
            &self,
            cx: &ModuleCx,
            a: &Account,
            tally: &mut Tally,
        ) -> Result<Vec<Element>, StorageError> {
            tally.count(VCARDS, 0);
            let Some(xml) = cx.storage().xml.get_xml(&a.host, &a.user, "vcard").await? else {
                return Ok(vec![]);
            };
            let jid = a.jid();
            match xml.parse::<Element>() {
                Ok(v) if v.is("vCard", NS_VCARD) => {
                    tally.count(VCARDS, 1);
                    Ok(vec![v])
                }
                Ok(v) => {
                    tally.warn(format!(
                        "{jid}: stored vCard is a <{}/>; left out",
                        v.name()
                    ));
                    Ok(vec![])
                }
                Err(e) => {
                    tally.warn(format!("{jid}: stored vCard is unreadable ({e}); left out"));
                    Ok(vec![])
                }
            }
        }

        fn read(
            &self,
            a: &Account,
            el: &Element,
            data: &mut Option<Element>,
            _tally: &mut Tally,
        ) -> Result<(), String> {
            if data.is_some() {
                return Err(format!("{} has a second vCard", a.jid()));
            }
            *data = Some(el.clone());
            Ok(())
        }

        async fn clear(&self, cx: &ModuleCx, a: &Account) -> Result<(), StorageError> {
            cx.storage()
                .xml
                .remove_xml_user(&a.host, &a.user, "vcard")
                .await
        }

        async fn write(
            &self,
            cx: &ModuleCx,
            a: &Account,
            data: Option<Element>,
            tally: &mut Tally,
        ) -> Result<(), StorageError> {
            tally.count(VCARDS, 0);
            if let Some(v) = data {
                let xml = palaver_proto::writer::to_string(&v, "");
                cx.storage()
                    .xml
                    .set_xml(&a.host, &a.user, "vcard", &xml)
                    .await?;
                tally.count(VCARDS, 1);
            }
            Ok(())
        }
    }
}
