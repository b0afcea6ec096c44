//! `mod_fail2ban`: each failed login from an address is answered after a
//! delay that grows with the address's failures (100 ms doubling to 5 s),
//! and an address with too many is refused for a while (ejabberd's module
//! and option names). Every failed login is also
//! logged by the kernel with the address, in a line fail2ban can match:
//! `failed c2s authentication for USER@HOST from IP`.

use dashmap::DashMap;
use palaver_server::hooks::{AuthFailed, StreamOpened};
use palaver_server::{HookAction, HostSetup, Module, ModuleDef};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `mod_fail2ban`.
pub struct Fail2Ban;

/// `mod_fail2ban` in the module registry.
pub const MODULE: ModuleDef = ModuleDef::of::<Fail2Ban>();

/// `mod_fail2ban` options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Seconds an address stays refused after its last failure.
    c2s_auth_ban_lifetime: u64,
    /// Failed logins from one address before it is refused.
    c2s_max_auth_failures: u32,
}

impl Default for Options {
    fn default() -> Self {
        // ejabberd's defaults.
        Options {
            c2s_auth_ban_lifetime: 3600,
            c2s_max_auth_failures: 20,
        }
    }
}

/// How long the answer to the `n`th failed login of an address waits.
fn failure_delay(n: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << n.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(5_000))
}

/// Failures of one address and when they are forgotten.
struct Record {
    failures: u32,
    until: Instant,
}

impl Module for Fail2Ban {
    const NAME: &'static str = "mod_fail2ban";
    type Options = Options;

    fn start(host: &mut HostSetup, o: Options) -> Result<Self, String> {
        if o.c2s_max_auth_failures == 0 {
            return Err("c2s_max_auth_failures must be positive".into());
        }
        let lifetime = Duration::from_secs(o.c2s_auth_ban_lifetime);
        let max = o.c2s_max_auth_failures;
        let table: Arc<DashMap<IpAddr, Record>> = Arc::new(DashMap::new());
        let t = table.clone();
        host.hook::<AuthFailed>(50, move |_cx, f| {
            let now = Instant::now();
            let mut r = t.entry(f.ip).or_insert(Record {
                failures: 0,
                until: now,
            });
            if r.until <= now {
                r.failures = 0;
            }
            r.failures += 1;
            r.until = now + lifetime;
            // A growing delay before the failure is answered: 100 ms after
            // the first failure of the address, doubling, at most 5 s.
            f.delay = failure_delay(r.failures);
            if r.failures == max {
                tracing::warn!(ip = %f.ip, failures = max, "address banned for {}s after failed logins", lifetime.as_secs());
            }
            HookAction::Continue
        });
        host.hook::<StreamOpened>(50, move |_cx, open| {
            let now = Instant::now();
            let banned = table
                .get(&open.ip)
                .filter(|r| r.failures >= max && r.until > now)
                .map(|r| r.until.saturating_duration_since(now).as_secs());
            if let Some(left) = banned {
                open.refuse = Some(format!(
                    "too many ({max}) failed authentications from this address ({}); try again in {left} s",
                    open.ip
                ));
                return HookAction::Drop;
            }
            // Forget addresses whose records have expired (bounded memory).
            if table.len() > 10_000 {
                table.retain(|_, r| r.until > now);
            }
            HookAction::Continue
        });
        Ok(Fail2Ban)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn delay_grows_then_stays_capped() {
        use super::failure_delay;
        use std::time::Duration;
        assert_eq!(failure_delay(1), Duration::from_millis(100));
        assert_eq!(failure_delay(2), Duration::from_millis(200));
        assert_eq!(failure_delay(4), Duration::from_millis(800));
        assert_eq!(failure_delay(7), Duration::from_secs(5));
        assert_eq!(failure_delay(u32::MAX), Duration::from_secs(5));
    }
}
