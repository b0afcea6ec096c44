//! Accounts: register, unregister, change_password, check_account, registered_users.

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use palaver_server::auth::Provision;
use palaver_storage::StorageError;
use serde_json::Value;

fn account(a: &Args) -> Result<(String, String), CommandError> {
    Ok((a.text("host")?.to_string(), a.text("user")?.to_string()))
}

fn not_found(user: &str, host: &str) -> CommandError {
    CommandError::new(ErrorCode::NotFound, format!("{user}@{host} does not exist"))
}

/// Accounts of `host` live in an external backend (http, external, jwt).
fn external(cx: &Ctx, host: &str) -> bool {
    cx.core
        .cx_of(host)
        .is_some_and(|m| !m.auth().internal(host))
}

fn temporary() -> CommandError {
    CommandError::new(
        ErrorCode::Storage,
        "the authentication backend failed; try again later",
    )
}

pub(super) async fn register(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&a)?;
    if let Some(m) = cx.core.cx_of(&host)
        && let Some(r) = m
            .auth()
            .register_external(&host, &user, a.text("password")?)
            .await
    {
        return match r {
            Provision::Done => Ok(Value::String(format!("created {user}@{host}"))),
            Provision::Exists => Err(CommandError::new(
                ErrorCode::Conflict,
                format!("{user}@{host} already exists"),
            )),
            Provision::Refused | Provision::NotFound => Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("the auth backend of {host} (auth_method) refused to create {user}"),
            )),
            Provision::Temporary => Err(temporary()),
        };
    }
    let creds =
        palaver_server::auth::derive_all(a.text("password")?, cx.core.config().scram_iterations);
    match cx
        .core
        .storage()
        .accounts
        .create_account(&host, &user, &creds)
        .await
    {
        Ok(()) => Ok(Value::String(format!("created {user}@{host}"))),
        Err(StorageError::Conflict) => Err(CommandError::new(
            ErrorCode::Conflict,
            format!("{user}@{host} already exists"),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn unregister(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&a)?;
    if let Some(m) = cx.core.cx_of(&host)
        && let Some(r) = m.auth().remove_external(&host, &user).await
    {
        match r {
            Provision::Done => {}
            Provision::NotFound => return Err(not_found(&user, &host)),
            Provision::Refused | Provision::Exists => {
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    format!("the auth backend of {host} (auth_method) refused to remove {user}"),
                ));
            }
            Provision::Temporary => return Err(temporary()),
        }
        // Gone from the backend: the local data goes too (an account
        // that never logged in has none).
        return match cx.core.remove_user(&host, &user).await {
            Ok(()) | Err(StorageError::NotFound) => {
                Ok(Value::String(format!("deleted {user}@{host}")))
            }
            Err(e) => Err(e.into()),
        };
    }
    match cx.core.remove_user(&host, &user).await {
        Ok(()) => Ok(Value::String(format!("deleted {user}@{host}"))),
        Err(StorageError::NotFound) => Err(not_found(&user, &host)),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn change_password(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&a)?;
    if let Some(m) = cx.core.cx_of(&host)
        && let Some(r) = m
            .auth()
            .set_external_password(&host, &user, a.text("newpass")?)
            .await
    {
        return match r {
            palaver_server::auth::AuthOutcome::Ok => {
                Ok(Value::String(format!("password changed for {user}@{host}")))
            }
            palaver_server::auth::AuthOutcome::Denied => Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("the auth backend of {host} refused to change the password of {user}"),
            )),
            palaver_server::auth::AuthOutcome::Temporary => Err(temporary()),
        };
    }
    let creds =
        palaver_server::auth::derive_all(a.text("newpass")?, cx.core.config().scram_iterations);
    match cx
        .core
        .storage()
        .accounts
        .set_credentials(&host, &user, &creds)
        .await
    {
        Ok(()) => {
            if let Some(m) = cx.core.cx_of(&host) {
                m.auth().forget(&host, &user);
            }
            Ok(Value::String(format!("password changed for {user}@{host}")))
        }
        Err(StorageError::NotFound) => Err(not_found(&user, &host)),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn check_account(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&a)?;
    if external(&cx, &host)
        && let Some(m) = cx.core.cx_of(&host)
    {
        return match m.auth().user_exists(&host, &user).await {
            Ok(true) => Ok(Value::String(format!("{user}@{host} exists"))),
            Ok(false) => Err(not_found(&user, &host)),
            Err(_) => Err(temporary()),
        };
    }
    if cx
        .core
        .storage()
        .accounts
        .account_exists(&host, &user)
        .await?
    {
        Ok(Value::String(format!("{user}@{host} exists")))
    } else {
        Err(not_found(&user, &host))
    }
}

pub(super) async fn registered_users(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let host = a.text("host")?;
    let mut users = cx.core.storage().accounts.list_accounts(host).await?;
    users.sort();
    Ok(Value::from(users))
}

pub(super) async fn check_password(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&a)?;
    let Some(m) = cx.core.cx_of(&host) else {
        return Err(CommandError::arg(format!("host `{host}` is not served")));
    };
    match m
        .auth()
        .check_password(&host, &user, a.text("password")?)
        .await
    {
        palaver_server::auth::AuthOutcome::Ok => Ok(Value::from(0)),
        palaver_server::auth::AuthOutcome::Denied => Err(CommandError::new(
            ErrorCode::Failed,
            format!("wrong password for {user}@{host}, or no such account"),
        )),
        palaver_server::auth::AuthOutcome::Temporary => Err(temporary()),
    }
}
