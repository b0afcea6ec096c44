//! The stores that live beside their modules, on both backends: SQLite
//! always, PostgreSQL when `PALAVER_TEST_PG_URL` is set (required in CI).

use palaver_modules::announce::store::{KvSql, MIGRATIONS as KV_MIGRATIONS};
use palaver_modules::auth_fast::store::{FastSql, MIGRATIONS as FAST_MIGRATIONS, Row};
use palaver_modules::blocking::store::{BlocksSql, MIGRATIONS as BLOCK_MIGRATIONS};
use palaver_modules::last::store::{LastSql, MIGRATIONS as LAST_MIGRATIONS};
use palaver_modules::mam::store::{
    Filter, Item, MIGRATIONS as MAM_MIGRATIONS, MamSql, StoredPrefs,
};
use palaver_modules::muc::store::{
    ArchiveQuery, Archived, MIGRATIONS as MUC_MIGRATIONS, MucSql, StoredRoom,
};
use palaver_modules::push::store::{MIGRATIONS as PUSH_MIGRATIONS, PushSql};
use palaver_storage::Storage;

/// Every backend available here, each with the modules' tables migrated.
async fn backends(test: &str) -> Vec<(Storage, Box<dyn std::any::Any>)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open_sqlite(&dir.path().join("db.sqlite"))
        .await
        .expect("sqlite");
    out.push((s, Box::new(dir) as Box<dyn std::any::Any>));
    if let Some(db) = palaver_storage::postgres::testdb::TestDb::create(test).await {
        let s = Storage::open_postgres(&db.url, &Default::default())
            .await
            .expect("postgres");
        out.push((s, Box::new(db)));
    }
    for (s, _) in &out {
        s.db.migrate_module("mod_last", LAST_MIGRATIONS)
            .await
            .expect("migrate");
        s.db.migrate_module("mod_blocking", BLOCK_MIGRATIONS)
            .await
            .expect("migrate");
        s.db.migrate_module("mod_announce", KV_MIGRATIONS)
            .await
            .expect("migrate");
        s.db.migrate_module("mod_mam", MAM_MIGRATIONS)
            .await
            .expect("migrate");
        s.db.migrate_module("mod_push", PUSH_MIGRATIONS)
            .await
            .expect("migrate");
        s.db.migrate_module("mod_auth_fast", FAST_MIGRATIONS)
            .await
            .expect("migrate");
        s.db.migrate_module("mod_muc", MUC_MIGRATIONS)
            .await
            .expect("migrate");
        // Applying again is a no-op.
        s.db.migrate_module("mod_last", LAST_MIGRATIONS)
            .await
            .expect("again");
        assert_eq!(s.db.module_version("mod_last").await.expect("v"), 1);
    }
    out
}

#[tokio::test]
async fn last_activity_round_trip() {
    for (s, _dir) in backends("last_activity_round_trip").await {
        let l = LastSql::new(s.db.clone());
        assert_eq!(l.last("h", "u").await.expect("q"), None);
        l.set_last("h", "u", 1, "a").await.expect("set");
        l.set_last("h", "u", 2, "").await.expect("set");
        l.set_last("h", "v", 10, "bye").await.expect("set");
        assert_eq!(l.last("h", "u").await.expect("q"), Some((2, String::new())));
        l.remove_last("h", "u").await.expect("rm");
        l.remove_last("h", "u").await.expect("rm twice");
        assert_eq!(l.last("h", "u").await.expect("q"), None);
        assert_eq!(l.last("h", "v").await.expect("q"), Some((10, "bye".into())));
    }
}

#[tokio::test]
async fn host_settings_and_user_flags() {
    for (s, _dir) in backends("host_settings_and_user_flags").await {
        let kv = KvSql::new(s.db.clone());
        kv.host_set("h", "motd", Some("one")).await.expect("set");
        kv.host_set("h", "motd", Some("two")).await.expect("set");
        assert_eq!(
            kv.host_get("h", "motd").await.expect("q").as_deref(),
            Some("two")
        );
        assert_eq!(kv.host_get("h2", "motd").await.expect("q"), None);
        kv.host_set("h", "motd", None).await.expect("delete");
        assert_eq!(kv.host_get("h", "motd").await.expect("q"), None);
        kv.host_set("h", "absent", None)
            .await
            .expect("delete absent");

        assert!(kv.user_flag_set("h", "u", "motd").await.expect("q"));
        assert!(!kv.user_flag_set("h", "u", "motd").await.expect("q"));
        assert!(kv.user_flag_set("h", "v", "motd").await.expect("q"));
        assert!(kv.user_flag_set("h", "u", "other").await.expect("q"));
        assert!(kv.user_flag_set("h2", "u", "motd").await.expect("q"));
        kv.user_flag_clear_all("h", "motd").await.expect("clear");
        assert!(kv.user_flag_set("h", "v", "motd").await.expect("q"));
        assert!(!kv.user_flag_set("h", "u", "other").await.expect("q"));
        assert!(!kv.user_flag_set("h2", "u", "motd").await.expect("q"));
        kv.remove_user_flags("h", "u").await.expect("rm");
        assert!(kv.user_flag_set("h", "u", "other").await.expect("q"));
        assert!(!kv.user_flag_set("h", "v", "motd").await.expect("q"));
    }
}

#[tokio::test]
async fn a_newer_module_schema_is_refused() {
    for (s, _dir) in backends("a_newer_module_schema_is_refused").await {
        let err = s.db.migrate_module("mod_last", &[]).await;
        assert!(err.is_err(), "version 1 in the database, 0 known: refused");
    }
}

#[tokio::test]
async fn block_lists() {
    for (s, _dir) in backends("block_lists").await {
        let b = BlocksSql::new(s.db.clone());
        b.block("h", "u", &["b@h".into(), "a@h".into(), "a@h".into()])
            .await
            .expect("block");
        assert_eq!(b.blocklist("h", "u").await.expect("q"), ["a@h", "b@h"]);
        b.block("h", "u", &["a@h".into(), "c@h/res".into(), "Z@h".into()])
            .await
            .expect("block");
        b.block("h", "u", &[]).await.expect("nothing");
        b.block("h", "v", &["z@h".into()]).await.expect("block");
        // Byte order on both backends (upper case first).
        assert_eq!(
            b.blocklist("h", "u").await.expect("q"),
            ["Z@h", "a@h", "b@h", "c@h/res"]
        );
        b.unblock("h", "u", &["a@h".into(), "nope@h".into()])
            .await
            .expect("unblock");
        assert_eq!(b.blocklist("h", "u").await.expect("q").len(), 3);
        b.unblock("h", "u", &[]).await.expect("unblock all");
        assert!(b.blocklist("h", "u").await.expect("q").is_empty());
        assert_eq!(b.blocklist("h", "v").await.expect("q"), ["z@h"]);
    }
}

fn mam_item(id: i64, with: &str, res: &str) -> Item {
    Item {
        id,
        with_bare: with.into(),
        with_res: res.into(),
        origin_id: Some(format!("o{id}")),
        xml: format!("<message xmlns='jabber:client'><body>{id}</body></message>"),
    }
}

#[tokio::test]
async fn message_archive() {
    for (s, _dir) in backends("message_archive").await {
        let m = MamSql::new(s.db.clone());
        let items: Vec<Item> = (1..=100)
            .map(|i| {
                mam_item(
                    i * 10,
                    if i % 3 == 0 { "c@h" } else { "b@h" },
                    if i % 2 == 0 { "x" } else { "" },
                )
            })
            .collect();
        m.insert("h", "u", &items).await.expect("insert");
        // The same id again is kept once.
        m.insert("h", "u", &items[..2]).await.expect("insert again");
        m.insert("h", "v", &[mam_item(5, "b@h", "")])
            .await
            .expect("other");
        let all = Filter::default();
        assert_eq!(m.count("h", "u", &all).await.expect("count"), 100);
        let first = m.page("h", "u", &all, 3, 0, false).await.expect("page");
        assert_eq!(
            first.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![10, 20, 30]
        );
        let last = m.page("h", "u", &all, 3, 0, true).await.expect("page");
        assert_eq!(
            last.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![980, 990, 1000]
        );
        let skip = m.page("h", "u", &all, 2, 5, false).await.expect("page");
        assert_eq!(skip.iter().map(|r| r.0).collect::<Vec<_>>(), vec![60, 70]);
        let with_c = Filter {
            with_bare: Some("c@h".into()),
            ..Filter::default()
        };
        assert_eq!(m.count("h", "u", &with_c).await.expect("count"), 33);
        let with_cx = Filter {
            with_bare: Some("c@h".into()),
            with_res: Some("x".into()),
            min: Some(100),
            max: Some(600),
            ..Filter::default()
        };
        let r = m
            .page("h", "u", &with_cx, 100, 0, false)
            .await
            .expect("page");
        // i in 10..=60, multiples of 6: 12, 18, 24, 30, 36, 42, 48, 54, 60.
        assert_eq!(
            r.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![120, 180, 240, 300, 360, 420, 480, 540, 600]
        );
        let ids = Filter {
            ids: Some(vec![30, 31, 1000]),
            ..Filter::default()
        };
        assert_eq!(
            m.page("h", "u", &ids, 10, 0, false)
                .await
                .expect("page")
                .len(),
            2
        );
        assert!(m.exists("h", "u", 500).await.expect("exists"));
        assert!(!m.exists("h", "u", 501).await.expect("exists"));
        assert_eq!(m.bounds("h", "u").await.expect("bounds"), Some((10, 1000)));
        assert_eq!(m.bounds("h", "w").await.expect("bounds"), None);
        assert_eq!(m.max_id().await.expect("max"), Some(1000));
        // Retention, then account removal.
        assert_eq!(m.expire(100).await.expect("expire"), 10);
        assert_eq!(m.count("h", "u", &all).await.expect("count"), 91);
        m.remove_archive("h", "u").await.expect("remove");
        assert_eq!(m.count("h", "u", &all).await.expect("count"), 0);
        assert_eq!(
            m.count("h", "v", &all).await.expect("count"),
            0,
            "expired too"
        );
        // Preferences.
        assert_eq!(m.prefs("h", "u").await.expect("prefs"), None);
        let p = StoredPrefs {
            default: "roster".into(),
            always: vec!["a@h".into(), "b@h/r".into()],
            never: vec![],
        };
        m.set_prefs("h", "u", &p).await.expect("set");
        assert_eq!(m.prefs("h", "u").await.expect("prefs"), Some(p.clone()));
        let p2 = StoredPrefs {
            default: "never".into(),
            ..p
        };
        m.set_prefs("h", "u", &p2).await.expect("set");
        assert_eq!(m.prefs("h", "u").await.expect("prefs"), Some(p2));
        m.remove_prefs("h", "u").await.expect("rm");
        assert_eq!(m.prefs("h", "u").await.expect("prefs"), None);
    }
}

#[tokio::test]
async fn push_registrations() {
    for (s, _dir) in backends("push_registrations").await {
        let p = PushSql::new(s.db.clone());
        assert!(p.list("h", "u").await.expect("list").is_empty());
        p.add("h", "u", "a.example", "n1", Some("<x/>"))
            .await
            .expect("add");
        p.add("h", "u", "a.example", "n2", None).await.expect("add");
        p.add("h", "u", "b.example", "n1", None).await.expect("add");
        p.add("h", "v", "a.example", "n1", None).await.expect("add");
        // The same node again replaces its options.
        p.add("h", "u", "a.example", "n1", Some("<y/>"))
            .await
            .expect("add");
        let l = p.list("h", "u").await.expect("list");
        assert_eq!(
            l,
            vec![
                ("a.example".into(), "n1".into(), Some("<y/>".into())),
                ("a.example".into(), "n2".into(), None),
                ("b.example".into(), "n1".into(), None),
            ]
        );
        p.remove("h", "u", Some("a.example"), Some("n2"))
            .await
            .expect("rm");
        assert_eq!(p.list("h", "u").await.expect("list").len(), 2);
        p.remove("h", "u", Some("a.example"), None)
            .await
            .expect("rm");
        assert_eq!(p.list("h", "u").await.expect("list").len(), 1);
        p.remove("h", "u", None, None).await.expect("rm");
        assert!(p.list("h", "u").await.expect("list").is_empty());
        assert_eq!(p.list("h", "v").await.expect("list").len(), 1);
    }
}

#[tokio::test]
async fn fast_tokens_keep_two_per_client() {
    for (s, _dir) in backends("fast_tokens_keep_two_per_client").await {
        let f = FastSql::new(s.db.clone());
        let row = |id: &str, issued: i64| Row {
            id: id.into(),
            hash: format!("h{id}"),
            mark: "m".into(),
            expiry: 10_000,
            issued,
            mechanism: "HT-SHA-256-EXPR".into(),
            counter: 0,
            used: false,
        };
        let used = |r: Row| Row { used: true, ..r };
        // Unused tokens replace each other ("new" slot).
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            f.add("h", "u", "agent", &row(id, i as i64))
                .await
                .expect("add");
        }
        f.add("h", "u", "other", &row("x", 1)).await.expect("add");
        assert_eq!(
            f.list("h", "u", "agent").await.expect("list"),
            vec![row("c", 2)]
        );
        // Used, it becomes "current"; a new one joins it.
        f.use_token("h", "u", "agent", "c", 2).await.expect("use");
        f.add("h", "u", "agent", &row("d", 3)).await.expect("add");
        f.add("h", "u", "agent", &row("e", 4)).await.expect("add");
        assert_eq!(
            f.list("h", "u", "agent").await.expect("list"),
            vec![row("e", 4), used(row("c", 2))]
        );
        // The replay counter only grows.
        assert!(
            f.bump_counter("h", "u", "agent", "e", 3)
                .await
                .expect("bump")
        );
        assert!(
            !f.bump_counter("h", "u", "agent", "e", 3)
                .await
                .expect("bump")
        );
        assert!(
            !f.bump_counter("h", "u", "agent", "e", 2)
                .await
                .expect("bump")
        );
        assert!(
            f.bump_counter("h", "u", "agent", "e", 9)
                .await
                .expect("bump")
        );
        // Using the new one retires the current one.
        f.use_token("h", "u", "agent", "e", 4).await.expect("use");
        assert_eq!(
            f.list("h", "u", "agent").await.expect("list"),
            vec![Row {
                counter: 9,
                ..used(row("e", 4))
            }]
        );
        f.remove("h", "u", "agent", "e").await.expect("rm");
        assert!(f.list("h", "u", "agent").await.expect("list").is_empty());
        f.add("h", "u", "agent", &row("f", 5)).await.expect("add");
        f.remove_client("h", "u", "agent")
            .await
            .expect("invalidate");
        assert!(f.list("h", "u", "agent").await.expect("list").is_empty());
        assert_eq!(f.list("h", "u", "other").await.expect("list").len(), 1);
        f.remove_user("h", "u").await.expect("rm");
        assert!(f.list("h", "u", "other").await.expect("list").is_empty());
    }
}

#[tokio::test]
async fn muc_rooms() {
    for (s, _dir) in backends("muc_rooms").await {
        let m = MucSql::new(s.db.clone());
        let mut room = StoredRoom {
            name: "tea".into(),
            config: "{\"persistent\":true}".into(),
            subject: "Tea".into(),
            subject_by: "Alice".into(),
            salt: "s".into(),
            affiliations: vec![
                (
                    "alice@h".into(),
                    "owner".into(),
                    String::new(),
                    "Alice".into(),
                ),
                (
                    "bob@h".into(),
                    "outcast".into(),
                    "rude".into(),
                    String::new(),
                ),
            ],
            vcard: "<vCard xmlns='vcard-temp'><FN>Tea</FN></vCard>".into(),
        };
        m.save("conference.h", &room).await.expect("save");
        let other = StoredRoom {
            name: "b".into(),
            affiliations: vec![("bob@h".into(), "member".into(), String::new(), "Bob".into())],
            ..StoredRoom::default()
        };
        m.save("conference.h", &other).await.expect("save");
        m.save("muc.other", &room).await.expect("save elsewhere");
        assert_eq!(
            m.rooms("conference.h").await.expect("rooms"),
            [other.clone(), room.clone()]
        );
        // Saving again replaces the row and the affiliations.
        room.subject = "Coffee".into();
        room.affiliations.remove(1);
        room.affiliations[0].3 = "Al".into();
        room.vcard = String::new();
        m.save("conference.h", &room).await.expect("save");
        let rooms = m.rooms("conference.h").await.expect("rooms");
        assert_eq!(rooms[1], room);
        // A removed account loses its affiliations everywhere.
        assert_eq!(m.remove_jid("bob@h").await.expect("remove"), 2);
        assert!(
            m.rooms("conference.h").await.expect("rooms")[0]
                .affiliations
                .is_empty()
        );
        m.delete("conference.h", "tea").await.expect("delete");
        assert_eq!(m.rooms("conference.h").await.expect("rooms").len(), 1);
        assert_eq!(m.rooms("muc.other").await.expect("rooms").len(), 1);
    }
}

#[tokio::test]
async fn muc_archive() {
    for (s, _dir) in backends("muc_archive").await {
        let m = MucSql::new(s.db.clone());
        for i in 1..=5i64 {
            let a = Archived {
                id: i * 10,
                ts: i * 1000,
                nick: if i % 2 == 0 { "b" } else { "a" }.into(),
                xml: format!("<m{i}/>"),
            };
            m.archive("c.h", "r", &a).await.expect("archive");
        }
        m.archive(
            "c.h",
            "other",
            &Archived {
                id: 1,
                ts: 1,
                nick: "a".into(),
                xml: String::new(),
            },
        )
        .await
        .expect("archive");
        let ids = |v: Vec<Archived>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
        let q = |f: fn(&mut ArchiveQuery)| {
            let mut q = ArchiveQuery {
                limit: 10,
                ..Default::default()
            };
            f(&mut q);
            q
        };
        assert_eq!(
            ids(m.archived("c.h", "r", &q(|_| {})).await.expect("q")),
            [10, 20, 30, 40, 50]
        );
        assert_eq!(
            ids(m
                .archived(
                    "c.h",
                    "r",
                    &q(|q| {
                        q.after = Some(20);
                        q.limit = 2
                    })
                )
                .await
                .expect("q")),
            [30, 40]
        );
        assert_eq!(
            ids(m
                .archived(
                    "c.h",
                    "r",
                    &q(|q| {
                        q.backwards = true;
                        q.limit = 2
                    })
                )
                .await
                .expect("q")),
            [40, 50]
        );
        assert_eq!(
            ids(m
                .archived(
                    "c.h",
                    "r",
                    &q(|q| {
                        q.before = Some(30);
                        q.backwards = true
                    })
                )
                .await
                .expect("q")),
            [10, 20]
        );
        assert_eq!(
            ids(m
                .archived(
                    "c.h",
                    "r",
                    &q(|q| {
                        q.start = Some(2000);
                        q.end = Some(4000)
                    })
                )
                .await
                .expect("q")),
            [20, 30, 40]
        );
        assert_eq!(
            ids(m
                .archived("c.h", "r", &q(|q| q.nick = Some("b".into())))
                .await
                .expect("q")),
            [20, 40]
        );
        m.purge_archive("c.h", "r").await.expect("purge");
        assert!(
            m.archived("c.h", "r", &q(|_| {}))
                .await
                .expect("q")
                .is_empty()
        );
        assert_eq!(
            m.archived("c.h", "other", &q(|_| {}))
                .await
                .expect("q")
                .len(),
            1
        );
    }
}
