//! The store of `mod_mam`, beside the module (see `palaver_storage::Db`).
//!
//! One row per archived message and account: the archive id `id` is a
//! microsecond timestamp made unique and increasing by the module (so
//! "by date" and "by id" are the same order, and XEP-0082 `start`/`end`
//! become id ranges).
//!
//! **PostgreSQL** keeps the rows in `mam_archive`, found through two
//! indexes: the primary key `(host, username, id)` for a whole archive, and
//! `(host, username, with_bare, id)` for one conversation; both serve the
//! last page of either order by walking the index backwards.
//! `mam_archive_id` serves retention.
//!
//! **SQLite** writes every message once, at the end of `mam_msg`, and
//! indexes it later, many rows at once (see [`MamSql::insert_many`] and
//! [`MamSql::fold_staged`]):
//! - `mam_jid` gives every bare JID (account or correspondent) an integer
//!   key, so index entries are three or four integers;
//! - `mam_msg` holds the messages in the order they were written (rowid),
//!   with no index of its own, so a write only appends. A row is a message
//!   of account `acct` (side 1: `acct`, `w`, `id`, `with_res`) and, when
//!   `id2` is set, also of account `w` (side 2: `w`, `acct`, `id2`,
//!   `res2`): the sent and the received side of a message between two
//!   local accounts are written once (half the bytes, and half the rows);
//! - `mam_ix (acct, id) → (w, msg)` and `mam_ixw (acct, w, id) → msg` are
//!   the two indexes, as tables clustered on their key (`WITHOUT ROWID`);
//! - `mam_ixw` serves queries `with` one correspondent, and is brought up
//!   to date lazily, per account, by such a query (see [`MamSql::settle`]):
//!   an account's entries in `mam_ix` up to its watermark `mam_wm.upto` are
//!   all in `mam_ixw` too. Kept at once, it cost the fold more than
//!   `mam_ix` (its entries land at random places in each account's range,
//!   more and more of them as the archive grows), for queries that many
//!   accounts never make;
//! - `mam_folded` says up to which `mam_msg` rowid the indexes are
//!   complete (rows after it are the "tail"), and how many tail rows a
//!   read has indexed already (see [`MamSql::settle`]).

use std::collections::HashMap;

use palaver_server::ModuleCx;
use palaver_storage::{BeginWrite, Db, ModuleMigration, Result, StorageError, on_db};

/// The module's tables.
pub const MIGRATIONS: &[ModuleMigration] = &[
    ModuleMigration {
        sqlite: "CREATE TABLE mam_archive (host TEXT NOT NULL, username TEXT NOT NULL, id BIGINT NOT NULL, \
             with_bare TEXT NOT NULL, with_res TEXT NOT NULL, origin_id TEXT, xml TEXT NOT NULL, \
             PRIMARY KEY (host, username, id));\
             CREATE INDEX mam_archive_with ON mam_archive (host, username, with_bare, id);\
             CREATE INDEX mam_archive_id ON mam_archive (id);\
             CREATE TABLE mam_prefs (host TEXT NOT NULL, username TEXT NOT NULL, dflt TEXT NOT NULL, \
             always_jids TEXT NOT NULL, never_jids TEXT NOT NULL, PRIMARY KEY (host, username));",
        postgres: "CREATE TABLE mam_archive (host TEXT NOT NULL, username TEXT NOT NULL, id BIGINT NOT NULL, \
               with_bare TEXT NOT NULL, with_res TEXT NOT NULL, origin_id TEXT, xml TEXT NOT NULL, \
               PRIMARY KEY (host, username, id));\
               CREATE INDEX mam_archive_with ON mam_archive (host, username, with_bare, id);\
               CREATE INDEX mam_archive_id ON mam_archive (id);\
               CREATE TABLE mam_prefs (host TEXT NOT NULL, username TEXT NOT NULL, dflt TEXT NOT NULL, \
               always_jids TEXT NOT NULL, never_jids TEXT NOT NULL, PRIMARY KEY (host, username));",
    },
    ModuleMigration {
        // SQLite: the second schema's staging table (replaced by the third).
        sqlite: "CREATE TABLE mam_staging (host TEXT NOT NULL, username TEXT NOT NULL, id BIGINT NOT NULL, \
             with_bare TEXT NOT NULL, with_res TEXT NOT NULL, origin_id TEXT, xml TEXT NOT NULL);",
        postgres: "SELECT 1;",
    },
    ModuleMigration {
        // SQLite: messages written once and indexed later (see the module
        // documentation), with the rows of the earlier schemas moved over.
        sqlite: "CREATE TABLE mam_jid (k INTEGER PRIMARY KEY, jid TEXT NOT NULL UNIQUE);\
             CREATE TABLE mam_msg (acct INTEGER NOT NULL, w INTEGER NOT NULL, id INTEGER NOT NULL, \
             with_res TEXT NOT NULL, origin_id TEXT, xml TEXT NOT NULL);\
             CREATE TABLE mam_ix (acct INTEGER NOT NULL, id INTEGER NOT NULL, msg INTEGER NOT NULL, \
             PRIMARY KEY (acct, id)) WITHOUT ROWID;\
             CREATE TABLE mam_ixw (acct INTEGER NOT NULL, w INTEGER NOT NULL, id INTEGER NOT NULL, \
             msg INTEGER NOT NULL, PRIMARY KEY (acct, w, id)) WITHOUT ROWID;\
             CREATE TABLE mam_folded (upto INTEGER NOT NULL, settled INTEGER NOT NULL);\
             INSERT INTO mam_jid (jid) SELECT username || '@' || host FROM mam_archive \
             UNION SELECT with_bare FROM mam_archive UNION SELECT username || '@' || host FROM mam_staging \
             UNION SELECT with_bare FROM mam_staging;\
             INSERT INTO mam_msg (acct, w, id, with_res, origin_id, xml) \
             SELECT a.k, b.k, s.id, s.with_res, s.origin_id, s.xml FROM \
             (SELECT * FROM mam_archive UNION ALL SELECT * FROM mam_staging t WHERE NOT EXISTS \
             (SELECT 1 FROM mam_archive o WHERE o.host = t.host AND o.username = t.username AND o.id = t.id)) s \
             JOIN mam_jid a ON a.jid = s.username || '@' || s.host JOIN mam_jid b ON b.jid = s.with_bare \
             ORDER BY s.id;\
             INSERT INTO mam_ix (acct, id, msg) SELECT acct, id, rowid FROM mam_msg WHERE true \
             ORDER BY acct, id, rowid ON CONFLICT DO NOTHING;\
             INSERT INTO mam_ixw (acct, w, id, msg) SELECT acct, w, id, rowid FROM mam_msg WHERE true \
             ORDER BY acct, w, id, rowid ON CONFLICT DO NOTHING;\
             DELETE FROM mam_msg WHERE NOT EXISTS (SELECT 1 FROM mam_ix x WHERE x.acct = mam_msg.acct \
             AND x.id = mam_msg.id AND x.msg = mam_msg.rowid);\
             INSERT INTO mam_folded (upto, settled) SELECT COALESCE(MAX(rowid), 0), 0 FROM mam_msg;\
             DROP TABLE mam_archive;\
             DROP TABLE mam_staging;",
        postgres: "SELECT 1;",
    },
    ModuleMigration {
        // SQLite: a count of deletions from `mam_msg`, so the archive
        // writer can tell whether the rows it appended since its last fold
        // are still the tail's (see `Writer`).
        sqlite: "ALTER TABLE mam_folded ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;",
        postgres: "SELECT 1;",
    },
    ModuleMigration {
        // SQLite: `mam_ix` carries the correspondent's key, and `mam_ixw` is
        // kept up to date lazily, per account, up to `mam_wm.upto` (see
        // `MamSql::settle`). The archives indexed so far are whole in
        // `mam_ixw`: their watermark is their last id.
        sqlite: "CREATE TABLE mam_ix_w (acct INTEGER NOT NULL, id INTEGER NOT NULL, w INTEGER NOT NULL, \
             msg INTEGER NOT NULL, PRIMARY KEY (acct, id)) WITHOUT ROWID;\
             INSERT INTO mam_ix_w (acct, id, w, msg) SELECT x.acct, x.id, m.w, x.msg FROM mam_ix x \
             JOIN mam_msg m ON m.rowid = x.msg ORDER BY x.acct, x.id;\
             DROP TABLE mam_ix;\
             ALTER TABLE mam_ix_w RENAME TO mam_ix;\
             CREATE TABLE mam_wm (acct INTEGER PRIMARY KEY, upto INTEGER NOT NULL, gen INTEGER NOT NULL);\
             CREATE INDEX mam_wm_gen ON mam_wm (gen);\
             INSERT INTO mam_wm (acct, upto, gen) SELECT acct, MAX(id), 0 FROM mam_ix GROUP BY acct;\
             ALTER TABLE mam_folded ADD COLUMN wm_gen INTEGER NOT NULL DEFAULT 0;",
        postgres: "SELECT 1;",
    },
    ModuleMigration {
        // SQLite: a row may hold the two sides of one message between local
        // accounts (see the module documentation).
        sqlite: "ALTER TABLE mam_msg ADD COLUMN id2 INTEGER;\
             ALTER TABLE mam_msg ADD COLUMN res2 TEXT;",
        postgres: "SELECT 1;",
    },
];

/// Rows per statement of [`MamSql::insert_many`] (8 or 7 parameters each,
/// well under SQLite's and PostgreSQL's limits): the archive writer's
/// whole batch, so that a batch is one statement.
pub const ROWS_PER_INSERT: usize = 256;

/// The page cache of the archive writer's SQLite connection (KiB, as
/// `PRAGMA cache_size` takes it negative): room for the index pages a fold
/// of [`FOLD_ROWS`](super::FOLD_ROWS) rows for a thousand accounts touches.
const WRITER_CACHE: &str = "-32768";

/// The SQLite account key of `user@host` given as `$1` (a literal, for
/// `concat!`).
macro_rules! acct {
    () => {
        "(SELECT k FROM mam_jid WHERE jid = $1)"
    };
}

/// The `mam_ix` entries of account `$1` above its `mam_ixw` watermark
/// (all of them when it has none): a `WHERE` clause, for `concat!`.
macro_rules! above_watermark {
    () => {
        concat!(
            "acct = ",
            acct!(),
            " AND id > COALESCE((SELECT upto FROM mam_wm WHERE acct = ",
            acct!(),
            "), -9223372036854775808)"
        )
    };
}

/// `INSERT INTO mam_ix … SELECT … FROM mam_msg ` and `INSERT INTO mam_ixw
/// …` for the `mam_msg` rows that `$rows` selects (SQLite): indexes both
/// sides of them (an id an account has already is kept: a message routed
/// twice is archived once). Entries in `mam_ixw` above their account's
/// watermark are not needed there, and harmless.
macro_rules! index_rows {
    ($rows:literal) => {
        [
            concat!(
                "INSERT INTO mam_ix (acct, id, w, msg) SELECT acct, id, w, rowid FROM mam_msg WHERE ",
                $rows,
                " UNION ALL SELECT w, id2, acct, rowid FROM mam_msg WHERE ",
                $rows,
                " AND id2 IS NOT NULL ORDER BY 1, 2, 4 ON CONFLICT DO NOTHING"
            ),
            concat!(
                "INSERT INTO mam_ixw (acct, w, id, msg) SELECT acct, w, id, rowid FROM mam_msg WHERE ",
                $rows,
                " UNION ALL SELECT w, acct, id2, rowid FROM mam_msg WHERE ",
                $rows,
                " AND id2 IS NOT NULL ORDER BY 1, 2, 3, 4 ON CONFLICT DO NOTHING"
            ),
        ]
    };
}

/// The row ids of a `json_group_array(rowid …)`: one row to fetch, not
/// one per row (sqlx hands SQLite's rows over one at a time, from its
/// worker thread).
fn rowids(list: String) -> Result<Vec<i64>> {
    serde_json::from_str(&list).map_err(|e| StorageError::Backend(format!("archive row ids: {e}")))
}

/// A list of row ids as one parameter (`json_each`).
fn json_list(ids: &[i64]) -> Result<String> {
    serde_json::to_string(ids).map_err(|e| StorageError::Backend(format!("archive row ids: {e}")))
}

/// `INSERT INTO mam_msg … VALUES (?, …), (?, …) …` for `n` rows
/// (SQLite). Anonymous parameters: sqlx asks SQLite for every parameter's
/// name while binding, and SQLite finds a name by a linear walk of the
/// statement's parameter list, so `$N` parameters cost O(n²) per statement
/// (with 896 of them, most of the CPU of an archive batch).
fn msg_insert(n: usize) -> String {
    let mut sql = String::with_capacity(100 + n * 26);
    sql.push_str("INSERT INTO mam_msg (acct, w, id, with_res, origin_id, xml, id2, res2) VALUES ");
    for r in 0..n {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql
}

/// The rows of `rows` (with their `(account, correspondent)` keys) as
/// `mam_msg` rows: `(i, None)` for row `i` alone, `(i, Some(j))` for rows
/// `i` and `j` written as one, the two sides of one message between two
/// local accounts (the sender's sent side and the recipient's received
/// side: one's account is the other's correspondent, and the message is
/// the same text). In the order of their first rows.
fn pair_up(rows: &[(String, String, Item)], keys: &[(i64, i64)]) -> Vec<(usize, Option<usize>)> {
    let mut units: Vec<(usize, Option<usize>)> = Vec::with_capacity(rows.len());
    // Unpaired units by their (account, correspondent).
    let mut open: HashMap<(i64, i64), Vec<usize>, foldhash::fast::RandomState> = HashMap::default();
    for (i, &(a, w)) in keys.iter().enumerate() {
        if a != w
            && let Some(waiting) = open.get_mut(&(w, a))
            && let Some(p) = waiting.iter().position(|&u| {
                let o = &rows[units[u].0].2;
                let it = &rows[i].2;
                o.xml == it.xml && o.origin_id == it.origin_id
            })
        {
            let u = waiting.remove(p);
            units[u].1 = Some(i);
            continue;
        }
        open.entry((a, w)).or_default().push(units.len());
        units.push((i, None));
    }
    units
}

/// `INSERT INTO mam_archive … VALUES ($1, …), ($8, …) … ON CONFLICT DO
/// NOTHING` for `n` rows (PostgreSQL).
fn multi_row_insert(n: usize) -> String {
    let mut sql = String::with_capacity(120 + n * 40);
    sql.push_str(
        "INSERT INTO mam_archive (host, username, with_bare, id, with_res, origin_id, xml) VALUES ",
    );
    for r in 0..n {
        if r > 0 {
            sql.push_str(", ");
        }
        let b = r * 7;
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6,
            b + 7
        ));
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// [`MamSql::insert_many`] on PostgreSQL: multi-row `INSERT`s of up to
/// [`ROWS_PER_INSERT`] rows (one transaction when there are several).
async fn insert_many_pg(pool: &sqlx::PgPool, rows: &[(String, String, Item)]) -> Result<()> {
    let mut tx = if rows.len() > ROWS_PER_INSERT {
        Some(pool.begin_write().await?)
    } else {
        None
    };
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = multi_row_insert(chunk.len());
        let mut args = arguments_for(pool, chunk.len() * 7);
        for (host, user, it) in chunk {
            add(&mut args, host.as_str())?;
            add(&mut args, user.as_str())?;
            add(&mut args, it.with_bare.as_str())?;
            add(&mut args, it.id)?;
            add(&mut args, it.with_res.as_str())?;
            add(&mut args, it.origin_id.as_deref())?;
            add(&mut args, it.xml.as_str())?;
        }
        let q = sqlx::query_with(&sql, args);
        match tx.as_mut() {
            Some(tx) => q.execute(&mut **tx).await?,
            None => q.execute(pool).await?,
        };
    }
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    Ok(())
}

/// Bare JIDs' SQLite keys (`mam_jid`) the archive writer has looked up:
/// most rows find both of theirs here. Forgotten wholesale when it holds
/// [`JidKeys::MAX`] (keys never change, so nothing goes stale).
#[derive(Default)]
pub struct JidKeys {
    keys: HashMap<String, i64, foldhash::fast::RandomState>,
    buf: String,
}

impl JidKeys {
    const MAX: usize = 65_536;

    /// The key of `user@host` (made when new).
    async fn account(&mut self, pool: &sqlx::SqlitePool, host: &str, user: &str) -> Result<i64> {
        let mut jid = std::mem::take(&mut self.buf);
        jid.clear();
        jid.push_str(user);
        jid.push('@');
        jid.push_str(host);
        let k = self.key(pool, &jid).await;
        self.buf = jid;
        k
    }

    /// The key of bare JID `jid` (made when new).
    async fn key(&mut self, pool: &sqlx::SqlitePool, jid: &str) -> Result<i64> {
        if let Some(k) = self.keys.get(jid) {
            return Ok(*k);
        }
        // (`DO UPDATE`, not `DO NOTHING`: so that `RETURNING` also gives a
        // key another writer made first.)
        let k: i64 = sqlx::query_scalar(
            "INSERT INTO mam_jid (jid) VALUES ($1) ON CONFLICT (jid) DO UPDATE SET jid = excluded.jid RETURNING k",
        )
        .bind(jid)
        .fetch_one(pool)
        .await?;
        if self.keys.len() >= Self::MAX {
            self.keys.clear();
        }
        self.keys.insert(jid.to_string(), k);
        Ok(k)
    }
}

/// A message (a side of a row) the archive writer appended to `mam_msg`
/// (SQLite) and has not folded yet: account and correspondent keys,
/// archive id, rowid.
#[derive(Clone, Copy, Debug)]
struct Appended {
    acct: i64,
    w: i64,
    id: i64,
    msg: i64,
}

/// The archive writer's own state: its cache of JID keys and, on SQLite,
/// the rows it appended since its last fold, so that the fold indexes them
/// from here (sorted in memory) instead of reading, sorting and indexing
/// the tail of `mam_msg` twice. The tail is read as before when these rows
/// may not be all of it, or may no longer be there: before the writer's
/// first fold (the tail may hold an earlier process's rows), after a batch
/// that failed (it may have been committed all the same), after another
/// fold, and after any deletion from `mam_msg`, of a row or of a side of
/// one (`mam_folded.removed` changed: a rowid may have been given out
/// again, a side may be gone).
/// Rows written by others ([`MamSql::insert`], a read's
/// [`MamSql::settle`]) are indexed by them already.
#[derive(Default)]
pub struct Writer {
    keys: JidKeys,
    appended: Vec<Appended>,
    /// `mam_folded.removed` when `appended` was last emptied by a fold;
    /// `None`: `appended` is not known to be the writer's whole tail.
    removed: Option<i64>,
    /// The accounts' `mam_ixw` watermarks (`mam_wm`) as of generation
    /// `wm_gen`: a fold from memory puts an entry into `mam_ixw` only when
    /// its id is not above its account's watermark. Brought up to date at
    /// each fold (the changed ones only).
    wm: HashMap<i64, i64, foldhash::fast::RandomState>,
    wm_gen: Option<i64>,
}

/// [`entries_insert`] of `mam_ix` and of `mam_ixw`.
static IX_INSERT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| entries_insert("mam_ix", "acct, id, w, msg", 4));
static IXW_INSERT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| entries_insert("mam_ixw", "acct, w, id, msg", 4));

/// Index entries per statement of a fold from memory (SQLite): 4
/// parameters each.
const ENTRIES_PER_INSERT: usize = 256;

/// `INSERT INTO {table} ({cols}) VALUES (?, …), … ON CONFLICT DO NOTHING`
/// for [`ENTRIES_PER_INSERT`] entries of `width` columns.
fn entries_insert(table: &str, cols: &str, width: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    format!(
        "INSERT INTO {table} ({cols}) VALUES {} ON CONFLICT DO NOTHING",
        vec![row; ENTRIES_PER_INSERT].join(", ")
    )
}

/// Insert index entries (`width` integers each, sorted) with statements
/// of [`ENTRIES_PER_INSERT`] entries; the last one is padded with copies of
/// its last entry, which the conflict clause drops (one statement shape,
/// prepared once). How many entries were new.
async fn insert_entries(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    sql: &str,
    entries: &[i64],
    width: usize,
) -> Result<u64> {
    let mut new = 0;
    for chunk in entries.chunks(ENTRIES_PER_INSERT * width) {
        let mut args = sqlx::sqlite::SqliteArguments::default();
        sqlx::Arguments::reserve(&mut args, ENTRIES_PER_INSERT * width, 0);
        let pad = chunk.len() - width..chunk.len();
        for v in chunk.iter().chain(
            chunk[pad]
                .iter()
                .cycle()
                .take(ENTRIES_PER_INSERT * width - chunk.len()),
        ) {
            add(&mut args, *v)?;
        }
        new += sqlx::query_with(sql, args)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    }
    Ok(new)
}

/// Empty arguments for a statement on `pool`'s backend, with room for `n`.
fn arguments_for<'q, DB: sqlx::Database>(
    _: &sqlx::Pool<DB>,
    n: usize,
) -> <DB as sqlx::Database>::Arguments<'q> {
    let mut args = <DB as sqlx::Database>::Arguments::<'q>::default();
    sqlx::Arguments::reserve(&mut args, n, 0);
    args
}

/// Bind `v` next.
fn add<'q, A, T>(args: &mut A, v: T) -> Result<()>
where
    A: sqlx::Arguments<'q>,
    T: 'q + sqlx::Encode<'q, A::Database> + sqlx::Type<A::Database>,
{
    args.add(v)
        .map_err(|e| StorageError::Backend(format!("archive parameter: {e}")))
}

/// A message to archive.
#[derive(Debug, Clone)]
pub struct Item {
    /// Archive id (microseconds since the epoch, unique per account).
    pub id: i64,
    /// The other party's bare JID.
    pub with_bare: String,
    /// The other party's resource ("" when none).
    pub with_res: String,
    /// XEP-0359 origin-id, when the sender gave one.
    pub origin_id: Option<String>,
    /// The message, serialized with its namespace.
    pub xml: String,
}

/// Which messages of an archive a query covers (bounds inclusive).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub with_bare: Option<String>,
    pub with_res: Option<String>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub ids: Option<Vec<i64>>,
}

/// Stored preferences: default mode, always and never lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPrefs {
    pub default: String,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

enum Bind {
    Text(String),
    Int(i64),
}

/// `$q` with every parameter of `$binds` bound, in order.
macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::Text(s) => q.bind(s.as_str()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}

/// The archive, on either backend.
pub struct MamSql(Db);

impl MamSql {
    /// The store over the server's pool.
    pub fn new(db: Db) -> MamSql {
        MamSql(db)
    }

    /// The store of a running server.
    pub fn of(cx: &ModuleCx) -> MamSql {
        MamSql(cx.storage().db.clone())
    }

    /// The store the archive writer writes through: on SQLite, over a
    /// connection of its own (the server's pool with one connection and a
    /// larger page cache), so that the pages its batches and folds touch
    /// stay cached between them. (SQLite drops a connection's page cache
    /// whenever another connection has committed since its last use, and a
    /// pool hands out its connections in turn: the writer read most of
    /// its pages again at every batch.) The server's pool when that
    /// connection cannot be opened, and on PostgreSQL.
    pub async fn for_writer(&self) -> MamSql {
        let Db::Sqlite(pool) = &self.0 else {
            return MamSql(self.0.clone());
        };
        let opts = (*pool.connect_options())
            .clone()
            .pragma("cache_size", WRITER_CACHE);
        match sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(opts)
            .await
        {
            Ok(own) => MamSql(Db::Sqlite(own)),
            Err(e) => {
                tracing::warn!(error = %e, "the archive writer shares the server's connections");
                MamSql(self.0.clone())
            }
        }
    }

    /// Archive messages of one account (one transaction), visible at once;
    /// an id the account has already is kept (a message routed twice is
    /// archived once). For imports and the odd message the writer cannot
    /// take; the writer's batches go through [`MamSql::insert_many`].
    pub async fn insert(&self, host: &str, user: &str, items: &[Item]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        match &self.0 {
            Db::Sqlite(pool) => {
                let mut keys = JidKeys::default();
                let acct = keys.account(pool, host, user).await?;
                let mut ws = Vec::with_capacity(items.len());
                for it in items {
                    ws.push(keys.key(pool, &it.with_bare).await?);
                }
                let mut tx = pool.begin_write().await?;
                let (mut settled, mut removed) = (0i64, false);
                for (it, w) in items.iter().zip(ws) {
                    let msg = sqlx::query(
                        "INSERT INTO mam_msg (acct, w, id, with_res, origin_id, xml) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(acct)
                    .bind(w)
                    .bind(it.id)
                    .bind(&it.with_res)
                    .bind(&it.origin_id)
                    .bind(&it.xml)
                    .execute(&mut *tx)
                    .await?
                    .last_insert_rowid();
                    let [ix, ixw] = index_rows!("rowid = $1");
                    if sqlx::query(ix)
                        .bind(msg)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 0
                    {
                        // The account has this id already: kept once. (A
                        // copy still in the tail is the fold's to drop.)
                        sqlx::query("DELETE FROM mam_msg WHERE rowid = $1")
                            .bind(msg)
                            .execute(&mut *tx)
                            .await?;
                        removed = true;
                        continue;
                    }
                    sqlx::query(ixw).bind(msg).execute(&mut *tx).await?;
                    settled += 1;
                }
                sqlx::query("UPDATE mam_folded SET settled = settled + $1")
                    .bind(settled)
                    .execute(&mut *tx)
                    .await?;
                if removed {
                    sqlx::query(REMOVED).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                for it in items {
                    sqlx::query(
                        "INSERT INTO mam_archive (host, username, id, with_bare, with_res, origin_id, xml) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    )
                    .bind(host)
                    .bind(user)
                    .bind(it.id)
                    .bind(&it.with_bare)
                    .bind(&it.with_res)
                    .bind(&it.origin_id)
                    .bind(&it.xml)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Archive messages of several accounts (`(host, user, item)`) at
    /// once: the archive writer's batch, written as multi-row `INSERT`s of
    /// up to [`ROWS_PER_INSERT`] rows (a batch of that size is one
    /// statement, not one per message; a longer one is one transaction).
    /// Their ids must be new to their accounts (the module's ids are).
    ///
    /// On SQLite the rows are appended to `mam_msg` and indexed later by
    /// [`MamSql::fold_staged`], many at once, sorted by account: written
    /// into an index at once, a batch of rows for as many accounts dirties
    /// two random index pages per row, and SQLite writes every dirty page
    /// whole to the WAL at each commit and again at each checkpoint (about
    /// 40 µs of CPU per row, BENCHMARKS.md, run 8). Folded, an account's
    /// rows of many commits share their index pages, and the message itself
    /// is written once (BENCHMARKS.md, run 12). A read of an account's
    /// archive first indexes that account's tail rows ([`MamSql::settle`]),
    /// so reads see all committed messages. The two sides of a message
    /// between local accounts that are in the batch together (see
    /// [`pair_up`]) are one row. `writer` is the archive writer's state
    /// (its JID keys, the rows it appended). PostgreSQL logs row changes,
    /// not pages, and is written directly (a row per side).
    pub async fn insert_many(
        &self,
        rows: &[(String, String, Item)],
        writer: &mut Writer,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let pool = match &self.0 {
            Db::Sqlite(pool) => pool,
            Db::Postgres(pool) => return insert_many_pg(pool, rows).await,
        };
        // Until this batch is known committed, the writer's rows may not be
        // the whole tail (a failed commit may still have written them): the
        // next fold reads the tail unless this returns Ok.
        let known = writer.removed.take();
        // The rows' account and correspondent keys first (outside the
        // statement's transaction: a new key is a write of its own).
        let mut keys = Vec::with_capacity(rows.len());
        for (host, user, it) in rows {
            let a = writer.keys.account(pool, host, user).await?;
            keys.push((a, writer.keys.key(pool, &it.with_bare).await?));
        }
        let units = pair_up(rows, &keys);
        // A batch of up to ROWS_PER_INSERT rows is one statement, so one
        // round trip to the database (autocommit); a longer one is one
        // transaction of several.
        let mut tx = if units.len() > ROWS_PER_INSERT {
            Some(pool.begin_write().await?)
        } else {
            None
        };
        let mut appended = Vec::with_capacity(rows.len());
        for chunk in units.chunks(ROWS_PER_INSERT) {
            let sql = msg_insert(chunk.len());
            // (`&str`s: bound without a copy; room for all at once.)
            let mut args = arguments_for(pool, chunk.len() * 8);
            for &(one, two) in chunk {
                let ((a, w), it) = (keys[one], &rows[one].2);
                add(&mut args, a)?;
                add(&mut args, w)?;
                add(&mut args, it.id)?;
                add(&mut args, it.with_res.as_str())?;
                add(&mut args, it.origin_id.as_deref())?;
                add(&mut args, it.xml.as_str())?;
                let other = two.map(|t| &rows[t].2);
                add(&mut args, other.map(|o| o.id))?;
                add(&mut args, other.map(|o| o.with_res.as_str()))?;
            }
            let q = sqlx::query_with(&sql, args);
            let done = match tx.as_mut() {
                Some(tx) => q.execute(&mut **tx).await?,
                None => q.execute(pool).await?,
            };
            // A statement's rows have consecutive rowids (each new row takes
            // the largest rowid plus one), up to the last.
            let first = done.last_insert_rowid() - chunk.len() as i64 + 1;
            for (r, &(one, two)) in chunk.iter().enumerate() {
                let (acct, w) = keys[one];
                let msg = first + r as i64;
                let id = rows[one].2.id;
                appended.push(Appended { acct, w, id, msg });
                if let Some(t) = two {
                    let id = rows[t].2.id;
                    appended.push(Appended {
                        acct: w,
                        w: acct,
                        id,
                        msg,
                    });
                }
            }
        }
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        // Committed: these rows are the writer's to fold.
        writer.appended.append(&mut appended);
        writer.removed = known;
        Ok(())
    }

    /// Index the tail of `mam_msg` (the rows [`MamSql::insert_many`]
    /// appended since the last fold), in one transaction, sorted by
    /// account; how many messages (sides of rows) the tail had. A no-op on
    /// PostgreSQL.
    ///
    /// A side whose account has its id already (a message written twice)
    /// is not indexed, and dropped (with its row when it was the row's
    /// only side). Sides a read indexed already ([`MamSql::settle`]) are
    /// counted by `mam_folded.settled`, so the fold can tell such sides
    /// from those (and looks for them only when the counts say there are
    /// some).
    ///
    /// One transaction, not slices of one: SQLite drops a connection's
    /// page cache whenever another connection has committed, so slices
    /// interleaved with the writer's batches each read the index pages
    /// again (BENCHMARKS.md, run 11).
    pub async fn fold_staged(&self) -> Result<u64> {
        self.fold(None).await
    }

    /// [`MamSql::fold_staged`] by the archive writer: the rows it appended
    /// are indexed from its memory when they are the whole tail (see
    /// [`Writer`]).
    pub async fn fold_written(&self, writer: &mut Writer) -> Result<u64> {
        self.fold(Some(writer)).await
    }

    async fn fold(&self, mut writer: Option<&mut Writer>) -> Result<u64> {
        let Db::Sqlite(pool) = &self.0 else {
            return Ok(0);
        };
        let mut tx = pool.begin_write().await?;
        let (upto, settled, removed, top): (i64, i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT upto, settled, removed, (SELECT MAX(rowid) FROM mam_msg) FROM mam_folded",
        )
        .fetch_one(&mut *tx)
        .await?;
        let top = top.unwrap_or(0);
        if top <= upto {
            if let Some(w) = writer {
                w.appended.clear();
                w.removed = Some(removed);
            }
            return Ok(0);
        }
        // From memory only when the writer's rows are all still there (no
        // deletion since its last fold) and all in the tail (no one else
        // folded them).
        let from_memory = writer.as_deref_mut().filter(|w| {
            w.removed == Some(removed) && w.appended.iter().all(|a| a.msg > upto && a.msg <= top)
        });
        let indexed = match from_memory {
            Some(w) => {
                // The watermarks changed since the writer's last fold.
                let changed: Vec<(i64, i64, i64)> =
                    sqlx::query_as("SELECT acct, upto, gen FROM mam_wm WHERE gen > $1")
                        .bind(w.wm_gen.unwrap_or(-1))
                        .fetch_all(&mut *tx)
                        .await?;
                for (acct, upto, generation) in changed {
                    w.wm.insert(acct, upto);
                    w.wm_gen = w.wm_gen.max(Some(generation));
                }
                let a = &mut w.appended;
                a.sort_unstable_by_key(|a| (a.acct, a.id, a.msg));
                let flat: Vec<i64> = a.iter().flat_map(|a| [a.acct, a.id, a.w, a.msg]).collect();
                let indexed = insert_entries(&mut tx, &IX_INSERT, &flat, 4).await? as i64;
                // `mam_ixw`: only what is not above its account's watermark.
                // (A copy: `appended` stays whole until the fold is committed.)
                let mut ixw: Vec<&Appended> = a
                    .iter()
                    .filter(|a| w.wm.get(&a.acct).is_some_and(|u| a.id <= *u))
                    .collect();
                if !ixw.is_empty() {
                    ixw.sort_unstable_by_key(|a| (a.acct, a.w, a.id, a.msg));
                    let flat: Vec<i64> = ixw
                        .iter()
                        .flat_map(|a| [a.acct, a.w, a.id, a.msg])
                        .collect();
                    insert_entries(&mut tx, &IXW_INSERT, &flat, 4).await?;
                }
                indexed
            }
            None => {
                let [ix, _] = index_rows!("rowid > $1 AND rowid <= $2");
                let indexed = sqlx::query(ix)
                    .bind(upto)
                    .bind(top)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as i64;
                sqlx::query(
                    "INSERT INTO mam_ixw (acct, w, id, msg) SELECT acct, w, id, rowid FROM mam_msg m \
                     WHERE rowid > $1 AND rowid <= $2 AND id <= (SELECT upto FROM mam_wm u WHERE u.acct = m.acct) \
                     UNION ALL SELECT w, acct, id2, rowid FROM mam_msg m WHERE rowid > $1 AND rowid <= $2 \
                     AND id2 <= (SELECT upto FROM mam_wm u WHERE u.acct = m.w) \
                     ORDER BY 1, 2, 3, 4 ON CONFLICT DO NOTHING",
                )
                .bind(upto)
                .bind(top)
                .execute(&mut *tx)
                .await?;
                indexed
            }
        };
        // (Sides: a row holds one or two.)
        let tail: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) + COUNT(id2) FROM mam_msg WHERE rowid > $1 AND rowid <= $2",
        )
        .bind(upto)
        .bind(top)
        .fetch_one(&mut *tx)
        .await?;
        if tail > indexed + settled {
            // Sides written twice: not indexed above, so unreachable; gone.
            let (one, two): (String, String) = sqlx::query_as(
                "SELECT json_group_array(rowid) FILTER (WHERE NOT EXISTS (SELECT 1 FROM mam_ix x \
                 WHERE x.acct = m.acct AND x.id = m.id AND x.msg = m.rowid)), \
                 json_group_array(rowid) FILTER (WHERE id2 IS NOT NULL AND NOT EXISTS (SELECT 1 \
                 FROM mam_ix x WHERE x.acct = m.w AND x.id = m.id2 AND x.msg = m.rowid)) \
                 FROM mam_msg m WHERE rowid > $1 AND rowid <= $2",
            )
            .bind(upto)
            .bind(top)
            .fetch_one(&mut *tx)
            .await?;
            drop_sides(&mut tx, &rowids(one)?, &rowids(two)?).await?;
        }
        // (`upto` not past the rows left: see `REMOVED`.)
        let removed: i64 = sqlx::query_scalar(
            "UPDATE mam_folded SET upto = MIN($1, (SELECT COALESCE(MAX(rowid), 0) FROM mam_msg)), \
             settled = 0 RETURNING removed",
        )
        .bind(top)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(w) = writer {
            w.appended.clear();
            w.removed = Some(removed);
        }
        Ok(tail as u64)
    }

    /// Before a read of one account's archive: index its tail rows, so
    /// the read sees every committed message (SQLite; a no-op on
    /// PostgreSQL). The other accounts' rows stay in the tail: a read
    /// costs one scan of the tail, not a fold.
    ///
    /// Before a read `with` one correspondent (from `mam_ixw`), also bring
    /// the account's `mam_ixw` up to date: the entries of `mam_ix` above
    /// its watermark are copied over (one range of `mam_ix`, sorted), and
    /// the watermark raised to the account's last id. Entries indexed later
    /// with an id not above the watermark (a message that was on its way to
    /// the writer meanwhile, an import) go to both indexes at once.
    async fn settle(&self, host: &str, user: &str, with: bool) -> Result<()> {
        let Db::Sqlite(pool) = &self.0 else {
            return Ok(());
        };
        let jid = format!("{user}@{host}");
        let rows = rowids(
            sqlx::query_scalar(concat!(
                "SELECT json_group_array(rowid) FROM mam_msg WHERE rowid > (SELECT upto FROM mam_folded) \
                 AND (acct = ",
                acct!(),
                " OR (w = ",
                acct!(),
                " AND id2 IS NOT NULL))"
            ))
            .bind(&jid)
            .fetch_one(pool)
            .await?,
        )?;
        let behind = with
            && sqlx::query_scalar::<_, bool>(concat!(
                "SELECT EXISTS (SELECT 1 FROM mam_ix WHERE ",
                above_watermark!(),
                ")"
            ))
            .bind(&jid)
            .fetch_one(pool)
            .await?;
        if rows.is_empty() && !behind {
            return Ok(());
        }
        let mut tx = pool.begin_write().await?;
        if !rows.is_empty() {
            let list = json_list(&rows)?;
            let [ix, ixw] = index_rows!("rowid IN (SELECT value FROM json_each($1))");
            let indexed = sqlx::query(ix)
                .bind(&list)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
            sqlx::query(ixw).bind(&list).execute(&mut *tx).await?;
            // (A fold may have indexed them meanwhile: then none is new here.)
            sqlx::query("UPDATE mam_folded SET settled = settled + $1")
                .bind(indexed)
                .execute(&mut *tx)
                .await?;
        }
        if with {
            sqlx::query(concat!(
                "INSERT INTO mam_ixw (acct, w, id, msg) SELECT acct, w, id, msg FROM mam_ix WHERE ",
                above_watermark!(),
                " ORDER BY acct, w, id ON CONFLICT DO NOTHING"
            ))
            .bind(&jid)
            .execute(&mut *tx)
            .await?;
            // With a new generation (`mam_folded.wm_gen` counts them), so
            // that the archive writer's next fold reads it.
            let raised = sqlx::query(concat!(
                "INSERT INTO mam_wm (acct, upto, gen) SELECT acct, MAX(id), \
                 (SELECT wm_gen + 1 FROM mam_folded) FROM mam_ix WHERE acct = ",
                acct!(),
                " GROUP BY acct ON CONFLICT (acct) DO UPDATE SET upto = excluded.upto, gen = excluded.gen \
                 WHERE excluded.upto > mam_wm.upto"
            ))
            .bind(&jid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if raised > 0 {
                sqlx::query("UPDATE mam_folded SET wm_gen = wm_gen + 1")
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The `WHERE` clause of `f` for `user@host`, with its parameters
    /// (from `$1`), and whether it needs the message row (`m`, SQLite).
    fn query_parts(&self, host: &str, user: &str, f: &Filter) -> (String, Vec<Bind>, bool) {
        let sqlite = matches!(self.0, Db::Sqlite(_));
        let mut binds = Vec::new();
        let mut sql = if sqlite {
            binds.push(Bind::Text(format!("{user}@{host}")));
            format!("x.acct = {}", acct!())
        } else {
            binds.push(Bind::Text(host.to_string()));
            binds.push(Bind::Text(user.to_string()));
            String::from("host = $1 AND username = $2")
        };
        let mut push = |sql: &mut String, cond: &str, b: Bind| {
            binds.push(b);
            sql.push_str(&format!(
                " AND {cond}",
                cond = cond.replace('#', &format!("${}", binds.len()))
            ));
        };
        let mut needs_msg = false;
        if let Some(w) = &f.with_bare {
            let cond = if sqlite {
                "x.w = (SELECT k FROM mam_jid WHERE jid = #)"
            } else {
                "with_bare = #"
            };
            push(&mut sql, cond, Bind::Text(w.clone()));
        }
        if let Some(r) = &f.with_res {
            needs_msg = sqlite;
            let cond = if sqlite {
                "(CASE WHEN m.acct = x.acct THEN m.with_res ELSE m.res2 END) = #"
            } else {
                "with_res = #"
            };
            push(&mut sql, cond, Bind::Text(r.clone()));
        }
        let id = if sqlite { "x.id" } else { "id" };
        if let Some(m) = f.min {
            push(&mut sql, &format!("{id} >= #"), Bind::Int(m));
        }
        if let Some(m) = f.max {
            push(&mut sql, &format!("{id} <= #"), Bind::Int(m));
        }
        if let Some(ids) = &f.ids {
            if ids.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(&format!(" AND {id} IN ("));
                for (i, v) in ids.iter().enumerate() {
                    binds.push(Bind::Int(*v));
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${}", binds.len()));
                }
                sql.push(')');
            }
        }
        (sql, binds, needs_msg)
    }

    /// `SELECT COUNT(*)` of `f`.
    fn count_sql(&self, host: &str, user: &str, f: &Filter) -> (String, Vec<Bind>) {
        let (w, binds, needs_msg) = self.query_parts(host, user, f);
        let sql = match self.0 {
            Db::Sqlite(_) => format!(
                "SELECT COUNT(*) FROM {} x {} WHERE {w}",
                Self::index_of(f),
                if needs_msg {
                    "JOIN mam_msg m ON m.rowid = x.msg"
                } else {
                    ""
                }
            ),
            Db::Postgres(_) => format!("SELECT COUNT(*) FROM mam_archive WHERE {w}"),
        };
        (sql, binds)
    }

    /// The page query of [`MamSql::page`] and [`MamSql::count_and_page`].
    fn page_sql(
        &self,
        host: &str,
        user: &str,
        f: &Filter,
        limit: usize,
        offset: usize,
        backward: bool,
    ) -> (String, Vec<Bind>) {
        let (w, binds, _) = self.query_parts(host, user, f);
        let dir = if backward { "DESC" } else { "ASC" };
        let sql = match self.0 {
            Db::Sqlite(_) => format!(
                "SELECT x.id, m.xml FROM {} x JOIN mam_msg m ON m.rowid = x.msg WHERE {w} \
                 ORDER BY x.id {dir} LIMIT {limit} OFFSET {offset}",
                Self::index_of(f)
            ),
            Db::Postgres(_) => format!(
                "SELECT id, xml FROM mam_archive WHERE {w} ORDER BY id {dir} LIMIT {limit} OFFSET {offset}"
            ),
        };
        (sql, binds)
    }

    /// The SQLite index table that serves `f`.
    fn index_of(f: &Filter) -> &'static str {
        if f.with_bare.is_some() {
            "mam_ixw"
        } else {
            "mam_ix"
        }
    }

    /// How many rows `f` covers, and a page of `pf` (`pf` narrows `f`): up
    /// to `limit` rows after skipping `offset`, oldest first (`backward`:
    /// the newest ones, still returned oldest first). Both are read from one
    /// snapshot, so the count and the page agree while messages arrive.
    #[allow(clippy::too_many_arguments)]
    pub async fn count_and_page(
        &self,
        host: &str,
        user: &str,
        f: &Filter,
        pf: &Filter,
        limit: usize,
        offset: usize,
        backward: bool,
    ) -> Result<(usize, Vec<(i64, String)>)> {
        let with = f.with_bare.is_some() || pf.with_bare.is_some();
        self.settle(host, user, with).await?;
        let (count_sql, cbinds) = self.count_sql(host, user, f);
        let (sql, binds) = self.page_sql(host, user, pf, limit, offset, backward);
        let (n, mut rows): (i64, Vec<(i64, String)>) = on_db!(&self.0, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let q = bind_all!(sqlx::query_scalar::<_, i64>(&count_sql), &cbinds);
            let n = q.fetch_one(&mut *tx).await?;
            let rows = if limit == 0 {
                Vec::new()
            } else {
                let q = bind_all!(sqlx::query_as::<_, (i64, String)>(&sql), &binds);
                q.fetch_all(&mut *tx).await?
            };
            tx.commit().await?;
            (n, rows)
        });
        if backward {
            rows.reverse();
        }
        Ok((n.max(0) as usize, rows))
    }

    /// How many rows `f` covers.
    pub async fn count(&self, host: &str, user: &str, f: &Filter) -> Result<usize> {
        Ok(self.count_and_page(host, user, f, f, 0, 0, false).await?.0)
    }

    /// A page of `f` (see [`MamSql::count_and_page`]), alone.
    pub async fn page(
        &self,
        host: &str,
        user: &str,
        f: &Filter,
        limit: usize,
        offset: usize,
        backward: bool,
    ) -> Result<Vec<(i64, String)>> {
        self.settle(host, user, f.with_bare.is_some()).await?;
        let (sql, binds) = self.page_sql(host, user, f, limit, offset, backward);
        let mut rows: Vec<(i64, String)> = on_db!(&self.0, |pool| {
            let q = bind_all!(sqlx::query_as::<_, (i64, String)>(&sql), &binds);
            q.fetch_all(pool).await?
        });
        if backward {
            rows.reverse();
        }
        Ok(rows)
    }

    /// Whether the account's archive has message `id`.
    pub async fn exists(&self, host: &str, user: &str, id: i64) -> Result<bool> {
        let f = Filter {
            ids: Some(vec![id]),
            ..Filter::default()
        };
        Ok(self.count(host, user, &f).await? > 0)
    }

    /// The first and last ids of an account's archive.
    pub async fn bounds(&self, host: &str, user: &str) -> Result<Option<(i64, i64)>> {
        self.settle(host, user, false).await?;
        let r: (Option<i64>, Option<i64>) = match &self.0 {
            Db::Sqlite(pool) => {
                sqlx::query_as(concat!(
                    "SELECT (SELECT MIN(id) FROM mam_ix WHERE acct = ",
                    acct!(),
                    "), (SELECT MAX(id) FROM mam_ix WHERE acct = ",
                    acct!(),
                    ")"
                ))
                .bind(format!("{user}@{host}"))
                .fetch_one(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT (SELECT id FROM mam_archive WHERE host = $1 AND username = $2 ORDER BY id ASC LIMIT 1), \
                            (SELECT id FROM mam_archive WHERE host = $1 AND username = $2 ORDER BY id DESC LIMIT 1)",
                )
                .bind(host)
                .bind(user)
                .fetch_one(pool)
                .await?
            }
        };
        Ok(match r {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        })
    }

    /// The largest id of every archive (to keep new ids above it).
    pub async fn max_id(&self) -> Result<Option<i64>> {
        Ok(match &self.0 {
            // One index lookup per JID, and the tail.
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT MAX(m) FROM (SELECT MAX((SELECT MAX(id) FROM mam_ix WHERE acct = j.k)) AS m \
                     FROM mam_jid j UNION ALL SELECT MAX(MAX(id, COALESCE(id2, id))) FROM mam_msg \
                     WHERE rowid > (SELECT upto FROM mam_folded))",
                )
                .fetch_one(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT MAX(id) FROM mam_archive")
                    .fetch_one(pool)
                    .await?
            }
        })
    }

    /// Delete an account's archive.
    pub async fn remove_archive(&self, host: &str, user: &str) -> Result<()> {
        match &self.0 {
            Db::Sqlite(pool) => {
                let jid = format!("{user}@{host}");
                let mut tx = pool.begin_write().await?;
                // Indexed or in the tail (a message written twice is in the
                // tail until the next fold); the account's side of each row.
                let (one, two): (String, String) = sqlx::query_as(concat!(
                    "SELECT json_group_array(rowid) FILTER (WHERE acct = ",
                    acct!(),
                    "), json_group_array(rowid) FILTER (WHERE acct != ",
                    acct!(),
                    ") FROM mam_msg WHERE rowid IN (SELECT msg FROM mam_ix WHERE acct = ",
                    acct!(),
                    " UNION SELECT rowid FROM mam_msg WHERE rowid > (SELECT upto FROM mam_folded) \
                     AND (acct = ",
                    acct!(),
                    " OR (w = ",
                    acct!(),
                    " AND id2 IS NOT NULL)))"
                ))
                .bind(&jid)
                .fetch_one(&mut *tx)
                .await?;
                drop_sides(&mut tx, &rowids(one)?, &rowids(two)?).await?;
                sqlx::query(concat!("DELETE FROM mam_wm WHERE acct = ", acct!()))
                    .bind(&jid)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                sqlx::query("DELETE FROM mam_archive WHERE host = $1 AND username = $2")
                    .bind(host)
                    .bind(user)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Delete everything archived before id `before` (retention); how many
    /// rows. On SQLite in transactions of [`EXPIRE_ROWS`] rows, found
    /// through each account's index range.
    pub async fn expire(&self, before: i64) -> Result<u64> {
        match &self.0 {
            Db::Sqlite(pool) => {
                self.fold_staged().await?;
                let mut n = 0;
                loop {
                    let mut tx = pool.begin_write().await?;
                    // The entries' sides of their rows.
                    let (one, two): (String, String) = sqlx::query_as(
                        "SELECT json_group_array(e.msg) FILTER (WHERE m.acct = e.acct AND m.id = e.id), \
                         json_group_array(e.msg) FILTER (WHERE NOT (m.acct = e.acct AND m.id = e.id)) \
                         FROM (SELECT x.acct, x.id, x.msg FROM mam_jid j CROSS JOIN mam_ix x \
                         ON x.acct = j.k AND x.id < $1 LIMIT $2) e JOIN mam_msg m ON m.rowid = e.msg",
                    )
                    .bind(before)
                    .bind(EXPIRE_ROWS)
                    .fetch_one(&mut *tx)
                    .await?;
                    let (one, two) = (rowids(one)?, rowids(two)?);
                    drop_sides(&mut tx, &one, &two).await?;
                    tx.commit().await?;
                    let entries = one.len() + two.len();
                    n += entries as u64;
                    if entries < EXPIRE_ROWS as usize {
                        return Ok(n);
                    }
                }
            }
            Db::Postgres(pool) => Ok(sqlx::query("DELETE FROM mam_archive WHERE id < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()),
        }
    }

    /// An account's preferences, if it set any.
    pub async fn prefs(&self, host: &str, user: &str) -> Result<Option<StoredPrefs>> {
        let r: Option<(String, String, String)> = on_db!(&self.0, |pool| {
            sqlx::query_as(
                "SELECT dflt, always_jids, never_jids FROM mam_prefs WHERE host = $1 AND username = $2",
            )
            .bind(host)
            .bind(user)
            .fetch_optional(pool)
            .await?
        });
        Ok(r.map(|(d, a, n)| StoredPrefs {
            default: d,
            always: split(&a),
            never: split(&n),
        }))
    }

    /// Replace an account's preferences.
    pub async fn set_prefs(&self, host: &str, user: &str, p: &StoredPrefs) -> Result<()> {
        let (a, n) = (p.always.join("\n"), p.never.join("\n"));
        on_db!(&self.0, |pool| {
            sqlx::query(
                "INSERT INTO mam_prefs (host, username, dflt, always_jids, never_jids) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (host, username) DO UPDATE SET dflt = excluded.dflt, \
                 always_jids = excluded.always_jids, never_jids = excluded.never_jids",
            )
            .bind(host)
            .bind(user)
            .bind(&p.default)
            .bind(&a)
            .bind(&n)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Delete an account's preferences.
    pub async fn remove_prefs(&self, host: &str, user: &str) -> Result<()> {
        on_db!(&self.0, |pool| {
            sqlx::query("DELETE FROM mam_prefs WHERE host = $1 AND username = $2")
                .bind(host)
                .bind(user)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}

/// Rows per transaction of [`MamSql::expire`] (SQLite).
const EXPIRE_ROWS: i64 = 10_000;

/// After a deletion from `mam_msg` (SQLite): counted, for the archive
/// writer (see [`Writer`]), and `upto` brought down to the largest rowid
/// left. SQLite gives a new row the largest rowid plus one, so once the
/// last rows are deleted their rowids are given out again: below an
/// `upto` that had passed them, the new rows would never be folded.
const REMOVED: &str = "UPDATE mam_folded SET removed = removed + 1, \
    upto = MIN(upto, (SELECT COALESCE(MAX(rowid), 0) FROM mam_msg))";

/// Remove side 1 of rows `one` and side 2 of rows `two` from the archive
/// (SQLite): their index entries, and the rows left with no side; a row
/// that keeps its other side keeps it as side 1 (so that a fold of the
/// tail indexes only what is left).
async fn drop_sides(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    one: &[i64],
    two: &[i64],
) -> Result<()> {
    if one.is_empty() && two.is_empty() {
        return Ok(());
    }
    let (one, two) = (json_list(one)?, json_list(two)?);
    let both: &[&String] = &[&one, &two];
    for (sql, lists) in [
        (
            "DELETE FROM mam_ix WHERE (acct, id, msg) IN (SELECT acct, id, rowid FROM mam_msg \
             WHERE rowid IN (SELECT value FROM json_each($1)) UNION ALL SELECT w, id2, rowid FROM mam_msg \
             WHERE rowid IN (SELECT value FROM json_each($2)) AND id2 IS NOT NULL)",
            both,
        ),
        (
            "DELETE FROM mam_ixw WHERE (acct, w, id, msg) IN (SELECT acct, w, id, rowid FROM mam_msg \
             WHERE rowid IN (SELECT value FROM json_each($1)) UNION ALL SELECT w, acct, id2, rowid FROM mam_msg \
             WHERE rowid IN (SELECT value FROM json_each($2)) AND id2 IS NOT NULL)",
            both,
        ),
        // No side left.
        (
            "DELETE FROM mam_msg WHERE rowid IN (SELECT value FROM json_each($1)) \
             AND (id2 IS NULL OR rowid IN (SELECT value FROM json_each($2)))",
            both,
        ),
        // Side 2 left: it becomes side 1.
        (
            "UPDATE mam_msg SET acct = w, w = acct, id = id2, with_res = res2, id2 = NULL, res2 = NULL \
             WHERE rowid IN (SELECT value FROM json_each($1)) AND id2 IS NOT NULL",
            &[&one],
        ),
        // Side 1 left.
        (
            "UPDATE mam_msg SET id2 = NULL, res2 = NULL WHERE rowid IN (SELECT value FROM json_each($1))",
            &[&two],
        ),
    ] {
        let mut q = sqlx::query(sql);
        for list in lists {
            q = q.bind(list.as_str());
        }
        q.execute(&mut **tx).await?;
    }
    sqlx::query(REMOVED).execute(&mut **tx).await?;
    Ok(())
}

fn split(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use palaver_storage::Storage;

    fn item(id: i64, with: &str) -> Item {
        Item {
            id,
            with_bare: with.into(),
            with_res: String::new(),
            origin_id: None,
            xml: format!("<message xmlns='jabber:client'><body>{id}</body></message>"),
        }
    }

    async fn put(m: &MamSql, rows: &[(String, String, Item)]) -> Result<()> {
        m.insert_many(rows, &mut Writer::default()).await
    }

    fn rows(user: &str, ids: impl IntoIterator<Item = i64>) -> Vec<(String, String, Item)> {
        ids.into_iter()
            .map(|i| ("h".to_string(), user.to_string(), item(i, "b@h")))
            .collect()
    }

    /// SQLite always, PostgreSQL when `PALAVER_TEST_PG_URL` is set.
    async fn stores(test: &str) -> Vec<(MamSql, Box<dyn std::any::Any>)> {
        let mut out: Vec<(Storage, Box<dyn std::any::Any>)> = Vec::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .expect("sqlite");
        out.push((s, Box::new(dir)));
        if let Some(db) = palaver_storage::postgres::testdb::TestDb::create(test).await {
            let s = Storage::open_postgres(&db.url, &Default::default())
                .await
                .expect("postgres");
            out.push((s, Box::new(db)));
        }
        let mut stores = Vec::new();
        for (s, guard) in out {
            s.db.migrate_module("mod_mam", MIGRATIONS)
                .await
                .expect("migrate");
            stores.push((MamSql::new(s.db.clone()), guard));
        }
        stores
    }

    #[tokio::test]
    async fn written_batches_are_read_back_folded_or_not() {
        for (m, _guard) in stores("mam written batches").await {
            put(&m, &rows("u", 1..=300)).await.expect("batch");
            // A message routed twice is archived once, staged or not.
            put(&m, &rows("u", [5, 301])).await.expect("again");
            m.insert("h", "u", &[item(302, "b@h")])
                .await
                .expect("direct");
            put(&m, &rows("v", [7])).await.expect("other");
            let all = Filter::default();
            // Reads see the staged rows (their account's are archived first).
            assert_eq!(m.count("h", "u", &all).await.expect("count"), 302);
            assert_eq!(m.bounds("h", "u").await.expect("bounds"), Some((1, 302)));
            // The fold indexes the other account's row and drops the
            // second copy of id 5 (SQLite: every row written so far was in
            // the tail).
            if let Db::Sqlite(pool) = &m.0 {
                assert_eq!(m.fold_staged().await.expect("fold"), 304);
                let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mam_msg")
                    .fetch_one(pool)
                    .await
                    .expect("rows");
                assert_eq!(rows, 303);
            }
            assert_eq!(m.fold_staged().await.expect("fold"), 0);
            assert_eq!(m.count("h", "v", &all).await.expect("count"), 1);
            put(&m, &rows("u", [303, 304])).await.expect("more");
            assert!(m.exists("h", "u", 304).await.expect("exists"));
            put(&m, &rows("u", [305])).await.expect("more");
            let page = m.page("h", "u", &all, 2, 0, true).await.expect("page");
            assert_eq!(page.iter().map(|r| r.0).collect::<Vec<_>>(), [304, 305]);
            put(&m, &rows("v", [8])).await.expect("more");
            m.remove_archive("h", "v").await.expect("remove");
            assert_eq!(m.count("h", "v", &all).await.expect("count"), 0);
            put(&m, &rows("u", [306])).await.expect("more");
            assert_eq!(m.max_id().await.expect("max"), Some(306));
            put(&m, &rows("u", [307])).await.expect("more");
            assert_eq!(m.expire(301).await.expect("expire"), 300);
            assert_eq!(m.count("h", "u", &all).await.expect("count"), 7);
        }
    }

    /// Rows for many accounts, in the writer's batches.
    async fn stage(m: &MamSql, users: std::ops::Range<usize>, ids: std::ops::Range<i64>) {
        let mut all = Vec::new();
        for id in ids {
            for u in users.clone() {
                all.push(("h".to_string(), format!("u{u}"), item(id, "b@h")));
            }
        }
        for batch in all.chunks(ROWS_PER_INSERT) {
            m.insert_many(batch, &mut Writer::default())
                .await
                .expect("batch");
        }
    }

    #[tokio::test]
    async fn a_fold_keeps_every_row_even_beside_writes() {
        for (m, _guard) in stores("mam fold beside writes").await {
            stage(&m, 0..40, 0..150).await;
            // A fold while more rows are staged beside it: it deletes only
            // what it archived.
            let (folded, ()) = tokio::join!(m.fold_staged(), stage(&m, 0..40, 150..200));
            let folded = folded.expect("fold");
            if matches!(m.0, Db::Sqlite(_)) {
                assert!(folded >= 6000, "{folded}");
            }
            let all = Filter::default();
            for u in 0..40 {
                let user = format!("u{u}");
                assert_eq!(m.count("h", &user, &all).await.expect("count"), 200);
                let page = m.page("h", &user, &all, 3, 0, true).await.expect("page");
                assert_eq!(
                    page.iter().map(|r| r.0).collect::<Vec<_>>(),
                    [197, 198, 199]
                );
            }
            m.fold_staged().await.expect("fold");
            assert_eq!(m.fold_staged().await.expect("fold"), 0);
            assert_eq!(m.max_id().await.expect("max"), Some(199));
        }
    }

    /// Every id of `user`'s archive, oldest first, checked against its
    /// message (an index entry pointing at another row would show).
    async fn ids_of(m: &MamSql, user: &str) -> Vec<i64> {
        let page = m
            .page("h", user, &Filter::default(), 1000, 0, false)
            .await
            .expect("page");
        for (id, xml) in &page {
            assert!(xml.contains(&format!("<body>{id}</body>")), "{id}: {xml}");
        }
        let with = Filter {
            with_bare: Some("b@h".into()),
            ..Filter::default()
        };
        let by_with = m
            .page("h", user, &with, 1000, 0, false)
            .await
            .expect("page");
        assert_eq!(by_with, page);
        page.into_iter().map(|(id, _)| id).collect()
    }

    #[tokio::test]
    async fn the_writers_fold_from_memory_indexes_what_it_wrote() {
        for (m, _guard) in stores("mam fold from memory").await {
            let sqlite = matches!(m.0, Db::Sqlite(_));
            let mut w = Writer::default();
            let n = |k: u64| if sqlite { k } else { 0 };
            // The first fold reads the tail (the writer knows nothing yet).
            m.insert_many(&rows("u", 1..=10), &mut w)
                .await
                .expect("put");
            assert_eq!(m.fold_written(&mut w).await.expect("fold"), n(10));
            // From memory: two accounts, batches of several statements.
            m.insert_many(&rows("u", 11..=600), &mut w)
                .await
                .expect("put");
            m.insert_many(&rows("v", 1..=5), &mut w).await.expect("put");
            if sqlite {
                assert_eq!(w.appended.len(), 595);
                assert!(w.removed.is_some());
            }
            assert_eq!(m.fold_written(&mut w).await.expect("fold"), n(595));
            assert!(w.appended.is_empty());
            assert_eq!(ids_of(&m, "u").await, (1..=600).collect::<Vec<_>>());
            assert_eq!(ids_of(&m, "v").await, (1..=5).collect::<Vec<_>>());
            // A read indexes its rows first; the fold from memory then
            // finds them indexed, and indexes the rest.
            m.insert_many(&rows("u", 601..=610), &mut w)
                .await
                .expect("put");
            m.insert_many(&rows("v", 6..=7), &mut w).await.expect("put");
            assert_eq!(
                m.count("h", "v", &Filter::default()).await.expect("count"),
                7
            );
            assert_eq!(m.fold_written(&mut w).await.expect("fold"), n(12));
            assert_eq!(ids_of(&m, "u").await, (1..=610).collect::<Vec<_>>());
            // Rows deleted from the tail (an account removed), and their
            // rowids given out again: the writer's rows are not the tail any
            // more, so the fold reads it.
            m.insert_many(&rows("v", 8..=9), &mut w).await.expect("put");
            m.remove_archive("h", "v").await.expect("remove");
            m.insert_many(&rows("u", 611..=612), &mut w)
                .await
                .expect("put");
            m.fold_written(&mut w).await.expect("fold");
            assert_eq!(ids_of(&m, "v").await, Vec::<i64>::new());
            assert_eq!(ids_of(&m, "u").await, (1..=612).collect::<Vec<_>>());
            // The last row written twice (an id the account has): the fold
            // drops it, and the next row takes its rowid.
            m.insert_many(&rows("u", [612]), &mut w).await.expect("put");
            m.fold_written(&mut w).await.expect("fold");
            m.insert_many(&rows("u", [620]), &mut w).await.expect("put");
            m.fold_written(&mut w).await.expect("fold");
            let mut expected: Vec<i64> = (1..=612).collect();
            expected.push(620);
            assert_eq!(ids_of(&m, "u").await, expected);
            // Someone else folded the writer's rows: read from the tail.
            m.insert_many(&rows("u", 613..=614), &mut w)
                .await
                .expect("put");
            m.fold_staged().await.expect("fold");
            m.insert_many(&rows("u", 615..=616), &mut w)
                .await
                .expect("put");
            assert_eq!(m.fold_written(&mut w).await.expect("fold"), n(2));
            expected.extend(613..=616);
            expected.sort_unstable();
            assert_eq!(ids_of(&m, "u").await, expected);
            if let Db::Sqlite(pool) = &m.0 {
                let dangling: i64 = sqlx::query_scalar(
                    "SELECT (SELECT COUNT(*) FROM mam_ix x WHERE NOT EXISTS (SELECT 1 FROM mam_msg m \
                     WHERE m.rowid = x.msg AND m.acct = x.acct AND m.w = x.w AND m.id = x.id)) + (SELECT COUNT(*) \
                     FROM mam_ixw x WHERE NOT EXISTS (SELECT 1 FROM mam_msg m WHERE m.rowid = x.msg \
                     AND m.acct = x.acct AND m.w = x.w AND m.id = x.id))",
                )
                .fetch_one(pool)
                .await
                .expect("dangling");
                assert_eq!(dangling, 0);
            }
        }
    }

    /// `user`'s ids with `with`, oldest first, and their count (RSM).
    async fn ids_with(m: &MamSql, user: &str, with: &str) -> (Vec<i64>, usize) {
        let f = Filter {
            with_bare: Some(with.into()),
            ..Filter::default()
        };
        let (n, page) = m
            .count_and_page("h", user, &f, &f, 1000, 0, false)
            .await
            .expect("page");
        (page.into_iter().map(|(id, _)| id).collect(), n)
    }

    fn rows_with(user: &str, with: &str, ids: &[i64]) -> Vec<(String, String, Item)> {
        ids.iter()
            .map(|i| ("h".to_string(), user.to_string(), item(*i, with)))
            .collect()
    }

    #[tokio::test]
    async fn the_index_by_correspondent_is_brought_up_to_date_by_its_queries() {
        for (m, _guard) in stores("mam lazy ixw").await {
            let mut w = Writer::default();
            let ixw = |m: &MamSql| {
                let pool = match &m.0 {
                    Db::Sqlite(pool) => Some(pool.clone()),
                    Db::Postgres(_) => None,
                };
                async move {
                    match pool {
                        Some(pool) => Some(
                            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM mam_ixw")
                                .fetch_one(&pool)
                                .await
                                .expect("ixw"),
                        ),
                        None => None,
                    }
                }
            };
            let tens: Vec<i64> = (1..=50).map(|i| i * 10).collect();
            m.insert_many(&rows_with("u", "b@h", &tens), &mut w)
                .await
                .expect("put");
            m.insert_many(&rows_with("u", "c@h", &[505, 515]), &mut w)
                .await
                .expect("put");
            // The first fold (from the tail), then one from memory: neither
            // fills `mam_ixw` for an account that never asked.
            m.fold_written(&mut w).await.expect("fold");
            m.insert_many(&rows_with("u", "b@h", &[520]), &mut w)
                .await
                .expect("put");
            m.fold_written(&mut w).await.expect("fold");
            if let Some(n) = ixw(&m).await {
                assert_eq!(n, 0);
            }
            let mut b: Vec<i64> = tens.clone();
            b.push(520);
            assert_eq!(ids_with(&m, "u", "b@h").await, (b.clone(), 51));
            assert_eq!(ids_with(&m, "u", "c@h").await, (vec![505, 515], 2));
            // Up to date now (the watermark is 520).
            if let Some(n) = ixw(&m).await {
                assert_eq!(n, 53);
            }
            // Messages below the watermark that reach the index later: a
            // fold from memory (the writer learns the new watermark), one
            // from the tail, a direct write, a read's settling.
            m.insert_many(&rows_with("u", "b@h", &[15, 530]), &mut w)
                .await
                .expect("put");
            m.fold_written(&mut w).await.expect("fold");
            m.insert_many(&rows_with("u", "b@h", &[25]), &mut w)
                .await
                .expect("put");
            m.fold_staged().await.expect("fold");
            m.insert("h", "u", &[item(35, "b@h")])
                .await
                .expect("direct");
            m.insert_many(&rows_with("u", "b@h", &[45]), &mut w)
                .await
                .expect("put");
            assert_eq!(
                m.count("h", "u", &Filter::default()).await.expect("count"),
                58
            );
            m.fold_written(&mut w).await.expect("fold");
            b.extend([15, 25, 35, 45, 530]);
            b.sort_unstable();
            assert_eq!(ids_with(&m, "u", "b@h").await, (b.clone(), 56));
            // Another account's late row, folded from memory after that
            // account's first query.
            m.insert_many(&rows_with("v", "b@h", &[100, 200]), &mut w)
                .await
                .expect("put");
            m.fold_written(&mut w).await.expect("fold");
            assert_eq!(ids_with(&m, "v", "b@h").await, (vec![100, 200], 2));
            m.insert_many(&rows_with("v", "b@h", &[150]), &mut w)
                .await
                .expect("put");
            m.fold_written(&mut w).await.expect("fold");
            assert_eq!(ids_with(&m, "v", "b@h").await, (vec![100, 150, 200], 3));
            // An archive removed and started again: its old watermark is
            // gone with it.
            m.remove_archive("h", "v").await.expect("remove");
            m.insert_many(&rows_with("v", "b@h", &[50, 60]), &mut w)
                .await
                .expect("put");
            m.fold_written(&mut w).await.expect("fold");
            assert_eq!(ids_with(&m, "v", "b@h").await, (vec![50, 60], 2));
            assert_eq!(ids_with(&m, "u", "b@h").await, (b, 56));
        }
    }

    /// One side of message `msg`: archived by `user` as `id`, `with`
    /// `with/res` (the same message text on both sides).
    fn side(user: &str, id: i64, with: &str, res: &str, msg: i64) -> (String, String, Item) {
        let it = Item {
            id,
            with_bare: with.into(),
            with_res: res.into(),
            origin_id: Some(format!("o{msg}")),
            xml: format!("<message xmlns='jabber:client'><body>m{msg}</body></message>"),
        };
        ("h".to_string(), user.to_string(), it)
    }

    /// `user`'s archive as (id, message body), oldest first.
    async fn msgs_of(m: &MamSql, user: &str) -> Vec<(i64, String)> {
        let page = m
            .page("h", user, &Filter::default(), 1000, 0, false)
            .await
            .expect("page");
        page.into_iter()
            .map(|(id, xml)| {
                let body = xml
                    .split("<body>")
                    .nth(1)
                    .and_then(|b| b.split('<').next())
                    .unwrap_or_default()
                    .to_string();
                (id, body)
            })
            .collect()
    }

    async fn ids_with_res(m: &MamSql, user: &str, with: &str, res: &str) -> Vec<i64> {
        let f = Filter {
            with_bare: Some(with.into()),
            with_res: Some(res.into()),
            ..Filter::default()
        };
        m.page("h", user, &f, 1000, 0, false)
            .await
            .expect("page")
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn owned(v: &[(i64, &str)]) -> Vec<(i64, String)> {
        v.iter().map(|(i, b)| (*i, b.to_string())).collect()
    }

    #[tokio::test]
    async fn the_two_sides_of_a_local_message_share_a_row() {
        for (m, _guard) in stores("mam shared rows").await {
            let pool = match &m.0 {
                Db::Sqlite(pool) => Some(pool.clone()),
                Db::Postgres(_) => None,
            };
            let rows_in = |pool: Option<sqlx::SqlitePool>| async move {
                match pool {
                    Some(p) => Some(
                        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM mam_msg")
                            .fetch_one(&p)
                            .await
                            .expect("rows"),
                    ),
                    None => None,
                }
            };
            let mut w = Writer::default();
            // a -> b (b's side from a's phone), b -> a (a's side from b's
            // laptop), a -> c (elsewhere: one side), in one batch; the
            // sides of one message need not be next to each other.
            let batch = vec![
                side("a", 100, "b@h", "", 1),
                side("b", 210, "a@h", "laptop", 2),
                side("b", 101, "a@h", "phone", 1),
                side("a", 102, "c@x", "", 3),
                side("a", 211, "b@h", "laptop", 2),
            ];
            m.insert_many(&batch, &mut w).await.expect("put");
            if let Some(n) = rows_in(pool.clone()).await {
                assert_eq!(n, 3);
            }
            // b reads before any fold (its sides are settled), then the
            // first fold reads the tail.
            assert_eq!(msgs_of(&m, "b").await, owned(&[(101, "m1"), (210, "m2")]));
            m.fold_written(&mut w).await.expect("fold");
            assert_eq!(
                msgs_of(&m, "a").await,
                owned(&[(100, "m1"), (102, "m3"), (211, "m2")])
            );
            assert_eq!(ids_with_res(&m, "b", "a@h", "phone").await, [101]);
            assert_eq!(ids_with_res(&m, "a", "b@h", "laptop").await, [211]);
            assert_eq!(ids_with_res(&m, "a", "b@h", "").await, [100]);
            // Folded from memory; a side written twice (b has id 101) is
            // dropped and its other side kept; a message written twice on
            // both sides is dropped whole.
            let batch = vec![
                side("a", 300, "b@h", "", 4),
                side("b", 301, "a@h", "phone", 4),
                side("a", 302, "b@h", "", 5),
                side("b", 101, "a@h", "phone", 5),
                side("a", 100, "b@h", "", 1),
                side("b", 101, "a@h", "phone", 1),
            ];
            m.insert_many(&batch, &mut w).await.expect("put");
            let folded = m.fold_written(&mut w).await.expect("fold");
            assert_eq!(folded, if pool.is_some() { 6 } else { 0 });
            if let Some(n) = rows_in(pool.clone()).await {
                assert_eq!(n, 5);
            }
            assert_eq!(
                msgs_of(&m, "a").await,
                owned(&[
                    (100, "m1"),
                    (102, "m3"),
                    (211, "m2"),
                    (300, "m4"),
                    (302, "m5")
                ])
            );
            assert_eq!(
                msgs_of(&m, "b").await,
                owned(&[(101, "m1"), (210, "m2"), (301, "m4")])
            );
            assert_eq!(ids_with_res(&m, "b", "a@h", "phone").await, [101, 301]);
            // a's archive removed, folded or still in the tail: b keeps its
            // sides, and no fold brings a's back.
            m.insert_many(
                &[side("a", 400, "b@h", "", 6), side("b", 401, "a@h", "", 6)],
                &mut w,
            )
            .await
            .expect("put");
            m.remove_archive("h", "a").await.expect("remove");
            m.fold_written(&mut w).await.expect("fold");
            assert_eq!(msgs_of(&m, "a").await, owned(&[]));
            assert_eq!(
                msgs_of(&m, "b").await,
                owned(&[(101, "m1"), (210, "m2"), (301, "m4"), (401, "m6")])
            );
            assert_eq!(ids_with_res(&m, "b", "a@h", "phone").await, [101, 301]);
            assert_eq!(ids_with_res(&m, "b", "a@h", "").await, [401]);
            // Retention takes each side by its own id.
            m.insert_many(
                &[side("b", 500, "c@h", "", 7), side("c", 150, "b@h", "", 7)],
                &mut w,
            )
            .await
            .expect("put");
            assert_eq!(m.expire(200).await.expect("expire"), 2);
            assert_eq!(
                msgs_of(&m, "b").await,
                owned(&[(210, "m2"), (301, "m4"), (401, "m6"), (500, "m7")])
            );
            assert_eq!(msgs_of(&m, "c").await, owned(&[]));
            assert_eq!(m.max_id().await.expect("max"), Some(500));
            if let Some(pool) = &pool {
                let dangling: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM mam_ix x WHERE NOT EXISTS (SELECT 1 FROM mam_msg m \
                     WHERE m.rowid = x.msg AND ((m.acct = x.acct AND m.w = x.w AND m.id = x.id) \
                     OR (m.w = x.acct AND m.acct = x.w AND m.id2 = x.id)))",
                )
                .fetch_one(pool)
                .await
                .expect("dangling");
                assert_eq!(dangling, 0);
                let unindexed: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM mam_msg m WHERE NOT EXISTS (SELECT 1 FROM mam_ix x \
                     WHERE x.msg = m.rowid)",
                )
                .fetch_one(pool)
                .await
                .expect("unindexed");
                assert_eq!(unindexed, 0);
            }
        }
    }

    #[tokio::test]
    async fn an_archive_of_the_earlier_schemas_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .expect("sqlite");
        let Db::Sqlite(pool) = &s.db else {
            unreachable!("a SQLite store")
        };
        let row = |table: &str, id: i64, with: &str| {
            format!(
                "INSERT INTO {table} (host, username, id, with_bare, with_res, origin_id, xml) \
                 VALUES ('h', 'u', {id}, '{with}', '', NULL, '<message xmlns=''jabber:client''><body>{id}</body></message>')"
            )
        };
        s.db.migrate_module("mod_mam", &MIGRATIONS[..1])
            .await
            .expect("first schema");
        for (id, with) in [(1, "b@h"), (2, "c@h")] {
            sqlx::query(&row("mam_archive", id, with))
                .execute(pool)
                .await
                .expect("archived");
        }
        s.db.migrate_module("mod_mam", &MIGRATIONS[..2])
            .await
            .expect("second schema");
        // Staged, one of them archived already.
        for (id, with) in [(2, "c@h"), (3, "u@h")] {
            sqlx::query(&row("mam_staging", id, with))
                .execute(pool)
                .await
                .expect("staged");
        }
        s.db.migrate_module("mod_mam", MIGRATIONS)
            .await
            .expect("migrate");
        let m = MamSql::new(s.db.clone());
        put(&m, &rows("u", [4])).await.expect("batch");
        let all = Filter::default();
        let page = m.page("h", "u", &all, 10, 0, false).await.expect("page");
        assert_eq!(page.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(page[1].1.contains("<body>2</body>"), "{page:?}");
        let with_c = Filter {
            with_bare: Some("c@h".into()),
            ..Filter::default()
        };
        assert_eq!(m.count("h", "u", &with_c).await.expect("count"), 1);
        assert_eq!(m.max_id().await.expect("max"), Some(4));
    }
}
