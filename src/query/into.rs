//! A reduced answer stored as a collection (DESIGN §4b `into`): one scene
//! per period (scene id = the label, time = the period's start) through
//! the normal commit path, so asking again is a duplicate. A collection
//! `into` creates stays hidden until its last period is committed: after a
//! crash it is absent, and running the request again completes it.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::load::LoadAnswer;
use super::reduce::{ReduceAnswer, Reduced};
use super::steps::Outputs;
use super::Piece;
use crate::collection::{self, Band, Collection, DType, GridDoc, Resampling};
use crate::compute::Slot;
use crate::crs;
use crate::error::{Error, Result};
use crate::grid::{GridSpec, TileId};
use crate::storage::{Encoded, Observation, Warehouse};

/// A reduce whose answer goes into a collection; one endpoint, the query.
pub struct IntoAnswer {
    pub warehouse: Arc<Warehouse>,
    pub target: String,
    pub source: Source,
}

/// What is stored: a tile answer's tiles, or a load's windows snapped to
/// the tiles of the output grid.
pub enum Source {
    Tiles(Box<ReduceAnswer>),
    Load { load: Box<LoadAnswer>, grid: GridDoc },
}

impl Source {
    fn outputs(&self) -> &Outputs {
        match self {
            Source::Tiles(a) => &a.out,
            Source::Load { load, .. } => load.outputs(),
        }
    }

    fn grid(&self) -> GridDoc {
        match self {
            Source::Tiles(a) => a.selection.store.meta.grid.clone(),
            Source::Load { grid, .. } => grid.clone(),
        }
    }

    /// Each period and its units (a tile answer's unit, or a load's
    /// window and period), by start.
    fn periods(&self) -> Vec<(Slot, Vec<(usize, usize)>)> {
        let mut periods: Vec<(Slot, Vec<(usize, usize)>)> = Vec::new();
        let mut add = |slot: &Slot, unit: (usize, usize)| match periods.iter_mut().find(|(s, _)| s == slot) {
            Some((_, units)) => units.push(unit),
            None => periods.push((slot.clone(), vec![unit])),
        };
        match self {
            Source::Tiles(a) => a.units.iter().enumerate().for_each(|(i, (_, slot))| add(slot, (i, 0))),
            Source::Load { load, .. } => load.reduced_units().into_iter().for_each(|(w, p)| add(load.period(p), (w, p))),
        }
        periods.sort_by_key(|(s, _)| s.start);
        periods
    }

    /// One unit reduced: its tile and every output band.
    fn reduced(&self, (i, p): (usize, usize)) -> Result<(TileId, Vec<(String, Reduced)>)> {
        match self {
            Source::Tiles(a) => {
                let (tile, slot) = &a.units[i];
                Ok((*tile, a.reduced(*tile, slot)?))
            }
            Source::Load { load, grid } => {
                let spec = GridSpec { crs: grid.crs_wkt.clone(), tile_span: grid.tile_span, resolution: grid.resolution, tile_px: grid.tile_px };
                Ok((load.window_tile(i, &spec), load.reduce_window(i, p)?))
            }
        }
    }
}

/// The grid a load's answer is stored on: the output CRS and resolution,
/// tiles as for a new collection of that resolution (widened to a whole
/// number of pixels).
pub fn output_grid(crs_def: &str, rx: f64, ry: f64) -> Result<GridDoc> {
    if rx != ry {
        return Err(Error::invalid("output.resolution", [rx, ry], "into stores square pixels: give one resolution"));
    }
    let (crs_def, span) = collection::grid_defaults(crs_def, 0.0, rx);
    let px = (span / rx).ceil();
    let span = if (span / rx - (span / rx).round()).abs() < 1e-9 { span } else { px * rx };
    let spec = GridSpec::try_new(crs_def.clone(), span, rx).map_err(|e| Error::invalid("output.resolution", rx, &e.to_string()))?;
    let crs_wkt = crs::to_wkt("output.crs", &crs_def)?;
    Ok(GridDoc { crs: crs_def, crs_wkt, tile_span: spec.tile_span, resolution: rx, tile_px: spec.tile_px, pixel_size: spec.pixel_size() })
}

/// The collection a reduced answer is stored as: its bands (float32, or
/// uint16 counts) on the source's grid or the load's.
fn target_meta(name: &str, source: &Source) -> Collection {
    let out = source.outputs();
    let dtype = out.reduced_dtype().unwrap_or(DType::Float32);
    let resampling = if dtype == DType::Float32 { Resampling::Bilinear } else { Resampling::Nearest };
    Collection {
        name: name.to_string(),
        profile: None,
        bands: out.names.iter().map(|n| Band { name: n.clone(), dtype, nodata: None, scale: None, offset: None, offset_note: None, resampling }).collect(),
        grid: source.grid(),
        qa: None,
        compression: Default::default(),
        compression_level: None,
    }
}

/// Refuses an `into` collection that exists with other bands or another
/// grid than the answer's.
pub fn check_target(warehouse: &Warehouse, name: &str, source: &Source) -> Result<()> {
    let Some((store, _)) = warehouse.any_collection(name) else { return Ok(()) };
    let want = target_meta(name, source);
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
        check_target(&self.warehouse, &self.target, &self.source)?;
        let (store, pending) = match self.warehouse.any_collection(&self.target) {
            Some(found) => found,
            None => (self.warehouse.create_pending_collection(target_meta(&self.target, &self.source))?, true),
        };
        let (mut observations, mut bytes, mut fresh) = (0u64, 0u64, false);
        for (slot, units) in self.source.periods() {
            let Some(mut scene) = store.begin_scene(&slot.label, slot.start, None, false)? else { continue };
            for unit in units {
                let (tile, bands) = self.source.reduced(unit)?;
                let mut encoded = Vec::new();
                for (band, (values, valid)) in bands {
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
