//! The rooms of `mod_muc` that outlive a restart: persistent rooms (their
//! configuration, subject and affiliations), on either backend.

use palaver_server::ModuleCx;
use palaver_storage::{Db, ModuleMigration, Result, on_db};

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
];

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
    /// (bare JID, affiliation, reason), sorted by JID.
    pub affiliations: Vec<(String, String, String)>,
}

/// Persistent rooms, on either backend.
pub struct MucSql(Db);

type RoomRow = (String, String, String, String, String);
type AffRow = (String, String, String, String);

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
        let (rows, affs): (Vec<RoomRow>, Vec<AffRow>) = on_db!(&self.0, |pool| {
            let rows = sqlx::query_as(
                "SELECT name, config, subject, subject_by, salt FROM muc_room WHERE service = $1",
            )
            .bind(service)
            .fetch_all(pool)
            .await?;
            let affs = sqlx::query_as(
                "SELECT room, jid, affiliation, reason FROM muc_affiliation WHERE service = $1",
            )
            .bind(service)
            .fetch_all(pool)
            .await?;
            (rows, affs)
        });
        let mut out: Vec<StoredRoom> = rows
            .into_iter()
            .map(|(name, config, subject, subject_by, salt)| StoredRoom {
                name,
                config,
                subject,
                subject_by,
                salt,
                affiliations: Vec::new(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        for (room, jid, aff, reason) in affs {
            if let Ok(i) = out.binary_search_by(|r| r.name.as_str().cmp(&room)) {
                out[i].affiliations.push((jid, aff, reason));
            }
        }
        for r in &mut out {
            r.affiliations.sort();
        }
        Ok(out)
    }

    /// Store a room whole (its row and its affiliations), all or nothing.
    pub async fn save(&self, service: &str, r: &StoredRoom) -> Result<()> {
        on_db!(&self.0, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO muc_room (service, name, config, subject, subject_by, salt) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (service, name) DO UPDATE SET \
                 config = excluded.config, subject = excluded.subject, \
                 subject_by = excluded.subject_by, salt = excluded.salt",
            )
            .bind(service)
            .bind(&r.name)
            .bind(&r.config)
            .bind(&r.subject)
            .bind(&r.subject_by)
            .bind(&r.salt)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM muc_affiliation WHERE service = $1 AND room = $2")
                .bind(service)
                .bind(&r.name)
                .execute(&mut *tx)
                .await?;
            for (jid, aff, reason) in &r.affiliations {
                sqlx::query(
                    "INSERT INTO muc_affiliation (service, room, jid, affiliation, reason) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(service)
                .bind(&r.name)
                .bind(jid)
                .bind(aff)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Forget a room (destroyed, or no longer persistent).
    pub async fn delete(&self, service: &str, name: &str) -> Result<()> {
        on_db!(&self.0, |pool| {
            let mut tx = pool.begin().await?;
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
    }

    /// Remove a (removed) account's affiliations in every room.
    pub async fn remove_jid(&self, jid: &str) -> Result<u64> {
        Ok(on_db!(&self.0, |pool| {
            sqlx::query("DELETE FROM muc_affiliation WHERE jid = $1")
                .bind(jid)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
