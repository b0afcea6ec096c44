//! The store of `mod_pubsub`, beside the module: nodes (with their
//! configuration as JSON), items, affiliations and subscriptions, keyed by
//! service — `pubsub.HOST` for the service, a user's bare JID for PEP.

use palaver_server::ModuleCx;
use palaver_storage::{BeginWrite, Db, Dialect, ModuleMigration, Result, on_db};

/// The module's tables.
pub const MIGRATIONS: &[ModuleMigration] = &[
    ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS pubsub_node (service TEXT NOT NULL, node TEXT NOT NULL, \
                 config TEXT NOT NULL, PRIMARY KEY (service, node))",
        postgres: "CREATE TABLE IF NOT EXISTS pubsub_node (service TEXT NOT NULL, node TEXT NOT NULL, \
                   config TEXT NOT NULL, PRIMARY KEY (service, node))",
    },
    ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS pubsub_item (service TEXT NOT NULL, node TEXT NOT NULL, \
                 item_id TEXT NOT NULL, publisher TEXT NOT NULL, payload TEXT NOT NULL, \
                 seq INTEGER NOT NULL, PRIMARY KEY (service, node, item_id))",
        postgres: "CREATE TABLE IF NOT EXISTS pubsub_item (service TEXT NOT NULL, node TEXT NOT NULL, \
                   item_id TEXT NOT NULL, publisher TEXT NOT NULL, payload TEXT NOT NULL, \
                   seq BIGINT NOT NULL, PRIMARY KEY (service, node, item_id))",
    },
    ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS pubsub_affiliation (service TEXT NOT NULL, node TEXT NOT NULL, \
                 jid TEXT NOT NULL, affiliation TEXT NOT NULL, PRIMARY KEY (service, node, jid))",
        postgres: "CREATE TABLE IF NOT EXISTS pubsub_affiliation (service TEXT NOT NULL, node TEXT NOT NULL, \
                   jid TEXT NOT NULL, affiliation TEXT NOT NULL, PRIMARY KEY (service, node, jid))",
    },
    ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS pubsub_subscription (service TEXT NOT NULL, node TEXT NOT NULL, \
                 jid TEXT NOT NULL, subid TEXT NOT NULL, state TEXT NOT NULL, \
                 deliver INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (service, node, jid))",
        postgres: "CREATE TABLE IF NOT EXISTS pubsub_subscription (service TEXT NOT NULL, node TEXT NOT NULL, \
                   jid TEXT NOT NULL, subid TEXT NOT NULL, state TEXT NOT NULL, \
                   deliver BIGINT NOT NULL DEFAULT 1, PRIMARY KEY (service, node, jid))",
    },
    // XEP-0060 §6.3 subscription options but `deliver` (JSON), and when the
    // subscription expires ('' never, 'presence', or milliseconds).
    ModuleMigration {
        sqlite: "ALTER TABLE pubsub_subscription ADD COLUMN options TEXT NOT NULL DEFAULT ''",
        postgres: "ALTER TABLE pubsub_subscription ADD COLUMN IF NOT EXISTS options TEXT NOT NULL DEFAULT ''",
    },
    ModuleMigration {
        sqlite: "ALTER TABLE pubsub_subscription ADD COLUMN expire TEXT NOT NULL DEFAULT ''",
        postgres: "ALTER TABLE pubsub_subscription ADD COLUMN IF NOT EXISTS expire TEXT NOT NULL DEFAULT ''",
    },
    ModuleMigration {
        sqlite: "CREATE INDEX IF NOT EXISTS pubsub_subscription_jid ON pubsub_subscription (jid)",
        postgres: "CREATE INDEX IF NOT EXISTS pubsub_subscription_jid ON pubsub_subscription (jid)",
    },
    // Notifications waiting in a `pubsub#digest` (one row each), kept until
    // their digest is sent: a restart or a crash loses none.
    ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS pubsub_digest (host TEXT NOT NULL, service TEXT NOT NULL, \
                 node TEXT NOT NULL, recipient TEXT NOT NULL, seq BIGINT NOT NULL, due_ms BIGINT NOT NULL, \
                 from_jid TEXT NOT NULL, kind TEXT NOT NULL, body BIGINT NOT NULL, xml TEXT NOT NULL, \
                 PRIMARY KEY (host, service, node, recipient, seq))",
        postgres: "CREATE TABLE IF NOT EXISTS pubsub_digest (host TEXT NOT NULL, service TEXT NOT NULL, \
                   node TEXT NOT NULL, recipient TEXT NOT NULL, seq BIGINT NOT NULL, due_ms BIGINT NOT NULL, \
                   from_jid TEXT NOT NULL, kind TEXT NOT NULL, body BIGINT NOT NULL, xml TEXT NOT NULL, \
                   PRIMARY KEY (host, service, node, recipient, seq))",
    },
];

/// One notification waiting in a digest (`pubsub_digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestRow {
    /// The service (`pubsub.HOST`, or the account for PEP).
    pub service: String,
    /// Node.
    pub node: String,
    /// Where the digest goes.
    pub recipient: String,
    /// Order of arrival, unique per host.
    pub seq: i64,
    /// When the digest is due (milliseconds since the epoch).
    pub due_ms: i64,
    /// The sender of the digest message.
    pub from_jid: String,
    /// `headline` or `normal`.
    pub kind: String,
    /// Whether the message gets a `<body/>`.
    pub body: bool,
    /// The `<item/>` or `<retract/>`, serialized.
    pub xml: String,
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRow {
    /// Item id.
    pub item_id: String,
    /// Who published it (bare JID).
    pub publisher: String,
    /// The payload, serialized (empty for a notification-only item).
    pub payload: String,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRow {
    /// Node.
    pub node: String,
    /// Subscriber JID (full or bare, as subscribed).
    pub jid: String,
    /// Subscription id.
    pub subid: String,
    /// `subscribed` or `pending`.
    pub state: String,
    /// Subscription option `pubsub#deliver`: notifications wanted.
    pub deliver: bool,
    /// The other subscription options.
    pub options: super::subopts::SubOptions,
}

impl From<(String, String, String)> for ItemRow {
    fn from((item_id, publisher, payload): (String, String, String)) -> Self {
        ItemRow {
            item_id,
            publisher,
            payload,
        }
    }
}

type SubTuple = (String, String, String, String, i64, String);

impl From<SubTuple> for SubRow {
    fn from((node, jid, subid, state, deliver, options): SubTuple) -> Self {
        SubRow {
            node,
            jid,
            subid,
            state,
            deliver: deliver != 0,
            options: super::subopts::SubOptions::from_json(&options),
        }
    }
}

/// PubSub and PEP storage, on either backend.
pub struct PubsubSql(Db);

impl PubsubSql {
    /// The store over a pool.
    pub fn new(db: Db) -> PubsubSql {
        PubsubSql(db)
    }

    /// The store of a running server.
    pub fn of(cx: &ModuleCx) -> PubsubSql {
        PubsubSql(cx.storage().db.clone())
    }

    fn c(&self) -> &'static str {
        match self.0.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " COLLATE \"C\"",
        }
    }

    /// A node's configuration (JSON), if the node exists.
    pub async fn node(&self, service: &str, node: &str) -> Result<Option<String>> {
        Ok(on_db!(&self.0, |pool| {
            sqlx::query_scalar("SELECT config FROM pubsub_node WHERE service = $1 AND node = $2")
                .bind(service)
                .bind(node)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Names of a service's nodes, sorted.
    pub async fn nodes(&self, service: &str) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT node FROM pubsub_node WHERE service = $1 ORDER BY node{}",
            self.c()
        );
        Ok(on_db!(&self.0, |pool| {
            sqlx::query_scalar(&sql)
                .bind(service)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Create a node with its owner; `false` when it exists already.
    pub async fn create_node(
        &self,
        service: &str,
        node: &str,
        config: &str,
        owner: &str,
    ) -> Result<bool> {
        Ok(on_db!(&self.0, |pool| {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "INSERT INTO pubsub_node (service, node, config) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(service)
            .bind(node)
            .bind(config)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query(
                    "INSERT INTO pubsub_affiliation (service, node, jid, affiliation) \
                     VALUES ($1, $2, $3, 'owner') ON CONFLICT (service, node, jid) \
                     DO UPDATE SET affiliation = 'owner'",
                )
                .bind(service)
                .bind(node)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            n == 1
        }))
    }

    /// Replace a node's configuration.
    pub async fn set_config(&self, service: &str, node: &str, config: &str) -> Result<()> {
        on_db!(&self.0, |pool| {
            sqlx::query("UPDATE pubsub_node SET config = $3 WHERE service = $1 AND node = $2")
                .bind(service)
                .bind(node)
                .bind(config)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Delete a node with its items, affiliations and subscriptions.
    pub async fn delete_node(&self, service: &str, node: &str) -> Result<()> {
        on_db!(&self.0, |pool| {
            let mut tx = pool.begin_write().await?;
            for t in [
                "pubsub_node",
                "pubsub_item",
                "pubsub_affiliation",
                "pubsub_subscription",
            ] {
                sqlx::query(&format!("DELETE FROM {t} WHERE service = $1 AND node = $2"))
                    .bind(service)
                    .bind(node)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Delete every node of a service (a removed account's PEP service).
    pub async fn delete_service(&self, service: &str) -> Result<()> {
        on_db!(&self.0, |pool| {
            let mut tx = pool.begin_write().await?;
            for t in [
                "pubsub_node",
                "pubsub_item",
                "pubsub_affiliation",
                "pubsub_subscription",
            ] {
                sqlx::query(&format!("DELETE FROM {t} WHERE service = $1"))
                    .bind(service)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Store an item (replacing one with the same id, which becomes the
    /// newest), then keep only the `max_items` newest; returns the ids
    /// removed to make room.
    pub async fn publish(
        &self,
        service: &str,
        node: &str,
        item: &ItemRow,
        max_items: Option<u64>,
    ) -> Result<Vec<String>> {
        let keep_sql = format!(
            "SELECT item_id FROM pubsub_item WHERE service = $1 AND node = $2 \
             ORDER BY seq DESC, item_id{} DESC",
            self.c()
        );
        Ok(on_db!(&self.0, |pool| {
            let mut tx = pool.begin_write().await?;
            let seq: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM pubsub_item WHERE service = $1 AND node = $2",
            )
            .bind(service)
            .bind(node)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO pubsub_item (service, node, item_id, publisher, payload, seq) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (service, node, item_id) DO UPDATE \
                 SET publisher = excluded.publisher, payload = excluded.payload, seq = excluded.seq",
            )
            .bind(service)
            .bind(node)
            .bind(&item.item_id)
            .bind(&item.publisher)
            .bind(&item.payload)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
            let mut removed = Vec::new();
            if let Some(max) = max_items {
                let ids: Vec<String> = sqlx::query_scalar(&keep_sql)
                    .bind(service)
                    .bind(node)
                    .fetch_all(&mut *tx)
                    .await?;
                for id in ids.into_iter().skip(max.max(1) as usize) {
                    sqlx::query(
                        "DELETE FROM pubsub_item WHERE service = $1 AND node = $2 AND item_id = $3",
                    )
                    .bind(service)
                    .bind(node)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                    removed.push(id);
                }
            }
            tx.commit().await?;
            removed
        }))
    }

    /// Items of a node, newest first, at most `limit`.
    pub async fn items(
        &self,
        service: &str,
        node: &str,
        limit: Option<u64>,
    ) -> Result<Vec<ItemRow>> {
        let sql = format!(
            "SELECT item_id, publisher, payload FROM pubsub_item WHERE service = $1 AND node = $2 \
             ORDER BY seq DESC, item_id{} DESC LIMIT $3",
            self.c()
        );
        let limit = limit.map_or(i64::MAX, |l| l.min(i64::MAX as u64) as i64);
        let rows: Vec<(String, String, String)> = on_db!(&self.0, |pool| {
            sqlx::query_as::<_, (String, String, String)>(&sql)
                .bind(service)
                .bind(node)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(ItemRow::from).collect())
    }

    /// One item.
    pub async fn item(&self, service: &str, node: &str, id: &str) -> Result<Option<ItemRow>> {
        let row: Option<(String, String, String)> = on_db!(&self.0, |pool| {
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT item_id, publisher, payload FROM pubsub_item \
                 WHERE service = $1 AND node = $2 AND item_id = $3",
            )
            .bind(service)
            .bind(node)
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(ItemRow::from))
    }

    /// Remove an item; `false` when there was none.
    pub async fn retract(&self, service: &str, node: &str, id: &str) -> Result<bool> {
        Ok(on_db!(&self.0, |pool| {
            sqlx::query("DELETE FROM pubsub_item WHERE service = $1 AND node = $2 AND item_id = $3")
                .bind(service)
                .bind(node)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        }))
    }

    /// Remove every item of a node.
    pub async fn purge(&self, service: &str, node: &str) -> Result<()> {
        on_db!(&self.0, |pool| {
            sqlx::query("DELETE FROM pubsub_item WHERE service = $1 AND node = $2")
                .bind(service)
                .bind(node)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Affiliations of a node: (bare JID, affiliation), sorted.
    pub async fn affiliations(&self, service: &str, node: &str) -> Result<Vec<(String, String)>> {
        let sql = format!(
            "SELECT jid, affiliation FROM pubsub_affiliation WHERE service = $1 AND node = $2 \
             ORDER BY jid{}",
            self.c()
        );
        Ok(on_db!(&self.0, |pool| {
            sqlx::query_as(&sql)
                .bind(service)
                .bind(node)
                .fetch_all(pool)
                .await?
        }))
    }

    /// One entity's affiliation with a node (`none` when it has none).
    pub async fn affiliation(&self, service: &str, node: &str, jid: &str) -> Result<String> {
        let a: Option<String> = on_db!(&self.0, |pool| {
            sqlx::query_scalar(
                "SELECT affiliation FROM pubsub_affiliation WHERE service = $1 AND node = $2 AND jid = $3",
            )
            .bind(service)
            .bind(node)
            .bind(jid)
            .fetch_optional(pool)
            .await?
        });
        Ok(a.unwrap_or_else(|| "none".into()))
    }

    /// Every affiliation of an entity on a service: (node, affiliation).
    pub async fn affiliations_of(&self, service: &str, jid: &str) -> Result<Vec<(String, String)>> {
        let sql = format!(
            "SELECT node, affiliation FROM pubsub_affiliation WHERE service = $1 AND jid = $2 \
             ORDER BY node{}",
            self.c()
        );
        Ok(on_db!(&self.0, |pool| {
            sqlx::query_as(&sql)
                .bind(service)
                .bind(jid)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Set (or with `none`, remove) an affiliation.
    pub async fn set_affiliation(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        affiliation: &str,
    ) -> Result<()> {
        on_db!(&self.0, |pool| {
            if affiliation == "none" {
                sqlx::query(
                    "DELETE FROM pubsub_affiliation WHERE service = $1 AND node = $2 AND jid = $3",
                )
                .bind(service)
                .bind(node)
                .bind(jid)
                .execute(pool)
                .await?;
            } else {
                sqlx::query(
                    "INSERT INTO pubsub_affiliation (service, node, jid, affiliation) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (service, node, jid) DO UPDATE SET affiliation = excluded.affiliation",
                )
                .bind(service)
                .bind(node)
                .bind(jid)
                .bind(affiliation)
                .execute(pool)
                .await?;
            }
        });
        Ok(())
    }

    /// Subscriptions of a node, sorted by JID.
    pub async fn subscriptions(&self, service: &str, node: &str) -> Result<Vec<SubRow>> {
        let sql = format!(
            "SELECT node, jid, subid, state, deliver, options FROM pubsub_subscription WHERE service = $1 AND node = $2 \
             ORDER BY jid{}",
            self.c()
        );
        let rows: Vec<SubTuple> = on_db!(&self.0, |pool| {
            sqlx::query_as::<_, SubTuple>(&sql)
                .bind(service)
                .bind(node)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(SubRow::from).collect())
    }

    /// Subscriptions on a service of a JID or of any of its resources
    /// (`bare` is a bare JID).
    pub async fn subscriptions_of(&self, service: &str, bare: &str) -> Result<Vec<SubRow>> {
        let sql = format!(
            "SELECT node, jid, subid, state, deliver, options FROM pubsub_subscription WHERE service = $1 \
             AND (jid = $2 OR substr(jid, 1, length($3)) = $3) ORDER BY node{}, jid{}",
            self.c(),
            self.c()
        );
        let prefix = format!("{bare}/");
        let rows: Vec<SubTuple> = on_db!(&self.0, |pool| {
            sqlx::query_as::<_, SubTuple>(&sql)
                .bind(service)
                .bind(bare)
                .bind(&prefix)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(SubRow::from).collect())
    }

    /// Add or replace a subscription.
    pub async fn subscribe(&self, service: &str, sub: &SubRow) -> Result<()> {
        on_db!(&self.0, |pool| {
            sqlx::query(
                "INSERT INTO pubsub_subscription (service, node, jid, subid, state, deliver, options, expire) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (service, node, jid) DO UPDATE SET subid = excluded.subid, state = excluded.state, \
                 deliver = excluded.deliver, options = excluded.options, expire = excluded.expire",
            )
            .bind(service)
            .bind(&sub.node)
            .bind(&sub.jid)
            .bind(&sub.subid)
            .bind(&sub.state)
            .bind(i64::from(sub.deliver))
            .bind(sub.options.to_json())
            .bind(sub.options.expire.column())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Remove a subscription; `false` when there was none.
    pub async fn unsubscribe(&self, service: &str, node: &str, jid: &str) -> Result<bool> {
        Ok(on_db!(&self.0, |pool| {
            sqlx::query(
                "DELETE FROM pubsub_subscription WHERE service = $1 AND node = $2 AND jid = $3",
            )
            .bind(service)
            .bind(node)
            .bind(jid)
            .execute(pool)
            .await?
            .rows_affected()
                > 0
        }))
    }

    /// Forget an entity everywhere: its subscriptions (bare or full JID)
    /// and affiliations on every service; returns the (service, node)
    /// pairs it owned.
    pub async fn remove_entity(&self, bare: &str) -> Result<Vec<(String, String)>> {
        let prefix = format!("{bare}/");
        Ok(on_db!(&self.0, |pool| {
            let mut tx = pool.begin_write().await?;
            let owned: Vec<(String, String)> = sqlx::query_as(
                "SELECT service, node FROM pubsub_affiliation WHERE jid = $1 AND affiliation = 'owner'",
            )
            .bind(bare)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM pubsub_subscription WHERE jid = $1 OR substr(jid, 1, length($2)) = $2",
            )
            .bind(bare)
            .bind(&prefix)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM pubsub_affiliation WHERE jid = $1")
                .bind(bare)
                .execute(&mut *tx)
                .await?;
            // Digests waiting for the account (or from its PEP service).
            sqlx::query(
                "DELETE FROM pubsub_digest WHERE recipient = $1 OR substr(recipient, 1, length($2)) = $2 \
                 OR service = $1",
            )
            .bind(bare)
            .bind(&prefix)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            owned
        }))
    }

    /// End the subscriptions that expire with presence (`pubsub#expire` =
    /// `presence`) of `full` on every service, and of its bare JID when
    /// `bare_too` (no session of the account is available any more).
    /// Returns how many ended.
    pub async fn expire_presence(&self, full: &str, bare: &str, bare_too: bool) -> Result<u64> {
        Ok(on_db!(&self.0, |pool| {
            sqlx::query(
                "DELETE FROM pubsub_subscription WHERE expire = 'presence' \
                 AND (jid = $1 OR (jid = $2 AND $3 = 1))",
            )
            .bind(full)
            .bind(bare)
            .bind(i64::from(bare_too))
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// End every subscription that expires with presence (at start: no
    /// session is available).
    pub async fn expire_all_presence(&self) -> Result<u64> {
        Ok(on_db!(&self.0, |pool| {
            sqlx::query("DELETE FROM pubsub_subscription WHERE expire = 'presence'")
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Keep notifications gathered for digests (one transaction).
    pub async fn add_digest_rows(&self, host: &str, rows: &[DigestRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        on_db!(&self.0, |pool| {
            let mut tx = pool.begin_write().await?;
            for r in rows {
                sqlx::query(
                    "INSERT INTO pubsub_digest (host, service, node, recipient, seq, due_ms, from_jid, kind, body, xml) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(host)
                .bind(&r.service)
                .bind(&r.node)
                .bind(&r.recipient)
                .bind(r.seq)
                .bind(r.due_ms)
                .bind(&r.from_jid)
                .bind(&r.kind)
                .bind(i64::from(r.body))
                .bind(&r.xml)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Forget notifications whose digest was sent.
    pub async fn remove_digest_rows(
        &self,
        host: &str,
        service: &str,
        node: &str,
        recipient: &str,
        seqs: &[i64],
    ) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        on_db!(&self.0, |pool| {
            let mut tx = pool.begin_write().await?;
            for seq in seqs {
                sqlx::query(
                    "DELETE FROM pubsub_digest WHERE host = $1 AND service = $2 AND node = $3 \
                     AND recipient = $4 AND seq = $5",
                )
                .bind(host)
                .bind(service)
                .bind(node)
                .bind(recipient)
                .bind(*seq)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Every notification waiting in a digest on `host`, in arrival order.
    pub async fn digest_rows(&self, host: &str) -> Result<Vec<DigestRow>> {
        type Row = (
            String,
            String,
            String,
            i64,
            i64,
            String,
            String,
            i64,
            String,
        );
        let rows: Vec<Row> = on_db!(&self.0, |pool| {
            sqlx::query_as(
                "SELECT service, node, recipient, seq, due_ms, from_jid, kind, body, xml \
                 FROM pubsub_digest WHERE host = $1 ORDER BY seq",
            )
            .bind(host)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(service, node, recipient, seq, due_ms, from_jid, kind, body, xml)| DigestRow {
                    service,
                    node,
                    recipient,
                    seq,
                    due_ms,
                    from_jid,
                    kind,
                    body: body != 0,
                    xml,
                },
            )
            .collect())
    }

    /// Whether a node has any owner left.
    pub async fn has_owner(&self, service: &str, node: &str) -> Result<bool> {
        let n: i64 = on_db!(&self.0, |pool| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM pubsub_affiliation WHERE service = $1 AND node = $2 AND affiliation = 'owner'",
            )
            .bind(service)
            .bind(node)
            .fetch_one(pool)
            .await?
        });
        Ok(n > 0)
    }
}
