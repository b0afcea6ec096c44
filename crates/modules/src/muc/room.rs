//! One room: occupants, roles and affiliations, history, subject, and the
//! XEP-0045 rules for what each stanza does. Pure state: handlers return the
//! stanzas to route (routed by the caller after the room's lock is released)
//! and whether the stored room must be written.

use super::config::{NS_ROOMCONFIG, RoomConfig};
use super::{Limits, NS_MUC, NS_MUC_ADMIN, NS_MUC_OWNER, NS_MUC_USER, NS_OCCUPANT_ID};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::forms::{DataForm, Field, FieldType, FormType};
use palaver_proto::ns;
use palaver_proto::stanza::{Stanza, StanzaKind, remove_attr, set_attr};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// XEP-0045 affiliations, ordered by privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// XEP-0045 roles, ordered by privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// An occupant: a nickname held by one user, from one or more sessions.
#[derive(Debug, Clone)]
pub struct Occupant {
    pub nick: String,
    pub bare: BareJid,
    pub sessions: Vec<FullJid>,
    pub role: Role,
    /// The children of the occupant's last presence worth repeating
    /// (show, status, caps, avatar hash…).
    pub presence: Vec<Element>,
    /// XEP-0421 occupant id.
    pub id: String,
}

/// A message kept for late joiners.
#[derive(Debug, Clone)]
struct Hist {
    el: Element,
    at_ms: i64,
    chars: usize,
}

/// What handling a stanza produced.
#[derive(Default)]
pub struct Effects {
    /// Stanzas to route once the room's lock is released.
    pub out: Vec<Stanza>,
    /// The stored room must be written (or deleted when not persistent).
    pub save: bool,
    /// The room was destroyed.
    pub destroyed: bool,
    /// Users (bare JIDs) that became occupants (+1) or stopped being (-1).
    pub joined: Vec<(String, i32)>,
    /// A message to add to the room's archive.
    pub archive: Option<super::store::Archived>,
}

/// A copy of `template` for each of `sessions`: the copies share its
/// element and are serialized once (`Stanza::write_xml`).
fn fan_out(template: &Stanza, sessions: &[FullJid], fx: &mut Effects) {
    for s in sessions {
        let mut copy = template.clone();
        copy.set_to(Some(s.clone().into()));
        fx.out.push(copy);
    }
}

/// A room.
pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    pub subject: String,
    pub subject_by: String,
    pub salt: String,
    /// Bare (or domain) JID → (affiliation, reason).
    pub affiliations: BTreeMap<String, (Affiliation, String)>,
    /// By nickname.
    pub occupants: BTreeMap<String, Occupant>,
    by_jid: HashMap<FullJid, String>,
    history: VecDeque<Hist>,
    /// A new room not yet configured (§10.1.2): only its owner may enter.
    pub locked: bool,
    /// Removed from the service: a stanza that waited for its lock looks again.
    pub dead: bool,
    /// Created by an administrator and not entered yet: it stays while
    /// empty (a temporary room goes when its last occupant leaves).
    pub held: bool,
    voice_requests: HashMap<String, i64>,
    /// Service administrators seen here (`access_admin`): owners, not stored.
    service_admins: std::collections::HashSet<String>,
    /// The last archive id given (ids increase; milliseconds × 1000).
    last_archive_id: i64,
    /// Registered nicknames (XEP-0045 §7.10): bare JID → nickname. Only
    /// users affiliated as member or above have one.
    pub reserved: BTreeMap<String, String>,
    /// The room's vCard (vcard-temp), serialized; empty when none is set.
    pub vcard: String,
    /// SHA-1 (hex) of the vCard's photo (XEP-0486); empty without one.
    pub avatar_hash: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn el(name: &str, ns: &str) -> Element {
    Element::bare(name, ns)
}

fn text_el(name: &str, ns: &str, text: &str) -> Element {
    Element::builder(name, ns).append(text).build()
}

fn status(code: u16) -> Element {
    let mut s = el("status", NS_MUC_USER);
    set_attr(&mut s, "code", code.to_string());
    s
}

fn error(st: &Stanza, cond: Condition) -> Option<Stanza> {
    st.error_reply(&StanzaError::new(cond), None)
}

fn error_text(st: &Stanza, cond: Condition, text: &str) -> Option<Stanza> {
    st.error_reply(&StanzaError::new(cond).text(text), None)
}

fn new_salt() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Details of a presence broadcast about one occupant.
#[derive(Default)]
struct Pres<'a> {
    unavailable: bool,
    codes: Vec<u16>,
    new_nick: Option<&'a str>,
    actor: Option<&'a str>,
    reason: Option<&'a str>,
    destroy: Option<Element>,
}

impl Room {
    /// A new, empty room.
    pub fn new(jid: BareJid, config: RoomConfig, locked: bool) -> Room {
        Room {
            jid,
            config,
            subject: String::new(),
            subject_by: String::new(),
            salt: new_salt(),
            affiliations: BTreeMap::new(),
            occupants: BTreeMap::new(),
            by_jid: HashMap::new(),
            history: VecDeque::new(),
            locked,
            dead: false,
            held: false,
            voice_requests: HashMap::new(),
            service_admins: Default::default(),
            last_archive_id: 0,
            reserved: BTreeMap::new(),
            vcard: String::new(),
            avatar_hash: String::new(),
        }
    }

    /// A room read from the store.
    pub fn restore(jid: BareJid, stored: &super::store::StoredRoom) -> Room {
        let config = serde_json::from_str(&stored.config).unwrap_or_else(|e| {
            tracing::warn!(room = %jid, error = %e, "stored room configuration unreadable; defaults used");
            RoomConfig {
                persistent: true,
                ..RoomConfig::default()
            }
        });
        let mut r = Room::new(jid, config, false);
        r.subject = stored.subject.clone();
        r.subject_by = stored.subject_by.clone();
        if !stored.salt.is_empty() {
            r.salt = stored.salt.clone();
        }
        for (j, a, reason, nick) in &stored.affiliations {
            if let Some(a) = Affiliation::parse(a) {
                r.affiliations.insert(j.clone(), (a, reason.clone()));
                if a >= Affiliation::Member && !nick.is_empty() {
                    r.reserved.insert(j.clone(), nick.clone());
                }
            }
        }
        if !stored.vcard.is_empty() {
            match stored.vcard.parse::<Element>() {
                Ok(v) => match photo_hash(&v) {
                    Ok(h) => {
                        r.vcard = stored.vcard.clone();
                        r.avatar_hash = h;
                    }
                    Err(e) => {
                        tracing::warn!(room = %r.jid, error = %e, "stored room vCard has a bad photo; dropped")
                    }
                },
                Err(e) => {
                    tracing::warn!(room = %r.jid, error = %e, "stored room vCard unreadable; dropped")
                }
            }
        }
        r
    }

    /// The room as stored.
    pub fn snapshot(&self) -> super::store::StoredRoom {
        super::store::StoredRoom {
            name: self.jid.node().map(|n| n.to_string()).unwrap_or_default(),
            config: serde_json::to_string(&self.config).unwrap_or_default(),
            subject: self.subject.clone(),
            subject_by: self.subject_by.clone(),
            salt: self.salt.clone(),
            affiliations: self
                .affiliations
                .iter()
                .map(|(j, (a, r))| {
                    let nick = self.reserved.get(j).cloned().unwrap_or_default();
                    (j.clone(), a.as_str().to_string(), r.clone(), nick)
                })
                .collect(),
            vcard: self.vcard.clone(),
        }
    }

    /// Whether anyone is in the room.
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    /// A service administrator (`access_admin`) has owner rights here.
    pub fn grant_service_admin(&mut self, bare: &BareJid) {
        if !self.service_admins.contains(bare.as_str()) {
            self.service_admins.insert(bare.to_string());
        }
    }

    /// The affiliation of a user (a ban of their domain counts).
    pub fn affiliation(&self, bare: &BareJid) -> Affiliation {
        if self.service_admins.contains(bare.as_str()) {
            return Affiliation::Owner;
        }
        if let Some((a, _)) = self.affiliations.get(bare.as_str()) {
            return *a;
        }
        match self.affiliations.get(bare.domain().as_str()) {
            Some((Affiliation::Outcast, _)) => Affiliation::Outcast,
            _ => Affiliation::None,
        }
    }

    fn set_affiliation(&mut self, jid: &str, a: Affiliation, reason: &str) {
        if a < Affiliation::Member {
            self.reserved.remove(jid);
        }
        if a == Affiliation::None {
            self.affiliations.remove(jid);
        } else {
            self.affiliations
                .insert(jid.to_string(), (a, reason.to_string()));
        }
    }

    fn default_role(&self, a: Affiliation) -> Role {
        match a {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated && !self.config.members_by_default => {
                Role::Visitor
            }
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    fn occupant_id(&self, bare: &BareJid) -> String {
        use base64::Engine;
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.salt.as_bytes());
        h.update([0]);
        h.update(bare.as_str().as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&h.finalize()[..18])
    }

    fn nick_jid(&self, nick: &str) -> Jid {
        match self.jid.with_resource_str(nick) {
            Ok(f) => f.into(),
            Err(_) => self.jid.clone().into(),
        }
    }

    /// Whether `who` sees real JIDs.
    fn sees_jids(&self, who: &Occupant) -> bool {
        !self.config.anonymous || who.role == Role::Moderator
    }

    /// The presence of `occ` as `to_self` or another occupant sees it.
    fn presence_el(&self, occ: &Occupant, with_jid: bool, to_self: bool, p: &Pres) -> Element {
        let mut pres = el("presence", ns::CLIENT);
        if p.unavailable {
            set_attr(&mut pres, "type", "unavailable");
        } else {
            for c in &occ.presence {
                pres.append_child(c.clone());
            }
        }
        let mut x = el("x", NS_MUC_USER);
        let mut item = el("item", NS_MUC_USER);
        let aff = self.affiliation(&occ.bare);
        set_attr(&mut item, "affiliation", aff.as_str());
        set_attr(
            &mut item,
            "role",
            if p.unavailable {
                "none"
            } else {
                occ.role.as_str()
            },
        );
        if with_jid && let Some(j) = occ.sessions.first() {
            set_attr(&mut item, "jid", j.as_str());
        }
        if let Some(n) = p.new_nick {
            set_attr(&mut item, "nick", n);
        }
        if let Some(a) = p.actor {
            let mut actor = el("actor", NS_MUC_USER);
            set_attr(&mut actor, "nick", a);
            item.append_child(actor);
        }
        if let Some(r) = p.reason {
            item.append_child(text_el("reason", NS_MUC_USER, r));
        }
        x.append_child(item);
        if let Some(d) = &p.destroy {
            x.append_child(d.clone());
        }
        for c in &p.codes {
            x.append_child(status(*c));
        }
        if to_self {
            x.append_child(status(110));
            if !self.config.anonymous && !p.unavailable {
                x.append_child(status(100));
            }
            if self.config.logging && !p.unavailable {
                x.append_child(status(170));
            }
        }
        pres.append_child(x);
        let mut oid = el("occupant-id", NS_OCCUPANT_ID);
        set_attr(&mut oid, "id", occ.id.as_str());
        pres.append_child(oid);
        pres
    }

    /// Tell every occupant (and the subject, `extra_self` codes included)
    /// about `occ`'s presence: one stanza per variant, shared by every
    /// session that gets it (serialized once, [`Stanza::write_xml`]).
    fn broadcast_presence(&self, occ: &Occupant, p: &Pres, self_codes: &[u16], fx: &mut Effects) {
        self.broadcast_presence_to_others(occ, p, fx);
        let mut mine = Pres {
            unavailable: p.unavailable,
            codes: p.codes.clone(),
            new_nick: p.new_nick,
            actor: p.actor,
            reason: p.reason,
            destroy: p.destroy.clone(),
        };
        mine.codes.extend_from_slice(self_codes);
        let own = self.presence_el(occ, true, true, &mine);
        let own = Stanza::new(StanzaKind::Presence, self.nick_jid(&occ.nick), None, own);
        fan_out(&own, &occ.sessions, fx);
    }

    /// A message from the room to every session of every occupant: one
    /// stanza shared by all of them (serialized once, [`Stanza::write_xml`]).
    fn broadcast_message(&self, from: Jid, msg: &Element, fx: &mut Effects) {
        let template = Stanza::new(StanzaKind::Message, from, None, msg.clone());
        for occ in self.occupants.values() {
            fan_out(&template, &occ.sessions, fx);
        }
    }

    fn status_message(&self, codes: &[u16], fx: &mut Effects) {
        let mut m = el("message", ns::CLIENT);
        set_attr(&mut m, "type", "groupchat");
        set_attr(&mut m, "id", new_salt());
        let mut x = el("x", NS_MUC_USER);
        for c in codes {
            x.append_child(status(*c));
        }
        m.append_child(x);
        self.broadcast_message(self.jid.clone().into(), &m, fx);
    }

    fn remove_session(&mut self, from: &FullJid) -> Option<Occupant> {
        let nick = self.by_jid.remove(from)?;
        let occ = self.occupants.get_mut(&nick)?;
        occ.sessions.retain(|s| s != from);
        if occ.sessions.is_empty() {
            self.occupants.remove(&nick)
        } else {
            None
        }
    }

    /// Remove an occupant whole, telling everyone (kick, ban, destroy…).
    fn remove_occupant(&mut self, nick: &str, p: &Pres, fx: &mut Effects) {
        let Some(occ) = self.occupants.remove(nick) else {
            return;
        };
        for s in &occ.sessions {
            self.by_jid.remove(s);
        }
        // The removed occupant hears it too (with 110).
        let own = self.presence_el(&occ, true, true, p);
        let own = Stanza::new(StanzaKind::Presence, self.nick_jid(&occ.nick), None, own);
        fan_out(&own, &occ.sessions, fx);
        self.broadcast_presence_to_others(&occ, p, fx);
        fx.joined.push((occ.bare.to_string(), -1));
    }

    fn broadcast_presence_to_others(&self, occ: &Occupant, p: &Pres, fx: &mut Effects) {
        let from = self.nick_jid(&occ.nick);
        let mut variants: [Option<Stanza>; 2] = [None, None];
        for other in self.occupants.values() {
            if other.nick == occ.nick {
                continue;
            }
            let with_jid = self.sees_jids(other);
            let v = variants[with_jid as usize].get_or_insert_with(|| {
                let el = self.presence_el(occ, with_jid, false, p);
                Stanza::new(StanzaKind::Presence, from.clone(), None, el)
            });
            fan_out(v, &other.sessions, fx);
        }
    }

    /// Presence kept from an occupant's presence stanza.
    fn kept_presence(&self, st: &Stanza, role: Role) -> Vec<Element> {
        st.el()
            .children()
            .filter(|c| {
                !(c.is("x", NS_MUC)
                    || c.is("x", NS_MUC_USER)
                    || c.is("occupant-id", NS_OCCUPANT_ID))
            })
            .filter(|c| {
                role != Role::Visitor
                    || self.config.allow_visitor_status
                    || !c.is("status", ns::CLIENT)
            })
            .cloned()
            .collect()
    }

    /// `occupant` of the sender, if any.
    pub fn occupant_of(&self, from: &FullJid) -> Option<&Occupant> {
        self.by_jid.get(from).and_then(|n| self.occupants.get(n))
    }

    // ------------------------------------------------------------ presence

    /// A presence addressed to `room/nick`. `created` is true when the room
    /// was just made for this stanza.
    pub fn on_presence(
        &mut self,
        st: &Stanza,
        from: &FullJid,
        nick: &str,
        created: bool,
        limits: &Limits,
        fx: &mut Effects,
    ) {
        match st.type_attr() {
            None => {}
            Some("unavailable") => return self.leave(st, from, fx),
            Some("error") => {
                // The occupant's server could not deliver to it: it is gone (§8.2).
                if let Some(nick) = self.by_jid.get(from).cloned() {
                    let p = Pres {
                        unavailable: true,
                        codes: vec![333],
                        ..Pres::default()
                    };
                    self.remove_occupant(&nick, &p, fx);
                }
                return;
            }
            // Subscriptions and probes mean nothing to a room.
            Some(_) => return,
        }
        if let Some(current) = self.by_jid.get(from).cloned() {
            if current == nick {
                return self.presence_update(st, from, &current, fx);
            }
            return self.change_nick(st, from, &current, nick, fx);
        }
        self.join(st, from, nick, created, limits, fx)
    }

    fn join(
        &mut self,
        st: &Stanza,
        from: &FullJid,
        nick: &str,
        created: bool,
        limits: &Limits,
        fx: &mut Effects,
    ) {
        let bare = from.to_bare();
        if created {
            self.set_affiliation(bare.as_str(), Affiliation::Owner, "");
        }
        let aff = self.affiliation(&bare);
        let x = st.el().get_child("x", NS_MUC);
        let refuse = |fx: &mut Effects, cond: Condition, text: &str| {
            fx.out.extend(error_text(st, cond, text));
        };
        if self.locked && aff != Affiliation::Owner {
            // §10.1.1: a locked room does not exist yet for others.
            return refuse(
                fx,
                Condition::ItemNotFound,
                "This room is locked until its owner configures it",
            );
        }
        if aff == Affiliation::Outcast {
            return refuse(
                fx,
                Condition::Forbidden,
                "You have been banned from this room",
            );
        }
        if self.config.members_only && aff < Affiliation::Member {
            return refuse(
                fx,
                Condition::RegistrationRequired,
                "This room is members-only",
            );
        }
        // §7.2.9: a nickname another user registered is theirs, and a room
        // that enforces registered nicknames holds its members to theirs.
        if let Err(e) = self.nick_allowed(&bare, nick) {
            fx.out.extend(st.error_reply(&e, None));
            return;
        }
        // A nickname is one user's: another user's sessions may not share it.
        let same_user = match self.occupants.get(nick) {
            Some(o) if o.bare != bare => {
                return refuse(fx, Condition::Conflict, "That nickname is already in use");
            }
            Some(_) => true,
            None => false,
        };
        if self.config.password_protected && aff < Affiliation::Owner {
            let given = x
                .and_then(|x| x.get_child("password", NS_MUC))
                .map(|p| p.text());
            if given.as_deref() != Some(self.config.password.as_str()) {
                return refuse(fx, Condition::NotAuthorized, "A password is required");
            }
        }
        if !same_user
            && self.occupants.len() as u32 >= self.config.max_users.min(limits.max_users)
            && aff < Affiliation::Admin
        {
            let err = StanzaError::new(Condition::ServiceUnavailable)
                .with_type(palaver_proto::error::ErrorType::Wait)
                .text("The room is full");
            fx.out.extend(st.error_reply(&err, None));
            return;
        }
        if !same_user && !limits.may_join(&bare) {
            return refuse(
                fx,
                Condition::ResourceConstraint,
                "You are in too many rooms already",
            );
        }
        let role = self.default_role(aff);
        let occ = match self.occupants.get_mut(nick) {
            Some(o) => {
                o.sessions.push(from.clone());
                o.clone()
            }
            None => {
                let o = Occupant {
                    nick: nick.to_string(),
                    bare: bare.clone(),
                    sessions: vec![from.clone()],
                    role,
                    presence: self.kept_presence(st, role),
                    id: self.occupant_id(&bare),
                };
                self.occupants.insert(nick.to_string(), o.clone());
                fx.joined.push((bare.to_string(), 1));
                o
            }
        };
        self.by_jid.insert(from.clone(), nick.to_string());
        let to: Jid = from.clone().into();
        // §7.2.3: the others' presence first, to this session only.
        let me_sees = self.sees_jids(&occ);
        for other in self.occupants.values() {
            if other.nick == nick {
                continue;
            }
            fx.out.push(Stanza::new(
                StanzaKind::Presence,
                self.nick_jid(&other.nick),
                Some(to.clone()),
                self.presence_el(other, me_sees, false, &Pres::default()),
            ));
        }
        // Then the new occupant's presence to everyone, itself last.
        let mut self_codes = Vec::new();
        if created {
            self_codes.push(201);
        }
        if same_user {
            let own = self.presence_el(
                &occ,
                true,
                true,
                &Pres {
                    codes: self_codes,
                    ..Pres::default()
                },
            );
            fx.out.push(Stanza::new(
                StanzaKind::Presence,
                self.nick_jid(nick),
                Some(to.clone()),
                own,
            ));
        } else {
            self.broadcast_presence(&occ, &Pres::default(), &self_codes, fx);
        }
        // §7.2.14: history, then the subject.
        self.send_history(x, &to, fx);
        let mut subj = el("message", ns::CLIENT);
        set_attr(&mut subj, "type", "groupchat");
        set_attr(&mut subj, "id", new_salt());
        subj.append_child(text_el("subject", ns::CLIENT, &self.subject));
        let subj_from = if self.subject_by.is_empty() {
            self.jid.clone().into()
        } else {
            self.nick_jid(&self.subject_by)
        };
        fx.out.push(Stanza::new(
            StanzaKind::Message,
            subj_from,
            Some(to.clone()),
            subj,
        ));
        // XEP-0486: the room's avatar hash, from the room itself.
        if !self.avatar_hash.is_empty() {
            fx.out.push(Stanza::new(
                StanzaKind::Presence,
                self.jid.clone().into(),
                Some(to),
                self.avatar_presence(),
            ));
        }
        if created {
            fx.save = true;
        }
    }

    /// The user registered `nick`, or none (§7.10).
    pub fn reserved_nick(&self, bare: &BareJid) -> Option<&str> {
        self.reserved.get(bare.as_str()).map(String::as_str)
    }

    /// Who registered `nick` with the room, if anyone.
    fn reserved_by(&self, nick: &str) -> Option<&str> {
        self.reserved
            .iter()
            .find(|(_, n)| n.as_str() == nick)
            .map(|(j, _)| j.as_str())
    }

    /// Whether `bare` may use `nick` here: not another user's registered
    /// nickname (`conflict`), and its own when the room enforces them
    /// (`not-acceptable`).
    fn nick_allowed(&self, bare: &BareJid, nick: &str) -> Result<(), StanzaError> {
        if let Some(owner) = self.reserved_by(nick)
            && owner != bare.as_str()
        {
            return Err(StanzaError::new(Condition::Conflict)
                .text("That nickname is registered by another user"));
        }
        if self.config.enforce_reserved_nick
            && let Some(mine) = self.reserved_nick(bare)
            && mine != nick
        {
            return Err(StanzaError::new(Condition::NotAcceptable).text(format!(
                "This room requires your registered nickname: {mine}"
            )));
        }
        Ok(())
    }

    fn send_history(&self, x: Option<&Element>, to: &Jid, fx: &mut Effects) {
        let h = x.and_then(|x| x.get_child("history", NS_MUC));
        let num = |name: &str| {
            h.and_then(|h| h.attr(name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let maxstanzas = num("maxstanzas").unwrap_or(u64::MAX);
        let maxchars = num("maxchars").unwrap_or(u64::MAX);
        let mut since = h
            .and_then(|h| h.attr("since"))
            .and_then(palaver_proto::datetime::parse_datetime)
            .unwrap_or(i64::MIN);
        if let Some(s) = num("seconds") {
            since = since.max(now_ms() - (s.min(1 << 40) as i64) * 1000);
        }
        let mut picked = Vec::new();
        let mut chars = 0u64;
        for m in self.history.iter().rev() {
            if picked.len() as u64 >= maxstanzas || m.at_ms < since {
                break;
            }
            chars += m.chars as u64;
            if chars > maxchars {
                break;
            }
            picked.push(m);
        }
        for m in picked.into_iter().rev() {
            let from =
                m.el.attr("from")
                    .and_then(|f| Jid::new(f).ok())
                    .unwrap_or_else(|| self.jid.clone().into());
            fx.out.push(Stanza::new(
                StanzaKind::Message,
                from,
                Some(to.clone()),
                m.el.clone(),
            ));
        }
    }

    fn presence_update(&mut self, st: &Stanza, from: &FullJid, nick: &str, fx: &mut Effects) {
        let Some(role) = self.occupants.get(nick).map(|o| o.role) else {
            return;
        };
        let kept = self.kept_presence(st, role);
        let Some(occ) = self.occupants.get_mut(nick) else {
            return;
        };
        occ.presence = kept;
        let _ = from;
        let occ = occ.clone();
        self.broadcast_presence(&occ, &Pres::default(), &[], fx);
    }

    fn change_nick(&mut self, st: &Stanza, from: &FullJid, old: &str, new: &str, fx: &mut Effects) {
        let Some(occ) = self.occupants.get(old).cloned() else {
            return;
        };
        if self.occupants.contains_key(new) {
            fx.out.extend(error_text(
                st,
                Condition::Conflict,
                "That nickname is already in use",
            ));
            return;
        }
        if let Err(e) = self.nick_allowed(&occ.bare, new) {
            fx.out.extend(st.error_reply(&e, None));
            return;
        }
        if occ.role == Role::Visitor && !self.config.allow_visitor_nickchange {
            fx.out.extend(error_text(
                st,
                Condition::NotAllowed,
                "Visitors may not change their nickname",
            ));
            return;
        }
        if occ.sessions.len() > 1 {
            fx.out.extend(error_text(
                st,
                Condition::NotAcceptable,
                "This nickname is used by several of your sessions",
            ));
            return;
        }
        // §7.6: unavailable with 303 and the new nick, then available.
        let gone = Pres {
            unavailable: true,
            codes: vec![303],
            new_nick: Some(new),
            ..Pres::default()
        };
        self.broadcast_presence(&occ, &gone, &[], fx);
        let mut moved = occ;
        self.occupants.remove(old);
        moved.nick = new.to_string();
        moved.presence = self.kept_presence(st, moved.role);
        self.by_jid.insert(from.clone(), new.to_string());
        self.occupants.insert(new.to_string(), moved.clone());
        self.broadcast_presence(&moved, &Pres::default(), &[], fx);
    }

    fn leave(&mut self, st: &Stanza, from: &FullJid, fx: &mut Effects) {
        let Some(nick) = self.by_jid.get(from).cloned() else {
            return;
        };
        let Some(mut occ) = self.occupants.get(&nick).cloned() else {
            return;
        };
        let status_text = st.el().get_child("status", ns::CLIENT).cloned();
        if let Some(gone) = self.remove_session(from) {
            occ = gone;
            occ.presence = status_text.into_iter().collect();
            occ.sessions = vec![from.clone()];
            let p = Pres {
                unavailable: true,
                ..Pres::default()
            };
            // Unavailable presence carries no children but status; keep it.
            let mut own = self.presence_el(&occ, true, true, &p);
            let mut others: [Option<Element>; 2] = [None, None];
            if let Some(s) = &status_text_of(&occ) {
                own.append_child(s.clone());
            }
            for other in self.occupants.values() {
                let with_jid = self.sees_jids(other);
                let v = others[with_jid as usize].get_or_insert_with(|| {
                    let mut e = self.presence_el(&occ, with_jid, false, &p);
                    if let Some(s) = status_text_of(&occ) {
                        e.append_child(s);
                    }
                    e
                });
                for s in &other.sessions {
                    fx.out.push(Stanza::new(
                        StanzaKind::Presence,
                        self.nick_jid(&nick),
                        Some(s.clone().into()),
                        v.clone(),
                    ));
                }
            }
            fx.out.push(Stanza::new(
                StanzaKind::Presence,
                self.nick_jid(&nick),
                Some(from.clone().into()),
                own,
            ));
            fx.joined.push((occ.bare.to_string(), -1));
        } else {
            // Another session keeps the nickname: only this one is told.
            let p = Pres {
                unavailable: true,
                ..Pres::default()
            };
            fx.out.push(Stanza::new(
                StanzaKind::Presence,
                self.nick_jid(&nick),
                Some(from.clone().into()),
                self.presence_el(&occ, true, true, &p),
            ));
        }
    }

    // ------------------------------------------------------------ messages

    /// A message addressed to the room's bare JID.
    pub fn on_room_message(
        &mut self,
        st: &Stanza,
        from: &FullJid,
        history_size: usize,
        fx: &mut Effects,
    ) {
        if st.is_error() {
            // A bounced groupchat message: the occupant is unreachable.
            if let Some(nick) = self.by_jid.get(from).cloned() {
                let p = Pres {
                    unavailable: true,
                    codes: vec![333],
                    ..Pres::default()
                };
                self.remove_occupant(&nick, &p, fx);
            }
            return;
        }
        if st.type_attr() == Some("groupchat") {
            return self.groupchat(st, from, history_size, fx);
        }
        if let Some(x) = st.el().get_child("x", NS_MUC_USER) {
            if let Some(inv) = x.get_child("invite", NS_MUC_USER) {
                return self.invite(st, from, inv, fx);
            }
            if let Some(dec) = x.get_child("decline", NS_MUC_USER) {
                return self.decline(st, from, dec, fx);
            }
        }
        if let Some(Ok(form)) = DataForm::find_in(st.el())
            && form.form_type() == Some(super::NS_MUC_REQUEST)
        {
            return self.voice_request(st, from, &form, fx);
        }
        fx.out.extend(error_text(
            st,
            Condition::BadRequest,
            "Send messages to the room as type groupchat",
        ));
    }

    fn groupchat(&mut self, st: &Stanza, from: &FullJid, history_size: usize, fx: &mut Effects) {
        let Some(occ) = self.occupant_of(from).cloned() else {
            fx.out.extend(error_text(
                st,
                Condition::NotAcceptable,
                "Only occupants may send messages to the room",
            ));
            return;
        };
        let subject = st.el().get_child("subject", ns::CLIENT);
        let has_body = st.el().get_child("body", ns::CLIENT).is_some();
        if let Some(subject) = subject.filter(|_| !has_body) {
            let may = occ.role == Role::Moderator
                || (self.config.allow_change_subj && occ.role >= Role::Participant);
            if !may {
                fx.out.extend(error_text(
                    st,
                    Condition::Forbidden,
                    "You may not change the subject",
                ));
                return;
            }
            self.subject = subject.text();
            self.subject_by = occ.nick.clone();
            fx.save = true;
        } else if occ.role < Role::Participant {
            fx.out.extend(error_text(
                st,
                Condition::Forbidden,
                "Visitors may not speak in this moderated room",
            ));
            return;
        }
        let mut msg = st.to_element();
        remove_attr(&mut msg, "from");
        remove_attr(&mut msg, "to");
        // XEP-0421 §4 and XEP-0359 §3.1: ids from the sender are never passed on.
        remove_children(&mut msg, "occupant-id", NS_OCCUPANT_ID);
        remove_children(&mut msg, "stanza-id", super::NS_SID);
        let mut oid = el("occupant-id", NS_OCCUPANT_ID);
        set_attr(&mut oid, "id", occ.id.as_str());
        msg.append_child(oid);
        let from_jid = self.nick_jid(&occ.nick);
        let now = now_ms();
        if has_body && self.config.mam {
            let id = (now.saturating_mul(1000)).max(self.last_archive_id + 1);
            self.last_archive_id = id;
            let mut sid = el("stanza-id", super::NS_SID);
            set_attr(&mut sid, "id", id.to_string());
            set_attr(&mut sid, "by", self.jid.as_str());
            msg.append_child(sid);
            let mut stored = msg.clone();
            set_attr(&mut stored, "from", from_jid.as_str());
            let mut xml = String::new();
            palaver_proto::writer::write_element(&mut xml, &stored, "");
            fx.archive = Some(super::store::Archived {
                id,
                ts: now,
                nick: occ.nick.clone(),
                xml,
            });
        }
        self.broadcast_message(from_jid.clone(), &msg, fx);
        if has_body && history_size > 0 {
            let mut h = msg;
            set_attr(&mut h, "from", from_jid.as_str());
            remove_attr(&mut h, "to");
            let mut delay = el("delay", ns::DELAY);
            set_attr(&mut delay, "from", self.jid.as_str());
            set_attr(
                &mut delay,
                "stamp",
                palaver_proto::datetime::format_datetime(now),
            );
            h.append_child(delay);
            let mut text = String::new();
            palaver_proto::writer::write_element(&mut text, &h, ns::CLIENT);
            self.history.push_back(Hist {
                el: h,
                at_ms: now,
                chars: text.chars().count(),
            });
            while self.history.len() > history_size {
                self.history.pop_front();
            }
        }
    }

    /// A message to `room/nick`: a private message between occupants.
    pub fn on_private_message(
        &mut self,
        st: &Stanza,
        from: &FullJid,
        nick: &str,
        fx: &mut Effects,
    ) {
        if st.is_error() {
            return;
        }
        let Some(sender) = self.occupant_of(from).cloned() else {
            fx.out.extend(error_text(
                st,
                Condition::NotAcceptable,
                "Only occupants may send private messages",
            ));
            return;
        };
        if st.type_attr() == Some("groupchat") {
            fx.out.extend(error_text(
                st,
                Condition::BadRequest,
                "Private messages may not be of type groupchat",
            ));
            return;
        }
        let allowed = match self.config.allowpm.as_str() {
            "anyone" => true,
            "participants" => sender.role >= Role::Participant,
            "moderators" => sender.role == Role::Moderator,
            _ => false,
        };
        if !allowed {
            fx.out.extend(error_text(
                st,
                Condition::Forbidden,
                "Private messages are not allowed in this room",
            ));
            return;
        }
        let Some(target) = self.occupants.get(nick) else {
            fx.out.extend(error_text(
                st,
                Condition::ItemNotFound,
                "No occupant has that nickname",
            ));
            return;
        };
        let mut msg = st.to_element();
        remove_children(&mut msg, "occupant-id", NS_OCCUPANT_ID);
        if msg.get_child("x", NS_MUC_USER).is_none() {
            msg.append_child(el("x", NS_MUC_USER));
        }
        let mut oid = el("occupant-id", NS_OCCUPANT_ID);
        set_attr(&mut oid, "id", sender.id.as_str());
        msg.append_child(oid);
        let from_jid = self.nick_jid(&sender.nick);
        for s in &target.sessions {
            fx.out.push(Stanza::new(
                StanzaKind::Message,
                from_jid.clone(),
                Some(s.clone().into()),
                msg.clone(),
            ));
        }
    }

    fn invite(&mut self, st: &Stanza, from: &FullJid, inv: &Element, fx: &mut Effects) {
        let Some(sender) = self.occupant_of(from).cloned() else {
            fx.out.extend(error_text(
                st,
                Condition::NotAcceptable,
                "Only occupants may invite",
            ));
            return;
        };
        let aff = self.affiliation(&sender.bare);
        let may = if self.config.members_only {
            aff >= Affiliation::Admin || self.config.allow_user_invites
        } else {
            self.config.allow_user_invites || sender.role == Role::Moderator
        };
        if !may {
            fx.out.extend(error_text(
                st,
                Condition::Forbidden,
                "Invitations are not allowed in this room",
            ));
            return;
        }
        let Some(to) = inv.attr("to").and_then(|t| Jid::new(t).ok()) else {
            fx.out.extend(error(st, Condition::JidMalformed));
            return;
        };
        // §7.8.2: in a members-only room, an admin's invitee becomes a member.
        if self.config.members_only
            && aff >= Affiliation::Admin
            && self.affiliation(&to.to_bare()) == Affiliation::None
        {
            self.set_affiliation(to.to_bare().as_str(), Affiliation::Member, "");
            fx.save = true;
        }
        let reason = inv.get_child("reason", NS_MUC_USER).map(|r| r.text());
        let mut m = el("message", ns::CLIENT);
        if let Some(id) = st.id() {
            set_attr(&mut m, "id", id);
        }
        let mut x = el("x", NS_MUC_USER);
        let mut i = el("invite", NS_MUC_USER);
        set_attr(&mut i, "from", from.to_bare().as_str());
        if let Some(r) = &reason {
            i.append_child(text_el("reason", NS_MUC_USER, r));
        }
        x.append_child(i);
        if self.config.password_protected {
            x.append_child(text_el("password", NS_MUC_USER, &self.config.password));
        }
        m.append_child(x);
        // XEP-0249 form as well, for clients that only read that one.
        let mut c = el("x", "jabber:x:conference");
        set_attr(&mut c, "jid", self.jid.as_str());
        if let Some(r) = &reason {
            set_attr(&mut c, "reason", r.as_str());
        }
        m.append_child(c);
        fx.out.push(Stanza::new(
            StanzaKind::Message,
            self.jid.clone().into(),
            Some(to),
            m,
        ));
    }

    fn decline(&mut self, st: &Stanza, from: &FullJid, dec: &Element, fx: &mut Effects) {
        let Some(to) = dec.attr("to").and_then(|t| Jid::new(t).ok()) else {
            fx.out.extend(error(st, Condition::JidMalformed));
            return;
        };
        let mut m = el("message", ns::CLIENT);
        let mut x = el("x", NS_MUC_USER);
        let mut d = el("decline", NS_MUC_USER);
        set_attr(&mut d, "from", from.to_bare().as_str());
        if let Some(r) = dec.get_child("reason", NS_MUC_USER) {
            d.append_child(text_el("reason", NS_MUC_USER, &r.text()));
        }
        x.append_child(d);
        m.append_child(x);
        fx.out.push(Stanza::new(
            StanzaKind::Message,
            self.jid.clone().into(),
            Some(to),
            m,
        ));
    }

    fn voice_request(&mut self, st: &Stanza, from: &FullJid, form: &DataForm, fx: &mut Effects) {
        let Some(occ) = self.occupant_of(from).cloned() else {
            fx.out.extend(error(st, Condition::NotAcceptable));
            return;
        };
        // A moderator's answer (§8.6): approve by submitting muc#request_allow.
        if occ.role == Role::Moderator {
            if form.kind == FormType::Submit
                && form.boolean("muc#request_allow").ok().flatten() == Some(true)
                && let Some(nick) = form.value("muc#roomnick")
            {
                let nick = nick.to_string();
                let actor = occ.nick.clone();
                self.set_role(st, &nick, Role::Participant, &actor, None, fx);
            }
            return;
        }
        if !self.config.allow_voice_requests || !self.config.moderated {
            fx.out.extend(error_text(
                st,
                Condition::Forbidden,
                "Voice requests are not allowed in this room",
            ));
            return;
        }
        if occ.role != Role::Visitor {
            return;
        }
        let now = now_ms();
        let key = occ.bare.to_string();
        if let Some(last) = self.voice_requests.get(&key)
            && now - last < self.config.voice_request_min_interval as i64 * 1000
        {
            fx.out.extend(error_text(
                st,
                Condition::ResourceConstraint,
                "Please wait before asking again",
            ));
            return;
        }
        self.voice_requests.insert(key, now);
        let approve = DataForm::with_form_type(FormType::Form, super::NS_MUC_REQUEST)
            .title("Voice request")
            .field(Field::new(
                "muc#role",
                FieldType::ListSingle,
                vec!["participant".into()],
            ))
            .field(Field::new(
                "muc#jid",
                FieldType::JidSingle,
                vec![from.to_string()],
            ))
            .field(Field::text("muc#roomnick", &occ.nick))
            .field(Field::boolean("muc#request_allow", false).label("Grant voice to this person?"));
        let mut m = el("message", ns::CLIENT);
        m.append_child(approve.to_element());
        for mods in self
            .occupants
            .values()
            .filter(|o| o.role == Role::Moderator)
        {
            for s in &mods.sessions {
                fx.out.push(Stanza::new(
                    StanzaKind::Message,
                    self.jid.clone().into(),
                    Some(s.clone().into()),
                    m.clone(),
                ));
            }
        }
    }

    // ------------------------------------------------------------ admin

    fn set_role(
        &mut self,
        st: &Stanza,
        nick: &str,
        role: Role,
        actor: &str,
        reason: Option<&str>,
        fx: &mut Effects,
    ) {
        let Some(mut occ) = self.occupants.get(nick).cloned() else {
            return;
        };
        let _ = st;
        if role == Role::None {
            let p = Pres {
                unavailable: true,
                codes: vec![307],
                actor: Some(actor),
                reason,
                ..Pres::default()
            };
            self.remove_occupant(nick, &p, fx);
            return;
        }
        occ.role = role;
        self.occupants.insert(nick.to_string(), occ.clone());
        let p = Pres {
            reason,
            ..Pres::default()
        };
        self.broadcast_presence(&occ, &p, &[], fx);
    }

    /// `muc#admin` get: lists by affiliation or role.
    pub fn admin_get(&self, from: &FullJid, query: &Element) -> Result<Element, StanzaError> {
        let me = self.occupant_of(from);
        let my_aff = self.affiliation(&from.to_bare());
        let my_role = me.map_or(Role::None, |o| o.role);
        let item = query
            .get_child("item", NS_MUC_ADMIN)
            .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
        let mut out = el("query", NS_MUC_ADMIN);
        if let Some(a) = item.attr("affiliation") {
            let a = Affiliation::parse(a).ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
            let may = my_aff >= Affiliation::Admin
                || (a == Affiliation::Member && my_aff >= Affiliation::Member);
            if !may {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            for (j, (aff, reason)) in &self.affiliations {
                if *aff != a {
                    continue;
                }
                let mut i = el("item", NS_MUC_ADMIN);
                set_attr(&mut i, "affiliation", a.as_str());
                set_attr(&mut i, "jid", j.as_str());
                if let Some(n) = self.reserved.get(j) {
                    set_attr(&mut i, "nick", n.as_str());
                }
                if !reason.is_empty() {
                    i.append_child(text_el("reason", NS_MUC_ADMIN, reason));
                }
                out.append_child(i);
            }
            return Ok(out);
        }
        if let Some(r) = item.attr("role") {
            let r = Role::parse(r).ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
            if my_role != Role::Moderator {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            for o in self.occupants.values().filter(|o| o.role == r) {
                let mut i = el("item", NS_MUC_ADMIN);
                set_attr(&mut i, "role", r.as_str());
                set_attr(&mut i, "nick", o.nick.as_str());
                set_attr(&mut i, "affiliation", self.affiliation(&o.bare).as_str());
                if let Some(j) = o.sessions.first() {
                    set_attr(&mut i, "jid", j.as_str());
                }
                out.append_child(i);
            }
            return Ok(out);
        }
        Err(StanzaError::new(Condition::BadRequest))
    }

    /// `muc#admin` set: role and affiliation changes, all checked first,
    /// then applied together.
    pub fn admin_set(
        &mut self,
        st: &Stanza,
        from: &FullJid,
        query: &Element,
        fx: &mut Effects,
    ) -> Result<(), StanzaError> {
        let my_aff = self.affiliation(&from.to_bare());
        let me = self.occupant_of(from).cloned();
        let my_role = me.as_ref().map_or(Role::None, |o| o.role);
        let actor = me.as_ref().map(|o| o.nick.clone()).unwrap_or_default();
        enum Change {
            Role(String, Role, Option<String>),
            /// JID, affiliation, reason, nickname to register for it.
            Aff(String, Affiliation, Option<String>, Option<String>),
        }
        let mut changes = Vec::new();
        let bad = || StanzaError::new(Condition::BadRequest);
        let not_allowed = || StanzaError::new(Condition::NotAllowed);
        for item in query.children().filter(|c| c.is("item", NS_MUC_ADMIN)) {
            let reason = item.get_child("reason", NS_MUC_ADMIN).map(|r| r.text());
            if let Some(a) = item.attr("affiliation") {
                let a = Affiliation::parse(a).ok_or_else(bad)?;
                let target = match item.attr("jid") {
                    Some(j) => {
                        Jid::new(j).map_err(|_| StanzaError::new(Condition::JidMalformed))?
                    }
                    None => {
                        let nick = item.attr("nick").ok_or_else(bad)?;
                        let o = self
                            .occupants
                            .get(nick)
                            .ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
                        o.bare.clone().into()
                    }
                };
                let target = target.to_bare();
                let current = self.affiliation(&target);
                // §9 and §10: admins manage members and outcasts below them;
                // owners manage everyone.
                let may = match my_aff {
                    Affiliation::Owner => true,
                    Affiliation::Admin => current < Affiliation::Admin && a < Affiliation::Admin,
                    _ => false,
                };
                if !may {
                    return Err(if my_aff < Affiliation::Admin {
                        StanzaError::new(Condition::Forbidden)
                    } else {
                        not_allowed()
                    });
                }
                // §9.3: an admin may register a nickname with the membership.
                let nick = match item.attr("nick").filter(|_| item.attr("jid").is_some()) {
                    Some(n) => {
                        let n = self.valid_nick(n)?;
                        if a < Affiliation::Member {
                            return Err(bad().text("Only members and above have nicknames"));
                        }
                        if self.reserved_by(&n).is_some_and(|o| o != target.as_str()) {
                            return Err(StanzaError::new(Condition::Conflict)
                                .text("That nickname is registered by another user"));
                        }
                        Some(n)
                    }
                    None => None,
                };
                changes.push(Change::Aff(target.to_string(), a, reason, nick));
            } else if let Some(r) = item.attr("role") {
                let r = Role::parse(r).ok_or_else(bad)?;
                let nick = item.attr("nick").ok_or_else(bad)?;
                if my_role != Role::Moderator {
                    return Err(StanzaError::new(Condition::Forbidden));
                }
                let target = self
                    .occupants
                    .get(nick)
                    .ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
                let taff = self.affiliation(&target.bare);
                // §8.2, §8.4: nobody kicks or silences an admin or owner; only
                // admins and owners make or unmake moderators.
                if (r < Role::Participant && taff >= Affiliation::Admin)
                    || ((r == Role::Moderator || target.role == Role::Moderator)
                        && my_aff < Affiliation::Admin)
                    || (target.role == Role::Moderator && taff > my_aff)
                {
                    return Err(not_allowed());
                }
                changes.push(Change::Role(nick.to_string(), r, reason));
            } else {
                return Err(bad());
            }
        }
        // The last owner stays.
        let mut owners: Vec<String> = self
            .affiliations
            .iter()
            .filter(|(_, (a, _))| *a == Affiliation::Owner)
            .map(|(j, _)| j.clone())
            .collect();
        for c in &changes {
            if let Change::Aff(j, a, _, _) = c {
                if *a == Affiliation::Owner {
                    if !owners.contains(j) {
                        owners.push(j.clone());
                    }
                } else {
                    owners.retain(|o| o != j);
                }
            }
        }
        if owners.is_empty() {
            return Err(
                StanzaError::new(Condition::Conflict).text("A room keeps at least one owner")
            );
        }
        for c in changes {
            match c {
                Change::Role(nick, r, reason) => {
                    self.set_role(st, &nick, r, &actor, reason.as_deref(), fx)
                }
                Change::Aff(j, a, reason, nick) => {
                    self.change_affiliation(&j, a, &actor, reason.as_deref(), fx);
                    if let Some(n) = nick {
                        self.register_nick(&j, &n, fx);
                    }
                }
            }
        }
        Ok(())
    }

    fn change_affiliation(
        &mut self,
        jid: &str,
        a: Affiliation,
        actor: &str,
        reason: Option<&str>,
        fx: &mut Effects,
    ) {
        self.set_affiliation(jid, a, reason.unwrap_or(""));
        fx.save = true;
        let affected: Vec<String> = self
            .occupants
            .values()
            .filter(|o| o.bare.as_str() == jid || o.bare.domain().as_str() == jid)
            .map(|o| o.nick.clone())
            .collect();
        for nick in affected {
            let Some(mut occ) = self.occupants.get(&nick).cloned() else {
                continue;
            };
            let now = self.affiliation(&occ.bare);
            if now == Affiliation::Outcast {
                let p = Pres {
                    unavailable: true,
                    codes: vec![301],
                    actor: Some(actor),
                    reason,
                    ..Pres::default()
                };
                self.remove_occupant(&nick, &p, fx);
                continue;
            }
            if self.config.members_only && now < Affiliation::Member {
                let p = Pres {
                    unavailable: true,
                    codes: vec![321],
                    actor: Some(actor),
                    reason,
                    ..Pres::default()
                };
                self.remove_occupant(&nick, &p, fx);
                continue;
            }
            occ.role = self.default_role(now);
            self.occupants.insert(nick.clone(), occ.clone());
            let p = Pres {
                reason,
                actor: (!actor.is_empty()).then_some(actor),
                ..Pres::default()
            };
            self.broadcast_presence(&occ, &p, &[], fx);
        }
    }

    // ------------------------------------------------- registration (§7.10)

    /// A nickname as the room would see it in `room@service/nick`.
    fn valid_nick(&self, nick: &str) -> Result<String, StanzaError> {
        match self.jid.with_resource_str(nick.trim()) {
            Ok(f) => Ok(f.resource().as_str().to_string()),
            Err(_) => Err(StanzaError::new(Condition::NotAcceptable).text("Not a valid nickname")),
        }
    }

    /// Register `nick` for `bare` (an affiliated user); another user
    /// using it as an occupant is removed (307).
    fn register_nick(&mut self, bare: &str, nick: &str, fx: &mut Effects) {
        if let Some(o) = self.occupants.get(nick)
            && o.bare.as_str() != bare
        {
            let p = Pres {
                unavailable: true,
                codes: vec![307],
                reason: Some("This nickname is registered by another user"),
                ..Pres::default()
            };
            self.remove_occupant(nick, &p, fx);
        }
        self.reserved.insert(bare.to_string(), nick.to_string());
        fx.save = true;
    }

    /// `jabber:iq:register` on the room: the `muc#register` form (get), a
    /// registration (set with the form; the user becomes a member), or
    /// its removal (`<remove/>`).
    pub fn register(
        &mut self,
        from: &FullJid,
        get: bool,
        query: &Element,
        fx: &mut Effects,
    ) -> Result<Option<Element>, StanzaError> {
        let bare = from.to_bare();
        let aff = self.affiliation(&bare);
        if self.locked && aff != Affiliation::Owner {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        if aff == Affiliation::Outcast {
            return Err(
                StanzaError::new(Condition::Forbidden).text("You have been banned from this room")
            );
        }
        if self.config.members_only && aff < Affiliation::Member {
            return Err(StanzaError::new(Condition::NotAllowed)
                .text("Only members may register with this members-only room"));
        }
        let current = self.reserved_nick(&bare).map(str::to_string);
        if get {
            let mut q = el("query", NS_REGISTER);
            if let Some(n) = &current {
                q.append_child(el("registered", NS_REGISTER));
                q.append_child(text_el("username", NS_REGISTER, n));
            }
            q.append_child(text_el(
                "instructions",
                NS_REGISTER,
                "Choose the nickname to register with this room",
            ));
            let form = DataForm::with_form_type(FormType::Form, super::NS_MUC_REGISTER)
                .title("Register with the room")
                .field(
                    Field::new(
                        "muc#register_roomnick",
                        FieldType::TextSingle,
                        current.into_iter().collect(),
                    )
                    .label("Nickname")
                    .required(),
                );
            q.append_child(form.to_element());
            return Ok(Some(q));
        }
        let occupant_nick = self.occupant_of(from).map(|o| o.nick.clone());
        let actor = occupant_nick.unwrap_or_default();
        if query.get_child("remove", NS_REGISTER).is_some() {
            if current.is_none() && aff != Affiliation::Member {
                return Err(StanzaError::new(Condition::ItemNotFound)
                    .text("You are not registered with this room"));
            }
            self.reserved.remove(bare.as_str());
            fx.save = true;
            if aff == Affiliation::Member {
                self.change_affiliation(bare.as_str(), Affiliation::None, &actor, None, fx);
            }
            return Ok(None);
        }
        let form = match DataForm::find_in(query) {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                return Err(StanzaError::new(Condition::BadRequest).text(e.to_string()));
            }
            None => {
                return Err(
                    StanzaError::new(Condition::BadRequest).text("A muc#register form is required")
                );
            }
        };
        match form.kind {
            FormType::Cancel => return Ok(None),
            FormType::Submit => {}
            _ => return Err(StanzaError::new(Condition::BadRequest).text("Submit the form")),
        }
        if form
            .form_type()
            .is_some_and(|t| t != super::NS_MUC_REGISTER)
        {
            return Err(StanzaError::new(Condition::BadRequest).text("Not a muc#register form"));
        }
        let nick = match form.value("muc#register_roomnick").map(str::trim) {
            Some(n) if !n.is_empty() => self.valid_nick(n)?,
            _ => {
                return Err(
                    StanzaError::new(Condition::NotAcceptable).text("A nickname is required")
                );
            }
        };
        if self.reserved_by(&nick).is_some_and(|o| o != bare.as_str())
            || self.occupants.get(&nick).is_some_and(|o| o.bare != bare)
        {
            return Err(StanzaError::new(Condition::Conflict)
                .text("That nickname is used or registered by another user"));
        }
        if aff < Affiliation::Member {
            self.change_affiliation(bare.as_str(), Affiliation::Member, &actor, None, fx);
        }
        self.register_nick(bare.as_str(), &nick, fx);
        Ok(None)
    }

    /// §7.7: disco#info node `x-roomuser-item`: the requester's registered
    /// nickname as the identity's name (no identity without one).
    pub fn roomuser_item(&self, from: &FullJid) -> Element {
        let mut q = el("query", ns::DISCO_INFO);
        set_attr(&mut q, "node", "x-roomuser-item");
        if let Some(n) = self.reserved_nick(&from.to_bare()) {
            let mut id = el("identity", ns::DISCO_INFO);
            set_attr(&mut id, "category", "conference");
            set_attr(&mut id, "type", "text");
            set_attr(&mut id, "name", n);
            q.append_child(id);
        }
        q
    }

    // ------------------------------------------------- vCard (XEP-0486)

    /// The room's vCard, for anyone who may see the room.
    pub fn vcard_get(&self, from: &FullJid) -> Result<Element, StanzaError> {
        if self.locked && self.affiliation(&from.to_bare()) != Affiliation::Owner {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        if self.vcard.is_empty() {
            return Ok(el("vCard", NS_VCARD));
        }
        self.vcard
            .parse::<Element>()
            .map_err(|_| StanzaError::new(Condition::InternalServerError))
    }

    /// An owner sets the room's vCard; a changed avatar is announced with
    /// a `vcard-temp:x:update` presence from the room and status 104.
    pub fn vcard_set(
        &mut self,
        from: &FullJid,
        vcard: &Element,
        fx: &mut Effects,
    ) -> Result<(), StanzaError> {
        if self.affiliation(&from.to_bare()) != Affiliation::Owner {
            return Err(
                StanzaError::new(Condition::Forbidden).text("Only owners may set the room's vCard")
            );
        }
        let hash =
            photo_hash(vcard).map_err(|e| StanzaError::new(Condition::BadRequest).text(e))?;
        let xml = if vcard.children().next().is_none() {
            String::new()
        } else {
            palaver_proto::writer::to_string(vcard, "")
        };
        if xml.len() > MAX_VCARD {
            return Err(StanzaError::new(Condition::NotAcceptable).text("The vCard is too large"));
        }
        let changed = hash != self.avatar_hash;
        self.vcard = xml;
        self.avatar_hash = hash;
        fx.save = true;
        if changed {
            let p = self.avatar_presence();
            for occ in self.occupants.values() {
                for s in &occ.sessions {
                    fx.out.push(Stanza::new(
                        StanzaKind::Presence,
                        self.jid.clone().into(),
                        Some(s.clone().into()),
                        p.clone(),
                    ));
                }
            }
            self.status_message(&[104], fx);
        }
        Ok(())
    }

    /// A presence from the room carrying its avatar hash (empty `<photo/>`:
    /// no avatar).
    fn avatar_presence(&self) -> Element {
        let mut p = el("presence", ns::CLIENT);
        let mut x = el("x", NS_VCARD_UPDATE);
        let mut photo = el("photo", NS_VCARD_UPDATE);
        if !self.avatar_hash.is_empty() {
            photo.append_text_node(self.avatar_hash.as_str());
        }
        x.append_child(photo);
        p.append_child(x);
        p
    }

    // ------------------------------------------------------------ owner

    /// `muc#owner` get: the configuration form.
    pub fn owner_get(&self, from: &FullJid, max_users: u32) -> Result<Element, StanzaError> {
        if self.affiliation(&from.to_bare()) != Affiliation::Owner {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let list = |want: Affiliation| {
            self.affiliations
                .iter()
                .filter(|(_, (a, _))| *a == want)
                .map(|(j, _)| j.clone())
                .collect()
        };
        let mut q = el("query", NS_MUC_OWNER);
        q.append_child(
            self.config
                .to_form(
                    list(Affiliation::Owner),
                    list(Affiliation::Admin),
                    max_users,
                )
                .to_element(),
        );
        Ok(q)
    }

    /// `muc#owner` set: configure (or accept the instant room), cancel, or
    /// destroy. `Ok(true)` when the room was destroyed.
    pub fn owner_set(
        &mut self,
        from: &FullJid,
        query: &Element,
        limits: &Limits,
        fx: &mut Effects,
    ) -> Result<(), StanzaError> {
        if self.affiliation(&from.to_bare()) != Affiliation::Owner {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        if let Some(d) = query.get_child("destroy", NS_MUC_OWNER) {
            self.destroy(d, fx);
            return Ok(());
        }
        let Some(form) = DataForm::find_in(query) else {
            return Err(StanzaError::new(Condition::BadRequest));
        };
        let form = form.map_err(|e| StanzaError::new(Condition::BadRequest).text(e.to_string()))?;
        match form.kind {
            FormType::Cancel => {
                // §10.1.3: cancelling the initial configuration destroys the room.
                if self.locked {
                    self.destroy(&el("destroy", NS_MUC_OWNER), fx);
                }
                return Ok(());
            }
            FormType::Submit => {}
            _ => return Err(StanzaError::new(Condition::BadRequest)),
        }
        if let Some(t) = form.form_type()
            && t != NS_ROOMCONFIG
        {
            return Err(StanzaError::new(Condition::BadRequest).text("unknown FORM_TYPE"));
        }
        let before = self.config.clone();
        let applied = self.config.apply(&form, limits.caps).map_err(|field| {
            StanzaError::new(Condition::NotAcceptable).text(format!("bad value of {field}"))
        })?;
        if self.config.persistent && !before.persistent && !limits.may_persist(&from.to_bare()) {
            self.config = before;
            return Err(
                StanzaError::new(Condition::Forbidden).text("You may not make persistent rooms")
            );
        }
        for (list, aff) in [
            (applied.owners, Affiliation::Owner),
            (applied.admins, Affiliation::Admin),
        ] {
            let Some(list) = list else { continue };
            if aff == Affiliation::Owner && list.is_empty() {
                continue;
            }
            let current: Vec<String> = self
                .affiliations
                .iter()
                .filter(|(_, (a, _))| *a == aff)
                .map(|(j, _)| j.clone())
                .collect();
            for j in current.iter().filter(|j| !list.contains(j)) {
                self.set_affiliation(j, Affiliation::None, "");
            }
            for j in list.iter().filter(|j| !current.contains(j)) {
                self.set_affiliation(j, aff, "");
            }
        }
        let was_locked = self.locked;
        self.locked = false;
        fx.save = true;
        self.config_changed(&before, was_locked, fx);
        Ok(())
    }

    /// An administrator's change of the room's options (the command
    /// layer's `change_room_option`; checked by the caller): occupants are
    /// told as after an owner's reconfiguration.
    pub fn set_config(&mut self, config: RoomConfig, fx: &mut Effects) {
        let before = std::mem::replace(&mut self.config, config);
        fx.save = true;
        let locked = self.locked;
        self.config_changed(&before, locked, fx);
    }

    /// The configuration changed from `before`: status codes to the
    /// occupants (unless the room was `locked`, being set up), and roles
    /// (or presence in a members-only room) follow the new configuration.
    fn config_changed(&mut self, before: &RoomConfig, was_locked: bool, fx: &mut Effects) {
        // §10.2.1: what occupants are told.
        let mut codes = vec![104];
        if before.anonymous && !self.config.anonymous {
            codes.push(172);
        }
        if !before.anonymous && self.config.anonymous {
            codes.push(173);
        }
        if !before.logging && self.config.logging {
            codes.push(170);
        }
        if before.logging && !self.config.logging {
            codes.push(171);
        }
        if !was_locked {
            self.status_message(&codes, fx);
        }
        // Roles follow the new affiliations and room type.
        let nicks: Vec<String> = self.occupants.keys().cloned().collect();
        for nick in nicks {
            let Some(occ) = self.occupants.get(&nick).cloned() else {
                continue;
            };
            let a = self.affiliation(&occ.bare);
            if self.config.members_only && a < Affiliation::Member {
                let p = Pres {
                    unavailable: true,
                    codes: vec![322],
                    ..Pres::default()
                };
                self.remove_occupant(&nick, &p, fx);
                continue;
            }
            let want = match (occ.role, self.default_role(a)) {
                // Voice given or taken by a moderator stays, unless the
                // affiliation says otherwise.
                (Role::Visitor | Role::Participant, Role::Visitor | Role::Participant)
                    if before.moderated == self.config.moderated =>
                {
                    occ.role
                }
                (_, r) => r,
            };
            if want != occ.role {
                let mut o = occ;
                o.role = want;
                self.occupants.insert(nick, o.clone());
                self.broadcast_presence(&o, &Pres::default(), &[], fx);
            }
        }
    }

    /// §10.9: everyone leaves, told where to go.
    pub fn destroy(&mut self, d: &Element, fx: &mut Effects) {
        let mut destroy = el("destroy", NS_MUC_USER);
        if let Some(j) = d.attr("jid").and_then(|j| Jid::new(j).ok()) {
            set_attr(&mut destroy, "jid", j.as_str());
        }
        if let Some(r) = d.get_child("reason", NS_MUC_OWNER) {
            destroy.append_child(text_el("reason", NS_MUC_USER, &r.text()));
        }
        if let Some(p) = d.get_child("password", NS_MUC_OWNER) {
            destroy.append_child(text_el("password", NS_MUC_USER, &p.text()));
        }
        let occupants: Vec<Occupant> = std::mem::take(&mut self.occupants).into_values().collect();
        self.by_jid.clear();
        for occ in occupants {
            let p = Pres {
                unavailable: true,
                destroy: Some(destroy.clone()),
                ..Pres::default()
            };
            let own = self.presence_el(&occ, true, true, &p);
            for s in &occ.sessions {
                fx.out.push(Stanza::new(
                    StanzaKind::Presence,
                    self.nick_jid(&occ.nick),
                    Some(s.clone().into()),
                    own.clone(),
                ));
            }
            fx.joined.push((occ.bare.to_string(), -1));
        }
        fx.destroyed = true;
        fx.save = true;
    }

    /// The service is shutting down: everyone is told (status 332).
    pub fn shutdown(&mut self, fx: &mut Effects) {
        let occupants: Vec<Occupant> = std::mem::take(&mut self.occupants).into_values().collect();
        self.by_jid.clear();
        for occ in occupants {
            let p = Pres {
                unavailable: true,
                codes: vec![332],
                ..Pres::default()
            };
            let own = self.presence_el(&occ, true, true, &p);
            for s in &occ.sessions {
                fx.out.push(Stanza::new(
                    StanzaKind::Presence,
                    self.nick_jid(&occ.nick),
                    Some(s.clone().into()),
                    own.clone(),
                ));
            }
        }
    }

    /// Whether `from` may read the room's archive (XEP-0313 §5: those who
    /// could join it); `Err` is the error to answer.
    pub fn may_read_archive(&self, from: &FullJid) -> Result<(), StanzaError> {
        if !self.config.mam {
            return Err(
                StanzaError::new(Condition::ServiceUnavailable).text("This room is not archived")
            );
        }
        let aff = self.affiliation(&from.to_bare());
        let occupant = self.by_jid.contains_key(from);
        if aff == Affiliation::Outcast
            || (self.config.members_only && aff < Affiliation::Member)
            || (self.config.password_protected && !occupant && aff < Affiliation::Admin)
            || (self.locked && aff != Affiliation::Owner)
        {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        Ok(())
    }

    /// Remove a deleted account's affiliation; `true` when it had one.
    pub fn forget(&mut self, bare: &str) -> bool {
        self.reserved.remove(bare);
        self.affiliations.remove(bare).is_some()
    }

    // ------------------------------------------------------------ disco

    /// disco#info of the room (§6.4), with `muc#roominfo`.
    pub fn disco_info(&self) -> Element {
        let mut q = el("query", ns::DISCO_INFO);
        let mut id = el("identity", ns::DISCO_INFO);
        set_attr(&mut id, "category", "conference");
        set_attr(&mut id, "type", "text");
        let name = if self.config.title.is_empty() {
            self.jid.node().map(|n| n.to_string()).unwrap_or_default()
        } else {
            self.config.title.clone()
        };
        set_attr(&mut id, "name", name.as_str());
        q.append_child(id);
        let mut feats = vec![
            NS_MUC,
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            NS_OCCUPANT_ID,
            super::NS_SELF_PING_OPT,
            super::NS_STABLE_ID,
            super::NS_MUC_REQUEST,
            "jabber:x:conference",
            NS_REGISTER,
            NS_VCARD,
        ];
        feats.extend(self.config.features());
        if self.config.mam {
            feats.push(super::NS_MAM);
            feats.push(super::NS_SID);
        }
        for f in feats {
            let mut e = el("feature", ns::DISCO_INFO);
            set_attr(&mut e, "var", f);
            q.append_child(e);
        }
        let info = DataForm::with_form_type(FormType::Result, super::NS_ROOMINFO)
            .field(Field::text(
                "muc#roominfo_description",
                &self.config.description,
            ))
            .field(Field::text(
                "muc#roominfo_occupants",
                self.occupants.len().to_string(),
            ))
            .field(Field::text("muc#roominfo_subject", &self.subject))
            .field(Field::boolean(
                "muc#roominfo_subjectmod",
                self.config.allow_change_subj,
            ))
            .field(Field::text("muc#roominfo_lang", &self.config.lang))
            .field(Field::text("muc#roomconfig_roomname", &name))
            .field(Field::text(
                "muc#maxhistoryfetch",
                super::HISTORY_FETCH.to_string(),
            ));
        let info = if self.avatar_hash.is_empty() {
            info
        } else {
            info.field(Field::new(
                "muc#roominfo_avatarhash",
                FieldType::TextMulti,
                vec![self.avatar_hash.clone()],
            ))
        };
        q.append_child(info.to_element());
        q
    }

    /// disco#items of the room: the occupants, to occupants only when the
    /// room is semi-anonymous or hidden (§6.5).
    pub fn disco_items(&self, from: &FullJid) -> Element {
        let mut q = el("query", ns::DISCO_ITEMS);
        let occupant = self.by_jid.contains_key(from);
        if occupant || (self.config.public && self.config.public_list) {
            for nick in self.occupants.keys() {
                let mut i = el("item", ns::DISCO_ITEMS);
                set_attr(&mut i, "jid", self.nick_jid(nick).as_str());
                set_attr(&mut i, "name", nick.as_str());
                q.append_child(i);
            }
        }
        q
    }

    /// The line of the service's room list.
    pub fn listed_name(&self) -> Option<String> {
        if !self.config.public || self.locked {
            return None;
        }
        let name = if self.config.title.is_empty() {
            self.jid.node().map(|n| n.to_string()).unwrap_or_default()
        } else {
            self.config.title.clone()
        };
        Some(format!("{name} ({})", self.occupants.len()))
    }
}

const NS_REGISTER: &str = "jabber:iq:register";
const NS_VCARD: &str = "vcard-temp";
const NS_VCARD_UPDATE: &str = "vcard-temp:x:update";
/// Largest room vCard kept (serialized).
const MAX_VCARD: usize = 256 * 1024;

/// SHA-1 (hex) of a vCard's `PHOTO/BINVAL`, empty without a photo;
/// `Err` when the photo is not base64.
pub fn photo_hash(vcard: &Element) -> Result<String, String> {
    use base64::Engine;
    use sha1::Digest;
    let Some(bin) = vcard
        .get_child("PHOTO", NS_VCARD)
        .and_then(|p| p.get_child("BINVAL", NS_VCARD))
    else {
        return Ok(String::new());
    };
    let text: String = bin.text().chars().filter(|c| !c.is_whitespace()).collect();
    if text.is_empty() {
        return Ok(String::new());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| "The photo is not base64".to_string())?;
    Ok(hex::encode(sha1::Sha1::digest(&bytes)))
}

fn status_text_of(occ: &Occupant) -> Option<Element> {
    occ.presence
        .iter()
        .find(|c| c.is("status", ns::CLIENT))
        .cloned()
}

fn remove_children(el: &mut Element, name: &str, ns: &str) {
    while el.remove_child(name, ns).is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_hash_of_a_vcard() {
        let v: Element = "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVs\n bG8=</BINVAL></PHOTO></vCard>"
            .parse()
            .expect("xml");
        // SHA-1 of "hello".
        assert_eq!(
            photo_hash(&v).as_deref(),
            Ok("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")
        );
        let none: Element = "<vCard xmlns='vcard-temp'><FN>x</FN></vCard>"
            .parse()
            .expect("xml");
        assert_eq!(photo_hash(&none).as_deref(), Ok(""));
        let bad: Element = "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>@@@</BINVAL></PHOTO></vCard>"
            .parse()
            .expect("xml");
        assert!(photo_hash(&bad).is_err());
    }

    #[test]
    fn a_room_message_is_one_stanza_shared_by_every_occupant() {
        let jid = BareJid::new("r@conference.h").expect("jid");
        let mut room = Room::new(jid, RoomConfig::default(), false);
        for (nick, sessions) in [("ann", &["a@h/1", "a@h/2"][..]), ("bob", &["b@h/1"][..])] {
            let sessions: Vec<FullJid> = sessions
                .iter()
                .map(|s| FullJid::new(s).expect("jid"))
                .collect();
            for s in &sessions {
                room.by_jid.insert(s.clone(), nick.to_string());
            }
            let bare = sessions[0].to_bare();
            room.occupants.insert(
                nick.to_string(),
                Occupant {
                    nick: nick.to_string(),
                    bare,
                    sessions,
                    role: Role::Participant,
                    presence: Vec::new(),
                    id: format!("id-{nick}"),
                },
            );
        }
        let el: Element =
            "<message xmlns='jabber:client' type='groupchat' id='g1'><body>hi</body></message>"
                .parse()
                .expect("xml");
        let sender = FullJid::new("a@h/1").expect("jid");
        let st = Stanza::new(
            StanzaKind::Message,
            sender.clone().into(),
            Some(room.jid.clone().into()),
            el,
        );
        let mut fx = Effects::default();
        room.on_room_message(&st, &sender, 10, &mut fx);
        let tos: Vec<String> = fx
            .out
            .iter()
            .filter_map(|s| s.to.as_ref().map(|t| t.to_string()))
            .collect();
        assert_eq!(tos, ["a@h/1", "a@h/2", "b@h/1"]);
        let mut texts = Vec::new();
        for copy in &fx.out {
            assert!(copy.is_shared(), "each occupant's copy shares the element");
            assert_eq!(copy.from.as_str(), "r@conference.h/ann");
            let mut shared = String::new();
            copy.write_xml(&mut shared, ns::CLIENT);
            // The same text as an unshared stanza built alone.
            let alone = Stanza::new(
                copy.kind,
                copy.from.clone(),
                copy.to.clone(),
                copy.to_element(),
            );
            let mut text = String::new();
            alone.write_xml(&mut text, ns::CLIENT);
            assert_eq!(shared, text);
            texts.push(shared);
        }
        assert!(texts[2].contains(" to='b@h/1' "), "{}", texts[2]);
    }

    #[test]
    fn registered_nicknames_follow_affiliations() {
        let jid = BareJid::new("r@conference.h").expect("jid");
        let mut room = Room::new(jid, RoomConfig::default(), false);
        room.set_affiliation("a@h", Affiliation::Member, "");
        room.reserved.insert("a@h".into(), "Ann".into());
        let a = BareJid::new("a@h").expect("jid");
        let b = BareJid::new("b@h").expect("jid");
        assert!(room.nick_allowed(&a, "Ann").is_ok());
        assert_eq!(
            room.nick_allowed(&b, "Ann").map_err(|e| e.condition),
            Err(Condition::Conflict)
        );
        assert!(room.nick_allowed(&a, "Other").is_ok());
        room.config.enforce_reserved_nick = true;
        assert_eq!(
            room.nick_allowed(&a, "Other").map_err(|e| e.condition),
            Err(Condition::NotAcceptable)
        );
        assert!(room.nick_allowed(&b, "Bee").is_ok());
        // Stored and read back with the affiliation.
        let snap = room.snapshot();
        assert_eq!(
            snap.affiliations,
            [("a@h".into(), "member".into(), String::new(), "Ann".into())]
        );
        let back = Room::restore(room.jid.clone(), &snap);
        assert_eq!(back.reserved_nick(&a), Some("Ann"));
        // Losing the membership loses the nickname.
        room.set_affiliation("a@h", Affiliation::None, "");
        assert_eq!(room.reserved_nick(&a), None);
    }
}
