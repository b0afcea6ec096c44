//! When is an inbound stanza *handled*? For XEP-0198 acknowledgements the
//! answer must include work the router defers to other tasks: storing an
//! offline message, an IQ handler writing to the database, a host message
//! hook. A session with stream management numbers its inbound stanzas and
//! handles each inside [`scope`]; every place that defers work takes a
//! [`Ticket`] with [`current`] and keeps it until the work is done (for
//! storage: committed). The session acknowledges stanza `n` only when no
//! ticket for `n` or an earlier stanza is left ([`AckTracker::handled`]).
//!
//! Every session numbers its stanzas this way; besides acknowledgements the
//! count of stanzas with work in flight gives back-pressure (a client with
//! too much outstanding work is not read from until some of it is done).
//! Delivery to online sessions defers nothing and takes no ticket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Outstanding deferred work of one session, by inbound stanza number.
#[derive(Default)]
pub struct AckTracker {
    pending: Mutex<BTreeMap<u64, u32>>,
    changed: Notify,
}

impl AckTracker {
    /// A new tracker.
    pub fn new() -> Arc<Self> {
        Arc::new(AckTracker::default())
    }

    /// The highest `n <= received` such that stanzas `1..=n` are fully handled.
    pub fn handled(&self, received: u64) -> u64 {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.keys().next() {
            Some(&first) => received.min(first.saturating_sub(1)),
            None => received,
        }
    }

    /// Number of stanzas with work still in flight.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Resolves when a ticket was dropped since the last call (a permit is
    /// kept, so no wake-up is lost between [`handled`](Self::handled) and this).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn add(&self, seq: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending.entry(seq).or_insert(0) += 1;
    }

    fn remove(&self, seq: u64) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = pending.get_mut(&seq) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(&seq);
                }
            }
        }
        self.changed.notify_one();
    }
}

/// Deferred work for inbound stanza `seq`; the stanza counts as handled once
/// every ticket for it is dropped.
pub struct Ticket {
    tracker: Arc<AckTracker>,
    seq: u64,
}

impl Ticket {
    /// A ticket for stanza `seq` of `tracker`.
    pub fn new(tracker: &Arc<AckTracker>, seq: u64) -> Ticket {
        tracker.add(seq);
        Ticket {
            tracker: tracker.clone(),
            seq,
        }
    }
}

impl Clone for Ticket {
    fn clone(&self) -> Self {
        Ticket::new(&self.tracker, self.seq)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.tracker.remove(self.seq);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.seq)
    }
}

tokio::task_local! {
    static CURRENT: (Arc<AckTracker>, u64);
}

/// Run `fut` (the handling of inbound stanza `seq`) so that work it defers
/// takes tickets on `tracker`. A plain function, not an `async fn`: an async
/// wrapper would store `fut` twice in the session task's future.
pub fn scope<F: std::future::Future>(
    tracker: Arc<AckTracker>,
    seq: u64,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    CURRENT.scope((tracker, seq), fut)
}

/// Run `fut` holding `ticket` (if any), so that work it defers in turn
/// takes tickets for the same stanza ([`current`] works inside it).
pub async fn with_ticket<F: std::future::Future>(ticket: Option<Ticket>, fut: F) -> F::Output {
    match ticket {
        Some(t) => {
            let scope_of = (t.tracker.clone(), t.seq);
            let out = CURRENT.scope(scope_of, fut).await;
            drop(t);
            out
        }
        None => fut.await,
    }
}

/// A ticket for the stanza being handled by the current task, if its session
/// tracks acknowledgements. Call it where work is handed to another task and
/// move the ticket along with that work.
pub fn current() -> Option<Ticket> {
    CURRENT
        .try_with(|(tracker, seq)| Ticket::new(tracker, *seq))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handled_waits_for_the_oldest_ticket() {
        let t = AckTracker::new();
        assert_eq!(t.handled(3), 3);
        let a = scope(t.clone(), 4, async { current() }).await;
        let b = scope(t.clone(), 6, async { current() }).await;
        let b2 = b.clone();
        assert_eq!(t.handled(7), 3);
        drop(a);
        assert_eq!(t.handled(7), 5);
        drop(b);
        assert_eq!(t.handled(7), 5, "a clone still holds stanza 6");
        drop(b2);
        assert_eq!(t.handled(7), 7);
        // Each drop left a permit: no wake-up is lost.
        tokio::time::timeout(std::time::Duration::from_secs(1), t.changed())
            .await
            .expect("notified");
    }

    #[tokio::test]
    async fn no_scope_no_ticket() {
        assert!(current().is_none());
        let t = AckTracker::new();
        // Spawned tasks do not inherit the scope: tickets must be moved.
        let inner = scope(t.clone(), 1, async {
            tokio::spawn(async { current().is_none() })
                .await
                .unwrap_or(false)
        })
        .await;
        assert!(inner);
        assert_eq!(t.handled(1), 1);
    }
}
