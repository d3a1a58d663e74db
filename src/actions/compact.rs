//! `compact`: chunks of several appended batches rewritten in time order.

use std::collections::HashSet;

use pixelquery_proto::v1 as pb;
use serde_json::{json, Value};

use super::ActionDoc;
use crate::auth::Role;
use crate::collection;
use crate::error::Result;
use crate::grid::TileId;
use crate::state::AppState;
use crate::wire;

pub struct Compact(pb::Compact);

impl Compact {
    pub const DOC: ActionDoc = ActionDoc {
        name: "compact",
        role: Role::Write,
        description: "Rewrite chunks holding several appended batches in time order (dropping the space of deleted rows), without blocking readers or writers; rows do not change. Never automatic: it reads the whole chunk. Body: {\"collection\", \"tiles\"?}. Returns {\"chunks_rewritten\"}.",
        takes_write_slot: false,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        let c = wire::decode_compact(body)?;
        collection::validate_collection_name("collection", &c.collection)?;
        Ok(Compact(c))
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        let store = state.warehouse.collection(&self.0.collection)?;
        let tiles = parse_tiles(&self.0.tiles)?;
        let tiles = if tiles.is_empty() { None } else { Some(&tiles) };
        let out = if state.warehouse.remote().is_some() { store.compact_shared(tiles)? } else { store.compact(tiles)? };
        Ok(json!({"chunks_rewritten": out.chunks_rewritten}))
    }
}

fn parse_tiles(tiles: &[String]) -> Result<HashSet<TileId>> {
    tiles.iter().enumerate().map(|(i, t)| super::parse_tile(&format!("tiles[{i}]"), t)).collect()
}
