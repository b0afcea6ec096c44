//! Stanzas from the operator: send_message, send_stanza.

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use minidom::Element;
use palaver_proto::stanza::{Stanza, StanzaKind};
use palaver_proto::{Jid, ns};
use serde_json::Value;

fn jid(a: &Args, name: &str) -> Result<Jid, CommandError> {
    let s = a.text(name)?;
    Jid::new(s).map_err(|e| CommandError::arg(format!("`{s}` is not a valid JID ({e})")))
}

/// Route `st` in the context of a local host (the sender's, else the
/// recipient's, else the first).
fn route(cx: &Ctx, st: Stanza) -> Result<Value, CommandError> {
    let core = &cx.core;
    let host = [st.from.domain().as_str()]
        .into_iter()
        .chain(st.to.as_ref().map(|t| t.domain().as_str()))
        .find(|d| core.is_local(d))
        .map(str::to_string)
        .or_else(|| core.config().hosts.first().cloned());
    let Some(m) = host.and_then(|h| core.cx_of(&h)) else {
        return Err(CommandError::new(
            ErrorCode::Internal,
            "no host to route from",
        ));
    };
    m.route(st);
    Ok(Value::from(0))
}

pub(super) async fn send_message(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let ty = a.text("type")?;
    if !matches!(ty, "normal" | "chat" | "headline") {
        return Err(CommandError::arg(format!(
            "argument `type` of `send_message`: `{ty}` is not normal, chat or headline"
        )));
    }
    let (from, to) = (jid(&a, "from")?, jid(&a, "to")?);
    let mut b = Element::builder("message", ns::CLIENT)
        .attr(palaver_proto::stanza::attr_name("type"), ty)
        .attr(
            palaver_proto::stanza::attr_name("id"),
            format!("adm-{:016x}", rand::random::<u64>()),
        );
    let subject = a.text("subject")?;
    if !subject.is_empty() {
        b = b.append(
            Element::builder("subject", ns::CLIENT)
                .append(subject)
                .build(),
        );
    }
    b = b.append(
        Element::builder("body", ns::CLIENT)
            .append(a.text("body")?)
            .build(),
    );
    route(
        &cx,
        Stanza::new(StanzaKind::Message, from, Some(to), b.build()),
    )
}

pub(super) async fn send_stanza(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (from, to) = (jid(&a, "from")?, jid(&a, "to")?);
    let xml = a.text("stanza")?;
    let el = parse(xml).map_err(|e| {
        CommandError::arg(format!("argument `stanza` of `send_stanza`: not XML ({e})"))
    })?;
    let kind = StanzaKind::of(el.name()).ok_or_else(|| {
        CommandError::arg(format!(
            "argument `stanza` of `send_stanza`: <{}/> is not a message, presence or iq",
            el.name()
        ))
    })?;
    if el.ns() != ns::CLIENT {
        return Err(CommandError::arg(
            "argument `stanza` of `send_stanza`: the stanza must be in jabber:client (or no namespace)",
        ));
    }
    route(&cx, Stanza::new(kind, from, Some(to), el))
}

/// Parse a stanza written without a namespace as jabber:client.
fn parse(xml: &str) -> Result<Element, minidom::Error> {
    let xml = xml.trim();
    match xml.parse::<Element>() {
        Ok(el) => Ok(el),
        Err(e) => {
            let Some(rest) = xml.strip_prefix('<') else {
                return Err(e);
            };
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                .unwrap_or(rest.len());
            if rest.contains("xmlns=") && rest[end..].trim_start().starts_with("xmlns") {
                return Err(e);
            }
            format!("<{} xmlns='{}'{}", &rest[..end], ns::CLIENT, &rest[end..]).parse::<Element>()
        }
    }
}
