//! XEP-0030: Service Discovery for the server and its accounts.
//!
//! Features and identities are collected from the modules enabled on the
//! host; nothing is listed that no module registered.

use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_server::{HostSetup, IqRequest, IqResult, IqScope, IqType, ModuleDef};

/// `mod_disco`.
pub const MODULE: ModuleDef = ModuleDef {
    name: "mod_disco",
    start,
};

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Extra items listed in disco#items of the server (JIDs).
    #[serde(default)]
    extra_items: Vec<String>,
}

fn start(host: &mut HostSetup, opts: &serde_json::Value) -> Result<(), String> {
    let o: Options = palaver_server::module::parse_options(opts)?;
    for j in &o.extra_items {
        jid::Jid::new(j).map_err(|e| format!("extra_items: `{j}` is not a JID: {e}"))?;
    }
    host.add_feature(ns::DISCO_INFO);
    host.add_feature(ns::DISCO_ITEMS);
    host.add_identity("server", "im", Some("Palaver"));
    host.on_iq(IqScope::Server, IqType::Get, ns::DISCO_INFO, server_info);
    let items = std::sync::Arc::new(o.extra_items);
    host.on_iq(IqScope::Server, IqType::Get, ns::DISCO_ITEMS, move |req| {
        let items = items.clone();
        async move { server_items(req, &items) }
    });
    host.on_iq(IqScope::Account, IqType::Get, ns::DISCO_INFO, account_info);
    host.on_iq(
        IqScope::Account,
        IqType::Get,
        ns::DISCO_ITEMS,
        account_items,
    );
    Ok(())
}

fn node_of(req: &IqRequest) -> Option<String> {
    req.payload()
        .and_then(|p| p.attr("node"))
        .map(str::to_string)
}

async fn server_info(req: IqRequest) -> IqResult {
    if node_of(&req).is_some() {
        return Err(StanzaError::new(Condition::ItemNotFound));
    }
    let mut q = Element::bare("query", ns::DISCO_INFO);
    for id in req.host.identities() {
        let mut b = Element::builder("identity", ns::DISCO_INFO)
            .attr(
                palaver_proto::stanza::attr_name("category"),
                id.category.as_str(),
            )
            .attr(palaver_proto::stanza::attr_name("type"), id.kind.as_str());
        if let Some(n) = &id.name {
            b = b.attr(palaver_proto::stanza::attr_name("name"), n.as_str());
        }
        q.append_child(b.build());
    }
    for f in req.host.features() {
        q.append_child(feature(f));
    }
    Ok(Some(q))
}

fn feature(var: &str) -> Element {
    Element::builder("feature", ns::DISCO_INFO)
        .attr(palaver_proto::stanza::attr_name("var"), var)
        .build()
}

fn server_items(req: IqRequest, extra: &[String]) -> IqResult {
    if node_of(&req).is_some() {
        return Err(StanzaError::new(Condition::ItemNotFound));
    }
    let mut q = Element::bare("query", ns::DISCO_ITEMS);
    for j in extra {
        q.append_child(
            Element::builder("item", ns::DISCO_ITEMS)
                .attr(palaver_proto::stanza::attr_name("jid"), j.as_str())
                .build(),
        );
    }
    Ok(Some(q))
}

/// Whether the requester may see the account: only the account itself
/// until subscriptions exist to widen it.
fn same_account(req: &IqRequest) -> bool {
    let to = req.stanza.to.as_ref().map(|t| t.to_bare());
    to.is_some_and(|t| t == req.stanza.from.to_bare())
}

async fn account_info(req: IqRequest) -> IqResult {
    if !account_exists(&req).await? {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    if node_of(&req).is_some() {
        return Err(StanzaError::new(Condition::ItemNotFound));
    }
    let mut q = Element::bare("query", ns::DISCO_INFO);
    q.append_child(
        Element::builder("identity", ns::DISCO_INFO)
            .attr(palaver_proto::stanza::attr_name("category"), "account")
            .attr(palaver_proto::stanza::attr_name("type"), "registered")
            .build(),
    );
    q.append_child(feature(ns::DISCO_INFO));
    q.append_child(feature(ns::DISCO_ITEMS));
    Ok(Some(q))
}

async fn account_items(req: IqRequest) -> IqResult {
    if !account_exists(&req).await? {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    if !same_account(&req) {
        // Resources are only shown to the account itself.
        return Ok(Some(Element::bare("query", ns::DISCO_ITEMS)));
    }
    let mut q = Element::bare("query", ns::DISCO_ITEMS);
    if let Some(to) = &req.stanza.to {
        for s in req.core.sm.sessions(&to.to_bare()) {
            q.append_child(
                Element::builder("item", ns::DISCO_ITEMS)
                    .attr(
                        palaver_proto::stanza::attr_name("jid"),
                        format!("{}/{}", to.to_bare(), s.resource),
                    )
                    .build(),
            );
        }
    }
    Ok(Some(q))
}

async fn account_exists(req: &IqRequest) -> Result<bool, StanzaError> {
    let Some(to) = &req.stanza.to else {
        return Ok(false);
    };
    let Some(node) = to.node() else {
        return Ok(false);
    };
    req.core
        .storage
        .accounts
        .account_exists(to.domain().as_str(), node.as_str())
        .await
        .map_err(|_| StanzaError::new(Condition::InternalServerError))
}
