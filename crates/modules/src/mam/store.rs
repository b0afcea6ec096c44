//! The store of `mod_mam`, beside the module (see `palaver_storage::Db`).
//!
//! One row per archived message and account: the archive id `id` is a
//! microsecond timestamp made unique and increasing by the module (so
//! "by date" and "by id" are the same order, and XEP-0082 `start`/`end`
//! become id ranges). Lookups go through two indexes: the primary key
//! `(host, username, id)` for a whole archive, and `(host, username,
//! with_bare, id)` for one conversation; both serve the last page of either
//! order by walking the index backwards. `mam_archive_id` serves retention.

use palaver_server::ModuleCx;
use palaver_storage::{BeginWrite, Db, ModuleMigration, Result, on_db};

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
        // SQLite: the archive writer's staging table (see [`MamSql::insert_many`]).
        // PostgreSQL writes into `mam_archive` directly: nothing to add.
        sqlite: "CREATE TABLE mam_staging (host TEXT NOT NULL, username TEXT NOT NULL, id BIGINT NOT NULL, \
             with_bare TEXT NOT NULL, with_res TEXT NOT NULL, origin_id TEXT, xml TEXT NOT NULL);",
        postgres: "SELECT 1;",
    },
];

/// Rows per statement of [`MamSql::insert_many`] (7 parameters each,
/// well under SQLite's and PostgreSQL's limits): the archive writer's
/// whole batch, so that a batch is one statement.
pub const ROWS_PER_INSERT: usize = 256;

/// `INSERT INTO mam_archive … SELECT … FROM mam_staging ` followed by `$tail`
/// (an id already archived is kept).
macro_rules! archive_staged {
    ($tail:literal) => {
        concat!(
            "INSERT INTO mam_archive (host, username, id, with_bare, with_res, origin_id, xml) \
             SELECT host, username, id, with_bare, with_res, origin_id, xml FROM mam_staging ",
            $tail,
            " ON CONFLICT DO NOTHING"
        )
    };
}

/// The row ids of a `json_group_array(rowid …)`: one row to fetch, not
/// one per staged row (sqlx hands SQLite's rows over one at a time, from
/// its worker thread).
fn staged_rowids(list: String) -> Result<Vec<i64>> {
    serde_json::from_str(&list)
        .map_err(|e| palaver_storage::StorageError::Backend(format!("staged archive rows: {e}")))
}

/// `INSERT INTO mam_staging … VALUES (?, …), (?, …) …` for `n` rows
/// (SQLite). Anonymous parameters: sqlx asks SQLite for every parameter's
/// name while binding, and SQLite finds a name by a linear walk of the
/// statement's parameter list, so `$N` parameters cost O(n²) per statement
/// (with 896 of them, most of the CPU of an archive batch).
fn staging_insert(n: usize) -> String {
    rows_insert("mam_staging", n, |sql, _| {
        sql.push_str("(?, ?, ?, ?, ?, ?, ?)")
    })
}

/// `INSERT INTO mam_archive … VALUES ($1, …), ($8, …) … ON CONFLICT DO
/// NOTHING` for `n` rows (PostgreSQL).
fn multi_row_insert(n: usize) -> String {
    let mut sql = rows_insert("mam_archive", n, |sql, r| {
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
    });
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// `INSERT INTO table (…) VALUES ` and `n` rows of placeholders written
/// by `row` (given the row's index).
fn rows_insert(table: &str, n: usize, row: impl Fn(&mut String, usize)) -> String {
    let mut sql = String::with_capacity(120 + n * 40);
    sql.push_str("INSERT INTO ");
    sql.push_str(table);
    sql.push_str(" (host, username, id, with_bare, with_res, origin_id, xml) VALUES ");
    for r in 0..n {
        if r > 0 {
            sql.push_str(", ");
        }
        row(&mut sql, r);
    }
    sql
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

    /// Archive messages of one account (one transaction); an id already
    /// there is kept (a message routed twice is archived once).
    pub async fn insert(&self, host: &str, user: &str, items: &[Item]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        on_db!(&self.0, |pool| {
            // One message (the hot path) is one autocommit statement: no
            // transaction held across round trips while other sessions'
            // archive writes queue behind it.
            if let [it] = items {
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
                .execute(pool)
                .await?;
                return Ok(());
            }
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
        });
        Ok(())
    }

    /// Archive messages of several accounts (`(host, user, item)`) at
    /// once: the archive writer's batch, written as multi-row `INSERT`s of
    /// up to [`ROWS_PER_INSERT`] rows (a batch of that size is one
    /// statement, not one per message; a longer one is one transaction).
    ///
    /// On SQLite the rows go to `mam_staging`, a table without indexes that
    /// only grows at its end, and [`MamSql::fold_staged`] moves them into
    /// `mam_archive` later, many at once, sorted by account. Written
    /// straight into `mam_archive`, a batch of rows for as many accounts
    /// dirties two random leaf pages per row (the primary key and the
    /// `with` index), and SQLite writes every dirty page whole to the WAL at
    /// each commit and again at each checkpoint: about 40 µs of CPU per
    /// row, most of it in the kernel (BENCHMARKS.md, run 8). Folded, an
    /// account's rows of many commits share their index pages. A read of
    /// an account's archive first archives that account's staged rows
    /// ([`MamSql::settle`]), so reads see all committed messages.
    /// PostgreSQL logs row changes, not pages, and is written directly.
    pub async fn insert_many(&self, rows: &[(String, String, Item)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql_for: fn(usize) -> String = match self.0 {
            Db::Sqlite(_) => staging_insert,
            Db::Postgres(_) => multi_row_insert,
        };
        on_db!(&self.0, |pool| {
            // A batch of up to ROWS_PER_INSERT rows is one statement, so
            // one round trip to the database (autocommit); a longer one is
            // one transaction of several.
            let mut tx = if rows.len() > ROWS_PER_INSERT {
                Some(pool.begin_write().await?)
            } else {
                None
            };
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                let sql = sql_for(chunk.len());
                let mut q = sqlx::query(&sql);
                // (`&str`s: bound without a copy.)
                for (host, user, it) in chunk {
                    q = q
                        .bind(host.as_str())
                        .bind(user.as_str())
                        .bind(it.id)
                        .bind(it.with_bare.as_str())
                        .bind(it.with_res.as_str())
                        .bind(it.origin_id.as_deref())
                        .bind(it.xml.as_str());
                }
                match tx.as_mut() {
                    Some(tx) => q.execute(&mut **tx).await?,
                    None => q.execute(pool).await?,
                };
            }
            if let Some(tx) = tx {
                tx.commit().await?;
            }
        });
        Ok(())
    }

    /// Move the rows staged by [`MamSql::insert_many`] into `mam_archive`,
    /// in one transaction, sorted by account (an id already archived is
    /// kept, as in [`MamSql::insert`]); how many were staged. A no-op on
    /// PostgreSQL.
    ///
    /// One transaction, not slices of one: SQLite drops a connection's
    /// page cache whenever another connection has committed, so slices
    /// interleaved with the writer's batches each read the archive's index
    /// pages again (BENCHMARKS.md, run 11).
    pub async fn fold_staged(&self) -> Result<u64> {
        let Db::Sqlite(pool) = &self.0 else {
            return Ok(0);
        };
        let mut tx = pool.begin_write().await?;
        // (`WHERE true`: SQLite's parser needs it before an upsert clause.)
        sqlx::query(archive_staged!("WHERE true ORDER BY host, username, id"))
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM mam_staging")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Before a read of one account's archive: archive the rows staged
    /// for it, so the read sees every committed message (SQLite; a no-op
    /// on PostgreSQL). The other accounts' rows stay staged: a read costs
    /// one scan of the staging table, not a fold.
    async fn settle(&self, host: &str, user: &str) -> Result<()> {
        let Db::Sqlite(pool) = &self.0 else {
            return Ok(());
        };
        let rows = staged_rowids(
            sqlx::query_scalar(
                "SELECT json_group_array(rowid) FROM mam_staging WHERE host = ? AND username = ?",
            )
            .bind(host)
            .bind(user)
            .fetch_one(pool)
            .await?,
        )?;
        if rows.is_empty() {
            return Ok(());
        }
        // `[1,2,3]`: the row ids as one parameter (`json_each`).
        let list = serde_json::to_string(&rows).map_err(|e| {
            palaver_storage::StorageError::Backend(format!("staged archive rows: {e}"))
        })?;
        let mut tx = pool.begin_write().await?;
        sqlx::query(archive_staged!(
            "WHERE rowid IN (SELECT value FROM json_each(?))"
        ))
        .bind(&list)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM mam_staging WHERE rowid IN (SELECT value FROM json_each(?))")
            .bind(&list)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The page query of [`MamSql::page`] and [`MamSql::count_and_page`].
    fn page_sql(
        f: &Filter,
        limit: usize,
        offset: usize,
        backward: bool,
        binds: &mut Vec<Bind>,
    ) -> String {
        let w = Self::where_clause(f, binds);
        format!(
            "SELECT id, xml FROM mam_archive WHERE {w} ORDER BY id {} LIMIT {} OFFSET {}",
            if backward { "DESC" } else { "ASC" },
            limit,
            offset
        )
    }

    fn where_clause(f: &Filter, binds: &mut Vec<Bind>) -> String {
        let mut sql = String::from("host = $1 AND username = $2");
        let mut push = |sql: &mut String, cond: &str, b: Bind| {
            binds.push(b);
            sql.push_str(&format!(" AND {cond} ${}", binds.len() + 2));
        };
        if let Some(w) = &f.with_bare {
            push(&mut sql, "with_bare =", Bind::Text(w.clone()));
        }
        if let Some(r) = &f.with_res {
            push(&mut sql, "with_res =", Bind::Text(r.clone()));
        }
        if let Some(m) = f.min {
            push(&mut sql, "id >=", Bind::Int(m));
        }
        if let Some(m) = f.max {
            push(&mut sql, "id <=", Bind::Int(m));
        }
        if let Some(ids) = &f.ids {
            if ids.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(" AND id IN (");
                for (i, id) in ids.iter().enumerate() {
                    binds.push(Bind::Int(*id));
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${}", binds.len() + 2));
                }
                sql.push(')');
            }
        }
        sql
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
        self.settle(host, user).await?;
        let mut cbinds = Vec::new();
        let w = Self::where_clause(f, &mut cbinds);
        let count_sql = format!("SELECT COUNT(*) FROM mam_archive WHERE {w}");
        let mut binds = Vec::new();
        let sql = Self::page_sql(pf, limit, offset, backward, &mut binds);
        let (n, mut rows): (i64, Vec<(i64, String)>) = on_db!(&self.0, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let mut q = sqlx::query_scalar::<_, i64>(&count_sql)
                .bind(host)
                .bind(user);
            for b in &cbinds {
                q = match b {
                    Bind::Text(s) => q.bind(s.as_str()),
                    Bind::Int(i) => q.bind(*i),
                };
            }
            let n = q.fetch_one(&mut *tx).await?;
            let mut q = sqlx::query_as::<_, (i64, String)>(&sql)
                .bind(host)
                .bind(user);
            for b in &binds {
                q = match b {
                    Bind::Text(s) => q.bind(s.as_str()),
                    Bind::Int(i) => q.bind(*i),
                };
            }
            let rows = q.fetch_all(&mut *tx).await?;
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
        self.settle(host, user).await?;
        let mut binds = Vec::new();
        let sql = Self::page_sql(f, limit, offset, backward, &mut binds);
        let mut rows: Vec<(i64, String)> = on_db!(&self.0, |pool| {
            let mut q = sqlx::query_as::<_, (i64, String)>(&sql)
                .bind(host)
                .bind(user);
            for b in &binds {
                q = match b {
                    Bind::Text(s) => q.bind(s.as_str()),
                    Bind::Int(i) => q.bind(*i),
                };
            }
            q.fetch_all(pool).await?
        });
        if backward {
            rows.reverse();
        }
        Ok(rows)
    }

    /// Whether the account's archive has message `id`.
    pub async fn exists(&self, host: &str, user: &str, id: i64) -> Result<bool> {
        self.settle(host, user).await?;
        let n: Option<i64> = on_db!(&self.0, |pool| {
            sqlx::query_scalar(
                "SELECT id FROM mam_archive WHERE host = $1 AND username = $2 AND id = $3",
            )
            .bind(host)
            .bind(user)
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        Ok(n.is_some())
    }

    /// The first and last ids of an account's archive.
    pub async fn bounds(&self, host: &str, user: &str) -> Result<Option<(i64, i64)>> {
        self.settle(host, user).await?;
        let r: (Option<i64>, Option<i64>) = on_db!(&self.0, |pool| {
            sqlx::query_as(
                "SELECT (SELECT id FROM mam_archive WHERE host = $1 AND username = $2 ORDER BY id ASC LIMIT 1), \
                        (SELECT id FROM mam_archive WHERE host = $1 AND username = $2 ORDER BY id DESC LIMIT 1)",
            )
            .bind(host)
            .bind(user)
            .fetch_one(pool)
            .await?
        });
        Ok(match r {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        })
    }

    /// The largest id of every archive (to keep new ids above it).
    pub async fn max_id(&self) -> Result<Option<i64>> {
        Ok(match &self.0 {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT MAX(m) FROM (SELECT MAX(id) AS m FROM mam_archive \
                     UNION ALL SELECT MAX(id) FROM mam_staging)",
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
        self.fold_staged().await?;
        on_db!(&self.0, |pool| {
            sqlx::query("DELETE FROM mam_archive WHERE host = $1 AND username = $2")
                .bind(host)
                .bind(user)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Delete everything archived before id `before` (retention); how many rows.
    pub async fn expire(&self, before: i64) -> Result<u64> {
        self.fold_staged().await?;
        Ok(on_db!(&self.0, |pool| {
            sqlx::query("DELETE FROM mam_archive WHERE id < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
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
            m.insert_many(&rows("u", 1..=300)).await.expect("batch");
            // A message routed twice is archived once, staged or not.
            m.insert_many(&rows("u", [5, 301])).await.expect("again");
            m.insert("h", "u", &[item(302, "b@h")])
                .await
                .expect("direct");
            m.insert_many(&rows("v", [7])).await.expect("other");
            let all = Filter::default();
            // Reads see the staged rows (their account's are archived first).
            assert_eq!(m.count("h", "u", &all).await.expect("count"), 302);
            assert_eq!(m.bounds("h", "u").await.expect("bounds"), Some((1, 302)));
            // The other account's row is still staged (SQLite).
            let staged = u64::from(matches!(m.0, Db::Sqlite(_)));
            assert_eq!(m.fold_staged().await.expect("fold"), staged);
            assert_eq!(m.fold_staged().await.expect("fold"), 0);
            assert_eq!(m.count("h", "v", &all).await.expect("count"), 1);
            m.insert_many(&rows("u", [303, 304])).await.expect("more");
            assert!(m.exists("h", "u", 304).await.expect("exists"));
            m.insert_many(&rows("u", [305])).await.expect("more");
            let page = m.page("h", "u", &all, 2, 0, true).await.expect("page");
            assert_eq!(page.iter().map(|r| r.0).collect::<Vec<_>>(), [304, 305]);
            m.insert_many(&rows("v", [8])).await.expect("more");
            m.remove_archive("h", "v").await.expect("remove");
            assert_eq!(m.count("h", "v", &all).await.expect("count"), 0);
            m.insert_many(&rows("u", [306])).await.expect("more");
            assert_eq!(m.max_id().await.expect("max"), Some(306));
            m.insert_many(&rows("u", [307])).await.expect("more");
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
            m.insert_many(batch).await.expect("batch");
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

    #[tokio::test]
    async fn an_archive_of_the_first_schema_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .expect("sqlite");
        s.db.migrate_module("mod_mam", &MIGRATIONS[..1])
            .await
            .expect("first schema");
        let m = MamSql::new(s.db.clone());
        m.insert("h", "u", &[item(1, "b@h"), item(2, "c@h")])
            .await
            .expect("insert");
        s.db.migrate_module("mod_mam", MIGRATIONS)
            .await
            .expect("migrate");
        m.insert_many(&rows("u", [3])).await.expect("batch");
        let all = Filter::default();
        let page = m.page("h", "u", &all, 10, 0, false).await.expect("page");
        assert_eq!(page.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
