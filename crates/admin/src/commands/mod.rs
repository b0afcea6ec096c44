//! The command table. One entry per command; handlers live by topic in the
//! files of this folder. A new command is one entry here and one function.

mod accounts;
mod muc;
mod piefxis;
mod roster;
mod server;
mod sessions;
mod stanza;
mod tokens;
mod userdata;

use crate::command::{ArgSpec, ArgType, Command, Permission, ResultType};

const USER: ArgSpec = ArgSpec::req("user", ArgType::User, "user name (localpart)");
const HOST: ArgSpec = ArgSpec::req("host", ArgType::Host, "virtual host");
const ROOM: ArgSpec =
    ArgSpec::req("room", ArgType::String, "room name (the JID localpart)").renamed_from("name");
const SERVICE: ArgSpec = ArgSpec::req(
    "service",
    ArgType::String,
    "MUC service, e.g. conference.example.org",
);

/// Every command, in help order.
pub static COMMANDS: &[Command] = &[
    Command {
        name: "register",
        description: "Create an account.",
        args: &[
            USER,
            HOST,
            ArgSpec::req("password", ArgType::Password, "password"),
        ],
        result: ResultType::Message,
        permission: Permission::Admin,
        online_only: false,
        group: "accounts",
        result_name: "res",
        handler: |cx, a| Box::pin(accounts::register(cx, a)),
    },
    Command {
        name: "unregister",
        description: "Delete an account and every module's data about it; its sessions end.",
        args: &[USER, HOST],
        result: ResultType::Message,
        permission: Permission::Admin,
        online_only: false,
        group: "accounts",
        result_name: "res",
        handler: |cx, a| Box::pin(accounts::unregister(cx, a)),
    },
    Command {
        name: "change_password",
        description: "Change an account's password.",
        args: &[
            USER,
            HOST,
            ArgSpec::req("newpass", ArgType::Password, "new password"),
        ],
        result: ResultType::Message,
        permission: Permission::UserSelf,
        online_only: false,
        group: "accounts",
        result_name: "res",
        handler: |cx, a| Box::pin(accounts::change_password(cx, a)),
    },
    Command {
        name: "check_account",
        description: "Whether an account exists (an error, and a non-zero exit status, when it does not).",
        args: &[USER, HOST],
        result: ResultType::Message,
        permission: Permission::UserSelf,
        online_only: false,
        group: "accounts",
        result_name: "res",
        handler: |cx, a| Box::pin(accounts::check_account(cx, a)),
    },
    Command {
        name: "registered_users",
        description: "The user names of a host's accounts, sorted.",
        args: &[HOST],
        result: ResultType::Strings,
        permission: Permission::Admin,
        online_only: false,
        group: "accounts",
        result_name: "res",
        handler: |cx, a| Box::pin(accounts::registered_users(cx, a)),
    },
    Command {
        name: "registered_vhosts",
        description: "The virtual hosts this configuration serves.",
        args: &[],
        result: ResultType::Strings,
        permission: Permission::Admin,
        online_only: false,
        group: "server",
        result_name: "res",
        handler: |cx, a| Box::pin(server::registered_vhosts(cx, a)),
    },
    Command {
        name: "connected_users",
        description: "Full JIDs of every bound session, sorted.",
        args: &[],
        result: ResultType::Strings,
        permission: Permission::Admin,
        online_only: true,
        group: "sessions",
        result_name: "res",
        handler: |cx, a| Box::pin(sessions::connected_users(cx, a)),
    },
    Command {
        name: "connected_users_number",
        description: "How many sessions are bound.",
        args: &[],
        result: ResultType::Integer,
        permission: Permission::Admin,
        online_only: true,
        group: "sessions",
        result_name: "num_sessions",
        handler: |cx, a| Box::pin(sessions::connected_users_number(cx, a)),
    },
    Command {
        name: "user_resources",
        description: "The resources an account is connected with, sorted.",
        args: &[USER, HOST],
        result: ResultType::Strings,
        permission: Permission::UserSelf,
        online_only: true,
        group: "sessions",
        result_name: "res",
        handler: |cx, a| Box::pin(sessions::user_resources(cx, a)),
    },
    Command {
        name: "kick_user",
        description: "End every session of an account (policy-violation stream error); returns how many ended.",
        args: &[USER, HOST],
        result: ResultType::Integer,
        permission: Permission::Admin,
        online_only: true,
        group: "sessions",
        result_name: "num_resources",
        handler: |cx, a| Box::pin(sessions::kick_user(cx, a)),
    },
    Command {
        name: "announce",
        description: "Send a message to every session of a host (XEP-0133 announce); returns how many were sent.",
        args: &[
            HOST,
            ArgSpec::req("body", ArgType::String, "the announcement"),
            ArgSpec::opt("subject", ArgType::String, "its subject"),
        ],
        result: ResultType::Integer,
        permission: Permission::Admin,
        online_only: true,
        group: "sessions",
        result_name: "res",
        handler: |cx, a| Box::pin(sessions::announce(cx, a)),
    },
    Command {
        name: "status",
        description: "Whether the server runs, its sessions and uptime (an error, and a non-zero exit status, when it does not run).",
        args: &[],
        result: ResultType::Message,
        permission: Permission::Admin,
        online_only: true,
        group: "server",
        result_name: "res",
        handler: |cx, a| Box::pin(server::status(cx, a)),
    },
    Command {
        name: "reload_config",
        description: "Read the configuration file again and apply it without a restart: modules enabled, disabled or with changed options per host, hosts added and removed (their sessions closed), authentication, ACLs and access rules, certificates; sessions stay connected. A bad file changes nothing (an error). Listener, storage, data_dir, s2s and loglevel changes need a restart (warnings).",
        args: &[],
        result: ResultType::Report,
        permission: Permission::Admin,
        online_only: true,
        group: "config",
        result_name: "res",
        handler: |cx, a| Box::pin(server::reload_config(cx, a)),
    },
    Command {
        name: "export_piefxis_host",
        description: "Write one host's accounts and user data as a XEP-0227 file (mode 0600; `-` returns the XML as `xml`).",
        args: &[
            HOST,
            ArgSpec::req("file", ArgType::Path, "output file, or `-`"),
        ],
        result: ResultType::Report,
        permission: Permission::Admin,
        online_only: false,
        group: "data",
        result_name: "res",
        handler: |cx, a| Box::pin(piefxis::export(cx, a)),
    },
    Command {
        name: "import_piefxis",
        description: "Import every host of a XEP-0227 file (with its xi:include files); the file is checked before anything is written.",
        args: &[
            ArgSpec::req("file", ArgType::Path, "the (main) file"),
            ArgSpec::opt(
                "force",
                ArgType::Boolean,
                "replace the credentials and data of accounts that exist already",
            ),
        ],
        result: ResultType::Report,
        permission: Permission::Admin,
        online_only: false,
        group: "data",
        result_name: "res",
        handler: |cx, a| Box::pin(piefxis::import(cx, a)),
    },
    Command {
        name: "check_password",
        description: "Whether a password is an account's (0 when it is; 1 over REST, an error on the command line, when not).",
        args: &[
            USER,
            HOST,
            ArgSpec::req("password", ArgType::Password, "password to check"),
        ],
        result: ResultType::Rescode,
        permission: Permission::UserSelf,
        online_only: false,
        group: "accounts",
        result_name: "res",
        handler: |cx, a| Box::pin(accounts::check_password(cx, a)),
    },
    Command {
        name: "connected_users_info",
        description: "Every bound session: jid, connection (c2s, c2s_tls, websocket, http_bind), ip, port, priority, uptime, since, status, resource, statustext.",
        args: &[],
        result: ResultType::Objects,
        permission: Permission::Admin,
        online_only: true,
        group: "sessions",
        result_name: "connected_users_info",
        handler: |cx, a| Box::pin(sessions::connected_users_info(cx, a)),
    },
    Command {
        name: "user_sessions_info",
        description: "An account's sessions: connection (c2s, c2s_tls, websocket, http_bind), ip, port, priority, uptime, since, status, resource, statustext.",
        args: &[USER, HOST],
        result: ResultType::Objects,
        permission: Permission::UserSelf,
        online_only: true,
        group: "sessions",
        result_name: "sessions_info",
        handler: |cx, a| Box::pin(sessions::user_sessions_info(cx, a)),
    },
    Command {
        name: "kick_session",
        description: "End one session (policy-violation stream error with the reason).",
        args: &[
            USER,
            HOST,
            ArgSpec::req("resource", ArgType::String, "resource of the session"),
            ArgSpec::req("reason", ArgType::String, "reason given to the client"),
        ],
        result: ResultType::Rescode,
        permission: Permission::Admin,
        online_only: true,
        group: "sessions",
        result_name: "res",
        handler: |cx, a| Box::pin(sessions::kick_session(cx, a)),
    },
    Command {
        name: "send_message",
        description: "Send a message (type normal, chat or headline) from any JID to any JID.",
        args: &[
            ArgSpec::req("type", ArgType::String, "normal, chat or headline"),
            ArgSpec::req("from", ArgType::Jid, "sender"),
            ArgSpec::req("to", ArgType::Jid, "recipient"),
            ArgSpec::req("subject", ArgType::String, "subject (may be empty)"),
            ArgSpec::req("body", ArgType::String, "body"),
        ],
        result: ResultType::Rescode,
        permission: Permission::Admin,
        online_only: true,
        group: "stanza",
        result_name: "res",
        handler: |cx, a| Box::pin(stanza::send_message(cx, a)),
    },
    Command {
        name: "send_stanza",
        description: "Route a stanza (XML) from a JID to a JID.",
        args: &[
            ArgSpec::req("from", ArgType::Jid, "sender"),
            ArgSpec::req("to", ArgType::Jid, "recipient"),
            ArgSpec::req("stanza", ArgType::String, "the stanza, as XML"),
        ],
        result: ResultType::Rescode,
        permission: Permission::Admin,
        online_only: true,
        group: "stanza",
        result_name: "res",
        handler: |cx, a| Box::pin(stanza::send_stanza(cx, a)),
    },
    Command {
        name: "get_roster",
        description: "An account's roster: jid, nick, subscription, pending, groups.",
        args: &[USER, HOST],
        result: ResultType::Objects,
        permission: Permission::UserSelf,
        online_only: false,
        group: "roster",
        result_name: "contacts",
        handler: |cx, a| Box::pin(roster::get_roster(cx, a)),
    },
    Command {
        name: "add_rosteritem",
        description: "Add or replace a roster item (pushed to the account's sessions).",
        args: &[
            ArgSpec::req(
                "localuser",
                ArgType::User,
                "user name of the roster's owner",
            ),
            ArgSpec::req(
                "localhost",
                ArgType::Host,
                "virtual host of the roster's owner",
            ),
            ArgSpec::req("user", ArgType::User, "contact's user name"),
            ArgSpec::req("host", ArgType::String, "contact's server"),
            ArgSpec::req(
                "nick",
                ArgType::String,
                "contact's name in the roster (may be empty)",
            ),
            ArgSpec::req(
                "groups",
                ArgType::List,
                "groups (`a;b` on the command line)",
            ),
            ArgSpec::req(
                "subs",
                ArgType::String,
                "subscription: none, to, from or both",
            ),
        ],
        result: ResultType::Rescode,
        permission: Permission::Admin,
        online_only: false,
        group: "roster",
        result_name: "res",
        handler: |cx, a| Box::pin(roster::add_rosteritem(cx, a)),
    },
    Command {
        name: "delete_rosteritem",
        description: "Remove a roster item (pushed to the account's sessions).",
        args: &[
            ArgSpec::req(
                "localuser",
                ArgType::User,
                "user name of the roster's owner",
            ),
            ArgSpec::req(
                "localhost",
                ArgType::Host,
                "virtual host of the roster's owner",
            ),
            ArgSpec::req("user", ArgType::User, "contact's user name"),
            ArgSpec::req("host", ArgType::String, "contact's server"),
        ],
        result: ResultType::Rescode,
        permission: Permission::Admin,
        online_only: false,
        group: "roster",
        result_name: "res",
        handler: |cx, a| Box::pin(roster::delete_rosteritem(cx, a)),
    },
    Command {
        name: "get_vcard",
        description: "One field of an account's vCard (e.g. FN, NICKNAME).",
        args: &[
            USER,
            HOST,
            ArgSpec::req("name", ArgType::String, "field name"),
        ],
        result: ResultType::Message,
        permission: Permission::UserSelf,
        online_only: false,
        group: "vcard",
        result_name: "content",
        handler: |cx, a| Box::pin(userdata::get_vcard(cx, a)),
    },
    Command {
        name: "set_vcard",
        description: "Set one field of an account's vCard (e.g. FN, NICKNAME).",
        args: &[
            USER,
            HOST,
            ArgSpec::req("name", ArgType::String, "field name"),
            ArgSpec::req("content", ArgType::String, "value"),
        ],
        result: ResultType::Rescode,
        permission: Permission::UserSelf,
        online_only: false,
        group: "vcard",
        result_name: "res",
        handler: |cx, a| Box::pin(userdata::set_vcard(cx, a)),
    },
    Command {
        name: "get_last",
        description: "When an account was last seen: timestamp (XEP-0082) and status (ONLINE while connected, NOT FOUND when never seen).",
        args: &[USER, HOST],
        result: ResultType::Object,
        permission: Permission::UserSelf,
        online_only: false,
        group: "accounts",
        result_name: "last_activity",
        handler: |cx, a| Box::pin(userdata::get_last(cx, a)),
    },
    Command {
        name: "get_offline_count",
        description: "How many messages wait in an account's offline storage.",
        args: &[USER, HOST],
        result: ResultType::Integer,
        permission: Permission::UserSelf,
        online_only: false,
        group: "accounts",
        result_name: "value",
        handler: |cx, a| Box::pin(userdata::get_offline_count(cx, a)),
    },
    Command {
        name: "stats",
        description: "A statistic: registeredusers, onlineusers, onlineusersnode, uptimeseconds (without a name: all of them, and sessions per host).",
        args: &[ArgSpec::opt(
            "name",
            ArgType::String,
            "registeredusers, onlineusers, onlineusersnode or uptimeseconds",
        )],
        result: ResultType::Integer,
        permission: Permission::Admin,
        online_only: false,
        group: "stats",
        result_name: "stat",
        handler: |cx, a| Box::pin(server::stats(cx, a)),
    },
    Command {
        name: "create_room",
        description: "Create a chat room ROOM@SERVICE with the service's default room options, open at once.",
        args: &[
            ROOM,
            SERVICE,
            ArgSpec::req("host", ArgType::Host, "virtual host of the MUC service"),
        ],
        result: ResultType::Rescode,
        permission: Permission::Admin,
        online_only: true,
        group: "muc",
        result_name: "res",
        handler: |cx, a| Box::pin(muc::create_room(cx, a)),
    },
    Command {
        name: "destroy_room",
        description: "Destroy a chat room: its occupants are told and leave; a persistent room is deleted.",
        args: &[ROOM, SERVICE],
        result: ResultType::Rescode,
        permission: Permission::Admin,
        online_only: true,
        group: "muc",
        result_name: "res",
        handler: |cx, a| Box::pin(muc::destroy_room(cx, a)),
    },
    Command {
        name: "muc_online_rooms",
        description: "The JIDs of the rooms of a MUC service (or of a virtual host's services, or `global`: all), sorted.",
        args: &[ArgSpec::req(
            "service",
            ArgType::String,
            "MUC service, a virtual host, or `global` for all",
        )
        .renamed_from("host")],
        result: ResultType::Strings,
        permission: Permission::Admin,
        online_only: true,
        group: "muc",
        result_name: "rooms",
        handler: |cx, a| Box::pin(muc::muc_online_rooms(cx, a)),
    },
    Command {
        name: "get_room_occupants",
        description: "The occupants of a room: jid (real, full), nick, role.",
        args: &[ROOM, SERVICE],
        result: ResultType::Objects,
        permission: Permission::Admin,
        online_only: true,
        group: "muc",
        result_name: "occupants",
        handler: |cx, a| Box::pin(muc::get_room_occupants(cx, a)),
    },
    Command {
        name: "get_room_options",
        description: "A room's options (ejabberd's names) as a list of name and value.",
        args: &[ROOM, SERVICE],
        result: ResultType::Objects,
        permission: Permission::Admin,
        online_only: true,
        group: "muc",
        result_name: "options",
        handler: |cx, a| Box::pin(muc::get_room_options(cx, a)),
    },
    Command {
        name: "change_room_option",
        description: "Change one option of a room (ejabberd's names, e.g. members_only true, title, max_users); occupants are told.",
        args: &[
            ROOM,
            SERVICE,
            ArgSpec::req(
                "option",
                ArgType::String,
                "option name (see get_room_options)",
            ),
            ArgSpec::req(
                "value",
                ArgType::String,
                "new value (true/false for yes-no options)",
            ),
        ],
        result: ResultType::Rescode,
        permission: Permission::Admin,
        online_only: true,
        group: "muc",
        result_name: "res",
        handler: |cx, a| Box::pin(muc::change_room_option(cx, a)),
    },
    Command {
        name: "reopen_log",
        description: "Reopen the log file (after it was rotated); also done on SIGUSR1.",
        args: &[],
        result: ResultType::Message,
        permission: Permission::Admin,
        online_only: true,
        group: "server",
        result_name: "res",
        handler: |_cx, _a| {
            Box::pin(async {
                crate::logfile::reopen()
                    .map(|p| serde_json::Value::from(format!("reopened {}", p.display())))
                    .map_err(|e| {
                        crate::command::CommandError::new(crate::command::ErrorCode::Io, e)
                    })
            })
        },
    },
    Command {
        name: "api_token_create",
        description: "Create a REST API bearer token for scopes (admin, a command group, or command names); the token is shown once and stored hashed.",
        args: &[
            ArgSpec::req(
                "scope",
                ArgType::List,
                "scopes (`admin`, a group such as `accounts`, or command names; `a;b` on the command line)",
            ),
            ArgSpec::opt("description", ArgType::String, "what the token is for"),
        ],
        result: ResultType::Object,
        permission: Permission::Admin,
        online_only: false,
        group: "tokens",
        result_name: "token",
        handler: |cx, a| Box::pin(tokens::create(cx, a)),
    },
    Command {
        name: "api_token_list",
        description: "The REST API tokens: id, scopes, description, creation time (never the token).",
        args: &[],
        result: ResultType::Objects,
        permission: Permission::Admin,
        online_only: false,
        group: "tokens",
        result_name: "tokens",
        handler: |cx, a| Box::pin(tokens::list(cx, a)),
    },
    Command {
        name: "api_token_revoke",
        description: "Revoke a REST API token by its id.",
        args: &[ArgSpec::req("id", ArgType::String, "the token's id")],
        result: ResultType::Message,
        permission: Permission::Admin,
        online_only: false,
        group: "tokens",
        result_name: "res",
        handler: |cx, a| Box::pin(tokens::revoke(cx, a)),
    },
];

/// The command named `name`.
pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// One line per command: usage and description.
pub fn list() -> String {
    let mut s = String::new();
    for c in COMMANDS {
        s.push_str(&format!("  {:<24} {}\n", c.name, c.description));
    }
    s
}

/// The permission groups of the table, sorted.
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = COMMANDS.iter().map(|c| c.group).collect();
    g.sort();
    g.dedup();
    g
}
