//! A fixed set of named threads running jobs in the order they were sent.
//!
//! Idle threads sleep in a blocking receive. (rayon's pools, used here
//! before, spin through `sched_yield` between jobs: with eight sync threads
//! and two warp threads on a two-core machine, that spinning took about a
//! tenth of the server's CPU in a loop of raw puts, beside the client.)

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Sets glibc malloc for the server's threads (once, before any thread
/// starts), unless `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` say otherwise:
/// - arenas: one per core, not eight per core;
/// - the top of a heap goes back to the system only past 64 MiB free, and
///   only blocks of 32 MiB and more are mapped on their own. A warp frees
///   and takes back large buffers for every tile and band, an ingest one
///   per band and scene; with glibc's sliding defaults many were returned
///   to the system and faulted in again (`docs/performance.md`).
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        const M_ARENA_MAX: std::ffi::c_int = -8;
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        let set = |param, value: usize| {
            // SAFETY: mallopt only sets a glibc malloc parameter.
            unsafe { mallopt(param, value as std::ffi::c_int) };
        };
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tunables.contains("arena_max") {
            set(M_ARENA_MAX, std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 64));
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() && !tunables.contains("trim_threshold") {
            set(M_TRIM_THRESHOLD, 64 << 20);
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() && !tunables.contains("mmap_threshold") {
            set(M_MMAP_THRESHOLD, 32 << 20);
        }
    }
}

pub struct Pool {
    tx: Sender<Job>,
}

impl Pool {
    /// Starts `threads` threads (at least one) named `{name}-{i}`. Fails
    /// only if no thread could be started.
    pub fn try_new(name: &str, threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let started = std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(&rx));
            if let Err(e) = started {
                if i == 0 {
                    return Err(e);
                }
                break;
            }
        }
        Ok(Self { tx })
    }

    /// Queues `job`. A job that panics is caught there (and its thread goes
    /// on); jobs report their own outcome, e.g. through a channel.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        // The receiving threads live as long as the pool (the server's
        // pools are statics), so the send cannot fail.
        let _ = self.tx.send(Box::new(job));
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        // One idle thread waits in `recv` holding the lock, the others on
        // the lock; the lock is let go before the job runs.
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_job_on_its_threads_and_survives_a_panic() {
        let pool = Pool::try_new("test-pool", 3).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.spawn(|| panic!("a job panics"));
        for i in 0..100 {
            let tx = tx.clone();
            pool.spawn(move || tx.send((i, std::thread::current().name().unwrap_or("").to_string())).unwrap());
        }
        drop(tx);
        let mut got: Vec<(i32, String)> = rx.iter().collect();
        got.sort();
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
        assert!(got.iter().all(|(_, n)| n.starts_with("test-pool-")), "{got:?}");
    }

    #[test]
    fn jobs_start_in_the_order_sent_on_one_thread() {
        let pool = Pool::try_new("test-order", 1).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..50 {
            let tx = tx.clone();
            pool.spawn(move || tx.send(i).unwrap());
        }
        drop(tx);
        assert_eq!(rx.iter().collect::<Vec<_>>(), (0..50).collect::<Vec<_>>());
    }
}
