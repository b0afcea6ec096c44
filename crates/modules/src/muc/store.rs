//! The rooms of `mod_muc` that outlive a restart: persistent rooms (their
//! configuration, subject and affiliations), on either backend.

use palaver_server::ModuleCx;
use palaver_storage::{BeginWrite, Db, ModuleMigration, Result, on_db};

/// The module's tables.
pub const MIGRATIONS: &[ModuleMigration] = &[
    ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS muc_room (service TEXT NOT NULL, name TEXT NOT NULL, \
                 config TEXT NOT NULL, subject TEXT NOT NULL, subject_by TEXT NOT NULL, \
                 salt TEXT NOT NULL, PRIMARY KEY (service, name))",
        postgres: "CREATE TABLE IF NOT EXISTS muc_room (service TEXT NOT NULL, name TEXT NOT NULL, \
                   config TEXT NOT NULL, subject TEXT NOT NULL, subject_by TEXT NOT NULL, \
                   salt TEXT NOT NULL, PRIMARY KEY (service, name))",
    },
    ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS muc_affiliation (service TEXT NOT NULL, room TEXT NOT NULL, \
                 jid TEXT NOT NULL, affiliation TEXT NOT NULL, reason TEXT NOT NULL, \
                 PRIMARY KEY (service, room, jid))",
        postgres: "CREATE TABLE IF NOT EXISTS muc_affiliation (service TEXT NOT NULL, room TEXT NOT NULL, \
                   jid TEXT NOT NULL, affiliation TEXT NOT NULL, reason TEXT NOT NULL, \
                   PRIMARY KEY (service, room, jid))",
    },
    ModuleMigration {
        sqlite: "CREATE INDEX IF NOT EXISTS muc_affiliation_jid ON muc_affiliation (jid)",
        postgres: "CREATE INDEX IF NOT EXISTS muc_affiliation_jid ON muc_affiliation (jid)",
    },
    ModuleMigration {
        sqlite: "CREATE TABLE IF NOT EXISTS muc_archive (service TEXT NOT NULL, room TEXT NOT NULL, \
                 id BIGINT NOT NULL, ts BIGINT NOT NULL, nick TEXT NOT NULL, xml TEXT NOT NULL, \
                 PRIMARY KEY (service, room, id))",
        postgres: "CREATE TABLE IF NOT EXISTS muc_archive (service TEXT NOT NULL, room TEXT NOT NULL, \
                   id BIGINT NOT NULL, ts BIGINT NOT NULL, nick TEXT NOT NULL, xml TEXT NOT NULL, \
                   PRIMARY KEY (service, room, id))",
    },
    // XEP-0045 §7.10: the nickname a member registered with the room.
    ModuleMigration {
        sqlite: "ALTER TABLE muc_affiliation ADD COLUMN nick TEXT NOT NULL DEFAULT ''",
        postgres: "ALTER TABLE muc_affiliation ADD COLUMN IF NOT EXISTS nick TEXT NOT NULL DEFAULT ''",
    },
    // The room's vcard-temp (XEP-0486 avatars), as XML; empty for none.
    ModuleMigration {
        sqlite: "ALTER TABLE muc_room ADD COLUMN vcard TEXT NOT NULL DEFAULT ''",
        postgres: "ALTER TABLE muc_room ADD COLUMN IF NOT EXISTS vcard TEXT NOT NULL DEFAULT ''",
    },
];

/// One archived groupchat message (XEP-0313 on the room's JID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// Increasing within a room; the XEP-0359 stanza id.
    pub id: i64,
    /// Milliseconds since the epoch.
    pub ts: i64,
    pub nick: String,
    /// The message as the room broadcast it (`from` = room/nick, no `to`).
    pub xml: String,
}

/// Which archived messages a query wants (all bounds exclusive but times).
#[derive(Debug, Clone, Default)]
pub struct ArchiveQuery {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub after: Option<i64>,
    pub before: Option<i64>,
    /// Only this nickname's messages.
    pub nick: Option<String>,
    /// Newest first (the last page).
    pub backwards: bool,
    pub limit: usize,
}

/// A stored room.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredRoom {
    pub name: String,
    /// The configuration as JSON (ejabberd's option names).
    pub config: String,
    pub subject: String,
    pub subject_by: String,
    /// Secret of the room's occupant ids (XEP-0421).
    pub salt: String,
    /// (bare JID, affiliation, reason, registered nickname or empty),
    /// sorted by JID.
    pub affiliations: Vec<(String, String, String, String)>,
    /// The room's vCard (vcard-temp XML), empty when it has none.
    pub vcard: String,
}

/// Persistent rooms, on either backend.
pub struct MucSql(Db);

type RoomRow = (String, String, String, String, String, String);
type AffRow = (String, String, String, String, String);

impl MucSql {
    /// The store over the server's pool.
    pub fn new(db: Db) -> MucSql {
        MucSql(db)
    }

    /// The store of a running server.
    pub fn of(cx: &ModuleCx) -> MucSql {
        MucSql(cx.storage().db.clone())
    }

    /// Every stored room of `service`, sorted by name.
    pub async fn rooms(&self, service: &str) -> Result<Vec<StoredRoom>> {
        palaver_storage::timed("muc", "rooms", async {
            let (rows, affs): (Vec<RoomRow>, Vec<AffRow>) = on_db!(&self.0, |pool| {
                let rows = sqlx::query_as(
                    "SELECT name, config, subject, subject_by, salt, vcard FROM muc_room WHERE service = $1",
                )
                .bind(service)
                .fetch_all(pool)
                .await?;
                let affs = sqlx::query_as(
                    "SELECT room, jid, affiliation, reason, nick FROM muc_affiliation WHERE service = $1",
                )
                .bind(service)
                .fetch_all(pool)
                .await?;
                (rows, affs)
            });
            let mut out: Vec<StoredRoom> = rows
                .into_iter()
                .map(
                    |(name, config, subject, subject_by, salt, vcard)| StoredRoom {
                        name,
                        config,
                        subject,
                        subject_by,
                        salt,
                        affiliations: Vec::new(),
                        vcard,
                    },
                )
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            for (room, jid, aff, reason, nick) in affs {
                if let Ok(i) = out.binary_search_by(|r| r.name.as_str().cmp(&room)) {
                    out[i].affiliations.push((jid, aff, reason, nick));
                }
            }
            for r in &mut out {
                r.affiliations.sort();
            }
            Ok(out)
        })
        .await
    }

    /// Store a room whole (its row and its affiliations), all or nothing.
    pub async fn save(&self, service: &str, r: &StoredRoom) -> Result<()> {
        palaver_storage::timed("muc", "save", async {
            on_db!(&self.0, |pool| {
                let mut tx = pool.begin_write().await?;
                sqlx::query(
                    "INSERT INTO muc_room (service, name, config, subject, subject_by, salt, vcard) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (service, name) DO UPDATE SET \
                     config = excluded.config, subject = excluded.subject, \
                     subject_by = excluded.subject_by, salt = excluded.salt, vcard = excluded.vcard",
                )
                .bind(service)
                .bind(&r.name)
                .bind(&r.config)
                .bind(&r.subject)
                .bind(&r.subject_by)
                .bind(&r.salt)
                .bind(&r.vcard)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM muc_affiliation WHERE service = $1 AND room = $2")
                    .bind(service)
                    .bind(&r.name)
                    .execute(&mut *tx)
                    .await?;
                for (jid, aff, reason, nick) in &r.affiliations {
                    sqlx::query(
                        "INSERT INTO muc_affiliation (service, room, jid, affiliation, reason, nick) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(service)
                    .bind(&r.name)
                    .bind(jid)
                    .bind(aff)
                    .bind(reason)
                    .bind(nick)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// Forget a room (destroyed, or no longer persistent).
    pub async fn delete(&self, service: &str, name: &str) -> Result<()> {
        palaver_storage::timed("muc", "delete", async {
            on_db!(&self.0, |pool| {
                let mut tx = pool.begin_write().await?;
                sqlx::query("DELETE FROM muc_affiliation WHERE service = $1 AND room = $2")
                    .bind(service)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM muc_room WHERE service = $1 AND name = $2")
                    .bind(service)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// Archive a message of a room.
    pub async fn archive(&self, service: &str, room: &str, m: &Archived) -> Result<()> {
        palaver_storage::timed("muc", "archive", async {
            on_db!(&self.0, |pool| {
                sqlx::query(
                    "INSERT INTO muc_archive (service, room, id, ts, nick, xml) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(service)
                .bind(room)
                .bind(m.id)
                .bind(m.ts)
                .bind(&m.nick)
                .bind(&m.xml)
                .execute(pool)
                .await?;
            });
            Ok(())
        })
        .await
    }

    /// Archived messages of a room, oldest first, at most `q.limit`.
    pub async fn archived(
        &self,
        service: &str,
        room: &str,
        q: &ArchiveQuery,
    ) -> Result<Vec<Archived>> {
        palaver_storage::timed("muc", "archived", async {
            let sql = format!(
                "SELECT id, ts, nick, xml FROM muc_archive WHERE service = $1 AND room = $2 \
                 AND ts >= $3 AND ts <= $4 AND id > $5 AND id < $6 AND ($7 = '' OR nick = $7) \
                 ORDER BY id {} LIMIT $8",
                if q.backwards { "DESC" } else { "ASC" }
            );
            let rows: Vec<(i64, i64, String, String)> = on_db!(&self.0, |pool| {
                sqlx::query_as(&sql)
                    .bind(service)
                    .bind(room)
                    .bind(q.start.unwrap_or(i64::MIN))
                    .bind(q.end.unwrap_or(i64::MAX))
                    .bind(q.after.unwrap_or(i64::MIN))
                    .bind(q.before.unwrap_or(i64::MAX))
                    .bind(q.nick.as_deref().unwrap_or(""))
                    .bind(q.limit.min(i64::MAX as usize) as i64)
                    .fetch_all(pool)
                    .await?
            });
            let mut out: Vec<Archived> = rows
                .into_iter()
                .map(|(id, ts, nick, xml)| Archived { id, ts, nick, xml })
                .collect();
            if q.backwards {
                out.reverse();
            }
            Ok(out)
        })
        .await
    }

    /// Forget a destroyed room's archive.
    pub async fn purge_archive(&self, service: &str, room: &str) -> Result<()> {
        palaver_storage::timed("muc", "purge_archive", async {
            on_db!(&self.0, |pool| {
                sqlx::query("DELETE FROM muc_archive WHERE service = $1 AND room = $2")
                    .bind(service)
                    .bind(room)
                    .execute(pool)
                    .await?;
            });
            Ok(())
        })
        .await
    }

    /// Remove a (removed) account's affiliations in every room.
    pub async fn remove_jid(&self, jid: &str) -> Result<u64> {
        palaver_storage::timed("muc", "remove_jid", async {
            Ok(on_db!(&self.0, |pool| {
                sqlx::query("DELETE FROM muc_affiliation WHERE jid = $1")
                    .bind(jid)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }))
        })
        .await
    }
}
