//! REST API tokens: api_token_create, api_token_list, api_token_revoke.

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use crate::tokens::{self, TokenError};
use serde_json::{Value, json};

fn err(e: TokenError) -> CommandError {
    CommandError::new(ErrorCode::Io, e.to_string())
}

pub(super) async fn create(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let scopes = a.list("scope");
    if scopes.is_empty() {
        return Err(CommandError::arg(
            "argument `scope` of `api_token_create`: at least one scope",
        ));
    }
    for s in &scopes {
        let known = s == "admin" || super::COMMANDS.iter().any(|c| c.name == s || c.group == s);
        if !known {
            return Err(CommandError::arg(format!(
                "argument `scope` of `api_token_create`: `{s}` is not admin, a command group ({}) or a command",
                super::groups().join(", ")
            )));
        }
    }
    let desc = a.opt_text("description").unwrap_or_default().to_string();
    let (e, token) = tokens::create(&cx.core.config().data_dir, scopes, desc)
        .await
        .map_err(err)?;
    Ok(json!({
        "message": format!("created token {} (shown once; keep it secret)", e.id),
        "warnings": [],
        "id": e.id,
        "token": token,
        "scopes": e.scopes,
    }))
}

pub(super) async fn list(cx: Ctx, _a: Args) -> Result<Value, CommandError> {
    let all = tokens::load(&cx.core.config().data_dir)
        .await
        .map_err(err)?;
    Ok(Value::Array(
        all.into_iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "scopes": e.scopes,
                    "description": e.description,
                    "created": palaver_proto::datetime::format_utc(e.created, 0),
                })
            })
            .collect(),
    ))
}

pub(super) async fn revoke(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let id = a.text("id")?;
    if tokens::revoke(&cx.core.config().data_dir, id)
        .await
        .map_err(err)?
    {
        Ok(Value::from(format!("revoked token {id}")))
    } else {
        Err(CommandError::new(
            ErrorCode::NotFound,
            format!("no token with id {id}"),
        ))
    }
}
