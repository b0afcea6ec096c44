//! Per-key ordering: work for one key (an account) runs one at a time, in
//! the order it was queued.
//!
//! One account's state changes one transition at a time (DESIGN.md §6):
//! subscription handling for an account, and messages stored for it while
//! it is offline, are queued under its bare JID, so two requests from both
//! sides of a subscription cannot interleave their read-modify-write of a
//! roster item, and stored messages keep their order. Keys are spread over
//! a fixed number of shards, each drained by one task; a shard's queue is
//! bounded, and a full queue is reported to the caller (who answers
//! `resource-constraint` or waits), never silently dropped.
//!
//! A job may queue more work ([`Serializer::try_run`]) but must never wait
//! for another job ([`Serializer::run`]): it could be queued behind itself.

use futures_util::future::BoxFuture;
use std::sync::OnceLock;
use tokio::sync::{mpsc, oneshot};

/// Number of shards (tasks working in parallel on different keys).
const SHARDS: usize = 16;
/// Queued jobs per shard before callers are told it is full.
const CAPACITY: usize = 4096;

/// A unit of ordered work.
pub type Job = BoxFuture<'static, ()>;

/// Sharded, ordered executor.
#[derive(Default)]
pub struct Serializer {
    shards: OnceLock<Vec<mpsc::Sender<Job>>>,
}

/// The queue of the key's shard is full; the work comes back.
pub struct Busy<T = ()>(pub T);

impl<T> std::fmt::Debug for Busy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Busy")
    }
}

fn shard_of(key: &str) -> usize {
    key.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % SHARDS
}

impl Serializer {
    fn shards(&self) -> &[mpsc::Sender<Job>] {
        self.shards.get_or_init(|| {
            (0..SHARDS)
                .map(|_| {
                    let (tx, mut rx) = mpsc::channel::<Job>(CAPACITY);
                    tokio::spawn(async move {
                        while let Some(job) = rx.recv().await {
                            job.await;
                        }
                    });
                    tx
                })
                .collect()
        })
    }

    /// Queue `fut` after the work already queued for `key`, without waiting.
    /// The caller holds any acknowledgement ticket inside `fut`.
    pub fn try_run(
        &self,
        key: &str,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Busy> {
        self.try_run_boxed(key, Box::pin(fut)).map_err(|_| Busy(()))
    }

    /// [`Serializer::try_run`] that gives the work back when the queue is full.
    pub fn try_run_boxed(&self, key: &str, job: Job) -> Result<(), Busy<Job>> {
        self.shards()[shard_of(key)]
            .try_send(job)
            .map_err(|e| Busy(e.into_inner()))
    }

    /// Queue `fut` after the work already queued for `key`; when that queue
    /// is full, run it at once in a task of its own (out of order, never
    /// dropped), saying so with `what`.
    pub fn run_or_spawn(
        &self,
        key: &str,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
        what: &str,
    ) {
        if let Err(Busy(job)) = self.try_run_boxed(key, Box::pin(fut)) {
            tracing::warn!(account = %key, "ordered queue full; {what} run out of order");
            tokio::spawn(job);
        }
    }

    /// Run `fut` after the work already queued for `key` and wait for its
    /// output (waiting for room in the queue when it is full).
    pub async fn run<T: Send + 'static>(
        &self,
        key: &str,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::pin(async move {
            let _ = tx.send(fut.await);
        });
        self.shards()[shard_of(key)].send(job).await.ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn one_key_runs_in_order_and_one_at_a_time() {
        let s = Serializer::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50u32 {
            let log = log.clone();
            s.try_run("alice@example.org", async move {
                // Yield so that interleaving would show if it were possible.
                tokio::task::yield_now().await;
                log.lock().map(|mut l| l.push(i)).ok();
            })
            .map_err(|_| "busy")
            .expect("queued");
        }
        let done = s.run("alice@example.org", async { 7 }).await;
        assert_eq!(done, Some(7));
        let got = log.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }

    /// A shard holds at most `CAPACITY` queued jobs: one more is refused
    /// (the caller answers `resource-constraint`), and once the queue moves
    /// there is room again; other shards are not affected.
    #[tokio::test]
    async fn a_full_shard_refuses_then_recovers() {
        let s = Serializer::default();
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        // The first job blocks the shard's worker until the gate opens.
        s.try_run("k", async move {
            let _ = gate_rx.await;
        })
        .map_err(|_| "busy")
        .expect("queued");
        // Let the worker take it, so CAPACITY more fill the queue.
        tokio::task::yield_now().await;
        let mut queued = 0;
        while s.try_run("k", async {}).is_ok() {
            queued += 1;
            assert!(queued <= CAPACITY + 1, "the queue never filled");
        }
        assert!(queued >= CAPACITY - 1, "refused after only {queued}");
        // A key on another shard is still served.
        let other = (0..100)
            .map(|i| format!("other{i}"))
            .find(|k| shard_of(k) != shard_of("k"))
            .expect("a key on another shard");
        assert_eq!(s.run(&other, async { 1 }).await, Some(1));
        let _ = gate_tx.send(());
        assert_eq!(s.run("k", async { 2 }).await, Some(2), "room again");
    }
}
