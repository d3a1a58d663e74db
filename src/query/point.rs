//! The answer of one location's time series: a row per (time, scene), a
//! value and its validity per band; one endpoint, the query itself.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::{emit_rows, Piece, Selection};
use crate::collection::Band;
use crate::error::{Error, Result};
use crate::storage::chunk;

/// About the most bytes of a point series in one Flight message.
const SERIES_MESSAGE_BYTES: usize = 4 << 20;

/// One location's series.
pub struct PointAnswer {
    pub selection: Selection,
    /// The pixel holding the point, by its index in its tile.
    pub index: usize,
}

impl PointAnswer {
    pub fn schema(&self) -> SchemaRef {
        Arc::new(point_schema(&self.selection.bands))
    }

    /// The series in pieces of about [`SERIES_MESSAGE_BYTES`]. Blocking.
    pub fn write(&self, emit: &mut dyn FnMut(Piece) -> bool) -> Result<()> {
        let series = self.series()?;
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
