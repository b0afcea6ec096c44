//! `mod_adhoc`: XEP-0050 ad-hoc commands on each virtual host, with the
//! XEP-0133 service administration commands that map onto the command
//! table ([`crate::commands`]): add a user, delete users, change a
//! password, the online users (number and list), and an announcement to
//! every online user. Each runs the same table entry as `palaver ctl`,
//! so the checks and errors are the CLI's.
//!
//! The module lives in the admin crate, not in `palaver-modules`, because
//! it runs the command table (crate order `modules ← admin`); the server's
//! full module list is [`crate::registry`].
//!
//! Sessions (XEP-0050 §3.4): each `execute` starts one, keyed by a random
//! id and bound to the requesting full JID; `next`/`prev` move between the
//! stages of multi-stage commands, `complete` (or `next` on the last stage)
//! runs it, `cancel` drops it. Sessions idle for ten minutes expire.
//!
//! Only entities allowed by the `access` rule (default `configure`; when no
//! such rule is defined, members of the `admin` ACL) see or run commands.

use crate::command::{CommandError, ErrorCode, Request};
use dashmap::DashMap;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use palaver_proto::error::{Condition, StanzaError};
use palaver_proto::forms::{DataForm, Field, FieldType, FormType};
use palaver_proto::ns;
use palaver_proto::stanza::set_attr;
use palaver_server::{
    HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleCx, ModuleDef,
};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// XEP-0050.
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_ADMIN: &str = "http://jabber.org/protocol/admin";
const SESSION_IDLE: Duration = Duration::from_secs(600);
const MAX_SESSIONS: usize = 1000;

/// `mod_adhoc`.
pub struct Adhoc;

/// `mod_adhoc` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Adhoc>();

/// `mod_adhoc` options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Access rule of the administration commands.
    access: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            access: "configure".into(),
        }
    }
}

impl Module for Adhoc {
    const NAME: &'static str = "mod_adhoc";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o);
        Ok(Adhoc)
    }
}

/// The XEP-0133 commands offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    AddUser,
    DeleteUser,
    ChangePassword,
    OnlineUsersNum,
    OnlineUsersList,
    Announce,
}

const ALL: &[Cmd] = &[
    Cmd::AddUser,
    Cmd::DeleteUser,
    Cmd::ChangePassword,
    Cmd::OnlineUsersNum,
    Cmd::OnlineUsersList,
    Cmd::Announce,
];

impl Cmd {
    fn node(self) -> String {
        let n = match self {
            Cmd::AddUser => "add-user",
            Cmd::DeleteUser => "delete-user",
            Cmd::ChangePassword => "change-user-password",
            Cmd::OnlineUsersNum => "get-online-users-num",
            Cmd::OnlineUsersList => "get-online-users-list",
            Cmd::Announce => "announce",
        };
        format!("{NS_ADMIN}#{n}")
    }

    fn name(self) -> &'static str {
        match self {
            Cmd::AddUser => "Add a User",
            Cmd::DeleteUser => "Delete Users",
            Cmd::ChangePassword => "Change User Password",
            Cmd::OnlineUsersNum => "Get Number of Online Users",
            Cmd::OnlineUsersList => "Get List of Online Users",
            Cmd::Announce => "Send Announcement to Online Users",
        }
    }

    fn of(node: &str) -> Option<Cmd> {
        ALL.iter().copied().find(|c| c.node() == node)
    }

    /// Number of input stages (0: runs at once).
    fn stages(self) -> usize {
        match self {
            Cmd::OnlineUsersNum => 0,
            Cmd::DeleteUser => 2,
            _ => 1,
        }
    }

    /// The form of stage `n`, given the forms submitted so far.
    fn form(self, n: usize, done: &[DataForm]) -> DataForm {
        let f = DataForm::with_form_type(FormType::Form, NS_ADMIN).title(self.name());
        let jid = |var: &str, label: &str| {
            Field::new(var, FieldType::JidSingle, vec![])
                .label(label)
                .required()
        };
        let secret = |var: &str, label: &str| {
            Field::new(var, FieldType::TextPrivate, vec![])
                .label(label)
                .required()
        };
        match (self, n) {
            (Cmd::AddUser, _) => f
                .instructions("Fill out this form to add a user.")
                .field(jid("accountjid", "The Jabber ID for the account to be added"))
                .field(secret("password", "The password for this account"))
                .field(secret("password-verify", "Retype password")),
            (Cmd::DeleteUser, 0) => f
                .instructions("Fill out this form to delete users.")
                .field(
                    Field::new("accountjids", FieldType::JidMulti, vec![])
                        .label("The Jabber ID(s) to delete")
                        .required(),
                ),
            (Cmd::DeleteUser, _) => {
                let jids = done
                    .first()
                    .map(|d| d.values("accountjids").join(", "))
                    .unwrap_or_default();
                f.instructions(&format!(
                    "These accounts and all their data will be deleted: {jids}"
                ))
                .field(
                    Field::boolean("confirm", false)
                        .label("Delete them")
                        .required(),
                )
            }
            (Cmd::ChangePassword, _) => f
                .instructions("Fill out this form to change a user's password.")
                .field(jid("accountjid", "The Jabber ID for this account"))
                .field(secret("password", "The password for this account")),
            (Cmd::OnlineUsersList, _) => f.field(
                Field::new("max_items", FieldType::ListSingle, vec!["100".into()])
                    .label("Maximum number of items to report")
                    .options(
                        ["25", "50", "75", "100", "150", "200", "none"]
                            .iter()
                            .map(|o| (o.to_string(), o.to_string())),
                    ),
            ),
            (Cmd::Announce, _) => f
                .instructions("Fill out this form to make an announcement to all active users of this service.")
                .field(Field::text("subject", "").label("Subject"))
                .field(
                    Field::new("announcement", FieldType::TextMulti, vec![])
                        .label("Announcement")
                        .required(),
                ),
            (Cmd::OnlineUsersNum, _) => f,
        }
    }
}

struct Session {
    cmd: Cmd,
    owner: Jid,
    /// Forms submitted for the stages done so far.
    done: Vec<DataForm>,
    touched: Instant,
}

struct State {
    access: String,
    sessions: DashMap<String, Session>,
}

fn start(host: &mut HostSetup, o: Options) {
    let st = Arc::new(State {
        access: o.access,
        sessions: DashMap::new(),
    });
    host.add_feature(NS_COMMANDS);
    let s = st.clone();
    host.on_disco_node(NS_COMMANDS, move |req, items| {
        let s = s.clone();
        async move { list(&s, req, items) }
    });
    for c in ALL {
        let c = *c;
        let s = st.clone();
        host.on_disco_node(&c.node(), move |req, items| {
            let s = s.clone();
            async move { node_info(&s, c, req, items) }
        });
    }
    let s = st;
    host.on_iq(IqScope::Server, IqType::Set, NS_COMMANDS, move |req| {
        let s = s.clone();
        async move { execute(&s, req).await }
    });
}

fn allowed(st: &State, cx: &ModuleCx, who: &Jid) -> bool {
    let host = cx.host().name.as_str();
    let bare = who.to_bare();
    let admin = cx.config().acl_match_on(host, "admin", bare.as_str());
    cx.config()
        .access_on(host, &st.access, bare.as_str(), admin)
}

fn cmd_err(app: &str) -> Element {
    Element::bare(app, NS_COMMANDS)
}

/// disco#items / disco#info of the commands node (§2.2).
fn list(st: &State, req: IqRequest, items: bool) -> IqResult {
    let host = req.cx.host().name.to_string();
    if !items {
        let mut q = Element::bare("query", ns::DISCO_INFO);
        set_attr(&mut q, "node", NS_COMMANDS);
        let mut i = Element::bare("identity", ns::DISCO_INFO);
        set_attr(&mut i, "category", "automation");
        set_attr(&mut i, "type", "command-list");
        q.append_child(i);
        return Ok(Some(q));
    }
    let mut q = Element::bare("query", ns::DISCO_ITEMS);
    set_attr(&mut q, "node", NS_COMMANDS);
    if allowed(st, &req.cx, &req.stanza.from) {
        for c in ALL {
            let mut i = Element::bare("item", ns::DISCO_ITEMS);
            set_attr(&mut i, "jid", host.as_str());
            set_attr(&mut i, "node", c.node());
            set_attr(&mut i, "name", c.name());
            q.append_child(i);
        }
    }
    Ok(Some(q))
}

/// disco#info of one command node (§2.3).
fn node_info(st: &State, c: Cmd, req: IqRequest, items: bool) -> IqResult {
    if !allowed(st, &req.cx, &req.stanza.from) {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    if items {
        let mut q = Element::bare("query", ns::DISCO_ITEMS);
        set_attr(&mut q, "node", c.node());
        return Ok(Some(q));
    }
    let mut q = Element::bare("query", ns::DISCO_INFO);
    set_attr(&mut q, "node", c.node());
    let mut i = Element::bare("identity", ns::DISCO_INFO);
    set_attr(&mut i, "category", "automation");
    set_attr(&mut i, "type", "command-node");
    set_attr(&mut i, "name", c.name());
    q.append_child(i);
    for f in [NS_COMMANDS, ns::DATA_FORMS] {
        let mut e = Element::bare("feature", ns::DISCO_INFO);
        set_attr(&mut e, "var", f);
        q.append_child(e);
    }
    Ok(Some(q))
}

fn reply(c: Cmd, sid: &str, status: &str) -> Element {
    let mut r = Element::bare("command", NS_COMMANDS);
    set_attr(&mut r, "node", c.node());
    set_attr(&mut r, "sessionid", sid);
    set_attr(&mut r, "status", status);
    r
}

/// The `executing` answer for stage `n`, with the actions allowed there.
fn stage(c: Cmd, sid: &str, n: usize, done: &[DataForm]) -> Element {
    let mut r = reply(c, sid, "executing");
    let last = n + 1 >= c.stages();
    let mut actions = Element::bare("actions", NS_COMMANDS);
    set_attr(
        &mut actions,
        "execute",
        if last { "complete" } else { "next" },
    );
    if n > 0 {
        actions.append_child(Element::bare("prev", NS_COMMANDS));
    }
    actions.append_child(Element::bare(
        if last { "complete" } else { "next" },
        NS_COMMANDS,
    ));
    r.append_child(actions);
    r.append_child(c.form(n, done).to_element());
    r
}

async fn execute(st: &State, req: IqRequest) -> IqResult {
    let p = req
        .payload()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?
        .clone();
    let node = p.attr("node").unwrap_or("");
    let c = Cmd::of(node).ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
    if !allowed(st, &req.cx, &req.stanza.from) {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    let action = p.attr("action").unwrap_or("execute");
    if !matches!(action, "execute" | "next" | "prev" | "complete" | "cancel") {
        return Err(StanzaError::new(Condition::BadRequest).with_extra(cmd_err("malformed-action")));
    }
    st.sessions
        .retain(|_, s| s.touched.elapsed() < SESSION_IDLE);
    let Some(sid) = p.attr("sessionid").filter(|s| !s.is_empty()) else {
        // A new session.
        if action != "execute" {
            return Err(
                StanzaError::new(Condition::BadRequest).with_extra(cmd_err("bad-sessionid"))
            );
        }
        let sid = format!("{:016x}", rand::random::<u64>());
        if c.stages() == 0 {
            return finish(&req.cx, c, &sid, &[]).await.map(Some);
        }
        if st.sessions.len() >= MAX_SESSIONS {
            return Err(StanzaError::new(Condition::ResourceConstraint));
        }
        st.sessions.insert(
            sid.clone(),
            Session {
                cmd: c,
                owner: req.stanza.from.clone(),
                done: Vec::new(),
                touched: Instant::now(),
            },
        );
        return Ok(Some(stage(c, &sid, 0, &[])));
    };
    let bad_session =
        || StanzaError::new(Condition::BadRequest).with_extra(cmd_err("bad-sessionid"));
    let mut s = match st.sessions.remove(sid) {
        Some((_, s)) if s.owner == req.stanza.from && s.cmd == c => s,
        Some((k, s)) => {
            st.sessions.insert(k, s);
            return Err(bad_session());
        }
        None => return Err(bad_session()),
    };
    let sid = sid.to_string();
    match action {
        "cancel" => return Ok(Some(reply(c, &sid, "canceled"))),
        "prev" => {
            if s.done.is_empty() {
                st.sessions.insert(sid.clone(), s);
                return Err(
                    StanzaError::new(Condition::BadRequest).with_extra(cmd_err("bad-action"))
                );
            }
            s.done.pop();
            let n = s.done.len();
            let r = stage(c, &sid, n, &s.done);
            s.touched = Instant::now();
            st.sessions.insert(sid, s);
            return Ok(Some(r));
        }
        _ => {}
    }
    let form = match DataForm::find_in(&p) {
        Some(Ok(f)) if f.kind == FormType::Submit => f,
        _ => {
            // Keep the session: the client may submit again.
            s.touched = Instant::now();
            st.sessions.insert(sid, s);
            return Err(StanzaError::new(Condition::BadRequest).with_extra(cmd_err("bad-payload")));
        }
    };
    s.done.push(form);
    if s.done.len() < c.stages() && action != "complete" {
        let n = s.done.len();
        let r = stage(c, &sid, n, &s.done);
        s.touched = Instant::now();
        st.sessions.insert(sid, s);
        return Ok(Some(r));
    }
    if s.done.len() < c.stages() {
        return Err(StanzaError::new(Condition::BadRequest).with_extra(cmd_err("bad-action")));
    }
    finish(&req.cx, c, &sid, &s.done).await.map(Some)
}

/// An account named in a form: a JID of a host served here.
fn account(cx: &ModuleCx, f: &DataForm, var: &str) -> Result<(String, String), StanzaError> {
    let v = f.value(var).filter(|v| !v.is_empty()).ok_or_else(|| {
        StanzaError::new(Condition::BadRequest).text(format!("{var} is required"))
    })?;
    let j = BareJid::new(v)
        .map_err(|_| StanzaError::new(Condition::JidMalformed).text(format!("{v} is not a JID")))?;
    let user = j.node().ok_or_else(|| {
        StanzaError::new(Condition::BadRequest).text(format!("{v} is not an account"))
    })?;
    if !cx.is_local(j.domain().as_str()) {
        return Err(StanzaError::new(Condition::NotAcceptable)
            .text(format!("{} is not served here", j.domain())));
    }
    Ok((user.to_string(), j.domain().to_string()))
}

/// Run one command of the table as the CLI would.
async fn run(cx: &ModuleCx, command: &str, args: &[(&str, Value)]) -> Result<Value, StanzaError> {
    let mut m = Map::new();
    for (k, v) in args {
        m.insert(k.to_string(), v.clone());
    }
    let req = Request {
        command: command.to_string(),
        args: m,
    };
    crate::execute(cx.core(), true, &req)
        .await
        .map_err(command_error)
}

fn command_error(e: CommandError) -> StanzaError {
    let cond = match e.code {
        ErrorCode::BadArgument | ErrorCode::BadRequest | ErrorCode::InvalidData => {
            Condition::BadRequest
        }
        ErrorCode::Forbidden => Condition::Forbidden,
        ErrorCode::NotFound => Condition::ItemNotFound,
        ErrorCode::Conflict => Condition::Conflict,
        ErrorCode::Storage => Condition::ResourceConstraint,
        _ => Condition::InternalServerError,
    };
    StanzaError::new(cond).text(e.message)
}

fn completed(c: Cmd, sid: &str, note: &str, result: Option<DataForm>) -> Element {
    let mut r = reply(c, sid, "completed");
    let mut n = Element::builder("note", NS_COMMANDS).append(note).build();
    set_attr(&mut n, "type", "info");
    r.append_child(n);
    if let Some(f) = result {
        r.append_child(f.to_element());
    }
    r
}

async fn finish(
    cx: &ModuleCx,
    c: Cmd,
    sid: &str,
    done: &[DataForm],
) -> Result<Element, StanzaError> {
    let host = cx.host().name.to_string();
    let first = done.first();
    let form = || first.ok_or_else(|| StanzaError::new(Condition::BadRequest));
    match c {
        Cmd::AddUser => {
            let f = form()?;
            let (user, h) = account(cx, f, "accountjid")?;
            let pw = f.value("password").unwrap_or("");
            if f.get("password-verify").is_some() && f.value("password-verify").unwrap_or("") != pw
            {
                return Err(StanzaError::new(Condition::NotAcceptable).text("the passwords differ"));
            }
            let v = run(
                cx,
                "register",
                &[
                    ("user", user.into()),
                    ("host", h.into()),
                    ("password", pw.into()),
                ],
            )
            .await?;
            Ok(completed(c, sid, v.as_str().unwrap_or("done"), None))
        }
        Cmd::DeleteUser => {
            let f = form()?;
            let confirmed = done
                .get(1)
                .map(|d| d.boolean("confirm").ok().flatten().unwrap_or(false))
                .unwrap_or(false);
            if !confirmed {
                return Ok(completed(c, sid, "nothing deleted (not confirmed)", None));
            }
            let jids = f.values("accountjids").to_vec();
            if jids.is_empty() {
                return Err(StanzaError::new(Condition::BadRequest).text("accountjids is required"));
            }
            let mut accounts = Vec::new();
            for j in &jids {
                let mut one = DataForm::new(FormType::Submit);
                one.set("j", FieldType::JidSingle, vec![j.clone()]);
                accounts.push(account(cx, &one, "j")?);
            }
            let mut notes = Vec::new();
            for (user, h) in accounts {
                let v = run(
                    cx,
                    "unregister",
                    &[("user", user.into()), ("host", h.into())],
                )
                .await?;
                notes.push(v.as_str().unwrap_or("deleted").to_string());
            }
            Ok(completed(c, sid, &notes.join("; "), None))
        }
        Cmd::ChangePassword => {
            let f = form()?;
            let (user, h) = account(cx, f, "accountjid")?;
            let pw = f.value("password").unwrap_or("");
            let v = run(
                cx,
                "change_password",
                &[
                    ("user", user.into()),
                    ("host", h.into()),
                    ("newpass", pw.into()),
                ],
            )
            .await?;
            Ok(completed(c, sid, v.as_str().unwrap_or("done"), None))
        }
        Cmd::OnlineUsersNum | Cmd::OnlineUsersList => {
            let all = run(cx, "connected_users", &[]).await?;
            let mut users: Vec<String> = all
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|j| FullJid::new(j).ok())
                .filter(|j| j.domain().as_str() == host)
                .map(|j| j.to_bare().to_string())
                .collect();
            users.dedup();
            let mut r = DataForm::with_form_type(FormType::Result, NS_ADMIN);
            if c == Cmd::OnlineUsersNum {
                r.set(
                    "onlineusersnum",
                    FieldType::TextSingle,
                    vec![users.len().to_string()],
                );
            } else {
                let max = match form()?.value("max_items") {
                    None | Some("none") | Some("") => usize::MAX,
                    Some(m) => m.parse().map_err(|_| {
                        StanzaError::new(Condition::BadRequest).text("max_items is not a number")
                    })?,
                };
                users.truncate(max);
                r.set("onlineuserjids", FieldType::JidMulti, users);
            }
            Ok(completed(c, sid, "done", Some(r)))
        }
        Cmd::Announce => {
            let f = form()?;
            let body = f.values("announcement").join("\n");
            if body.is_empty() {
                return Err(
                    StanzaError::new(Condition::BadRequest).text("announcement is required")
                );
            }
            let subject = f.value("subject").unwrap_or("").to_string();
            let v = run(
                cx,
                "announce",
                &[
                    ("host", host.into()),
                    ("body", body.into()),
                    ("subject", subject.into()),
                ],
            )
            .await?;
            Ok(completed(c, sid, &format!("sent to {v} session(s)"), None))
        }
    }
}
