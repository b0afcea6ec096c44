//! XEP-0484 Fast Authentication Streamlining Tokens (`mod_auth_fast`, as
//! ejabberd names it): tokens a client asks for in a XEP-0388
//! authentication and uses later with `HT-SHA-256-NONE`, one round trip
//! instead of SCRAM's two and no password on the device; or with a
//! channel-bound variant (`HT-SHA-256-EXPR`, `HT-SHA-256-ENDP`, see the
//! kernel's `c2s/sasl2.rs`). A token is bound to the mechanism the client
//! asked it for (§3.4): used with another one, it is refused.
//!
//! **Stored hashed.** A token is never stored: the database keeps a random
//! token id, the SHA-256 of the token, and its expiry; the token itself is
//! `HMAC-SHA-256(key, host, user, client, id)` with a key kept in the data
//! directory (`fast.key`, created on first start, mode 0600), so a copy of
//! the database alone lets no one log in. (Nodes of a cluster share that
//! file.) Checking a proof derives each stored token of that client again.
//!
//! **Rotation and invalidation** (§3.5, §5 "two slots"). A client holds
//! at most two tokens: the *current* one (the last it logged in with) and
//! a *new* one (issued since, not used yet). Issuing a token replaces an
//! unused new one; logging in with the new one makes it current and
//! forgets the old current one; logging in with a token older than
//! `token_refresh_age` (ejabberd's name) issues a new one unprompted, the
//! used one staying valid until the new one is used. A login with
//! `invalidate='true'` forgets the client's tokens (a "log out"). Every
//! token remembers which credentials were current when it was issued:
//! after a password change (new salt and keys) the old tokens are refused
//! with `credentials-expired`, as are expired ones. Account removal
//! deletes them.
//!
//! **Replay counter.** A `<fast count='N'/>` must be above every count
//! seen with that token (checked and stored in one conditional `UPDATE`,
//! so two concurrent replays cannot both pass); the counter starts again
//! with each new token.

use hmac::{Hmac, Mac};
use palaver_proto::sasl::ScramHash;
use palaver_server::hooks::RemoveUser;
use palaver_server::module::{FastAttempt, FastTokens, FastVerdict};
use palaver_server::{HookAction, HostSetup, Module, ModuleCx, ModuleDef};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// `mod_auth_fast`.
pub struct AuthFast;

/// `mod_auth_fast` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<AuthFast>();

/// Options (ejabberd's names).
#[derive(serde::Deserialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Seconds a token stays valid.
    pub token_lifetime: u64,
    /// Seconds after which a token used to log in is replaced by a new
    /// one in that login's success (0: at every login).
    pub token_refresh_age: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token_lifetime: 30 * 86_400,
            token_refresh_age: 86_400,
        }
    }
}

#[derive(Clone)]
struct Tokens {
    key: [u8; 32],
    host: String,
    lifetime_ms: i64,
    refresh_ms: i64,
}

impl Module for AuthFast {
    const NAME: &'static str = "mod_auth_fast";
    type Options = Options;

    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        if o.token_lifetime == 0 {
            return Err("token_lifetime: must be at least 1 second".into());
        }
        let key = server_key(&host.config().data_dir)?;
        host.migrations(store::MIGRATIONS);
        host.fast_tokens(Arc::new(Tokens {
            key,
            host: host.host().to_string(),
            lifetime_ms: (o.token_lifetime as i64).saturating_mul(1000),
            refresh_ms: (o.token_refresh_age as i64).saturating_mul(1000),
        }));
        host.hook_async::<RemoveUser, _>(50, |cx, a| async move {
            if let Err(e) = store::FastSql::of(&cx).remove_user(&a.host, &a.user).await {
                tracing::warn!(error = %e, "removing FAST tokens failed");
            }
            HookAction::Continue
        });
        Ok(AuthFast)
    }
}

/// The key tokens are derived with: `DATA_DIR/fast.key`, made once.
fn server_key(dir: &std::path::Path) -> Result<[u8; 32], String> {
    let path = dir.join("fast.key");
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&bytes);
            return Ok(k);
        }
        Ok(_) => return Err(format!("{}: not a 32-byte key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let k: [u8; 32] = rand::random();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    match opts.open(&path) {
        Ok(mut f) => f
            .write_all(&k)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        // Another host's start made it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return server_key(dir),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    Ok(k)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Tokens {
    fn derive(&self, user: &str, agent: &str, id: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        for part in [self.host.as_str(), user, agent, id] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Which credentials are current: changes when the password does.
async fn credentials_mark(cx: &ModuleCx, host: &str, user: &str) -> Option<String> {
    for h in [ScramHash::Sha256, ScramHash::Sha1, ScramHash::Sha512] {
        if let Ok(Some(c)) = cx.auth().credentials(host, user, h).await {
            let mut d = Sha256::new();
            d.update(&c.salt);
            d.update(&c.stored_key);
            return Some(hex::encode(d.finalize()));
        }
    }
    None
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl FastTokens for Tokens {
    fn issue(
        &self,
        cx: ModuleCx,
        user: String,
        agent: String,
        mechanism: String,
    ) -> futures_util::future::BoxFuture<'static, Option<(String, i64)>> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let token = self.derive(&user, &agent, &id);
        let (host, expiry) = (self.host.clone(), now_ms() + self.lifetime_ms);
        Box::pin(async move {
            let mark = credentials_mark(&cx, &host, &user).await?;
            let st = store::FastSql::of(&cx);
            let row = store::Row {
                id: id.clone(),
                hash: sha256_hex(&token),
                mark,
                expiry,
                issued: now_ms(),
                mechanism,
                counter: 0,
                used: false,
            };
            match st.add(&host, &user, &agent, &row).await {
                Ok(()) => Some((token, expiry)),
                Err(e) => {
                    tracing::warn!(error = %e, "storing a FAST token failed");
                    None
                }
            }
        })
    }

    fn verify(
        &self,
        cx: ModuleCx,
        a: FastAttempt,
    ) -> futures_util::future::BoxFuture<'static, FastVerdict> {
        let me = self.clone();
        Box::pin(async move {
            let host = me.host.clone();
            let st = store::FastSql::of(&cx);
            let rows = match st.list(&host, &a.user, &a.agent).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading FAST tokens failed");
                    return FastVerdict::Refused;
                }
            };
            // Newest first: the "new" slot before the "current" one.
            for row in rows {
                let token = me.derive(&a.user, &a.agent, &row.id);
                if sha256_hex(&token) != row.hash {
                    continue;
                }
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token.as_bytes()) else {
                    continue;
                };
                mac.update(b"Initiator");
                mac.update(&a.cb);
                let expected = mac.finalize().into_bytes();
                if !bool::from(expected.as_slice().ct_eq(&a.proof)) {
                    continue;
                }
                // The proof is right for this token: is it still good?
                if row.mechanism != a.mechanism {
                    tracing::info!(
                        user = a.user,
                        bound = row.mechanism,
                        used = a.mechanism,
                        "FAST token used with another mechanism; refused"
                    );
                    return FastVerdict::Refused;
                }
                let mark = credentials_mark(&cx, &host, &a.user).await;
                if row.expiry <= now_ms() || mark.as_deref() != Some(row.mark.as_str()) {
                    if let Err(e) = st.remove(&host, &a.user, &a.agent, &row.id).await {
                        tracing::warn!(error = %e, "removing a stale FAST token failed");
                    }
                    return FastVerdict::Expired;
                }
                if let Some(n) = a.count {
                    match st.bump_counter(&host, &a.user, &a.agent, &row.id, n).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::info!(
                                user = a.user,
                                count = n,
                                "FAST count replayed; refused"
                            );
                            return FastVerdict::Refused;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "storing a FAST count failed");
                            return FastVerdict::Refused;
                        }
                    }
                }
                let r = if a.invalidate {
                    st.remove_client(&host, &a.user, &a.agent).await
                } else {
                    st.use_token(&host, &a.user, &a.agent, &row.id, row.issued)
                        .await
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "rotating FAST tokens failed");
                    return FastVerdict::Refused;
                }
                let rotate = now_ms().saturating_sub(row.issued) >= me.refresh_ms;
                return FastVerdict::Ok { token, rotate };
            }
            FastVerdict::Refused
        })
    }
}

/// The store of `mod_auth_fast`, beside the module.
pub mod store {
    use palaver_server::ModuleCx;
    use palaver_storage::{BeginWrite, Db, ModuleMigration, Result, on_db};

    /// The module's table; step 2 binds tokens to a mechanism, adds the
    /// XEP-0484 replay counter and the "used" flag of the two slots
    /// (tokens from before it were all `HT-SHA-256-NONE`).
    pub const MIGRATIONS: &[ModuleMigration] = &[
        ModuleMigration {
            sqlite: "CREATE TABLE fast_tokens (host TEXT NOT NULL, username TEXT NOT NULL, agent TEXT NOT NULL, \
                     id TEXT NOT NULL, hash TEXT NOT NULL, mark TEXT NOT NULL, expiry BIGINT NOT NULL, \
                     issued BIGINT NOT NULL, PRIMARY KEY (host, username, agent, id))",
            postgres: "CREATE TABLE fast_tokens (host TEXT NOT NULL, username TEXT NOT NULL, agent TEXT NOT NULL, \
                       id TEXT NOT NULL, hash TEXT NOT NULL, mark TEXT NOT NULL, expiry BIGINT NOT NULL, \
                       issued BIGINT NOT NULL, PRIMARY KEY (host, username, agent, id))",
        },
        ModuleMigration {
            sqlite: "ALTER TABLE fast_tokens ADD COLUMN mechanism TEXT NOT NULL DEFAULT 'HT-SHA-256-NONE';\
                     ALTER TABLE fast_tokens ADD COLUMN counter BIGINT NOT NULL DEFAULT 0;\
                     ALTER TABLE fast_tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;",
            postgres: "ALTER TABLE fast_tokens ADD COLUMN mechanism TEXT NOT NULL DEFAULT 'HT-SHA-256-NONE', \
                       ADD COLUMN counter BIGINT NOT NULL DEFAULT 0, \
                       ADD COLUMN used INTEGER NOT NULL DEFAULT 0;",
        },
    ];

    /// One stored token (never the token itself).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Row {
        pub id: String,
        pub hash: String,
        pub mark: String,
        pub expiry: i64,
        pub issued: i64,
        /// The FAST mechanism the token was issued for.
        pub mechanism: String,
        /// The highest `count` seen with it.
        pub counter: i64,
        /// Whether a login used it (the "current" slot; else "new").
        pub used: bool,
    }

    /// FAST tokens, on either backend.
    pub struct FastSql(Db);

    impl FastSql {
        /// The store over the server's pool.
        pub fn new(db: Db) -> FastSql {
            FastSql(db)
        }

        /// The store of a running server.
        pub fn of(cx: &ModuleCx) -> FastSql {
            FastSql(cx.storage().db.clone())
        }

        /// Add a token of a client (the "new" slot): an unused one
        /// issued before goes (XEP-0484 §3.5), the one it last logged in
        /// with stays until this one is used.
        pub async fn add(&self, host: &str, user: &str, agent: &str, r: &Row) -> Result<()> {
            on_db!(&self.0, |pool| {
                let mut tx = pool.begin_write().await?;
                sqlx::query(
                    "DELETE FROM fast_tokens WHERE host = $1 AND username = $2 AND agent = $3 AND used = 0",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO fast_tokens (host, username, agent, id, hash, mark, expiry, issued, mechanism, counter, used) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .bind(&r.id)
                .bind(&r.hash)
                .bind(&r.mark)
                .bind(r.expiry)
                .bind(r.issued)
                .bind(&r.mechanism)
                .bind(r.counter)
                .bind(i32::from(r.used))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            });
            Ok(())
        }

        /// A client's tokens, newest first.
        pub async fn list(&self, host: &str, user: &str, agent: &str) -> Result<Vec<Row>> {
            type R = (String, String, String, i64, i64, String, i64, i32);
            let rows: Vec<R> = on_db!(&self.0, |pool| {
                sqlx::query_as(
                    "SELECT id, hash, mark, expiry, issued, mechanism, counter, used FROM fast_tokens \
                     WHERE host = $1 AND username = $2 AND agent = $3 ORDER BY issued DESC",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .fetch_all(pool)
                .await?
            });
            Ok(rows
                .into_iter()
                .map(
                    |(id, hash, mark, expiry, issued, mechanism, counter, used)| Row {
                        id,
                        hash,
                        mark,
                        expiry,
                        issued,
                        mechanism,
                        counter,
                        used: used != 0,
                    },
                )
                .collect())
        }

        /// Record replay counter `count` for a token if it is above every
        /// count seen with it; false when it is not (a replay).
        pub async fn bump_counter(
            &self,
            host: &str,
            user: &str,
            agent: &str,
            id: &str,
            count: u64,
        ) -> Result<bool> {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            let n = on_db!(&self.0, |pool| {
                sqlx::query(
                    "UPDATE fast_tokens SET counter = $5 WHERE host = $1 AND username = $2 \
                     AND agent = $3 AND id = $4 AND counter < $5",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .bind(id)
                .bind(count)
                .execute(pool)
                .await?
                .rows_affected()
            });
            Ok(n == 1)
        }

        /// A login used token `id` (issued at `issued`): it becomes the
        /// "current" one; those issued before it are forgotten.
        pub async fn use_token(
            &self,
            host: &str,
            user: &str,
            agent: &str,
            id: &str,
            issued: i64,
        ) -> Result<()> {
            on_db!(&self.0, |pool| {
                let mut tx = pool.begin_write().await?;
                sqlx::query(
                    "DELETE FROM fast_tokens WHERE host = $1 AND username = $2 AND agent = $3 AND issued < $4",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .bind(issued)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE fast_tokens SET used = 1 WHERE host = $1 AND username = $2 AND agent = $3 AND id = $4",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            });
            Ok(())
        }

        /// Forget one token.
        pub async fn remove(&self, host: &str, user: &str, agent: &str, id: &str) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query(
                    "DELETE FROM fast_tokens WHERE host = $1 AND username = $2 AND agent = $3 AND id = $4",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .bind(id)
                .execute(pool)
                .await?;
            });
            Ok(())
        }

        /// Forget every token of one client (an invalidating login).
        pub async fn remove_client(&self, host: &str, user: &str, agent: &str) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query(
                    "DELETE FROM fast_tokens WHERE host = $1 AND username = $2 AND agent = $3",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .execute(pool)
                .await?;
            });
            Ok(())
        }

        /// Forget every token of an account.
        pub async fn remove_user(&self, host: &str, user: &str) -> Result<()> {
            on_db!(&self.0, |pool| {
                sqlx::query("DELETE FROM fast_tokens WHERE host = $1 AND username = $2")
                    .bind(host)
                    .bind(user)
                    .execute(pool)
                    .await?;
            });
            Ok(())
        }
    }
}
