//! Per-observation pixel steps (DESIGN §4b): `mask` (QA rules), `scale`
//! (physical values) and `compute` (band math). Pure: slices of values and
//! validity in, slices out; the answers in `query/` feed them tiles,
//! windows or a point's series.

pub mod eval;
pub mod expr;
pub mod reduce;

use std::sync::Arc;

use crate::collection::{Band, Collection};
use crate::error::{Error, Result};
use crate::wire::{MaskSpec, ReduceHow, StepsSpec};

pub use expr::Program;
pub use reduce::{Period, Reducer, Slot};

/// A temporal reduction, resolved against a collection.
#[derive(Debug, Clone)]
pub struct Reduce {
    pub period: Period,
    pub how: Reduction,
}

#[derive(Debug, Clone)]
pub enum Reduction {
    Reducer(Reducer),
    /// Per pixel, every band of the observation where the expression
    /// computed as [`QUALITY`] is highest.
    Quality,
}

/// The name the quality expression of a `reduce` is computed under
/// (never a band name: those take no parentheses).
pub const QUALITY: &str = "quality()";

impl Reduce {
    /// Whether the answer holds counts (uint16) rather than float32.
    pub fn counts(&self) -> bool {
        matches!(self.how, Reduction::Reducer(Reducer::Count))
    }
}

/// How a mask band marks pixels (resolved against the collection).
#[derive(Debug, Clone, PartialEq)]
pub enum MaskRule {
    /// Values listed are invalid.
    Invalid(Vec<u32>),
    /// Only values listed are valid.
    Valid(Vec<u32>),
    /// Any of these bits set is invalid.
    Bits(u64),
}

impl MaskRule {
    /// Whether a pixel of the mask band with value `v` leaves the
    /// observation valid there.
    #[inline]
    pub fn keeps(&self, v: f64) -> bool {
        if !(v.is_finite() && v >= 0.0 && v <= u32::MAX as f64) || v.fract() != 0.0 {
            return false;
        }
        let v = v as u32;
        match self {
            MaskRule::Invalid(list) => !list.contains(&v),
            MaskRule::Valid(list) => list.contains(&v),
            MaskRule::Bits(bits) => (v as u64) & bits == 0,
        }
    }
}

/// The steps of a query, resolved against a collection.
#[derive(Debug, Clone)]
pub struct Steps {
    /// The mask band and its rule.
    pub mask: Option<(Band, MaskRule)>,
    /// The rule's answer for every 16-bit value (mask bands are mostly
    /// 8- or 16-bit classes and bit fields).
    pub mask_table: Option<Arc<Vec<bool>>>,
    pub scale: bool,
    /// Named expressions, in the order given.
    pub compute: Vec<(String, Program)>,
    pub reduce: Option<Reduce>,
}

impl Steps {
    pub fn none() -> Self {
        Steps { mask: None, mask_table: None, scale: false, compute: Vec::new(), reduce: None }
    }

    /// Whether any step applies.
    pub fn any(&self) -> bool {
        self.mask.is_some() || self.scale || !self.compute.is_empty()
    }

    /// Whether answers hold float32 (scaled or computed values).
    pub fn floats(&self) -> bool {
        self.scale || !self.compute.is_empty()
    }

    /// Resolves a query's steps against `meta`: the mask's band and rule,
    /// each expression parsed (errors name `compute.<name>` and the
    /// position).
    pub fn resolve(meta: &Collection, spec: &StepsSpec) -> Result<Self> {
        let mask = match &spec.mask {
            None => None,
            Some(MaskSpec::Qa) => {
                let qa = meta.qa.as_ref().ok_or_else(|| {
                    Error::invalid("mask", "qa", &format!("collection {:?} has no QA rules (no profile); give a band rule instead", meta.name))
                })?;
                let rule = match qa.kind.as_str() {
                    "bits" => MaskRule::Bits(qa.cloud.iter().chain(&qa.fill).fold(0u64, |m, b| m | (1u64 << b.min(&63)))),
                    _ if !qa.clear.is_empty() => MaskRule::Valid(qa.clear.clone()),
                    _ => MaskRule::Invalid(qa.cloud.iter().chain(&qa.fill).copied().collect()),
                };
                Some((mask_band(meta, &qa.band)?, rule))
            }
            Some(MaskSpec::Invalid { band, values }) => Some((mask_band(meta, band)?, MaskRule::Invalid(values.clone()))),
            Some(MaskSpec::Valid { band, values }) => Some((mask_band(meta, band)?, MaskRule::Valid(values.clone()))),
            Some(MaskSpec::Bits { band, bits }) => {
                if let Some(b) = bits.iter().find(|b| **b > 63) {
                    return Err(Error::invalid("mask.bits", b, "bit positions are 0 to 63"));
                }
                Some((mask_band(meta, band)?, MaskRule::Bits(bits.iter().fold(0u64, |m, b| m | (1u64 << b)))))
            }
        };
        let mut compute = Vec::new();
        for (name, text) in &spec.compute {
            if meta.band(name).is_some() {
                return Err(Error::invalid(&format!("compute.{name}"), name, "is a stored band's name; name the result otherwise"));
            }
            let program = expr::parse(&format!("compute.{name}"), text, &|b| meta.band(b).is_some())?;
            compute.push((name.clone(), program));
        }
        let reduce = match &spec.reduce {
            None => None,
            Some(r) => Some(Reduce {
                period: r.period,
                how: match &r.how {
                    ReduceHow::Reducer(x) => Reduction::Reducer(*x),
                    ReduceHow::Quality(text) => {
                        let program = match compute.iter().find(|(n, _)| n == text.trim()) {
                            Some((_, p)) => p.clone(),
                            None => expr::parse("reduce.quality", text, &|b| meta.band(b).is_some())?,
                        };
                        compute.push((QUALITY.to_string(), program));
                        Reduction::Quality
                    }
                },
            }),
        };
        let mask_table = mask.as_ref().map(|(_, rule): &(Band, MaskRule)| Arc::new((0..=u16::MAX as u32).map(|v| rule.keeps(v as f64)).collect()));
        Ok(Steps { mask, mask_table, scale: spec.scale, compute, reduce })
    }

    /// The stored bands an answer of `wanted` names must read: stored
    /// ones asked for, those the expressions use, and the mask band.
    pub fn inputs(&self, meta: &Collection, wanted: &[String]) -> Vec<Band> {
        let mut names: Vec<&str> = Vec::new();
        for w in wanted {
            match self.compute.iter().find(|(n, _)| n == w) {
                Some((_, p)) => names.extend(p.bands.iter().map(String::as_str)),
                None => names.push(w),
            }
        }
        if let Some((b, _)) = &self.mask {
            names.push(&b.name);
        }
        let mut out: Vec<Band> = Vec::new();
        for n in names {
            if let Some(b) = meta.band(n) {
                if !out.iter().any(|o| o.name == b.name) {
                    out.push(b.clone());
                }
            }
        }
        out
    }

    /// The expression named `name`, if it is one.
    pub fn program(&self, name: &str) -> Option<&Program> {
        self.compute.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }
}

fn mask_band(meta: &Collection, name: &str) -> Result<Band> {
    meta.band(name).cloned().ok_or_else(|| Error::invalid("mask.band", name, &format!("no such band in collection {:?}", meta.name)))
}

/// Sentinel-2 processing baseline 04.00 began on 25 January 2022: scenes
/// whose baseline was not recorded take the offset from then on.
pub const S2_BASELINE_04_MS: i64 = 1_643_068_800_000;

/// The offset of `band` for a scene of `baseline` acquired at `time_ms`:
/// Sentinel-2 L2A's -0.1 applies from processing baseline 04.00 on; other
/// bands' offsets always apply.
pub fn offset_for(meta: &Collection, band: &Band, baseline: Option<&str>, time_ms: i64) -> f64 {
    let Some(offset) = band.offset else { return 0.0 };
    if meta.profile.as_deref() != Some("sentinel2_l2a") {
        return offset;
    }
    let from_04 = match baseline.and_then(parse_baseline) {
        Some(b) => b >= 400,
        None => time_ms >= S2_BASELINE_04_MS,
    };
    if from_04 {
        offset
    } else {
        0.0
    }
}

/// `04.00`, `4.0`, `0400` or `N0400` as hundredths (400).
pub fn parse_baseline(s: &str) -> Option<u32> {
    let s = s.trim().trim_start_matches(['N', 'n']);
    if let Some((major, minor)) = s.split_once('.') {
        let (major, minor): (u32, u32) = (major.parse().ok()?, format!("{minor:0<2}").get(..2)?.parse().ok()?);
        return Some(major * 100 + minor);
    }
    (s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_parse_in_every_form() {
        for (s, want) in [("04.00", 400), ("4.0", 400), ("N0400", 400), ("0301", 301), ("03.01", 301), ("05.10", 510)] {
            assert_eq!(parse_baseline(s), Some(want), "{s}");
        }
        assert_eq!(parse_baseline("latest"), None);
    }

    #[test]
    fn landsat_and_sentinel_rules_mask_as_the_profiles_say() {
        let s2 = Collection { qa: crate::collection::profile("sentinel2_l2a").map(|p| p.qa), ..test_collection() };
        let steps = Steps::resolve(&s2, &StepsSpec { mask: Some(MaskSpec::Qa), ..Default::default() }).unwrap();
        let (_, rule) = steps.mask.unwrap();
        let kept: Vec<u32> = (0..12).filter(|v| rule.keeps(*v as f64)).collect();
        assert_eq!(kept, [4, 5, 6, 11]);
        let l8 = Collection { qa: crate::collection::profile("landsat8_l2").map(|p| p.qa), ..test_collection() };
        let (_, rule) = Steps::resolve(&l8, &StepsSpec { mask: Some(MaskSpec::Qa), ..Default::default() }).unwrap().mask.unwrap();
        assert!(rule.keeps(21824.0));
        for bit in 0..5 {
            assert!(!rule.keeps((21824 | (1 << bit)) as f64), "bit {bit}");
        }
    }

    fn test_collection() -> Collection {
        let p = crate::collection::profile("landsat8_l2").unwrap();
        let mut bands = p.bands.clone();
        bands.push(Band { name: "scl".into(), ..p.bands[0].clone() });
        Collection {
            name: "t".into(),
            profile: None,
            bands,
            grid: crate::collection::GridDoc {
                crs: "EPSG:3857".into(),
                crs_wkt: String::new(),
                tile_span: 2560.0,
                resolution: 30.0,
                tile_px: 86,
                pixel_size: 29.7,
            },
            qa: None,
            compression: Default::default(),
            compression_level: None,
        }
    }
}
