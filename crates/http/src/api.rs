//! The REST admin API: `POST /api/<command>` with the arguments as a JSON
//! object, for every command of the table (`palaver_admin::COMMANDS`), with
//! ejabberd `mod_http_api`'s command names, argument names and JSON shapes;
//! `GET /api/openapi.json` describes them, generated from the same table.
//!
//! Who may call:
//! - `Authorization: Bearer pvt_…`: a token made with `palaver ctl
//!   api_token_create` (stored hashed); it grants the commands of its
//!   scopes (`admin`, a command group, or command names).
//! - `Authorization: Basic` with an account's JID and password: members of
//!   the `admin` ACL run every command; other users run the commands a user
//!   may run for their own account (`user`/`host` name the caller).
//! - The access rule `api_access`, when defined, is checked against the
//!   client's address first (ejabberd's `ip:` ACLs): a source allow-list.
//!
//! No or wrong credentials → 401; a command outside the caller's rights or
//! a refused address → 403. Errors are `{"status": "error", "code": N,
//! "error": KIND, "message": TEXT}`, never a backtrace.

use crate::HttpState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use palaver_admin::command::{ArgType, Command, ErrorCode, Permission, ResultType};
use palaver_admin::{CommandError, Request};
use palaver_server::auth::AuthOutcome;
use palaver_server::config::Subject;
use serde_json::{Map, Value, json};
use std::net::SocketAddr;

/// The access rule checked against the client address.
pub const ACCESS_RULE: &str = "api_access";

fn json_response(status: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON error in ejabberd's shape (plus `error`, the kind).
pub fn error(status: StatusCode, code: i64, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"status": "error", "code": code, "error": kind, "message": message}),
    )
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, 10, "unauthorized", message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"palaver\", Basic realm=\"palaver\""),
    );
    r
}

fn forbidden(message: &str) -> Response {
    error(StatusCode::FORBIDDEN, 11, "forbidden", message)
}

fn kind(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "internal".into())
}

fn command_error(cmd: Option<&Command>, e: &CommandError) -> Response {
    if e.code == ErrorCode::Failed && cmd.is_some_and(|c| c.result == ResultType::Rescode) {
        // ejabberd's rescode: the command ran, the answer is no.
        return json_response(StatusCode::OK, &Value::from(1));
    }
    let status = match e.code {
        ErrorCode::UnknownCommand | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::BadArgument | ErrorCode::BadRequest | ErrorCode::InvalidData => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::NotRunning => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Failed => StatusCode::BAD_REQUEST,
        ErrorCode::Storage | ErrorCode::Io | ErrorCode::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let code = match e.code {
        ErrorCode::Forbidden => 11,
        _ => i64::from(status.as_u16() >= 500),
    };
    error(status, code, &kind(e.code), &e.message)
}

/// Who called.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A member of the `admin` ACL (basic auth), or the control socket.
    Admin(String),
    /// A bearer token with its scopes.
    Token(palaver_admin::tokens::TokenEntry),
    /// A user (basic auth): `(user, host)`.
    User(String, String),
}

/// Check the `Authorization` header; `Err` is the 401/503 answer.
pub async fn authenticate(state: &HttpState, headers: &HeaderMap) -> Result<Caller, Response> {
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized(
            "credentials needed: a bearer token or HTTP basic authentication",
        ));
    };
    let (scheme, rest) = auth.split_once(' ').unwrap_or((auth, ""));
    let core = &state.core;
    if scheme.eq_ignore_ascii_case("bearer") {
        return match palaver_admin::tokens::verify(&core.config().data_dir, rest.trim()).await {
            Ok(Some(e)) => Ok(Caller::Token(e)),
            Ok(None) => Err(unauthorized("the token is invalid or revoked")),
            Err(e) => {
                tracing::warn!(error = %e, "API token store");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    1,
                    "io",
                    "the token store is unreadable",
                ))
            }
        };
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unauthorized("unsupported authorization scheme"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let Some((jid, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Err(unauthorized("malformed basic credentials"));
    };
    let Ok(bare) = palaver_proto::BareJid::new(jid) else {
        return Err(unauthorized("the user name must be a JID (user@host)"));
    };
    let (Some(node), host) = (bare.node(), bare.domain().as_str()) else {
        return Err(unauthorized("the user name must be a JID (user@host)"));
    };
    let Some(m) = core.cx_of(host) else {
        return Err(unauthorized("wrong user name or password"));
    };
    match m.auth().check_password(host, node.as_str(), password).await {
        AuthOutcome::Ok => {}
        AuthOutcome::Denied => return Err(unauthorized("wrong user name or password")),
        AuthOutcome::Temporary => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                1,
                "temporary_auth_failure",
                "the authentication backend failed; try again later",
            ));
        }
    }
    if core.config().acl_match("admin", bare.as_str()) {
        Ok(Caller::Admin(bare.to_string()))
    } else {
        Ok(Caller::User(node.as_str().to_string(), host.to_string()))
    }
}

/// Whether `caller` may run `cmd` with `args`; `Err` says why not (a 403).
pub fn authorize(caller: &Caller, cmd: &Command, args: &Map<String, Value>) -> Result<(), String> {
    match caller {
        Caller::Admin(_) => Ok(()),
        Caller::Token(t) if t.allows(cmd.name, cmd.group) => Ok(()),
        Caller::Token(t) => Err(format!(
            "token {} does not grant `{}` (group `{}`)",
            t.id, cmd.name, cmd.group
        )),
        Caller::User(user, host) => {
            if cmd.permission != Permission::UserSelf {
                return Err(format!("`{}` is for administrators", cmd.name));
            }
            // The account arguments must name the caller (compared after
            // the same normalisation the command applies).
            let same = |name: &str, want: &str, ty: ArgType| match args.get(name) {
                Some(Value::String(s)) => match ty {
                    ArgType::User => jid::NodePart::new(s)
                        .map(|n| n.as_str() == want)
                        .unwrap_or(false),
                    _ => palaver_proto::BareJid::new(s)
                        .map(|j| j.node().is_none() && j.domain().as_str() == want)
                        .unwrap_or(false),
                },
                _ => false,
            };
            if same("user", user, ArgType::User) && same("host", host, ArgType::Host) {
                Ok(())
            } else {
                Err(format!(
                    "a user may run `{}` for their own account only",
                    cmd.name
                ))
            }
        }
    }
}

/// The REST shape of a command's result.
fn shape(cmd: &Command, v: Value) -> Value {
    match cmd.result {
        ResultType::Integer if v.is_number() => json!({ cmd.result_name: v }),
        _ => v,
    }
}

/// Whether the client address passes the `api_access` rule.
pub fn address_allowed(state: &HttpState, peer: SocketAddr) -> bool {
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(peer.ip()),
        v4 => v4,
    };
    state.core.config().access_as(
        None,
        ACCESS_RULE,
        Subject {
            jid: None,
            ip: Some(ip),
        },
        true,
    )
}

/// `POST /api/{command}`.
pub async fn call(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !address_allowed(&state, peer) {
        return forbidden("the API is not open to this address (access rule api_access)");
    }
    let caller = match authenticate(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(cmd) = palaver_admin::find(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            0,
            "unknown_command",
            &format!("unknown command `{name}` (see /api/openapi.json)"),
        );
    };
    let args: Map<String, Value> = if body.iter().all(|b| b.is_ascii_whitespace()) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    0,
                    "bad_request",
                    "the body must be a JSON object of arguments",
                );
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    0,
                    "bad_request",
                    &format!("the body is not JSON: {e}"),
                );
            }
        }
    };
    if let Err(why) = authorize(&caller, cmd, &args) {
        return forbidden(&why);
    }
    tracing::info!(command = cmd.name, peer = %peer, "API call");
    let req = Request {
        command: cmd.name.to_string(),
        args,
    };
    let r = match palaver_admin::execute(&state.core, true, &req).await {
        Ok(v) => json_response(StatusCode::OK, &shape(cmd, v)),
        Err(e) => command_error(Some(cmd), &e),
    };
    metrics::counter!("palaver_api_calls_total", "command" => cmd.name, "status" => r.status().as_u16().to_string())
        .increment(1);
    r
}

fn arg_schema(ty: ArgType) -> Value {
    match ty {
        ArgType::Integer => json!({"type": "integer"}),
        ArgType::Boolean => json!({"type": "boolean"}),
        ArgType::List => json!({"type": "array", "items": {"type": "string"}}),
        _ => json!({"type": "string"}),
    }
}

fn result_schema(cmd: &Command) -> Value {
    match cmd.result {
        ResultType::Message => json!({"type": "string"}),
        ResultType::Integer => json!({
            "type": "object",
            "properties": {cmd.result_name: {"type": "integer"}},
            "required": [cmd.result_name],
        }),
        ResultType::Strings => json!({"type": "array", "items": {"type": "string"}}),
        ResultType::Rescode => {
            json!({"type": "integer", "enum": [0, 1], "description": "0: done; 1: the answer is no"})
        }
        ResultType::Report => json!({
            "type": "object",
            "properties": {"message": {"type": "string"}, "warnings": {"type": "array", "items": {"type": "string"}}},
            "required": ["message", "warnings"],
        }),
        ResultType::Object => json!({"type": "object"}),
        ResultType::Objects => json!({"type": "array", "items": {"type": "object"}}),
    }
}

/// The OpenAPI 3.0 document of the API, generated from the command table.
pub fn openapi() -> Value {
    let err = json!({"$ref": "#/components/responses/Error"});
    let mut paths = Map::new();
    for cmd in palaver_admin::COMMANDS {
        let mut props = Map::new();
        let mut required = Vec::new();
        for a in cmd.args {
            let mut s = arg_schema(a.ty);
            if let Value::Object(o) = &mut s {
                o.insert("description".into(), Value::from(a.description));
                o.insert("x-palaver-type".into(), Value::from(a.ty.name()));
            }
            props.insert(a.name.to_string(), s);
            if let Some(old) = a.old_name {
                let mut o = arg_schema(a.ty);
                if let Value::Object(m) = &mut o {
                    m.insert(
                        "description".into(),
                        Value::from(format!("earlier name of `{}` (ejabberd)", a.name)),
                    );
                    m.insert("deprecated".into(), Value::Bool(true));
                }
                props.insert(old.to_string(), o);
            }
            if a.required {
                required.push(Value::from(a.name));
            }
        }
        let mut body =
            json!({"type": "object", "properties": props, "additionalProperties": false});
        if !required.is_empty() {
            body["required"] = Value::Array(required);
        }
        let permission = match cmd.permission {
            Permission::Admin => "admin",
            Permission::UserSelf => "user_self",
        };
        paths.insert(
            format!("/api/{}", cmd.name),
            json!({"post": {
                "operationId": cmd.name,
                "summary": cmd.description,
                "tags": [cmd.group],
                "x-permission": permission,
                "x-needs-running-server": cmd.online_only,
                "requestBody": {"required": !cmd.args.is_empty(), "content": {"application/json": {"schema": body}}},
                "responses": {
                    "200": {"description": "the result", "content": {"application/json": {"schema": result_schema(cmd)}}},
                    "400": err, "401": err, "403": err, "404": err, "409": err, "500": err, "503": err,
                },
            }}),
        );
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Palaver admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "ejabberd mod_http_api compatible commands. Authenticate with a bearer token (palaver ctl api_token_create) or HTTP basic with an account (admins: the `admin` ACL; users: their own account's commands). Scopes: `admin`, a command group (the tags), or command names.",
        },
        "security": [{"bearer": []}, {"basic": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
            "schemas": {"Error": {
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["error"]},
                    "code": {"type": "integer", "description": "10: unauthenticated, 11: forbidden, 1: server failure, 0: other"},
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                },
                "required": ["status", "code", "message"],
            }},
            "responses": {"Error": {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    })
}

/// `GET /api/openapi.json`.
pub async fn openapi_json() -> Response {
    json_response(StatusCode::OK, &openapi())
}
