//! Config reading: Palaver keys and ejabberd.yml compatibility.
use std::path::Path;

use super::*;

#[test]
fn parses_full_example() {
    let text = include_str!("../../../../palaver.example.yml");
    let c = Config::parse(text).unwrap();
    assert!(!c.hosts.is_empty());
    assert!(c.modules.iter().any(|m| m.name == "mod_ping"));
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = Config::parse(
        "hosts:\n  - localhost\nlisten:\n  - port: 5222\n    module: c2s\n    bogus: 1\n",
    )
    .unwrap_err();
    assert!(e.message.contains("bogus"), "{}", e.message);
    assert!(e.message.contains('6'), "{}", e.message);
    let e = Config::parse("hosts: [localhost]\nfoo: bar\n").unwrap_err();
    assert!(e.message.contains("foo"), "{}", e.message);
}

#[test]
fn bad_values() {
    let e = Config::parse("hosts:\n  - 'bad host@'\n").unwrap_err();
    assert!(
        e.message.contains("hosts") && e.message.contains("line 2"),
        "{}",
        e.message
    );
    let e = Config::parse("hosts: [a]\nlisten:\n  - port: 99999\n    module: c2s\n").unwrap_err();
    assert!(
        e.message.contains("port") || e.message.contains("99999"),
        "{}",
        e.message
    );
    let e = Config::parse("hosts: [a]\nlisten:\n  - port: 5222\n    module: smtp\n").unwrap_err();
    assert!(e.message.contains("smtp"), "{}", e.message);
    let e = Config::parse("hosts: [a]\nloglevel: loud\n").unwrap_err();
    assert!(
        e.message.contains("loglevel") && e.message.contains("line 2"),
        "{}",
        e.message
    );
    // An undefined ACL matches nobody, as in ejabberd: a warning, not an error.
    let c = Config::parse("hosts: [a]\naccess_rules:\n  register:\n    allow: [nobody]\n").unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("nobody") && w.contains("line 3")),
        "{:?}",
        c.warnings
    );
    assert!(!c.access("register", "x@a", true));
    assert!(Config::parse("").is_err());
}

#[test]
fn access_rules() {
    let c = Config::parse("hosts: [a]\nacl:\n  admin:\n    user: ['root@a']\naccess_rules:\n  configure:\n    allow: [admin]\n").unwrap();
    assert!(c.access("configure", "root@a", false));
    assert!(!c.access("configure", "bob@a", true));
    assert!(c.access("unknown_rule", "bob@a", true));
}

fn parse(text: &str) -> Config {
    Config::parse_with_env(text, &[]).unwrap_or_else(|e| panic!("{}", e.message))
}

#[test]
fn access_rules_keep_their_order() {
    // The bug: a sorted map evaluated `allow` before `deny`.
    let c = parse(
        "hosts: [a]\nacl:\n  blocked:\n    user: [bad@a]\naccess_rules:\n  c2s:\n    deny: [blocked]\n    allow: [all]\n",
    );
    assert!(!c.access("c2s", "bad@a", true));
    assert!(c.access("c2s", "good@a", false));
    // The same in ejabberd's list form, and the reverse order.
    let c = parse(
        "hosts: [a]\nacl:\n  blocked:\n    user: bad@a\naccess_rules:\n  c2s:\n    - allow: all\n    - deny: blocked\n",
    );
    assert!(c.access("c2s", "bad@a", false));
    let c = parse(
        "hosts: [a]\naccess_rules:\n  register: {allow: all}\n  closed:\n    - deny\n  open: allow\n",
    );
    assert!(c.access("register", "x@a", false));
    assert!(!c.access("closed", "x@a", true));
    assert!(c.access("open", "x@a", false));
    // Nothing matches: deny; an absent rule: the caller's default.
    let c = parse(
        "hosts: [a]\nacl:\n  admin: {user: root@a}\naccess_rules:\n  configure: {allow: admin}\n",
    );
    assert!(!c.access("configure", "bob@a", true));
    assert!(c.access("unknown_rule", "bob@a", true));
}

#[test]
fn access_entry_lists_need_every_condition() {
    // ejabberd: `allow: [a, b]` matches only who is in both.
    let c = parse(
        "hosts: [a, b]\nacl:\n  admin: {user: [root@a, root@b]}\n  on_a: {server: a}\naccess_rules:\n  r:\n    allow: [admin, on_a]\n  inline:\n    - allow:\n        - user: eve@b\n",
    );
    assert!(c.access("r", "root@a", false));
    assert!(!c.access("r", "root@b", false));
    assert!(c.access("inline", "eve@b", false));
    assert!(!c.access("inline", "eve@a", false));
}

#[test]
fn acl_forms() {
    let c = parse(
        "hosts: [a.example, b.example]\nacl:\n  admin:\n    user: [admin, 'root@elsewhere.org']\n  local:\n    user_regexp: ''\n  globbed:\n    user_glob: 'test*'\n  domain:\n    server: b.example\n  loopback:\n    ip: [127.0.0.0/8, '::1/128']\n  both:\n    - user: {ann: a.example}\n    - server_glob: '*.org'\n",
    );
    // `user: admin` without a domain: the local part on every served host.
    assert!(c.acl_match("admin", "admin@a.example"));
    assert!(c.acl_match("admin", "admin@b.example"));
    assert!(!c.acl_match("admin", "admin@remote.example"));
    assert!(c.acl_match("admin", "root@elsewhere.org"));
    assert!(c.acl_match("local", "anyone@b.example"));
    assert!(!c.acl_match("local", "anyone@remote.example"));
    assert!(c.acl_match("globbed", "tester@a.example"));
    assert!(!c.acl_match("globbed", "atest@a.example"));
    assert!(c.acl_match("domain", "x@b.example"));
    assert!(c.acl_match("both", "ann@a.example"));
    assert!(c.acl_match("both", "x@y.org"));
    assert!(!c.acl_match("undefined", "x@a.example"));
    let ip = Some("127.0.0.1".parse().unwrap());
    assert!(c.acl_match_as(None, "loopback", Subject { jid: None, ip }));
    let e = Config::parse_with_env("hosts: [a]\nacl:\n  x:\n    colour: red\n", &[]).unwrap_err();
    assert!(
        e.message.contains("colour") && e.message.contains("line 4"),
        "{}",
        e.message
    );
}

#[test]
fn ejabberd_keys_warn_unknown_keys_fail() {
    let c = parse("hosts: [a]\nlog_rotate_count: 1\nc2s_ciphers: HIGH\n");
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("`log_rotate_count` (line 2"),
        "{:?}",
        c.warnings
    );
    assert!(c.warnings[0].contains("ignored"));
    let e = Config::parse_with_env("hosts: [a]\n\nlog_rotate_cnt: 1\n", &[]).unwrap_err();
    assert!(
        e.message.contains("log_rotate_cnt") && e.message.contains("line 3, column 1"),
        "{}",
        e.message
    );
}

#[test]
fn listeners_with_ejabberd_names() {
    let c = parse(
        "hosts: [a]\nlisten:\n  - port: 5222\n    ip: '::'\n    module: ejabberd_c2s\n    starttls_required: true\n    shaper: c2s_shaper\n    access: c2s\n    protocol_options: [no_sslv3]\n  - port: 5269\n    module: ejabberd_s2s_in\n  - port: 5443\n    module: ejabberd_http\n    tls: true\n    request_handlers:\n      /api: mod_http_api\n      /bosh: mod_bosh\n      /websocket: ejabberd_http_ws\n  - port: 3478\n    transport: udp\n    module: ejabberd_stun\n    use_turn: true\n",
    );
    assert_eq!(c.listen.len(), 3);
    assert_eq!(c.listen[0].module, ListenModule::C2s);
    assert!(c.listen[0].starttls && c.listen[0].starttls_required);
    assert_eq!(c.listen[1].module, ListenModule::S2s);
    assert_eq!(c.listen[2].module, ListenModule::Http);
    assert!(c.listen[2].tls);
    assert_eq!(c.listen[2].websocket_path, "/websocket");
    let w = c.warnings.join("\n");
    for needle in [
        "shaper",
        "access",
        "protocol_options",
        "mod_http_api",
        "ejabberd_stun",
    ] {
        assert!(w.contains(needle), "{needle}: {w}");
    }
    assert!(!w.contains("mod_bosh"), "{w}");
    let e = Config::parse_with_env(
        "hosts: [a]\nlisten:\n  - port: 1\n    module: ejabberd_smtp\n",
        &[],
    )
    .unwrap_err();
    assert!(e.message.contains("ejabberd_smtp"), "{}", e.message);
}

#[test]
fn macros_and_environment() {
    let text = "define_macro:\n  HOST: example.org\n  CIPHERS: 'HIGH:!aNULL'\n  OPTS: [no_sslv3, no_tlsv1]\n  ADMIN: 'admin@@HOST@'\nhosts: [HOST]\nc2s_ciphers: CIPHERS\nc2s_protocol_options: OPTS\nacl:\n  admin:\n    user: ADMIN\nsql_password: ${PW}\nsql_username: '$${literal}'\n";
    let c = Config::parse_with_env(text, &[("PW", "s3cret")]).unwrap();
    assert_eq!(c.hosts, ["example.org"]);
    assert!(c.acl_match("admin", "admin@example.org"));
    assert_eq!(c.sql.password.as_deref(), Some("s3cret"));
    assert_eq!(c.sql.username.as_deref(), Some("${literal}"));
    // ejabberd's own form: EJABBERD_MACRO_<NAME> overrides a macro.
    let c =
        Config::parse_with_env(text, &[("PW", "x"), ("EJABBERD_MACRO_HOST", "other.net")]).unwrap();
    assert_eq!(c.hosts, ["other.net"]);
    let e = Config::parse_with_env(text, &[]).unwrap_err();
    assert!(
        e.message.contains("sql_password")
            && e.message.contains("PW")
            && e.message.contains("line 12"),
        "{}",
        e.message
    );
    let e = Config::parse_with_env("define_macro:\n  A: B\n  B: A\nhosts: [A]\n", &[]).unwrap_err();
    assert!(e.message.contains("itself"), "{}", e.message);
}

#[test]
fn include_config_file() {
    let dir = std::env::temp_dir().join(format!("palaver-include-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("acl.yml"),
        "acl:\n  admin:\n    user: root@a\nloglevel: debug\n",
    )
    .unwrap();
    std::fs::write(dir.join("mods.yml"), "modules:\n  mod_ping: {}\n").unwrap();
    std::fs::write(
        dir.join("main.yml"),
        "hosts: [a]\ninclude_config_file:\n  acl.yml:\n    allow_only: [acl]\n  mods.yml: {}\n",
    )
    .unwrap();
    let c = Config::load(&dir.join("main.yml")).unwrap_or_else(|e| panic!("{}", e.message));
    assert!(c.acl_match("admin", "root@a"));
    assert_eq!(c.loglevel, "info", "loglevel was not allowed");
    assert_eq!(c.modules.len(), 1);
    std::fs::write(dir.join("bad.yml"), "bogus_key: 1\n").unwrap();
    std::fs::write(
        dir.join("main2.yml"),
        "hosts: [a]\ninclude_config_file: bad.yml\n",
    )
    .unwrap();
    let e = Config::load(&dir.join("main2.yml")).unwrap_err();
    assert!(e.message.contains("bad.yml, line 1"), "{}", e.message);
    std::fs::write(
        dir.join("loop.yml"),
        "include_config_file: [loop.yml]\nhosts: [a]\n",
    )
    .unwrap();
    let e = Config::load(&dir.join("loop.yml")).unwrap_err();
    assert!(e.message.contains("includes itself"), "{}", e.message);
    // A device is not a config file: refused at once, not read forever.
    std::fs::write(
        dir.join("dev.yml"),
        "hosts: [a]\ninclude_config_file: /dev/zero\n",
    )
    .unwrap();
    let e = Config::load(&dir.join("dev.yml")).unwrap_err();
    assert!(e.message.contains("not a regular file"), "{}", e.message);
    let e = Config::load(Path::new("/dev/zero")).unwrap_err();
    assert!(e.message.contains("not a regular file"), "{}", e.message);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_config_per_host() {
    let c = parse(
        "hosts: [a, b, c]\nmodules:\n  mod_ping: {}\n  mod_version: {}\nacl:\n  admin: {user: root@a}\naccess_rules:\n  register: {allow: all}\nhost_config:\n  b:\n    modules:\n      mod_ping: {}\n    access_rules:\n      register: {deny: all}\n    auth_method: [sql]\n    s2s_access: all\n  nothere:\n    modules: {}\nappend_host_config:\n  c:\n    modules:\n      mod_time: {}\n",
    );
    let names = |h: &str| {
        c.modules_for(h)
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("a"), ["mod_ping", "mod_version"]);
    assert_eq!(names("b"), ["mod_ping"]);
    assert_eq!(names("c"), ["mod_ping", "mod_version", "mod_time"]);
    assert_eq!(c.modules.len(), 2, "the global list is unchanged");
    assert!(c.access_on("a", "register", "x@a", false));
    assert!(!c.access_on("b", "register", "x@b", true));
    assert!(c.access_on("c", "register", "x@c", false));
    let w = c.warnings.join("\n");
    assert!(
        w.contains("host_config.b.s2s_access") && w.contains("nothere"),
        "{w}"
    );
    let e = Config::parse_with_env("hosts: [a]\nhost_config:\n  a:\n    listen: []\n", &[])
        .unwrap_err();
    assert!(e.message.contains("per host"), "{}", e.message);
}

#[test]
fn shapers_are_kept() {
    let c = parse(
        "hosts: [a]\nacl:\n  admin: {user: root@a}\nshaper:\n  normal:\n    rate: 3000\n    burst_size: 20000\n  fast: 100000\nshaper_rules:\n  max_user_sessions: 10\n  c2s_shaper:\n    none: admin\n    normal: all\n  max_user_offline_messages:\n    5000: admin\n    100: all\n",
    );
    assert_eq!(
        c.shapers["normal"],
        Shaper {
            rate: 3000,
            burst_size: 20000
        }
    );
    assert_eq!(c.shapers["fast"].rate, 100_000);
    assert_eq!(
        c.shaper_rule_value(None, "c2s_shaper", "root@a"),
        Some("none")
    );
    assert_eq!(
        c.shaper_rule_value(None, "c2s_shaper", "bob@a"),
        Some("normal")
    );
    assert_eq!(
        c.shaper_rule_value(None, "max_user_offline_messages", "bob@a"),
        Some("100")
    );
    assert_eq!(
        c.shaper_rule_value(None, "max_user_sessions", "bob@a"),
        Some("10")
    );
    assert!(
        c.warnings.iter().any(|w| w.contains("not enforced")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn ejabberd_values() {
    let c = parse(
        "hosts: [a]\nloglevel: 4\ndefault_db: mnesia\nauth_method: [mnesia]\nauth_password_format: scram\ndisable_sasl_mechanisms: [digest-md5, X-OAUTH2]\nsql_query_timeout: 2 minutes\n",
    );
    assert_eq!(c.loglevel, "info");
    assert_eq!(c.default_db, DbKind::Sqlite);
    assert_eq!(c.sql.query_timeout, Some(120));
    // Disabling mechanisms Palaver never offers needs no warning.
    assert!(
        !c.warnings.iter().any(|w| w.contains("disable_sasl")),
        "{:?}",
        c.warnings
    );
    let e = Config::parse_with_env("hosts: [a]\nauth_method: ldap\n", &[]).unwrap_err();
    assert!(e.message.contains("ldap"), "{}", e.message);
}

/// A module with strict options, as mod_roster's.
struct Strict;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictOptions {
    #[serde(default)]
    versioning: bool,
}

impl crate::module::Module for Strict {
    const NAME: &'static str = "mod_roster";
    type Options = StrictOptions;
    fn start(_: &mut crate::module::HostSetup, _: StrictOptions) -> Result<Self, String> {
        Ok(Strict)
    }
}

#[test]
fn modules_palaver_lacks_are_warnings() {
    let registry = [crate::module::ModuleDef::of::<Strict>()];
    let mut c = parse(
        "hosts: [a]\nmodules:\n  mod_roster:\n    versioning: true\n    store_current_id: false\n  mod_muc:\n    access: whatever\n    bogus: 1\n",
    );
    let w = c.resolve_modules(&registry).unwrap();
    assert_eq!(c.modules.len(), 1);
    assert_eq!(
        c.modules[0].options,
        serde_json::json!({"versioning": true})
    );
    assert!(
        w.iter().any(|w| w.contains("mod_roster.store_current_id")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("mod_muc") && w.contains("not available")),
        "{w:?}"
    );
    assert!(
        c.resolve_modules(&registry).unwrap().is_empty(),
        "idempotent"
    );
    // Not an ejabberd option of that module: left for the module to refuse.
    let mut c = parse("hosts: [a]\nmodules:\n  mod_roster:\n    versoning: true\n");
    c.resolve_modules(&registry).unwrap();
    assert!(c.modules[0].options.get("versoning").is_some());
    // No one's module: an error naming it and its line.
    let mut c = parse("hosts: [a]\nmodules:\n  mod_nope: {}\n");
    let e = c.resolve_modules(&registry).unwrap_err();
    assert!(
        e.message.contains("mod_nope") && e.message.contains("line 3"),
        "{}",
        e.message
    );
}

#[test]
fn inline_access_rules_in_module_options() {
    let c = Config::parse("hosts: [a]\nacl:\n  admin: {user: [root@a]}\n").expect("config");
    let v: serde_json::Value = serde_json::json!([{"allow": "admin"}, "deny"]);
    let rule = super::inline_access_rule("mod_x.access", &v).expect("rule");
    assert!(c.inline_access("a", &rule, "root@a"));
    assert!(!c.inline_access("a", &rule, "eve@a"));
    let all =
        super::inline_access_rule("mod_x.access", &serde_json::json!(["allow"])).expect("rule");
    assert!(c.inline_access("a", &all, "eve@a"));
    assert!(
        super::inline_access_rule("mod_x.access", &serde_json::json!([{"maybe": "admin"}]))
            .is_err()
    );
}

#[test]
fn s2s_and_component_options() {
    let c = parse(
        "hosts: [a.test]\ns2s_use_starttls: required\ns2s_access: s2s\ns2s_timeout: 5 minutes\ns2s_max_retry_delay: 30\ns2s_hosts:\n  b.test: '127.0.0.1:5999'\nlisten:\n  - port: 5269\n    module: ejabberd_s2s_in\n  - port: 5347\n    module: ejabberd_service\n    hosts:\n      bot.a.test:\n        password: secret\n",
    );
    assert_eq!(c.s2s.use_starttls, crate::config::S2sTls::Required);
    assert_eq!(c.s2s.access.as_deref(), Some("s2s"));
    assert_eq!(c.s2s.idle_timeout, 300);
    assert_eq!(c.s2s.max_retry_delay, 30);
    assert_eq!(
        c.s2s.hosts.get("b.test").map(String::as_str),
        Some("127.0.0.1:5999")
    );
    assert_eq!(c.listen[1].module, ListenModule::Component);
    assert_eq!(
        c.listen[1].component.secret_for("bot.a.test"),
        Some("secret")
    );
    assert_eq!(c.listen[1].component.secret_for("other.a.test"), None);
    let e = Config::parse_with_env(
        "hosts: [a]\nlisten:\n  - port: 5347\n    module: ejabberd_service\n",
        &[],
    )
    .unwrap_err();
    assert!(e.message.contains("password"), "{}", e.message);
    let e = Config::parse_with_env("hosts: [a]\ns2s_hosts:\n  b: nowhere\n", &[]).unwrap_err();
    assert!(e.message.contains("s2s_hosts.b"), "{}", e.message);
}
