//! Accounts: register, unregister, change_password, check_account, registered_users.

use crate::command::{Args, CommandError, Ctx, ErrorCode};
use palaver_storage::StorageError;
use serde_json::Value;

fn account(a: &Args) -> Result<(String, String), CommandError> {
    Ok((a.text("host")?.to_string(), a.text("user")?.to_string()))
}

fn not_found(user: &str, host: &str) -> CommandError {
    CommandError::new(ErrorCode::NotFound, format!("{user}@{host} does not exist"))
}

pub(super) async fn register(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&a)?;
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
    match cx.core.remove_user(&host, &user).await {
        Ok(()) => Ok(Value::String(format!("deleted {user}@{host}"))),
        Err(StorageError::NotFound) => Err(not_found(&user, &host)),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn change_password(cx: Ctx, a: Args) -> Result<Value, CommandError> {
    let (host, user) = account(&a)?;
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
        palaver_server::auth::AuthOutcome::Temporary => Err(CommandError::new(
            ErrorCode::Storage,
            "the authentication backend failed; try again later",
        )),
    }
}
