//! `gc`: objects of a warehouse on object storage that no committed entry
//! of the catalog table names (what a crashed or losing writer stored)
//! removed once they are older than a retention time.

use serde_json::{json, Value};

use super::ActionDoc;
use crate::auth::Role;
use crate::collection;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Retention when the body gives none: far longer than any ingest runs.
const DEFAULT_RETENTION_SECS: u64 = 3600;

/// Margin past the request timeout (a put's undo grace, clock skew between
/// server and store).
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Gc {
    collection: String,
    older_than_secs: u64,
}

impl Gc {
    pub const DOC: ActionDoc = ActionDoc {
        name: "gc",
        role: Role::Admin,
        description: "On a warehouse on object storage: remove objects no committed catalog entry names (a crashed or losing writer's) that are older than `older_than_secs` (default 3600; at least the server's request timeout + 10 s, so that no ingest still running loses its objects). Body: {\"collection\"?, \"older_than_secs\"?}. Returns {\"objects_removed\", \"bytes_removed\"}.",
        takes_write_slot: false,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[serde(default)]
            collection: String,
            older_than_secs: Option<u64>,
        }
        let b: Body = if body.iter().all(u8::is_ascii_whitespace) {
            Body { collection: String::new(), older_than_secs: None }
        } else {
            serde_json::from_slice(body).map_err(|e| Error::invalid("action.body", String::from_utf8_lossy(body), &format!("malformed JSON: {e}")))?
        };
        if !b.collection.is_empty() {
            collection::validate_collection_name("collection", &b.collection)?;
        }
        Ok(Gc { collection: b.collection, older_than_secs: b.older_than_secs.unwrap_or(DEFAULT_RETENTION_SECS) })
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        if state.warehouse.remote().is_none() {
            return Err(Error::invalid("action.type", "gc", "the warehouse is a local directory: it removes what no commit refers to at start"));
        }
        // An ingest may store objects for as long as a call may run (and
        // its undo grace): younger objects may belong to one still running.
        let least = state.limits.request_timeout + GRACE;
        if std::time::Duration::from_secs(self.older_than_secs) < least {
            return Err(Error::invalid(
                "older_than_secs",
                self.older_than_secs,
                &format!(
                    "must be at least {} s, the server's request timeout and grace: younger objects may belong to an ingest still running",
                    least.as_secs()
                ),
            ));
        }
        let stores = if self.collection.is_empty() { state.warehouse.collections() } else { vec![state.warehouse.collection(&self.collection)?] };
        let (mut objects, mut bytes) = (0, 0);
        for store in stores {
            let (n, b) = store.gc(std::time::Duration::from_secs(self.older_than_secs))?;
            objects += n;
            bytes += b;
        }
        Ok(json!({"objects_removed": objects, "bytes_removed": bytes}))
    }
}
