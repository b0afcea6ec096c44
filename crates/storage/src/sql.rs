//! The SQL both backends share. SQLite and PostgreSQL agree on nearly all of
//! it (`$N` parameters, `ON CONFLICT … DO UPDATE/NOTHING`, `RETURNING`), so
//! every store trait is written once here, as a macro instantiated for each
//! backend's connection pool. What differs is isolated:
//!
//! - in the macro arguments: a byte-order `COLLATE` suffix for `ORDER BY`
//!   (PostgreSQL's default collation is locale-aware; SQLite's is already
//!   binary) and the row lock `FOR UPDATE` (SQLite locks the whole database
//!   for a write transaction instead);
//! - in two methods each backend defines on its store: `read_tx()` (one
//!   consistent snapshot for multi-query reads) and `write_tx()` (SQLite's
//!   `BEGIN IMMEDIATE`, which takes the write lock up front);
//! - in the migrations, which are per dialect (column types, serials).

/// Implement every store trait for `$store`, whose `pool()` is a pool of
/// `$db`, with the dialect pieces `collate` and `for_update`.
macro_rules! sql_stores {
    ($store:ty, $db:ty, collate = $c:literal, for_update = $fu:literal) => {
        /// A unique violation is a conflict; anything else through `From`.
        fn conflict_or(e: sqlx::Error) -> $crate::StorageError {
            if let sqlx::Error::Database(d) = &e
                && d.is_unique_violation()
            {
                return $crate::StorageError::Conflict;
            }
            $crate::StorageError::from(e)
        }

        fn now_secs() -> i64 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        }

        fn sub_of(s: &str) -> $crate::Result<$crate::Subscription> {
            $crate::Subscription::parse(s)
                .ok_or_else(|| $crate::StorageError::Corrupt(format!("subscription {s:?}")))
        }

        type Conn = <$db as sqlx::Database>::Connection;
        type DbRow = <$db as sqlx::Database>::Row;

        impl $store {
            async fn write_credentials(
                tx: &mut Conn,
                host: &str,
                user: &str,
                creds: &[palaver_proto::sasl::ScramCredentials],
            ) -> $crate::Result<()> {
                sqlx::query("DELETE FROM user_scram WHERE host = $1 AND username = $2")
                    .bind(host)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                for c in creds {
                    sqlx::query(
                        "INSERT INTO user_scram (host, username, hash, salt, iterations, stored_key, server_key) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(host)
                    .bind(user)
                    .bind(c.hash.name())
                    .bind(&c.salt)
                    .bind(i64::from(c.iterations))
                    .bind(&c.stored_key)
                    .bind(&c.server_key)
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict_or)?;
                }
                Ok(())
            }

            /// Increment (creating at 1) the user's roster version. The
            /// upsert takes the version row's lock, so roster writes of one
            /// user serialise and every write gets a distinct version;
            /// callers bump first for a consistent lock order.
            async fn bump_version(tx: &mut Conn, host: &str, user: &str) -> $crate::Result<i64> {
                Ok(sqlx::query_scalar(
                    "INSERT INTO roster_versions (host, username, version) VALUES ($1, $2, 1) \
                     ON CONFLICT (host, username) DO UPDATE SET version = roster_versions.version + 1 \
                     RETURNING version",
                )
                .bind(host)
                .bind(user)
                .fetch_one(&mut *tx)
                .await?)
            }

            fn item_from_row(
                row: &DbRow,
                groups: Vec<String>,
            ) -> $crate::Result<$crate::RosterItem> {
                use sqlx::Row as _;
                let sub: String = row.try_get("subscription")?;
                Ok($crate::RosterItem {
                    jid: row.try_get("jid")?,
                    name: row.try_get("name")?,
                    subscription: sub_of(&sub)?,
                    ask: row.try_get("ask")?,
                    approved: row.try_get("approved")?,
                    groups,
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::AccountStore for $store {
            async fn create_account(
                &self,
                host: &str,
                user: &str,
                creds: &[palaver_proto::sasl::ScramCredentials],
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query("INSERT INTO users (host, username, created_at) VALUES ($1, $2, $3)")
                    .bind(host)
                    .bind(user)
                    .bind(now_secs())
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict_or)?;
                Self::write_credentials(&mut tx, host, user, creds).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn set_credentials(
                &self,
                host: &str,
                user: &str,
                creds: &[palaver_proto::sasl::ScramCredentials],
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                let exists = sqlx::query(concat!(
                    "SELECT 1 FROM users WHERE host = $1 AND username = $2",
                    $fu
                ))
                .bind(host)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Err($crate::StorageError::NotFound);
                }
                Self::write_credentials(&mut tx, host, user, creds).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn credentials(
                &self,
                host: &str,
                user: &str,
                hash: palaver_proto::sasl::ScramHash,
            ) -> $crate::Result<Option<palaver_proto::sasl::ScramCredentials>> {
                use sqlx::Row as _;
                let row = sqlx::query(
                    "SELECT salt, iterations, stored_key, server_key FROM user_scram \
                     WHERE host = $1 AND username = $2 AND hash = $3",
                )
                .bind(host)
                .bind(user)
                .bind(hash.name())
                .fetch_optional(self.pool())
                .await?;
                let Some(row) = row else { return Ok(None) };
                let iterations: i64 = row.try_get("iterations")?;
                Ok(Some(palaver_proto::sasl::ScramCredentials {
                    hash,
                    salt: row.try_get("salt")?,
                    iterations: u32::try_from(iterations).map_err(|_| {
                        $crate::StorageError::Corrupt(format!("iteration count {iterations}"))
                    })?,
                    stored_key: row.try_get("stored_key")?,
                    server_key: row.try_get("server_key")?,
                }))
            }

            async fn account_exists(&self, host: &str, user: &str) -> $crate::Result<bool> {
                Ok(
                    sqlx::query("SELECT 1 FROM users WHERE host = $1 AND username = $2")
                        .bind(host)
                        .bind(user)
                        .fetch_optional(self.pool())
                        .await?
                        .is_some(),
                )
            }

            async fn delete_account(&self, host: &str, user: &str) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                let r = sqlx::query("DELETE FROM users WHERE host = $1 AND username = $2")
                    .bind(host)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                if r.rows_affected() == 0 {
                    return Err($crate::StorageError::NotFound);
                }
                sqlx::query("DELETE FROM user_scram WHERE host = $1 AND username = $2")
                    .bind(host)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_accounts(&self, host: &str) -> $crate::Result<Vec<String>> {
                Ok(sqlx::query_scalar(concat!(
                    "SELECT username FROM users WHERE host = $1 ORDER BY username",
                    $c
                ))
                .bind(host)
                .fetch_all(self.pool())
                .await?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::RosterStore for $store {
            async fn roster(
                &self,
                host: &str,
                user: &str,
            ) -> $crate::Result<(i64, Vec<$crate::RosterItem>)> {
                use sqlx::Row as _;
                let mut tx = self.read_tx().await?;
                let ver: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM roster_versions WHERE host = $1 AND username = $2",
                )
                .bind(host)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
                let rows = sqlx::query(concat!(
                    "SELECT jid, name, subscription, ask, approved FROM roster_items \
                     WHERE host = $1 AND username = $2 ORDER BY jid",
                    $c
                ))
                .bind(host)
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
                let groups = sqlx::query(concat!(
                    "SELECT jid, grp FROM roster_groups WHERE host = $1 AND username = $2 \
                     ORDER BY jid",
                    $c,
                    ", grp",
                    $c
                ))
                .bind(host)
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                let mut by_jid: std::collections::HashMap<String, Vec<String>> =
                    std::collections::HashMap::new();
                for g in &groups {
                    by_jid
                        .entry(g.try_get("jid")?)
                        .or_default()
                        .push(g.try_get("grp")?);
                }
                let mut items = Vec::with_capacity(rows.len());
                for r in &rows {
                    let jid: String = r.try_get("jid")?;
                    let gs = by_jid.remove(&jid).unwrap_or_default();
                    items.push(Self::item_from_row(r, gs)?);
                }
                Ok((ver.unwrap_or(0), items))
            }

            async fn roster_version(&self, host: &str, user: &str) -> $crate::Result<i64> {
                let v: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM roster_versions WHERE host = $1 AND username = $2",
                )
                .bind(host)
                .bind(user)
                .fetch_optional(self.pool())
                .await?;
                Ok(v.unwrap_or(0))
            }

            async fn roster_item(
                &self,
                host: &str,
                user: &str,
                jid: &str,
            ) -> $crate::Result<Option<$crate::RosterItem>> {
                let mut tx = self.read_tx().await?;
                let row = sqlx::query(
                    "SELECT jid, name, subscription, ask, approved FROM roster_items \
                     WHERE host = $1 AND username = $2 AND jid = $3",
                )
                .bind(host)
                .bind(user)
                .bind(jid)
                .fetch_optional(&mut *tx)
                .await?;
                let item = match row {
                    None => None,
                    Some(r) => {
                        let groups: Vec<String> = sqlx::query_scalar(concat!(
                            "SELECT grp FROM roster_groups WHERE host = $1 AND username = $2 AND jid = $3 \
                             ORDER BY grp",
                            $c
                        ))
                        .bind(host)
                        .bind(user)
                        .bind(jid)
                        .fetch_all(&mut *tx)
                        .await?;
                        Some(Self::item_from_row(&r, groups)?)
                    }
                };
                tx.commit().await?;
                Ok(item)
            }

            async fn roster_count(&self, host: &str, user: &str) -> $crate::Result<usize> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM roster_items WHERE host = $1 AND username = $2",
                )
                .bind(host)
                .bind(user)
                .fetch_one(self.pool())
                .await?;
                Ok(n.max(0) as usize)
            }

            async fn put_roster_item(
                &self,
                host: &str,
                user: &str,
                item: &$crate::RosterItem,
            ) -> $crate::Result<i64> {
                let mut tx = self.write_tx().await?;
                let v = Self::bump_version(&mut tx, host, user).await?;
                sqlx::query(
                    "INSERT INTO roster_items (host, username, jid, name, subscription, ask, approved) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (host, username, jid) DO UPDATE SET name = excluded.name, \
                     subscription = excluded.subscription, ask = excluded.ask, approved = excluded.approved",
                )
                .bind(host)
                .bind(user)
                .bind(&item.jid)
                .bind(&item.name)
                .bind(item.subscription.as_str())
                .bind(item.ask)
                .bind(item.approved)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM roster_groups WHERE host = $1 AND username = $2 AND jid = $3",
                )
                .bind(host)
                .bind(user)
                .bind(&item.jid)
                .execute(&mut *tx)
                .await?;
                for g in &item.groups {
                    sqlx::query(
                        "INSERT INTO roster_groups (host, username, jid, grp) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(host)
                    .bind(user)
                    .bind(&item.jid)
                    .bind(g)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(v)
            }

            async fn delete_roster_item(
                &self,
                host: &str,
                user: &str,
                jid: &str,
            ) -> $crate::Result<i64> {
                let mut tx = self.write_tx().await?;
                // Rolled back (with the item deletion) when the item is absent.
                let v = Self::bump_version(&mut tx, host, user).await?;
                let r = sqlx::query(
                    "DELETE FROM roster_items WHERE host = $1 AND username = $2 AND jid = $3",
                )
                .bind(host)
                .bind(user)
                .bind(jid)
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() == 0 {
                    return Err($crate::StorageError::NotFound);
                }
                sqlx::query(
                    "DELETE FROM roster_groups WHERE host = $1 AND username = $2 AND jid = $3",
                )
                .bind(host)
                .bind(user)
                .bind(jid)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(v)
            }

            async fn add_pending_in(
                &self,
                host: &str,
                user: &str,
                jid: &str,
                stanza: &str,
            ) -> $crate::Result<()> {
                // A replaced request keeps its position (its `seq`).
                sqlx::query(
                    "INSERT INTO roster_pending_in (host, username, jid, stanza) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (host, username, jid) DO UPDATE SET stanza = excluded.stanza",
                )
                .bind(host)
                .bind(user)
                .bind(jid)
                .bind(stanza)
                .execute(self.pool())
                .await?;
                Ok(())
            }

            async fn remove_pending_in(
                &self,
                host: &str,
                user: &str,
                jid: &str,
            ) -> $crate::Result<bool> {
                let r = sqlx::query(
                    "DELETE FROM roster_pending_in WHERE host = $1 AND username = $2 AND jid = $3",
                )
                .bind(host)
                .bind(user)
                .bind(jid)
                .execute(self.pool())
                .await?;
                Ok(r.rows_affected() > 0)
            }

            async fn pending_in(
                &self,
                host: &str,
                user: &str,
            ) -> $crate::Result<Vec<(String, String)>> {
                use sqlx::Row as _;
                let rows = sqlx::query(
                    "SELECT jid, stanza FROM roster_pending_in WHERE host = $1 AND username = $2 ORDER BY seq",
                )
                .bind(host)
                .bind(user)
                .fetch_all(self.pool())
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("jid")?, r.try_get("stanza")?)))
                    .collect()
            }

            async fn remove_roster_user(&self, host: &str, user: &str) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                for table in [
                    "roster_versions",
                    "roster_items",
                    "roster_groups",
                    "roster_pending_in",
                ] {
                    sqlx::query(&format!(
                        "DELETE FROM {table} WHERE host = $1 AND username = $2"
                    ))
                    .bind(host)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::OfflineStore for $store {
            async fn store_offline(
                &self,
                host: &str,
                user: &str,
                stanza: &str,
                stamp: i64,
                limit: usize,
            ) -> $crate::Result<bool> {
                let mut tx = self.write_tx().await?;
                // Locking the account row serialises this user's writers
                // (across nodes), so the count below stays true until commit;
                // and nothing is stored for an account that is gone.
                let exists = sqlx::query(concat!(
                    "SELECT 1 FROM users WHERE host = $1 AND username = $2",
                    $fu
                ))
                .bind(host)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Ok(false);
                }
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM offline_messages WHERE host = $1 AND username = $2",
                )
                .bind(host)
                .bind(user)
                .fetch_one(&mut *tx)
                .await?;
                if n.max(0) as usize >= limit {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO offline_messages (host, username, stanza, stamp) VALUES ($1, $2, $3, $4)",
                )
                .bind(host)
                .bind(user)
                .bind(stanza)
                .bind(stamp)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn offline_count(&self, host: &str, user: &str) -> $crate::Result<usize> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM offline_messages WHERE host = $1 AND username = $2",
                )
                .bind(host)
                .bind(user)
                .fetch_one(self.pool())
                .await?;
                Ok(n.max(0) as usize)
            }

            async fn offline_messages(
                &self,
                host: &str,
                user: &str,
            ) -> $crate::Result<Vec<(i64, String, i64)>> {
                use sqlx::Row as _;
                let rows = sqlx::query(
                    "SELECT id, stanza, stamp FROM offline_messages WHERE host = $1 AND username = $2 ORDER BY id",
                )
                .bind(host)
                .bind(user)
                .fetch_all(self.pool())
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, r.try_get("stanza")?, r.try_get("stamp")?)))
                    .collect()
            }

            async fn delete_offline_upto(
                &self,
                host: &str,
                user: &str,
                id: i64,
            ) -> $crate::Result<()> {
                sqlx::query(
                    "DELETE FROM offline_messages WHERE host = $1 AND username = $2 AND id <= $3",
                )
                .bind(host)
                .bind(user)
                .bind(id)
                .execute(self.pool())
                .await?;
                Ok(())
            }

            async fn remove_offline_user(&self, host: &str, user: &str) -> $crate::Result<()> {
                sqlx::query("DELETE FROM offline_messages WHERE host = $1 AND username = $2")
                    .bind(host)
                    .bind(user)
                    .execute(self.pool())
                    .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::XmlStore for $store {
            async fn get_xml(
                &self,
                host: &str,
                user: &str,
                key: &str,
            ) -> $crate::Result<Option<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT xml FROM xml_documents WHERE host = $1 AND username = $2 AND key = $3",
                )
                .bind(host)
                .bind(user)
                .bind(key)
                .fetch_optional(self.pool())
                .await?)
            }

            async fn set_xml(
                &self,
                host: &str,
                user: &str,
                key: &str,
                xml: &str,
            ) -> $crate::Result<()> {
                if xml.is_empty() {
                    sqlx::query(
                        "DELETE FROM xml_documents WHERE host = $1 AND username = $2 AND key = $3",
                    )
                    .bind(host)
                    .bind(user)
                    .bind(key)
                    .execute(self.pool())
                    .await?;
                } else {
                    sqlx::query(
                        "INSERT INTO xml_documents (host, username, key, xml) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (host, username, key) DO UPDATE SET xml = excluded.xml",
                    )
                    .bind(host)
                    .bind(user)
                    .bind(key)
                    .bind(xml)
                    .execute(self.pool())
                    .await?;
                }
                Ok(())
            }

            async fn xml_keys(
                &self,
                host: &str,
                user: &str,
                prefix: &str,
            ) -> $crate::Result<Vec<String>> {
                Ok(sqlx::query_scalar(concat!(
                    "SELECT key FROM xml_documents WHERE host = $1 AND username = $2 \
                     AND substr(key, 1, length($3)) = $3 ORDER BY key",
                    $c
                ))
                .bind(host)
                .bind(user)
                .bind(prefix)
                .fetch_all(self.pool())
                .await?)
            }

            async fn remove_xml_user(
                &self,
                host: &str,
                user: &str,
                prefix: &str,
            ) -> $crate::Result<()> {
                // A substring comparison: LIKE would treat % and _ in the
                // prefix as wildcards.
                sqlx::query(
                    "DELETE FROM xml_documents WHERE host = $1 AND username = $2 \
                     AND substr(key, 1, length($3)) = $3",
                )
                .bind(host)
                .bind(user)
                .bind(prefix)
                .execute(self.pool())
                .await?;
                Ok(())
            }
        }

    };
}

pub(crate) use sql_stores;

/// The behaviour tests every backend passes. The invoking test module
/// provides `store(name) -> Option<(Guard, Store)>` (a fresh store, `None`
/// when the backend is skipped), `second(&Guard) -> Store` (another pool on
/// the same database, as a second node would have), `count(&Store, sql)`,
/// and the backend's `schema_version` and `SCHEMA_VERSION` in scope.
#[cfg(test)]
macro_rules! sql_store_tests {
    () => {
        #[tokio::test]
        async fn accounts_round_trip() {
            use palaver_proto::sasl::{ScramCredentials, ScramHash};
            let Some((d, store)) = store("accounts_round_trip").await else {
                return;
            };
            let creds = vec![
                ScramCredentials::generate(ScramHash::Sha1, "pw", 4096),
                ScramCredentials::generate(ScramHash::Sha256, "pw", 4096),
            ];
            store.create_account("h", "alice", &creds).await.unwrap();
            assert!(matches!(
                store.create_account("h", "alice", &creds).await,
                Err(StorageError::Conflict)
            ));
            assert!(store.account_exists("h", "alice").await.unwrap());
            assert!(!store.account_exists("h2", "alice").await.unwrap());
            let c = store
                .credentials("h", "alice", ScramHash::Sha256)
                .await
                .unwrap()
                .unwrap();
            assert!(c.verify_password("pw"));
            assert_eq!(c, creds[1]);
            assert!(
                store
                    .credentials("h", "alice", ScramHash::Sha512)
                    .await
                    .unwrap()
                    .is_none()
            );
            // Replacing credentials drops the old ones.
            let new = vec![ScramCredentials::generate(ScramHash::Sha512, "pw2", 4096)];
            store.set_credentials("h", "alice", &new).await.unwrap();
            assert!(
                store
                    .credentials("h", "alice", ScramHash::Sha256)
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(
                store
                    .credentials("h", "alice", ScramHash::Sha512)
                    .await
                    .unwrap()
                    .unwrap()
                    .verify_password("pw2")
            );
            assert!(matches!(
                store.set_credentials("h", "nobody", &new).await,
                Err(StorageError::NotFound)
            ));
            store.create_account("h", "Zed", &[]).await.unwrap();
            store.create_account("h", "bob", &[]).await.unwrap();
            store.create_account("h2", "carol", &[]).await.unwrap();
            // Byte order, whatever the database collation.
            assert_eq!(
                store.list_accounts("h").await.unwrap(),
                ["Zed", "alice", "bob"]
            );
            store.delete_account("h", "alice").await.unwrap();
            assert!(matches!(
                store.delete_account("h", "alice").await,
                Err(StorageError::NotFound)
            ));
            assert_eq!(
                count(
                    &store,
                    "SELECT COUNT(*) FROM user_scram WHERE username = 'alice'"
                )
                .await,
                0
            );
            // Reopen: migrations are idempotent.
            let store = second(&d).await;
            assert_eq!(schema_version(store.pool()).await.unwrap(), SCHEMA_VERSION);
            assert_eq!(
                count(&store, "SELECT COUNT(*) FROM schema_version").await,
                SCHEMA_VERSION
            );
            assert!(store.account_exists("h", "bob").await.unwrap());
        }

        #[tokio::test]
        async fn roster_round_trip_and_versions() {
            let Some((_d, s)) = store("roster_round_trip_and_versions").await else {
                return;
            };
            assert_eq!(s.roster_version("h", "u").await.unwrap(), 0);
            let mut it = RosterItem::new("c@h");
            it.name = Some("Ç, \"q\"".into());
            it.groups = vec!["a,b".into(), "Ünï 'x'".into()];
            it.subscription = Subscription::From;
            it.ask = true;
            assert_eq!(s.put_roster_item("h", "u", &it).await.unwrap(), 1);
            assert_eq!(
                s.roster_item("h", "u", "c@h").await.unwrap(),
                Some(it.clone())
            );
            it.groups.clear();
            it.approved = true;
            assert_eq!(s.put_roster_item("h", "u", &it).await.unwrap(), 2);
            let (v, items) = s.roster("h", "u").await.unwrap();
            assert_eq!((v, items), (2, vec![it.clone()]));
            assert_eq!(s.roster_count("h", "u").await.unwrap(), 1);
            assert!(matches!(
                s.delete_roster_item("h", "u", "x@h").await,
                Err(StorageError::NotFound)
            ));
            assert_eq!(s.delete_roster_item("h", "u", "c@h").await.unwrap(), 3);
            s.add_pending_in("h", "u", "a@h", "<p1/>").await.unwrap();
            s.add_pending_in("h", "u", "b@h", "<p2/>").await.unwrap();
            s.add_pending_in("h", "u", "a@h", "<p3/>").await.unwrap();
            assert_eq!(
                s.pending_in("h", "u").await.unwrap(),
                vec![
                    ("a@h".to_string(), "<p3/>".to_string()),
                    ("b@h".to_string(), "<p2/>".to_string())
                ]
            );
            assert!(s.remove_pending_in("h", "u", "a@h").await.unwrap());
            assert!(!s.remove_pending_in("h", "u", "a@h").await.unwrap());
            s.remove_roster_user("h", "u").await.unwrap();
            assert!(s.pending_in("h", "u").await.unwrap().is_empty());
            assert_eq!(s.roster_version("h", "u").await.unwrap(), 0);
        }

        #[tokio::test]
        async fn roster_groups_round_trip_sorted_unique() {
            let Some((_d, s)) = store("roster_groups_round_trip_sorted_unique").await else {
                return;
            };
            let mut it = RosterItem::new("c@h");
            it.groups = vec![
                "z".into(),
                "a,b;c".into(),
                "\"double\" and 'single'".into(),
                "Ünïcödé 日本".into(),
                "a,b;c".into(),
                " lead & <trail> ".into(),
                "É".into(),
                "Z".into(),
            ];
            s.put_roster_item("h", "u", &it).await.unwrap();
            let mut want = it.groups.clone();
            want.sort();
            want.dedup();
            let got = s.roster_item("h", "u", "c@h").await.unwrap().unwrap();
            assert_eq!(got.groups, want);
            let (_, items) = s.roster("h", "u").await.unwrap();
            assert_eq!(items[0].groups, want);
            it.name = Some("x".into());
            s.put_roster_item("h", "u", &it).await.unwrap();
            let mut upd = RosterItem::new("c@h");
            upd.subscription = Subscription::Both;
            upd.groups = vec!["only".into()];
            assert_eq!(s.put_roster_item("h", "u", &upd).await.unwrap(), 3);
            assert_eq!(
                s.roster_item("h", "u", "c@h").await.unwrap(),
                Some(upd.clone())
            );
            assert_eq!(count(&s, "SELECT COUNT(*) FROM roster_groups").await, 1);
            assert_eq!(s.roster("h", "v").await.unwrap(), (0, vec![]));
            assert_eq!(s.roster("h2", "u").await.unwrap(), (0, vec![]));
            assert_eq!(s.roster_item("h", "v", "c@h").await.unwrap(), None);
            assert_eq!(s.delete_roster_item("h", "u", "c@h").await.unwrap(), 4);
            assert_eq!(s.roster("h", "u").await.unwrap(), (4, vec![]));
            assert_eq!(count(&s, "SELECT COUNT(*) FROM roster_groups").await, 0);
            assert!(matches!(
                s.delete_roster_item("h", "u", "c@h").await,
                Err(StorageError::NotFound)
            ));
            // A failed delete does not bump the version.
            assert_eq!(s.roster_version("h", "u").await.unwrap(), 4);
            // Items come back in byte order of their JIDs.
            for j in ["b@h", "Z@h", "a@h"] {
                s.put_roster_item("h", "u", &RosterItem::new(j))
                    .await
                    .unwrap();
            }
            let (v, items) = s.roster("h", "u").await.unwrap();
            assert_eq!(v, 7);
            assert_eq!(
                items.iter().map(|i| i.jid.as_str()).collect::<Vec<_>>(),
                ["Z@h", "a@h", "b@h"]
            );
        }

        #[tokio::test]
        async fn roster_versions_unique_under_concurrency() {
            let Some((d, s)) = store("roster_versions_unique_under_concurrency").await else {
                return;
            };
            // A second pool: writers from both (as from two nodes) must serialise.
            let s2 = std::sync::Arc::new(second(&d).await);
            let s = std::sync::Arc::new(s);
            let mut tasks = Vec::new();
            for i in 0..30 {
                let st = if i % 2 == 0 { s.clone() } else { s2.clone() };
                tasks.push(tokio::spawn(async move {
                    let mut it = RosterItem::new(&format!("c{}@h", i % 10));
                    it.groups = vec![format!("g{i}"), "common".into()];
                    st.put_roster_item("h", "u", &it).await
                }));
            }
            let mut versions = Vec::new();
            for t in tasks {
                versions.push(t.await.unwrap().unwrap());
            }
            versions.sort();
            assert_eq!(versions, (1..=30).collect::<Vec<i64>>());
            assert_eq!(s.roster_version("h", "u").await.unwrap(), 30);
            assert_eq!(s.roster_count("h", "u").await.unwrap(), 10);
            // Each item kept exactly the groups of one write.
            for it in s.roster("h", "u").await.unwrap().1 {
                assert_eq!(it.groups.len(), 2, "{it:?}");
            }
        }

        #[tokio::test]
        async fn pending_in_order_and_isolation() {
            let Some((_d, s)) = store("pending_in_order_and_isolation").await else {
                return;
            };
            assert!(s.pending_in("h", "u").await.unwrap().is_empty());
            s.add_pending_in("h", "u", "c@h", "<c/>").await.unwrap();
            s.add_pending_in("h", "u", "a@h", "<a/>").await.unwrap();
            s.add_pending_in("h", "u", "b@h", "<b/>").await.unwrap();
            s.add_pending_in("h", "v", "x@h", "<x/>").await.unwrap();
            let jids = |v: Vec<(String, String)>| v.into_iter().map(|p| p.0).collect::<Vec<_>>();
            assert_eq!(
                jids(s.pending_in("h", "u").await.unwrap()),
                ["c@h", "a@h", "b@h"]
            );
            // Replacing keeps the original position and updates the stanza.
            s.add_pending_in("h", "u", "c@h", "<c2/>").await.unwrap();
            let p = s.pending_in("h", "u").await.unwrap();
            assert_eq!(p[0], ("c@h".to_string(), "<c2/>".to_string()));
            assert_eq!(p.len(), 3);
            // Removed then re-added goes last.
            assert!(s.remove_pending_in("h", "u", "c@h").await.unwrap());
            s.add_pending_in("h", "u", "c@h", "<c3/>").await.unwrap();
            assert_eq!(
                jids(s.pending_in("h", "u").await.unwrap()),
                ["a@h", "b@h", "c@h"]
            );
            s.remove_roster_user("h", "u").await.unwrap();
            assert!(s.pending_in("h", "u").await.unwrap().is_empty());
            assert_eq!(jids(s.pending_in("h", "v").await.unwrap()), ["x@h"]);
        }

        #[tokio::test]
        async fn offline_order_and_limit() {
            let Some((_d, s)) = store("offline_order_and_limit").await else {
                return;
            };
            assert!(
                !s.store_offline("h", "ghost", "<m/>", 1, 10).await.unwrap(),
                "no account, no storage"
            );
            for u in ["u", "v"] {
                s.create_account("h", u, &[]).await.unwrap();
            }
            for i in 0..3 {
                assert!(
                    s.store_offline("h", "u", &format!("<m{i}/>"), i, 3)
                        .await
                        .unwrap()
                );
            }
            assert!(!s.store_offline("h", "u", "<m3/>", 3, 3).await.unwrap());
            let msgs = s.offline_messages("h", "u").await.unwrap();
            assert_eq!(
                msgs.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
                vec!["<m0/>", "<m1/>", "<m2/>"]
            );
            s.delete_offline_upto("h", "u", msgs[1].0).await.unwrap();
            assert_eq!(s.offline_count("h", "u").await.unwrap(), 1);
            s.remove_offline_user("h", "u").await.unwrap();
            assert_eq!(s.offline_count("h", "u").await.unwrap(), 0);
        }

        #[tokio::test]
        async fn offline_limit_holds_under_concurrency() {
            let Some((d, s)) = store("offline_limit_holds_under_concurrency").await else {
                return;
            };
            s.create_account("h", "u", &[]).await.unwrap();
            let s2 = std::sync::Arc::new(second(&d).await);
            let s = std::sync::Arc::new(s);
            let mut tasks = Vec::new();
            for i in 0..40 {
                let st = if i % 2 == 0 { s.clone() } else { s2.clone() };
                tasks.push(tokio::spawn(async move {
                    st.store_offline("h", "u", &format!("<m{i}/>"), i, 7).await
                }));
            }
            let mut stored = 0;
            for t in tasks {
                if t.await.unwrap().unwrap() {
                    stored += 1;
                }
            }
            assert_eq!(stored, 7);
            assert_eq!(s.offline_count("h", "u").await.unwrap(), 7);
        }

        #[tokio::test]
        async fn offline_delete_upto_and_stamps() {
            let Some((_d, s)) = store("offline_delete_upto_and_stamps").await else {
                return;
            };
            for u in ["u", "v"] {
                s.create_account("h", u, &[]).await.unwrap();
            }
            assert!(!s.store_offline("h", "u", "<m/>", 1, 0).await.unwrap());
            for i in 0..5 {
                assert!(
                    s.store_offline("h", "u", &format!("<m{i}/>"), 1_700_000_000_000 + i, 100)
                        .await
                        .unwrap()
                );
            }
            s.store_offline("h", "v", "<other/>", 5, 100).await.unwrap();
            let msgs = s.offline_messages("h", "u").await.unwrap();
            assert_eq!(msgs.len(), 5);
            assert!(msgs.windows(2).all(|w| w[0].0 < w[1].0));
            assert_eq!(msgs[4].2, 1_700_000_000_004);
            s.delete_offline_upto("h", "u", msgs[2].0).await.unwrap();
            let rest = s.offline_messages("h", "u").await.unwrap();
            assert_eq!(rest, msgs[3..].to_vec());
            assert_eq!(s.offline_count("h", "v").await.unwrap(), 1);
            s.store_offline("h", "u", "<late/>", 9, 100).await.unwrap();
            let all = s.offline_messages("h", "u").await.unwrap();
            assert!(all.last().unwrap().0 > msgs[4].0);
            s.delete_offline_upto("h", "u", i64::MAX).await.unwrap();
            assert_eq!(s.offline_count("h", "u").await.unwrap(), 0);
            assert_eq!(s.offline_count("h", "v").await.unwrap(), 1);
        }

        #[tokio::test]
        async fn xml_documents() {
            let Some((_d, s)) = store("xml_documents").await else {
                return;
            };
            s.set_xml("h", "u", "vcard", "<v/>").await.unwrap();
            s.set_xml("h", "u", "private:a%b", "<p/>").await.unwrap();
            s.set_xml("h", "u", "privateX", "<q/>").await.unwrap();
            assert_eq!(
                s.get_xml("h", "u", "vcard").await.unwrap().as_deref(),
                Some("<v/>")
            );
            s.set_xml("h", "u", "vcard", "").await.unwrap();
            assert_eq!(s.get_xml("h", "u", "vcard").await.unwrap(), None);
            assert_eq!(
                s.xml_keys("h", "u", "private").await.unwrap(),
                ["private:a%b", "privateX"]
            );
            assert_eq!(
                s.xml_keys("h", "u", "private:").await.unwrap(),
                ["private:a%b"]
            );
            assert!(
                s.xml_keys("h", "u", "_").await.unwrap().is_empty(),
                "no wildcard"
            );
            s.remove_xml_user("h", "u", "private:").await.unwrap();
            assert_eq!(s.get_xml("h", "u", "private:a%b").await.unwrap(), None);
            assert!(s.get_xml("h", "u", "privateX").await.unwrap().is_some());
        }

        #[tokio::test]
        async fn xml_documents_details() {
            let Some((_d, s)) = store("xml_documents_details").await else {
                return;
            };
            s.set_xml("h", "u", "vcard", "<v1/>").await.unwrap();
            s.set_xml("h", "u", "vcard", "<v2/>").await.unwrap();
            assert_eq!(
                s.get_xml("h", "u", "vcard").await.unwrap().as_deref(),
                Some("<v2/>")
            );
            s.set_xml("h", "u", "private:_x", "<p/>").await.unwrap();
            s.set_xml("h", "v", "vcard", "<w/>").await.unwrap();
            // `_` is no wildcard: "private:a" does not match "private:_x".
            s.remove_xml_user("h", "u", "private:a").await.unwrap();
            assert!(s.get_xml("h", "u", "private:_x").await.unwrap().is_some());
            // Nor is `%`.
            s.remove_xml_user("h", "u", "%").await.unwrap();
            assert!(s.get_xml("h", "u", "vcard").await.unwrap().is_some());
            s.remove_xml_user("h", "u", "").await.unwrap();
            assert_eq!(s.get_xml("h", "u", "vcard").await.unwrap(), None);
            assert_eq!(s.get_xml("h", "u", "private:_x").await.unwrap(), None);
            assert_eq!(
                s.get_xml("h", "v", "vcard").await.unwrap().as_deref(),
                Some("<w/>")
            );
            s.set_xml("h", "u", "nothing", "").await.unwrap();
        }
    };
}

#[cfg(test)]
pub(crate) use sql_store_tests;
