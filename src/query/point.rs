//! The answer of one location's time series: a row per (time, scene), a
//! value and its validity per band; one endpoint, the query itself.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::reduce::{self, Layers};
use super::steps::{self, BandPixels, Outputs};
use super::{emit_rows, Piece, Selection};
use crate::collection::{Band, DType};
use crate::compute::Slot;
use crate::error::{Error, Result};
use crate::storage::chunk;

/// About the most bytes of a point series in one Flight message.
const SERIES_MESSAGE_BYTES: usize = 4 << 20;

/// One location's series.
pub struct PointAnswer {
    pub selection: Selection,
    /// The pixel holding the point, by its index in its tile.
    pub index: usize,
    /// With mask, scale or compute: the answer's bands and steps.
    pub outputs: Option<Arc<Outputs>>,
}

impl PointAnswer {
    pub fn schema(&self) -> Result<SchemaRef> {
        let Some(out) = &self.outputs else { return Ok(Arc::new(point_schema(&self.selection.bands))) };
        if let Some(dtype) = out.reduced_dtype() {
            return Ok(Arc::new(reduced_point_schema(&out.names, dtype)));
        }
        let dtype = out.dtype(&self.selection.store.meta)?;
        let bands: Vec<Band> = out
            .names
            .iter()
            .map(|n| Band {
                name: n.clone(),
                dtype,
                nodata: None,
                scale: None,
                offset: None,
                offset_note: None,
                resampling: crate::collection::Resampling::Nearest,
            })
            .collect();
        Ok(Arc::new(point_schema(&bands)))
    }

    /// The series in pieces of about [`SERIES_MESSAGE_BYTES`]. Blocking.
    pub fn write(&self, emit: &mut dyn FnMut(Piece) -> bool) -> Result<()> {
        let mut series = self.series()?;
        if let Some(out) = self.outputs.as_ref().filter(|o| o.steps.reduce.is_some()) {
            series = self.reduce(out, &series)?;
        } else if let Some(out) = &self.outputs {
            series = self.apply(out, &series)?;
        }
        let row_bytes = series.get_array_memory_size() / series.num_rows().max(1);
        emit_rows(&series, (SERIES_MESSAGE_BYTES / row_bytes.max(1)).max(1), emit);
        Ok(())
    }

    /// One location's series: a row per (time, scene), a value and its
    /// validity per band. Values are gathered once per band from the
    /// arrays read (no per-row slices or keys).
    fn series(&self) -> Result<RecordBatch> {
        let (s, index) = (&self.selection, self.index);
        /// One observation's pixel: `array` indexes its band's arrays.
        struct Hit {
            time: i64,
            scene: Arc<str>,
            band: usize,
            array: usize,
            at: usize,
            valid: bool,
        }
        let mut arrays: Vec<Vec<ArrayRef>> = vec![Vec::new(); s.bands.len()];
        let mut hits: Vec<Hit> = Vec::new();
        let mut tile = None;
        for (key, entry) in &s.chunks {
            let Some(b) = s.bands.iter().position(|b| b.name == key.band) else { continue };
            // Fast path: the one pixel of each row, read from the file at its
            // offset without decoding the observations.
            if let Some((picked, values, valid)) = s.store.read_pixel(entry, s.bands[b].dtype, index, |i| s.spec.time_matches(entry.times[i]))? {
                tile = Some(key.tile);
                let array = arrays[b].len();
                arrays[b].push(values);
                hits.extend(picked.iter().enumerate().map(|(k, &r)| Hit {
                    time: entry.times[r],
                    scene: entry.scenes[r].clone(),
                    band: b,
                    array,
                    at: k,
                    valid: valid[k],
                }));
                continue;
            }
            let Some(batch) = s.read_sorted(entry)? else { continue };
            tile = Some(key.tile);
            let times = batch.column(2).as_primitive::<arrow_array::types::TimestampMillisecondType>();
            let scenes = batch.column(3).as_string::<i32>();
            let pixels = batch.column(4).as_list::<i32>();
            let masks = batch.column(5).as_list::<i32>();
            let array = arrays[b].len();
            arrays[b].push(pixels.values().clone());
            for r in 0..batch.num_rows() {
                let (px, mk) = (pixels.value_length(r) as usize, masks.value_length(r) as usize);
                if index >= px || index >= mk {
                    return Err(Error::Internal(format!("chunk row holds {px} pixels, fewer than the point index {index}")));
                }
                let valid = masks.values().as_boolean().value(masks.value_offsets()[r] as usize + index);
                hits.push(Hit {
                    time: times.value(r),
                    scene: Arc::from(scenes.value(r)),
                    band: b,
                    array,
                    at: pixels.value_offsets()[r] as usize + index,
                    valid,
                });
            }
        }
        // A row per (time, scene), in order; a later chunk's value for the
        // same row and band wins (the sort is stable).
        hits.sort_by(|x, y| (x.time, &*x.scene).cmp(&(y.time, &*y.scene)));
        let mut keys: Vec<(i64, Arc<str>)> = Vec::new();
        let mut cells: Vec<Vec<Option<(usize, usize)>>> = vec![Vec::new(); s.bands.len()];
        for h in hits {
            if keys.last().is_none_or(|(t, s)| *t != h.time || **s != *h.scene) {
                keys.push((h.time, h.scene));
                cells.iter_mut().for_each(|c| c.push(None));
            }
            let row = keys.len() - 1;
            cells[h.band][row] = h.valid.then_some((h.array, h.at));
        }
        let schema = Arc::new(point_schema(&s.bands));
        let tile_id = tile.map(|t| t.to_string()).unwrap_or_default();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(keys.iter().map(|k| k.0).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(keys.iter().map(|k| &*k.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vec![tile_id.as_str(); keys.len()])),
        ];
        for (b, band) in s.bands.iter().enumerate() {
            // Missing or invalid cells take the one null past the arrays read.
            let null = new_null_array(&band.dtype.arrow(), 1);
            let sources: Vec<&dyn Array> = arrays[b].iter().map(|a| a.as_ref()).chain([null.as_ref()]).collect();
            let picks: Vec<(usize, usize)> = cells[b].iter().map(|c| c.unwrap_or((arrays[b].len(), 0))).collect();
            columns.push(arrow_select::interleave::interleave(&sources, &picks).map_err(Error::arrow("building point values"))?);
            columns.push(Arc::new(BooleanArray::from(cells[b].iter().map(Option::is_some).collect::<Vec<_>>())));
        }
        RecordBatch::try_new(schema, columns).map_err(Error::arrow("building the point series"))
    }
}

impl PointAnswer {
    /// One row per period: every observation's outputs (mask, scale,
    /// compute) reduced as a tile's pixels are.
    fn reduce(&self, out: &Outputs, series: &RecordBatch) -> Result<RecordBatch> {
        let meta = &self.selection.store.meta;
        let Some(r) = &out.steps.reduce else { return Err(Error::Internal("a point reduce without reduce".into())) };
        let times = series.column(0).as_primitive::<arrow_array::types::TimestampMillisecondType>();
        let scenes = series.column(1).as_string::<i32>();
        let (_, slot_of) = reduce::slots(r.period, self.selection.spec.start_ms, times.values().iter().copied());
        let names = out.work_names();
        let mut periods: Vec<(Slot, Vec<Layers>)> = Vec::new();
        for row in 0..series.num_rows() {
            let slot = slot_of(times.value(row));
            if periods.last().is_none_or(|(s, _)| *s != slot) {
                periods.push((slot, names.iter().map(|_| Layers::default()).collect()));
            }
            let inputs = row_inputs(series, out.inputs.len(), row);
            let baseline = steps::store_baseline(&self.selection.store, scenes.value(row));
            let layers = reduce::observation_layers(out, meta, inputs, 1, &names, baseline.as_deref(), times.value(row));
            let period = &mut periods.last_mut().expect("a period was pushed").1;
            period.iter_mut().zip(layers).for_each(|(p, l)| p.0.push(l));
        }
        let schema = self.schema()?;
        let tile = series.column(2).as_string::<i32>();
        let tile_id = if series.num_rows() > 0 { tile.value(0) } else { "" };
        let mut values: Vec<Vec<ArrayRef>> = vec![Vec::new(); out.names.len()];
        let mut valids: Vec<Vec<bool>> = vec![Vec::new(); out.names.len()];
        for (_, layers) in &mut periods {
            for (k, (v, ok)) in reduce::reduce_all(r, std::mem::take(layers), 1).into_iter().enumerate() {
                values[k].push(v);
                valids[k].push(ok[0]);
            }
        }
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(periods.iter().map(|(s, _)| s.start).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(periods.iter().map(|(s, _)| s.label.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vec![tile_id; periods.len()])),
        ];
        cols.extend(value_columns(&schema, values, valids)?);
        RecordBatch::try_new(schema, cols).map_err(Error::arrow("building a reduced point series"))
    }

    /// The series with the steps applied, observation by observation.
    fn apply(&self, out: &Outputs, series: &RecordBatch) -> Result<RecordBatch> {
        let meta = &self.selection.store.meta;
        let times = series.column(0).as_primitive::<arrow_array::types::TimestampMillisecondType>();
        let scenes = series.column(1).as_string::<i32>();
        let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::new(); out.names.len()];
        let mut valids: Vec<Vec<bool>> = vec![Vec::new(); out.names.len()];
        for r in 0..series.num_rows() {
            let inputs = row_inputs(series, out.inputs.len(), r);
            let baseline = steps::store_baseline(&self.selection.store, scenes.value(r));
            for (k, (values, valid)) in steps::observation(out, meta, inputs, 1, baseline.as_deref(), times.value(r)).into_iter().enumerate() {
                columns[k].push(values);
                valids[k].push(valid[0]);
            }
        }
        let schema = self.schema()?;
        let mut cols: Vec<ArrayRef> = series.columns()[..3].to_vec();
        cols.extend(value_columns(&schema, columns, valids)?);
        RecordBatch::try_new(schema, cols).map_err(Error::arrow("building the point series"))
    }
}

/// One row of a series as an observation's inputs (`bands` stored bands,
/// each a value and its validity column from column 3 on).
fn row_inputs(series: &RecordBatch, bands: usize, row: usize) -> Vec<Option<BandPixels>> {
    (0..bands)
        .map(|b| {
            let valid = series.column(4 + 2 * b).as_boolean().value(row);
            Some(BandPixels { values: series.column(3 + 2 * b).slice(row, 1), valid: vec![valid] })
        })
        .collect()
}

/// Per output band, its one-value arrays joined into the value column of
/// `schema` (null where invalid) and its `<band>_valid` column.
fn value_columns(schema: &Schema, parts: Vec<Vec<ArrayRef>>, valids: Vec<Vec<bool>>) -> Result<Vec<ArrayRef>> {
    let mut cols = Vec::with_capacity(2 * parts.len());
    for (k, (parts, valid)) in parts.into_iter().zip(valids).enumerate() {
        let field = schema.field(3 + 2 * k);
        let joined = if parts.is_empty() {
            arrow_array::new_empty_array(field.data_type())
        } else {
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            arrow_select::concat::concat(&refs).map_err(Error::arrow("joining point values"))?
        };
        let joined = arrow_cast_to(&joined, field.data_type())?;
        let nulls = arrow_buffer::NullBuffer::from(valid.clone());
        let data = joined.to_data().into_builder().nulls(Some(nulls)).build().map_err(Error::arrow("masking point values"))?;
        cols.push(arrow_array::make_array(data));
        cols.push(Arc::new(BooleanArray::from(valid)) as ArrayRef);
    }
    Ok(cols)
}

/// `a` as `to` (point values read as stored keep their type; a band
/// missing from an observation comes as float32 nulls).
fn arrow_cast_to(a: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if a.data_type() == to {
        return Ok(a.clone());
    }
    let values = steps::as_f64(a);
    let dtype = crate::collection::DType::from_arrow(to).ok_or_else(|| Error::Internal(format!("no pixel type {to:?}")))?;
    Ok(crate::with_arrow_type!(dtype, T => {
        let v: Vec<<T as arrow_array::ArrowPrimitiveType>::Native> = values.iter().map(|v| crate::warp::Sample::from_f64(*v)).collect();
        Arc::new(arrow_array::PrimitiveArray::<T>::new(arrow_buffer::ScalarBuffer::from(v), None)) as ArrayRef
    }))
}

/// Schema of a reduced point series: time (the period's start), label,
/// tile_id, then per band the value (null when invalid) and
/// `<band>_valid`.
pub fn reduced_point_schema(names: &[String], dtype: DType) -> Schema {
    let mut fields =
        vec![Field::new("time", chunk::time_type(), false), Field::new("label", DataType::Utf8, false), Field::new("tile_id", DataType::Utf8, false)];
    for n in names {
        fields.push(Field::new(n, dtype.arrow(), true));
        fields.push(Field::new(format!("{n}_valid"), DataType::Boolean, false));
    }
    Schema::new(fields)
}

/// Schema of a point time series: time, scene_id, tile_id, then per band the
/// value (null when invalid) and `<band>_valid`.
pub fn point_schema(bands: &[Band]) -> Schema {
    let mut fields =
        vec![Field::new("time", chunk::time_type(), false), Field::new("scene_id", DataType::Utf8, false), Field::new("tile_id", DataType::Utf8, false)];
    for b in bands {
        fields.push(Field::new(&b.name, b.dtype.arrow(), true));
        fields.push(Field::new(format!("{}_valid", b.name), DataType::Boolean, false));
    }
    Schema::new(fields)
}
