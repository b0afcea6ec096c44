//! `mod_muc`: XEP-0045 Multi-User Chat on `conference.HOST` (ejabberd's
//! option names: `host`/`hosts` with `@HOST@`, `access`, `access_create`,
//! `access_admin`, `access_persistent`, `history_size`, `max_users`,
//! `max_user_conferences`, `default_room_options`, `max_room_*`).
//!
//! Each service domain is registered in the routing table and receives
//! every stanza for it. Rooms live in memory (one lock each, never held
//! across an await or while routing); persistent rooms (configuration,
//! subject, affiliations) are written to the module's own store and loaded
//! when the server starts. Occupant ids (XEP-0421), self-ping (XEP-0410),
//! voice requests, mediated invitations (with the XEP-0249 form) and
//! IQs between occupants are handled here.
//!
//! Fan-out: a groupchat message or presence is built once as an element
//! per variant (with/without real JID) and only the envelope's `to` differs
//! per recipient.

mod admin;
pub mod config;
pub mod room;
pub mod store;

use config::{IGNORED_EJABBERD_KEYS, RoomConfig};
use dashmap::DashMap;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
use palaver_server::hooks::RemoveUser;
use palaver_server::{HookAction, HostSetup, Module, ModuleCx, ModuleDef};
use room::{Effects, Room};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_MUC_REQUEST: &str = "http://jabber.org/protocol/muc#request";
pub const NS_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
pub const NS_MUC_REGISTER: &str = "http://jabber.org/protocol/muc#register";
const NS_REGISTER: &str = "jabber:iq:register";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const NS_SELF_PING_OPT: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
pub const NS_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_SID: &str = "urn:xmpp:sid:0";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_VCARD: &str = "vcard-temp";
/// Archive page size without `<max/>`, and the most a page may hold.
const MAM_PAGE: usize = 50;
const MAM_PAGE_MAX: usize = 250;
/// Most history stanzas a joiner can ask for (advertised in room info).
pub const HISTORY_FETCH: usize = 50;

/// `mod_muc`.
pub struct Muc {
    services: Vec<Arc<Service>>,
}

/// `mod_muc` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Muc>();

/// Options, with ejabberd's names and defaults.
#[derive(serde::Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct MucOptions {
    /// The service domain (`@HOST@` is the virtual host).
    pub host: String,
    /// Several service domains (ejabberd's `hosts`); replaces `host`.
    pub hosts: Vec<String>,
    /// The service's disco name.
    pub name: String,
    /// Who may use the service.
    pub access: serde_json::Value,
    /// Who may create rooms.
    pub access_create: serde_json::Value,
    /// Who administers every room (owner rights everywhere).
    pub access_admin: serde_json::Value,
    /// Who may make rooms persistent.
    pub access_persistent: serde_json::Value,
    /// Messages kept per room for late joiners.
    pub history_size: usize,
    /// Most occupants of any room.
    pub max_users: u32,
    /// Most rooms one user may be in at once.
    pub max_user_conferences: u32,
    /// Longest room name (node), in characters.
    #[serde(deserialize_with = "limit")]
    pub max_room_id: usize,
    /// Longest room title.
    #[serde(deserialize_with = "limit")]
    pub max_room_name: usize,
    /// Longest room description.
    #[serde(deserialize_with = "limit")]
    pub max_room_desc: usize,
    /// Longest room password.
    #[serde(deserialize_with = "limit")]
    pub max_password: usize,
    /// Options of new rooms (ejabberd's names).
    pub default_room_options: serde_json::Map<String, serde_json::Value>,
}

/// A length limit: a number, or ejabberd's `infinity`.
fn limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum L {
        N(usize),
        S(String),
    }
    match L::deserialize(d)? {
        L::N(n) => Ok(n),
        L::S(s) if s == "infinity" || s == "infinite" => Ok(usize::MAX),
        L::S(s) => Err(serde::de::Error::custom(format!(
            "expected a number or infinity, found {s:?}"
        ))),
    }
}

impl Default for MucOptions {
    fn default() -> Self {
        MucOptions {
            host: "conference.@HOST@".into(),
            hosts: Vec::new(),
            name: "Chatrooms".into(),
            access: serde_json::json!("all"),
            access_create: serde_json::json!("all"),
            access_admin: serde_json::json!("none"),
            access_persistent: serde_json::json!("all"),
            history_size: 20,
            max_users: 200,
            max_user_conferences: 100,
            max_room_id: usize::MAX,
            max_room_name: usize::MAX,
            max_room_desc: usize::MAX,
            max_password: usize::MAX,
            default_room_options: serde_json::Map::new(),
        }
    }
}

/// An access option: a rule's name, or the rule itself (ejabberd allows both).
#[derive(Clone)]
enum Access {
    Named(String),
    Inline(palaver_server::config::AccessRule),
}

impl Access {
    fn read(key: &str, v: &serde_json::Value) -> Result<Access, String> {
        match v {
            serde_json::Value::String(s) => Ok(Access::Named(s.clone())),
            other => palaver_server::config::inline_access_rule(&format!("mod_muc.{key}"), other)
                .map(Access::Inline),
        }
    }
}

/// What a room may consult about the service while handling a stanza.
pub struct Limits<'a> {
    pub max_users: u32,
    pub caps: config::Caps,
    svc: &'a Service,
    persist_ok: bool,
}

impl Limits<'_> {
    /// Whether `bare` may enter one more room.
    pub fn may_join(&self, bare: &BareJid) -> bool {
        self.svc
            .conferences
            .get(bare.as_str())
            .is_none_or(|n| *n < self.svc.opts.max_user_conferences)
    }
    /// Whether the sender may make a room persistent.
    pub fn may_persist(&self, _bare: &BareJid) -> bool {
        self.persist_ok
    }
}

/// One service domain and its rooms.
pub struct Service {
    domain: String,
    host: String,
    opts: MucOptions,
    access: [Access; 4],
    defaults: RoomConfig,
    /// The vCard of new rooms and its avatar hash (`default_room_options.vcard`).
    default_vcard: Option<(String, String)>,
    rooms: DashMap<String, Arc<Mutex<Room>>>,
    /// User (bare JID) → rooms it is in.
    conferences: DashMap<String, u32>,
    ready: AtomicBool,
    pending: Mutex<Vec<Stanza>>,
    save_lock: tokio::sync::Mutex<()>,
}

fn lock(r: &Mutex<Room>) -> MutexGuard<'_, Room> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

impl Module for Muc {
    const NAME: &'static str = "mod_muc";
    type Options = MucOptions;

    fn start(host: &mut HostSetup, mut o: MucOptions) -> Result<Self, String> {
        let mut room_opts = std::mem::take(&mut o.default_room_options);
        // ejabberd's `vcard`: the vCard (XML text) of new rooms.
        let default_vcard = match room_opts.remove("vcard") {
            None => None,
            Some(serde_json::Value::String(x)) if x.trim().is_empty() => None,
            Some(serde_json::Value::String(x)) => {
                let v: Element = x
                    .parse()
                    .map_err(|e| format!("default_room_options.vcard: not XML: {e}"))?;
                if !v.is("vCard", NS_VCARD) {
                    return Err(
                        "default_room_options.vcard: must be a <vCard xmlns='vcard-temp'/>".into(),
                    );
                }
                let hash =
                    room::photo_hash(&v).map_err(|e| format!("default_room_options.vcard: {e}"))?;
                Some((palaver_proto::writer::to_string(&v, ""), hash))
            }
            Some(_) => {
                return Err(
                    "default_room_options.vcard: must be the vCard's XML as a string".into(),
                );
            }
        };
        for k in IGNORED_EJABBERD_KEYS {
            if room_opts.remove(*k).is_some() {
                tracing::warn!(
                    "mod_muc: default_room_options.{k} is an ejabberd option Palaver does not use: ignored"
                );
            }
        }
        let defaults: RoomConfig = serde_json::from_value(serde_json::Value::Object(room_opts))
            .map_err(|e| format!("default_room_options: {e}"))?;
        if !config::ALLOWPM.contains(&defaults.allowpm.as_str()) {
            return Err(
                "default_room_options: allowpm must be anyone, participants, moderators or none"
                    .into(),
            );
        }
        if o.max_users == 0 {
            return Err("max_users must be positive".into());
        }
        let mut defaults = defaults;
        defaults.max_users = defaults.max_users.min(o.max_users);
        let domains: Vec<String> = if o.hosts.is_empty() {
            vec![o.host.clone()]
        } else {
            o.hosts.clone()
        };
        let access = [
            Access::read("access", &o.access)?,
            Access::read("access_create", &o.access_create)?,
            Access::read("access_admin", &o.access_admin)?,
            Access::read("access_persistent", &o.access_persistent)?,
        ];
        let mut services = Vec::new();
        for d in domains {
            let domain = d.replace("@HOST@", host.host());
            jid::BareJid::new(&domain)
                .ok()
                .filter(|j| j.node().is_none())
                .ok_or_else(|| format!("host: `{domain}` is not a valid domain"))?;
            services.push(Arc::new(Service {
                domain,
                host: host.host().to_string(),
                opts: o.clone(),
                access: access.clone(),
                defaults: defaults.clone(),
                default_vcard: default_vcard.clone(),
                rooms: DashMap::new(),
                conferences: DashMap::new(),
                ready: AtomicBool::new(false),
                pending: Mutex::new(Vec::new()),
                save_lock: tokio::sync::Mutex::new(()),
            }));
        }
        host.migrations(store::MIGRATIONS);
        for svc in &services {
            let s = svc.clone();
            host.on_service_stanza(&svc.domain, move |cx, st| s.handle(cx, st));
            let s = svc.clone();
            host.spawn_task(move |cx| async move { s.load(cx).await });
        }
        host.room_admin(Arc::new(admin::MucAdmin::new(services.clone())));
        let all = services.clone();
        host.hook_async::<RemoveUser, _>(50, move |cx, a| {
            let all = all.clone();
            async move {
                let bare = format!("{}@{}", a.user, a.host);
                for svc in &all {
                    svc.forget_user(&bare);
                }
                if let Err(e) = store::MucSql::of(&cx).remove_jid(&bare).await {
                    tracing::warn!(error = %e, "removing room affiliations failed");
                }
                HookAction::Continue
            }
        });
        Ok(Muc { services })
    }

    fn stop(&self, cx: &ModuleCx) {
        for svc in &self.services {
            let rooms: Vec<Arc<Mutex<Room>>> = svc.rooms.iter().map(|r| r.clone()).collect();
            for r in rooms {
                let mut fx = Effects::default();
                lock(&r).shutdown(&mut fx);
                for st in fx.out {
                    cx.route(st);
                }
            }
        }
    }
}

fn iq_error(st: &Stanza, e: StanzaError) -> Option<Stanza> {
    st.error_reply(&e, None)
}

impl Service {
    /// Load the stored rooms, then serve what arrived meanwhile.
    async fn load(self: Arc<Self>, cx: ModuleCx) {
        let store = store::MucSql::of(&cx);
        let mut tries = 0;
        let rooms = loop {
            match store.rooms(&self.domain).await {
                Ok(r) => break r,
                Err(e) if tries < 30 => {
                    tries += 1;
                    tracing::warn!(error = %e, service = %self.domain, "loading rooms failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, service = %self.domain, "loading rooms failed; serving without the stored rooms");
                    break Vec::new();
                }
            }
        };
        for r in rooms {
            let Ok(jid) = BareJid::new(&format!("{}@{}", r.name, self.domain)) else {
                continue;
            };
            let room = Room::restore(jid, &r);
            self.rooms
                .insert(r.name.clone(), Arc::new(Mutex::new(room)));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.ready.store(true, Ordering::Release);
        for st in pending.drain(..) {
            self.serve(&cx, st);
        }
    }

    /// Every stanza addressed to the service or a JID at it.
    fn handle(self: &Arc<Self>, cx: &ModuleCx, st: Stanza) {
        if !self.ready.load(Ordering::Acquire) {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !self.ready.load(Ordering::Acquire) {
                if pending.len() >= 10_000 {
                    drop(pending);
                    cx.bounce(&st, Condition::ResourceConstraint, None);
                    return;
                }
                pending.push(st);
                return;
            }
        }
        self.serve(cx, st)
    }

    /// Whether access option `which` (0 `access`, 1 `access_create`, 2
    /// `access_admin`, 3 `access_persistent`) allows `who`.
    fn access(&self, cx: &ModuleCx, which: usize, who: &Jid, default: bool) -> bool {
        let jid = who.to_bare();
        match &self.access[which] {
            Access::Named(rule) => cx
                .config()
                .access_on(&self.host, rule, jid.as_str(), default),
            Access::Inline(rule) => cx.config().inline_access(&self.host, rule, jid.as_str()),
        }
    }

    fn serve(self: &Arc<Self>, cx: &ModuleCx, st: Stanza) {
        let Some(to) = st.to.clone() else { return };
        if !st.is_error()
            && !matches!(st.type_attr(), Some("result"))
            && !self.access(cx, 0, &st.from, true)
        {
            return cx.bounce(&st, Condition::Forbidden, None);
        }
        let Some(node) = to.node() else {
            return self.to_service(cx, st);
        };
        let name = node.to_string();
        let nick = to.resource().map(|r| r.to_string());
        match (st.kind, nick) {
            (StanzaKind::Presence, Some(nick)) => self.presence(cx, st, name, nick),
            (StanzaKind::Presence, None) => {
                if st.type_attr().is_none() {
                    let e = StanzaError::new(Condition::JidMalformed)
                        .text("Join the room as room@service/nickname");
                    cx.bounce_with(&st, e, None);
                }
            }
            (StanzaKind::Message, nick) => self.message(cx, st, &name, nick),
            (StanzaKind::Iq, None) => self.room_iq(cx, st, &name),
            (StanzaKind::Iq, Some(nick)) => self.occupant_iq(cx, st, &name, &nick),
        }
    }

    /// Run `f` on a room, then route what it produced, update the counts,
    /// write the stored room and drop an empty temporary room.
    fn with_room<R>(
        self: &Arc<Self>,
        cx: &ModuleCx,
        name: &str,
        arc: Arc<Mutex<Room>>,
        f: impl FnOnce(&mut Room, &Limits, &mut Effects) -> R,
        persist_ok: bool,
    ) -> Option<R> {
        self.with_room_stored(cx, name, arc, f, persist_ok)
            .map(|(r, _)| r)
    }

    /// [`Service::with_room`], also giving what signals that the stored
    /// room has been written, when it is being written: an owner's change
    /// is answered only once it is stored.
    fn with_room_stored<R>(
        self: &Arc<Self>,
        cx: &ModuleCx,
        name: &str,
        arc: Arc<Mutex<Room>>,
        f: impl FnOnce(&mut Room, &Limits, &mut Effects) -> R,
        persist_ok: bool,
    ) -> Option<(R, Option<tokio::sync::oneshot::Receiver<()>>)> {
        let mut fx = Effects::default();
        let (r, was_persistent, remove) = {
            let mut room = lock(&arc);
            if room.dead {
                return None;
            }
            let was_persistent = room.config.persistent;
            let limits = Limits {
                max_users: self.opts.max_users,
                caps: config::Caps {
                    max_users: self.opts.max_users,
                    max_name: self.opts.max_room_name,
                    max_desc: self.opts.max_room_desc,
                    max_password: self.opts.max_password,
                },
                svc: self,
                persist_ok,
            };
            let r = f(&mut room, &limits, &mut fx);
            if fx.joined.iter().any(|(_, d)| *d > 0) {
                room.held = false;
            }
            let remove = fx.destroyed || (room.is_empty() && !room.config.persistent && !room.held);
            if remove {
                room.dead = true;
                self.rooms.remove_if(name, |_, v| Arc::ptr_eq(v, &arc));
            }
            (r, was_persistent || room.config.persistent, remove)
        };
        for (bare, d) in &fx.joined {
            if *d > 0 {
                *self.conferences.entry(bare.clone()).or_insert(0) += 1;
            } else {
                self.conferences.remove_if_mut(bare, |_, n| {
                    *n = n.saturating_sub(1);
                    *n == 0
                });
            }
        }
        for st in fx.out {
            cx.route(st);
        }
        if let Some(m) = fx.archive {
            let (store, svc, room) = (store::MucSql::of(cx), self.domain.clone(), name.to_string());
            cx.spawn(async move {
                if let Err(e) = store.archive(&svc, &room, &m).await {
                    tracing::warn!(error = %e, room = %room, "archiving a room message failed");
                }
            });
        }
        let stored =
            ((fx.save || remove) && was_persistent).then(|| self.sync(cx, name.to_string()));
        if remove {
            let (store, svc, room) = (store::MucSql::of(cx), self.domain.clone(), name.to_string());
            cx.spawn(async move {
                if let Err(e) = store.purge_archive(&svc, &room).await {
                    tracing::warn!(error = %e, room = %room, "removing a room's archive failed");
                }
            });
        }
        Some((r, stored))
    }

    /// Bring the stored room in line with memory (write it, or delete it
    /// when gone or no longer persistent), holding the sender's ticket; the
    /// receiver hears when that is done.
    fn sync(self: &Arc<Self>, cx: &ModuleCx, name: String) -> tokio::sync::oneshot::Receiver<()> {
        let svc = self.clone();
        let store = store::MucSql::of(cx);
        let (done, stored) = tokio::sync::oneshot::channel();
        cx.spawn(async move {
            let _g = svc.save_lock.lock().await;
            let snap = svc.rooms.get(&name).map(|r| r.clone()).and_then(|r| {
                let r = lock(&r);
                (!r.dead && r.config.persistent).then(|| r.snapshot())
            });
            let res = match snap {
                Some(s) => store.save(&svc.domain, &s).await,
                None => store.delete(&svc.domain, &name).await,
            };
            if let Err(e) = res {
                tracing::warn!(error = %e, room = %name, "storing room failed");
            }
            let _ = done.send(());
        });
        stored
    }

    fn room(&self, name: &str) -> Option<Arc<Mutex<Room>>> {
        self.rooms.get(name).map(|r| r.clone())
    }

    fn forget_user(&self, bare: &str) {
        let rooms: Vec<Arc<Mutex<Room>>> = self.rooms.iter().map(|r| r.clone()).collect();
        for r in rooms {
            lock(&r).forget(bare);
        }
    }

    fn is_service_admin(&self, cx: &ModuleCx, who: &Jid) -> bool {
        self.access(cx, 2, who, false)
    }

    // ---------------------------------------------------------------- presence

    fn presence(self: &Arc<Self>, cx: &ModuleCx, st: Stanza, name: String, nick: String) {
        let Ok(from) = st.from.clone().try_into_full() else {
            return cx.bounce(&st, Condition::BadRequest, None);
        };
        let persist_ok = self.access(cx, 3, &st.from, true);
        for _ in 0..4 {
            let (arc, created) = match self.room(&name) {
                Some(r) => (r, false),
                None => {
                    // Only an available presence creates a room (§10.1.1).
                    if st.type_attr().is_some() {
                        return;
                    }
                    if !self.access(cx, 1, &st.from, true) {
                        let e = StanzaError::new(Condition::NotAllowed)
                            .text("Room creation is denied by service policy");
                        return cx.bounce_with(&st, e, None);
                    }
                    if name.chars().count() > self.opts.max_room_id {
                        let e = StanzaError::new(Condition::NotAcceptable)
                            .text("The room name is too long");
                        return cx.bounce_with(&st, e, None);
                    }
                    let Ok(jid) = BareJid::new(&format!("{name}@{}", self.domain)) else {
                        return cx.bounce(&st, Condition::JidMalformed, None);
                    };
                    // §10.1.2: a room asked for with the MUC extension stays
                    // locked until configured; a GC 1.0 join makes it instant.
                    let locked = st.el().get_child("x", NS_MUC).is_some();
                    let mut created = false;
                    let arc = self
                        .rooms
                        .entry(name.clone())
                        .or_insert_with(|| {
                            created = true;
                            let mut room = Room::new(jid, self.defaults.clone(), locked);
                            if let Some((xml, hash)) = &self.default_vcard {
                                room.vcard = xml.clone();
                                room.avatar_hash = hash.clone();
                            }
                            Arc::new(Mutex::new(room))
                        })
                        .clone();
                    (arc, created)
                }
            };
            let admin = self.is_service_admin(cx, &st.from);
            let done = self.with_room(
                cx,
                &name,
                arc,
                |room, limits, fx| {
                    if admin {
                        room.grant_service_admin(&from.to_bare());
                    }
                    room.on_presence(&st, &from, &nick, created, limits, fx)
                },
                persist_ok,
            );
            if done.is_some() {
                return;
            }
        }
        cx.bounce(&st, Condition::ResourceConstraint, None);
    }

    // ---------------------------------------------------------------- messages

    fn message(self: &Arc<Self>, cx: &ModuleCx, st: Stanza, name: &str, nick: Option<String>) {
        let Some(arc) = self.room(name) else {
            let e = StanzaError::new(Condition::ItemNotFound).text("No such room");
            return cx.bounce_with(&st, e, None);
        };
        let Ok(from) = st.from.clone().try_into_full() else {
            return cx.bounce(&st, Condition::BadRequest, None);
        };
        let hist = self.opts.history_size;
        let done = self.with_room(
            cx,
            name,
            arc,
            |room, _, fx| match &nick {
                None => room.on_room_message(&st, &from, hist, fx),
                Some(n) => room.on_private_message(&st, &from, n, fx),
            },
            false,
        );
        if done.is_none() {
            cx.bounce(&st, Condition::ItemNotFound, None);
        }
    }

    // ---------------------------------------------------------------- IQs

    fn to_service(self: &Arc<Self>, cx: &ModuleCx, st: Stanza) {
        match (st.kind, st.type_attr()) {
            (StanzaKind::Iq, Some("get")) => {}
            (StanzaKind::Iq, Some("set")) | (StanzaKind::Message, _) => {
                return cx.bounce(&st, Condition::ServiceUnavailable, None);
            }
            _ => return,
        }
        let Some(q) = st.payload() else {
            return cx.bounce(&st, Condition::BadRequest, None);
        };
        let reply = if q.is("query", ns::DISCO_INFO) {
            let mut r = Element::bare("query", ns::DISCO_INFO);
            let mut id = Element::bare("identity", ns::DISCO_INFO);
            set_attr(&mut id, "category", "conference");
            set_attr(&mut id, "type", "text");
            set_attr(&mut id, "name", self.opts.name.as_str());
            r.append_child(id);
            for f in [
                ns::DISCO_INFO,
                ns::DISCO_ITEMS,
                NS_MUC,
                NS_OCCUPANT_ID,
                NS_SELF_PING_OPT,
                NS_STABLE_ID,
                ns::PING,
            ] {
                let mut e = Element::bare("feature", ns::DISCO_INFO);
                set_attr(&mut e, "var", f);
                r.append_child(e);
            }
            Some(r)
        } else if q.is("query", ns::DISCO_ITEMS) {
            let mut r = Element::bare("query", ns::DISCO_ITEMS);
            let mut list: Vec<(String, String)> = Vec::new();
            for e in self.rooms.iter() {
                let room = lock(e.value());
                if let Some(n) = room.listed_name() {
                    list.push((room.jid.to_string(), n));
                }
            }
            list.sort();
            for (j, n) in list {
                let mut i = Element::bare("item", ns::DISCO_ITEMS);
                set_attr(&mut i, "jid", j);
                set_attr(&mut i, "name", n);
                r.append_child(i);
            }
            Some(r)
        } else if q.is("ping", ns::PING) {
            None
        } else {
            return cx.bounce(&st, Condition::ServiceUnavailable, None);
        };
        cx.route(st.iq_result(reply));
    }

    fn room_iq(self: &Arc<Self>, cx: &ModuleCx, st: Stanza, name: &str) {
        let get = match st.type_attr() {
            Some("get") => true,
            Some("set") => false,
            _ => return,
        };
        let Some(q) = st.payload().cloned() else {
            return cx.bounce(&st, Condition::BadRequest, None);
        };
        let Some(arc) = self.room(name) else {
            let e = StanzaError::new(Condition::ItemNotFound).text("No such room");
            return cx.bounce_with(&st, e, None);
        };
        let Ok(from) = st.from.clone().try_into_full() else {
            return cx.bounce(&st, Condition::BadRequest, None);
        };
        let admin = self.is_service_admin(cx, &st.from);
        let persist_ok = self.access(cx, 3, &st.from, true);
        let ns = q.ns();
        if ns == NS_MAM && q.name() == "query" {
            let allowed = {
                let room = lock(&arc);
                if room.dead {
                    Err(StanzaError::new(Condition::ItemNotFound))
                } else {
                    room.may_read_archive(&from)
                }
            };
            return match (allowed, get) {
                (Err(e), _) => cx.bounce_with(&st, e, None),
                (Ok(()), true) => cx.route(st.iq_result(Some(mam_form()))),
                (Ok(()), false) => self.mam_query(cx, st, q, name.to_string()),
            };
        }
        let reply = self.with_room_stored(
            cx,
            name,
            arc,
            |room, limits, fx| -> Result<Option<Element>, StanzaError> {
                if admin {
                    room.grant_service_admin(&from.to_bare());
                }
                match (ns.as_str(), q.name(), get) {
                    (ns::DISCO_INFO, "query", true) if q.attr("node").is_some() => {
                        if room.locked
                            && room.affiliation(&from.to_bare()) != room::Affiliation::Owner
                        {
                            return Err(StanzaError::new(Condition::ItemNotFound));
                        }
                        match q.attr("node") {
                            Some("x-roomuser-item") => Ok(Some(room.roomuser_item(&from))),
                            _ => Err(StanzaError::new(Condition::ItemNotFound)),
                        }
                    }
                    (ns::DISCO_INFO, "query", true) => {
                        if room.locked
                            && room.affiliation(&from.to_bare()) != room::Affiliation::Owner
                        {
                            return Err(StanzaError::new(Condition::ItemNotFound));
                        }
                        Ok(Some(room.disco_info()))
                    }
                    (ns::DISCO_ITEMS, "query", true) => Ok(Some(room.disco_items(&from))),
                    (ns::PING, "ping", true) => Ok(None),
                    (NS_REGISTER, "query", _) => room.register(&from, get, &q, fx),
                    (NS_VCARD, "vCard", true) => room.vcard_get(&from).map(Some),
                    (NS_VCARD, "vCard", false) => room.vcard_set(&from, &q, fx).map(|_| None),
                    (NS_MUC_ADMIN, "query", true) => room.admin_get(&from, &q).map(Some),
                    (NS_MUC_ADMIN, "query", false) => {
                        room.admin_set(&st, &from, &q, fx).map(|_| None)
                    }
                    (NS_MUC_OWNER, "query", true) => {
                        room.owner_get(&from, limits.max_users).map(Some)
                    }
                    (NS_MUC_OWNER, "query", false) => {
                        room.owner_set(&from, &q, limits, fx).map(|_| None)
                    }
                    _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
                }
            },
            persist_ok,
        );
        match reply {
            // A change to a stored room is answered once it is stored: a
            // restart after the answer keeps it.
            Some((Ok(payload), Some(stored))) => {
                let (cx2, answer) = (cx.clone(), st.iq_result(payload));
                cx.spawn(async move {
                    let _ = stored.await;
                    cx2.route(answer);
                });
            }
            Some((Ok(payload), None)) => cx.route(st.iq_result(payload)),
            Some((Err(e), _)) => {
                if let Some(r) = iq_error(&st, e) {
                    cx.route(r)
                }
            }
            None => cx.bounce(&st, Condition::ItemNotFound, None),
        }
    }

    /// XEP-0313 query of the room's archive: the matching messages, then
    /// the IQ result with the page's RSM description.
    fn mam_query(self: &Arc<Self>, cx: &ModuleCx, st: Stanza, q: Element, name: String) {
        let bad = |text: &str| StanzaError::new(Condition::BadRequest).text(text);
        let rsm = match palaver_proto::rsm::RsmRequest::find_in(&q) {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => return cx.bounce_with(&st, bad(&e.to_string()), None),
        };
        let id_of = |s: &str| s.parse::<i64>().ok();
        let mut query = store::ArchiveQuery {
            limit: rsm.limit(MAM_PAGE, MAM_PAGE_MAX) + 1,
            ..Default::default()
        };
        if let Some(form) = palaver_proto::forms::DataForm::find_in(&q) {
            let Ok(form) = form else {
                return cx.bounce_with(&st, bad("bad data form"), None);
            };
            let time = |var: &str| -> Result<Option<i64>, StanzaError> {
                match form.value(var) {
                    None | Some("") => Ok(None),
                    Some(v) => palaver_proto::datetime::parse_datetime(v)
                        .map(Some)
                        .ok_or_else(|| bad(&format!("{var} is not a date"))),
                }
            };
            match (time("start"), time("end")) {
                (Ok(s), Ok(e)) => (query.start, query.end) = (s, e),
                (Err(e), _) | (_, Err(e)) => return cx.bounce_with(&st, e, None),
            }
            if let Some(with) = form.value("with").filter(|w| !w.is_empty()) {
                match Jid::new(with)
                    .ok()
                    .and_then(|j| j.resource().map(|r| r.to_string()))
                {
                    Some(nick) => query.nick = Some(nick),
                    None => {
                        return cx.bounce_with(
                            &st,
                            bad("with must be an occupant's room JID"),
                            None,
                        );
                    }
                }
            }
            for (var, slot) in [
                ("after-id", &mut query.after),
                ("before-id", &mut query.before),
            ] {
                if let Some(v) = form.value(var).filter(|v| !v.is_empty()) {
                    match id_of(v) {
                        Some(i) => *slot = Some(i),
                        None => return cx.bounce(&st, Condition::ItemNotFound, None),
                    }
                }
            }
        }
        if let Some(a) = &rsm.after {
            match id_of(a) {
                Some(i) => query.after = Some(query.after.map_or(i, |x| x.max(i))),
                None => return cx.bounce(&st, Condition::ItemNotFound, None),
            }
        }
        if let Some(b) = rsm.before_id() {
            match id_of(b) {
                Some(i) => query.before = Some(query.before.map_or(i, |x| x.min(i))),
                None => return cx.bounce(&st, Condition::ItemNotFound, None),
            }
        }
        query.backwards = rsm.before.is_some();
        let page = query.limit - 1;
        let queryid = q.attr("queryid").map(str::to_string);
        let store = store::MucSql::of(cx);
        let svc = self.domain.clone();
        let cx2 = cx.clone();
        cx.spawn(async move {
            let cx = cx2;
            let mut rows = match store.archived(&svc, &name, &query).await {
                Ok(r) => r,
                Err(e) => {
                    let err = palaver_server::module::storage_failure("room archive", &e);
                    return cx.bounce_with(&st, err, None);
                }
            };
            let more = rows.len() > page;
            if more {
                if query.backwards {
                    rows.remove(0);
                } else {
                    rows.truncate(page);
                }
            }
            let room: Jid = st
                .to
                .clone()
                .map(|t| t.to_bare().into())
                .unwrap_or_else(|| st.from.clone());
            for m in &rows {
                let Ok(msg) = m.xml.parse::<Element>() else {
                    continue;
                };
                let mut delay = Element::bare("delay", ns::DELAY);
                set_attr(
                    &mut delay,
                    "stamp",
                    palaver_proto::datetime::format_datetime(m.ts),
                );
                let mut fwd = Element::bare("forwarded", NS_FORWARD);
                fwd.append_child(delay);
                fwd.append_child(msg);
                let mut result = Element::bare("result", NS_MAM);
                if let Some(q) = &queryid {
                    set_attr(&mut result, "queryid", q.as_str());
                }
                set_attr(&mut result, "id", m.id.to_string());
                result.append_child(fwd);
                let mut out = Element::bare("message", ns::CLIENT);
                out.append_child(result);
                cx.route(Stanza::new(
                    StanzaKind::Message,
                    room.clone(),
                    Some(st.from.clone()),
                    out,
                ));
            }
            let mut fin = Element::bare("fin", NS_MAM);
            // Complete: no more in the direction of paging.
            if !more {
                set_attr(&mut fin, "complete", "true");
            }
            let rsm_out = palaver_proto::rsm::RsmResult {
                first: rows.first().map(|m| (m.id.to_string(), None)),
                last: rows.last().map(|m| m.id.to_string()),
                count: None,
            };
            fin.append_child(rsm_out.to_element());
            cx.route(st.iq_result(Some(fin)));
        });
    }

    /// An IQ to `room/nick`: self-ping answered here (XEP-0410), vCard
    /// requests go to the occupant's account, anything else to the
    /// occupant's session with the id rewritten so the answer finds its way
    /// back (the room keeps no state for it).
    fn occupant_iq(self: &Arc<Self>, cx: &ModuleCx, st: Stanza, name: &str, nick: &str) {
        let Some(arc) = self.room(name) else {
            if matches!(st.type_attr(), Some("get" | "set")) {
                let e = StanzaError::new(Condition::ItemNotFound).text("No such room");
                cx.bounce_with(&st, e, None);
            }
            return;
        };
        let Ok(from) = st.from.clone().try_into_full() else {
            return cx.bounce(&st, Condition::BadRequest, None);
        };
        let room = lock(&arc);
        let room_jid = room.jid.clone();
        let at = |n: &str| -> Jid {
            room_jid
                .with_resource_str(n)
                .map(Jid::from)
                .unwrap_or_else(|_| room_jid.clone().into())
        };
        match st.type_attr() {
            Some("get" | "set") => {
                let Some(me) = room.occupant_of(&from).map(|o| o.nick.clone()) else {
                    drop(room);
                    let e = StanzaError::new(Condition::NotAcceptable)
                        .text("Only occupants may send IQs to occupants");
                    return cx.bounce_with(&st, e, None);
                };
                let payload = st.payload();
                if me == nick && payload.is_some_and(|p| p.is("ping", ns::PING)) {
                    drop(room);
                    return cx.route(st.iq_result(None));
                }
                let Some(target) = room.occupants.get(nick) else {
                    drop(room);
                    let e = StanzaError::new(Condition::ItemNotFound)
                        .text("No occupant has that nickname");
                    return cx.bounce_with(&st, e, None);
                };
                let (to, target_bare): (Jid, Jid) = (
                    target
                        .sessions
                        .first()
                        .cloned()
                        .map(Jid::from)
                        .unwrap_or_else(|| target.bare.clone().into()),
                    target.bare.clone().into(),
                );
                drop(room);
                let vcard = payload.is_some_and(|p| p.is("vCard", NS_VCARD));
                let mut el = st.to_element();
                set_attr(&mut el, "id", encode_id(&from, st.id().unwrap_or("")));
                let to = if vcard { target_bare } else { to };
                cx.route(Stanza::new(StanzaKind::Iq, at(&me), Some(to), el));
            }
            Some("result" | "error") => {
                // The answer of a forwarded IQ: from the occupant's real JID.
                let Some((orig, id)) = st.id().and_then(decode_id) else {
                    return;
                };
                let sender = room.occupant_of(&from).map(|o| o.nick.clone()).or_else(|| {
                    // A vCard answered by the occupant's server.
                    room.occupants
                        .values()
                        .find(|o| o.bare.as_str() == st.from.as_str())
                        .map(|o| o.nick.clone())
                });
                let asker_ok = room.occupant_of(&orig).is_some_and(|o| o.nick == nick);
                drop(room);
                let (Some(sender), true) = (sender, asker_ok) else {
                    return;
                };
                let mut el = st.to_element();
                set_attr(&mut el, "id", id);
                cx.route(Stanza::new(
                    StanzaKind::Iq,
                    at(&sender),
                    Some(orig.into()),
                    el,
                ));
            }
            _ => {}
        }
    }
}

/// The archive's search form (XEP-0313 §6).
fn mam_form() -> Element {
    use palaver_proto::forms::{DataForm, Field, FieldType, FormType};
    let form = DataForm::with_form_type(FormType::Form, NS_MAM)
        .field(Field::new("with", FieldType::JidSingle, vec![]))
        .field(Field::new("start", FieldType::TextSingle, vec![]))
        .field(Field::new("end", FieldType::TextSingle, vec![]))
        .field(Field::new("before-id", FieldType::TextSingle, vec![]))
        .field(Field::new("after-id", FieldType::TextSingle, vec![]));
    let mut q = Element::bare("query", NS_MAM);
    q.append_child(form.to_element());
    q
}

fn encode_id(from: &FullJid, id: &str) -> String {
    use base64::Engine;
    let raw = format!("{from}\0{id}");
    format!(
        "muc-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn decode_id(id: &str) -> Option<(FullJid, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id.strip_prefix("muc-")?)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (from, id) = raw.split_once('\0')?;
    Some((FullJid::new(from).ok()?, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_ids_round_trip() {
        let f = FullJid::new("a@b/c").unwrap();
        let e = encode_id(&f, "x\0y");
        assert_eq!(decode_id(&e), Some((f, "x\0y".to_string())));
        assert_eq!(decode_id("muc-!!"), None);
        assert_eq!(decode_id("other"), None);
    }
}
