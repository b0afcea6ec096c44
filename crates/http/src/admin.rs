//! The web admin at `/admin`: server-rendered HTML, no scripts, no build
//! step. An administrator (a member of the `admin` ACL) logs in with their
//! JID and password; the page shows the server's status, each host's
//! registered-user count and online sessions, and forms to add and remove
//! users and to kick a session. Every action runs a command of the table
//! (`register`, `unregister`, `kick_session`), like the REST API.
//!
//! The login is a random cookie (`HttpOnly`, `SameSite=Strict`, path
//! `/admin`) valid for [`SESSION_LIFETIME`]; each form also carries the
//! session's CSRF token. The `api_access` address rule applies here too.

use crate::HttpState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use palaver_server::auth::AuthOutcome;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(3600);
const COOKIE: &str = "palaver_admin";

struct AdminSession {
    jid: String,
    csrf: String,
    until: Instant,
}

static SESSIONS: LazyLock<DashMap<String, AdminSession>> = LazyLock::new(DashMap::new);

fn random_hex() -> String {
    rand::random::<[u8; 24]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{t} — Palaver admin</title>\
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}\
.msg{{background:#eef;padding:.5em}}.err{{background:#fee;padding:.5em}}form.inline{{display:inline}}</style></head>\
<body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    )
}

fn login_page(error: Option<&str>) -> Response {
    let mut b = String::new();
    if let Some(e) = error {
        let _ = write!(b, "<p class='err' id='error'>{}</p>", esc(e));
    }
    b.push_str(
        "<form method='post' action='/admin/login' id='login'>\
<p><label>JID <input name='jid' id='jid' autocomplete='username' required></label></p>\
<p><label>Password <input name='password' id='password' type='password' autocomplete='current-password' required></label></p>\
<p><button type='submit' id='login-submit'>Log in</button></p></form>",
    );
    html(
        if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        },
        page("Palaver administration", &b),
    )
}

fn session_of(headers: &HeaderMap) -> Option<(String, String, String)> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let token = cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())?;
    let s = SESSIONS.get(&token)?;
    if s.until < Instant::now() {
        drop(s);
        SESSIONS.remove(&token);
        return None;
    }
    Some((token, s.jid.clone(), s.csrf.clone()))
}

fn form(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// `GET /admin`.
pub async fn index(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !crate::api::address_allowed(&state, peer) {
        return html(
            StatusCode::FORBIDDEN,
            page("Forbidden", "<p>Not open to this address.</p>"),
        );
    }
    let Some((_, jid, csrf)) = session_of(&headers) else {
        return login_page(None);
    };
    let core = &state.core;
    let mut b = String::new();
    if let Some(m) = q.get("msg") {
        let _ = write!(b, "<p class='msg' id='msg'>{}</p>", esc(m));
    }
    if let Some(m) = q.get("err") {
        let _ = write!(b, "<p class='err' id='error'>{}</p>", esc(m));
    }
    let uptime = core
        .config()
        .hosts
        .first()
        .and_then(|h| core.cx_of(h))
        .map(|m| m.started().elapsed().as_secs())
        .unwrap_or(0);
    let _ = write!(
        b,
        "<p>Logged in as <b>{}</b>. <form class='inline' method='post' action='/admin/logout'>\
<input type='hidden' name='csrf' value='{csrf}'><button id='logout'>Log out</button></form></p>\
<h2>Server</h2><table id='status'><tr><th>Version</th><td>{}</td></tr><tr><th>Uptime</th><td>{} s</td></tr>\
<tr><th>Sessions</th><td id='session-count'>{}</td></tr><tr><th>Storage</th><td>{}</td></tr></table>",
        esc(&jid),
        env!("CARGO_PKG_VERSION"),
        uptime,
        core.sessions().count(),
        core.storage().backend,
    );
    b.push_str("<h2>Hosts</h2><table id='hosts'><tr><th>Host</th><th>Registered users</th><th>Online sessions</th><th>Auth</th></tr>");
    let mut online_all = Vec::new();
    for h in &core.config().hosts {
        let registered = match core.storage().accounts.list_accounts(h).await {
            Ok(u) => u.len().to_string(),
            Err(e) => format!("error: {e}"),
        };
        let mut online = core.sessions().online(h);
        online.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let method = core
            .cx_of(h)
            .map(|m| m.auth().method_name(h))
            .unwrap_or("internal");
        let _ = write!(
            b,
            "<tr><td>{}</td><td class='registered' data-host='{0}'>{}</td><td>{}</td><td>{}</td></tr>",
            esc(h),
            esc(&registered),
            online.len(),
            method
        );
        online_all.extend(online);
    }
    b.push_str(
        "</table><h2>Online users</h2><table id='online'><tr><th>Session</th><th></th></tr>",
    );
    for j in &online_all {
        let _ = write!(
            b,
            "<tr><td class='session'>{jid}</td><td><form class='inline' method='post' action='/admin/kick'>\
<input type='hidden' name='csrf' value='{csrf}'><input type='hidden' name='jid' value='{jid}'>\
<button type='submit' class='kick' data-jid='{jid}'>Kick</button></form></td></tr>",
            jid = esc(j.as_str()),
        );
    }
    b.push_str("</table>");
    let hosts: String = core
        .config()
        .hosts
        .iter()
        .map(|h| format!("<option>{}</option>", esc(h)))
        .collect();
    let _ = write!(
        b,
        "<h2>Add a user</h2><form method='post' action='/admin/users/add' id='add-user'>\
<input type='hidden' name='csrf' value='{csrf}'>\
<label>User <input name='user' id='add-user-name' required></label> \
<label>Host <select name='host' id='add-user-host'>{hosts}</select></label> \
<label>Password <input name='password' type='password' id='add-user-password' required></label> \
<button type='submit' id='add-user-submit'>Add</button></form>\
<h2>Remove a user</h2><form method='post' action='/admin/users/remove' id='remove-user'>\
<input type='hidden' name='csrf' value='{csrf}'>\
<label>User <input name='user' id='remove-user-name' required></label> \
<label>Host <select name='host'>{hosts}</select></label> \
<button type='submit' id='remove-user-submit'>Remove</button></form>"
    );
    html(StatusCode::OK, page("Palaver administration", &b))
}

/// `POST /admin/login`.
pub async fn login(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if !crate::api::address_allowed(&state, peer) {
        return html(
            StatusCode::FORBIDDEN,
            page("Forbidden", "<p>Not open to this address.</p>"),
        );
    }
    let f = form(&body);
    let (Some(jid), Some(password)) = (f.get("jid"), f.get("password")) else {
        return login_page(Some("JID and password are needed."));
    };
    let Some(bare) = palaver_proto::BareJid::new(jid.trim())
        .ok()
        .filter(|j| j.node().is_some())
    else {
        return login_page(Some("The JID must be user@host."));
    };
    let host = bare.domain().as_str();
    let node = bare.node().map(|n| n.as_str()).unwrap_or_default();
    let core = &state.core;
    let outcome = match core.cx_of(host) {
        Some(m) => m.auth().check_password(host, node, password).await,
        None => AuthOutcome::Denied,
    };
    match outcome {
        AuthOutcome::Ok if core.config().acl_match("admin", bare.as_str()) => {}
        AuthOutcome::Ok => {
            tracing::warn!(jid = %bare, %peer, "web admin: login of a non-administrator refused");
            return login_page(Some("This account is not an administrator."));
        }
        AuthOutcome::Denied => {
            tracing::warn!(jid = %bare, %peer, "web admin: failed login");
            return login_page(Some("Wrong JID or password."));
        }
        AuthOutcome::Temporary => {
            return login_page(Some("The authentication backend failed; try again later."));
        }
    }
    // Forget expired logins.
    let now = Instant::now();
    SESSIONS.retain(|_, s| s.until > now);
    let token = random_hex();
    SESSIONS.insert(
        token.clone(),
        AdminSession {
            jid: bare.to_string(),
            csrf: random_hex(),
            until: now + SESSION_LIFETIME,
        },
    );
    tracing::info!(jid = %bare, %peer, "web admin: logged in");
    let mut r = redirect("/admin");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /admin/logout`.
pub async fn logout(headers: HeaderMap, body: Bytes) -> Response {
    if let Some((token, _, csrf)) = session_of(&headers)
        && form(&body).get("csrf") == Some(&csrf)
    {
        SESSIONS.remove(&token);
    }
    redirect("/admin")
}

/// `POST /admin/{users/add, users/remove, kick}`: one command each.
async fn action(
    state: &HttpState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    build: impl FnOnce(&HashMap<String, String>) -> Result<(&'static str, Map<String, Value>), String>,
) -> Response {
    if !crate::api::address_allowed(state, peer) {
        return html(
            StatusCode::FORBIDDEN,
            page("Forbidden", "<p>Not open to this address.</p>"),
        );
    }
    let Some((_, jid, csrf)) = session_of(headers) else {
        return login_page(Some("Please log in."));
    };
    let f = form(body);
    if f.get("csrf") != Some(&csrf) {
        return html(
            StatusCode::FORBIDDEN,
            page("Forbidden", "<p>Stale form; reload the page.</p>"),
        );
    }
    let (command, args) = match build(&f) {
        Ok(x) => x,
        Err(e) => return redirect(&format!("/admin?err={}", pct(&e))),
    };
    tracing::info!(admin = %jid, command, "web admin action");
    let req = palaver_admin::Request {
        command: command.to_string(),
        args,
    };
    match palaver_admin::execute(&state.core, true, &req).await {
        Ok(v) => {
            let msg = match v {
                Value::String(s) => s,
                other => format!("{command}: {other}"),
            };
            redirect(&format!("/admin?msg={}", pct(&msg)))
        }
        Err(e) => redirect(&format!("/admin?err={}", pct(&e.message))),
    }
}

fn field(f: &HashMap<String, String>, name: &str) -> Result<Value, String> {
    f.get(name)
        .map(|v| Value::from(v.trim().to_string()))
        .ok_or_else(|| format!("`{name}` is missing"))
}

/// `POST /admin/users/add`.
pub async fn add_user(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    action(&state, peer, &headers, &body, |f| {
        let mut a = Map::new();
        a.insert("user".into(), field(f, "user")?);
        a.insert("host".into(), field(f, "host")?);
        a.insert(
            "password".into(),
            f.get("password")
                .map(|p| Value::from(p.clone()))
                .ok_or("`password` is missing")?,
        );
        Ok(("register", a))
    })
    .await
}

/// `POST /admin/users/remove`.
pub async fn remove_user(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    action(&state, peer, &headers, &body, |f| {
        let mut a = Map::new();
        a.insert("user".into(), field(f, "user")?);
        a.insert("host".into(), field(f, "host")?);
        Ok(("unregister", a))
    })
    .await
}

/// `POST /admin/kick`: end one session (`jid` is the full JID).
pub async fn kick(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    action(&state, peer, &headers, &body, |f| {
        let jid = f.get("jid").ok_or("`jid` is missing")?;
        let full = palaver_proto::FullJid::new(jid).map_err(|e| format!("`{jid}`: {e}"))?;
        let mut a = Map::new();
        a.insert(
            "user".into(),
            Value::from(full.node().map(|n| n.as_str()).unwrap_or_default()),
        );
        a.insert("host".into(), Value::from(full.domain().as_str()));
        a.insert("resource".into(), Value::from(full.resource().as_str()));
        a.insert("reason".into(), Value::from("kicked by an administrator"));
        Ok(("kick_session", a))
    })
    .await
}
