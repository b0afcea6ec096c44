//! XEP-0060 requests on one pubsub service — `pubsub.HOST` or a user's PEP
//! service (XEP-0163) — and the notifications they cause.

use super::node::{AccessModel, NODE_CONFIG, NodeConfig, PUBLISH_OPTIONS, PublishModel, SendLast};
use super::store::{ItemRow, PubsubSql, SubRow};
use super::subopts::SubOptions;
use super::{NS_EVENT, NS_OWNER, NS_PUBSUB, NS_PUBSUB_ERRORS, State};
use jid::{BareJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::forms::{DataForm, FormType};
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::{IqRequest, IqResult, ModuleCx};
use std::collections::HashSet;
use std::sync::Arc;

/// Which service a request addresses.
#[derive(Clone, Debug)]
pub struct Target {
    /// Storage key: the service domain, or the owner's bare JID for PEP.
    pub key: String,
    /// The PEP owner, for a PEP service.
    pub pep: Option<BareJid>,
}

impl Target {
    /// The JID notifications and answers come from.
    pub fn jid(&self) -> Jid {
        match &self.pep {
            Some(b) => Jid::from(b.clone()),
            None => Jid::new(&self.key)
                .unwrap_or_else(|_| Jid::from(BareJid::new("invalid").expect("static"))),
        }
    }

    fn default_config(&self, st: &State) -> NodeConfig {
        if self.pep.is_some() {
            NodeConfig::pep_default()
        } else {
            NodeConfig {
                max_items: Some(st.max_items_node.clamp(1, 10)),
                ..NodeConfig::default()
            }
        }
    }
}

/// A pubsub error with its application condition (`pubsub#errors`).
pub fn perr(cond: Condition, app: &str) -> StanzaError {
    StanzaError::new(cond).with_extra(Element::bare(app, NS_PUBSUB_ERRORS))
}

fn unsupported(feature: &str) -> StanzaError {
    let mut el = Element::bare("unsupported", NS_PUBSUB_ERRORS);
    set_attr(&mut el, "feature", feature);
    StanzaError::new(Condition::FeatureNotImplemented).with_extra(el)
}

fn storage(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("pubsub", &e)
}

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::new(Condition::BadRequest).text(text)
}

fn node_attr(el: &Element) -> Result<String, StanzaError> {
    match el.attr("node") {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(perr(Condition::BadRequest, "nodeid-required")),
    }
}

/// The only child of a `<pubsub/>` that names the action (ignoring
/// `<options/>`, `<configure/>` and `<publish-options/>` beside it).
fn action<'a>(p: &'a Element, names: &[&str]) -> Option<&'a Element> {
    p.children().find(|c| names.contains(&c.name()))
}

/// Answer a `pubsub` or `pubsub#owner` IQ on a service.
pub async fn handle(st: Arc<State>, t: Target, req: IqRequest) -> IqResult {
    let p = req.payload().ok_or_else(|| bad("empty request"))?.clone();
    let from = req.stanza.from.clone();
    let cx = req.cx.clone();
    let get = req.is_get();
    let sv = Svc {
        st,
        t,
        cx,
        db: PubsubSql::of(&req.cx),
    };
    if p.is("pubsub", NS_OWNER) {
        let a = action(
            &p,
            &[
                "configure",
                "delete",
                "purge",
                "subscriptions",
                "affiliations",
                "default",
            ],
        )
        .ok_or_else(|| bad("no owner action"))?;
        return match (a.name(), get) {
            ("configure", true) => sv.get_config(&from, a).await,
            ("configure", false) => sv.set_config(&from, a).await,
            ("default", true) => Ok(Some(owner_wrap(default_el(&sv.t.default_config(&sv.st))))),
            ("delete", false) => sv.delete(&from, a).await,
            ("purge", false) => sv.purge(&from, a).await,
            ("subscriptions", true) => sv.owner_subscriptions(&from, a).await,
            ("subscriptions", false) => sv.set_subscriptions(&from, a).await,
            ("affiliations", true) => sv.owner_affiliations(&from, a).await,
            ("affiliations", false) => sv.set_affiliations(&from, a).await,
            _ => Err(bad("wrong IQ type for this action")),
        };
    }
    if !p.is("pubsub", NS_PUBSUB) {
        return Err(bad("not a pubsub request"));
    }
    let a = action(
        &p,
        &[
            "create",
            "publish",
            "retract",
            "subscribe",
            "unsubscribe",
            "items",
            "subscriptions",
            "affiliations",
            "options",
            "default",
        ],
    )
    .ok_or_else(|| bad("no pubsub action"))?;
    match (a.name(), get) {
        ("create", false) => {
            sv.create(&from, a, p.get_child("configure", NS_PUBSUB))
                .await
        }
        ("publish", false) => {
            sv.publish(&from, a, p.get_child("publish-options", NS_PUBSUB))
                .await
        }
        ("retract", false) => sv.retract(&from, a).await,
        ("subscribe", false) => {
            sv.subscribe(&from, a, p.get_child("options", NS_PUBSUB))
                .await
        }
        ("unsubscribe", false) => sv.unsubscribe(&from, a).await,
        ("items", true) => sv.items(&from, a).await,
        ("subscriptions", true) => sv.my_subscriptions(&from, a).await,
        ("affiliations", true) => sv.my_affiliations(&from, a).await,
        ("options", true) => sv.get_options(&from, a).await,
        ("options", false) => sv.set_options(&from, a).await,
        ("default", true) => {
            let mut d = Element::bare("default", NS_PUBSUB);
            if let Some(n) = a.attr("node") {
                sv.node(n).await?;
                set_attr(&mut d, "node", n);
            }
            d.append_child(SubOptions::default().to_form(true).to_element());
            Ok(Some(wrap(d)))
        }
        _ => Err(bad("wrong IQ type for this action")),
    }
}

fn default_el(c: &NodeConfig) -> Element {
    let mut d = Element::bare("default", NS_OWNER);
    d.append_child(c.to_form(FormType::Form).to_element());
    d
}

fn owner_wrap(el: Element) -> Element {
    let mut p = Element::bare("pubsub", NS_OWNER);
    p.append_child(el);
    p
}

fn wrap(el: Element) -> Element {
    let mut p = Element::bare("pubsub", NS_PUBSUB);
    p.append_child(el);
    p
}

/// One service, answering one request.
pub struct Svc {
    pub st: Arc<State>,
    pub t: Target,
    pub cx: ModuleCx,
    pub db: PubsubSql,
}

/// What an entity may do with a node.
struct Node {
    name: String,
    cfg: NodeConfig,
}

impl Svc {
    async fn node(&self, name: &str) -> Result<Node, StanzaError> {
        match self.db.node(&self.t.key, name).await.map_err(storage)? {
            Some(json) => Ok(Node {
                name: name.to_string(),
                cfg: NodeConfig::from_json(&json, &self.t.default_config(&self.st)),
            }),
            None => Err(StanzaError::new(Condition::ItemNotFound)),
        }
    }

    /// The affiliation of `who` (bare) with a node; the PEP owner is owner
    /// of every node of its service.
    async fn affiliation(&self, node: &str, who: &BareJid) -> Result<String, StanzaError> {
        if self.t.pep.as_ref() == Some(who) {
            return Ok("owner".into());
        }
        self.db
            .affiliation(&self.t.key, node, who.as_str())
            .await
            .map_err(storage)
    }

    async fn require_owner(&self, node: &str, who: &Jid) -> Result<(), StanzaError> {
        if self.affiliation(node, &who.to_bare()).await? == "owner" {
            Ok(())
        } else {
            Err(StanzaError::new(Condition::Forbidden))
        }
    }

    /// The owners to ask about roster-based access (the PEP owner, or the
    /// node's local owners).
    async fn owners(&self, node: &str) -> Result<Vec<BareJid>, StanzaError> {
        if let Some(o) = &self.t.pep {
            return Ok(vec![o.clone()]);
        }
        Ok(self
            .db
            .affiliations(&self.t.key, node)
            .await
            .map_err(storage)?
            .into_iter()
            .filter(|(_, a)| a == "owner")
            .filter_map(|(j, _)| BareJid::new(&j).ok())
            .collect())
    }

    /// §6.1.3 / §6.5.9: whether `who` may subscribe to and retrieve items
    /// of a node under its access model; the error says why not.
    async fn may_access(&self, n: &Node, who: &BareJid) -> Result<(), StanzaError> {
        let aff = self.affiliation(&n.name, who).await?;
        match aff.as_str() {
            "outcast" => return Err(StanzaError::new(Condition::Forbidden)),
            "owner" | "publisher" | "member" | "publish-only" => return Ok(()),
            _ => {}
        }
        match n.cfg.access_model {
            AccessModel::Open => Ok(()),
            AccessModel::Presence | AccessModel::Roster => {
                for o in self.owners(&n.name).await? {
                    if !self.cx.is_local(o.domain().as_str()) {
                        continue;
                    }
                    let Some(user) = o.node() else { continue };
                    let item = self
                        .cx
                        .storage()
                        .roster
                        .roster_item(o.domain().as_str(), user.as_str(), who.as_str())
                        .await
                        .map_err(storage)?;
                    if let Some(item) = item {
                        let ok = match n.cfg.access_model {
                            AccessModel::Presence => item.subscription.has_from(),
                            _ => item
                                .groups
                                .iter()
                                .any(|g| n.cfg.roster_groups_allowed.contains(g)),
                        };
                        if ok {
                            return Ok(());
                        }
                    }
                }
                Err(if n.cfg.access_model == AccessModel::Presence {
                    perr(Condition::NotAuthorized, "presence-subscription-required")
                } else {
                    perr(Condition::NotAuthorized, "not-in-roster-group")
                })
            }
            AccessModel::Whitelist => Err(perr(Condition::NotAllowed, "closed-node")),
            AccessModel::Authorize => {
                let subs = self
                    .db
                    .subscriptions_of(&self.t.key, who.as_str())
                    .await
                    .map_err(storage)?;
                if subs
                    .iter()
                    .any(|s| s.node == n.name && s.state == "subscribed")
                {
                    Ok(())
                } else {
                    Err(perr(Condition::NotAuthorized, "not-subscribed"))
                }
            }
        }
    }

    /// Whether `who` may create nodes here.
    fn may_create(&self, who: &Jid) -> Result<(), StanzaError> {
        match &self.t.pep {
            Some(o) if *o == who.to_bare() => Ok(()),
            Some(_) => Err(StanzaError::new(Condition::Forbidden)),
            None => {
                if self.cx.config().access_on(
                    &self.st.host,
                    &self.st.access_createnode,
                    who.to_bare().as_str(),
                    true,
                ) {
                    Ok(())
                } else {
                    Err(StanzaError::new(Condition::Forbidden))
                }
            }
        }
    }

    async fn create_node(
        &self,
        who: &Jid,
        name: &str,
        form: Option<&DataForm>,
    ) -> Result<NodeConfig, StanzaError> {
        let mut cfg = self.t.default_config(&self.st);
        if let Some(f) = form {
            cfg.apply(f, true)
                .map_err(|e| StanzaError::new(Condition::NotAcceptable).text(e))?;
        }
        if let Some(m) = cfg.max_items
            && m > self.st.max_items_node
        {
            cfg.max_items = Some(self.st.max_items_node);
        }
        let owner = who.to_bare();
        if !self
            .db
            .create_node(&self.t.key, name, &cfg.to_json(), owner.as_str())
            .await
            .map_err(storage)?
        {
            return Err(StanzaError::new(Condition::Conflict));
        }
        Ok(cfg)
    }

    async fn create(&self, who: &Jid, a: &Element, configure: Option<&Element>) -> IqResult {
        self.may_create(who)?;
        let form = configure
            .and_then(DataForm::find_in)
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let (name, instant) = match a.attr("node") {
            Some(n) if !n.is_empty() => (n.to_string(), false),
            _ if self.t.pep.is_some() => {
                return Err(perr(Condition::NotAcceptable, "nodeid-required"));
            }
            _ => (format!("{:016x}", rand::random::<u64>()), true),
        };
        self.create_node(who, &name, form.as_ref()).await?;
        if instant {
            let mut c = Element::bare("create", NS_PUBSUB);
            set_attr(&mut c, "node", name);
            return Ok(Some(wrap(c)));
        }
        Ok(None)
    }

    async fn publish(&self, who: &Jid, a: &Element, opts: Option<&Element>) -> IqResult {
        let name = node_attr(a)?;
        let options = opts
            .and_then(DataForm::find_in)
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        if let Some(o) = &options
            && o.form_type().is_some_and(|f| f != PUBLISH_OPTIONS)
        {
            return Err(bad("publish-options must be a pubsub#publish-options form"));
        }
        let mut items = a.children().filter(|c| c.is("item", NS_PUBSUB));
        let item = items.next();
        if items.next().is_some() {
            return Err(perr(Condition::BadRequest, "invalid-payload").text("one item per publish"));
        }
        let n = match self.node(&name).await {
            Ok(n) => {
                if let Some(o) = &options {
                    match n.cfg.meets(o) {
                        Ok(true) => {}
                        Ok(false) | Err(_) => {
                            return Err(perr(Condition::Conflict, "precondition-not-met"));
                        }
                    }
                }
                n
            }
            Err(e) if e.condition == Condition::ItemNotFound => {
                // §7.1.4 auto-create (XEP-0163 §3: always for PEP).
                self.may_create(who)
                    .map_err(|_| StanzaError::new(Condition::ItemNotFound))?;
                let cfg = match self.create_node(who, &name, options.as_ref()).await {
                    Ok(c) => c,
                    // Created concurrently: check preconditions against it.
                    Err(e) if e.condition == Condition::Conflict => {
                        let n = self.node(&name).await?;
                        if let Some(o) = &options
                            && !n.cfg.meets(o).unwrap_or(false)
                        {
                            return Err(perr(Condition::Conflict, "precondition-not-met"));
                        }
                        n.cfg
                    }
                    Err(e) => return Err(e),
                };
                Node {
                    name: name.clone(),
                    cfg,
                }
            }
            Err(e) => return Err(e),
        };
        let bare = who.to_bare();
        let aff = self.affiliation(&name, &bare).await?;
        let allowed = match aff.as_str() {
            "owner" | "publisher" | "publish-only" => true,
            "outcast" => false,
            _ => match n.cfg.publish_model {
                PublishModel::Open => true,
                PublishModel::Subscribers => self
                    .db
                    .subscriptions_of(&self.t.key, bare.as_str())
                    .await
                    .map_err(storage)?
                    .iter()
                    .any(|s| s.node == name && s.state == "subscribed"),
                PublishModel::Publishers => false,
            },
        };
        if !allowed {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let (id, payload) = match item {
            Some(i) => {
                let mut ps = i.children();
                let payload = ps.next().cloned();
                if ps.next().is_some() {
                    return Err(perr(Condition::BadRequest, "invalid-payload"));
                }
                (
                    i.attr("id").filter(|s| !s.is_empty()).map(str::to_string),
                    payload,
                )
            }
            None => (None, None),
        };
        if payload.is_none() && (n.cfg.deliver_payloads || n.cfg.persist_items) {
            return Err(perr(Condition::BadRequest, "payload-required"));
        }
        if payload.is_some() && !n.cfg.deliver_payloads && !n.cfg.persist_items {
            return Err(perr(Condition::BadRequest, "item-forbidden"));
        }
        let id = id.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let row = ItemRow {
            item_id: id.clone(),
            publisher: bare.to_string(),
            payload: payload
                .as_ref()
                .map(|p| palaver_proto::writer::to_string(p, ""))
                .unwrap_or_default(),
        };
        if n.cfg.persist_items {
            self.db
                .publish(&self.t.key, &name, &row, n.cfg.max_items)
                .await
                .map_err(storage)?;
        }
        self.notify_items(&n, &row, payload.as_ref()).await?;
        if self.t.pep.is_some() && name == super::bookmarks::NODE {
            super::bookmarks::pep_changed(self).await;
        }
        let mut pu = Element::bare("publish", NS_PUBSUB);
        set_attr(&mut pu, "node", name);
        let mut it = Element::bare("item", NS_PUBSUB);
        set_attr(&mut it, "id", id);
        pu.append_child(it);
        Ok(Some(wrap(pu)))
    }

    /// Send the `<items/>` event of a publish.
    async fn notify_items(
        &self,
        n: &Node,
        row: &ItemRow,
        payload: Option<&Element>,
    ) -> Result<(), StanzaError> {
        if !n.cfg.deliver_notifications {
            return Ok(());
        }
        let mut items = Element::bare("items", NS_EVENT);
        set_attr(&mut items, "node", n.name.as_str());
        items.append_child(event_item(row, payload, n.cfg.deliver_payloads));
        self.broadcast(n, items).await
    }

    /// Everyone to notify about a node: explicit subscriptions (approved,
    /// with their options; expired ones end here), and for PEP the owner's
    /// and its contacts' sessions that asked for the node with XEP-0115
    /// `+notify` and may see it.
    async fn recipients(&self, n: &Node) -> Result<Vec<Recipient>, StanzaError> {
        let mut out: Vec<Recipient> = Vec::new();
        let now = now_ms();
        let mut bare_subs: HashSet<String> = HashSet::new();
        for s in self
            .db
            .subscriptions(&self.t.key, &n.name)
            .await
            .map_err(storage)?
        {
            if s.state != "subscribed" {
                continue;
            }
            let Ok(j) = Jid::new(&s.jid) else { continue };
            if s.options.expire.passed(now) {
                self.db
                    .unsubscribe(&self.t.key, &n.name, &s.jid)
                    .await
                    .map_err(storage)?;
                continue;
            }
            if j.resource().is_none() {
                bare_subs.insert(j.to_string());
            }
            if !s.deliver {
                continue;
            }
            if self.affiliation(&n.name, &j.to_bare()).await? == "outcast" {
                continue;
            }
            out.push(Recipient {
                jid: j,
                opts: Some(s.options),
            });
        }
        if let Some(owner) = &self.t.pep {
            let mut people = vec![owner.clone()];
            if let Some(user) = owner.node() {
                let (_, roster) = self
                    .cx
                    .storage()
                    .roster
                    .roster(owner.domain().as_str(), user.as_str())
                    .await
                    .map_err(storage)?;
                for it in roster {
                    if !it.subscription.has_from() {
                        continue;
                    }
                    if let Ok(b) = BareJid::new(&it.jid) {
                        people.push(b);
                    }
                }
            }
            for b in people {
                if bare_subs.contains(b.as_str()) {
                    continue;
                }
                // Local contacts by their sessions; remote ones by the
                // presence they sent here (over federation).
                let fulls = if self.cx.is_local(b.domain().as_str()) {
                    self.st.interested(&self.cx, &b, &n.name)
                } else {
                    self.st.remote_interested(&b, &n.name)
                };
                if fulls.is_empty() {
                    continue;
                }
                if b != *owner && self.may_access(n, &b).await.is_err() {
                    continue;
                }
                for f in fulls {
                    let j = Jid::from(f);
                    if !out.iter().any(|r| r.jid == j) {
                        out.push(Recipient { jid: j, opts: None });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Send `<event>` + `payload_el` to every recipient of the node.
    async fn broadcast(&self, n: &Node, payload_el: Element) -> Result<(), StanzaError> {
        let to = self.recipients(n).await?;
        self.notify_recipients(n, &to, payload_el).await;
        Ok(())
    }

    /// Send one event to `to`, as each subscription's options ask: only to
    /// sessions whose presence is among `show-values`, item events gathered
    /// into digests, with a body when asked.
    async fn notify_recipients(&self, n: &Node, to: &[Recipient], payload_el: Element) {
        let from = self.t.jid();
        let kind = n.cfg.notification_type.as_str();
        let digestible = payload_el.name() == "items";
        let mut event = Element::bare("event", NS_EVENT);
        event.append_child(payload_el.clone());
        // One message (and one with a body), shared by every recipient:
        // serialized once for all of them (`Stanza::write_xml`).
        let mut plain: Option<Stanza> = None;
        let mut with_body: Option<Stanza> = None;
        let mut digests: Vec<(Jid, bool, u64)> = Vec::new();
        let send = |template: &mut Option<Stanza>, to: Jid, body: bool| {
            let t = template.get_or_insert_with(|| {
                let body = body.then(|| body_text(&n.name, &payload_el));
                event_message_with(&from, to.clone(), kind, event.clone(), body)
            });
            let mut copy = t.clone();
            copy.set_to(Some(to));
            self.cx.route(copy);
        };
        for r in to {
            let Some(o) = &r.opts else {
                send(&mut plain, r.jid.clone(), false);
                continue;
            };
            for target in self.show_targets(&r.jid, o) {
                if o.digest && digestible {
                    digests.push((target, o.include_body, o.digest_frequency));
                    continue;
                }
                if o.include_body {
                    send(&mut with_body, target, true);
                } else {
                    send(&mut plain, target, false);
                }
            }
        }
        if !digests.is_empty() {
            self.gather(n, &from, kind, &payload_el, digests).await;
        }
    }

    /// Item notifications for digest subscriptions (§6.3 `pubsub#digest`):
    /// stored first, then added to each recipient's digest, so that a
    /// restart or a crash before the digest is due loses none.
    async fn gather(
        &self,
        n: &Node,
        from: &Jid,
        kind: &str,
        payload_el: &Element,
        digests: Vec<(Jid, bool, u64)>,
    ) {
        let children: Vec<Element> = payload_el.children().cloned().collect();
        let mut rows = Vec::new();
        let mut adds = Vec::new();
        for (target, body, frequency) in digests {
            let due_ms = self
                .st
                .digest_due_ms(&self.t.key, &n.name, &target, frequency);
            let mut mine = Vec::with_capacity(children.len());
            for c in &children {
                let seq = super::next_digest_seq();
                rows.push(super::store::DigestRow {
                    service: self.t.key.clone(),
                    node: n.name.clone(),
                    recipient: target.to_string(),
                    seq,
                    due_ms,
                    from_jid: from.to_string(),
                    kind: kind.to_string(),
                    body,
                    xml: palaver_proto::writer::to_string(c, ""),
                });
                mine.push((seq, c.clone()));
            }
            adds.push((target, body, due_ms, mine));
        }
        if let Err(e) = self.db.add_digest_rows(&self.st.host, &rows).await {
            // Still gathered in memory: only a crash would lose them now.
            tracing::warn!(error = %e, "storing pubsub digest notifications failed");
        }
        for (target, body, due_ms, mine) in adds {
            let full = self.st.add_digest(
                &self.t.key,
                from,
                &target,
                &n.name,
                kind,
                body,
                mine,
                due_ms,
            );
            if let Some(d) = full {
                self.st.send_digest(&self.cx, d).await;
            }
        }
    }

    /// Where a subscription's notifications go under `pubsub#show-values`:
    /// the subscribed JID, or (with show values) the subscriber's available
    /// sessions whose presence show is among them.
    fn show_targets(&self, jid: &Jid, o: &SubOptions) -> Vec<Jid> {
        if o.show_values.is_none() || !self.cx.is_local(jid.domain().as_str()) {
            return vec![jid.clone()];
        }
        let bare = jid.to_bare();
        self.cx
            .sessions()
            .available(&bare)
            .into_iter()
            .filter(|h| jid.resource().is_none_or(|r| r.as_str() == h.resource))
            .filter(|h| o.wants_show(&show_of(h.presence.as_deref())))
            .filter_map(|h| bare.with_resource_str(&h.resource).ok().map(Jid::from))
            .collect()
    }

    async fn retract(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        let n = self.node(&name).await?;
        let Some(id) = a
            .children()
            .find(|c| c.is("item", NS_PUBSUB))
            .and_then(|i| i.attr("id"))
            .filter(|s| !s.is_empty())
        else {
            return Err(perr(Condition::BadRequest, "item-required"));
        };
        let Some(row) = self
            .db
            .item(&self.t.key, &name, id)
            .await
            .map_err(storage)?
        else {
            return Err(StanzaError::new(Condition::ItemNotFound));
        };
        let aff = self.affiliation(&name, &who.to_bare()).await?;
        if aff != "owner" && !(aff == "publisher" && row.publisher == who.to_bare().as_str()) {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        self.db
            .retract(&self.t.key, &name, id)
            .await
            .map_err(storage)?;
        let notify = matches!(a.attr("notify"), Some("true" | "1"));
        if notify || n.cfg.notify_retract {
            let mut items = Element::bare("items", NS_EVENT);
            set_attr(&mut items, "node", name.as_str());
            let mut r = Element::bare("retract", NS_EVENT);
            set_attr(&mut r, "id", id);
            items.append_child(r);
            self.broadcast(&n, items).await?;
        }
        if self.t.pep.is_some() && name == super::bookmarks::NODE {
            super::bookmarks::pep_changed(self).await;
        }
        Ok(None)
    }

    async fn subscribe(&self, who: &Jid, a: &Element, options: Option<&Element>) -> IqResult {
        let name = node_attr(a)?;
        let jid_s = a
            .attr("jid")
            .ok_or_else(|| perr(Condition::BadRequest, "invalid-jid"))?;
        let jid = Jid::new(jid_s).map_err(|_| perr(Condition::BadRequest, "invalid-jid"))?;
        if jid.to_bare() != who.to_bare() {
            return Err(perr(Condition::BadRequest, "invalid-jid"));
        }
        let (deliver, sub_options) = match options.and_then(DataForm::find_in) {
            Some(Ok(f)) => self.parse_options(&f, &jid, true, &SubOptions::default())?,
            Some(Err(e)) => {
                return Err(perr(Condition::BadRequest, "invalid-options").text(e.to_string()));
            }
            None => (true, SubOptions::default()),
        };
        let n = self.node(&name).await?;
        let bare = jid.to_bare();
        let pending = match self.may_access(&n, &bare).await {
            Ok(()) => false,
            Err(_)
                if n.cfg.access_model == AccessModel::Authorize
                    && self.affiliation(&name, &bare).await? != "outcast" =>
            {
                true
            }
            Err(e) => return Err(e),
        };
        let sub = SubRow {
            node: name.clone(),
            jid: jid.to_string(),
            subid: format!("{:016x}", rand::random::<u64>()),
            state: if pending { "pending" } else { "subscribed" }.into(),
            deliver,
            options: sub_options,
        };
        self.db
            .subscribe(&self.t.key, &sub)
            .await
            .map_err(storage)?;
        if pending {
            self.ask_owners(&n, &jid, &sub.subid).await?;
        } else if n.cfg.send_last_published_item != SendLast::Never {
            // §6.1.7: the last item, after the result.
            if let Some(last) = self
                .db
                .items(&self.t.key, &name, Some(1))
                .await
                .map_err(storage)?
                .into_iter()
                .next()
            {
                let payload = last.payload.parse::<Element>().ok();
                let mut items = Element::bare("items", NS_EVENT);
                set_attr(&mut items, "node", name.as_str());
                items.append_child(event_item(&last, payload.as_ref(), n.cfg.deliver_payloads));
                let body = sub.options.include_body.then(|| body_text(&name, &items));
                let mut event = Element::bare("event", NS_EVENT);
                event.append_child(items);
                let msg = event_message_with(
                    &self.t.jid(),
                    jid.clone(),
                    &n.cfg.notification_type,
                    event,
                    body,
                );
                let cx = self.cx.clone();
                // After the IQ result has been routed.
                cx.clone().spawn(async move {
                    tokio::task::yield_now().await;
                    cx.route(msg);
                });
            }
        }
        Ok(Some(wrap(sub_el(&sub, NS_PUBSUB))))
    }

    /// The subscription of `jid` to a node that `who` may look at (the
    /// subscriber itself or an owner).
    async fn subscription_of(&self, who: &Jid, a: &Element) -> Result<SubRow, StanzaError> {
        let name = node_attr(a)?;
        self.node(&name).await?;
        let jid = a
            .attr("jid")
            .and_then(|j| Jid::new(j).ok())
            .ok_or_else(|| perr(Condition::BadRequest, "jid-required"))?;
        if jid.to_bare() != who.to_bare()
            && self.affiliation(&name, &who.to_bare()).await? != "owner"
        {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        self.db
            .subscriptions(&self.t.key, &name)
            .await
            .map_err(storage)?
            .into_iter()
            .find(|s| s.jid == jid.as_str())
            .ok_or_else(|| perr(Condition::UnexpectedRequest, "not-subscribed"))
    }

    /// §6.3: a subscription's options form.
    async fn get_options(&self, who: &Jid, a: &Element) -> IqResult {
        let s = self.subscription_of(who, a).await?;
        let mut o = Element::bare("options", NS_PUBSUB);
        set_attr(&mut o, "node", s.node.as_str());
        set_attr(&mut o, "jid", s.jid.as_str());
        set_attr(&mut o, "subid", s.subid.as_str());
        o.append_child(s.options.to_form(s.deliver).to_element());
        Ok(Some(wrap(o)))
    }

    /// A submitted subscription options form for `jid`'s subscription.
    fn parse_options(
        &self,
        form: &DataForm,
        jid: &Jid,
        deliver: bool,
        base: &SubOptions,
    ) -> Result<(bool, SubOptions), StanzaError> {
        let refuse = |t: String| perr(Condition::NotAcceptable, "invalid-options").text(t);
        if form.kind != FormType::Submit {
            return Err(perr(Condition::BadRequest, "invalid-options").text("submit the form"));
        }
        let (deliver, o) = SubOptions::apply(form, deliver, base).map_err(refuse)?;
        if o.show_values.is_some() && !self.cx.is_local(jid.domain().as_str()) {
            return Err(refuse(
                "pubsub#show-values needs the subscriber's presence: local accounts only".into(),
            ));
        }
        Ok((deliver, o))
    }

    /// §6.3.5: change a subscription's options.
    async fn set_options(&self, who: &Jid, a: &Element) -> IqResult {
        let mut s = self.subscription_of(who, a).await?;
        let form = match DataForm::find_in(a) {
            Some(Ok(f)) => f,
            _ => return Err(perr(Condition::BadRequest, "invalid-options")),
        };
        let jid = Jid::new(&s.jid).map_err(|_| perr(Condition::BadRequest, "invalid-jid"))?;
        (s.deliver, s.options) = self.parse_options(&form, &jid, s.deliver, &s.options)?;
        self.db.subscribe(&self.t.key, &s).await.map_err(storage)?;
        Ok(None)
    }

    /// §8.6: ask the node's owners to approve a pending subscription.
    async fn ask_owners(&self, n: &Node, jid: &Jid, subid: &str) -> Result<(), StanzaError> {
        use palaver_proto::forms::{Field, FieldType};
        let form = DataForm::with_form_type(
            FormType::Form,
            "http://jabber.org/protocol/pubsub#subscribe_authorization",
        )
        .title("PubSub subscriber request")
        .instructions(
            "To approve this entity's subscription request, set pubsub#allow to true and \
             submit the form; to deny it, submit it with false.",
        )
        .field(Field::new(
            "pubsub#subid",
            FieldType::Hidden,
            vec![subid.to_string()],
        ))
        .field(Field::text("pubsub#node", n.name.clone()).label("Node ID"))
        .field(
            Field::new(
                "pubsub#subscriber_jid",
                FieldType::JidSingle,
                vec![jid.to_string()],
            )
            .label("Subscriber Address"),
        )
        .field(
            Field::boolean("pubsub#allow", false)
                .label("Allow this JID to subscribe to this pubsub node?"),
        );
        for o in self.owners(&n.name).await? {
            let mut el = Element::bare("message", ns::CLIENT);
            set_attr(&mut el, "id", format!("auth-{:x}", rand::random::<u64>()));
            el.append_child(form.to_element());
            self.cx.route(Stanza::new(
                StanzaKind::Message,
                self.t.jid(),
                Some(Jid::from(o)),
                el,
            ));
        }
        Ok(())
    }

    async fn unsubscribe(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        let jid = a
            .attr("jid")
            .and_then(|j| Jid::new(j).ok())
            .ok_or_else(|| perr(Condition::BadRequest, "invalid-jid"))?;
        if jid.to_bare() != who.to_bare()
            && self.affiliation(&name, &who.to_bare()).await? != "owner"
        {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        self.node(&name).await?;
        if !self
            .db
            .unsubscribe(&self.t.key, &name, jid.as_str())
            .await
            .map_err(storage)?
        {
            return Err(perr(Condition::UnexpectedRequest, "not-subscribed"));
        }
        Ok(None)
    }

    async fn items(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        let n = self.node(&name).await?;
        self.may_access(&n, &who.to_bare()).await?;
        let ids: Vec<&str> = a
            .children()
            .filter(|c| c.is("item", NS_PUBSUB))
            .filter_map(|c| c.attr("id"))
            .collect();
        let rows = if ids.is_empty() {
            let max = match a.attr("max_items") {
                Some(m) => Some(
                    m.parse::<u64>()
                        .map_err(|_| bad("max_items is not a number"))?,
                ),
                None => None,
            };
            let mut rows = self
                .db
                .items(&self.t.key, &name, max)
                .await
                .map_err(storage)?;
            // Oldest first, as XEP-0060 examples show the newest last.
            rows.reverse();
            rows
        } else {
            let mut rows = Vec::new();
            for id in ids {
                if let Some(r) = self
                    .db
                    .item(&self.t.key, &name, id)
                    .await
                    .map_err(storage)?
                {
                    rows.push(r);
                }
            }
            rows
        };
        let mut items = Element::bare("items", NS_PUBSUB);
        set_attr(&mut items, "node", name.as_str());
        for r in rows {
            let mut i = Element::bare("item", NS_PUBSUB);
            set_attr(&mut i, "id", r.item_id.as_str());
            if let Ok(p) = r.payload.parse::<Element>() {
                i.append_child(p);
            }
            items.append_child(i);
        }
        Ok(Some(wrap(items)))
    }

    async fn my_subscriptions(&self, who: &Jid, a: &Element) -> IqResult {
        let only = a.attr("node");
        let mut out = Element::bare("subscriptions", NS_PUBSUB);
        if let Some(n) = only {
            set_attr(&mut out, "node", n);
        }
        for s in self
            .db
            .subscriptions_of(&self.t.key, who.to_bare().as_str())
            .await
            .map_err(storage)?
        {
            // An expired subscription is over (removed at the next delivery).
            if only.is_some_and(|n| n != s.node) || s.options.expire.passed(now_ms()) {
                continue;
            }
            out.append_child(sub_el(&s, NS_PUBSUB));
        }
        Ok(Some(wrap(out)))
    }

    async fn my_affiliations(&self, who: &Jid, a: &Element) -> IqResult {
        let only = a.attr("node");
        let mut out = Element::bare("affiliations", NS_PUBSUB);
        let list = if self.t.pep.as_ref() == Some(&who.to_bare()) {
            self.db
                .nodes(&self.t.key)
                .await
                .map_err(storage)?
                .into_iter()
                .map(|n| (n, "owner".to_string()))
                .collect()
        } else {
            self.db
                .affiliations_of(&self.t.key, who.to_bare().as_str())
                .await
                .map_err(storage)?
        };
        for (node, aff) in list {
            if only.is_some_and(|n| n != node) {
                continue;
            }
            let mut e = Element::bare("affiliation", NS_PUBSUB);
            set_attr(&mut e, "node", node);
            set_attr(&mut e, "affiliation", aff);
            out.append_child(e);
        }
        Ok(Some(wrap(out)))
    }

    async fn get_config(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        let n = self.node(&name).await?;
        self.require_owner(&name, who).await?;
        let mut c = Element::bare("configure", NS_OWNER);
        set_attr(&mut c, "node", name.as_str());
        c.append_child(n.cfg.to_form(FormType::Form).to_element());
        Ok(Some(owner_wrap(c)))
    }

    async fn set_config(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        let mut n = self.node(&name).await?;
        self.require_owner(&name, who).await?;
        let form = DataForm::find_in(a)
            .ok_or_else(|| bad("a configuration form is required"))?
            .map_err(|e| bad(e.to_string()))?;
        match form.kind {
            FormType::Cancel => return Ok(None),
            FormType::Submit => {}
            _ => return Err(bad("the form must be submitted")),
        }
        if form.form_type().is_some_and(|f| f != NODE_CONFIG) {
            return Err(bad("not a pubsub#node_config form"));
        }
        n.cfg
            .apply(&form, true)
            .map_err(|e| StanzaError::new(Condition::NotAcceptable).text(e))?;
        if let Some(m) = n.cfg.max_items
            && m > self.st.max_items_node
        {
            n.cfg.max_items = Some(self.st.max_items_node);
        }
        self.db
            .set_config(&self.t.key, &name, &n.cfg.to_json())
            .await
            .map_err(storage)?;
        if let Some(max) = n.cfg.max_items {
            let rows = self
                .db
                .items(&self.t.key, &name, None)
                .await
                .map_err(storage)?;
            for r in rows.into_iter().skip(max as usize) {
                self.db
                    .retract(&self.t.key, &name, &r.item_id)
                    .await
                    .map_err(storage)?;
            }
        }
        if n.cfg.notify_config {
            let mut c = Element::bare("configuration", NS_EVENT);
            set_attr(&mut c, "node", name.as_str());
            self.broadcast(&n, c).await?;
        }
        Ok(None)
    }

    async fn delete(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        let n = self.node(&name).await?;
        self.require_owner(&name, who).await?;
        let redirect = a
            .get_child("redirect", NS_OWNER)
            .and_then(|r| r.attr("uri"))
            .map(str::to_string);
        let to = self.recipients(&n).await?;
        self.db
            .delete_node(&self.t.key, &name)
            .await
            .map_err(storage)?;
        if n.cfg.notify_delete {
            let mut d = Element::bare("delete", NS_EVENT);
            set_attr(&mut d, "node", name.as_str());
            if let Some(uri) = redirect {
                let mut r = Element::bare("redirect", NS_EVENT);
                set_attr(&mut r, "uri", uri);
                d.append_child(r);
            }
            self.notify_recipients(&n, &to, d).await;
        }
        Ok(None)
    }

    async fn purge(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        let n = self.node(&name).await?;
        self.require_owner(&name, who).await?;
        if !n.cfg.persist_items {
            return Err(unsupported("persistent-items"));
        }
        self.db.purge(&self.t.key, &name).await.map_err(storage)?;
        if n.cfg.notify_retract || n.cfg.notify_delete {
            let mut p = Element::bare("purge", NS_EVENT);
            set_attr(&mut p, "node", name.as_str());
            self.broadcast(&n, p).await?;
        }
        Ok(None)
    }

    async fn owner_subscriptions(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        self.node(&name).await?;
        self.require_owner(&name, who).await?;
        let mut out = Element::bare("subscriptions", NS_OWNER);
        set_attr(&mut out, "node", name.as_str());
        for s in self
            .db
            .subscriptions(&self.t.key, &name)
            .await
            .map_err(storage)?
        {
            if s.options.expire.passed(now_ms()) {
                continue;
            }
            out.append_child(strip_node(sub_el(&s, NS_OWNER)));
        }
        Ok(Some(owner_wrap(out)))
    }

    async fn set_subscriptions(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        self.node(&name).await?;
        self.require_owner(&name, who).await?;
        let mut changes = Vec::new();
        for s in a.children().filter(|c| c.is("subscription", NS_OWNER)) {
            let jid = s
                .attr("jid")
                .and_then(|j| Jid::new(j).ok())
                .ok_or_else(|| perr(Condition::BadRequest, "invalid-jid"))?;
            match s.attr("subscription") {
                Some(state @ ("none" | "subscribed" | "pending")) => {
                    changes.push((jid, state.to_string()))
                }
                _ => return Err(bad("unknown subscription state")),
            }
        }
        for (jid, state) in changes {
            self.set_subscription(&name, jid, &state).await?;
        }
        Ok(None)
    }

    /// An owner sets a subscription's state (`none` removes it) and the
    /// subscriber is told (§8.6, §8.8.2).
    async fn set_subscription(&self, name: &str, jid: Jid, state: &str) -> Result<(), StanzaError> {
        if state == "none" {
            self.db
                .unsubscribe(&self.t.key, name, jid.as_str())
                .await
                .map_err(storage)?;
        } else {
            let old = self
                .db
                .subscriptions(&self.t.key, name)
                .await
                .map_err(storage)?
                .into_iter()
                .find(|s| s.jid == jid.as_str());
            let row = SubRow {
                node: name.to_string(),
                jid: jid.to_string(),
                subid: old
                    .as_ref()
                    .map(|s| s.subid.clone())
                    .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
                state: state.into(),
                deliver: old.as_ref().is_none_or(|s| s.deliver),
                options: old.map(|s| s.options).unwrap_or_default(),
            };
            self.db
                .subscribe(&self.t.key, &row)
                .await
                .map_err(storage)?;
        }
        let mut m = Element::bare("message", ns::CLIENT);
        set_attr(&mut m, "id", format!("sub-{:x}", rand::random::<u64>()));
        let mut ev = Element::bare("event", NS_EVENT);
        let mut se = Element::bare("subscription", NS_EVENT);
        set_attr(&mut se, "node", name);
        set_attr(&mut se, "jid", jid.as_str());
        set_attr(&mut se, "subscription", state);
        ev.append_child(se);
        m.append_child(ev);
        self.cx
            .route(Stanza::new(StanzaKind::Message, self.t.jid(), Some(jid), m));
        Ok(())
    }

    /// §8.6.2: an owner answered a subscription authorization form by
    /// message: approve (`pubsub#allow` true) or deny the pending request.
    pub async fn authorize(&self, who: &Jid, form: &DataForm) -> Result<(), StanzaError> {
        let name = form
            .value("pubsub#node")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| perr(Condition::BadRequest, "nodeid-required"))?
            .to_string();
        let jid = form
            .value("pubsub#subscriber_jid")
            .and_then(|j| Jid::new(j).ok())
            .ok_or_else(|| perr(Condition::BadRequest, "invalid-jid"))?;
        let allow = form
            .boolean("pubsub#allow")
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or(false);
        self.node(&name).await?;
        self.require_owner(&name, who).await?;
        let pending = self
            .db
            .subscriptions(&self.t.key, &name)
            .await
            .map_err(storage)?
            .into_iter()
            .any(|s| s.jid == jid.as_str() && s.state == "pending");
        if !pending {
            return Err(perr(Condition::UnexpectedRequest, "not-subscribed")
                .text("no pending subscription of that JID"));
        }
        self.set_subscription(&name, jid, if allow { "subscribed" } else { "none" })
            .await
    }

    async fn owner_affiliations(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        self.node(&name).await?;
        self.require_owner(&name, who).await?;
        let mut out = Element::bare("affiliations", NS_OWNER);
        set_attr(&mut out, "node", name.as_str());
        let mut list = self
            .db
            .affiliations(&self.t.key, &name)
            .await
            .map_err(storage)?;
        if let Some(o) = &self.t.pep
            && !list.iter().any(|(j, _)| j == o.as_str())
        {
            list.insert(0, (o.to_string(), "owner".into()));
        }
        for (j, aff) in list {
            let mut e = Element::bare("affiliation", NS_OWNER);
            set_attr(&mut e, "jid", j);
            set_attr(&mut e, "affiliation", aff);
            out.append_child(e);
        }
        Ok(Some(owner_wrap(out)))
    }

    async fn set_affiliations(&self, who: &Jid, a: &Element) -> IqResult {
        let name = node_attr(a)?;
        self.node(&name).await?;
        self.require_owner(&name, who).await?;
        let mut changes = Vec::new();
        for e in a.children().filter(|c| c.is("affiliation", NS_OWNER)) {
            let jid = e
                .attr("jid")
                .and_then(|j| BareJid::new(j).ok())
                .ok_or_else(|| perr(Condition::BadRequest, "invalid-jid"))?;
            let aff = e.attr("affiliation").unwrap_or("");
            if !matches!(
                aff,
                "owner" | "publisher" | "publish-only" | "member" | "none" | "outcast"
            ) {
                return Err(bad(format!("unknown affiliation {aff:?}")));
            }
            if self.t.pep.as_ref() == Some(&jid) {
                return Err(StanzaError::new(Condition::NotAcceptable)
                    .text("the owner of a PEP service stays its owner"));
            }
            changes.push((jid, aff.to_string()));
        }
        for (jid, aff) in &changes {
            self.db
                .set_affiliation(&self.t.key, &name, jid.as_str(), aff)
                .await
                .map_err(storage)?;
            if aff == "outcast" {
                for s in self
                    .db
                    .subscriptions_of(&self.t.key, jid.as_str())
                    .await
                    .map_err(storage)?
                {
                    if s.node == name {
                        self.db
                            .unsubscribe(&self.t.key, &name, &s.jid)
                            .await
                            .map_err(storage)?;
                    }
                }
            }
        }
        // §8.9.2.4: a node keeps at least one owner.
        if self.t.pep.is_none()
            && !self
                .db
                .has_owner(&self.t.key, &name)
                .await
                .map_err(storage)?
        {
            self.db
                .set_affiliation(&self.t.key, &name, who.to_bare().as_str(), "owner")
                .await
                .map_err(storage)?;
            return Err(StanzaError::new(Condition::NotAcceptable).text("a node needs an owner"));
        }
        Ok(None)
    }

    /// The last item of each node of this PEP service among `nodes` that
    /// `to`'s account may see, as notifications to `to` (XEP-0163 §4.3.4).
    pub async fn send_last(
        &self,
        to: &jid::FullJid,
        nodes: &HashSet<String>,
    ) -> Result<(), StanzaError> {
        for name in self.db.nodes(&self.t.key).await.map_err(storage)? {
            if !nodes.contains(&name) {
                continue;
            }
            let n = self.node(&name).await?;
            if n.cfg.send_last_published_item != SendLast::OnSubAndPresence
                || !n.cfg.deliver_notifications
            {
                continue;
            }
            if self.may_access(&n, &to.to_bare()).await.is_err() {
                continue;
            }
            let Some(last) = self
                .db
                .items(&self.t.key, &name, Some(1))
                .await
                .map_err(storage)?
                .into_iter()
                .next()
            else {
                continue;
            };
            let payload = last.payload.parse::<Element>().ok();
            let mut items = Element::bare("items", NS_EVENT);
            set_attr(&mut items, "node", name.as_str());
            items.append_child(event_item(&last, payload.as_ref(), n.cfg.deliver_payloads));
            let mut event = Element::bare("event", NS_EVENT);
            event.append_child(items);
            self.cx.route(event_message(
                &self.t.jid(),
                Jid::from(to.clone()),
                &n.cfg.notification_type,
                event,
            ));
        }
        Ok(())
    }

    /// §6.1.7 / `on_sub_and_presence`: a subscriber's session became
    /// available; send it the last item of each node it is subscribed to
    /// (bare or this full JID) whose configuration asks for it.
    pub async fn send_last_to_subscriber(&self, to: &jid::FullJid) -> Result<(), StanzaError> {
        let bare = to.to_bare();
        for s in self
            .db
            .subscriptions_of(&self.t.key, bare.as_str())
            .await
            .map_err(storage)?
        {
            if s.state != "subscribed"
                || !s.deliver
                || (s.jid != bare.as_str() && s.jid != to.as_str())
                || s.options.expire.passed(now_ms())
            {
                continue;
            }
            if s.options.show_values.is_some() {
                let show = self
                    .cx
                    .sessions()
                    .get(to)
                    .map(|h| show_of(h.presence.as_deref()));
                if !show.is_some_and(|sh| s.options.wants_show(&sh)) {
                    continue;
                }
            }
            let Ok(n) = self.node(&s.node).await else {
                continue;
            };
            if n.cfg.send_last_published_item != SendLast::OnSubAndPresence
                || !n.cfg.deliver_notifications
                || self.may_access(&n, &bare).await.is_err()
            {
                continue;
            }
            let Some(last) = self
                .db
                .items(&self.t.key, &n.name, Some(1))
                .await
                .map_err(storage)?
                .into_iter()
                .next()
            else {
                continue;
            };
            let payload = last.payload.parse::<Element>().ok();
            let mut items = Element::bare("items", NS_EVENT);
            set_attr(&mut items, "node", n.name.as_str());
            items.append_child(event_item(&last, payload.as_ref(), n.cfg.deliver_payloads));
            let body = s.options.include_body.then(|| body_text(&n.name, &items));
            let mut event = Element::bare("event", NS_EVENT);
            event.append_child(items);
            self.cx.route(event_message_with(
                &self.t.jid(),
                Jid::from(to.clone()),
                &n.cfg.notification_type,
                event,
                body,
            ));
        }
        Ok(())
    }

    /// Publish (or replace) an item as the service owner, with the
    /// notifications of a publish; creates the node with `cfg` if needed.
    pub async fn publish_as_owner(
        &self,
        name: &str,
        cfg: &NodeConfig,
        id: &str,
        payload: Element,
    ) -> Result<(), StanzaError> {
        let Some(owner) = self.t.pep.clone() else {
            return Err(StanzaError::new(Condition::Forbidden));
        };
        let n = match self.node(name).await {
            Ok(n) => n,
            Err(_) => {
                self.db
                    .create_node(&self.t.key, name, &cfg.to_json(), owner.as_str())
                    .await
                    .map_err(storage)?;
                self.node(name).await?
            }
        };
        let row = ItemRow {
            item_id: id.to_string(),
            publisher: owner.to_string(),
            payload: palaver_proto::writer::to_string(&payload, ""),
        };
        self.db
            .publish(&self.t.key, name, &row, n.cfg.max_items)
            .await
            .map_err(storage)?;
        self.notify_items(&n, &row, Some(&payload)).await
    }

    /// Retract an item as the service owner, notifying.
    pub async fn retract_as_owner(&self, name: &str, id: &str) -> Result<(), StanzaError> {
        let n = self.node(name).await?;
        if self
            .db
            .retract(&self.t.key, name, id)
            .await
            .map_err(storage)?
        {
            let mut items = Element::bare("items", NS_EVENT);
            set_attr(&mut items, "node", name);
            let mut r = Element::bare("retract", NS_EVENT);
            set_attr(&mut r, "id", id);
            items.append_child(r);
            self.broadcast(&n, items).await?;
        }
        Ok(())
    }

    /// Items of a node (newest first), for other parts of the module.
    pub async fn stored_items(&self, name: &str) -> Result<Vec<ItemRow>, StanzaError> {
        self.db
            .items(&self.t.key, name, None)
            .await
            .map_err(storage)
    }

    /// The disco#info of the service or of one of its nodes.
    pub async fn disco_info(&self, who: &Jid, node: Option<&str>) -> IqResult {
        let mut q = Element::bare("query", ns::DISCO_INFO);
        let ident = |cat: &str, kind: &str| {
            let mut i = Element::bare("identity", ns::DISCO_INFO);
            set_attr(&mut i, "category", cat);
            set_attr(&mut i, "type", kind);
            i
        };
        match node {
            None => {
                if self.t.pep.is_some() {
                    q.append_child(ident("pubsub", "pep"));
                } else {
                    let mut i = ident("pubsub", "service");
                    set_attr(&mut i, "name", "Publish-Subscribe");
                    q.append_child(i);
                }
                for f in super::features() {
                    q.append_child(feature(&f));
                }
            }
            Some(name) => {
                let n = self.node(name).await?;
                self.may_access(&n, &who.to_bare()).await?;
                set_attr(&mut q, "node", name);
                q.append_child(ident("pubsub", "leaf"));
                q.append_child(feature(NS_PUBSUB));
                let mut meta = DataForm::with_form_type(
                    FormType::Result,
                    "http://jabber.org/protocol/pubsub#meta-data",
                );
                meta.set(
                    "pubsub#title",
                    palaver_proto::forms::FieldType::TextSingle,
                    vec![n.cfg.title.clone()],
                );
                meta.set(
                    "pubsub#access_model",
                    palaver_proto::forms::FieldType::ListSingle,
                    vec![n.cfg.access_model.as_str().into()],
                );
                q.append_child(meta.to_element());
            }
        }
        Ok(Some(q))
    }

    /// The disco#items of the service (its nodes the requester may see) or
    /// of a node (its items).
    pub async fn disco_items(&self, who: &Jid, node: Option<&str>) -> IqResult {
        let mut q = Element::bare("query", ns::DISCO_ITEMS);
        let me = self.t.jid();
        match node {
            None => {
                for name in self.db.nodes(&self.t.key).await.map_err(storage)? {
                    let n = self.node(&name).await?;
                    if self.may_access(&n, &who.to_bare()).await.is_err() {
                        continue;
                    }
                    let mut i = Element::bare("item", ns::DISCO_ITEMS);
                    set_attr(&mut i, "jid", me.as_str());
                    set_attr(&mut i, "node", name);
                    q.append_child(i);
                }
            }
            Some(name) => {
                let n = self.node(name).await?;
                self.may_access(&n, &who.to_bare()).await?;
                set_attr(&mut q, "node", name);
                for r in self
                    .db
                    .items(&self.t.key, name, None)
                    .await
                    .map_err(storage)?
                {
                    let mut i = Element::bare("item", ns::DISCO_ITEMS);
                    set_attr(&mut i, "jid", me.as_str());
                    set_attr(&mut i, "name", r.item_id);
                    q.append_child(i);
                }
            }
        }
        Ok(Some(q))
    }
}

/// A notification's recipient, with the options of its subscription
/// (`None`: implicit, a PEP contact's `+notify`).
pub(crate) struct Recipient {
    jid: Jid,
    opts: Option<SubOptions>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The show of a presence (`online` for none).
fn show_of(p: Option<&Element>) -> String {
    p.and_then(|p| p.get_child("show", ns::CLIENT))
        .map(|s| s.text())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "online".into())
}

/// The `<body/>` text of a notification (`pubsub#include_body`).
fn body_text(node: &str, payload: &Element) -> String {
    let ids = |name: &str| -> Vec<String> {
        payload
            .children()
            .filter(|c| c.name() == name)
            .map(|c| c.attr("id").unwrap_or("").to_string())
            .collect()
    };
    match payload.name() {
        "items" => {
            let (published, retracted) = (ids("item"), ids("retract"));
            let mut parts = Vec::new();
            if !published.is_empty() {
                parts.push(format!("published {}", published.join(", ")));
            }
            if !retracted.is_empty() {
                parts.push(format!("retracted {}", retracted.join(", ")));
            }
            format!("Node {node}: item {}", parts.join("; "))
        }
        "delete" => format!("Node {node} was deleted"),
        "purge" => format!("Node {node} was purged"),
        "configuration" => format!("The configuration of node {node} changed"),
        other => format!("Node {node}: {other}"),
    }
}

fn feature(var: &str) -> Element {
    let mut f = Element::bare("feature", ns::DISCO_INFO);
    set_attr(&mut f, "var", var);
    f
}

fn strip_node(mut e: Element) -> Element {
    palaver_proto::stanza::remove_attr(&mut e, "node");
    e
}

fn sub_el(s: &SubRow, ns_: &str) -> Element {
    let mut e = Element::bare("subscription", ns_);
    set_attr(&mut e, "node", s.node.as_str());
    set_attr(&mut e, "jid", s.jid.as_str());
    set_attr(&mut e, "subid", s.subid.as_str());
    set_attr(&mut e, "subscription", s.state.as_str());
    e
}

fn event_item(row: &ItemRow, payload: Option<&Element>, with_payload: bool) -> Element {
    let mut i = Element::bare("item", NS_EVENT);
    set_attr(&mut i, "id", row.item_id.as_str());
    set_attr(&mut i, "publisher", row.publisher.as_str());
    if with_payload && let Some(p) = payload {
        i.append_child(p.clone());
    }
    i
}

fn event_message(from: &Jid, to: Jid, kind: &str, event: Element) -> Stanza {
    event_message_with(from, to, kind, event, None)
}

/// A notification message, with a `<body/>` when one is given.
pub(crate) fn event_message_with(
    from: &Jid,
    to: Jid,
    kind: &str,
    event: Element,
    body: Option<String>,
) -> Stanza {
    let mut m = Element::bare("message", ns::CLIENT);
    set_attr(&mut m, "type", kind);
    set_attr(&mut m, "id", format!("ps-{:x}", rand::random::<u64>()));
    m.append_child(event);
    if let Some(b) = body {
        m.append_child(Element::builder("body", ns::CLIENT).append(b).build());
    }
    Stanza::new(StanzaKind::Message, from.clone(), Some(to), m)
}
