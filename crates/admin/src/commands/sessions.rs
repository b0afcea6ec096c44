//! Sessions of a running server: connected_users, connected_users_number,
//! user_resources, kick_user, connected_users_info and user_sessions_info
//! (ejabberd's fields: connection `c2s`/`c2s_tls`/`websocket`/`http_bind`,
//! ip, port, priority, uptime in seconds, status, resource, statustext;
//! plus `since`, when the session was bound).

use crate::command::{Args, CommandError, Ctx};
use serde_json::Value;

fn bare(a: &Args) -> Result<palaver_proto::BareJid, CommandError> {
    let jid = format!("{}@{}", a.text("user")?, a.text("host")?);
    palaver_proto::BareJid::new(&jid)
        .map_err(|e| CommandError::arg(format!("`{jid}` is not a valid JID ({e})")))
}

pub(super) async fn connected_users(cx: Ctx, _a: Args) -> Result<Value, CommandError> {
    let mut all: Vec<String> = cx
        .core
        .config()
        .hosts
        .iter()
        .flat_map(|h| cx.core.sessions().online(h))
        .map(|j| j.to_string())
        .collect();
    all.sort();
    Ok(Value::from(all))
}

pub(super) async fn connected_users_number(cx: Ctx, _a: Args) -> Result<Value, CommandError> {
    Ok(Value::from(cx.core.sessions().count()))
}

pub(super) async fn user_resources(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let bare = bare(&a)?;
    let mut res: Vec<String> = cx
        .core
        .sessions()
        .sessions(&bare)
        .into_iter()
        .map(|h| h.resource)
        .collect();
    res.sort();
    Ok(Value::from(res))
}

pub(super) async fn kick_user(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let bare = bare(&a)?;
    let n = cx.core.sessions().kick(&bare, "kicked by an administrator");
    Ok(Value::from(n))
}

pub(super) async fn announce(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    use palaver_proto::stanza::{Stanza, StanzaKind, set_attr};
    let host = a.text("host")?;
    let body = a.text("body")?;
    let from = palaver_proto::Jid::new(host)
        .map_err(|e| CommandError::arg(format!("`{host}` is not a domain ({e})")))?;
    let mut n = 0u64;
    for full in cx.core.sessions().online(host) {
        let mut el = minidom::Element::bare("message", palaver_proto::ns::CLIENT);
        set_attr(&mut el, "type", "headline");
        set_attr(
            &mut el,
            "id",
            format!("announce-{:x}", rand::random::<u64>()),
        );
        if let Some(subject) = a.opt_text("subject").filter(|s| !s.is_empty()) {
            el.append_child(
                minidom::Element::builder("subject", palaver_proto::ns::CLIENT)
                    .append(subject)
                    .build(),
            );
        }
        el.append_child(
            minidom::Element::builder("body", palaver_proto::ns::CLIENT)
                .append(body)
                .build(),
        );
        cx.core.route(Stanza::new(
            StanzaKind::Message,
            from.clone(),
            Some(full.into()),
            el,
        ));
        n += 1;
    }
    Ok(Value::from(n))
}

fn info(h: &palaver_server::sessions::SessionHandle) -> serde_json::Map<String, Value> {
    let mut o = serde_json::Map::new();
    let (status, text) = match &h.presence {
        None => ("unavailable".to_string(), String::new()),
        Some(p) => (
            p.get_child("show", palaver_proto::ns::CLIENT)
                .map(|s| s.text())
                .unwrap_or_else(|| "available".into()),
            p.get_child("status", palaver_proto::ns::CLIENT)
                .map(|s| s.text())
                .unwrap_or_default(),
        ),
    };
    let c = &h.conn;
    let uptime = std::time::SystemTime::now()
        .duration_since(c.since)
        .map_or(0, |d| d.as_secs());
    let since = c
        .since
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ip = match c.peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.to_string(), |v4| v4.to_string()),
        v4 => v4.to_string(),
    };
    o.insert("connection".into(), Value::from(c.ejabberd_name()));
    o.insert("ip".into(), Value::from(ip));
    o.insert("port".into(), Value::from(c.peer.port()));
    // ejabberd's -1 for a session without available presence.
    o.insert(
        "priority".into(),
        Value::from(h.priority.map_or(-1, i64::from)),
    );
    o.insert("uptime".into(), Value::from(uptime));
    o.insert(
        "since".into(),
        Value::from(palaver_proto::datetime::format_datetime(since)),
    );
    o.insert("status".into(), Value::from(status));
    o.insert("resource".into(), Value::from(h.resource.clone()));
    o.insert("statustext".into(), Value::from(text));
    o
}

pub(super) async fn connected_users_info(cx: Ctx, _a: Args) -> Result<Value, CommandError> {
    let mut out = Vec::new();
    for host in &cx.core.config().hosts {
        let mut jids = cx.core.sessions().online(host);
        jids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for full in jids {
            if let Some(h) = cx.core.sessions().get(&full) {
                let mut o = info(&h);
                o.insert("jid".into(), Value::from(full.to_string()));
                out.push(Value::Object(o));
            }
        }
    }
    Ok(Value::Array(out))
}

pub(super) async fn user_sessions_info(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let bare = bare(&a)?;
    let mut s = cx.core.sessions().sessions(&bare);
    s.sort_by(|a, b| a.resource.cmp(&b.resource));
    Ok(Value::Array(
        s.iter().map(|h| Value::Object(info(h))).collect(),
    ))
}

pub(super) async fn kick_session(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let bare = bare(&a)?;
    let resource = a.text("resource")?;
    let full = bare
        .with_resource_str(resource)
        .map_err(|e| CommandError::arg(format!("`{resource}` is not a valid resource ({e})")))?;
    if cx.core.sessions().kick_session(&full, a.text("reason")?) {
        Ok(Value::from(0))
    } else {
        Err(CommandError::new(
            crate::command::ErrorCode::NotFound,
            format!("{full} has no session"),
        ))
    }
}
