//! The resize pool: a fixed set of threads that do all CPU work of a miss, and the admission
//! control in front of it.
//!
//! A miss takes a slot ([`ResizePool::admit`]) once its original is fetched (fetches in flight
//! are bounded apart, by `origin.max_fetches`), and keeps it until its answer is ready, so the
//! pool holds at most `workers + queue` originals and counts only work for its threads. With no
//! slot free the answer is 503 with `Retry-After`, rather than an unbounded queue.
//! Threads are spawned on first use, after any daemon fork; a panic inside a job (a decoder
//! bug on a hostile file) is caught and answered as 422, and the thread lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{bounded, Sender, TrySendError};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::metrics::metrics;

type Job = Box<dyn FnOnce() + Send>;

/// A bounded pool of resize threads.
pub struct ResizePool {
    workers: usize,
    queue: usize,
    slots: Arc<Semaphore>,
    retry_after: Duration,
    tx: OnceLock<Sender<Job>>,
}

/// Proof that a miss was admitted; hold it until the answer is built.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ResizePool {
    /// A pool of `workers` threads admitting `workers + queue` misses at a time.
    pub fn new(workers: usize, queue: usize, retry_after: Duration) -> Self {
        let workers = workers.max(1);
        ResizePool {
            workers,
            queue,
            slots: Arc::new(Semaphore::new(workers + queue)),
            retry_after,
            tx: OnceLock::new(),
        }
    }

    /// Number of resize threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Take a slot for one miss, or [`Error::Busy`] when all are taken.
    pub fn admit(&self) -> Result<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Ok(Slot(p)),
            Err(_) => {
                metrics().pool_rejected.inc();
                Err(Error::Busy {
                    retry_after: self.retry_after,
                })
            }
        }
    }

    fn sender(&self) -> &Sender<Job> {
        self.tx.get_or_init(|| {
            let (tx, rx) = bounded::<Job>(self.workers + self.queue);
            for i in 0..self.workers {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("imgedge-resize-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!("cannot spawn resize thread {i}: {e}");
                }
            }
            tx
        })
    }

    /// Run `f` on a pool thread and wait for its result. The caller must hold a [`Slot`].
    pub async fn run<T, F>(&self, _slot: &Slot, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let m = metrics();
        m.pool_queued.inc();
        let job: Job = Box::new(move || {
            let m = metrics();
            m.pool_queued.dec();
            m.pool_busy.inc();
            let out = catch_unwind(AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(Error::unprocessable("decoder failed on this image")));
            m.pool_busy.dec();
            let _ = done.send(out);
        });
        match self.sender().try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                m.pool_queued.dec();
                return Err(Error::Busy {
                    retry_after: self.retry_after,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                m.pool_queued.dec();
                return Err(Error::Internal("resize pool is down".into()));
            }
        }
        result
            .await
            .map_err(|_| Error::Internal("resize job vanished".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_is_bounded_and_panics_are_answers() {
        let pool = ResizePool::new(1, 1, Duration::from_secs(2));
        let a = pool.admit().unwrap();
        let _b = pool.admit().unwrap();
        match pool.admit() {
            Err(Error::Busy { retry_after }) => assert_eq!(retry_after, Duration::from_secs(2)),
            other => panic!("expected Busy, got {:?}", other.err()),
        }
        let r: Result<()> = pool.run(&a, || panic!("hostile file")).await;
        assert_eq!(r.unwrap_err().status(), 422);
        assert_eq!(pool.run(&a, || Ok(7)).await.unwrap(), 7);
        drop(a);
        assert!(pool.admit().is_ok());
    }
}
