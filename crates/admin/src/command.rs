//! The command table's types: a command's name, description, typed
//! arguments, result type, permission group and handler; the request and
//! response of the control channel; argument parsing and validation.
//!
//! Modelled on ejabberd's `ejabberd_commands` (and `mod_http_api`, which
//! exposes the same table over HTTP): command and argument names are
//! ejabberd's where it has the command, so a REST client can be pointed at
//! either.

use futures_util::future::BoxFuture;
use palaver_server::{Config, Core};
use palaver_storage::StorageError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Type of a command argument (validated and normalised before the handler runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgType {
    /// Any text.
    String,
    /// A whole number.
    Integer,
    /// `true` or `false` (on the command line also `yes`/`no`/`1`/`0`, or
    /// `--NAME` alone).
    Boolean,
    /// A JID localpart (nodeprepped: `Alice` becomes `alice`).
    User,
    /// A virtual host served by this configuration.
    Host,
    /// A JID.
    Jid,
    /// A non-empty password.
    Password,
    /// A file on the server's machine (made absolute by the command line).
    Path,
    /// A list of strings (JSON array; on the command line `a;b;c`).
    List,
}

impl ArgType {
    /// Short name, for help texts.
    pub fn name(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Integer => "integer",
            ArgType::Boolean => "boolean",
            ArgType::User => "user",
            ArgType::Host => "host",
            ArgType::Jid => "jid",
            ArgType::Password => "password",
            ArgType::Path => "path",
            ArgType::List => "list",
        }
    }
}

/// One argument of a command.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ArgSpec {
    /// Name (ejabberd's where it has the command).
    pub name: &'static str,
    /// Type.
    #[serde(rename = "type")]
    pub ty: ArgType,
    /// What it is.
    pub description: &'static str,
    /// Whether it must be given (an optional boolean defaults to `false`).
    pub required: bool,
    /// The name ejabberd used before renaming it (its `args_rename`), still
    /// accepted in its place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_name: Option<&'static str>,
}

impl ArgSpec {
    /// A required argument.
    pub const fn req(name: &'static str, ty: ArgType, description: &'static str) -> Self {
        ArgSpec {
            name,
            ty,
            description,
            required: true,
            old_name: None,
        }
    }

    /// An optional argument.
    pub const fn opt(name: &'static str, ty: ArgType, description: &'static str) -> Self {
        ArgSpec {
            name,
            ty,
            description,
            required: false,
            old_name: None,
        }
    }

    /// Also accept the argument under `old` (ejabberd's earlier name).
    pub const fn renamed_from(mut self, old: &'static str) -> Self {
        self.old_name = Some(old);
        self
    }
}

/// What a command returns (the JSON shape of `{"ok": …}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultType {
    /// A sentence for the operator (JSON string).
    Message,
    /// A number.
    Integer,
    /// A list of strings.
    Strings,
    /// An object with at least `message` (a sentence) and `warnings` (a
    /// list of notices), plus the command's own fields.
    Report,
    /// ejabberd's `rescode`: `0` when done (a [`ErrorCode::Failed`] error
    /// is `1` over REST).
    Rescode,
    /// An object of the command's own fields.
    Object,
    /// A list of objects.
    Objects,
}

/// Who may run a command (enforced by the REST API; the control socket
/// only admits the server's own user, an administrator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Administrators.
    Admin,
    /// Administrators, and a user for their own account (the `user` and
    /// `host` arguments name the caller).
    UserSelf,
}

/// Where a command runs.
#[derive(Clone)]
pub struct Ctx {
    /// The core: a running server's, or a tool core (no listeners, no sessions).
    pub core: Arc<Core>,
    /// Whether `core` is a running server's.
    pub online: bool,
}

/// A command's handler.
pub type Handler = fn(Ctx, Args) -> BoxFuture<'static, Result<Value, CommandError>>;

/// One command of the table.
#[derive(Clone, Copy)]
pub struct Command {
    /// Name (ejabberd's where it has the command).
    pub name: &'static str,
    /// One line about what it does.
    pub description: &'static str,
    /// Arguments, in command-line order.
    pub args: &'static [ArgSpec],
    /// What it returns.
    pub result: ResultType,
    /// Who may run it.
    pub permission: Permission,
    /// Only meaningful against a running server (sessions); refused on a tool core.
    pub online_only: bool,
    /// Permission group (ejabberd's command tag): `accounts`, `sessions`,
    /// `roster`, `vcard`, `stanza`, `server`, `stats`, `config`, `tokens`,
    /// `data`, `muc`. A token scope may name it.
    pub group: &'static str,
    /// Name of an integer result in ejabberd's REST shape (`{NAME: N}`).
    pub result_name: &'static str,
    /// The implementation.
    pub handler: Handler,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command").field("name", &self.name).finish()
    }
}

impl Command {
    /// `register USER HOST PASSWORD [--force]`.
    pub fn usage(&self) -> String {
        let mut s = self.name.to_string();
        for a in self.args {
            match (a.required, a.ty) {
                (true, _) => s.push_str(&format!(" {}", a.name.to_uppercase())),
                (false, ArgType::Boolean) => s.push_str(&format!(" [--{}]", a.name)),
                (false, _) => s.push_str(&format!(" [{}]", a.name.to_uppercase())),
            }
        }
        s
    }

    /// Usage, description and arguments.
    pub fn help(&self) -> String {
        let mut s = format!("{}\n\n{}\n", self.usage(), self.description);
        if !self.args.is_empty() {
            s.push_str("\nArguments:\n");
            for a in self.args {
                s.push_str(&format!(
                    "  {:<10} {:<9} {}{}{}\n",
                    a.name,
                    a.ty.name(),
                    a.description,
                    if a.required { "" } else { " (optional)" },
                    a.old_name
                        .map(|o| format!(" (also `{o}`)"))
                        .unwrap_or_default()
                ));
            }
        }
        let perm = match self.permission {
            Permission::Admin => "admin",
            Permission::UserSelf => "admin, or the user for their own account",
        };
        s.push_str(&format!("\nPermission: {perm}"));
        if self.online_only {
            s.push_str("; needs a running server");
        }
        s.push('\n');
        s
    }
}

/// Error codes of the control channel (and, later, the REST API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No command of that name.
    UnknownCommand,
    /// A missing, extra, unknown or invalid argument.
    BadArgument,
    /// A request that is not `{"command": NAME, "args": {…}}`.
    BadRequest,
    /// The caller may not run it.
    Forbidden,
    /// The account (or other object) does not exist.
    NotFound,
    /// It exists already.
    Conflict,
    /// The command needs a running server and none runs.
    NotRunning,
    /// A file or its data is unusable.
    InvalidData,
    /// The database failed.
    Storage,
    /// Reading or writing a file failed.
    Io,
    /// The command ran and its answer is no (a wrong password; ejabberd's
    /// `rescode` 1).
    Failed,
    /// Anything else.
    Internal,
}

/// A command's failure: a code and a sentence naming what is wrong.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
#[error("{message}")]
pub struct CommandError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong, for the operator.
    pub message: String,
}

impl CommandError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError {
            code,
            message: message.into(),
        }
    }

    /// A bad argument.
    pub fn arg(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadArgument, message)
    }
}

impl From<StorageError> for CommandError {
    fn from(e: StorageError) -> Self {
        CommandError::new(ErrorCode::Storage, format!("storage error: {e}"))
    }
}

/// A control-channel request: `{"command": NAME, "args": {…}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Command name.
    pub command: String,
    /// Arguments by name (strings, numbers or booleans).
    #[serde(default)]
    pub args: Map<String, Value>,
}

/// A control-channel response: `{"ok": RESULT}` or `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The command's result.
    Ok(Value),
    /// Why it failed.
    Error(CommandError),
}

impl From<Result<Value, CommandError>> for Response {
    fn from(r: Result<Value, CommandError>) -> Self {
        match r {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(e),
        }
    }
}

impl From<Response> for Result<Value, CommandError> {
    fn from(r: Response) -> Self {
        match r {
            Response::Ok(v) => Ok(v),
            Response::Error(e) => Err(e),
        }
    }
}

/// A parsed, validated argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// Text (string, user, host, JID, password, path), normalised.
    Text(String),
    /// A number.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A list of strings.
    List(Vec<String>),
}

/// A command's validated arguments.
#[derive(Debug, Clone, Default)]
pub struct Args {
    values: BTreeMap<&'static str, ArgValue>,
}

impl Args {
    /// A text argument (required ones are always present).
    pub fn text(&self, name: &str) -> Result<&str, CommandError> {
        match self.values.get(name) {
            Some(ArgValue::Text(s)) => Ok(s),
            _ => Err(CommandError::new(
                ErrorCode::Internal,
                format!("argument `{name}` is missing or not text"),
            )),
        }
    }

    /// An optional text argument.
    pub fn opt_text(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(ArgValue::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer argument.
    pub fn int(&self, name: &str) -> Result<i64, CommandError> {
        match self.values.get(name) {
            Some(ArgValue::Int(n)) => Ok(*n),
            _ => Err(CommandError::new(
                ErrorCode::Internal,
                format!("argument `{name}` is missing or not an integer"),
            )),
        }
    }

    /// A list argument (empty when absent).
    pub fn list(&self, name: &str) -> Vec<String> {
        match self.values.get(name) {
            Some(ArgValue::List(l)) => l.clone(),
            _ => Vec::new(),
        }
    }

    /// A boolean argument (`false` when absent).
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(ArgValue::Bool(true)))
    }
}

fn names(cmd: &Command) -> String {
    if cmd.args.is_empty() {
        "none".into()
    } else {
        cmd.args
            .iter()
            .map(|a| a.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// Check one value against its type, normalising it.
fn parse_value(
    cmd: &Command,
    spec: &ArgSpec,
    v: &Value,
    config: &Config,
) -> Result<ArgValue, CommandError> {
    let name = spec.name;
    let bad =
        |what: String| CommandError::arg(format!("argument `{name}` of `{}`: {what}", cmd.name));
    let text = || -> Result<String, CommandError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(bad(format!("expected a {}, got {other}", spec.ty.name()))),
        }
    };
    Ok(match spec.ty {
        ArgType::String => ArgValue::Text(text()?),
        ArgType::Integer => match v {
            Value::Number(n) => ArgValue::Int(
                n.as_i64()
                    .ok_or_else(|| bad(format!("`{n}` is not a whole number")))?,
            ),
            Value::String(s) => ArgValue::Int(
                s.trim()
                    .parse()
                    .map_err(|_| bad(format!("`{s}` is not a whole number")))?,
            ),
            other => return Err(bad(format!("expected an integer, got {other}"))),
        },
        ArgType::Boolean => match v {
            Value::Bool(b) => ArgValue::Bool(*b),
            Value::String(s) => ArgValue::Bool(
                parse_bool(s).ok_or_else(|| bad(format!("`{s}` is not true or false")))?,
            ),
            other => return Err(bad(format!("expected true or false, got {other}"))),
        },
        ArgType::User => {
            let s = text()?;
            let node = jid::NodePart::new(&s)
                .map_err(|e| bad(format!("`{s}` is not a valid JID localpart ({e})")))?;
            ArgValue::Text(node.as_str().to_string())
        }
        ArgType::Host => {
            let s = text()?;
            let domain = match palaver_proto::BareJid::new(&s) {
                Ok(j) if j.node().is_none() => j.domain().to_string(),
                _ => return Err(bad(format!("`{s}` is not a domain name"))),
            };
            if !config.hosts.contains(&domain) {
                return Err(bad(format!(
                    "host `{domain}` is not served by this configuration (hosts: {})",
                    config.hosts.join(", ")
                )));
            }
            ArgValue::Text(domain)
        }
        ArgType::Jid => {
            let s = text()?;
            let j = palaver_proto::Jid::new(&s)
                .map_err(|e| bad(format!("`{s}` is not a valid JID ({e})")))?;
            ArgValue::Text(j.to_string())
        }
        ArgType::Password => {
            let s = text()?;
            if s.is_empty() {
                return Err(bad("the password must not be empty".into()));
            }
            ArgValue::Text(s)
        }
        ArgType::Path => {
            let s = text()?;
            if s.is_empty() {
                return Err(bad("the path must not be empty".into()));
            }
            ArgValue::Text(s)
        }
        ArgType::List => match v {
            Value::Array(items) => ArgValue::List(
                items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(bad(format!("expected strings in the list, got {other}"))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::String(s) if s.is_empty() => ArgValue::List(Vec::new()),
            Value::String(s) => ArgValue::List(s.split(';').map(str::to_string).collect()),
            other => return Err(bad(format!("expected a list of strings, got {other}"))),
        },
    })
}

/// The arguments with ejabberd's earlier names under their current ones.
fn rename_old(cmd: &Command, raw: &Map<String, Value>) -> Result<Map<String, Value>, CommandError> {
    let mut out = Map::new();
    for (k, v) in raw {
        let name = cmd
            .args
            .iter()
            .find(|a| a.old_name == Some(k.as_str()) && a.name != k)
            .map_or(k.as_str(), |a| a.name);
        if out.insert(name.to_string(), v.clone()).is_some() {
            return Err(CommandError::arg(format!(
                "argument `{name}` of `{}` is given twice (also under its old name)",
                cmd.name
            )));
        }
    }
    Ok(out)
}

/// Validate a request's arguments against `cmd`: unknown, missing and
/// invalid arguments are [`ErrorCode::BadArgument`] errors naming the argument.
pub fn parse_args(
    cmd: &Command,
    raw: &Map<String, Value>,
    config: &Config,
) -> Result<Args, CommandError> {
    let renamed;
    let raw = if cmd
        .args
        .iter()
        .any(|a| a.old_name.is_some_and(|o| raw.contains_key(o)))
    {
        renamed = rename_old(cmd, raw)?;
        &renamed
    } else {
        raw
    };
    for k in raw.keys() {
        if !cmd.args.iter().any(|a| a.name == k) {
            return Err(CommandError::arg(format!(
                "unknown argument `{k}` of `{}` (arguments: {})",
                cmd.name,
                names(cmd)
            )));
        }
    }
    let mut args = Args::default();
    for spec in cmd.args {
        match raw.get(spec.name) {
            None | Some(Value::Null) => {
                if spec.required {
                    return Err(CommandError::arg(format!(
                        "missing argument `{}` of `{}`: {} ({}); usage: {}",
                        spec.name,
                        cmd.name,
                        spec.description,
                        spec.ty.name(),
                        cmd.usage()
                    )));
                }
            }
            Some(v) => {
                let value = parse_value(cmd, spec, v, config)?;
                args.values.insert(spec.name, value);
            }
        }
    }
    Ok(args)
}

/// Turn command-line words into request arguments: `--NAME=VALUE`,
/// `--NAME VALUE`, `--NAME` alone for a boolean, and the rest in the
/// order of the command's arguments. Values stay text; [`parse_args`]
/// checks them.
pub fn args_from_words(
    cmd: &Command,
    words: &[String],
) -> Result<Map<String, Value>, CommandError> {
    let mut out = Map::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        let Some(named) = w.strip_prefix("--").filter(|n| !n.is_empty()) else {
            positional.push(w.clone());
            continue;
        };
        let (name, inline) = match named.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (named, None),
        };
        let Some(spec) = cmd
            .args
            .iter()
            .find(|a| a.name == name)
            .or_else(|| cmd.args.iter().find(|a| a.old_name == Some(name)))
        else {
            return Err(CommandError::arg(format!(
                "unknown argument `--{name}` of `{}` (arguments: {})",
                cmd.name,
                names(cmd)
            )));
        };
        let value = match (inline, spec.ty) {
            (Some(v), _) => Value::String(v),
            (None, ArgType::Boolean) => Value::Bool(true),
            (None, _) => match words.get(i) {
                Some(v) => {
                    i += 1;
                    Value::String(v.clone())
                }
                None => {
                    return Err(CommandError::arg(format!(
                        "argument `--{name}` of `{}` needs a value",
                        cmd.name
                    )));
                }
            },
        };
        if out.insert(spec.name.to_string(), value).is_some() {
            return Err(CommandError::arg(format!(
                "argument `{name}` of `{}` is given twice",
                cmd.name
            )));
        }
    }
    let free: Vec<&ArgSpec> = cmd
        .args
        .iter()
        .filter(|a| !out.contains_key(a.name))
        .collect();
    let mut free = free.into_iter();
    for w in positional {
        match free.next() {
            Some(spec) => {
                out.insert(spec.name.to_string(), Value::String(w));
            }
            None => {
                return Err(CommandError::arg(format!(
                    "extra argument `{w}`: usage: {}",
                    cmd.usage()
                )));
            }
        }
    }
    Ok(out)
}

/// The error of an online-only command when no server runs.
pub fn not_running(cmd: &Command, config: &Config) -> CommandError {
    CommandError::new(
        ErrorCode::NotRunning,
        format!(
            "`{}` needs a running server, and the server is not running (no server answers on {})",
            cmd.name,
            crate::control::socket_path(config).display()
        ),
    )
}

/// Run a request on `core`: find the command, check where it may run,
/// validate the arguments, call the handler.
pub async fn execute(core: &Arc<Core>, online: bool, req: &Request) -> Result<Value, CommandError> {
    let cmd = crate::commands::find(&req.command).ok_or_else(|| {
        CommandError::new(
            ErrorCode::UnknownCommand,
            format!(
                "unknown command `{}` (`palaver ctl help` lists the commands)",
                req.command
            ),
        )
    })?;
    let args = parse_args(cmd, &req.args, &core.config())?;
    if cmd.online_only && !online {
        return Err(not_running(cmd, &core.config()));
    }
    (cmd.handler)(
        Ctx {
            core: core.clone(),
            online,
        },
        args,
    )
    .await
}
