//! PEP's part of portable account data (XEP-0227 §"PEP"): each node as
//! `<pubsub xmlns='…pubsub#owner'><configure node='…'><x type='submit'/>`
//! and its items as `<pubsub xmlns='…pubsub'><items node='…'><item id='…'>`.

use super::node::{NODE_CONFIG, NodeConfig};
use super::store::{ItemRow, PubsubSql};
use super::{NS_OWNER, NS_PUBSUB};
use minidom::Element;
use palaver_proto::forms::{DataForm, FormType};
use palaver_proto::stanza::set_attr;
use palaver_server::ModuleCx;
use palaver_server::account_data::{AccountData, Tally, describe};
use palaver_server::hooks::Account;
use palaver_storage::StorageError;

const NODES: &str = "PEP node(s)";
const ITEMS: &str = "PEP item(s)";

pub(super) struct PepData;

/// Nodes read from a file: name, configuration, items (oldest first).
#[derive(Default)]
pub(super) struct Nodes(Vec<NodeData>);

/// Name, configuration, items (id, payload; oldest first).
type NodeData = (String, NodeConfig, Vec<(String, Element)>);

impl Nodes {
    fn entry(&mut self, node: &str) -> &mut NodeData {
        let i = match self.0.iter().position(|(n, _, _)| n == node) {
            Some(i) => i,
            None => {
                self.0
                    .push((node.to_string(), NodeConfig::pep_default(), Vec::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }
}

impl AccountData for PepData {
    type Data = Nodes;
    const ELEMENTS: &'static [(&'static str, &'static str)] =
        &[("pubsub", NS_OWNER), ("pubsub", NS_PUBSUB)];

    async fn export(
        &self,
        cx: &ModuleCx,
        a: &Account,
        tally: &mut Tally,
    ) -> Result<Vec<Element>, StorageError> {
        let db = PubsubSql::of(cx);
        let key = a.jid();
        let mut owner = Element::bare("pubsub", NS_OWNER);
        let mut data = Element::bare("pubsub", NS_PUBSUB);
        let mut n = 0;
        for node in db.nodes(&key).await? {
            let Some(json) = db.node(&key, &node).await? else {
                continue;
            };
            let cfg = NodeConfig::from_json(&json, &NodeConfig::pep_default());
            let mut c = Element::bare("configure", NS_OWNER);
            set_attr(&mut c, "node", node.as_str());
            c.append_child(cfg.to_form(FormType::Submit).to_element());
            owner.append_child(c);
            let mut items = Element::bare("items", NS_PUBSUB);
            set_attr(&mut items, "node", node.as_str());
            let rows = db.items(&key, &node, None).await?;
            tally.count(ITEMS, rows.len());
            for r in rows.into_iter().rev() {
                let mut i = Element::bare("item", NS_PUBSUB);
                set_attr(&mut i, "id", r.item_id.as_str());
                match r.payload.parse::<Element>() {
                    Ok(p) => i.append_child(p),
                    Err(e) => {
                        tally.warn(format!(
                            "{key}: PEP item {} of {node} is unreadable ({e}); left out",
                            r.item_id
                        ));
                        continue;
                    }
                };
                items.append_child(i);
            }
            data.append_child(items);
            n += 1;
        }
        tally.count(NODES, n);
        Ok(if n == 0 { vec![] } else { vec![owner, data] })
    }

    fn read(
        &self,
        a: &Account,
        el: &Element,
        data: &mut Nodes,
        tally: &mut Tally,
    ) -> Result<(), String> {
        let jid = a.jid();
        for c in el.children() {
            let Some(node) = c.attr("node").filter(|n| !n.is_empty()) else {
                tally.warn(format!(
                    "{jid}: ignored PEP element without node {}",
                    describe(c)
                ));
                continue;
            };
            if c.is("configure", NS_OWNER) {
                let e = data.entry(node);
                if let Some(Ok(form)) = DataForm::find_in(c) {
                    if form.form_type().is_some_and(|f| f != NODE_CONFIG) {
                        tally.warn(format!(
                            "{jid}: PEP node {node}: not a node_config form; defaults used"
                        ));
                    } else if let Err(err) = e.1.apply(&form, false) {
                        tally.warn(format!("{jid}: PEP node {node}: {err}; defaults used"));
                        e.1 = NodeConfig::pep_default();
                    }
                }
            } else if c.is("items", NS_PUBSUB) {
                let e = data.entry(node);
                for i in c.children().filter(|i| i.is("item", NS_PUBSUB)) {
                    match (i.attr("id"), i.children().next()) {
                        (Some(id), Some(p)) if !id.is_empty() => {
                            e.2.retain(|(x, _)| x != id);
                            e.2.push((id.to_string(), p.clone()));
                        }
                        _ => {
                            tally.warn(format!("{jid}: ignored PEP item {} of {node}", describe(i)))
                        }
                    }
                }
            } else {
                tally.warn(format!("{jid}: ignored PEP element {}", describe(c)));
            }
        }
        Ok(())
    }

    async fn clear(&self, cx: &ModuleCx, a: &Account) -> Result<(), StorageError> {
        PubsubSql::of(cx).delete_service(&a.jid()).await
    }

    async fn write(
        &self,
        cx: &ModuleCx,
        a: &Account,
        data: Nodes,
        tally: &mut Tally,
    ) -> Result<(), StorageError> {
        let db = PubsubSql::of(cx);
        let key = a.jid();
        tally.count(NODES, 0);
        tally.count(ITEMS, 0);
        for (node, cfg, items) in data.0 {
            db.create_node(&key, &node, &cfg.to_json(), &key).await?;
            db.set_config(&key, &node, &cfg.to_json()).await?;
            tally.count(NODES, 1);
            for (id, p) in items {
                let row = ItemRow {
                    item_id: id,
                    publisher: key.clone(),
                    payload: palaver_proto::writer::to_string(&p, ""),
                };
                db.publish(&key, &node, &row, cfg.max_items).await?;
                tally.count(ITEMS, 1);
            }
        }
        Ok(())
    }
}
