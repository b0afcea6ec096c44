//! The server itself: status, registered_vhosts, stats, reload_config.

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use serde_json::Value;

pub(super) async fn status(cx: Ctx, _a: Args) -> Result<Value, CommandError> {
    let core = &cx.core;
    let uptime = core
        .config()
        .hosts
        .first()
        .and_then(|h| core.cx_of(h))
        .map(|m| m.started().elapsed().as_secs())
        .unwrap_or(0);
    Ok(Value::String(format!(
        "palaver {} is running: {} session(s), up {}, serving {}",
        env!("CARGO_PKG_VERSION"),
        core.sessions().count(),
        duration(uptime),
        core.config().hosts.join(", ")
    )))
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub(super) async fn registered_vhosts(cx: Ctx, _a: Args) -> Result<Value, CommandError> {
    Ok(Value::from(cx.core.config().hosts.clone()))
}

pub(super) async fn stats(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let core = &cx.core;
    let uptime = || {
        core.config()
            .hosts
            .first()
            .and_then(|h| core.cx_of(h))
            .map(|m| m.started().elapsed().as_secs())
            .unwrap_or(0)
    };
    let Some(name) = a.opt_text("name") else {
        let mut registered = 0usize;
        let mut hosts = serde_json::Map::new();
        for h in &core.config().hosts {
            registered += core.storage().accounts.list_accounts(h).await?.len();
            let online = if cx.online {
                core.sessions().online(h).len()
            } else {
                0
            };
            hosts.insert(h.clone(), Value::from(online));
        }
        let online = if cx.online {
            core.sessions().count()
        } else {
            0
        };
        let up = if cx.online { uptime() } else { 0 };
        return Ok(serde_json::json!({
            "message": format!(
                "registeredusers {registered}\nonlineusers {online}\nonlineusersnode {online}\nuptimeseconds {up}"
            ),
            "warnings": [],
            "registeredusers": registered,
            "onlineusers": online,
            "onlineusersnode": online,
            "uptimeseconds": up,
            "sessions_by_host": hosts,
        }));
    };
    match name {
        "registeredusers" => {
            let mut n = 0usize;
            for h in &core.config().hosts {
                n += core.storage().accounts.list_accounts(h).await?.len();
            }
            Ok(Value::from(n))
        }
        "onlineusers" | "onlineusersnode" => Ok(Value::from(if cx.online {
            core.sessions().count()
        } else {
            0
        })),
        "uptimeseconds" => Ok(Value::from(if cx.online { uptime() } else { 0 })),
        other => Err(CommandError::arg(format!(
            "argument `name` of `stats`: `{other}` is not registeredusers, onlineusers, onlineusersnode or uptimeseconds"
        ))),
    }
}

pub(super) async fn reload_config(cx: Ctx, _a: Args) -> Result<Value, CommandError> {
    use palaver_server::reload::ReloadError;
    match cx.core.reload_config().await {
        Ok(r) => Ok(serde_json::json!({
            "message": r.message,
            "warnings": r.warnings,
            "hosts_added": r.hosts_added,
            "hosts_removed": r.hosts_removed,
            "sessions_closed": r.sessions_closed,
            "modules": r.modules.iter().map(|(h, c)| (h.clone(), serde_json::json!({
                "started": c.started,
                "restarted": c.restarted,
                "stopped": c.stopped,
            }))).collect::<serde_json::Map<String, Value>>(),
        })),
        Err(e) => {
            let code = match &e {
                ReloadError::NoFile => ErrorCode::Failed,
                ReloadError::Config(_) | ReloadError::Certificates(_) => ErrorCode::InvalidData,
                ReloadError::Storage(_) => ErrorCode::Storage,
            };
            Err(CommandError::new(code, e.to_string()))
        }
    }
}
