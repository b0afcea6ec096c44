//! The REST admin API (`/api/<command>`): every command of ejabberd's
//! mod_http_api list that exists here, with success, bad arguments,
//! unknown user, unauthenticated and forbidden cases; tokens, basic auth,
//! the `api_access` address rule, the OpenAPI document.
mod common;
#[path = "common/transports.rs"]
mod transports;
use base64::Engine;
use common::*;
use serde_json::{Value, json};

const ADMIN_ACL: &str = "acl:\n  admin:\n    user: admin@localhost\n";

struct Api {
    srv: TestServer,
    admin_token: String,
}

enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

impl Api {
    async fn start() -> Api {
        let srv = TestServer::start_with("", ADMIN_ACL).await;
        srv.add_user("admin", DOMAIN, "adminpw").await;
        srv.add_user("alice", DOMAIN, "alicepw").await;
        srv.add_user("bob", DOMAIN, "bobpw").await;
        let (_, admin_token) = palaver_admin::tokens::create(
            &srv.core().config().data_dir,
            vec!["admin".into()],
            "test".into(),
        )
        .await
        .expect("token");
        Api { srv, admin_token }
    }

    async fn call_as(&self, auth: Auth<'_>, cmd: &str, args: Value) -> (u16, Value) {
        let h = match auth {
            Auth::None => String::new(),
            Auth::Bearer(t) => format!("Authorization: Bearer {t}\r\n"),
            Auth::Basic(u, p) => format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            ),
        };
        let body = serde_json::to_vec(&args).expect("json");
        let (status, head, body) = http_request(
            self.srv.http_addr,
            "POST",
            &format!("/api/{cmd}"),
            &format!("Content-Type: application/json\r\n{h}"),
            &body,
        )
        .await;
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{cmd}: JSON answer expected: {head}"
        );
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{cmd}: body is not JSON ({e}): {body:?}"));
        if status >= 400 {
            assert_eq!(v["status"], "error", "{cmd}: error shape: {v}");
            assert!(v["message"].is_string(), "{cmd}: error message: {v}");
            assert!(v["code"].is_i64(), "{cmd}: error code: {v}");
        }
        (status, v)
    }

    async fn call(&self, cmd: &str, args: Value) -> (u16, Value) {
        self.call_as(Auth::Bearer(&self.admin_token.clone()), cmd, args)
            .await
    }

    async fn ok(&self, cmd: &str, args: Value) -> Value {
        let (s, v) = self.call(cmd, args).await;
        assert_eq!(s, 200, "{cmd}: {v}");
        v
    }

    async fn status(&self, cmd: &str, args: Value) -> u16 {
        self.call(cmd, args).await.0
    }
}

fn u(user: &str) -> Value {
    json!({"user": user, "host": DOMAIN})
}

#[tokio::test]
async fn unauthenticated_and_unknown() {
    let api = Api::start().await;
    for c in palaver_admin::COMMANDS {
        let (s, v) = api.call_as(Auth::None, c.name, json!({})).await;
        assert_eq!(s, 401, "{} without credentials: {v}", c.name);
        assert_eq!(v["code"], 10);
        let (s, _) = api
            .call_as(Auth::Bearer("pvt_nope_nope"), c.name, json!({}))
            .await;
        assert_eq!(s, 401, "{} with a wrong token", c.name);
        let (s, _) = api
            .call_as(Auth::Basic("admin@localhost", "wrong"), c.name, json!({}))
            .await;
        assert_eq!(s, 401, "{} with a wrong password", c.name);
    }
    let (s, v) = api.call("no_such_command", json!({})).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = api
        .call(
            "register",
            json!({"user": "x", "host": DOMAIN, "password": "p", "extra": 1}),
        )
        .await;
    assert_eq!(s, 400, "unknown argument: {v}");
    assert!(v["message"].as_str().unwrap().contains("extra"));
    // Not an object.
    let (s, _, _) = http_request(
        api.srv.http_addr,
        "POST",
        "/api/status",
        &format!("Authorization: Bearer {}\r\n", api.admin_token),
        b"[1,2]",
    )
    .await;
    assert_eq!(s, 400);
    api.srv.stop().await;
}

#[tokio::test]
async fn permissions_tokens_and_basic_auth() {
    let api = Api::start().await;
    // A token for the accounts group only.
    let v = api
        .ok(
            "api_token_create",
            json!({"scope": ["accounts"], "description": "provisioning"}),
        )
        .await;
    let tok = v["token"].as_str().expect("token").to_string();
    let id = v["id"].as_str().unwrap().to_string();
    let file = std::fs::read_to_string(api.srv.dir.path().join("api_tokens.json")).unwrap();
    assert!(!file.contains(&tok), "stored hashed");
    let (s, _) = api
        .call_as(
            Auth::Bearer(&tok),
            "registered_users",
            json!({"host": DOMAIN}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .call_as(Auth::Bearer(&tok), "kick_user", u("alice"))
        .await;
    assert_eq!(s, 403, "out of scope: {v}");
    assert_eq!(v["code"], 11);
    let (s, _) = api
        .call_as(Auth::Bearer(&tok), "api_token_list", json!({}))
        .await;
    assert_eq!(s, 403);
    // A token naming one command.
    let v = api.ok("api_token_create", json!({"scope": "status"})).await;
    let one = v["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.call_as(Auth::Bearer(&one), "status", json!({})).await.0,
        200
    );
    assert_eq!(
        api.call_as(Auth::Bearer(&one), "registered_vhosts", json!({}))
            .await
            .0,
        403
    );
    // Unknown scope.
    assert_eq!(
        api.status("api_token_create", json!({"scope": ["nope"]}))
            .await,
        400
    );
    let list = api.ok("api_token_list", json!({})).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str())
    );
    assert!(!list.to_string().contains(&tok));
    api.ok("api_token_revoke", json!({"id": id})).await;
    assert_eq!(
        api.call_as(
            Auth::Bearer(&tok),
            "registered_users",
            json!({"host": DOMAIN})
        )
        .await
        .0,
        401
    );
    assert_eq!(
        api.status("api_token_revoke", json!({"id": "nope"})).await,
        404
    );

    // Basic auth: the admin ACL runs everything.
    let (s, _) = api
        .call_as(
            Auth::Basic("admin@localhost", "adminpw"),
            "registered_users",
            json!({"host": DOMAIN}),
        )
        .await;
    assert_eq!(s, 200);
    // A user: their own account's commands only.
    let alice = Auth::Basic("alice@localhost", "alicepw");
    let (s, _) = api
        .call_as(alice, "registered_users", json!({"host": DOMAIN}))
        .await;
    assert_eq!(s, 403);
    let (s, v) = api
        .call_as(
            Auth::Basic("alice@localhost", "alicepw"),
            "change_password",
            json!({"user": "bob", "host": DOMAIN, "newpass": "x"}),
        )
        .await;
    assert_eq!(s, 403, "another user's password: {v}");
    let (s, v) = api
        .call_as(
            Auth::Basic("Alice@localhost", "alicepw"),
            "change_password",
            json!({"user": "ALICE", "host": DOMAIN, "newpass": "alice2"}),
        )
        .await;
    assert_eq!(s, 200, "own password: {v}");
    let (s, _) = api
        .call_as(
            Auth::Basic("alice@localhost", "alice2"),
            "get_roster",
            u("alice"),
        )
        .await;
    assert_eq!(s, 200, "new password works");
    api.srv.stop().await;
}

#[tokio::test]
async fn forbidden_for_every_command() {
    let api = Api::start().await;
    let (_, tok) = palaver_admin::tokens::create(
        &api.srv.core().config().data_dir,
        vec!["vcard".into()],
        String::new(),
    )
    .await
    .unwrap();
    for c in palaver_admin::COMMANDS {
        // A user, for another account (or an admin command).
        let (s, v) = api
            .call_as(Auth::Basic("alice@localhost", "alicepw"), c.name, u("bob"))
            .await;
        assert_eq!(s, 403, "{} as alice for bob: {v}", c.name);
        // A token without the command's group.
        if c.group != "vcard" {
            let (s, v) = api.call_as(Auth::Bearer(&tok), c.name, json!({})).await;
            assert_eq!(s, 403, "{} with a vcard token: {v}", c.name);
        }
    }
    api.srv.stop().await;
}

#[tokio::test]
async fn address_allow_list() {
    let srv = TestServer::start_with(
        "",
        "acl:\n  lan:\n    ip: 10.0.0.0/8\naccess_rules:\n  api_access:\n    allow: lan\n",
    )
    .await;
    let (_, tok) = palaver_admin::tokens::create(
        &srv.core().config().data_dir,
        vec!["admin".into()],
        String::new(),
    )
    .await
    .unwrap();
    let (s, _, body) = http_request(
        srv.http_addr,
        "POST",
        "/api/status",
        &format!("Authorization: Bearer {tok}\r\n"),
        b"{}",
    )
    .await;
    assert_eq!(s, 403, "{}", String::from_utf8_lossy(&body));
    srv.stop().await;
}

#[tokio::test]
async fn openapi_document_is_generated_from_the_table() {
    let api = Api::start().await;
    let (s, _, body) = http_request(api.srv.http_addr, "GET", "/api/openapi.json", "", b"").await;
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    for c in palaver_admin::COMMANDS {
        let op = &doc["paths"][format!("/api/{}", c.name)]["post"];
        assert_eq!(op["operationId"], c.name);
        let props = &op["requestBody"]["content"]["application/json"]["schema"]["properties"];
        for a in c.args {
            assert!(props[a.name].is_object(), "{}: {}", c.name, a.name);
            if let Some(old) = a.old_name {
                assert_eq!(props[old]["deprecated"], true, "{}: {old}", c.name);
            }
        }
    }
    let room = &doc["paths"]["/api/create_room"]["post"];
    assert_eq!(room["tags"], json!(["muc"]));
    assert_eq!(
        room["requestBody"]["content"]["application/json"]["schema"]["required"],
        json!(["room", "service", "host"])
    );
    api.srv.stop().await;
}

#[tokio::test]
async fn account_commands() {
    let api = Api::start().await;
    // register
    let v = api
        .ok(
            "register",
            json!({"user": "carol", "host": DOMAIN, "password": "pw"}),
        )
        .await;
    assert!(v.is_string());
    assert_eq!(
        api.status(
            "register",
            json!({"user": "carol", "host": DOMAIN, "password": "pw"})
        )
        .await,
        409
    );
    assert_eq!(
        api.status("register", json!({"user": "carol", "host": DOMAIN}))
            .await,
        400
    );
    assert_eq!(
        api.status(
            "register",
            json!({"user": "x", "host": "nothere.test", "password": "p"})
        )
        .await,
        400
    );
    // check_account
    api.ok("check_account", u("carol")).await;
    assert_eq!(api.status("check_account", u("nobody")).await, 404);
    assert_eq!(
        api.status("check_account", json!({"user": "a b"})).await,
        400
    );
    // check_password (rescode)
    let mut a = u("carol");
    a["password"] = json!("pw");
    assert_eq!(api.ok("check_password", a.clone()).await, json!(0));
    a["password"] = json!("bad");
    assert_eq!(api.ok("check_password", a).await, json!(1));
    assert_eq!(
        api.ok(
            "check_password",
            json!({"user": "nobody", "host": DOMAIN, "password": "x"})
        )
        .await,
        json!(1)
    );
    assert_eq!(api.status("check_password", u("carol")).await, 400);
    // change_password
    api.ok(
        "change_password",
        json!({"user": "carol", "host": DOMAIN, "newpass": "pw2"}),
    )
    .await;
    assert_eq!(
        api.ok(
            "check_password",
            json!({"user": "carol", "host": DOMAIN, "password": "pw2"})
        )
        .await,
        json!(0)
    );
    assert_eq!(
        api.status(
            "change_password",
            json!({"user": "nobody", "host": DOMAIN, "newpass": "x"})
        )
        .await,
        404
    );
    assert_eq!(api.status("change_password", u("carol")).await, 400);
    // registered_users / registered_vhosts
    let users = api.ok("registered_users", json!({"host": DOMAIN})).await;
    assert_eq!(users, json!(["admin", "alice", "bob", "carol"]));
    assert_eq!(api.status("registered_users", json!({})).await, 400);
    assert_eq!(
        api.ok("registered_vhosts", json!({})).await,
        json!([DOMAIN, DOMAIN2])
    );
    // stats
    assert_eq!(
        api.ok("stats", json!({"name": "registeredusers"})).await,
        json!({"stat": 4})
    );
    assert_eq!(api.status("stats", json!({"name": "bogus"})).await, 400);
    // vCard
    assert_eq!(
        api.status(
            "get_vcard",
            json!({"user": "carol", "host": DOMAIN, "name": "FN"})
        )
        .await,
        404
    );
    assert_eq!(
        api.ok(
            "set_vcard",
            json!({"user": "carol", "host": DOMAIN, "name": "FN", "content": "Carol C"})
        )
        .await,
        json!(0)
    );
    assert_eq!(
        api.ok(
            "get_vcard",
            json!({"user": "carol", "host": DOMAIN, "name": "fn"})
        )
        .await,
        json!("Carol C")
    );
    assert_eq!(
        api.status(
            "set_vcard",
            json!({"user": "nobody", "host": DOMAIN, "name": "FN", "content": "x"})
        )
        .await,
        404
    );
    assert_eq!(
        api.status(
            "get_vcard",
            json!({"user": "carol", "host": DOMAIN, "name": "<x>"})
        )
        .await,
        400
    );
    // get_last
    let v = api.ok("get_last", u("carol")).await;
    assert_eq!(v["status"], "NOT FOUND");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(api.status("get_last", u("nobody")).await, 404);
    assert_eq!(api.status("get_last", json!({"host": DOMAIN})).await, 400);
    // get_offline_count
    assert_eq!(
        api.ok("get_offline_count", u("carol")).await,
        json!({"value": 0})
    );
    assert_eq!(api.status("get_offline_count", u("nobody")).await, 404);
    assert_eq!(api.status("get_offline_count", json!({})).await, 400);
    // XEP-0227 export through the API
    let v = api
        .ok("export_piefxis_host", json!({"host": DOMAIN, "file": "-"}))
        .await;
    assert!(v["xml"].as_str().unwrap().contains("carol"));
    assert_eq!(
        api.status("export_piefxis_host", json!({"host": DOMAIN}))
            .await,
        400
    );
    assert_eq!(
        api.status("import_piefxis", json!({"file": "/nonexistent/file.xml"}))
            .await
            / 100,
        5
    );
    // unregister
    api.ok("unregister", u("carol")).await;
    assert_eq!(api.status("unregister", u("carol")).await, 404);
    assert_eq!(
        api.status("unregister", json!({"user": "carol"})).await,
        400
    );
    api.srv.stop().await;
}

#[tokio::test]
async fn session_roster_and_stanza_commands() {
    let api = Api::start().await;
    let mut alice = raw_login(api.srv.addr, "alice", DOMAIN, "alicepw", "r1").await;
    alice
        .send("<presence><show>away</show><status>lunch</status></presence>")
        .await;
    alice.until("</presence>").await;
    // status / connected_users*
    let v = api.ok("status", json!({})).await;
    assert!(v.as_str().unwrap().contains("running"), "{v}");
    assert_eq!(
        api.ok("connected_users", json!({})).await,
        json!(["alice@localhost/r1"])
    );
    assert_eq!(
        api.ok("connected_users_number", json!({})).await,
        json!({"num_sessions": 1})
    );
    assert_eq!(
        api.ok("stats", json!({"name": "onlineusers"})).await,
        json!({"stat": 1})
    );
    let info = api.ok("connected_users_info", json!({})).await;
    assert_eq!(info[0]["jid"], "alice@localhost/r1");
    assert_eq!(info[0]["status"], "away");
    assert_eq!(info[0]["statustext"], "lunch");
    let v = api.ok("user_sessions_info", u("alice")).await;
    assert_eq!(v[0]["resource"], "r1");
    assert_eq!(api.ok("user_sessions_info", u("nobody")).await, json!([]));
    assert_eq!(
        api.status("user_sessions_info", json!({"user": "alice"}))
            .await,
        400
    );
    assert_eq!(api.ok("user_resources", u("alice")).await, json!(["r1"]));
    assert_eq!(api.ok("get_last", u("alice")).await["status"], "ONLINE");
    // send_message
    assert_eq!(
        api.ok("send_message", json!({"type": "chat", "from": "admin@localhost", "to": "alice@localhost/r1", "subject": "", "body": "hello from REST"})).await,
        json!(0)
    );
    let m = alice.until("</message>").await;
    assert!(
        m.contains("hello from REST") && m.contains("from='admin@localhost'"),
        "{m}"
    );
    assert_eq!(
        api.status("send_message", json!({"type": "bogus", "from": "admin@localhost", "to": "alice@localhost", "subject": "", "body": "x"})).await,
        400
    );
    assert_eq!(
        api.status("send_message", json!({"type": "chat", "from": "@@", "to": "alice@localhost", "subject": "", "body": "x"})).await,
        400
    );
    // Unknown user: offline storage refuses nothing-existent accounts; to bob (offline) it is stored.
    api.ok("send_message", json!({"type": "normal", "from": "admin@localhost", "to": "bob@localhost", "subject": "s", "body": "for later"})).await;
    let mut n = json!({});
    for _ in 0..100 {
        n = api.ok("get_offline_count", u("bob")).await;
        if n == json!({"value": 1}) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(n, json!({"value": 1}));
    // send_stanza
    assert_eq!(
        api.ok("send_stanza", json!({"from": "bob@localhost/x", "to": "alice@localhost/r1", "stanza": "<message type='chat'><body>raw stanza</body></message>"})).await,
        json!(0)
    );
    let m = alice.until("</message>").await;
    assert!(
        m.contains("raw stanza") && m.contains("from='bob@localhost/x'"),
        "{m}"
    );
    assert_eq!(
        api.status(
            "send_stanza",
            json!({"from": "bob@localhost", "to": "alice@localhost", "stanza": "<message"})
        )
        .await,
        400
    );
    assert_eq!(
        api.status(
            "send_stanza",
            json!({"from": "bob@localhost", "to": "alice@localhost", "stanza": "<foo/>"})
        )
        .await,
        400
    );
    // roster
    assert_eq!(api.ok("get_roster", u("alice")).await, json!([]));
    assert_eq!(api.status("get_roster", u("nobody")).await, 404);
    let item = json!({"localuser": "alice", "localhost": DOMAIN, "user": "bob", "host": DOMAIN, "nick": "Bobby", "groups": ["Friends", "Work"], "subs": "both"});
    assert_eq!(api.ok("add_rosteritem", item.clone()).await, json!(0));
    let push = alice.until("</iq>").await;
    assert!(
        push.contains("jabber:iq:roster") && push.contains("Bobby"),
        "{push}"
    );
    let r = api.ok("get_roster", u("alice")).await;
    assert_eq!(r[0]["jid"], "bob@localhost");
    assert_eq!(r[0]["nick"], "Bobby");
    assert_eq!(r[0]["subscription"], "both");
    assert_eq!(r[0]["groups"], json!(["Friends", "Work"]));
    let mut bad = item.clone();
    bad["subs"] = json!("sideways");
    assert_eq!(api.status("add_rosteritem", bad).await, 400);
    let mut unknown = item.clone();
    unknown["localuser"] = json!("nobody");
    assert_eq!(api.status("add_rosteritem", unknown).await, 404);
    let del = json!({"localuser": "alice", "localhost": DOMAIN, "user": "bob", "host": DOMAIN});
    assert_eq!(api.ok("delete_rosteritem", del.clone()).await, json!(0));
    let push = alice.until("</iq>").await;
    assert!(push.contains("subscription='remove'"), "{push}");
    assert_eq!(api.status("delete_rosteritem", del).await, 404);
    assert_eq!(
        api.status("delete_rosteritem", json!({"localuser": "alice"}))
            .await,
        400
    );
    assert_eq!(api.ok("get_roster", u("alice")).await, json!([]));
    // kick_session
    assert_eq!(
        api.status(
            "kick_session",
            json!({"user": "alice", "host": DOMAIN, "resource": "nope", "reason": "x"})
        )
        .await,
        404
    );
    assert_eq!(api.status("kick_session", u("alice")).await, 400);
    assert_eq!(
        api.ok(
            "kick_session",
            json!({"user": "alice", "host": DOMAIN, "resource": "r1", "reason": "maintenance"})
        )
        .await,
        json!(0)
    );
    let closed = alice.until_closed().await;
    assert!(
        closed.contains("policy-violation") && closed.contains("maintenance"),
        "{closed}"
    );
    // kick_user
    let mut alice = raw_login(api.srv.addr, "alice", DOMAIN, "alicepw", "r2").await;
    assert_eq!(
        api.ok("kick_user", u("alice")).await,
        json!({"num_resources": 1})
    );
    alice.until_closed().await;
    assert_eq!(
        api.ok("kick_user", u("nobody")).await,
        json!({"num_resources": 0})
    );
    assert_eq!(api.status("kick_user", json!({})).await, 400);
    api.srv.stop().await;
}

const SVC: &str = "conference.localhost";

fn room(name: &str) -> Value {
    json!({"room": name, "service": SVC})
}

/// The room commands (ejabberd's mod_muc_admin names) on the live MUC
/// rooms: a room created by the API is joinable, options change what
/// occupants see, destroying it tells its occupants; over REST and over
/// the control channel `palaver ctl` uses.
#[tokio::test]
async fn room_commands() {
    let mut api = Api::start().await;
    let create = |r: &str| json!({"room": r, "service": SVC, "host": DOMAIN});
    assert_eq!(api.ok("create_room", create("lobby")).await, json!(0));
    // ejabberd's earlier argument name `name`; the name is nodeprepped.
    assert_eq!(
        api.ok(
            "create_room",
            json!({"name": "Hall", "service": SVC, "host": DOMAIN})
        )
        .await,
        json!(0)
    );
    assert_eq!(api.status("create_room", create("lobby")).await, 409);
    // Bad arguments.
    for bad in [
        json!({"room": "x", "service": SVC}),
        json!({"room": "x", "service": "nothere.localhost", "host": DOMAIN}),
        json!({"room": "x", "service": SVC, "host": DOMAIN2}),
        json!({"room": "a b", "service": SVC, "host": DOMAIN}),
        json!({"room": "a@b", "service": SVC, "host": DOMAIN}),
        json!({"room": "x", "name": "y", "service": SVC, "host": DOMAIN}),
    ] {
        let (s, v) = api.call("create_room", bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    // muc_online_rooms: a service, a virtual host (the old `host`), global.
    let both = json!(["hall@conference.localhost", "lobby@conference.localhost"]);
    assert_eq!(
        api.ok("muc_online_rooms", json!({"service": SVC})).await,
        both
    );
    assert_eq!(
        api.ok("muc_online_rooms", json!({"service": "global"}))
            .await,
        both
    );
    assert_eq!(
        api.ok("muc_online_rooms", json!({"host": DOMAIN})).await,
        both
    );
    assert_eq!(
        api.ok(
            "muc_online_rooms",
            json!({"service": "conference.example.test"})
        )
        .await,
        json!([])
    );
    assert_eq!(
        api.status("muc_online_rooms", json!({"service": "nope.test"}))
            .await,
        400
    );
    assert_eq!(api.status("muc_online_rooms", json!({})).await, 400);

    // A client joins the room the API created: open at once, not new to it.
    let mut alice = raw_login(api.srv.addr, "alice", DOMAIN, "alicepw", "r1").await;
    alice
        .send("<presence to='lobby@conference.localhost/Al'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    let joined = alice.until("code='110'").await;
    assert!(!joined.contains("code='201'"), "not a new room: {joined}");
    alice.until("</presence>").await;
    assert_eq!(
        api.ok("get_room_occupants", room("lobby")).await,
        json!([{"jid": "alice@localhost/r1", "nick": "Al", "role": "participant"}])
    );
    assert_eq!(api.ok("get_room_occupants", room("hall")).await, json!([]));
    assert_eq!(api.status("get_room_occupants", room("nope")).await, 404);
    assert_eq!(
        api.status("get_room_occupants", json!({"room": "lobby"}))
            .await,
        400
    );

    // Options, with ejabberd's names.
    let opts = api.ok("get_room_options", room("lobby")).await;
    let opt = |o: &Value, n: &str| -> Value {
        o.as_array()
            .expect("list")
            .iter()
            .find(|x| x["name"] == n)
            .map(|x| x["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(opt(&opts, "members_only"), "false");
    assert_eq!(opt(&opts, "max_users"), "200");
    assert_eq!(opt(&opts, "title"), "");
    assert_eq!(api.status("get_room_options", room("nope")).await, 404);
    assert_eq!(
        api.status("get_room_options", json!({"service": SVC}))
            .await,
        400
    );
    let change =
        |o: &str, v: &str| json!({"room": "lobby", "service": SVC, "option": o, "value": v});
    assert_eq!(
        api.ok("change_room_option", change("title", "The Lobby"))
            .await,
        json!(0)
    );
    // The occupant is told the configuration changed (status 104).
    let m = alice.until("code='104'").await;
    assert!(m.contains("lobby@conference.localhost"), "{m}");
    let opts = api.ok("get_room_options", room("lobby")).await;
    assert_eq!(opt(&opts, "title"), "The Lobby");
    for (o, v) in [
        ("no_such_option", "1"),
        ("members_only", "maybe"),
        ("max_users", "0"),
        ("max_users", "lots"),
        ("allowpm", "everybody"),
        ("password_protected", "true"),
        ("captcha_protected", "true"),
    ] {
        let (s, r) = api.call("change_room_option", change(o, v)).await;
        assert_eq!(s, 400, "{o}={v}: {r}");
    }
    let mut unknown = change("title", "x");
    unknown["room"] = json!("nope");
    assert_eq!(api.status("change_room_option", unknown).await, 404);
    // Persistent (stored), then members-only: the occupant without
    // affiliation leaves (status 322), and the room stays although empty.
    assert_eq!(
        api.ok("change_room_option", change("persistent", "true"))
            .await,
        json!(0)
    );
    let opts = api.ok("get_room_options", room("lobby")).await;
    assert_eq!(opt(&opts, "persistent"), "true");
    // Stored before the command answered.
    let cx = api.srv.core().cx_of(DOMAIN).expect("host");
    let store = palaver_modules::muc::store::MucSql::of(&cx);
    let stored = || {
        let store = &store;
        async move {
            store
                .rooms(SVC)
                .await
                .expect("stored rooms")
                .into_iter()
                .map(|r| (r.name, r.config))
                .collect::<Vec<_>>()
        }
    };
    let rows = stored().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "lobby");
    assert!(rows[0].1.contains("The Lobby"), "{rows:?}");
    // The module's store is timed like the server's.
    let (_, _, metrics) = http_request(api.srv.http_addr, "GET", "/metrics", "", b"").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("palaver_store_seconds_count{store=\"muc\",op=\"save\"}"),
        "{metrics}"
    );
    assert_eq!(
        api.ok("change_room_option", change("members_only", "true"))
            .await,
        json!(0)
    );
    let kicked = alice.until("code='322'").await;
    assert!(kicked.contains("type='unavailable'"), "{kicked}");
    assert_eq!(api.ok("get_room_occupants", room("lobby")).await, json!([]));
    assert_eq!(
        api.ok("muc_online_rooms", json!({"service": SVC})).await,
        both
    );
    alice
        .send("<presence to='lobby@conference.localhost/Al2'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    let refused = alice.until("registration-required").await;
    assert!(refused.contains("type='error'"), "{refused}");

    // destroy_room: the occupants are told and leave.
    let mut bob = raw_login(api.srv.addr, "bob", DOMAIN, "bobpw", "b").await;
    bob.send("<presence to='hall@conference.localhost/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    bob.until("code='110'").await;
    bob.until("</presence>").await;
    assert_eq!(
        api.ok("get_room_occupants", room("hall")).await,
        json!([{"jid": "bob@localhost/b", "nick": "Bob", "role": "participant"}])
    );
    assert_eq!(api.ok("destroy_room", room("hall")).await, json!(0));
    let gone = bob.until("</presence>").await;
    assert!(
        gone.contains("type='unavailable'") && gone.contains("<destroy"),
        "{gone}"
    );
    assert_eq!(api.status("destroy_room", room("hall")).await, 404);
    assert_eq!(api.status("get_room_occupants", room("hall")).await, 404);
    assert_eq!(
        api.status("destroy_room", json!({"room": "lobby"})).await,
        400
    );
    assert_eq!(
        api.ok("muc_online_rooms", json!({"service": "global"}))
            .await,
        json!(["lobby@conference.localhost"])
    );
    // The room is gone: a message to it is refused.
    bob.send(
        "<message to='hall@conference.localhost' type='groupchat' id='g1'><body>x</body></message>",
    )
    .await;
    assert!(bob.until("</message>").await.contains("item-not-found"));

    // Forbidden: a token of another group; a user.
    let (_, tok) = palaver_admin::tokens::create(
        &api.srv.core().config().data_dir,
        vec!["accounts".into()],
        String::new(),
    )
    .await
    .unwrap();
    let (s, _) = api
        .call_as(Auth::Bearer(&tok), "create_room", create("x"))
        .await;
    assert_eq!(s, 403);
    let (s, _) = api
        .call_as(
            Auth::Basic("alice@localhost", "alicepw"),
            "muc_online_rooms",
            json!({"service": "global"}),
        )
        .await;
    assert_eq!(s, 403);
    // A token for the `muc` group may.
    let (_, muc_tok) = palaver_admin::tokens::create(
        &api.srv.core().config().data_dir,
        vec!["muc".into()],
        String::new(),
    )
    .await
    .unwrap();
    let (s, v) = api
        .call_as(Auth::Bearer(&muc_tok), "create_room", create("third"))
        .await;
    assert_eq!((s, v), (200, json!(0)));

    // The same commands through the control channel (`palaver ctl`), with
    // command-line words.
    let path = palaver_admin::control::start(api.srv.server.as_mut().expect("running"))
        .expect("control socket");
    let ctl = |words: &[&str]| {
        let path = path.clone();
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        async move {
            let cmd = palaver_admin::find(&words[0]).expect("command");
            let args = palaver_admin::command::args_from_words(cmd, &words[1..]).expect("words");
            let req = palaver_admin::Request {
                command: words[0].clone(),
                args,
            };
            let r = palaver_admin::control::call(&path, &req)
                .await
                .expect("control")
                .expect("server answers");
            Result::<Value, palaver_admin::CommandError>::from(r)
        }
    };
    assert_eq!(
        ctl(&["create_room", "ctlroom", SVC, DOMAIN]).await,
        Ok(json!(0))
    );
    assert_eq!(
        ctl(&["muc_online_rooms", "--host", DOMAIN]).await,
        Ok(json!([
            "ctlroom@conference.localhost",
            "lobby@conference.localhost",
            "third@conference.localhost"
        ]))
    );
    assert_eq!(
        ctl(&["change_room_option", "ctlroom", SVC, "public", "false"]).await,
        Ok(json!(0))
    );
    let e = ctl(&["destroy_room", "--name", "nope", "--service", SVC])
        .await
        .expect_err("unknown room");
    assert_eq!(e.code, palaver_admin::ErrorCode::NotFound);
    assert_eq!(ctl(&["destroy_room", "ctlroom", SVC]).await, Ok(json!(0)));
    // Destroying the persistent room deletes it from the store.
    assert_eq!(ctl(&["destroy_room", "lobby", SVC]).await, Ok(json!(0)));
    assert_eq!(stored().await, vec![]);
    api.srv.stop().await;
}

/// connected_users_info and user_sessions_info from the session table:
/// ejabberd's connection names per transport, address, port, priority,
/// uptime, since.
#[tokio::test]
async fn session_info_by_transport() {
    let api = Api::start().await;
    api.srv.add_user("carol", DOMAIN, "pw").await;
    let mut tcp = raw_login(api.srv.addr, "alice", DOMAIN, "alicepw", "tcp").await;
    tcp.send("<presence><priority>5</priority><status>here</status></presence>")
        .await;
    tcp.until("</presence>").await;
    let _tls = transports::tls_login(&api.srv, "alice", "alicepw", "tls").await;
    let _ws = transports::ws_login(&api.srv, "alice", "alicepw", "web").await;
    let _bosh = transports::bosh_login(&api.srv, "carol", "pw", "bosh").await;
    let info = api.ok("connected_users_info", json!({})).await;
    let by_jid = |j: &str| -> Value {
        info.as_array()
            .unwrap()
            .iter()
            .find(|s| s["jid"] == j)
            .cloned()
            .unwrap_or_else(|| panic!("{j} in {info}"))
    };
    for (jid, conn) in [
        ("alice@localhost/tcp", "c2s"),
        ("alice@localhost/tls", "c2s_tls"),
        ("alice@localhost/web", "websocket"),
        ("carol@localhost/bosh", "http_bind"),
    ] {
        let s = by_jid(jid);
        assert_eq!(s["connection"], conn, "{s}");
        assert_eq!(s["ip"], "127.0.0.1", "{s}");
        assert!(s["port"].as_u64().is_some_and(|p| p > 0), "{s}");
        assert!(s["uptime"].as_u64().is_some_and(|u| u < 600), "{s}");
        assert!(s["since"].as_str().is_some_and(|t| t.ends_with('Z')), "{s}");
    }
    let tcp_info = by_jid("alice@localhost/tcp");
    assert_eq!(tcp_info["priority"], 5);
    assert_eq!(tcp_info["status"], "available");
    assert_eq!(tcp_info["statustext"], "here");
    assert_eq!(tcp_info["resource"], "tcp");
    // No presence yet: ejabberd's -1.
    assert_eq!(by_jid("alice@localhost/web")["priority"], -1);
    assert_eq!(by_jid("alice@localhost/web")["status"], "unavailable");
    let mine = api.ok("user_sessions_info", u("alice")).await;
    let conns: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connection"].as_str().unwrap())
        .collect();
    assert_eq!(conns, ["c2s", "c2s_tls", "websocket"], "{mine}");
    assert!(mine[0].get("jid").is_none(), "{mine}");
    assert_eq!(
        api.ok("user_sessions_info", u("carol")).await[0]["connection"],
        "http_bind"
    );
    // The user's own sessions with their own credentials; not another's.
    let (s, v) = api
        .call_as(
            Auth::Basic("alice@localhost", "alicepw"),
            "user_sessions_info",
            u("alice"),
        )
        .await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(3)));
    let (s, _) = api
        .call_as(
            Auth::Basic("alice@localhost", "alicepw"),
            "user_sessions_info",
            u("carol"),
        )
        .await;
    assert_eq!(s, 403);
    api.srv.stop().await;
}
