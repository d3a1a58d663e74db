//! Answers with `mask`, `scale` or `compute` (DESIGN §4b): what an answer
//! holds ([`Outputs`]), the per-observation phases the tile, point and load
//! answers share, and the tile answer itself ([`StepsAnswer`]): one
//! endpoint per tile and month, every output band of an observation
//! computed from the stored bands it reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, BooleanArray, Float32Array, PrimitiveArray};
use arrow_buffer::ScalarBuffer;
use arrow_schema::SchemaRef;

use super::{emit_rows, Piece, Selection};
use crate::collection::{Band, Collection, DType};
use crate::compute::{self, eval, Steps};
use crate::error::{Error, Result};
use crate::grid::TileId;
use crate::storage::{chunk, ChunkEntry, ChunkKey, CollectionStore, Month};
use crate::warp::Sample;
use crate::wire::{self, Area, QuerySpec};

/// What an answer holds: its band names (stored or computed, in order),
/// the stored bands they read, and the steps.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub names: Vec<String>,
    pub inputs: Vec<Band>,
    pub steps: Steps,
}

impl Outputs {
    /// The answer's bands for `spec` against `meta`: the names asked for
    /// (all stored bands when none), each a stored band or a computed one.
    pub fn resolve(meta: &Collection, spec: &QuerySpec) -> Result<Self> {
        let steps = Steps::resolve(meta, &spec.steps)?;
        let names: Vec<String> = if spec.bands.is_empty() { meta.bands.iter().map(|b| b.name.clone()).collect() } else { spec.bands.clone() };
        for (i, n) in names.iter().enumerate() {
            if meta.band(n).is_none() && steps.program(n).is_none() {
                let known: Vec<&str> = meta.bands.iter().map(|b| b.name.as_str()).chain(steps.compute.iter().map(|(n, _)| n.as_str())).collect();
                return Err(Error::invalid(
                    &format!("bands[{i}]"),
                    n,
                    &format!("no such band in collection {:?} (nor computed); it has {}", meta.name, known.join(", ")),
                ));
            }
        }
        let mut work = names.clone();
        if steps.program(compute::QUALITY).is_some() {
            work.push(compute::QUALITY.to_string());
        }
        let inputs = if steps.any() { steps.inputs(meta, &work) } else { names.iter().filter_map(|n| meta.band(n).cloned()).collect() };
        Ok(Outputs { names, inputs, steps })
    }

    /// The names computed per observation: the answer's, then the quality
    /// expression of a `reduce` by quality.
    pub fn work_names(&self) -> Vec<String> {
        let mut w = self.names.clone();
        if self.steps.program(compute::QUALITY).is_some() {
            w.push(compute::QUALITY.to_string());
        }
        w
    }

    /// The answer's pixel type once reduced: uint16 for `count`, else
    /// float32.
    pub fn reduced_dtype(&self) -> Option<DType> {
        self.steps.reduce.as_ref().map(|r| if r.counts() { DType::Uint16 } else { DType::Float32 })
    }

    /// The pixel type of every output: float32 when scaled or computed,
    /// else the stored bands' (one for all).
    pub fn dtype(&self, meta: &Collection) -> Result<DType> {
        if self.steps.floats() {
            return Ok(DType::Float32);
        }
        let bands: Vec<Band> = self.names.iter().filter_map(|n| meta.band(n).cloned()).collect();
        super::common_dtype(&bands)
    }

    fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|b| b.name == name)
    }
}

/// One stored band of one observation: values and validity.
pub struct BandPixels {
    pub values: ArrayRef,
    pub valid: Vec<bool>,
}

/// The pixels the mask leaves valid (`None`: no mask): valid in the mask
/// band and kept by its rule; a missing mask band masks everything.
pub fn mask_keep(out: &Outputs, inputs: &[Option<BandPixels>], n: usize) -> Option<Vec<bool>> {
    let (band, rule) = out.steps.mask.as_ref()?;
    let Some(Some(m)) = out.input_index(&band.name).map(|i| &inputs[i]) else { return Some(vec![false; n]) };
    let keep = keep_bits(&m.values, rule, out.steps.mask_table.as_deref());
    Some(keep.iter().zip(&m.valid).map(|(k, ok)| k && *ok).collect())
}

/// The inputs with the mask applied: each band invalid where the mask
/// leaves the observation invalid.
pub fn masked(out: &Outputs, inputs: Vec<Option<BandPixels>>, n: usize) -> Vec<Option<BandPixels>> {
    let keep = mask_keep(out, &inputs, n);
    inputs
        .into_iter()
        .map(|b| {
            b.map(|mut b| {
                if let Some(k) = &keep {
                    b.valid.iter_mut().zip(k).for_each(|(v, k)| *v &= *k);
                }
                b
            })
        })
        .collect()
}

/// [`mask_keep`]'s rule over one mask band's values, as bits (`table`:
/// the rule's answer for every 16-bit value).
pub fn keep_bits(values: &ArrayRef, rule: &compute::MaskRule, table: Option<&Vec<bool>>) -> arrow_buffer::BooleanBuffer {
    let n = values.len();
    match (DType::from_arrow(values.data_type()), table) {
        (Some(DType::Uint8), Some(t)) => {
            let v = values.as_primitive::<arrow_array::types::UInt8Type>().values();
            arrow_buffer::BooleanBuffer::collect_bool(n, |i| t[v[i] as usize])
        }
        (Some(DType::Uint16), Some(t)) => {
            let v = values.as_primitive::<arrow_array::types::UInt16Type>().values();
            arrow_buffer::BooleanBuffer::collect_bool(n, |i| t[v[i] as usize])
        }
        (Some(d), _) => crate::with_arrow_type!(d, T => {
            let v = values.as_primitive::<T>().values();
            arrow_buffer::BooleanBuffer::collect_bool(n, |i| rule.keeps(v[i].to_f64()))
        }),
        (None, _) => arrow_buffer::BooleanBuffer::new_unset(n),
    }
}

/// Value `i` of an array of any pixel type as f64.
pub fn value_f64(a: &ArrayRef, i: usize) -> f64 {
    match DType::from_arrow(a.data_type()) {
        Some(d) => crate::with_arrow_type!(d, T => a.as_primitive::<T>().value(i).to_f64()),
        None => f64::NAN,
    }
}

/// The values of any pixel type as f64.
pub fn as_f64(a: &ArrayRef) -> Vec<f64> {
    match DType::from_arrow(a.data_type()) {
        Some(d) => crate::with_arrow_type!(d, T => a.as_primitive::<T>().values().iter().map(|v| v.to_f64()).collect()),
        None => vec![f64::NAN; a.len()],
    }
}

/// The factor and offset turning stored values of `band` into the
/// answer's: `(scale, offset)` of the scene's baseline when scaling, else
/// `(1, 0)`.
pub fn factors(meta: &Collection, band: &Band, scale: bool, baseline: Option<&str>, time_ms: i64) -> (f64, f64) {
    if scale {
        (band.scale.unwrap_or(1.0), compute::offset_for(meta, band, baseline, time_ms))
    } else {
        (1.0, 0.0)
    }
}

/// Values as float32: `value * scale + offset` when scaling (the offset of
/// the scene's baseline), else as they are.
pub fn to_f32(meta: &Collection, band: &Band, values: &ArrayRef, scale: bool, baseline: Option<&str>, time_ms: i64) -> Vec<f32> {
    let (k, o) = factors(meta, band, scale, baseline, time_ms);
    match DType::from_arrow(values.data_type()) {
        Some(d) => crate::with_arrow_type!(d, T => scaled::<T>(values, k, o)),
        None => vec![f32::NAN; values.len()],
    }
}

fn scaled<T: ArrowPrimitiveType>(values: &ArrayRef, k: f64, o: f64) -> Vec<f32>
where
    T::Native: Sample,
{
    scale_values(values.as_primitive::<T>().values(), k, o)
}

/// `value * k + o` of each value, as float32 (in f64, then rounded).
pub fn scale_values<V: Sample>(v: &[V], k: f64, o: f64) -> Vec<f32> {
    if k == 1.0 && o == 0.0 {
        return v.iter().map(|x| x.to_f32()).collect();
    }
    v.iter().map(|x| (x.to_f64() * k + o) as f32).collect()
}

/// Evaluates the expression named `name` over float32 inputs (indexed as
/// `out.inputs`): values and validity.
pub fn computed(out: &Outputs, name: &str, floats: &[Option<(Vec<f32>, Vec<bool>)>], n: usize) -> (Vec<f32>, Vec<bool>) {
    let Some(program) = out.steps.program(name) else { return (vec![f32::NAN; n], vec![false; n]) };
    let mut valid = vec![true; n];
    let mut inputs: Vec<&[f32]> = Vec::with_capacity(program.bands.len());
    let missing = vec![0.0f32; n];
    for b in &program.bands {
        match out.input_index(b).and_then(|i| floats[i].as_ref()) {
            Some((v, ok)) => {
                inputs.push(v);
                valid.iter_mut().zip(ok).for_each(|(a, b)| *a &= *b);
            }
            None => {
                inputs.push(&missing);
                valid.fill(false);
            }
        }
    }
    let values = eval::evaluate(&program.expr, &inputs, n, 1);
    let valid = eval::valid_result(&values, &valid);
    (values, valid)
}

/// One observation's outputs from its stored bands (`inputs` indexed as
/// `out.inputs`, `None` where the observation lacks a band): mask, then
/// scale, then compute. Each output: values and validity.
pub fn observation(
    out: &Outputs,
    meta: &Collection,
    inputs: Vec<Option<BandPixels>>,
    n: usize,
    baseline: Option<&str>,
    time_ms: i64,
) -> Vec<(ArrayRef, Vec<bool>)> {
    let masked = masked(out, inputs, n);
    let floats: Vec<Option<(Vec<f32>, Vec<bool>)>> = if out.steps.floats() {
        masked
            .iter()
            .zip(&out.inputs)
            .map(|(b, band)| {
                // The mask band only masks unless the answer names or computes with it.
                let used = out.names.contains(&band.name) || out.steps.compute.iter().any(|(_, p)| p.bands.contains(&band.name));
                b.as_ref().filter(|_| used).map(|b| (to_f32(meta, band, &b.values, out.steps.scale, baseline, time_ms), b.valid.clone()))
            })
            .collect()
    } else {
        Vec::new()
    };
    out.work_names()
        .iter()
        .map(|name| {
            if out.steps.program(name).is_some() {
                let (v, ok) = computed(out, name, &floats, n);
                return (Arc::new(Float32Array::from(v)) as ArrayRef, ok);
            }
            let i = out.input_index(name).unwrap_or(0);
            match (&masked[i], out.steps.floats()) {
                (Some(_), true) => {
                    let (v, ok) = floats[i].clone().unwrap_or_default();
                    (Arc::new(Float32Array::from(v)) as ArrayRef, ok)
                }
                (Some(b), false) => (b.values.clone(), b.valid.clone()),
                (None, _) => (arrow_array::new_null_array(&DType::Float32.arrow(), n), vec![false; n]),
            }
        })
        .collect()
}

/// Masked-out and invalid pixels set to `fill` so that no value leaks.
pub fn blanked(values: ArrayRef, valid: &[bool], fill: f64) -> ArrayRef {
    match DType::from_arrow(values.data_type()) {
        Some(d) => crate::with_arrow_type!(d, T => blank::<T>(&values, valid, fill)),
        None => values,
    }
}

fn blank<T: ArrowPrimitiveType>(values: &ArrayRef, valid: &[bool], fill: f64) -> ArrayRef
where
    T::Native: Sample,
{
    let f = T::Native::from_f64(fill);
    let v: Vec<T::Native> = values.as_primitive::<T>().values().iter().zip(valid).map(|(v, ok)| if *ok { *v } else { f }).collect();
    Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(v), None))
}

/// Tile answers with steps: one endpoint per tile and month.
pub struct StepsAnswer {
    pub selection: Selection,
    pub out: Arc<Outputs>,
}

impl StepsAnswer {
    pub fn schema(&self) -> Result<SchemaRef> {
        let s = &self.selection;
        let g = &s.store.meta.grid;
        let meta = HashMap::from([
            ("collection".to_string(), s.store.meta.name.clone()),
            ("crs".to_string(), g.crs_wkt.clone()),
            ("tile_span".to_string(), g.tile_span.to_string()),
            ("tile_px".to_string(), g.tile_px.to_string()),
            ("pixel_size".to_string(), g.pixel_size.to_string()),
        ]);
        Ok(Arc::new(chunk::schema(self.out.dtype(&s.store.meta)?, meta)))
    }

    /// The selection's chunks by tile and month.
    fn units(&self) -> BTreeMap<(TileId, Month), Vec<&(ChunkKey, ChunkEntry)>> {
        let mut u: BTreeMap<(TileId, Month), Vec<&(ChunkKey, ChunkEntry)>> = BTreeMap::new();
        for c in &self.selection.chunks {
            u.entry((c.0.tile, c.0.month)).or_default().push(c);
        }
        u
    }

    /// Observations of a unit in the time range, in order.
    fn observations(&self, chunks: &[&(ChunkKey, ChunkEntry)]) -> Vec<(i64, Arc<str>)> {
        let mut obs: Vec<(i64, Arc<str>)> = chunks
            .iter()
            .flat_map(|(_, e)| e.times.iter().zip(&e.scenes).filter(|(t, _)| self.selection.spec.time_matches(**t)).map(|(t, s)| (*t, s.clone())))
            .collect();
        obs.sort();
        obs.dedup();
        obs
    }

    pub fn total_records(&self) -> u64 {
        self.units().values().map(|c| self.observations(c).len() as u64).sum::<u64>() * self.out.names.len() as u64
    }

    pub fn total_bytes(&self) -> u64 {
        let n = self.selection.store.meta.grid.tile_px as u64;
        let size = self.out.dtype(&self.selection.store.meta).map_or(4, |d| d.size()) as u64;
        self.total_records() * n * n * (size + 1)
    }

    /// One ticket per tile and month: the query narrowed to them.
    pub fn tickets(&self) -> Vec<Vec<u8>> {
        let spec = &self.selection.spec;
        self.units()
            .keys()
            .map(|(tile, month)| {
                let mut one = spec.clone();
                one.area = Area::Tiles(vec![*tile]);
                one.start_ms = Some(spec.start_ms.map_or(month.start_ms(), |s| s.max(month.start_ms())));
                one.end_ms = Some(spec.end_ms.map_or(month.end_ms(), |e| e.min(month.end_ms())));
                one.bands = self.out.names.clone();
                wire::query_message_json(&one.to_message())
            })
            .collect()
    }

    /// Per tile and month: each band's rows read once, then every
    /// observation's outputs as one batch. Blocking (file IO).
    pub fn write(&self, emit: &mut dyn FnMut(Piece) -> bool) -> Result<()> {
        let schema = self.schema()?;
        let s = &self.selection;
        let meta = &s.store.meta;
        let n = (meta.grid.tile_px as usize).pow(2);
        for ((tile, _), chunks) in self.units() {
            let mut by_band: Vec<HashMap<(i64, Arc<str>), BandPixels>> = (0..self.out.inputs.len()).map(|_| HashMap::new()).collect();
            for (k, e) in &chunks {
                let Some(b) = self.out.input_index(&k.band) else { continue };
                let Some(batch) = s.read_sorted(e)? else { continue };
                let times = batch.column(2).as_primitive::<arrow_array::types::TimestampMillisecondType>();
                let scenes = batch.column(3).as_string::<i32>();
                let pixels = batch.column(4).as_list::<i32>();
                let masks = batch.column(5).as_list::<i32>();
                for r in 0..batch.num_rows() {
                    let valid: Vec<bool> = masks.value(r).as_boolean().iter().map(|v| v.unwrap_or(false)).collect();
                    by_band[b].insert((times.value(r), Arc::from(scenes.value(r))), BandPixels { values: pixels.value(r), valid });
                }
            }
            let tile_id = tile.to_string();
            for (time, scene) in self.observations(&chunks) {
                let inputs: Vec<Option<BandPixels>> = by_band.iter_mut().map(|m| m.remove(&(time, scene.clone()))).collect();
                let baseline = s.store.scene(&scene).and_then(|st| st.baseline);
                let outputs = observation(&self.out, meta, inputs, n, baseline.as_deref(), time);
                let mut rows = Vec::with_capacity(outputs.len());
                for (name, (values, valid)) in self.out.names.iter().zip(outputs) {
                    let fill = meta.band(name).and_then(|b| b.nodata).filter(|_| !self.out.steps.floats()).unwrap_or(if self.out.steps.floats() {
                        f64::NAN
                    } else {
                        0.0
                    });
                    let values = blanked(values, &valid, fill);
                    rows.push(chunk::observation_batch(schema.clone(), &tile_id, name, time, &scene, values, BooleanArray::from(valid))?);
                }
                let batch = arrow_select::concat::concat_batches(&schema, &rows).map_err(Error::arrow("joining an observation's outputs"))?;
                if !emit_rows(&batch, chunk::rows_per_message(&batch), emit) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The processing baseline recorded for `scene`.
pub fn store_baseline(store: &CollectionStore, scene: &str) -> Option<String> {
    store.scene(scene).and_then(|s| s.baseline)
}
