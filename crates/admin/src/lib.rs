//! Palaver's command layer: one table of administration commands with typed
//! arguments, results and permissions ([`commands::COMMANDS`], types in
//! [`command`]), run by the command line now — against a running server
//! through its control socket ([`control`]), or on a tool core when none
//! runs — and by the REST API later. XEP-0227 import and export
//! ([`piefxis`]) are commands of the table; each module provides its own
//! part of an account's data through the kernel's
//! [`AccountData`](palaver_server::account_data::AccountData).
//!
//! Dependency order: `proto ← storage ← server ← modules ← admin ← http ← palaver`.

pub mod adhoc;
pub mod command;
pub mod commands;
pub mod control;
pub mod logfile;
pub mod piefxis;
pub mod tokens;

pub use command::{
    ArgSpec, ArgType, Args, Command, CommandError, Ctx, ErrorCode, Permission, Request, Response,
    ResultType, execute,
};
pub use commands::{COMMANDS, find};

use palaver_server::module::ModuleDef;
use palaver_server::{Config, Server};
use serde_json::Value;
use std::path::PathBuf;

/// Every module this build knows: the feature modules of
/// `palaver-modules` and those living here because they run the command
/// table ([`adhoc`]).
pub fn registry() -> Vec<ModuleDef> {
    let mut r = palaver_modules::registry();
    r.push(adhoc::MODULE);
    r
}

/// Where a command ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// In the running server, through its control socket.
    Server(PathBuf),
    /// In this process, on a tool core (no server was running).
    Local,
}

/// Why a command could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Talking to the running server failed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// Starting a tool core failed (storage, modules).
    #[error(transparent)]
    Start(#[from] palaver_server::server::StartError),
}

/// Run `req` in the server running with `config` (through its control
/// socket), or, when none runs, on a tool core of `config` with the
/// modules of `registry`.
pub async fn dispatch(
    config: Config,
    registry: &[ModuleDef],
    req: &Request,
) -> Result<(Via, Result<Value, CommandError>), DispatchError> {
    let path = control::socket_path(&config);
    if let Some(resp) = control::call(&path, req).await? {
        return Ok((Via::Server(path), resp.into()));
    }
    // Commands that need a server, and argument errors, are answered
    // without opening the database.
    if let Some(cmd) = find(&req.command)
        && cmd.online_only
    {
        let res = command::parse_args(cmd, &req.args, &config)
            .and_then(|_| Err(command::not_running(cmd, &config)));
        return Ok((Via::Local, res));
    }
    let core = Server::tool_core(config, registry).await?;
    Ok((Via::Local, execute(&core, false, req).await))
}
