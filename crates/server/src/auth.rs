//! Password and SCRAM credential checks, per host by `auth_method`:
//! `internal` (stored SCRAM credentials), `http` (the operator's service,
//! [`http`]), `external` (ejabberd's extauth program protocol,
//! [`extauth`]), `jwt` (a signed token as the password, [`jwt`]), and
//! `anonymous` (SASL ANONYMOUS). A backend that fails answers
//! [`AuthOutcome::Temporary`] (the client gets `temporary-auth-failure`)
//! and is asked again on the next login; no backend call blocks the server
//! (each has a timeout and runs on the login's own task).

pub mod extauth;
pub mod http;
pub mod jwt;

use crate::config::{AuthMethod, Config, ConfigError};
use dashmap::DashMap;
use palaver_proto::sasl::{ScramCredentials, ScramHash};
use palaver_storage::{Storage, StorageError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Outcome of a password check.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Correct.
    Ok,
    /// Wrong password or no such account.
    Denied,
    /// The backend failed; try later.
    Temporary,
}

/// Checks passwords against stored SCRAM credentials.
///
/// A PLAIN login costs a PBKDF2 derivation; to keep repeated logins cheap
/// a keyed SHA-256 digest of (stored key, password) is remembered per
/// account after a successful check, so a correct password is recognised
/// without re-deriving while the stored credentials are unchanged.
pub struct Authenticator {
    storage: Storage,
    iterations: AtomicU32,
    secret: [u8; 32],
    verified: DashMap<(String, String), [u8; 32]>,
    /// Per host: the backend (hosts not listed use the internal one);
    /// replaced whole by a configuration reload.
    hosts: RwLock<Arc<AuthHosts>>,
    /// Correct passwords of external backends, until a deadline.
    cache: DashMap<(String, String), ([u8; 32], Instant)>,
    /// SCRAM credentials an external service gave, until a deadline.
    scram_cache: DashMap<(String, String, ScramHash), (ScramCredentials, Instant)>,
}

/// What an external backend did with an account change (`register`,
/// `remove_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provision {
    /// Done (a registered account also got its local row).
    Done,
    /// The account exists already.
    Exists,
    /// No such account.
    NotFound,
    /// The backend said no, or cannot do it (extauth's 0, JWT).
    Refused,
    /// The backend failed; try later.
    Temporary,
}

/// A password backend.
enum Backend {
    Internal,
    Http(http::HttpAuth),
    External(extauth::ExtAuth),
    Jwt(jwt::JwtKey),
    /// No password logins.
    None,
}

struct HostAuth {
    backend: Backend,
    anonymous: bool,
    cache_life_time: Duration,
    /// The settings it was built from (a reload keeps it when they are unchanged).
    method: AuthMethod,
    settings: crate::config::AuthSettings,
}

type AuthHosts = HashMap<String, Arc<HostAuth>>;

/// The backends of a new configuration, built (programs started, keys
/// read) but not in use yet: [`Authenticator::install`] swaps them in.
pub struct PreparedAuth {
    hosts: AuthHosts,
    iterations: u32,
}

static INTERNAL: Backend = Backend::Internal;

impl Authenticator {
    /// New authenticator over `storage` for internal accounts only.
    pub fn new(storage: Storage, iterations: u32) -> Self {
        Authenticator {
            storage,
            iterations: AtomicU32::new(iterations),
            secret: rand::random(),
            verified: DashMap::new(),
            hosts: RwLock::new(Arc::new(HashMap::new())),
            cache: DashMap::new(),
            scram_cache: DashMap::new(),
        }
    }

    /// The authenticator of `config`: each host's `auth_method` with its
    /// options (a missing or unusable option is a config error).
    pub fn from_config(storage: Storage, config: &Config) -> Result<Self, ConfigError> {
        let a = Self::new(storage, config.scram_iterations);
        let prepared = a.prepare(config)?;
        a.install(prepared);
        Ok(a)
    }

    /// Build the backends of `config`, keeping the running one of each host
    /// whose `auth_method` and options are unchanged (its program pool,
    /// its cache). Nothing changes until [`Authenticator::install`].
    pub fn prepare(&self, config: &Config) -> Result<PreparedAuth, ConfigError> {
        let current = self.current();
        let mut hosts = HashMap::new();
        for h in &config.hosts {
            let o = config.host_options(h);
            if let Some(old) = current.get(h)
                && old.method == o.auth_method
                && old.settings == o.auth
            {
                hosts.insert(h.clone(), old.clone());
                continue;
            }
            let err = |m: String| ConfigError::msg(format!("auth_method of host {h}: {m}"));
            let backend = match o.auth_method {
                AuthMethod::Internal => Backend::Internal,
                AuthMethod::Anonymous => Backend::None,
                AuthMethod::Http => match &o.auth.http {
                    Some(opts) => Backend::Http(http::HttpAuth::new(opts.clone()).map_err(err)?),
                    None => return Err(err("`http` needs `auth_opts: {url: …}`".into())),
                },
                AuthMethod::External => match &o.auth.extauth_program {
                    Some(p) => Backend::External(
                        extauth::ExtAuth::new(p, o.auth.extauth_pool_size).map_err(err)?,
                    ),
                    None => return Err(err("`external` needs `extauth_program`".into())),
                },
                AuthMethod::Jwt => match &o.auth.jwt_key {
                    Some(k) => {
                        Backend::Jwt(jwt::JwtKey::load(k, &o.auth.jwt_jid_field).map_err(err)?)
                    }
                    None => return Err(err("`jwt` needs `jwt_key`".into())),
                },
            };
            hosts.insert(
                h.clone(),
                Arc::new(HostAuth {
                    backend,
                    anonymous: o.auth.anonymous,
                    cache_life_time: o.auth.cache_life_time,
                    method: o.auth_method,
                    settings: o.auth.clone(),
                }),
            );
        }
        Ok(PreparedAuth {
            hosts,
            iterations: config.scram_iterations,
        })
    }

    /// Use the backends of [`Authenticator::prepare`] from now on. Logins
    /// under way finish with the backend they started with.
    pub fn install(&self, prepared: PreparedAuth) {
        self.iterations
            .store(prepared.iterations, Ordering::Relaxed);
        let old = std::mem::replace(
            &mut *self.hosts.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(prepared.hosts),
        );
        // Passwords a replaced backend said were right are not the new one's.
        let new = self.current();
        let changed = |h: &str| match (old.get(h), new.get(h)) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            _ => true,
        };
        self.cache.retain(|(h, _), _| !changed(h));
    }

    fn current(&self) -> Arc<AuthHosts> {
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn host_auth(&self, host: &str) -> Option<Arc<HostAuth>> {
        self.hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    fn iterations(&self) -> u32 {
        self.iterations.load(Ordering::Relaxed)
    }

    /// Whether `host` takes SASL ANONYMOUS.
    pub fn anonymous_allowed(&self, host: &str) -> bool {
        self.host_auth(host).is_some_and(|h| h.anonymous)
    }

    /// Whether `host` checks passwords at all (PLAIN).
    pub fn passwords(&self, host: &str) -> bool {
        let h = self.host_auth(host);
        !matches!(backend_of(&h), Backend::None)
    }

    /// Whether SCRAM with `hash` is offered on `host`: internal accounts,
    /// or an `http` service configured to give credentials for it.
    pub fn scram_offered(&self, host: &str, hash: ScramHash) -> bool {
        let h = self.host_auth(host);
        match backend_of(&h) {
            Backend::Internal => true,
            Backend::Http(h) => h.offers_scram(hash),
            _ => false,
        }
    }

    /// Whether `host` has stored SCRAM credentials (internal accounts).
    pub fn scram_available(&self, host: &str) -> bool {
        let h = self.host_auth(host);
        matches!(backend_of(&h), Backend::Internal)
    }

    /// Whether `host`'s accounts live in Palaver's database (so commands
    /// may create them and change their passwords there).
    pub fn internal(&self, host: &str) -> bool {
        self.scram_available(host)
    }

    /// The name of `host`'s password method (metrics, logs).
    pub fn method_name(&self, host: &str) -> &'static str {
        let h = self.host_auth(host);
        match backend_of(&h) {
            Backend::Internal => "internal",
            Backend::Http(_) => "http",
            Backend::External(_) => "external",
            Backend::Jwt(_) => "jwt",
            Backend::None => "anonymous",
        }
    }

    /// Count a login of `host` (SASL, the REST API) for the metrics:
    /// `palaver_auth_total{method, result}`.
    pub fn record(&self, host: &str, outcome: &AuthOutcome) {
        let result = match outcome {
            AuthOutcome::Ok => "success",
            AuthOutcome::Denied => "failure",
            AuthOutcome::Temporary => "temporary_failure",
        };
        metrics::counter!("palaver_auth_total", "method" => self.method_name(host), "result" => result)
            .increment(1);
    }

    /// Check a password with `host`'s backend (SASL PLAIN, the REST API's
    /// basic authentication, `check_password`).
    pub async fn check_password(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        let h = self.host_auth(host);
        let outcome = match backend_of(&h) {
            Backend::Internal => return self.check_internal(host, user, password).await,
            Backend::None => return AuthOutcome::Denied,
            external => {
                let key = (host.to_string(), user.to_string());
                let token = self.pw_token(host, user, password);
                if let Some(e) = self.cache.get(&key)
                    && e.1 > Instant::now()
                    && bool::from(subtle_eq(&e.0[..], &token[..]))
                {
                    return AuthOutcome::Ok;
                }
                let started = Instant::now();
                let outcome = match external {
                    Backend::Http(h) => h.check_password(host, user, password).await,
                    Backend::External(x) => x.check_password(host, user, password).await,
                    Backend::Jwt(j) => j.check(host, user, password),
                    Backend::Internal | Backend::None => AuthOutcome::Denied,
                };
                metrics::histogram!("palaver_auth_backend_seconds", "method" => self.method_name(host))
                    .record(started.elapsed().as_secs_f64());
                let life = h.as_ref().map(|h| h.cache_life_time).unwrap_or_default();
                if outcome == AuthOutcome::Ok && !life.is_zero() {
                    self.cache.insert(key, (token, Instant::now() + life));
                }
                outcome
            }
        };
        if outcome == AuthOutcome::Ok {
            self.ensure_local_account(host, user).await;
        }
        outcome
    }

    /// An account checked by an external backend gets a row in the local
    /// database (no usable credentials: a random password), so delivery,
    /// rosters and offline storage know it exists.
    async fn ensure_local_account(&self, host: &str, user: &str) {
        match self.storage.accounts.account_exists(host, user).await {
            Ok(true) => {}
            Ok(false) => {
                let pw: [u8; 32] = rand::random();
                let pw = hex::encode(pw);
                let iterations = self.iterations();
                if let Ok(creds) =
                    tokio::task::spawn_blocking(move || derive_all(&pw, iterations)).await
                {
                    match self
                        .storage
                        .accounts
                        .create_account(host, user, &creds)
                        .await
                    {
                        Ok(()) | Err(StorageError::Conflict) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, host, user, "recording an external account failed")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, host, user, "account lookup failed"),
        }
    }

    /// Whether `user` exists according to `host`'s backend.
    pub async fn user_exists(&self, host: &str, user: &str) -> Result<bool, AuthOutcome> {
        let h = self.host_auth(host);
        match backend_of(&h) {
            Backend::Http(h) => h.user_exists(host, user).await,
            Backend::External(x) => x.user_exists(host, user).await,
            _ => self
                .storage
                .accounts
                .account_exists(host, user)
                .await
                .map_err(|_| AuthOutcome::Temporary),
        }
    }

    /// Set a password in an external backend (`set_password` / `setpass`);
    /// `None` when `host`'s accounts are internal (the caller stores it).
    pub async fn set_external_password(
        &self,
        host: &str,
        user: &str,
        password: &str,
    ) -> Option<AuthOutcome> {
        let h = self.host_auth(host);
        let r = match backend_of(&h) {
            Backend::Internal => return None,
            Backend::Http(h) => h.set_password(host, user, password).await,
            Backend::External(x) => x.set_password(host, user, password).await,
            Backend::Jwt(_) | Backend::None => AuthOutcome::Denied,
        };
        self.forget(host, user);
        Some(r)
    }

    fn pw_token(&self, host: &str, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(host.as_bytes());
        h.update([0]);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn token(&self, creds: &ScramCredentials, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(&creds.stored_key);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Credentials for SCRAM with `hash`: stored ones for internal
    /// accounts, the service's for an `http` backend that gives them (a
    /// failing service is [`StorageError::Unavailable`]: a temporary
    /// failure).
    pub async fn credentials(
        &self,
        host: &str,
        user: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, StorageError> {
        let ha = self.host_auth(host);
        match backend_of(&ha) {
            Backend::Internal => self.storage.accounts.credentials(host, user, hash).await,
            Backend::Http(h) if h.offers_scram(hash) => {
                let key = (host.to_string(), user.to_string(), hash);
                if let Some(e) = self.scram_cache.get(&key)
                    && e.1 > Instant::now()
                {
                    return Ok(Some(e.0.clone()));
                }
                let started = Instant::now();
                let r = h.scram_credentials(host, user, hash).await;
                metrics::histogram!("palaver_auth_backend_seconds", "method" => "http")
                    .record(started.elapsed().as_secs_f64());
                match r {
                    Ok(Some(c)) => {
                        let life = ha.as_ref().map(|h| h.cache_life_time).unwrap_or_default();
                        if !life.is_zero() {
                            self.scram_cache
                                .insert(key, (c.clone(), Instant::now() + life));
                        }
                        self.ensure_local_account(host, user).await;
                        Ok(Some(c))
                    }
                    Ok(None) => Ok(None),
                    Err(_) => Err(StorageError::Unavailable(
                        "the HTTP auth service failed".into(),
                    )),
                }
            }
            // The backend keeps no SCRAM credentials (never offered there).
            _ => Ok(None),
        }
    }

    /// Create an account in an external backend (`register` /
    /// `tryregister`); `None` when `host`'s accounts are internal (the
    /// caller stores it). A created account gets its local row.
    pub async fn register_external(
        &self,
        host: &str,
        user: &str,
        password: &str,
    ) -> Option<Provision> {
        let ha = self.host_auth(host);
        let r = match backend_of(&ha) {
            Backend::Internal => return None,
            Backend::Http(h) => match h.register(host, user, password).await {
                Ok(http::Change::Done) => Provision::Done,
                Ok(http::Change::Exists) => Provision::Exists,
                Ok(http::Change::Refused | http::Change::NotFound) => Provision::Refused,
                Err(_) => Provision::Temporary,
            },
            Backend::External(x) => match x.register(host, user, password).await {
                AuthOutcome::Ok => Provision::Done,
                AuthOutcome::Denied => Provision::Refused,
                AuthOutcome::Temporary => Provision::Temporary,
            },
            Backend::Jwt(_) | Backend::None => Provision::Refused,
        };
        if r == Provision::Done {
            self.ensure_local_account(host, user).await;
        }
        Some(r)
    }

    /// Remove an account from an external backend (`remove_user` /
    /// `removeuser`); `None` when there is no backend to ask (internal,
    /// JWT, anonymous): the caller removes the local data only.
    pub async fn remove_external(&self, host: &str, user: &str) -> Option<Provision> {
        let ha = self.host_auth(host);
        let r = match backend_of(&ha) {
            Backend::Internal | Backend::Jwt(_) | Backend::None => return None,
            Backend::Http(h) => match h.remove_user(host, user).await {
                Ok(http::Change::Done) => Provision::Done,
                Ok(http::Change::NotFound) => Provision::NotFound,
                Ok(http::Change::Refused | http::Change::Exists) => Provision::Refused,
                Err(_) => Provision::Temporary,
            },
            Backend::External(x) => match x.remove_user(host, user).await {
                AuthOutcome::Ok => Provision::Done,
                AuthOutcome::Denied => Provision::Refused,
                AuthOutcome::Temporary => Provision::Temporary,
            },
        };
        self.forget(host, user);
        Some(r)
    }

    /// Check a plaintext password against stored credentials.
    ///
    /// Accounts imported with credentials for some hashes only (ejabberd
    /// keeps SCRAM-SHA-1 alone) get the missing ones derived on a successful
    /// check, so their next SCRAM-SHA-256/512 login works too.
    async fn check_internal(&self, host: &str, user: &str, password: &str) -> AuthOutcome {
        let mut missing = false;
        let mut found = None;
        for hash in [ScramHash::Sha256, ScramHash::Sha512, ScramHash::Sha1] {
            match self.storage.accounts.credentials(host, user, hash).await {
                Ok(Some(c)) => {
                    found = Some(c);
                    break;
                }
                Ok(None) => missing = true,
                Err(e) => {
                    tracing::warn!(error = %e, "credential lookup failed");
                    return AuthOutcome::Temporary;
                }
            }
        }
        let Some(creds) = found else {
            return AuthOutcome::Denied;
        };
        let token = self.token(&creds, password);
        let key = (host.to_string(), user.to_string());
        if let Some(t) = self.verified.get(&key)
            && bool::from(subtle_eq(&t[..], &token[..]))
        {
            return AuthOutcome::Ok;
        }
        let pw = password.to_string();
        let ok = tokio::task::spawn_blocking(move || creds.verify_password(&pw))
            .await
            .unwrap_or(false);
        if !ok {
            return AuthOutcome::Denied;
        }
        if missing {
            let iterations = self.iterations();
            let pw = password.to_string();
            if let Ok(all) = tokio::task::spawn_blocking(move || derive_all(&pw, iterations)).await
            {
                match self
                    .storage
                    .accounts
                    .set_credentials(host, user, &all)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(host, user, "derived missing SCRAM credentials at login");
                        self.remember(host, user, &all, password);
                        return AuthOutcome::Ok;
                    }
                    Err(e) => tracing::warn!(error = %e, "storing derived credentials failed"),
                }
            }
        }
        self.verified.insert(key, token);
        AuthOutcome::Ok
    }

    /// Derive credentials for every supported hash.
    pub fn derive_all(&self, password: &str) -> Vec<ScramCredentials> {
        derive_all(password, self.iterations())
    }

    /// Forget cached verifications for an account (password changed or removed).
    pub fn forget(&self, host: &str, user: &str) {
        self.verified.remove(&(host.to_string(), user.to_string()));
        self.cache.remove(&(host.to_string(), user.to_string()));
        for hash in ScramHash::ALL {
            self.scram_cache
                .remove(&(host.to_string(), user.to_string(), hash));
        }
    }

    /// Remember that `password` is correct for freshly derived `creds` (registration, password change).
    pub fn remember(&self, host: &str, user: &str, creds: &[ScramCredentials], password: &str) {
        if let Some(c) = creds.iter().find(|c| c.hash == ScramHash::Sha256) {
            let t = self.token(c, password);
            self.verified
                .insert((host.to_string(), user.to_string()), t);
        }
    }
}

/// A host's backend; hosts without an entry use the internal one.
fn backend_of(h: &Option<Arc<HostAuth>>) -> &Backend {
    h.as_deref().map_or(&INTERNAL, |h| &h.backend)
}

fn subtle_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    a.ct_eq(b)
}

/// Derive SCRAM credentials for SHA-1, SHA-256 and SHA-512.
pub fn derive_all(password: &str, iterations: u32) -> Vec<ScramCredentials> {
    ScramHash::ALL
        .iter()
        .map(|h| ScramCredentials::generate(*h, password, iterations))
        .collect()
}
