//! What file names and GDAL metadata say about a raster: its acquisition
//! time, its scene and, for one-band-per-file products, its band.
//! Pure functions over strings, so they are tested without files.

use chrono::{NaiveDate, NaiveDateTime};

use crate::wire::parse_time;

/// Where an acquisition time was looked for, in order (for error messages).
pub const TIME_SOURCES: &str = "--time, GDAL metadata (TIFFTAG_DATETIME, ACQUISITIONDATETIME, DATATAKE_1_DATATAKE_SENSING_START, \
PRODUCT_START_TIME, SENSING_TIME, DATE_ACQUIRED + SCENE_CENTER_TIME), the file name (Sentinel-2 YYYYMMDDTHHMMSS, Landsat \
product id, YYYYMMDD, YYYY-MM-DD)";

/// Parses the time forms found in raster metadata: TIFF's
/// `YYYY:MM:DD HH:MM:SS`, RFC 3339 / ISO dates and date-times.
pub fn parse_metadata_time(s: &str) -> Option<i64> {
    let s = s.trim().trim_matches('"');
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y:%m:%d %H:%M:%S") {
        return Some(t.and_utc().timestamp_millis());
    }
    parse_time("time", s).ok()
}

/// The acquisition time from metadata items (`key=value` pairs of any
/// domain), in the documented order of keys.
pub fn time_from_metadata(items: &[(String, String)]) -> Option<(i64, String)> {
    let get = |k: &str| items.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
    for key in ["ACQUISITIONDATETIME", "DATATAKE_1_DATATAKE_SENSING_START", "PRODUCT_START_TIME", "SENSING_TIME"] {
        if let Some(t) = get(key).and_then(parse_metadata_time) {
            return Some((t, key.to_string()));
        }
    }
    if let Some(date) = get("DATE_ACQUIRED") {
        let time = get("SCENE_CENTER_TIME").map(|t| t.trim().trim_matches('"').trim_end_matches('Z').to_string());
        let joined = match time {
            Some(t) => format!("{}T{}Z", date.trim(), t.split('.').next().unwrap_or(&t)),
            None => date.trim().to_string(),
        };
        if let Some(t) = parse_metadata_time(&joined) {
            return Some((t, "DATE_ACQUIRED + SCENE_CENTER_TIME".into()));
        }
    }
    // TIFFTAG_DATETIME is often the file's processing time, so it comes
    // after the product-specific acquisition tags.
    if let Some(t) = get("TIFFTAG_DATETIME").and_then(parse_metadata_time) {
        return Some((t, "TIFFTAG_DATETIME".into()));
    }
    None
}

fn digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn ymd(s: &str) -> Option<NaiveDate> {
    if s.len() != 8 || !digits(s) {
        return None;
    }
    let d = NaiveDate::parse_from_str(s, "%Y%m%d").ok()?;
    (1970..=2100).contains(&chrono::Datelike::year(&d)).then_some(d)
}

/// The acquisition time from a file name: Sentinel-2 (`..._20240615T020304_...`),
/// Landsat product ids (`LC08_L2SP_116034_20240615_20240620_02_T1...`: the
/// acquisition date is the fourth field), then a plain `YYYYMMDD` or
/// `YYYY-MM-DD` anywhere.
pub fn time_from_name(name: &str) -> Option<(i64, String)> {
    let stem = name.rsplit('/').next().unwrap_or(name);
    let parts: Vec<&str> = stem.split(['_', '.', '-']).collect();
    // Sentinel-2: YYYYMMDDTHHMMSS
    for p in stem.split(['_', '.']) {
        if p.len() == 15 && p.as_bytes()[8] == b'T' && digits(&p[..8]) && digits(&p[9..]) {
            if let Ok(t) = NaiveDateTime::parse_from_str(p, "%Y%m%dT%H%M%S") {
                return Some((t.and_utc().timestamp_millis(), "file name (Sentinel-2 date-time)".into()));
            }
        }
    }
    // Landsat: LXSS_LLLL_PPPRRR_YYYYMMDD_yyyymmdd_CC_TX
    let us: Vec<&str> = stem.split('_').collect();
    if us.len() >= 5 && us[0].len() == 4 && us[0].starts_with('L') && us[2].len() == 6 && digits(us[2]) {
        if let Some(d) = ymd(us[3]) {
            return Some((d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis(), "file name (Landsat product id)".into()));
        }
    }
    for p in &parts {
        if let Some(d) = ymd(p) {
            return Some((d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis(), "file name (YYYYMMDD)".into()));
        }
    }
    // YYYY-MM-DD spans three '-' separated parts.
    let dashed: Vec<&str> = stem.split(['_', '.']).collect();
    for p in dashed {
        for w in p.as_bytes().windows(10) {
            let s = std::str::from_utf8(w).unwrap_or("");
            if w[4] == b'-' && w[7] == b'-' {
                if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                    return Some((d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis(), "file name (YYYY-MM-DD)".into()));
                }
            }
        }
    }
    None
}

/// A one-band-per-file product file: `(scene key, band code)`, e.g.
/// `T52SCG_20240615T020304_B04_10m.jp2` -> (`T52SCG_20240615T020304`, `B04`)
/// and `LC08_L2SP_116034_20240615_20240620_02_T1_SR_B4.TIF` ->
/// (`LC08_L2SP_116034_20240615_20240620_02_T1`, `SR_B4`).
pub fn band_file(stem: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = stem.split('_').collect();
    for i in (1..parts.len()).rev() {
        let p = parts[i];
        let s2 = (p.len() == 3 && p.starts_with('B') && (digits(&p[1..]) || p == "B8A")) || p == "SCL" || p == "AOT" || p == "WVP";
        if s2 {
            return Some((parts[..i].join("_"), p.to_string()));
        }
        if i >= 1 && (parts[i - 1] == "SR" || parts[i - 1] == "ST") && p.starts_with('B') && digits(&p[1..]) && p.len() > 1 {
            return Some((parts[..i - 1].join("_"), format!("{}_{p}", parts[i - 1])));
        }
        if i >= 1 && parts[i - 1] == "QA" && (p == "PIXEL" || p == "RADSAT") {
            return Some((parts[..i - 1].join("_"), format!("QA_{p}")));
        }
    }
    None
}

/// Profile band name of a product band code (Sentinel-2 L2A, Landsat C2 L2).
pub fn profile_band(code: &str) -> Option<&'static str> {
    Some(match code {
        "B01" => "coastal",
        "B02" => "blue",
        "B03" => "green",
        "B04" => "red",
        "B05" => "rededge1",
        "B06" => "rededge2",
        "B07" => "rededge3",
        "B08" => "nir",
        "B8A" => "nir08",
        "B09" => "nir09",
        "B11" => "swir16",
        "B12" => "swir22",
        "SCL" => "scl",
        "SR_B1" => "coastal",
        "SR_B2" => "blue",
        "SR_B3" => "green",
        "SR_B4" => "red",
        "SR_B5" => "nir08",
        "SR_B6" => "swir16",
        "SR_B7" => "swir22",
        "ST_B10" => "lwir11",
        "QA_PIXEL" => "qa_pixel",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1718416984000; // 2024-06-15T02:03:04Z

    #[test]
    fn metadata_times_in_order() {
        let items = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(time_from_metadata(&items(&[("TIFFTAG_DATETIME", "2024:06:15 02:03:04")])).unwrap().0, T);
        assert_eq!(time_from_metadata(&items(&[("ACQUISITIONDATETIME", "2024-06-15T02:03:04Z")])).unwrap().0, T);
        let both = items(&[("TIFFTAG_DATETIME", "2025:01:01 00:00:00"), ("DATATAKE_1_DATATAKE_SENSING_START", "2024-06-15T02:03:04.000Z")]);
        assert_eq!(time_from_metadata(&both).unwrap(), (T, "DATATAKE_1_DATATAKE_SENSING_START".into()));
        let landsat = items(&[("DATE_ACQUIRED", "2024-06-15"), ("SCENE_CENTER_TIME", "\"02:03:04.1234560Z\"")]);
        assert_eq!(time_from_metadata(&landsat).unwrap().0, T);
        assert_eq!(time_from_metadata(&items(&[("AREA_OR_POINT", "Area")])), None);
    }

    #[test]
    fn file_name_times() {
        assert_eq!(time_from_name("S2A_MSIL2A_20240615T020304_N0510_R003_T52SCG_20240615T050000.tif").unwrap().0, T);
        assert_eq!(time_from_name("T52SCG_20240615T020304_B04_10m.tif").unwrap().0, T);
        let day = T - (2 * 3600 + 3 * 60 + 4) * 1000;
        assert_eq!(time_from_name("LC08_L2SP_116034_20240615_20240620_02_T1_SR_B4.TIF").unwrap().0, day);
        assert_eq!(time_from_name("field_20240615.tif").unwrap().0, day);
        assert_eq!(time_from_name("field-2024-06-15-v2.tif").unwrap().0, day);
        assert_eq!(time_from_name("scene_v12345678.tif"), None);
        assert_eq!(time_from_name("scene.tif"), None);
    }

    #[test]
    fn band_files() {
        assert_eq!(band_file("T52SCG_20240615T020304_B04_10m"), Some(("T52SCG_20240615T020304".into(), "B04".into())));
        assert_eq!(band_file("T52SCG_20240615T020304_B8A_20m"), Some(("T52SCG_20240615T020304".into(), "B8A".into())));
        assert_eq!(band_file("T52SCG_20240615T020304_SCL_20m"), Some(("T52SCG_20240615T020304".into(), "SCL".into())));
        assert_eq!(band_file("LC08_L2SP_116034_20240615_20240620_02_T1_SR_B4"), Some(("LC08_L2SP_116034_20240615_20240620_02_T1".into(), "SR_B4".into())));
        assert_eq!(
            band_file("LC08_L2SP_116034_20240615_20240620_02_T1_QA_PIXEL"),
            Some(("LC08_L2SP_116034_20240615_20240620_02_T1".into(), "QA_PIXEL".into()))
        );
        assert_eq!(band_file("field_20240615"), None);
        assert_eq!(profile_band("B8A"), Some("nir08"));
        assert_eq!(profile_band("SR_B5"), Some("nir08"));
    }
}
