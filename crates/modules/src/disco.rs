//! XEP-0030: Service Discovery for the server and its accounts.
//!
//! Features and identities are collected from the modules enabled on the
//! host; nothing is listed that no module registered.

use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_proto::stanza::{attr_name, set_attr};
use palaver_server::{HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleDef};
use std::collections::BTreeMap;
use std::sync::Arc;

/// `mod_disco`.
pub struct Disco;

/// `mod_disco` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Disco>();

impl Module for Disco {
    const NAME: &'static str = "mod_disco";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Disco)
    }
}

/// `mod_disco` options.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Extra items listed in disco#items of the server (JIDs).
    #[serde(default)]
    extra_items: Vec<String>,
    /// XEP-0157 contact addresses: field name (e.g. `abuse-addresses`) → URIs.
    #[serde(default)]
    server_info: BTreeMap<String, Vec<String>>,
}

/// XEP-0115 node of this software.
pub const CAPS_NODE: &str = "https://palaver.chat/caps";
/// XEP-0115.
pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const NS_DATA: &str = "jabber:x:data";
const SERVERINFO: &str = "http://jabber.org/network/serverinfo";
const CONTACT_FIELDS: &[&str] = &[
    "abuse-addresses",
    "admin-addresses",
    "feedback-addresses",
    "sales-addresses",
    "security-addresses",
    "status-addresses",
    "support-addresses",
];

struct Info {
    server_info: BTreeMap<String, Vec<String>>,
}

impl Info {
    /// The disco#info payload of the server (without the node attribute).
    fn query(&self, host: &palaver_server::host::Host) -> Element {
        let mut q = Element::bare("query", ns::DISCO_INFO);
        for id in host.identities() {
            let mut b = Element::builder("identity", ns::DISCO_INFO)
                .attr(attr_name("category"), id.category.as_str())
                .attr(attr_name("type"), id.kind.as_str());
            if let Some(n) = &id.name {
                b = b.attr(attr_name("name"), n.as_str());
            }
            q.append_child(b.build());
        }
        for f in host.features() {
            q.append_child(feature(f));
        }
        if !self.server_info.is_empty() {
            let mut x = Element::bare("x", NS_DATA);
            set_attr(&mut x, "type", "result");
            let mut ft = Element::bare("field", NS_DATA);
            set_attr(&mut ft, "var", "FORM_TYPE");
            set_attr(&mut ft, "type", "hidden");
            ft.append_child(
                Element::builder("value", NS_DATA)
                    .append(SERVERINFO)
                    .build(),
            );
            x.append_child(ft);
            for (var, values) in &self.server_info {
                let mut f = Element::bare("field", NS_DATA);
                set_attr(&mut f, "var", var.as_str());
                for v in values {
                    f.append_child(
                        Element::builder("value", NS_DATA)
                            .append(v.as_str())
                            .build(),
                    );
                }
                x.append_child(f);
            }
            q.append_child(x);
        }
        q
    }

    /// XEP-0115 §5.1 verification string, SHA-1, base64.
    fn ver(&self, host: &palaver_server::host::Host) -> String {
        let mut ids: Vec<String> = host
            .identities()
            .iter()
            .map(|i| {
                format!(
                    "{}/{}//{}",
                    i.category,
                    i.kind,
                    i.name.clone().unwrap_or_default()
                )
            })
            .collect();
        ids.sort();
        let mut s = String::new();
        for i in ids {
            s.push_str(&i);
            s.push('<');
        }
        let mut feats: Vec<&String> = host.features().iter().collect();
        feats.sort();
        for f in feats {
            s.push_str(f);
            s.push('<');
        }
        if !self.server_info.is_empty() {
            s.push_str(SERVERINFO);
            s.push('<');
            for (var, values) in &self.server_info {
                s.push_str(var);
                s.push('<');
                let mut v = values.clone();
                v.sort();
                for x in v {
                    s.push_str(&x);
                    s.push('<');
                }
            }
        }
        use base64::Engine;
        use sha1::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
    }
}

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    for j in &o.extra_items {
        jid::Jid::new(j).map_err(|e| format!("extra_items: `{j}` is not a JID: {e}"))?;
    }
    for (k, values) in &o.server_info {
        if !CONTACT_FIELDS.contains(&k.as_str()) {
            return Err(format!(
                "server_info: unknown field `{k}`; use one of {}",
                CONTACT_FIELDS.join(", ")
            ));
        }
        if values.iter().any(|v| !v.contains(':')) {
            return Err(format!(
                "server_info.{k}: values must be URIs (mailto:, xmpp:, https:)"
            ));
        }
    }
    host.add_feature(ns::DISCO_INFO);
    host.add_feature(ns::DISCO_ITEMS);
    host.add_identity("server", "im", Some("Palaver"));
    let info = Arc::new(Info {
        server_info: o.server_info,
    });
    let i = info.clone();
    host.on_iq(IqScope::Server, IqType::Get, ns::DISCO_INFO, move |req| {
        let i = i.clone();
        async move {
            if let Some(h) = node_of(&req).and_then(|n| req.cx.host().disco_node(&n)) {
                return h(req, false).await;
            }
            server_info(req, &i)
        }
    });
    // XEP-0115 §6.3: the server's capabilities in stream features.
    let i = info.clone();
    let caps = Arc::new(move |h: &palaver_server::host::Host| {
        let mut c = Element::bare("c", NS_CAPS);
        set_attr(&mut c, "hash", "sha-1");
        set_attr(&mut c, "node", CAPS_NODE);
        set_attr(&mut c, "ver", i.ver(h));
        vec![c]
    });
    host.add_stream_features(caps.clone());
    host.add_pre_auth_stream_features(caps);
    let items = std::sync::Arc::new(o.extra_items);
    host.on_iq(IqScope::Server, IqType::Get, ns::DISCO_ITEMS, move |req| {
        let items = items.clone();
        async move {
            if let Some(h) = node_of(&req).and_then(|n| req.cx.host().disco_node(&n)) {
                return h(req, true).await;
            }
            server_items(req, &items)
        }
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

fn server_info(req: IqRequest, info: &Info) -> IqResult {
    let mut q = info.query(req.cx.host());
    if let Some(node) = node_of(&req) {
        // Only the caps node of the current verification string is known.
        if node != format!("{CAPS_NODE}#{}", info.ver(req.cx.host())) {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        set_attr(&mut q, "node", node);
    }
    Ok(Some(q))
}

fn feature(var: &str) -> Element {
    Element::builder("feature", ns::DISCO_INFO)
        .attr(attr_name("var"), var)
        .build()
}

fn server_items(req: IqRequest, extra: &[String]) -> IqResult {
    if node_of(&req).is_some() {
        return Err(StanzaError::new(Condition::ItemNotFound));
    }
    let mut q = Element::bare("query", ns::DISCO_ITEMS);
    let components = req.cx.components();
    for j in req
        .cx
        .host()
        .services()
        .iter()
        .chain(&components)
        .chain(extra)
    {
        q.append_child(
            Element::builder("item", ns::DISCO_ITEMS)
                .attr(attr_name("jid"), j.as_str())
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
        return account_node(req, false).await;
    }
    let mut q = Element::bare("query", ns::DISCO_INFO);
    q.append_child(
        Element::builder("identity", ns::DISCO_INFO)
            .attr(attr_name("category"), "account")
            .attr(attr_name("type"), "registered")
            .build(),
    );
    for id in req.cx.host().account_identities() {
        let mut b = Element::builder("identity", ns::DISCO_INFO)
            .attr(attr_name("category"), id.category.as_str())
            .attr(attr_name("type"), id.kind.as_str());
        if let Some(n) = &id.name {
            b = b.attr(attr_name("name"), n.as_str());
        }
        q.append_child(b.build());
    }
    let mut feats: Vec<&str> = vec![ns::DISCO_INFO, ns::DISCO_ITEMS];
    feats.extend(req.cx.host().account_features().iter().map(String::as_str));
    feats.sort_unstable();
    feats.dedup();
    for f in feats {
        q.append_child(feature(f));
    }
    Ok(Some(q))
}

async fn account_items(req: IqRequest) -> IqResult {
    if !account_exists(&req).await? {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    if node_of(&req).is_some() {
        return account_node(req, true).await;
    }
    let mut q = Element::bare("query", ns::DISCO_ITEMS);
    // Resources are only shown to the account itself.
    if same_account(&req)
        && let Some(to) = &req.stanza.to
    {
        for s in req.cx.sessions().sessions(&to.to_bare()) {
            q.append_child(
                Element::builder("item", ns::DISCO_ITEMS)
                    .attr(attr_name("jid"), format!("{}/{}", to.to_bare(), s.resource))
                    .build(),
            );
        }
    }
    // What modules list on the account (PEP nodes the requester may see).
    for h in req.cx.host().account_disco() {
        let r = IqRequest {
            stanza: req.stanza.clone(),
            cx: req.cx.clone(),
        };
        if let Some(more) = h(r, true).await? {
            for c in more.children() {
                q.append_child(c.clone());
            }
        }
    }
    Ok(Some(q))
}

/// A disco query to an account naming a node: the first module that
/// knows the node answers.
async fn account_node(req: IqRequest, items: bool) -> IqResult {
    for h in req.cx.host().account_disco() {
        let r = IqRequest {
            stanza: req.stanza.clone(),
            cx: req.cx.clone(),
        };
        if let Some(answer) = h(r, items).await? {
            return Ok(Some(answer));
        }
    }
    Err(StanzaError::new(Condition::ItemNotFound))
}

async fn account_exists(req: &IqRequest) -> Result<bool, StanzaError> {
    let Some(to) = &req.stanza.to else {
        return Ok(false);
    };
    let Some(node) = to.node() else {
        return Ok(false);
    };
    req.cx
        .storage()
        .accounts
        .account_exists(to.domain().as_str(), node.as_str())
        .await
        .map_err(|_| StanzaError::new(Condition::InternalServerError))
}
