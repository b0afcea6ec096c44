//! The command table. One entry per command; handlers live by topic in the
//! files of this folder. A new command is one entry here and one function.

mod accounts;
mod piefxis;
mod server;
mod sessions;

use crate::command::{ArgSpec, ArgType, Command, Permission, ResultType};

const USER: ArgSpec = ArgSpec::req("user", ArgType::User, "user name (localpart)");
const HOST: ArgSpec = ArgSpec::req("host", ArgType::Host, "virtual host");

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
        handler: |cx, a| Box::pin(accounts::register(cx, a)),
    },
    Command {
        name: "unregister",
        description: "Delete an account and every module's data about it; its sessions end.",
        args: &[USER, HOST],
        result: ResultType::Message,
        permission: Permission::Admin,
        online_only: false,
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
        handler: |cx, a| Box::pin(accounts::change_password(cx, a)),
    },
    Command {
        name: "check_account",
        description: "Whether an account exists (an error, and a non-zero exit status, when it does not).",
        args: &[USER, HOST],
        result: ResultType::Message,
        permission: Permission::UserSelf,
        online_only: false,
        handler: |cx, a| Box::pin(accounts::check_account(cx, a)),
    },
    Command {
        name: "registered_users",
        description: "The user names of a host's accounts, sorted.",
        args: &[HOST],
        result: ResultType::Strings,
        permission: Permission::Admin,
        online_only: false,
        handler: |cx, a| Box::pin(accounts::registered_users(cx, a)),
    },
    Command {
        name: "registered_vhosts",
        description: "The virtual hosts this configuration serves.",
        args: &[],
        result: ResultType::Strings,
        permission: Permission::Admin,
        online_only: false,
        handler: |cx, a| Box::pin(server::registered_vhosts(cx, a)),
    },
    Command {
        name: "connected_users",
        description: "Full JIDs of every bound session, sorted.",
        args: &[],
        result: ResultType::Strings,
        permission: Permission::Admin,
        online_only: true,
        handler: |cx, a| Box::pin(sessions::connected_users(cx, a)),
    },
    Command {
        name: "connected_users_number",
        description: "How many sessions are bound.",
        args: &[],
        result: ResultType::Integer,
        permission: Permission::Admin,
        online_only: true,
        handler: |cx, a| Box::pin(sessions::connected_users_number(cx, a)),
    },
    Command {
        name: "user_resources",
        description: "The resources an account is connected with, sorted.",
        args: &[USER, HOST],
        result: ResultType::Strings,
        permission: Permission::UserSelf,
        online_only: true,
        handler: |cx, a| Box::pin(sessions::user_resources(cx, a)),
    },
    Command {
        name: "kick_user",
        description: "End every session of an account (policy-violation stream error); returns how many ended.",
        args: &[USER, HOST],
        result: ResultType::Integer,
        permission: Permission::Admin,
        online_only: true,
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
        handler: |cx, a| Box::pin(sessions::announce(cx, a)),
    },
    Command {
        name: "status",
        description: "Whether the server runs, its sessions and uptime (an error, and a non-zero exit status, when it does not run).",
        args: &[],
        result: ResultType::Message,
        permission: Permission::Admin,
        online_only: true,
        handler: |cx, a| Box::pin(server::status(cx, a)),
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
        handler: |cx, a| Box::pin(piefxis::import(cx, a)),
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
