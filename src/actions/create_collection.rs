//! `create_collection`: a collection from a profile or explicit bands.

use pixelquery_proto::v1 as pb;
use serde_json::Value;

use super::ActionDoc;
use crate::auth::Role;
use crate::error::Result;
use crate::state::AppState;
use crate::wire;

pub struct CreateCollection(pb::CreateCollection);

impl CreateCollection {
    pub const DOC: ActionDoc = ActionDoc {
        name: "create_collection",
        role: Role::Write,
        description: "Create a collection. Body: {\"name\", \"profile\": \"sentinel2_l2a\"|\"landsat8_l2\"|\"landsat9_l2\"|\"planet_sr\"} or {\"name\", \"bands\": [{\"name\", \"dtype\", \"nodata\", \"resampling\"}], \"grid\": {\"crs\", \"tile_span\", \"resolution\"}, \"resampling\"}; grid.crs and tile_span default to the sinusoidal 2560 m grid. Returns the collection as describe does.",
        takes_write_slot: false,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        Ok(CreateCollection(wire::decode_create_collection(body)?))
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        let meta = wire::build_collection(self.0)?;
        let warnings = crate::collection::grid_warnings(&meta);
        for w in &warnings {
            tracing::warn!(collection = %meta.name, warning = %w, "collection created with small tiles");
        }
        let store = state.warehouse.create_collection(meta)?;
        let mut answer = super::describe::collection(&store);
        if let Value::Object(m) = &mut answer {
            if !warnings.is_empty() {
                m.insert("warnings".into(), warnings.into());
            }
        }
        Ok(answer)
    }
}
