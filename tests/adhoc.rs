//! XEP-0050 ad-hoc commands with the XEP-0133 administration commands,
//! run through the command table, over real sockets.

#[path = "support/stanza_client.rs"]
mod client;
mod common;

use client::*;
use common::*;
use minidom::Element;

const MODULES: &str = "modules:\n  mod_disco: {}\n  mod_ping: {}\n  mod_roster: {}\n  mod_adhoc: {}\nacl:\n  admin:\n    user: ['admin@localhost']\n";
const CMDS: &str = "http://jabber.org/protocol/commands";
const ADMIN: &str = "http://jabber.org/protocol/admin";

fn exec(node: &str) -> String {
    format!(
        "<iq type='set' id='{{id}}' to='localhost'><command xmlns='{CMDS}' node='{ADMIN}#{node}' action='execute'/></iq>"
    )
}

fn submit(node: &str, sid: &str, action: &str, fields: &[(&str, &[&str])]) -> String {
    let mut x = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{ADMIN}</value></field>"
    );
    for (var, values) in fields {
        x.push_str(&format!("<field var='{var}'>"));
        for v in *values {
            x.push_str(&format!("<value>{v}</value>"));
        }
        x.push_str("</field>");
    }
    x.push_str("</x>");
    format!(
        "<iq type='set' id='{{id}}' to='localhost'><command xmlns='{CMDS}' node='{ADMIN}#{node}' sessionid='{sid}' action='{action}'>{x}</command></iq>"
    )
}

fn command(r: &Element) -> &Element {
    r.get_child("command", CMDS)
        .unwrap_or_else(|| panic!("command in {r:?}"))
}

fn sid(r: &Element) -> String {
    command(r).attr("sessionid").expect("sessionid").to_string()
}

async fn exists(srv: &TestServer, user: &str) -> bool {
    srv.core()
        .storage()
        .accounts
        .account_exists(DOMAIN, user)
        .await
        .expect("query")
}

#[tokio::test]
async fn admin_adds_and_deletes_users_others_are_refused() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("admin", DOMAIN, "pw").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut adm = Client::login(&srv, "admin", "r").await;
    let mut al = Client::login(&srv, "alice", "r").await;

    // Discovery: the admin sees the commands, alice sees none.
    let list = format!(
        "<iq type='get' id='{{id}}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items' node='{CMDS}'/></iq>"
    );
    let r = adm.ok(&list).await;
    let s = String::from(&r);
    assert!(
        s.contains("admin#add-user") && s.contains("admin#delete-user"),
        "{s}"
    );
    let r = al.ok(&list).await;
    assert!(!String::from(&r).contains("admin#"), "{r:?}");
    let r = adm
        .ok(&format!(
            "<iq type='get' id='{{id}}' to='localhost'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    assert!(String::from(&r).contains(CMDS), "{r:?}");

    // alice may not run them.
    al.fails(&exec("add-user"), "forbidden", None).await;
    assert!(!exists(&srv, "mallory").await);

    // add-user: a form, then completed; the account works.
    let r = adm.ok(&exec("add-user")).await;
    assert_eq!(command(&r).attr("status"), Some("executing"));
    assert!(String::from(&r).contains("accountjid"), "{r:?}");
    let s1 = sid(&r);
    let r = adm
        .ok(&submit(
            "add-user",
            &s1,
            "complete",
            &[
                ("accountjid", &["newbie@localhost"]),
                ("password", &["s3cret"]),
                ("password-verify", &["s3cret"]),
            ],
        ))
        .await;
    assert_eq!(command(&r).attr("status"), Some("completed"), "{r:?}");
    assert!(exists(&srv, "newbie").await);
    let mut nb = Raw::connect(srv.addr).await;
    nb.login_plain("newbie", DOMAIN, "s3cret", "x").await;
    // The session is over: its id is no longer valid.
    adm.fails(
        &submit(
            "add-user",
            &s1,
            "complete",
            &[("accountjid", &["other@localhost"]), ("password", &["x"])],
        ),
        "bad-request",
        Some("bad-sessionid"),
    )
    .await;
    // An existing account: conflict (the command table's answer).
    let s2 = sid(&adm.ok(&exec("add-user")).await);
    adm.fails(
        &submit(
            "add-user",
            &s2,
            "complete",
            &[
                ("accountjid", &["alice@localhost"]),
                ("password", &["x"]),
                ("password-verify", &["x"]),
            ],
        ),
        "conflict",
        None,
    )
    .await;
    // Passwords that differ, a JID of a foreign domain.
    let s3 = sid(&adm.ok(&exec("add-user")).await);
    adm.fails(
        &submit(
            "add-user",
            &s3,
            "complete",
            &[
                ("accountjid", &["bob@localhost"]),
                ("password", &["a"]),
                ("password-verify", &["b"]),
            ],
        ),
        "not-acceptable",
        None,
    )
    .await;
    let s4 = sid(&adm.ok(&exec("add-user")).await);
    adm.fails(
        &submit(
            "add-user",
            &s4,
            "complete",
            &[
                ("accountjid", &["bob@elsewhere.example"]),
                ("password", &["a"]),
                ("password-verify", &["a"]),
            ],
        ),
        "not-acceptable",
        None,
    )
    .await;
    // Unknown command node.
    adm.fails(
        &format!("<iq type='set' id='{{id}}' to='localhost'><command xmlns='{CMDS}' node='nope' action='execute'/></iq>"),
        "item-not-found",
        None,
    )
    .await;

    // delete-user: two stages, prev, then complete with confirmation.
    let r = adm.ok(&exec("delete-user")).await;
    let d = sid(&r);
    let r = adm
        .ok(&submit(
            "delete-user",
            &d,
            "next",
            &[("accountjids", &["newbie@localhost"])],
        ))
        .await;
    let s = String::from(&r);
    assert!(
        s.contains("confirm") && s.contains("newbie@localhost") && s.contains("prev"),
        "{s}"
    );
    let r = adm
        .ok(&format!("<iq type='set' id='{{id}}' to='localhost'><command xmlns='{CMDS}' node='{ADMIN}#delete-user' sessionid='{d}' action='prev'/></iq>"))
        .await;
    assert!(String::from(&r).contains("accountjids"), "{r:?}");
    adm.ok(&submit(
        "delete-user",
        &d,
        "next",
        &[("accountjids", &["newbie@localhost"])],
    ))
    .await;
    // Another entity cannot hijack the session.
    al.fails(
        &submit("delete-user", &d, "complete", &[("confirm", &["1"])]),
        "forbidden",
        None,
    )
    .await;
    let r = adm
        .ok(&submit(
            "delete-user",
            &d,
            "complete",
            &[("confirm", &["1"])],
        ))
        .await;
    assert_eq!(command(&r).attr("status"), Some("completed"), "{r:?}");
    assert!(!exists(&srv, "newbie").await);
    srv.stop().await;
}

#[tokio::test]
async fn cancel_online_users_password_and_announce() {
    let srv = TestServer::start_with("", MODULES).await;
    srv.add_user("admin", DOMAIN, "pw").await;
    srv.add_user("alice", DOMAIN, "pw").await;
    let mut adm = Client::login(&srv, "admin", "r").await;
    let mut al = Client::login(&srv, "alice", "r").await;
    al.sync().await;

    // Cancel ends the session.
    let c = sid(&adm.ok(&exec("change-user-password")).await);
    let r = adm
        .ok(&format!("<iq type='set' id='{{id}}' to='localhost'><command xmlns='{CMDS}' node='{ADMIN}#change-user-password' sessionid='{c}' action='cancel'/></iq>"))
        .await;
    assert_eq!(command(&r).attr("status"), Some("canceled"));
    adm.fails(
        &submit(
            "change-user-password",
            &c,
            "complete",
            &[("accountjid", &["alice@localhost"]), ("password", &["new"])],
        ),
        "bad-request",
        Some("bad-sessionid"),
    )
    .await;
    // A submission without a form keeps the session; malformed actions are refused.
    let c = sid(&adm.ok(&exec("change-user-password")).await);
    adm.fails(
        &format!("<iq type='set' id='{{id}}' to='localhost'><command xmlns='{CMDS}' node='{ADMIN}#change-user-password' sessionid='{c}' action='complete'/></iq>"),
        "bad-request",
        Some("bad-payload"),
    )
    .await;
    adm.fails(
        &format!("<iq type='set' id='{{id}}' to='localhost'><command xmlns='{CMDS}' node='{ADMIN}#change-user-password' sessionid='{c}' action='jump'/></iq>"),
        "bad-request",
        Some("malformed-action"),
    )
    .await;
    adm.ok(&submit(
        "change-user-password",
        &c,
        "complete",
        &[("accountjid", &["alice@localhost"]), ("password", &["new"])],
    ))
    .await;
    let mut again = Raw::connect(srv.addr).await;
    again.login_plain("alice", DOMAIN, "new", "x").await;

    // Online users: two accounts (alice twice).
    let r = adm.ok(&exec("get-online-users-num")).await;
    let s = String::from(&r);
    assert!(
        s.contains("onlineusersnum") && s.contains("<value>2</value>"),
        "{s}"
    );
    let l = sid(&adm.ok(&exec("get-online-users-list")).await);
    let r = adm
        .ok(&submit(
            "get-online-users-list",
            &l,
            "complete",
            &[("max_items", &["none"])],
        ))
        .await;
    let s = String::from(&r);
    assert!(
        s.contains("alice@localhost") && s.contains("admin@localhost"),
        "{s}"
    );

    // Announce reaches alice.
    let a = sid(&adm.ok(&exec("announce")).await);
    adm.ok(&submit(
        "announce",
        &a,
        "complete",
        &[
            ("subject", &["Maintenance"]),
            ("announcement", &["Back at six"]),
        ],
    ))
    .await;
    let m = al
        .expect("announcement", |m| {
            m.name() == "message" && String::from(m).contains("Back at six")
        })
        .await;
    assert_eq!(m.attr("from"), Some("localhost"));
    srv.stop().await;
}
