//! `delete`: rows of a scene, a tile or a time range, durably and
//! atomically.

use pixelquery_proto::v1 as pb;
use serde_json::Value;

use super::ActionDoc;
use crate::auth::Role;
use crate::collection;
use crate::error::{Error, Result};
use crate::grid::TileId;
use crate::state::AppState;
use crate::storage::ChunkKey;
use crate::wire::{self, format_time};

pub struct Delete(pb::Delete);

impl Delete {
    pub const DOC: ActionDoc = ActionDoc {
        name: "delete",
        role: Role::Write,
        description: "Delete rows durably and atomically. Body: {\"collection\", \"scene_id\"?, \"tile\"?, \"start\"?, \"end\"?} (at least one filter; given filters combine; end exclusive). A deleted scene can be ingested again. Returns {\"chunks_rewritten\", \"chunks_removed\", \"rows_removed\", \"scenes_removed\"}.",
        takes_write_slot: false,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        let d = wire::decode_delete(body)?;
        collection::validate_collection_name("collection", &d.collection)?;
        Ok(Delete(d))
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        let store = state.warehouse.collection(&self.0.collection)?;
        let filter = Filter::parse(self.0)?;
        if let Some(s) = &filter.scene {
            // On object storage, what other servers committed counts too.
            store.catch_up()?;
            if !store.has_scene(s) {
                return Err(Error::not_found(format!("scene {s:?} in collection {:?}", store.meta.name)));
            }
        }
        let whole = filter.whole_scene();
        let out = if state.warehouse.remote().is_some() {
            store.delete_shared(|k| filter.chunk(k), |_, t, s| filter.row(t, s), whole, filter.predicate())?
        } else {
            let forget: Vec<String> = whole.iter().map(|s| s.to_string()).collect();
            store.delete(|k| filter.chunk(k), |_, t, s| filter.row(t, s), &forget)?
        };
        Ok(serde_json::to_value(out).unwrap_or(Value::Null))
    }
}

/// The rows a delete takes: every given filter holds.
struct Filter {
    scene: Option<String>,
    tile: Option<TileId>,
    start: Option<i64>,
    end: Option<i64>,
}

impl Filter {
    fn parse(d: pb::Delete) -> Result<Self> {
        let tile = super::optional_tile(&d.tile)?;
        let scene = (!d.scene_id.is_empty()).then_some(d.scene_id);
        let (start, end) = (d.start_ms, d.end_ms);
        if tile.is_none() && scene.is_none() && start.is_none() && end.is_none() {
            return Err(Error::invalid("action.body", "no filter", "give scene_id, tile, start or end (to drop a whole collection, delete its time range)"));
        }
        if let (Some(s), Some(e)) = (start, end) {
            if s >= e {
                return Err(Error::invalid("start", format_time(s), &format!("must be before end ({})", format_time(e))));
            }
        }
        Ok(Filter { scene, tile, start, end })
    }

    /// The scene named alone: it goes whole, even without rows.
    fn whole_scene(&self) -> Option<&str> {
        self.scene.as_deref().filter(|_| self.tile.is_none() && self.start.is_none() && self.end.is_none())
    }

    /// Whether chunk `k` may hold rows the delete takes.
    fn chunk(&self, k: &ChunkKey) -> bool {
        self.tile.is_none_or(|t| k.tile == t) && self.start.is_none_or(|s| k.month.end_ms() > s) && self.end.is_none_or(|e| k.month.start_ms() < e)
    }

    /// Whether a row of a chosen chunk, at `time` of scene `scene`, goes.
    fn row(&self, time: i64, scene: &str) -> bool {
        self.start.is_none_or(|s| time >= s) && self.end.is_none_or(|e| time < e) && self.scene.as_deref().is_none_or(|id| id == scene)
    }

    /// The filter as a SQL predicate over the catalog table, for its log.
    fn predicate(&self) -> String {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut parts = Vec::new();
        if let Some(s) = &self.scene {
            parts.push(format!("scene_id = {}", quote(s)));
        }
        if let Some(t) = self.tile {
            parts.push(format!("tile_id = {}", quote(&t.to_string())));
        }
        if let Some(s) = self.start {
            parts.push(format!("acquired_at >= {}", quote(&format_time(s))));
        }
        if let Some(e) = self.end {
            parts.push(format!("acquired_at < {}", quote(&format_time(e))));
        }
        parts.join(" AND ")
    }
}
