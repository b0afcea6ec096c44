//! XEP-0049 private XML storage.

use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_server::HookAction;
use palaver_server::hooks::{Account, PrivateStored, PrivateXml, RemoveUser};
use palaver_server::{HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleDef};

/// `mod_private`.
pub struct Private;

/// `mod_private` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Private>();

impl Module for Private {
    const NAME: &'static str = "mod_private";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Private)
    }
}

const NS_PRIVATE: &str = "jabber:iq:private";

/// `mod_private` options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Largest stored element in bytes.
    max_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_size: 65_536 }
    }
}

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    let max = o.max_size;
    host.add_feature(NS_PRIVATE);
    host.on_iq(
        IqScope::Account,
        IqType::Get,
        NS_PRIVATE,
        move |req| async move { handle(req, max, false).await },
    );
    host.on_iq(
        IqScope::Account,
        IqType::Set,
        NS_PRIVATE,
        move |req| async move { handle(req, max, true).await },
    );
    host.account_data(portable::PrivateData);
    host.hook_async::<RemoveUser, _>(50, |cx, a| async move {
        let xml = &cx.storage().xml;
        if let Err(e) = xml.remove_xml_user(&a.host, &a.user, "private:").await {
            tracing::warn!(error = %e, "removing private XML failed");
        }
        HookAction::Continue
    });
    Ok(())
}

fn internal(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("private", &e)
}

async fn handle(req: IqRequest, max: usize, set: bool) -> IqResult {
    let (_, host, node) = req.own_account()?;
    let q = req
        .payload()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let mut children = q.children();
    let (Some(item), None) = (children.next(), children.next()) else {
        return Err(
            StanzaError::new(Condition::BadRequest).text("exactly one child element is required")
        );
    };
    let ns = item.ns();
    if ns.is_empty() || matches!(ns.as_str(), "jabber:client" | "jabber:server" | NS_PRIVATE) {
        return Err(
            StanzaError::new(Condition::NotAcceptable).text("this namespace cannot be stored")
        );
    }
    let key = format!("private:{ns}:{}", item.name());
    let store = &req.cx.storage().xml;
    if set {
        let xml = palaver_proto::writer::to_string(item, "");
        if xml.len() > max {
            return Err(
                StanzaError::new(Condition::NotAcceptable).text(format!("larger than {max} bytes"))
            );
        }
        store
            .set_xml(&host, &node, &key, &xml)
            .await
            .map_err(internal)?;
        // Modules keeping another copy follow (XEP-0411 bookmarks).
        req.cx
            .run_hook_async::<PrivateStored>(PrivateXml {
                account: Account::new(host, node),
                element: item.clone(),
            })
            .await;
        return Ok(None);
    }
    let stored = match store.get_xml(&host, &node, &key).await.map_err(internal)? {
        Some(x) => x
            .parse::<Element>()
            .map_err(|e| palaver_server::module::internal_error("stored private XML", e))?,
        None => item.clone(),
    };
    let mut out = Element::bare("query", NS_PRIVATE);
    out.append_child(stored);
    Ok(Some(out))
}

/// Private XML's part of portable account data (XEP-0227):
/// `<query xmlns='jabber:iq:private'>` with every stored element.
mod portable {
    use super::NS_PRIVATE;
    use minidom::Element;
    use palaver_proto::ns;
    use palaver_server::ModuleCx;
    use palaver_server::account_data::{AccountData, Tally, describe};
    use palaver_server::hooks::Account;
    use palaver_storage::StorageError;

    const PRIVATE: &str = "private XML element(s)";

    pub(super) struct PrivateData;

    impl AccountData for PrivateData {
        type Data = Vec<Element>;
        const ELEMENTS: &'static [(&'static str, &'static str)] = &[("query", NS_PRIVATE)];

        async fn export(
            &self,
            cx: &ModuleCx,
            a: &Account,
            tally: &mut Tally,
        ) -> Result<Vec<Element>, StorageError> {
            let store = &cx.storage().xml;
            let jid = a.jid();
            let mut q = Element::bare("query", NS_PRIVATE);
            let mut n = 0;
            for key in store.xml_keys(&a.host, &a.user, "private:").await? {
                let Some(xml) = store.get_xml(&a.host, &a.user, &key).await? else {
                    continue;
                };
                match xml.parse::<Element>() {
                    Ok(el) => {
                        q.append_child(el);
                        n += 1;
                    }
                    Err(e) => tally.warn(format!(
                        "{jid}: stored private XML {key} is unreadable ({e}); left out"
                    )),
                }
            }
            tally.count(PRIVATE, n);
            Ok(if n == 0 { vec![] } else { vec![q] })
        }

        fn read(
            &self,
            a: &Account,
            el: &Element,
            data: &mut Vec<Element>,
            tally: &mut Tally,
        ) -> Result<(), String> {
            let jid = a.jid();
            for item in el.children() {
                let ns = item.ns();
                if ns.is_empty() || matches!(ns.as_str(), ns::CLIENT | ns::SERVER | NS_PRIVATE) {
                    tally.warn(format!(
                        "{jid}: ignored private XML {}: this namespace cannot be stored",
                        describe(item)
                    ));
                    continue;
                }
                if let Some(i) = data
                    .iter()
                    .position(|p| p.name() == item.name() && p.ns() == ns)
                {
                    tally.warn(format!(
                        "{jid}: private XML {} appears twice; the last one is kept",
                        describe(item)
                    ));
                    data.remove(i);
                }
                data.push(item.clone());
            }
            Ok(())
        }

        async fn clear(&self, cx: &ModuleCx, a: &Account) -> Result<(), StorageError> {
            cx.storage()
                .xml
                .remove_xml_user(&a.host, &a.user, "private:")
                .await
        }

        async fn write(
            &self,
            cx: &ModuleCx,
            a: &Account,
            data: Vec<Element>,
            tally: &mut Tally,
        ) -> Result<(), StorageError> {
            tally.count(PRIVATE, 0);
            for p in &data {
                let key = format!("private:{}:{}", p.ns(), p.name());
                let xml = palaver_proto::writer::to_string(p, "");
                cx.storage()
                    .xml
                    .set_xml(&a.host, &a.user, &key, &xml)
                    .await?;
                tally.count(PRIVATE, 1);
            }
            Ok(())
        }
    }
}
