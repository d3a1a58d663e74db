//! Answers with `reduce` (DESIGN §4b): each pixel's valid values of a
//! period reduced to one ([`Layers`]), shared by the tile, point and load
//! answers, and the tile answer itself ([`ReduceAnswer`]): one endpoint per
//! tile and period, computed from the chunks a period at a time, one
//! output band at a time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, BooleanArray, Float32Array, RecordBatch, StringArray, UInt16Array};
use arrow_buffer::BooleanBuffer;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::steps::{self, BandPixels, Outputs};
use super::{emit_rows, Piece, Selection};
use crate::collection::DType;
use crate::compute::reduce::key;
use crate::compute::{self, Period, Reduce, Reducer, Reduction, Slot};
use crate::error::{Error, Result};
use crate::grid::TileId;
use crate::storage::{self, chunk, ChunkEntry, ChunkKey};
use crate::warp::Sample;
use crate::wire::{self, Area};

/// One observation of one output band: values as computed or as stored,
/// the pixels valid, and the factor and offset that scale them.
pub struct Layer {
    pub values: ArrayRef,
    pub valid: BooleanBuffer,
    pub factors: (f64, f64),
}

/// One output band's observations of one period, in time order (`None`
/// where an observation lacks the band).
#[derive(Default)]
pub struct Layers(pub Vec<Option<Layer>>);

/// Pixels gathered per block when reducing: the values of a block for
/// every observation fit in cache.
const BLOCK: usize = 256;

impl Layers {
    /// Each pixel's valid values reduced (`count`: how many; valid
    /// everywhere).
    pub fn reduce(&self, r: Reducer, n: usize) -> (Vec<f32>, Vec<bool>) {
        let Some(dtype) = self.dtype() else {
            return (vec![if r == Reducer::Count { 0.0 } else { f32::NAN }; n], vec![r == Reducer::Count; n]);
        };
        crate::with_arrow_type!(dtype, T => self.reduce_typed::<T>(r, n))
    }

    fn dtype(&self) -> Option<DType> {
        self.0.iter().flatten().find_map(|l| DType::from_arrow(l.values.data_type()))
    }

    fn reduce_typed<T: ArrowPrimitiveType>(&self, r: Reducer, n: usize) -> (Vec<f32>, Vec<bool>)
    where
        T::Native: Sample,
    {
        type Column<'a, V> = (&'a [V], &'a BooleanBuffer, (f64, f64));
        let cols: Vec<Column<'_, T::Native>> = self
            .0
            .iter()
            .flatten()
            .filter(|l| l.values.len() >= n && l.valid.len() >= n)
            .filter_map(|l| l.values.as_primitive_opt::<T>().map(|a| (&a.values()[..], &l.valid, l.factors)))
            .collect();
        let m = cols.len().max(1);
        let mut scratch = vec![0i32; BLOCK * m];
        let mut count = [0usize; BLOCK];
        let (mut out, mut valid) = (vec![f32::NAN; n], vec![false; n]);
        for first in (0..n).step_by(BLOCK) {
            let len = BLOCK.min(n - first);
            count[..len].fill(0);
            for (values, bits, (k, o)) in &cols {
                let plain = *k == 1.0 && *o == 0.0;
                for j in 0..len {
                    let px = first + j;
                    if bits.value(px) {
                        // As `steps::scale_values` scales: f64, then rounded.
                        scratch[j * m + count[j]] = key(if plain { values[px].to_f32() } else { (values[px].to_f64() * k + o) as f32 });
                        count[j] += 1;
                    }
                }
            }
            for j in 0..len {
                if let Some(v) = r.apply(&mut scratch[j * m..j * m + count[j]]) {
                    (out[first + j], valid[first + j]) = (v, true);
                }
            }
        }
        (out, valid)
    }

    /// Per pixel, the index of the observation whose value is highest
    /// (ties: the latest); these layers are quality values (float32).
    pub fn winners(&self, n: usize) -> Vec<Option<u32>> {
        let mut best: Vec<Option<(u32, f32)>> = vec![None; n];
        for (i, layer) in self.0.iter().enumerate() {
            let Some(l) = layer else { continue };
            let Some(q) = l.values.as_primitive_opt::<arrow_array::types::Float32Type>() else { continue };
            for (px, b) in best.iter_mut().enumerate().take(q.len().min(l.valid.len())) {
                let v = q.value(px);
                if l.valid.value(px) && b.is_none_or(|(_, w)| v >= w) {
                    *b = Some((i as u32, v));
                }
            }
        }
        best.into_iter().map(|b| b.map(|(i, _)| i)).collect()
    }

    /// Each pixel's value at the observation `at` picks, scaled.
    pub fn pick(&self, at: &[Option<u32>]) -> (Vec<f32>, Vec<bool>) {
        let n = at.len();
        let (mut out, mut valid) = (vec![f32::NAN; n], vec![false; n]);
        for (px, i) in at.iter().enumerate() {
            let Some(Some(l)) = i.and_then(|i| self.0.get(i as usize)) else { continue };
            if px < l.valid.len() && px < l.values.len() && l.valid.value(px) {
                let v = steps::value_f64(&l.values, px);
                out[px] = if l.factors == (1.0, 0.0) { v as f32 } else { (v * l.factors.0 + l.factors.1) as f32 };
                valid[px] = true;
            }
        }
        (out, valid)
    }
}

/// Every output band reduced over its layers (`quality`: the layers of
/// [`compute::QUALITY`], last in `layers`): values as the answer's pixel
/// type, and validity.
pub fn reduce_all(reduce: &Reduce, mut layers: Vec<Layers>, n: usize) -> Vec<Reduced> {
    match reduce.how {
        Reduction::Reducer(r) => layers
            .iter()
            .map(|l| {
                let (v, ok) = l.reduce(r, n);
                (as_answer(v, r == Reducer::Count), ok)
            })
            .collect(),
        Reduction::Quality => {
            let q = layers.pop().unwrap_or_default();
            let at = q.winners(n);
            layers
                .iter()
                .map(|l| {
                    let (v, ok) = l.pick(&at);
                    (as_answer(v, false), ok)
                })
                .collect()
        }
    }
}

fn as_answer(v: Vec<f32>, counts: bool) -> ArrayRef {
    if counts {
        Arc::new(UInt16Array::from(v.into_iter().map(|c| c.clamp(0.0, u16::MAX as f32) as u16).collect::<Vec<u16>>()))
    } else {
        Arc::new(Float32Array::from(v))
    }
}

/// The periods observations at `times` fall in (origin: the query's start,
/// else the first observation's date).
pub fn slots(period: Period, start: Option<i64>, times: impl Iterator<Item = i64> + Clone) -> (i64, impl Fn(i64) -> Slot) {
    let first = times.clone().min().unwrap_or(0);
    let origin = Period::origin(start, first);
    (origin, move |t| period.slot(t, origin))
}

/// One observation's outputs as layers (`inputs` indexed as `out.inputs`):
/// mask, then compute; stored bands keep their pixel type and are scaled
/// as they are reduced (the same arithmetic as scaling first).
pub fn observation_layers(
    out: &Outputs,
    meta: &crate::collection::Collection,
    inputs: Vec<Option<BandPixels>>,
    n: usize,
    names: &[String],
    baseline: Option<&str>,
    time_ms: i64,
) -> Vec<Option<Layer>> {
    let masked = steps::masked(out, inputs, n);
    let used: Vec<bool> = out.inputs.iter().map(|b| names.iter().any(|n| out.steps.program(n).is_some_and(|p| p.bands.contains(&b.name)))).collect();
    let floats: Vec<Option<(Vec<f32>, Vec<bool>)>> = masked
        .iter()
        .zip(&out.inputs)
        .zip(&used)
        .map(|((b, band), used)| {
            b.as_ref().filter(|_| *used).map(|b| (steps::to_f32(meta, band, &b.values, out.steps.scale, baseline, time_ms), b.valid.clone()))
        })
        .collect();
    names
        .iter()
        .map(|name| {
            if out.steps.program(name).is_some() {
                let (v, ok) = steps::computed(out, name, &floats, n);
                return Some(Layer { values: Arc::new(Float32Array::from(v)), valid: BooleanBuffer::from(ok), factors: (1.0, 0.0) });
            }
            let i = out.inputs.iter().position(|b| &b.name == name)?;
            let b = masked[i].as_ref()?;
            let factors = steps::factors(meta, &out.inputs[i], out.steps.scale, baseline, time_ms);
            Some(Layer { values: b.values.clone(), valid: BooleanBuffer::from(b.valid.as_slice()), factors })
        })
        .collect()
}

/// A reduced band: values in the answer's pixel type, and validity.
pub type Reduced = (ArrayRef, Vec<bool>);

/// One stored band of one observation: values and validity bits.
type Stored = (ArrayRef, BooleanBuffer);

/// Tile answers with `reduce`: one endpoint per tile and period.
pub struct ReduceAnswer {
    pub selection: Selection,
    pub out: Arc<Outputs>,
    /// The (tile, period) units, in order.
    pub units: Vec<(TileId, Slot)>,
}

impl ReduceAnswer {
    pub fn new(selection: Selection, out: Arc<Outputs>) -> Self {
        let reduce = out.steps.reduce.as_ref().map_or(Period::All, |r| r.period);
        let mut units: Vec<(TileId, Slot)> = {
            let spec = &selection.spec;
            let times = selection.chunks.iter().flat_map(|(_, e)| e.times.iter().copied().filter(|t| spec.time_matches(*t)));
            let (_, slot_of) = slots(reduce, spec.start_ms, times);
            let mut units = BTreeSet::new();
            for (k, e) in &selection.chunks {
                for t in e.times.iter().copied().filter(|t| spec.time_matches(*t)) {
                    units.insert((k.tile, slot_of(t)));
                }
            }
            units.into_iter().collect()
        };
        units.sort_by_key(|(tile, slot)| (*tile, slot.start));
        ReduceAnswer { selection, out, units }
    }

    fn dtype(&self) -> DType {
        self.out.reduced_dtype().unwrap_or(DType::Float32)
    }

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
        Ok(Arc::new(reduced_schema(self.dtype(), meta)))
    }

    pub fn total_records(&self) -> u64 {
        (self.units.len() * self.out.names.len()) as u64
    }

    pub fn total_bytes(&self) -> u64 {
        let n = (self.selection.store.meta.grid.tile_px as u64).pow(2);
        self.total_records() * n * (self.dtype().size() as u64 + 1)
    }

    /// One ticket per tile and period: the query narrowed to them (a
    /// period's start is aligned to the origin, so `P<n>D` periods stay).
    pub fn tickets(&self) -> Vec<Vec<u8>> {
        let spec = &self.selection.spec;
        self.units
            .iter()
            .map(|(tile, slot)| {
                let mut one = spec.clone();
                one.area = Area::Tiles(vec![*tile]);
                one.start_ms = Some(spec.start_ms.map_or(slot.start, |s| s.max(slot.start)));
                one.end_ms = match (spec.end_ms, slot.end) {
                    (e, i64::MAX) => e,
                    (e, end) => Some(e.map_or(end, |e| e.min(end))),
                };
                one.bands = self.out.names.clone();
                wire::query_message_json(&one.to_message())
            })
            .collect()
    }

    pub fn write(&self, emit: &mut dyn FnMut(Piece) -> bool) -> Result<()> {
        let schema = self.schema()?;
        for (tile, slot) in &self.units {
            for (name, (values, valid)) in self.reduced(*tile, slot)? {
                let batch = reduced_batch(&schema, &tile.to_string(), &name, slot, values, valid)?;
                if !emit_rows(&batch, 1, emit) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Every output band of `tile` over `slot`, reduced: one band at a
    /// time (all at once for `quality`, which picks every band at one
    /// observation). Blocking (file IO).
    pub fn reduced(&self, tile: TileId, slot: &Slot) -> Result<Vec<(String, Reduced)>> {
        let reduce = self.out.steps.reduce.as_ref().ok_or_else(|| Error::Internal("a reduce answer without reduce".into()))?;
        let n = (self.selection.store.meta.grid.tile_px as usize).pow(2);
        let passes: Vec<Vec<String>> = match reduce.how {
            Reduction::Quality => vec![self.out.work_names()],
            Reduction::Reducer(_) => self.out.names.iter().map(|n| vec![n.clone()]).collect(),
        };
        let mut done = Vec::new();
        for names in passes {
            let layers = self.layers(tile, slot, &names, n)?;
            let shown = names.iter().filter(|n| *n != compute::QUALITY).cloned();
            done.extend(shown.zip(reduce_all(reduce, layers, n)));
        }
        Ok(done)
    }

    /// The layers of `names` for every observation of `tile` in `slot`,
    /// read a month at a time.
    fn layers(&self, tile: TileId, slot: &Slot, names: &[String], n: usize) -> Result<Vec<Layers>> {
        let s = &self.selection;
        let meta = &s.store.meta;
        let needed = s.store.meta.bands.iter().filter(|b| self.needs(names, &b.name)).map(|b| b.name.clone()).collect::<Vec<_>>();
        let in_slot = |t: i64| s.spec.time_matches(t) && t >= slot.start && t < slot.end;
        let mut chunks: Vec<&(ChunkKey, ChunkEntry)> =
            s.chunks.iter().filter(|(k, e)| k.tile == tile && needed.contains(&k.band) && e.times.iter().any(|t| in_slot(*t))).collect();
        chunks.sort_by_key(|(k, _)| k.month);
        let mut out: Vec<Layers> = names.iter().map(|_| Layers::default()).collect();
        let mut i = 0;
        while i < chunks.len() {
            let month = chunks[i].0.month;
            let mut by_band: Vec<HashMap<(i64, Arc<str>), Stored>> = (0..self.out.inputs.len()).map(|_| HashMap::new()).collect();
            let mut obs: BTreeSet<(i64, Arc<str>)> = BTreeSet::new();
            while i < chunks.len() && chunks[i].0.month == month {
                let (k, e) = chunks[i];
                i += 1;
                let Some(b) = self.out.inputs.iter().position(|x| x.name == k.band) else { continue };
                let batches = s.store.read_rows(e, |r| in_slot(e.times[r]))?;
                let Some(batch) = storage::sorted_rows(&batches, |t, _| in_slot(t))?.0 else { continue };
                drop(batches);
                let times = batch.column(2).as_primitive::<TimestampMillisecondType>();
                let scenes = batch.column(3).as_string::<i32>();
                let pixels = batch.column(4).as_list::<i32>();
                let masks = batch.column(5).as_list::<i32>();
                for r in 0..batch.num_rows() {
                    let mask = masks.value(r);
                    let mask = mask.as_boolean();
                    let valid = match mask.nulls() {
                        None => mask.values().clone(),
                        Some(nulls) => mask.values() & nulls.inner(),
                    };
                    let key = (times.value(r), Arc::<str>::from(scenes.value(r)));
                    obs.insert(key.clone());
                    by_band[b].insert(key, (pixels.value(r), valid));
                }
            }
            // Stored bands alone need no per-pixel steps but the mask: their
            // validity stays bit-packed.
            let plain = names.iter().all(|n| self.out.steps.program(n).is_none());
            for (time, scene) in obs {
                let inputs: Vec<Option<Stored>> = by_band.iter_mut().map(|m| m.remove(&(time, scene.clone()))).collect();
                let baseline = steps::store_baseline(&s.store, &scene);
                let layers = if plain {
                    self.plain_layers(inputs, n, names, baseline.as_deref(), time)
                } else {
                    let inputs = inputs.into_iter().map(|b| b.map(|(values, valid)| BandPixels { values, valid: valid.iter().collect() })).collect();
                    observation_layers(&self.out, meta, inputs, n, names, baseline.as_deref(), time)
                };
                out.iter_mut().zip(layers).for_each(|(o, l)| o.0.push(l));
            }
        }
        Ok(out)
    }

    /// Layers of stored bands: each band's validity and the mask's, as bits.
    fn plain_layers(
        &self,
        inputs: Vec<Option<(ArrayRef, BooleanBuffer)>>,
        n: usize,
        names: &[String],
        baseline: Option<&str>,
        time: i64,
    ) -> Vec<Option<Layer>> {
        let out = &self.out;
        let keep: Option<BooleanBuffer> =
            out.steps.mask.as_ref().map(|(band, rule)| match out.inputs.iter().position(|b| b.name == band.name).and_then(|i| inputs[i].as_ref()) {
                Some((values, valid)) => &steps::keep_bits(values, rule, out.steps.mask_table.as_deref()) & valid,
                None => BooleanBuffer::new_unset(n),
            });
        names
            .iter()
            .map(|name| {
                let i = out.inputs.iter().position(|b| &b.name == name)?;
                let (values, valid) = inputs[i].as_ref()?;
                let valid = match &keep {
                    Some(k) => valid & k,
                    None => valid.clone(),
                };
                let factors = steps::factors(&self.selection.store.meta, &out.inputs[i], out.steps.scale, baseline, time);
                Some(Layer { values: values.clone(), valid, factors })
            })
            .collect()
    }

    /// Whether stored band `band` is read for `names`: one of them, used by
    /// one's expression, or the mask band.
    fn needs(&self, names: &[String], band: &str) -> bool {
        names.iter().any(|n| n == band || self.out.steps.program(n).is_some_and(|p| p.bands.iter().any(|b| b == band)))
            || self.out.steps.mask.as_ref().is_some_and(|(b, _)| b.name == band)
    }
}

/// Columns of a reduced tile answer: a chunk's, then `label`.
pub fn reduced_schema(dtype: DType, meta: HashMap<String, String>) -> Schema {
    let base = chunk::schema(dtype, HashMap::new());
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("label", DataType::Utf8, false));
    Schema::new(fields).with_metadata(meta)
}

/// One reduced band of one tile and period as a row; invalid pixels hold
/// NaN (0 for counts, which are valid everywhere).
pub fn reduced_batch(schema: &SchemaRef, tile: &str, band: &str, slot: &Slot, values: ArrayRef, valid: Vec<bool>) -> Result<RecordBatch> {
    let base = Arc::new(chunk::schema(DType::from_arrow(values.data_type()).unwrap_or(DType::Float32), HashMap::new()));
    let row = chunk::observation_batch(base, tile, band, slot.start, &slot.label, values, BooleanArray::from(valid))?;
    let mut columns = row.columns().to_vec();
    columns.push(Arc::new(StringArray::from(vec![slot.label.as_str()])));
    RecordBatch::try_new(schema.clone(), columns).map_err(Error::arrow("building a reduced row"))
}
