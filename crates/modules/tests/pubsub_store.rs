//! The store of mod_pubsub on both backends: SQLite always, PostgreSQL
//! when `PALAVER_TEST_PG_URL` is set (required in CI).

use palaver_modules::pubsub::store::{ItemRow, MIGRATIONS, PubsubSql, SubRow};
use palaver_modules::pubsub::subopts::{Expire, SubOptions};
use palaver_storage::Storage;

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
        s.db.migrate_module("mod_pubsub", MIGRATIONS)
            .await
            .expect("migrate");
        s.db.migrate_module("mod_pubsub", MIGRATIONS)
            .await
            .expect("again");
    }
    out
}

fn item(id: &str, p: &str) -> ItemRow {
    ItemRow {
        item_id: id.into(),
        publisher: "a@h".into(),
        payload: p.into(),
    }
}

#[tokio::test]
async fn nodes_items_affiliations_subscriptions() {
    for (s, _keep) in backends("pubsub_store").await {
        let db = PubsubSql::new(s.db.clone());
        assert!(
            db.create_node("svc", "n", "{}", "a@h")
                .await
                .expect("create")
        );
        assert!(
            !db.create_node("svc", "n", "{}", "b@h")
                .await
                .expect("again")
        );
        assert_eq!(
            db.affiliation("svc", "n", "a@h").await.expect("aff"),
            "owner"
        );
        assert_eq!(
            db.affiliation("svc", "n", "b@h").await.expect("aff"),
            "none"
        );
        db.create_node("svc", "B", "{}", "a@h")
            .await
            .expect("create");
        // Byte order on both backends.
        assert_eq!(db.nodes("svc").await.expect("nodes"), ["B", "n"]);
        // max_items keeps the newest; republishing an id makes it newest.
        for id in ["1", "2", "3"] {
            db.publish("svc", "n", &item(id, "<x xmlns='t'/>"), Some(2))
                .await
                .expect("publish");
        }
        let ids = |v: Vec<ItemRow>| v.into_iter().map(|i| i.item_id).collect::<Vec<_>>();
        assert_eq!(
            ids(db.items("svc", "n", None).await.expect("items")),
            ["3", "2"]
        );
        db.publish("svc", "n", &item("2", "<y xmlns='t'/>"), Some(2))
            .await
            .expect("republish");
        assert_eq!(
            ids(db.items("svc", "n", Some(1)).await.expect("items")),
            ["2"]
        );
        assert_eq!(
            db.item("svc", "n", "2")
                .await
                .expect("item")
                .map(|i| i.payload),
            Some("<y xmlns='t'/>".to_string())
        );
        assert!(db.retract("svc", "n", "2").await.expect("retract"));
        assert!(!db.retract("svc", "n", "2").await.expect("retract twice"));
        // Subscriptions of a bare JID and its resources.
        for j in ["c@h", "c@h/r", "cc@h"] {
            db.subscribe(
                "svc",
                &SubRow {
                    node: "n".into(),
                    jid: j.into(),
                    subid: "s".into(),
                    state: "subscribed".into(),
                    deliver: j != "cc@h",
                    options: SubOptions {
                        include_body: j == "c@h/r",
                        show_values: Some(vec!["chat".into()]),
                        expire: if j == "cc@h" {
                            Expire::At(42)
                        } else {
                            Expire::Presence
                        },
                        ..SubOptions::default()
                    },
                },
            )
            .await
            .expect("subscribe");
        }
        let subs = db.subscriptions_of("svc", "c@h").await.expect("subs");
        assert_eq!(subs.len(), 2);
        // Options come back as stored.
        assert!(subs[1].options.include_body && !subs[0].options.include_body);
        assert_eq!(subs[0].options.show_values, Some(vec!["chat".to_string()]));
        assert_eq!(subs[0].options.expire, Expire::Presence);
        // Presence-bound subscriptions end: the full JID's, then the bare one's.
        assert_eq!(
            db.expire_presence("c@h/r", "c@h", false)
                .await
                .expect("expire"),
            1
        );
        assert_eq!(
            db.subscriptions_of("svc", "c@h").await.expect("subs").len(),
            1
        );
        assert_eq!(
            db.expire_presence("c@h/x", "c@h", true)
                .await
                .expect("expire"),
            1
        );
        assert_eq!(db.expire_all_presence().await.expect("expire"), 0);
        for j in ["c@h", "c@h/r"] {
            db.subscribe(
                "svc",
                &SubRow {
                    node: "n".into(),
                    jid: j.into(),
                    subid: "s".into(),
                    state: "subscribed".into(),
                    deliver: true,
                    options: SubOptions::default(),
                },
            )
            .await
            .expect("subscribe");
        }
        let cc = db.subscriptions("svc", "n").await.expect("subs");
        assert_eq!(
            cc.iter()
                .find(|s| s.jid == "cc@h")
                .map(|s| s.options.expire),
            Some(Expire::At(42))
        );
        db.set_affiliation("svc", "n", "c@h", "member")
            .await
            .expect("aff");
        // Removing c: its subscriptions and affiliations go, cc stays.
        db.remove_entity("c@h").await.expect("remove");
        assert_eq!(db.subscriptions("svc", "n").await.expect("subs").len(), 1);
        assert_eq!(
            db.affiliation("svc", "n", "c@h").await.expect("aff"),
            "none"
        );
        // Removing the only owner leaves the node ownerless (the module deletes it).
        let owned = db.remove_entity("a@h").await.expect("remove");
        assert_eq!(owned.len(), 2);
        assert!(!db.has_owner("svc", "n").await.expect("owner"));
        db.delete_node("svc", "n").await.expect("delete");
        assert_eq!(db.node("svc", "n").await.expect("node"), None);
        assert!(db.items("svc", "n", None).await.expect("items").is_empty());
        db.delete_service("svc").await.expect("service");
        assert!(db.nodes("svc").await.expect("nodes").is_empty());
    }
}
