//! `list_collections`: every collection with its bands and counts.

use serde_json::{json, Value};

use super::ActionDoc;
use crate::auth::Role;
use crate::error::Result;
use crate::state::AppState;
use crate::storage::CollectionStore;

pub struct ListCollections;

impl ListCollections {
    pub const DOC: ActionDoc = ActionDoc {
        name: "list_collections",
        role: Role::Read,
        description: "All collections with their bands, tile and scene counts. Body: empty.",
        takes_write_slot: false,
    };

    pub fn parse(_body: &[u8]) -> Result<Self> {
        Ok(ListCollections)
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        Ok(Value::Array(state.warehouse.collections().iter().map(|c| summary(c)).collect()))
    }
}

fn summary(c: &CollectionStore) -> Value {
    json!({
        "name": c.meta.name,
        "profile": c.meta.profile,
        "bands": c.meta.bands.iter().map(|b| b.name.clone()).collect::<Vec<_>>(),
        "resolution": c.meta.grid.resolution,
        "tiles": c.tiles().len(),
        "scenes": c.scene_count(),
    })
}
