//! A reduced answer stored as a collection (DESIGN §4b `into`): one scene
//! per period (scene id = the label, time = the period's start) through
//! the normal commit path, so asking again is a duplicate. A collection
//! `into` creates stays hidden until its last period is committed: after a
//! crash it is absent, and running the request again completes it.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::reduce::ReduceAnswer;
use super::Piece;
use crate::collection::{Band, Collection, DType, Resampling};
use crate::compute::Slot;
use crate::error::{Error, Result};
use crate::grid::TileId;
use crate::storage::{Encoded, Observation, Warehouse};

/// A reduce whose answer goes into a collection; one endpoint, the query.
pub struct IntoAnswer {
    pub warehouse: Arc<Warehouse>,
    pub target: String,
    pub reduce: ReduceAnswer,
}

/// The collection a reduced answer is stored as: its bands (float32, or
/// uint16 counts) on the source's grid.
fn target_meta(name: &str, answer: &ReduceAnswer) -> Collection {
    let source = &answer.selection.store.meta;
    let dtype = answer.out.reduced_dtype().unwrap_or(DType::Float32);
    let resampling = if dtype == DType::Float32 { Resampling::Bilinear } else { Resampling::Nearest };
    Collection {
        name: name.to_string(),
        profile: None,
        bands: answer
            .out
            .names
            .iter()
            .map(|n| Band { name: n.clone(), dtype, nodata: None, scale: None, offset: None, offset_note: None, resampling })
            .collect(),
        grid: source.grid.clone(),
        qa: None,
    }
}

/// Refuses an `into` collection that exists with other bands or another
/// grid than the answer's.
pub fn check_target(warehouse: &Warehouse, name: &str, answer: &ReduceAnswer) -> Result<()> {
    let Some((store, _)) = warehouse.any_collection(name) else { return Ok(()) };
    let want = target_meta(name, answer);
    let shape = |c: &Collection| c.bands.iter().map(|b| format!("{}:{}", b.name, b.dtype.name())).collect::<Vec<_>>().join(",");
    if shape(&store.meta) != shape(&want) {
        return Err(Error::invalid(
            "into",
            name,
            &format!("collection exists with bands {}; this answer holds {}: choose another name", shape(&store.meta), shape(&want)),
        ));
    }
    if store.meta.grid != want.grid {
        return Err(Error::invalid("into", name, "collection exists on another grid than this answer's: choose another name"));
    }
    Ok(())
}

pub fn into_schema() -> Schema {
    Schema::new(vec![
        Field::new("collection", DataType::Utf8, false),
        Field::new("observations", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("duplicate", DataType::Boolean, false),
    ])
}

impl IntoAnswer {
    pub fn schema(&self) -> Result<SchemaRef> {
        Ok(Arc::new(into_schema()))
    }

    /// Computes and commits every period not stored yet, then answers one
    /// row. Blocking (file IO).
    pub fn write(&self, emit: &mut dyn FnMut(Piece) -> bool) -> Result<()> {
        check_target(&self.warehouse, &self.target, &self.reduce)?;
        let (store, pending) = match self.warehouse.any_collection(&self.target) {
            Some(found) => found,
            None => (self.warehouse.create_pending_collection(target_meta(&self.target, &self.reduce))?, true),
        };
        let mut periods: Vec<(Slot, Vec<TileId>)> = Vec::new();
        for (tile, slot) in &self.reduce.units {
            match periods.iter_mut().find(|(s, _)| s == slot) {
                Some((_, tiles)) => tiles.push(*tile),
                None => periods.push((slot.clone(), vec![*tile])),
            }
        }
        periods.sort_by_key(|(s, _)| s.start);
        let (mut observations, mut bytes, mut fresh) = (0u64, 0u64, false);
        for (slot, tiles) in periods {
            let Some(mut scene) = store.begin_scene(&slot.label, slot.start, None, false)? else { continue };
            for tile in tiles {
                let mut encoded = Vec::new();
                for (band, (values, valid)) in self.reduce.reduced(tile, &slot)? {
                    let obs = Observation { tile, band, pixels: values as ArrayRef, mask: BooleanArray::from(valid) };
                    encoded.push(Encoded::new(&store.meta, &slot.label, slot.start, obs)?);
                }
                scene.append(&encoded)?;
            }
            let outcome = scene.commit()?;
            fresh |= !outcome.duplicate;
            observations += outcome.observations;
            bytes += outcome.bytes;
        }
        if pending {
            self.warehouse.publish(&self.target)?;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.target.as_str()])),
            Arc::new(UInt64Array::from(vec![observations])),
            Arc::new(UInt64Array::from(vec![bytes])),
            Arc::new(BooleanArray::from(vec![!fresh])),
        ];
        let batch = RecordBatch::try_new(self.schema()?, columns).map_err(Error::arrow("building the into answer"))?;
        emit(Piece::Batch(batch));
        Ok(())
    }
}
