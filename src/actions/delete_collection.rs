//! `delete_collection`: a whole collection, its data and its catalog.

use serde_json::{json, Value};

use super::ActionDoc;
use crate::auth::Role;
use crate::collection;
use crate::error::{Error, Result};
use crate::state::AppState;

pub struct DeleteCollection(String);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    name: String,
}

impl DeleteCollection {
    pub const DOC: ActionDoc = ActionDoc {
        name: "delete_collection",
        role: Role::Write,
        description: "Delete a collection with all its scenes, durably. Body: {\"name\"}. Returns {\"deleted\": name}.",
        takes_write_slot: false,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        let b: Body =
            serde_json::from_slice(body).map_err(|e| Error::invalid("action.body", String::from_utf8_lossy(body), &format!("malformed JSON: {e}")))?;
        collection::validate_collection_name("name", &b.name)?;
        Ok(DeleteCollection(b.name))
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        state.warehouse.delete_collection(&self.0)?;
        Ok(json!({"deleted": self.0}))
    }
}
