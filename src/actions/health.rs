//! `health`: the server's status and its activity counters.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value};

use super::ActionDoc;
use crate::auth::Role;
use crate::error::Result;
use crate::state::AppState;

pub struct Health;

impl Health {
    pub const DOC: ActionDoc = ActionDoc {
        name: "health",
        role: Role::Read,
        description: "Server status: {\"status\": \"ok\", \"version\", \"collections\", \"free_mb\" (free space of the warehouse's file system), \"ingest\": {\"tiles_warped\", \"tiles_warped_while_streaming\", \"tiles_put_aside\", \"early_writers_yielded\"}}. Body: empty.",
        takes_write_slot: false,
    };

    pub fn parse(_body: &[u8]) -> Result<Self> {
        Ok(Health)
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        let warehouse = &state.warehouse;
        let c = &warehouse.counters;
        Ok(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "collections": warehouse.collections().len(),
            "free_mb": warehouse.free_bytes().map(|b| b >> 20),
            "ingest": {
                "tiles_warped": c.tiles_warped.load(Relaxed),
                "tiles_warped_while_streaming": c.tiles_warped_while_streaming.load(Relaxed),
                "tiles_put_aside": c.tiles_put_aside.load(Relaxed),
                "early_writers_yielded": c.early_writers_yielded.load(Relaxed),
            },
        }))
    }
}
