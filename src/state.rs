//! The state every request handler shares: the warehouse and the settings
//! that apply to each call. Built once from the validated [`Config`].

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::{Config, Limits};
use crate::error::{Error, Result};
use crate::ingest::IngestOptions;
use crate::storage::Warehouse;

/// Shared state of every handler.
pub struct AppState {
    /// The one warehouse this server serves.
    pub warehouse: Arc<Warehouse>,
    /// Limits applied to every DoPut.
    pub ingest: IngestOptions,
    /// Where `ingest_path` may read files (empty: nowhere).
    pub ingest_roots: Vec<String>,
    /// Credentials; `None`: every caller may do everything.
    pub auth: Option<Arc<Auth>>,
    /// Message, time and concurrency limits of every call.
    pub limits: Limits,
    /// One permit per DoPut (or ingest_path) running.
    pub put_slots: Arc<tokio::sync::Semaphore>,
    /// The servers an endpoint lists as locations (this one first in the
    /// configured order); empty: none listed.
    pub locations: Vec<String>,
}

impl AppState {
    pub fn new(warehouse: Arc<Warehouse>, config: &Config) -> Self {
        Self {
            warehouse,
            ingest: config.ingest.clone(),
            ingest_roots: config.ingest_roots.clone(),
            auth: config.auth.clone(),
            limits: config.limits.clone(),
            put_slots: Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrent_puts)),
            locations: {
                let mut all = config.peers.clone();
                if let Some(me) = &config.advertise {
                    if !all.contains(me) {
                        all.insert(0, me.clone());
                    }
                }
                all
            },
        }
    }

    /// A write slot, or `ResourceExhausted` when all are taken (a client
    /// retries later; the server does not queue without end).
    pub fn put_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.put_slots.clone().try_acquire_owned().map_err(|_| {
            Error::Exhausted(format!(
                "{} writes are already running, the server's limit (--max-concurrent-puts); retry after one finishes",
                self.limits.max_concurrent_puts
            ))
        })
    }
}
