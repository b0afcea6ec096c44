//! The Palaver kernel: configuration, virtual hosts, the router and session
//! manager, the module API, TLS and the c2s listener.

pub mod account_data;
pub mod ack;
pub mod auth;
pub mod c2s;
pub mod config;
pub mod core;
pub mod hooks;
pub mod host;
pub mod limits;
pub mod module;
pub mod reload;
pub mod rooms;
pub mod router;
pub mod serial;
pub mod server;
pub mod sessions;
pub mod tls;

pub use crate::core::Core;
pub use config::{Config, ConfigError};
pub use hooks::{HookAction, HookCx};
pub use module::{
    HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleCx, ModuleDef, NoOptions,
};
pub use server::{RunningServer, Server};
