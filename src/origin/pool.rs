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
use prometheus::{IntCounter, IntGauge};

type Job = Box<dyn FnOnce() + Send>;

/// A bounded pool of resize threads.
pub struct ResizePool {
    workers: usize,
    queue: usize,
    slots: Arc<Semaphore>,
    retry_after: Duration,
    tx: OnceLock<Sender<Job>>,
    kind: PoolKind,
}

/// Which pool: its threads' names, CPU priority and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Decode, resize and encode of every miss.
    Resize,
    /// AVIF encodes only, at a lower CPU priority (nice 10): seconds of AV1 work per large
    /// image must not delay the misses the resize pool serves.
    Avif,
}

impl PoolKind {
    fn gauges(self) -> (&'static IntGauge, &'static IntGauge, &'static IntCounter) {
        let m = metrics();
        match self {
            PoolKind::Resize => (&m.pool_busy, &m.pool_queued, &m.pool_rejected),
            PoolKind::Avif => (&m.avif_busy, &m.avif_queued, &m.avif_rejected),
        }
    }
}

/// Proof that a miss was admitted; hold it until the answer is built.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ResizePool {
    /// A pool of `workers` threads admitting `workers + queue` misses at a time.
    pub fn new(workers: usize, queue: usize, retry_after: Duration) -> Self {
        Self::of_kind(PoolKind::Resize, workers, queue, retry_after)
    }

    /// [`Self::new`] for a given kind of work.
    pub fn of_kind(kind: PoolKind, workers: usize, queue: usize, retry_after: Duration) -> Self {
        let workers = workers.max(1);
        ResizePool {
            workers,
            queue,
            slots: Arc::new(Semaphore::new(workers + queue)),
            retry_after,
            tx: OnceLock::new(),
            kind,
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
                self.kind.gauges().2.inc();
                Err(Error::Busy {
                    retry_after: self.retry_after,
                })
            }
        }
    }

    fn sender(&self) -> &Sender<Job> {
        self.tx.get_or_init(|| {
            let (tx, rx) = bounded::<Job>(self.workers + self.queue);
            let (name, nice) = match self.kind {
                PoolKind::Resize => ("resize", 0),
                PoolKind::Avif => ("avif", 10),
            };
            for i in 0..self.workers {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("imgedge-{name}-{i}"))
                    .spawn(move || {
                        if nice != 0 {
                            lower_priority(nice);
                        }
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
        let (busy, queued, _) = self.kind.gauges();
        queued.inc();
        let job: Job = Box::new(move || {
            queued.dec();
            busy.inc();
            let out = catch_unwind(AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(Error::unprocessable("decoder failed on this image")));
            busy.dec();
            let _ = done.send(out);
        });
        match self.sender().try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                queued.dec();
                return Err(Error::Busy {
                    retry_after: self.retry_after,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                queued.dec();
                return Err(Error::Internal("resize pool is down".into()));
            }
        }
        result
            .await
            .map_err(|_| Error::Internal("resize job vanished".into()))?
    }
}

/// Lower the calling thread's CPU priority (Linux: a thread is a schedulable task, so
/// `setpriority` on its id affects it alone). Best effort: a failure only logs.
fn lower_priority(nice: i32) {
    // SAFETY: plain syscalls on the calling thread's own id.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if r != 0 {
        tracing::warn!(
            "cannot lower the AVIF threads' priority: {}",
            std::io::Error::last_os_error()
        );
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
