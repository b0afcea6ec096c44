//! An account's data kept by modules: get_vcard, set_vcard, get_last,
//! get_offline_count.

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use minidom::Element;
use palaver_proto::BareJid;
use serde_json::{Value, json};

const NS_VCARD: &str = "vcard-temp";

async fn account(cx: &Ctx, a: &Args) -> Result<(String, String), CommandError> {
    let (host, user) = (a.text("host")?.to_string(), a.text("user")?.to_string());
    if !cx
        .core
        .storage()
        .accounts
        .account_exists(&host, &user)
        .await?
    {
        return Err(CommandError::new(
            ErrorCode::NotFound,
            format!("{user}@{host} does not exist"),
        ));
    }
    Ok((host, user))
}

fn field_name(a: &Args) -> Result<String, CommandError> {
    let name = a.text("name")?.trim().to_ascii_uppercase();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(CommandError::arg(format!(
            "argument `name`: `{name}` is not a vCard field name"
        )));
    }
    Ok(name)
}

async fn stored(cx: &Ctx, host: &str, user: &str) -> Result<Element, CommandError> {
    match cx.core.storage().xml.get_xml(host, user, "vcard").await? {
        Some(x) => x.parse::<Element>().map_err(|e| {
            CommandError::new(
                ErrorCode::InvalidData,
                format!("stored vCard unreadable: {e}"),
            )
        }),
        None => Ok(Element::bare("vCard", NS_VCARD)),
    }
}

pub(super) async fn get_vcard(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&cx, &a).await?;
    let name = field_name(&a)?;
    let v = stored(&cx, &host, &user).await?;
    match v.get_child(&name, NS_VCARD) {
        Some(f) => Ok(Value::from(f.text())),
        None => Err(CommandError::new(
            ErrorCode::NotFound,
            format!("the vCard of {user}@{host} has no {name}"),
        )),
    }
}

pub(super) async fn set_vcard(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&cx, &a).await?;
    let name = field_name(&a)?;
    let v = stored(&cx, &host, &user).await?;
    let mut out = Element::bare("vCard", NS_VCARD);
    for c in v.children() {
        if !c.is(name.as_str(), NS_VCARD) {
            out.append_child(c.clone());
        }
    }
    out.append_child(
        Element::builder(name.as_str(), NS_VCARD)
            .append(a.text("content")?)
            .build(),
    );
    let xml = palaver_proto::writer::to_string(&out, "");
    cx.core
        .storage()
        .xml
        .set_xml(&host, &user, "vcard", &xml)
        .await?;
    Ok(Value::from(0))
}

pub(super) async fn get_last(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&cx, &a).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if cx.online
        && let Ok(bare) = BareJid::new(&format!("{user}@{host}"))
        && cx.core.sessions().has_sessions(&bare)
    {
        return Ok(json!({
            "timestamp": palaver_proto::datetime::format_utc(now, 0),
            "status": "ONLINE",
        }));
    }
    let store = palaver_modules::last::store::LastSql::new(cx.core.storage().db.clone());
    Ok(match store.last(&host, &user).await? {
        Some((secs, status)) => json!({
            "timestamp": palaver_proto::datetime::format_utc(secs.max(0) as u64, 0),
            "status": status,
        }),
        None => json!({
            "timestamp": palaver_proto::datetime::format_utc(now, 0),
            "status": "NOT FOUND",
        }),
    })
}

pub(super) async fn get_offline_count(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&cx, &a).await?;
    let n = cx
        .core
        .storage()
        .offline
        .offline_count(&host, &user)
        .await?;
    Ok(Value::from(n))
}
