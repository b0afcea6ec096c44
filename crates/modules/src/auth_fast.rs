//! XEP-0484 Fast Authentication Streamlining Tokens (`mod_auth_fast`, as
//! ejabberd names it): tokens a client asks for in a XEP-0388
//! authentication and uses later with `HT-SHA-256-NONE`, one round trip
//! instead of SCRAM's two and no password on the device.
//!
//! **Stored hashed.** A token is never stored: the database keeps a random
//! token id, the SHA-256 of the token, and its expiry; the token itself is
//! `HMAC-SHA-256(key, host, user, client, id)` with a key kept in the data
//! directory (`fast.key`, created on first start, mode 0600), so a copy of
//! the database alone lets no one log in. (Nodes of a cluster share that
//! file.) Checking a proof derives each stored token of that client again.
//!
//! **Rotation and invalidation.** A client holds at most two tokens: the
//! one issued last and the one before (a new one is issued whenever the
//! client asks). Logging in with the newer one forgets the older; a client
//! may ask for the one it used to be forgotten (`invalidate='true'`).
//! Every token remembers which credentials were current when it was
//! issued: after a password change (new salt and keys) none of the old
//! tokens works any more. Account removal deletes them.

use hmac::{Hmac, Mac};
use palaver_proto::sasl::ScramHash;
use palaver_server::hooks::RemoveUser;
use palaver_server::module::FastTokens;
use palaver_server::{HookAction, HostSetup, Module, ModuleCx, ModuleDef};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// `mod_auth_fast`.
pub struct AuthFast;

/// `mod_auth_fast` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<AuthFast>();

/// Options (ejabberd's name).
#[derive(serde::Deserialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Seconds a token stays valid.
    pub token_lifetime: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token_lifetime: 30 * 86_400,
        }
    }
}

struct Tokens {
    key: [u8; 32],
    host: String,
    lifetime_ms: i64,
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
        user: String,
        agent: String,
        proof: Vec<u8>,
        cb: Vec<u8>,
        invalidate: bool,
    ) -> futures_util::future::BoxFuture<'static, Option<String>> {
        let host = self.host.clone();
        let me = Tokens {
            key: self.key,
            host: self.host.clone(),
            lifetime_ms: self.lifetime_ms,
        };
        Box::pin(async move {
            let st = store::FastSql::of(&cx);
            let rows = match st.list(&host, &user, &agent).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading FAST tokens failed");
                    return None;
                }
            };
            let mark = credentials_mark(&cx, &host, &user).await?;
            let now = now_ms();
            for row in rows {
                if row.expiry <= now || row.mark != mark {
                    continue;
                }
                let token = me.derive(&user, &agent, &row.id);
                if sha256_hex(&token) != row.hash {
                    continue;
                }
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token.as_bytes()) else {
                    continue;
                };
                mac.update(b"Initiator");
                mac.update(&cb);
                let expected = mac.finalize().into_bytes();
                if expected.as_slice().ct_eq(&proof).into() {
                    // Rotation: the ones issued before this one are done.
                    let r = if invalidate {
                        st.remove_up_to(&host, &user, &agent, row.issued, true)
                            .await
                    } else {
                        st.remove_up_to(&host, &user, &agent, row.issued, false)
                            .await
                    };
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "rotating FAST tokens failed");
                    }
                    return Some(token);
                }
            }
            None
        })
    }
}

/// The store of `mod_auth_fast`, beside the module.
pub mod store {
    use palaver_server::ModuleCx;
    use palaver_storage::{Db, ModuleMigration, Result, on_db};

    /// The module's table.
    pub const MIGRATIONS: &[ModuleMigration] = &[ModuleMigration {
        sqlite: "CREATE TABLE fast_tokens (host TEXT NOT NULL, username TEXT NOT NULL, agent TEXT NOT NULL, \
                 id TEXT NOT NULL, hash TEXT NOT NULL, mark TEXT NOT NULL, expiry BIGINT NOT NULL, \
                 issued BIGINT NOT NULL, PRIMARY KEY (host, username, agent, id))",
        postgres: "CREATE TABLE fast_tokens (host TEXT NOT NULL, username TEXT NOT NULL, agent TEXT NOT NULL, \
                   id TEXT NOT NULL, hash TEXT NOT NULL, mark TEXT NOT NULL, expiry BIGINT NOT NULL, \
                   issued BIGINT NOT NULL, PRIMARY KEY (host, username, agent, id))",
    }];

    /// One stored token (never the token itself).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Row {
        pub id: String,
        pub hash: String,
        pub mark: String,
        pub expiry: i64,
        pub issued: i64,
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

        /// Add a token of a client, keeping only the newest one before it.
        pub async fn add(&self, host: &str, user: &str, agent: &str, r: &Row) -> Result<()> {
            on_db!(&self.0, |pool| {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "DELETE FROM fast_tokens WHERE host = $1 AND username = $2 AND agent = $3 \
                     AND id NOT IN (SELECT id FROM fast_tokens WHERE host = $1 AND username = $2 \
                     AND agent = $3 ORDER BY issued DESC LIMIT 1)",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO fast_tokens (host, username, agent, id, hash, mark, expiry, issued) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(host)
                .bind(user)
                .bind(agent)
                .bind(&r.id)
                .bind(&r.hash)
                .bind(&r.mark)
                .bind(r.expiry)
                .bind(r.issued)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            });
            Ok(())
        }

        /// A client's tokens, newest first.
        pub async fn list(&self, host: &str, user: &str, agent: &str) -> Result<Vec<Row>> {
            let rows: Vec<(String, String, String, i64, i64)> = on_db!(&self.0, |pool| {
                sqlx::query_as(
                    "SELECT id, hash, mark, expiry, issued FROM fast_tokens \
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
                .map(|(id, hash, mark, expiry, issued)| Row {
                    id,
                    hash,
                    mark,
                    expiry,
                    issued,
                })
                .collect())
        }

        /// Forget a client's tokens issued before `issued` (and the one
        /// issued then, with `inclusive`).
        pub async fn remove_up_to(
            &self,
            host: &str,
            user: &str,
            agent: &str,
            issued: i64,
            inclusive: bool,
        ) -> Result<()> {
            let sql = if inclusive {
                "DELETE FROM fast_tokens WHERE host = $1 AND username = $2 AND agent = $3 AND issued <= $4"
            } else {
                "DELETE FROM fast_tokens WHERE host = $1 AND username = $2 AND agent = $3 AND issued < $4"
            };
            on_db!(&self.0, |pool| {
                sqlx::query(sql)
                    .bind(host)
                    .bind(user)
                    .bind(agent)
                    .bind(issued)
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
