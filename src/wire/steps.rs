//! The per-observation keys of a `Query` (`mask`, `scale`, `compute`;
//! DESIGN §4b), as given: band names and expressions are checked against
//! the collection by the query layer (`compute::Steps::resolve`).

use pixelquery_proto::v1 as pb;
use serde_json::Value;

use crate::collection::validate_band_name;
use crate::compute::reduce::{Period, Reducer};
use crate::error::{Error, Result};

/// Most named expressions one query may compute.
pub const MAX_COMPUTED: usize = 16;

/// A `mask` key.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSpec {
    /// The collection's QA rules.
    Qa,
    Invalid {
        band: String,
        values: Vec<u32>,
    },
    Valid {
        band: String,
        values: Vec<u32>,
    },
    Bits {
        band: String,
        bits: Vec<u32>,
    },
}

/// `mask`, `scale`, `compute`, `reduce` and `into` of a query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepsSpec {
    pub mask: Option<MaskSpec>,
    pub scale: bool,
    /// `(name, expression)` in name order.
    pub compute: Vec<(String, String)>,
    pub reduce: Option<ReduceSpec>,
    /// The collection a reduced answer is stored as.
    pub into: Option<String>,
}

/// A `reduce` key: a period and a reducer or a quality expression.
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceSpec {
    pub period: Period,
    pub how: ReduceHow,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReduceHow {
    Reducer(Reducer),
    /// An expression over band names (checked against the collection later).
    Quality(String),
}

impl ReduceSpec {
    pub fn to_message(&self) -> pb::Reduce {
        let mut r = pb::Reduce { period: self.period.name(), ..Default::default() };
        match &self.how {
            ReduceHow::Reducer(x) => r.reducer = x.name(),
            ReduceHow::Quality(q) => r.quality = q.clone(),
        }
        r
    }
}

/// JSON `reduce`: `{"period", "reducer" | "quality"}`.
pub(super) fn reduce_from_json(v: Option<Value>) -> Result<Option<pb::Reduce>> {
    let mut m = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(Error::invalid("reduce", other, "expected {\"period\": ..., \"reducer\" | \"quality\": ...}")),
    };
    let mut text = |k: &str| match m.remove(k) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Error::invalid(&format!("reduce.{k}"), other, "expected a string")),
    };
    let r = pb::Reduce { period: text("period")?, reducer: text("reducer")?, quality: text("quality")? };
    if let Some(k) = m.keys().next() {
        return Err(Error::invalid(&format!("reduce.{k}"), k, "unknown key; expected period and one of reducer, quality"));
    }
    Ok(Some(r))
}

/// JSON form of a `Reduce` message (for endpoint tickets).
pub(super) fn reduce_to_json(r: &pb::Reduce) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("period".into(), r.period.clone().into());
    if !r.reducer.is_empty() {
        o.insert("reducer".into(), r.reducer.clone().into());
    }
    if !r.quality.is_empty() {
        o.insert("quality".into(), r.quality.clone().into());
    }
    Value::Object(o)
}

fn reduce_spec(r: Option<pb::Reduce>) -> Result<Option<ReduceSpec>> {
    let Some(r) = r else { return Ok(None) };
    let period = Period::parse("reduce.period", if r.period.is_empty() { "all" } else { &r.period })?;
    let how = match (r.reducer.is_empty(), r.quality.trim().is_empty()) {
        (false, true) => ReduceHow::Reducer(Reducer::parse("reduce.reducer", &r.reducer)?),
        (true, false) => ReduceHow::Quality(r.quality),
        _ => return Err(Error::invalid("reduce", &r.reducer, "give exactly one of reducer and quality")),
    };
    Ok(Some(ReduceSpec { period, how }))
}

/// JSON `mask`: `"qa"` or `{"band", "invalid" | "valid" | "bits"}`.
pub(super) fn mask_from_json(v: Option<Value>) -> Result<Option<pb::Mask>> {
    let v = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    match v {
        Value::String(s) if s == "qa" => Ok(Some(pb::Mask { qa: true, ..Default::default() })),
        Value::Object(mut m) => {
            let band = match m.remove("band") {
                Some(Value::String(b)) => b,
                other => return Err(Error::invalid("mask.band", other.unwrap_or(Value::Null), "expected a band name")),
            };
            let mut out = pb::Mask { band, ..Default::default() };
            for (key, value) in m {
                let list = value
                    .as_array()
                    .and_then(|a| a.iter().map(|v| v.as_u64().filter(|v| *v <= u32::MAX as u64).map(|v| v as u32)).collect::<Option<Vec<u32>>>())
                    .ok_or_else(|| Error::invalid(&format!("mask.{key}"), &value, "expected a list of whole numbers"))?;
                match key.as_str() {
                    "invalid" => out.invalid = list,
                    "valid" => out.valid = list,
                    "bits" => out.bits = list,
                    other => return Err(Error::invalid(&format!("mask.{other}"), other, "unknown key; expected band and one of invalid, valid, bits")),
                }
            }
            Ok(Some(out))
        }
        other => Err(Error::invalid("mask", other, "expected \"qa\" or {\"band\": ..., \"invalid\" | \"valid\" | \"bits\": [...]}")),
    }
}

/// JSON `compute`: an object name -> expression.
pub(super) fn compute_from_json(v: Option<Value>) -> Result<std::collections::HashMap<String, String>> {
    match v {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(Error::invalid(&format!("compute.{k}"), other, "expected an expression string")),
            })
            .collect(),
        Some(other) => Err(Error::invalid("compute", other, "expected an object name -> expression")),
    }
}

/// JSON form of a `Mask` message (for endpoint tickets).
pub(super) fn mask_to_json(m: &pb::Mask) -> Value {
    if m.qa {
        return Value::from("qa");
    }
    let mut o = serde_json::Map::new();
    o.insert("band".into(), m.band.clone().into());
    for (k, v) in [("invalid", &m.invalid), ("valid", &m.valid), ("bits", &m.bits)] {
        if !v.is_empty() {
            o.insert(k.into(), v.clone().into());
        }
    }
    Value::Object(o)
}

/// Validates the steps of a query (names and shapes; the collection's
/// bands are checked later).
pub(super) fn steps_spec(
    mask: Option<pb::Mask>,
    scale: bool,
    compute: std::collections::HashMap<String, String>,
    reduce: Option<pb::Reduce>,
    into: String,
) -> Result<StepsSpec> {
    let mask = match mask {
        None => None,
        Some(m) if m.qa => {
            if !m.band.is_empty() || !m.invalid.is_empty() || !m.valid.is_empty() || !m.bits.is_empty() {
                return Err(Error::invalid("mask", "qa", "\"qa\" takes no band or lists"));
            }
            Some(MaskSpec::Qa)
        }
        Some(m) => {
            validate_band_name("mask.band", &m.band)?;
            let given = [!m.invalid.is_empty(), !m.valid.is_empty(), !m.bits.is_empty()].iter().filter(|b| **b).count();
            if given != 1 {
                return Err(Error::invalid("mask", &m.band, "give exactly one non-empty list of invalid, valid or bits"));
            }
            Some(if !m.invalid.is_empty() {
                MaskSpec::Invalid { band: m.band, values: m.invalid }
            } else if !m.valid.is_empty() {
                MaskSpec::Valid { band: m.band, values: m.valid }
            } else {
                MaskSpec::Bits { band: m.band, bits: m.bits }
            })
        }
    };
    if compute.len() > MAX_COMPUTED {
        return Err(Error::invalid("compute", format!("{} expressions", compute.len()), &format!("at most {MAX_COMPUTED}")));
    }
    let mut compute: Vec<(String, String)> = compute.into_iter().collect();
    compute.sort();
    for (name, _) in &compute {
        validate_band_name(&format!("compute.{name}"), name)?;
    }
    let reduce = reduce_spec(reduce)?;
    let into = if into.is_empty() {
        None
    } else {
        crate::collection::validate_collection_name("into", &into)?;
        if reduce.is_none() {
            return Err(Error::invalid("into", &into, "stores a reduced answer: give reduce too"));
        }
        Some(into)
    };
    Ok(StepsSpec { mask, scale, compute, reduce, into })
}
