//! The rooms of `mod_muc` for the command layer ([`RoomAdmin`]): create,
//! destroy, list, occupants, options (ejabberd's `mod_muc_admin`
//! semantics, on the live rooms of the services).

use super::config::{ALLOWPM, IGNORED_EJABBERD_KEYS, RoomConfig};
use super::room::Room;
use super::{NS_MUC_OWNER, Service, lock, store};
use futures_util::future::BoxFuture;
use jid::BareJid;
use minidom::Element;
use palaver_server::ModuleCx;
use palaver_server::rooms::{RoomAdmin, RoomAdminError, RoomOccupant};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The services of one host's `mod_muc`.
pub(super) struct MucAdmin {
    services: Vec<Arc<Service>>,
}

impl MucAdmin {
    pub(super) fn new(services: Vec<Arc<Service>>) -> Self {
        MucAdmin { services }
    }

    fn service(&self, domain: &str) -> Result<Arc<Service>, RoomAdminError> {
        self.services
            .iter()
            .find(|s| s.domain == domain)
            .cloned()
            .ok_or_else(|| RoomAdminError::Invalid(format!("`{domain}` is not a MUC service")))
    }
}

fn no_room(name: &str, svc: &Service) -> RoomAdminError {
    RoomAdminError::NoRoom(format!("room {name}@{} does not exist", svc.domain))
}

impl Service {
    fn ready_or_err(&self) -> Result<(), RoomAdminError> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(RoomAdminError::Unavailable(format!(
                "the MUC service {} is still loading its rooms; try again",
                self.domain
            )))
        }
    }

    /// The live room `name`.
    fn live(&self, name: &str) -> Result<Arc<Mutex<Room>>, RoomAdminError> {
        self.ready_or_err()?;
        let node = normalise(name, &self.domain)?;
        self.room(&node)
            .filter(|r| !lock(r).dead)
            .ok_or_else(|| no_room(&node, self))
    }

    /// Write (or delete) the stored room now, as [`Service::sync`] does in
    /// the background, and report a failure.
    async fn persist_now(&self, cx: &ModuleCx, name: &str) -> Result<(), RoomAdminError> {
        let store = store::MucSql::of(cx);
        let _g = self.save_lock.lock().await;
        let snap = self.room(name).and_then(|r| {
            let r = lock(&r);
            (!r.dead && r.config.persistent).then(|| r.snapshot())
        });
        let res = match snap {
            Some(s) => store.save(&self.domain, &s).await,
            None => store.delete(&self.domain, name).await,
        };
        res.map_err(|e| {
            tracing::warn!(error = %e, room = %name, "storing room failed");
            RoomAdminError::Unavailable(format!("storing the room failed: {e}"))
        })
    }
}

/// The room name as a JID localpart (nodeprepped).
fn normalise(name: &str, domain: &str) -> Result<String, RoomAdminError> {
    if name.is_empty() || name.contains('@') || name.contains('/') {
        return Err(RoomAdminError::Invalid(format!(
            "`{name}` is not a room name (a JID localpart)"
        )));
    }
    BareJid::new(&format!("{name}@{domain}"))
        .ok()
        .and_then(|j| j.node().map(|n| n.to_string()))
        .ok_or_else(|| {
            RoomAdminError::Invalid(format!("`{name}` is not a room name (a JID localpart)"))
        })
}

/// A room option's value as text (ejabberd's `get_room_options`).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `config` with `option` set from its text, checked against the
/// service's limits.
fn changed(
    svc: &Service,
    config: &RoomConfig,
    option: &str,
    value: &str,
) -> Result<RoomConfig, RoomAdminError> {
    let Ok(Value::Object(mut map)) = serde_json::to_value(config) else {
        return Err(RoomAdminError::Unavailable(
            "room options unreadable".into(),
        ));
    };
    let bad = |why: &str| {
        RoomAdminError::Invalid(format!(
            "invalid value `{value}` of room option `{option}`: {why}"
        ))
    };
    let new = match map.get(option) {
        None if IGNORED_EJABBERD_KEYS.contains(&option) => {
            return Err(RoomAdminError::Invalid(format!(
                "room option `{option}` is an ejabberd option Palaver does not support"
            )));
        }
        None => {
            let names: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(RoomAdminError::Invalid(format!(
                "unknown room option `{option}` (options: {})",
                names.join(", ")
            )));
        }
        Some(Value::Bool(_)) => match value {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("expected true or false")),
        },
        Some(Value::Number(_)) => Value::from(
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| bad("expected a whole number"))?,
        ),
        Some(_) => Value::String(value.to_string()),
    };
    map.insert(option.to_string(), new);
    let c: RoomConfig =
        serde_json::from_value(Value::Object(map)).map_err(|e| bad(&e.to_string()))?;
    let o = &svc.opts;
    if !ALLOWPM.contains(&c.allowpm.as_str()) {
        return Err(bad("allowpm is anyone, participants, moderators or none"));
    }
    if c.max_users == 0 || c.max_users > o.max_users {
        return Err(bad(&format!(
            "max_users is between 1 and the service's max_users ({})",
            o.max_users
        )));
    }
    if c.title.chars().count() > o.max_room_name {
        return Err(bad("longer than the service's max_room_name"));
    }
    if c.description.chars().count() > o.max_room_desc {
        return Err(bad("longer than the service's max_room_desc"));
    }
    if c.password.chars().count() > o.max_password {
        return Err(bad("longer than the service's max_password"));
    }
    if c.password_protected && c.password.is_empty() {
        return Err(bad(
            "a password-protected room needs a password (set `password` first)",
        ));
    }
    Ok(c)
}

impl RoomAdmin for MucAdmin {
    fn services(&self) -> Vec<String> {
        self.services.iter().map(|s| s.domain.clone()).collect()
    }

    fn rooms(&self, service: &str) -> Result<Vec<String>, RoomAdminError> {
        let svc = self.service(service)?;
        svc.ready_or_err()?;
        let mut v: Vec<String> = svc
            .rooms
            .iter()
            .filter(|r| !lock(r.value()).dead)
            .map(|r| format!("{}@{}", r.key(), svc.domain))
            .collect();
        v.sort();
        Ok(v)
    }

    fn create(
        &self,
        cx: ModuleCx,
        service: String,
        name: String,
    ) -> BoxFuture<'static, Result<String, RoomAdminError>> {
        let svc = self.service(&service);
        Box::pin(async move {
            let svc = svc?;
            svc.ready_or_err()?;
            let node = normalise(&name, &svc.domain)?;
            if node.chars().count() > svc.opts.max_room_id {
                return Err(RoomAdminError::Invalid(format!(
                    "the room name `{node}` is longer than the service's max_room_id"
                )));
            }
            let jid = BareJid::new(&format!("{node}@{}", svc.domain))
                .map_err(|e| RoomAdminError::Invalid(e.to_string()))?;
            let mut created = false;
            let arc = svc
                .rooms
                .entry(node.clone())
                .or_insert_with(|| {
                    created = true;
                    let mut room = Room::new(jid.clone(), svc.defaults.clone(), false);
                    room.held = true;
                    Arc::new(Mutex::new(room))
                })
                .clone();
            if !created {
                return Err(RoomAdminError::Exists(format!("room {jid} already exists")));
            }
            if svc.defaults.persistent
                && let Err(e) = svc.persist_now(&cx, &node).await
            {
                lock(&arc).dead = true;
                svc.rooms.remove_if(&node, |_, v| Arc::ptr_eq(v, &arc));
                return Err(e);
            }
            tracing::info!(room = %jid, "room created by an administrator");
            Ok(jid.to_string())
        })
    }

    fn destroy(
        &self,
        cx: ModuleCx,
        service: String,
        name: String,
    ) -> BoxFuture<'static, Result<(), RoomAdminError>> {
        let svc = self.service(&service);
        Box::pin(async move {
            let svc = svc?;
            let arc = svc.live(&name)?;
            let node = normalise(&name, &svc.domain)?;
            let persistent = lock(&arc).config.persistent;
            let mut d = Element::bare("destroy", NS_MUC_OWNER);
            d.append_child(
                Element::builder("reason", NS_MUC_OWNER)
                    .append("The room was destroyed by an administrator")
                    .build(),
            );
            if svc
                .with_room(&cx, &node, arc, |room, _, fx| room.destroy(&d, fx), false)
                .is_none()
            {
                return Err(no_room(&node, &svc));
            }
            if persistent {
                svc.persist_now(&cx, &node).await?;
            }
            tracing::info!(room = %node, service = %svc.domain, "room destroyed by an administrator");
            Ok(())
        })
    }

    fn occupants(&self, service: &str, name: &str) -> Result<Vec<RoomOccupant>, RoomAdminError> {
        let svc = self.service(service)?;
        let arc = svc.live(name)?;
        let room = lock(&arc);
        let mut out = Vec::new();
        for occ in room.occupants.values() {
            for s in &occ.sessions {
                out.push(RoomOccupant {
                    jid: s.to_string(),
                    nick: occ.nick.clone(),
                    role: occ.role.as_str().to_string(),
                });
            }
        }
        Ok(out)
    }

    fn options(&self, service: &str, name: &str) -> Result<Vec<(String, String)>, RoomAdminError> {
        let svc = self.service(service)?;
        let arc = svc.live(name)?;
        let config = lock(&arc).config.clone();
        match serde_json::to_value(&config) {
            Ok(Value::Object(map)) => Ok(map.iter().map(|(k, v)| (k.clone(), text(v))).collect()),
            _ => Err(RoomAdminError::Unavailable(
                "room options unreadable".into(),
            )),
        }
    }

    fn set_option(
        &self,
        cx: ModuleCx,
        service: String,
        name: String,
        option: String,
        value: String,
    ) -> BoxFuture<'static, Result<(), RoomAdminError>> {
        let svc = self.service(&service);
        Box::pin(async move {
            let svc = svc?;
            let arc = svc.live(&name)?;
            let node = normalise(&name, &svc.domain)?;
            let mut persistent = false;
            let done = svc.with_room(
                &cx,
                &node,
                arc,
                |room, _, fx| {
                    let new = changed(&svc, &room.config, &option, &value)?;
                    persistent = room.config.persistent || new.persistent;
                    room.set_config(new, fx);
                    Ok(())
                },
                true,
            );
            match done {
                None => return Err(no_room(&node, &svc)),
                Some(r) => r?,
            }
            if persistent {
                svc.persist_now(&cx, &node).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_localparts() {
        assert_eq!(normalise("Room", "c.x").unwrap(), "room");
        assert!(normalise("", "c.x").is_err());
        assert!(normalise("a@b", "c.x").is_err());
        assert!(normalise("a/b", "c.x").is_err());
        assert!(normalise("a b", "c.x").is_err());
    }
}
