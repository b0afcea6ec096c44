//! Limits on what one client may cost the server before and after it has
//! authenticated (issue 11; `SECURITY.md` lists every limit):
//!
//! - [`Unauthenticated`]: connections from one address that have not
//!   authenticated yet, capped per listener (`max_unauthenticated_per_ip`);
//! - [`TokenBucket`]: ejabberd's traffic shapers (`shaper:` and the
//!   listener's `shaper` rule), enforced by reading more slowly, never by
//!   dropping input.

use crate::config::Shaper;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Connections not yet authenticated, by source address: each address
/// has `cap` slots; a connection beyond them waits (unread) for one to free
/// up, until its stream header would be due, so a burst of honest logins
/// from one address (a NAT, a load test) goes through a few at a time while
/// idle connections cannot pile up.
#[derive(Default)]
pub struct Unauthenticated {
    by_ip: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// One unauthenticated connection counted against its address; released
/// when dropped (the connection authenticated or ended).
pub struct UnauthGuard {
    table: Arc<Unauthenticated>,
    ip: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
}

impl Unauthenticated {
    fn slots(&self, ip: IpAddr, cap: usize) -> Arc<Semaphore> {
        let mut m = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(ip)
            .or_insert_with(|| Arc::new(Semaphore::new(cap)))
            .clone()
    }

    /// A slot for a new connection from `ip` if one of its `cap` is free now.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<UnauthGuard> {
        let permit = self.slots(ip, cap).try_acquire_owned().ok();
        self.guard(ip, permit)
    }

    /// A slot for a new connection from `ip`, waiting until `deadline` for
    /// one of its `cap` to free up.
    pub async fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        cap: usize,
        deadline: Instant,
    ) -> Option<UnauthGuard> {
        let slots = self.slots(ip, cap);
        let permit = tokio::time::timeout_at(deadline, slots.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        self.guard(ip, permit)
    }

    fn guard(
        self: &Arc<Self>,
        ip: IpAddr,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<UnauthGuard> {
        let guard = UnauthGuard {
            table: self.clone(),
            ip,
            permit,
        };
        // A guard without a permit cleans up on drop and is not handed out.
        guard.permit.is_some().then_some(guard)
    }

    /// Unauthenticated connections open from `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        let m = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&ip).map_or(0, |s| {
            // Slots taken = Arc holders other than the map and this call's view.
            Arc::strong_count(s).saturating_sub(1)
        })
    }
}

impl Drop for UnauthGuard {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Forget an address nobody holds or waits for (bounded memory).
        let mut m = self.table.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&self.ip).is_some_and(|s| Arc::strong_count(s) == 1) {
            m.remove(&self.ip);
        }
    }
}

/// A token bucket over bytes read: `rate` bytes per second, up to
/// `burst_size` at once. Reading waits until the bucket is no longer in
/// debt, so a client above its rate is read more slowly (TCP flow control
/// then slows its sender) and nothing it sent is lost.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket for `shaper`.
    pub fn new(shaper: &Shaper) -> Self {
        let burst = shaper.burst_size.max(1) as f64;
        TokenBucket {
            rate: shaper.rate.max(1) as f64,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// `n` bytes were read.
    pub fn take(&mut self, n: usize) {
        self.take_at(n, Instant::now());
    }

    /// How long to wait before reading again (zero when not in debt).
    pub fn wait(&mut self) -> Duration {
        self.wait_at(Instant::now())
    }

    fn take_at(&mut self, n: usize, now: Instant) {
        self.refill(now);
        self.tokens -= n as f64;
    }

    fn wait_at(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_cap_per_address() {
        let t = Arc::new(Unauthenticated::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let g1 = t.try_acquire(a, 2).expect("first");
        let _g2 = t.try_acquire(a, 2).expect("second");
        assert!(t.try_acquire(a, 2).is_none(), "third refused");
        assert!(t.try_acquire(b, 2).is_some(), "other address unaffected");
        drop(g1);
        assert_eq!(t.count(a), 1);
        assert!(
            t.try_acquire(a, 2).is_some(),
            "room again after one authenticated"
        );
    }

    #[test]
    fn bucket_waits_in_proportion_to_debt() {
        let mut b = TokenBucket::new(&Shaper {
            rate: 1000,
            burst_size: 2000,
        });
        let t0 = b.at;
        b.take_at(2000, t0);
        assert_eq!(b.wait_at(t0), Duration::ZERO, "the burst is free");
        b.take_at(1000, t0);
        assert_eq!(b.wait_at(t0), Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.wait_at(t1), Duration::ZERO);
        let t2 = t1 + Duration::from_secs(10);
        b.take_at(2500, t2);
        let w = b.wait_at(t2);
        assert_eq!(
            w,
            Duration::from_millis(500),
            "refill is capped at the burst"
        );
    }
}
