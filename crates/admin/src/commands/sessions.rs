//! Sessions of a running server: connected_users, connected_users_number,
//! user_resources, kick_user.

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
    o.insert("resource".into(), Value::from(h.resource.clone()));
    o.insert(
        "priority".into(),
        h.priority.map(Value::from).unwrap_or(Value::Null),
    );
    o.insert("status".into(), Value::from(status));
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
