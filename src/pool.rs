//! A fixed set of named threads running jobs in the order they were sent.
//!
//! Idle threads sleep in a blocking receive. (rayon's pools, used here
//! before, spin through `sched_yield` between jobs: with eight sync threads
//! and two warp threads on a two-core machine, that spinning took about a
//! tenth of the server's CPU in a loop of raw puts, beside the client.)

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

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
