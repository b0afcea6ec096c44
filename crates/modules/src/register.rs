//! XEP-0077 in-band registration: create (access rule, per-IP rate limit),
//! change password, cancel the account.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use jid::BareJid;
use minidom::Element;
use palaver_proto::error::{Condition, ErrorType, StanzaError};
use palaver_server::module::PreAuthIq;
use palaver_server::{HostSetup, IqRequest, IqResult, IqScope, IqType, Module, ModuleDef};
use palaver_storage::StorageError;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `mod_register`.
pub struct Register;

/// `mod_register` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Register>();

impl Module for Register {
    const NAME: &'static str = "mod_register";
    type Options = Options;
    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        start(host, o)?;
        Ok(Register)
    }
}

const NS_REGISTER: &str = "jabber:iq:register";
const NS_FEATURE: &str = "http://jabber.org/features/iq-register";

/// `mod_register` options.
#[derive(serde::Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Access rule deciding who may register (denied when the rule is missing).
    access: String,
    /// Seconds between two registrations from one IP address (0: no limit).
    registration_timeout: u64,
    /// Shortest accepted password.
    password_min_length: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            access: "register".into(),
            registration_timeout: 600,
            password_min_length: 1,
        }
    }
}

struct State {
    opts: Options,
    last_by_ip: DashMap<IpAddr, Instant>,
}

fn start(host: &mut HostSetup, o: Options) -> Result<(), String> {
    let state = Arc::new(State {
        opts: o,
        last_by_ip: DashMap::new(),
    });
    host.add_feature(NS_REGISTER);
    // Advertised only where registration is open to new users (by the
    // access rule as configured now: a reload may change it).
    let s = state.clone();
    host.add_pre_auth_stream_features(Arc::new(move |h| {
        let open = h.config().access_on(
            &h.name,
            &s.opts.access,
            &format!("new-user@{}", h.name),
            false,
        );
        if open {
            vec![Element::bare("register", NS_FEATURE)]
        } else {
            Vec::new()
        }
    }));
    let s = state.clone();
    host.on_pre_auth_iq(
        NS_REGISTER,
        Arc::new(move |req| {
            let s = s.clone();
            Box::pin(async move { pre_auth(s, req).await })
        }),
    );
    host.on_iq(
        IqScope::Account,
        IqType::Get,
        NS_REGISTER,
        |req| async move {
            let me = own(&req)?;
            let mut q = Element::bare("query", NS_REGISTER);
            q.append_child(Element::bare("registered", NS_REGISTER));
            q.append_child(
                Element::builder("username", NS_REGISTER)
                    .append(me.node().map(|n| n.to_string()).unwrap_or_default())
                    .build(),
            );
            q.append_child(Element::bare("password", NS_REGISTER));
            Ok(Some(q))
        },
    );
    let s = state;
    host.on_iq(IqScope::Account, IqType::Set, NS_REGISTER, move |req| {
        let s = s.clone();
        async move { account_set(s, req).await }
    });
    Ok(())
}

fn own(req: &IqRequest) -> Result<BareJid, StanzaError> {
    req.own_account().map(|(me, _, _)| me)
}

fn field(q: &Element, name: &str) -> Option<String> {
    q.get_child(name, NS_REGISTER).map(|e| e.text())
}

fn internal(e: palaver_storage::StorageError) -> StanzaError {
    palaver_server::module::storage_failure("registration", &e)
}

async fn pre_auth(s: Arc<State>, req: PreAuthIq) -> IqResult {
    let q = req
        .el
        .get_child("query", NS_REGISTER)
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let host = req.host.name.clone();
    if req.el.attr("type") == Some("get") {
        let mut out = Element::bare("query", NS_REGISTER);
        out.append_child(
            Element::builder("instructions", NS_REGISTER)
                .append("Choose a username and password to register with this server.")
                .build(),
        );
        out.append_child(Element::bare("username", NS_REGISTER));
        out.append_child(Element::bare("password", NS_REGISTER));
        return Ok(Some(out));
    }
    let (Some(user), Some(password)) = (field(q, "username"), field(q, "password")) else {
        return Err(
            StanzaError::new(Condition::BadRequest).text("username and password are required")
        );
    };
    let bare = BareJid::new(&format!("{user}@{host}"))
        .map_err(|_| StanzaError::new(Condition::JidMalformed))?;
    let node = bare
        .node()
        .map(|n| n.to_string())
        .ok_or_else(|| StanzaError::new(Condition::JidMalformed))?;
    if user.contains('@') || user.contains('/') {
        return Err(StanzaError::new(Condition::JidMalformed));
    }
    if !req
        .cx()
        .config()
        .access_on(&host, &s.opts.access, bare.as_str(), false)
    {
        return Err(StanzaError::new(Condition::NotAllowed).text("registration is closed"));
    }
    if password.chars().count() < s.opts.password_min_length.max(1) {
        return Err(StanzaError::new(Condition::NotAcceptable).text("password too short"));
    }
    // The host's auth backend knows (internal: the database).
    match req.cx().auth().user_exists(&host, &node).await {
        Ok(false) => {}
        Ok(true) => return Err(StanzaError::new(Condition::Conflict)),
        Err(_) => return Err(unavailable()),
    }
    let ip = req.peer.ip();
    let previous = reserve(&s, ip)?;
    let created = create(&req, &host, &node, &password).await;
    if created.is_err() {
        // A failed attempt does not count against the address.
        release(&s, ip, previous);
    }
    created?;
    tracing::info!(user = %bare, "account registered in-band");
    Ok(None)
}

/// Reserve the address's registration slot (XEP-0077 §9.3 rate limit);
/// returns the previous registration time, to restore on failure.
fn reserve(s: &State, ip: IpAddr) -> Result<Option<Instant>, StanzaError> {
    let window = Duration::from_secs(s.opts.registration_timeout);
    if window.is_zero() {
        return Ok(None);
    }
    s.last_by_ip.retain(|_, t| t.elapsed() < window);
    match s.last_by_ip.entry(ip) {
        Entry::Occupied(mut e) => {
            if e.get().elapsed() < window {
                return Err(StanzaError::new(Condition::ResourceConstraint)
                    .with_type(ErrorType::Wait)
                    .text("too many registrations from your address; try later"));
            }
            Ok(Some(e.insert(Instant::now())))
        }
        Entry::Vacant(e) => {
            e.insert(Instant::now());
            Ok(None)
        }
    }
}

fn release(s: &State, ip: IpAddr, previous: Option<Instant>) {
    if s.opts.registration_timeout == 0 {
        return;
    }
    match previous {
        Some(t) => {
            s.last_by_ip.insert(ip, t);
        }
        None => {
            s.last_by_ip.remove(&ip);
        }
    }
}

/// The auth backend failed: try again later.
fn unavailable() -> StanzaError {
    StanzaError::new(Condition::ResourceConstraint)
        .with_type(ErrorType::Wait)
        .text("the authentication backend is unavailable; try later")
}

/// An external backend's answer to a change, as the stanza error.
fn provision(r: palaver_server::auth::Provision) -> Result<(), StanzaError> {
    use palaver_server::auth::Provision;
    match r {
        Provision::Done => Ok(()),
        Provision::Exists => Err(StanzaError::new(Condition::Conflict)),
        Provision::NotFound => Err(StanzaError::new(Condition::ItemNotFound)),
        Provision::Refused => {
            Err(StanzaError::new(Condition::NotAllowed)
                .text("the authentication backend refused it"))
        }
        Provision::Temporary => Err(unavailable()),
    }
}

/// Derive the credentials off the async threads, store the account and
/// remember the password so the first login skips PBKDF2; on a host whose
/// accounts live in an external backend (`auth_method: http`, …), ask it
/// to create the account instead.
async fn create(
    req: &PreAuthIq,
    host: &str,
    node: &str,
    password: &str,
) -> Result<(), StanzaError> {
    if let Some(r) = req
        .cx()
        .auth()
        .register_external(host, node, password)
        .await
    {
        return provision(r);
    }
    let iterations = req.cx().config().scram_iterations;
    let pw = password.to_string();
    let creds =
        tokio::task::spawn_blocking(move || palaver_server::auth::derive_all(&pw, iterations))
            .await
            .map_err(|e| palaver_server::module::internal_error("deriving credentials", e))?;
    match req
        .cx()
        .storage()
        .accounts
        .create_account(host, node, &creds)
        .await
    {
        Ok(()) => {}
        Err(StorageError::Conflict) => return Err(StanzaError::new(Condition::Conflict)),
        Err(e) => return Err(internal(e)),
    }
    req.cx().auth().remember(host, node, &creds, password);
    Ok(())
}

async fn account_set(s: Arc<State>, req: IqRequest) -> IqResult {
    let me = own(&req)?;
    let node = me
        .node()
        .map(|n| n.to_string())
        .ok_or_else(|| StanzaError::new(Condition::Forbidden))?;
    let host = me.domain().to_string();
    let q = req
        .payload()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    if q.has_child("remove", NS_REGISTER) {
        // An external backend removes the account first (or refuses).
        if let Some(r) = req.cx.auth().remove_external(&host, &node).await {
            provision(r)?;
        }
        // Answer first, then remove: removal ends the session.
        let core = req.cx.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            if let Err(e) = core.remove_user(&host, &node).await {
                tracing::warn!(error = %e, "account removal failed");
            }
        });
        return Ok(None);
    }
    let (Some(user), Some(password)) = (field(q, "username"), field(q, "password")) else {
        return Err(StanzaError::new(Condition::BadRequest));
    };
    // Compare in canonical (nodeprep) form.
    let same = BareJid::new(&format!("{user}@{host}"))
        .ok()
        .and_then(|b| b.node().map(|n| n.as_str() == node))
        .unwrap_or(false);
    if !same {
        return Err(
            StanzaError::new(Condition::NotAllowed).text("you can only change your own password")
        );
    }
    if password.chars().count() < s.opts.password_min_length.max(1) {
        return Err(StanzaError::new(Condition::NotAcceptable).text("password too short"));
    }
    if let Some(r) = req
        .cx
        .auth()
        .set_external_password(&host, &node, &password)
        .await
    {
        return match r {
            palaver_server::auth::AuthOutcome::Ok => Ok(None),
            palaver_server::auth::AuthOutcome::Denied => {
                Err(StanzaError::new(Condition::NotAllowed)
                    .text("the authentication backend refused it"))
            }
            palaver_server::auth::AuthOutcome::Temporary => Err(unavailable()),
        };
    }
    let iterations = req.cx.config().scram_iterations;
    let pw = password.clone();
    let creds =
        tokio::task::spawn_blocking(move || palaver_server::auth::derive_all(&pw, iterations))
            .await
            .map_err(|e| palaver_server::module::internal_error("deriving credentials", e))?;
    req.cx
        .storage()
        .accounts
        .set_credentials(&host, &node, &creds)
        .await
        .map_err(internal)?;
    req.cx.auth().forget(&host, &node);
    req.cx.auth().remember(&host, &node, &creds, &password);
    Ok(None)
}
