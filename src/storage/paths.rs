//! The one place that lays out storage paths, with a parser back.
//!
//! ```text
//! <warehouse>/<collection>/collection.json
//! <warehouse>/<collection>/catalog.log
//! <warehouse>/<collection>/catalog.parquet
//! <warehouse>/<collection>/tiles/<tile_id>/<YYYY-MM>/<band>.arrow       generation 0
//! <warehouse>/<collection>/tiles/<tile_id>/<YYYY-MM>/<band>.<gen>.arrow after a rewrite
//! ```
//! Every component is validated before it becomes a path (collection and band
//! names match `[a-z0-9_]+`, tile ids and months are canonical), so no request
//! can reach outside the warehouse.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, NaiveDate};

use crate::grid::TileId;

/// A calendar month (UTC): the time unit of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    /// The month holding epoch milliseconds `ms` (UTC).
    pub fn of_ms(ms: i64) -> Option<Month> {
        let t = DateTime::from_timestamp_millis(ms)?;
        Some(Month { year: t.year(), month: t.month() })
    }

    /// Epoch milliseconds of the first instant of the month.
    pub fn start_ms(self) -> i64 {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc().timestamp_millis()).unwrap_or(i64::MAX)
    }

    /// Epoch milliseconds of the first instant of the next month.
    pub fn end_ms(self) -> i64 {
        self.next().start_ms()
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month { year: self.year + 1, month: 1 }
        } else {
            Month { year: self.year, month: self.month + 1 }
        }
    }

    /// Parses the canonical `YYYY-MM` form only.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let month = Month { year: y.parse().ok()?, month: m.parse().ok()? };
        (1..=12).contains(&month.month).then_some(month)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// File name suffix of chunk files (Arrow IPC stream format).
pub const CHUNK_SUFFIX: &str = ".arrow";

/// Names of deleted collections' directories start with this.
pub const DELETED_PREFIX: &str = ".deleted-";

/// Path layout of one warehouse directory.
#[derive(Debug, Clone)]
pub struct WarehousePaths {
    root: PathBuf,
}

impl WarehousePaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn collection_dir(&self, collection: &str) -> PathBuf {
        self.root.join(collection)
    }

    /// Where a deleted collection's directory goes before it is removed
    /// (no collection name starts with a dot, so it is never opened).
    pub fn deleted_collection_dir(&self, collection: &str) -> PathBuf {
        self.root.join(format!("{DELETED_PREFIX}{collection}"))
    }

    /// Present while a collection is being written whole (a reduce
    /// `into`): such a collection is hidden until the file is removed.
    pub fn collection_pending(&self, collection: &str) -> PathBuf {
        self.collection_dir(collection).join("pending")
    }

    pub fn collection_meta(&self, collection: &str) -> PathBuf {
        self.collection_dir(collection).join("collection.json")
    }

    pub fn tiles_dir(&self, collection: &str) -> PathBuf {
        self.collection_dir(collection).join("tiles")
    }

    pub fn catalog_log(&self, collection: &str) -> PathBuf {
        self.collection_dir(collection).join("catalog.log")
    }

    pub fn catalog_snapshot(&self, collection: &str) -> PathBuf {
        self.collection_dir(collection).join("catalog.parquet")
    }

    /// A chunk file: generation 0 is `<band>.arrow`, later generations
    /// (written by delete or compaction) `<band>.<gen>.arrow`.
    pub fn chunk(&self, collection: &str, tile: TileId, month: Month, band: &str, gen: u32) -> PathBuf {
        let name = if gen == 0 { format!("{band}{CHUNK_SUFFIX}") } else { format!("{band}.{gen}{CHUNK_SUFFIX}") };
        self.tiles_dir(collection).join(tile.to_string()).join(month.to_string()).join(name)
    }

    /// Parses `<tile>/<YYYY-MM>/<band>[.<gen>].arrow` relative to a tiles
    /// directory: `(tile, month, band, gen)`.
    pub fn parse_chunk(rel: &Path) -> Option<(TileId, Month, String, u32)> {
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
        let [tile, month, file] = parts.as_slice() else { return None };
        let stem = file.strip_suffix(CHUNK_SUFFIX)?;
        let (band, gen) = match stem.split_once('.') {
            None => (stem, 0),
            Some((b, g)) => {
                let gen: u32 = g.parse().ok().filter(|g| *g > 0)?;
                (gen.to_string() == g).then_some((b, gen))?
            }
        };
        crate::collection::validate_band_name("band", band).ok()?;
        Some((tile.parse().ok()?, Month::parse(month)?, band.to_string(), gen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn months_bound_their_milliseconds() {
        let m = Month::of_ms(1718416984000).unwrap();
        assert_eq!(m.to_string(), "2024-06");
        assert_eq!(m.start_ms(), 1717200000000);
        assert_eq!(Month { year: 2024, month: 12 }.next(), Month { year: 2025, month: 1 });
        assert_eq!(Month::parse("2024-13"), None);
        assert_eq!(Month::parse("24-01"), None);
        for bad in ["x0001_y0001/2024-06/red.0.arrow", "x0001_y0001/2024-06/red.01.arrow", "x0001_y0001/2024-06/Red.arrow", "x0001_y0001/2024-06/red.arrow.tmp"]
        {
            assert_eq!(WarehousePaths::parse_chunk(Path::new(bad)), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn chunk_paths_round_trip(ix in -20000i64..20000, iy in -5000i64..5000, year in 1970i32..2200, month in 1u32..=12, band in "[a-z0-9_]{1,32}", gen in prop::sample::select(vec![0u32, 1, 7, 12345])) {
            let p = WarehousePaths::new("/wh");
            let m = Month { year, month };
            let path = p.chunk("s2", TileId::new(ix, iy), m, &band, gen);
            let rel = path.strip_prefix(p.tiles_dir("s2")).unwrap();
            prop_assert_eq!(WarehousePaths::parse_chunk(rel), Some((TileId::new(ix, iy), m, band, gen)));
            prop_assert!(m.start_ms() < m.end_ms());
            prop_assert_eq!(Month::of_ms(m.start_ms()), Some(m));
            prop_assert_eq!(Month::of_ms(m.end_ms() - 1), Some(m));
        }
    }
}
