//! Temporal reductions (DESIGN §4b `reduce`): which period an observation
//! falls in and its label, and the reducers over one pixel's valid values
//! in time order. Pure: the answers in `query/` gather the values.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};

use crate::error::{Error, Result};

const DAY_MS: i64 = 86_400_000;

/// How observations are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    All,
    Year,
    /// Meteorological seasons; `djf` holds December of the year before.
    Season,
    Month,
    /// Days 1-10, 11-20 and 21-end of each month, numbered 00-35 per year.
    Dekad,
    /// ISO weeks.
    Week,
    /// `P<n>D`: runs of n days from the origin.
    Days(u32),
}

/// One period: `[start, end)` and its label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub start: i64,
    pub end: i64,
    pub label: String,
}

fn midnight(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp_millis())
}

fn date_of(t: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(t).map_or(NaiveDate::MIN, |d| d.date_naive())
}

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN)
}

/// The first day of the month `months` after `y`-`m`.
fn add_months(y: i32, m: u32, months: u32) -> NaiveDate {
    let k = (m - 1 + months) as i32;
    ymd(y + k.div_euclid(12), k.rem_euclid(12) as u32 + 1, 1)
}

impl Period {
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        Ok(match text {
            "all" => Period::All,
            "year" => Period::Year,
            "season" => Period::Season,
            "month" => Period::Month,
            "dekad" => Period::Dekad,
            "week" => Period::Week,
            _ => {
                let n = text.strip_prefix('P').and_then(|r| r.strip_suffix('D')).and_then(|n| n.parse::<u32>().ok());
                match n {
                    Some(n) if (1..=36_600).contains(&n) => Period::Days(n),
                    _ => return Err(Error::invalid(field, text, "expected all, year, season, month, dekad, week or P<n>D with n from 1 to 36600 days")),
                }
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            Period::All => "all".into(),
            Period::Year => "year".into(),
            Period::Season => "season".into(),
            Period::Month => "month".into(),
            Period::Dekad => "dekad".into(),
            Period::Week => "week".into(),
            Period::Days(n) => format!("P{n}D"),
        }
    }

    /// The period holding time `t`; `origin` is where `all` and `P<n>D`
    /// periods start (the query's start, else the first observation's date).
    pub fn slot(&self, t: i64, origin: i64) -> Slot {
        let d = date_of(t);
        let (y, m) = (d.year(), d.month());
        let (start, end, label) = match self {
            Period::All => (origin, i64::MAX, date_of(origin).format("%Y-%m-%d").to_string()),
            Period::Days(n) => {
                let len = *n as i64 * DAY_MS;
                let start = origin + (t - origin).div_euclid(len) * len;
                (start, start + len, date_of(start).format("%Y-%m-%d").to_string())
            }
            Period::Year => (midnight(ymd(y, 1, 1)), midnight(ymd(y + 1, 1, 1)), format!("{y:04}")),
            Period::Season => {
                let (first, year, name) = match m {
                    12 => (ymd(y, 12, 1), y + 1, "djf"),
                    1 | 2 => (ymd(y - 1, 12, 1), y, "djf"),
                    3..=5 => (ymd(y, 3, 1), y, "mam"),
                    6..=8 => (ymd(y, 6, 1), y, "jja"),
                    _ => (ymd(y, 9, 1), y, "son"),
                };
                (midnight(first), midnight(add_months(first.year(), first.month(), 3)), format!("{year:04}-{name}"))
            }
            Period::Month => (midnight(ymd(y, m, 1)), midnight(add_months(y, m, 1)), format!("{y:04}-{m:02}")),
            Period::Dekad => {
                let k = ((d.day() - 1) / 10).min(2);
                let start = ymd(y, m, 1 + 10 * k);
                let end = if k < 2 { ymd(y, m, 11 + 10 * k) } else { add_months(y, m, 1) };
                (midnight(start), midnight(end), format!("{y:04}-{:02}", (m - 1) * 3 + k))
            }
            Period::Week => {
                let w = d.iso_week();
                let monday = d - Duration::days(d.weekday().num_days_from_monday() as i64);
                (midnight(monday), midnight(monday) + 7 * DAY_MS, format!("{:04}-{:02}", w.year(), w.week()))
            }
        };
        Slot { start, end, label }
    }

    /// The origin of `all` and `P<n>D` periods: `start` if given, else
    /// midnight of the first observation's date.
    pub fn origin(start: Option<i64>, first: i64) -> i64 {
        start.unwrap_or_else(|| midnight(date_of(first)))
    }
}

/// What one period of a pixel's valid values becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reducer {
    Median,
    Mean,
    Min,
    Max,
    Sum,
    Std,
    Count,
    /// `p<NN>`: numpy's linear percentile.
    Percentile(f64),
    First,
    Last,
}

impl Reducer {
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        Ok(match text {
            "median" => Reducer::Median,
            "mean" => Reducer::Mean,
            "min" => Reducer::Min,
            "max" => Reducer::Max,
            "sum" => Reducer::Sum,
            "std" => Reducer::Std,
            "count" => Reducer::Count,
            "first" => Reducer::First,
            "last" => Reducer::Last,
            _ => match text.strip_prefix('p').and_then(|p| p.parse::<u32>().ok()) {
                Some(p) if p <= 100 && text.len() <= 4 => Reducer::Percentile(p as f64),
                _ => {
                    return Err(Error::invalid(field, text, "expected median, mean, min, max, sum, std, count, first, last or p0 to p100"));
                }
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            Reducer::Median => "median".into(),
            Reducer::Mean => "mean".into(),
            Reducer::Min => "min".into(),
            Reducer::Max => "max".into(),
            Reducer::Sum => "sum".into(),
            Reducer::Std => "std".into(),
            Reducer::Count => "count".into(),
            Reducer::Percentile(p) => format!("p{p}"),
            Reducer::First => "first".into(),
            Reducer::Last => "last".into(),
        }
    }

    /// One pixel's valid values (in time order, as [`key`]s; reordered in
    /// place) reduced; `None` where there are none (`count` is never
    /// `None`).
    pub fn apply(&self, v: &mut [i32]) -> Option<f32> {
        if v.is_empty() {
            return (*self == Reducer::Count).then_some(0.0);
        }
        let n = v.len() as f64;
        let f = |k: &i32| from_key(*k) as f64;
        Some(match self {
            Reducer::Count => v.len() as f32,
            Reducer::First => from_key(v[0]),
            Reducer::Last => from_key(v[v.len() - 1]),
            Reducer::Min => from_key(*v.iter().min().unwrap_or(&0)),
            Reducer::Max => from_key(*v.iter().max().unwrap_or(&0)),
            Reducer::Sum => v.iter().map(f).sum::<f64>() as f32,
            Reducer::Mean => (v.iter().map(f).sum::<f64>() / n) as f32,
            Reducer::Std => {
                let mean = v.iter().map(f).sum::<f64>() / n;
                (v.iter().map(|x| (f(x) - mean).powi(2)).sum::<f64>() / n).sqrt() as f32
            }
            Reducer::Median => percentile(v, 50.0),
            Reducer::Percentile(p) => percentile(v, *p),
        })
    }
}

/// A float32 as an integer of the same order ([`f32::total_cmp`]'s), so
/// that selecting and comparing are integer operations.
#[inline]
pub fn key(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

/// The float32 of a [`key`].
#[inline]
pub fn from_key(k: i32) -> f32 {
    f32::from_bits((k ^ ((((k >> 31) as u32) >> 1) as i32)) as u32)
}

/// numpy's default (linear) percentile of non-empty `v`.
fn percentile(v: &mut [i32], p: f64) -> f32 {
    let at = p / 100.0 * (v.len() - 1) as f64;
    let lo = at.floor() as usize;
    let frac = at - lo as f64;
    let (_, a, rest) = v.select_nth_unstable(lo);
    let a = from_key(*a) as f64;
    if frac == 0.0 || rest.is_empty() {
        return a as f32;
    }
    let b = from_key(*rest.iter().min().unwrap_or(&0)) as f64;
    // numpy's lerp: from the nearer end, so that the ends are exact.
    let d = b - a;
    (if frac >= 0.5 { b - d * (1.0 - frac) } else { a + d * frac }) as f32
}

/// The observation whose quality is highest, ties to the latest: its index
/// among `q` (quality values in time order, `None` where invalid).
pub fn best(q: impl Iterator<Item = Option<f32>>) -> Option<usize> {
    let mut out: Option<(usize, f32)> = None;
    for (i, v) in q.enumerate() {
        if let Some(v) = v {
            if out.is_none_or(|(_, b)| v >= b) {
                out = Some((i, v));
            }
        }
    }
    out.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn labels_follow_openeo() {
        let t = at("2024-06-05T10:30:00Z");
        let label = |p: Period, t: i64| p.slot(t, 0).label;
        assert_eq!(label(Period::Year, t), "2024");
        assert_eq!(label(Period::Month, t), "2024-06");
        assert_eq!(label(Period::Season, t), "2024-jja");
        assert_eq!(label(Period::Dekad, t), "2024-15");
        assert_eq!(label(Period::Dekad, at("2024-06-21T00:00:00Z")), "2024-17");
        assert_eq!(label(Period::Dekad, at("2024-12-31T23:59:59Z")), "2024-35");
        assert_eq!(label(Period::Week, t), "2024-23");
        assert_eq!(label(Period::Week, at("2024-12-30T01:00:00Z")), "2025-01");
        let dec = Period::Season.slot(at("2023-12-15T00:00:00Z"), 0);
        assert_eq!(dec.label, "2024-djf");
        assert_eq!((dec.start, dec.end), (at("2023-12-01T00:00:00Z"), at("2024-03-01T00:00:00Z")));
        assert_eq!(Period::Season.slot(at("2024-02-29T12:00:00Z"), 0), dec);
        assert_eq!(Period::Season.slot(at("2024-12-01T00:00:00Z"), 0).label, "2025-djf");
    }

    #[test]
    fn day_runs_start_at_the_origin() {
        let origin = at("2024-06-01T00:00:00Z");
        let p = Period::Days(10);
        assert_eq!(p.slot(at("2024-06-10T23:00:00Z"), origin).label, "2024-06-01");
        let s = p.slot(at("2024-06-11T00:00:00Z"), origin);
        assert_eq!((s.label.as_str(), s.end - s.start), ("2024-06-11", 10 * DAY_MS));
        assert_eq!(p.slot(at("2024-05-31T00:00:00Z"), origin).label, "2024-05-22");
        assert_eq!(Period::origin(None, at("2024-06-03T17:00:00Z")), at("2024-06-03T00:00:00Z"));
        assert_eq!(Period::All.slot(at("2030-01-01T00:00:00Z"), origin).label, "2024-06-01");
    }

    #[test]
    fn bad_periods_and_reducers_are_refused() {
        for bad in ["P0D", "P-1D", "PD", "P1W", "monthly", ""] {
            assert!(Period::parse("reduce.period", bad).is_err(), "{bad}");
        }
        for bad in ["p101", "p", "p-1", "p50.5", "avg", "p0100"] {
            assert!(Reducer::parse("reduce.reducer", bad).is_err(), "{bad}");
        }
        assert_eq!(Reducer::parse("r", "p10").unwrap(), Reducer::Percentile(10.0));
    }

    #[test]
    fn reducers_match_numpy() {
        let v: Vec<i32> = [3.0f32, 1.0, 4.0, 1.0, 5.0, 9.0].into_iter().map(key).collect();
        let r = |r: Reducer| r.apply(&mut v.clone());
        assert_eq!(r(Reducer::Median), Some(3.5));
        assert_eq!(r(Reducer::Percentile(10.0)), Some(1.0));
        // numpy.percentile([3,1,4,1,5,9], 90) == 7.0
        assert_eq!(r(Reducer::Percentile(90.0)), Some(7.0));
        assert_eq!(r(Reducer::Percentile(100.0)), Some(9.0));
        assert_eq!(r(Reducer::First), Some(3.0));
        assert_eq!(r(Reducer::Last), Some(9.0));
        assert_eq!(r(Reducer::Count), Some(6.0));
        // numpy.std([3,1,4,1,5,9]) == 2.7335365778
        assert!((r(Reducer::Std).unwrap() - 2.733_536_6).abs() < 1e-6);
        assert_eq!(Reducer::Count.apply(&mut []), Some(0.0));
        assert_eq!(Reducer::Median.apply(&mut []), None);
    }

    #[test]
    fn keys_order_as_floats_do() {
        let v = [f32::NEG_INFINITY, -3.5, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in v.windows(2) {
            assert!(key(w[0]) < key(w[1]), "{w:?}");
        }
        for x in v {
            assert_eq!(from_key(key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn quality_ties_go_to_the_latest() {
        assert_eq!(best([Some(1.0), Some(2.0), None, Some(2.0), Some(0.5)].into_iter()), Some(3));
        assert_eq!(best([None, None].into_iter()), None);
    }
}
