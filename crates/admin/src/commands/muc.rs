//! Chat rooms (ejabberd's `mod_muc_admin` commands): create_room,
//! destroy_room, muc_online_rooms, get_room_occupants, get_room_options,
//! change_room_option — on the live rooms of the MUC module, through the
//! [`RoomAdmin`] it registers on its host.

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use palaver_server::ModuleCx;
use palaver_server::rooms::{RoomAdmin, RoomAdminError};
use serde_json::{Value, json};
use std::sync::Arc;

impl From<RoomAdminError> for CommandError {
    fn from(e: RoomAdminError) -> Self {
        let code = match &e {
            RoomAdminError::NoRoom(_) => ErrorCode::NotFound,
            RoomAdminError::Exists(_) => ErrorCode::Conflict,
            RoomAdminError::Invalid(_) => ErrorCode::BadArgument,
            RoomAdminError::Unavailable(_) => ErrorCode::Storage,
        };
        CommandError::new(code, e.to_string())
    }
}

/// Every (host, room admin) of the running server, in config order.
fn admins(cx: &Ctx) -> Vec<(ModuleCx, Arc<dyn RoomAdmin>)> {
    cx.core
        .config()
        .hosts
        .iter()
        .filter_map(|h| {
            let m = cx.core.cx_of(h)?;
            let a = m.host().room_admin()?.clone();
            Some((m, a))
        })
        .collect()
}

fn all_services(cx: &Ctx) -> Vec<String> {
    admins(cx).iter().flat_map(|(_, a)| a.services()).collect()
}

/// The host context and room admin serving MUC service `service`.
fn serving(cx: &Ctx, service: &str) -> Result<(ModuleCx, Arc<dyn RoomAdmin>), CommandError> {
    let service = service.trim().to_lowercase();
    admins(cx)
        .into_iter()
        .find(|(_, a)| a.services().contains(&service))
        .ok_or_else(|| {
            let known = all_services(cx);
            CommandError::arg(format!(
                "`{service}` is not a MUC service of this server (services: {})",
                if known.is_empty() {
                    "none; mod_muc is not enabled".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
}

fn service_arg(a: &Args) -> Result<String, CommandError> {
    Ok(a.text("service")?.trim().to_lowercase())
}

pub(super) async fn create_room(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let service = service_arg(&a)?;
    let host = a.text("host")?;
    let (m, admin) = serving(&cx, &service)?;
    if m.host().name != host {
        return Err(CommandError::arg(format!(
            "`{service}` is not a MUC service of host {host} (it belongs to {})",
            m.host().name
        )));
    }
    admin
        .create(m, service, a.text("room")?.to_string())
        .await?;
    Ok(Value::from(0))
}

pub(super) async fn destroy_room(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let service = service_arg(&a)?;
    let (m, admin) = serving(&cx, &service)?;
    admin
        .destroy(m, service, a.text("room")?.to_string())
        .await?;
    Ok(Value::from(0))
}

pub(super) async fn muc_online_rooms(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let service = service_arg(&a)?;
    let admins = admins(&cx);
    let mut rooms = Vec::new();
    if service == "global" {
        for (_, admin) in &admins {
            for s in admin.services() {
                rooms.extend(admin.rooms(&s)?);
            }
        }
    } else if let Some((_, admin)) = admins.iter().find(|(m, _)| m.host().name == service) {
        // A virtual host: the rooms of its services (ejabberd's old `host`).
        for s in admin.services() {
            rooms.extend(admin.rooms(&s)?);
        }
    } else {
        let (_, admin) = serving(&cx, &service)?;
        rooms = admin.rooms(&service)?;
    }
    rooms.sort();
    Ok(Value::from(rooms))
}

pub(super) async fn get_room_occupants(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let service = service_arg(&a)?;
    let (_, admin) = serving(&cx, &service)?;
    let occupants = admin.occupants(&service, a.text("room")?)?;
    Ok(Value::Array(
        occupants
            .into_iter()
            .map(|o| json!({"jid": o.jid, "nick": o.nick, "role": o.role}))
            .collect(),
    ))
}

pub(super) async fn get_room_options(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let service = service_arg(&a)?;
    let (_, admin) = serving(&cx, &service)?;
    let options = admin.options(&service, a.text("room")?)?;
    Ok(Value::Array(
        options
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect(),
    ))
}

pub(super) async fn change_room_option(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let service = service_arg(&a)?;
    let (m, admin) = serving(&cx, &service)?;
    admin
        .set_option(
            m,
            service,
            a.text("room")?.to_string(),
            a.text("option")?.to_string(),
            a.text("value")?.to_string(),
        )
        .await?;
    Ok(Value::from(0))
}
