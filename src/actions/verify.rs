//! `verify`: every stored byte of a collection (or of all) checked against
//! its checksum, reporting the damaged observations.

use pixelquery_proto::v1 as pb;
use serde_json::{json, Value};

use super::ActionDoc;
use crate::auth::Role;
use crate::collection;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::wire::{self, format_time};

pub struct Verify(pb::Describe);

impl Verify {
    pub const DOC: ActionDoc = ActionDoc {
        name: "verify",
        role: Role::Write,
        description: "Read every stored observation of a collection (or of all, or of one tile) and check it against its checksum. Body: {\"collection\"?, \"tile\"?}. Returns {\"observations\", \"bytes\", \"damaged\": [{\"collection\", \"tile\", \"band\", \"month\", \"time\", \"scene_id\"}]}; a damaged observation reads as DataLoss until it is deleted.",
        takes_write_slot: false,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[serde(default)]
            collection: String,
            #[serde(default)]
            tile: String,
        }
        let d = match body.iter().find(|b| !b.is_ascii_whitespace()) {
            None => pb::Describe::default(),
            Some(b'{') => {
                let b: Body =
                    serde_json::from_slice(body).map_err(|e| Error::invalid("action.body", String::from_utf8_lossy(body), &format!("malformed JSON: {e}")))?;
                pb::Describe { collection: b.collection, tile: b.tile }
            }
            Some(_) => wire::decode_describe(body)?,
        };
        if !d.collection.is_empty() {
            collection::validate_collection_name("collection", &d.collection)?;
        }
        if !d.tile.is_empty() && d.collection.is_empty() {
            return Err(Error::invalid("tile", &d.tile, "give the collection the tile belongs to"));
        }
        Ok(Verify(d))
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        let stores = if self.0.collection.is_empty() { state.warehouse.collections() } else { vec![state.warehouse.collection(&self.0.collection)?] };
        let tile = super::optional_tile(&self.0.tile)?;
        let (mut observations, mut bytes, mut damaged) = (0usize, 0u64, Vec::new());
        for store in stores {
            for (key, entry) in store.chunks(|k| tile.is_none_or(|t| k.tile == t)) {
                observations += entry.times.len();
                bytes += entry.len;
                for (first, rows) in entry.scrub()? {
                    damaged.extend((first..first + rows).map(|i| {
                        json!({
                            "collection": store.meta.name,
                            "tile": key.tile.to_string(),
                            "band": key.band,
                            "month": key.month.to_string(),
                            "time": entry.times.get(i).copied().map(format_time),
                            "scene_id": entry.scenes.get(i).map(|s| s.to_string()),
                        })
                    }));
                }
            }
        }
        if !damaged.is_empty() {
            tracing::warn!(damaged = damaged.len(), "verify found observations failing their checksum");
        }
        Ok(json!({"observations": observations, "bytes": bytes, "damaged": damaged}))
    }
}
