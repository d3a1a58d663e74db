//! DoAction: one file per action, each with its name, the role it needs,
//! the description `ListActions` gives (its body and result), its parse and
//! its apply. Bodies are JSON objects (or the protobuf messages of
//! `proto/`); results are JSON. A new action is a new file, a variant of
//! [`Action`] and a line in [`ACTIONS`].

mod compact;
mod create_collection;
mod delete;
mod delete_collection;
mod describe;
mod gc;
mod health;
mod ingest_path;
mod list_collections;
mod stac;
mod verify;

use serde_json::Value;

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::state::AppState;

use compact::Compact;
use create_collection::CreateCollection;
use delete::Delete;
use delete_collection::DeleteCollection;
use describe::Describe;
use gc::Gc;
use health::Health;
use ingest_path::IngestPath;
use list_collections::ListCollections;
use stac::Stac;
use verify::Verify;

/// What `ListActions` tells of an action, and the role it needs when auth
/// is on (writes need `write`; making the server read its own files needs
/// `admin`).
#[derive(Debug, Clone, Copy)]
pub struct ActionDoc {
    pub name: &'static str,
    pub role: Role,
    /// What it does, its body and its result.
    pub description: &'static str,
    /// It ingests scenes, so it takes one of the server's write slots
    /// (`--max-concurrent-puts`) as a DoPut does.
    pub takes_write_slot: bool,
}

/// Every action, in the order `ListActions` gives them.
pub const ACTIONS: [ActionDoc; 11] = [
    Health::DOC,
    ListCollections::DOC,
    CreateCollection::DOC,
    Describe::DOC,
    Delete::DOC,
    DeleteCollection::DOC,
    IngestPath::DOC,
    Compact::DOC,
    Verify::DOC,
    Stac::DOC,
    Gc::DOC,
];

/// An action with its parsed body.
pub enum Action {
    Health(Health),
    ListCollections(ListCollections),
    CreateCollection(CreateCollection),
    Describe(Describe),
    Delete(Delete),
    DeleteCollection(DeleteCollection),
    IngestPath(IngestPath),
    Compact(Compact),
    Verify(Verify),
    Stac(Stac),
    Gc(Gc),
}

impl Action {
    /// The action named `name`, if there is one.
    pub fn doc(name: &str) -> Option<&'static ActionDoc> {
        ACTIONS.iter().find(|a| a.name == name)
    }

    /// The role calling `name` needs: an unknown name needs `read` (its
    /// caller then learns that it is unknown).
    pub fn required_role(name: &str) -> Role {
        Self::doc(name).map_or(Role::Read, |a| a.role)
    }

    /// Parses an action's body.
    pub fn parse(name: &str, body: &[u8]) -> Result<Action> {
        Ok(match name {
            "health" => Action::Health(Health::parse(body)?),
            "list_collections" => Action::ListCollections(ListCollections::parse(body)?),
            "create_collection" => Action::CreateCollection(CreateCollection::parse(body)?),
            "describe" => Action::Describe(Describe::parse(body)?),
            "delete" => Action::Delete(Delete::parse(body)?),
            "delete_collection" => Action::DeleteCollection(DeleteCollection::parse(body)?),
            "ingest_path" => Action::IngestPath(IngestPath::parse(body)?),
            "compact" => Action::Compact(Compact::parse(body)?),
            "verify" => Action::Verify(Verify::parse(body)?),
            "stac" => Action::Stac(Stac::parse(body)?),
            "gc" => Action::Gc(Gc::parse(body)?),
            other => {
                let names: Vec<&str> = ACTIONS.iter().map(|a| a.name).collect();
                return Err(Error::invalid("action.type", other, &format!("unknown action; available: {}", names.join(", "))));
            }
        })
    }

    /// Runs the action. Blocking (GDAL for CRS checks, file IO): call it
    /// from a blocking task of the server's runtime (`ingest_path` drives
    /// ingests on it).
    pub fn apply(self, state: &AppState) -> Result<Value> {
        match self {
            Action::Health(a) => a.apply(state),
            Action::ListCollections(a) => a.apply(state),
            Action::CreateCollection(a) => a.apply(state),
            Action::Describe(a) => a.apply(state),
            Action::Delete(a) => a.apply(state),
            Action::DeleteCollection(a) => a.apply(state),
            Action::IngestPath(a) => a.apply(state),
            Action::Compact(a) => a.apply(state),
            Action::Verify(a) => a.apply(state),
            Action::Stac(a) => a.apply(state),
            Action::Gc(a) => a.apply(state),
        }
    }
}

/// A tile id given in field `field` of an action's body.
fn parse_tile(field: &str, tile: &str) -> Result<crate::grid::TileId> {
    tile.parse().map_err(|e: crate::grid::GridError| Error::invalid(field, tile, &e.to_string()))
}

/// An optional tile id (empty: none) given in field `tile`.
fn optional_tile(tile: &str) -> Result<Option<crate::grid::TileId>> {
    (!tile.is_empty()).then(|| parse_tile("tile", tile)).transpose()
}

/// Parses and runs one action (blocking, as [`Action::apply`]).
pub fn run(state: &AppState, name: &str, body: &[u8]) -> Result<Value> {
    Action::parse(name, body)?.apply(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_parses_by_its_own_name() {
        for doc in ACTIONS {
            assert!(Action::doc(doc.name).is_some_and(|d| d.name == doc.name));
            // A parse error, if any, is about the body, never the name.
            if let Err(e) = Action::parse(doc.name, b"{}") {
                assert!(!e.to_string().contains("unknown action"), "{}: {e}", doc.name);
            }
        }
        assert!(Action::parse("nope", b"").err().is_some_and(|e| e.to_string().contains("unknown action")));
        assert_eq!(Action::required_role("ingest_path"), Role::Admin);
        assert_eq!(Action::required_role("nope"), Role::Read);
    }
}
