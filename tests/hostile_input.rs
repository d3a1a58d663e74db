//! Hostile input, property-tested (the fuzzing that runs in CI): random and
//! mutated bytes and JSON into every request decoder, every action, and the
//! DoPut raster stream decoder. Properties: no panic, and a refusal is a
//! client error (never `Internal`). Case counts: `PROPTEST_CASES` or the
//! defaults below.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, UInt16Array};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightData, FlightDescriptor};
use bytes::Bytes;
use futures::TryStreamExt;
use pixelquery::actions;
use pixelquery::config::Config;
use pixelquery::error::Error;
use pixelquery::state::AppState;
use pixelquery::storage::Warehouse;
use pixelquery::wire;
use proptest::prelude::*;
use serde_json::{json, Value};

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// A client error, or fine.
fn refused_cleanly<T>(r: &Result<T, Error>) -> bool {
    !matches!(r, Err(Error::Internal(_) | Error::Io { .. } | Error::Arrow { .. } | Error::Gdal { .. } | Error::Corrupt { .. }))
}

/// Field names the decoders know, so random objects reach deep checks.
const KEYS: &[&str] = &[
    "collection",
    "scene_id",
    "acquired_at",
    "acquired_at_ms",
    "crs",
    "geotransform",
    "width",
    "height",
    "bands",
    "name",
    "dtype",
    "nodata",
    "scale",
    "offset",
    "resampling",
    "resampling_by_band",
    "tiles",
    "bbox",
    "bbox_crs",
    "start",
    "end",
    "start_ms",
    "end_ms",
    "point",
    "profile",
    "grid",
    "tile_span",
    "resolution",
    "tile",
    "paths",
    "time",
    "qa",
    "valid",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
        prop_oneof![
            Just("..".to_string()),
            Just("/etc/passwd".to_string()),
            Just("s2".to_string()),
            Just("EPSG:32652".to_string()),
            Just("uint16".to_string()),
            Just("x0001_y0001".to_string()),
            Just("2024-06-15T02:03:04Z".to_string()),
            Just("a\0b".to_string()),
            "\\PC{0,40}",
            "[a-z0-9_]{0,70}",
        ]
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// Bytes to decode: random, random JSON, or a valid message mutated.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid_query = wire::query_json("s2", &["x4380_y1632".into()], &["red".into()], (Some(0), Some(1)), false, None);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        (prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)).prop_map(move |edits| {
            let mut b = valid_query.clone();
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            b
        }),
        // Protobuf-shaped: field tags with random lengths.
        prop::collection::vec((1u8..20, 0u8..6, prop::collection::vec(any::<u8>(), 0..12)), 0..8).prop_map(|fields| {
            let mut b = Vec::new();
            for (tag, wire_type, payload) in fields {
                b.push(tag << 3 | (wire_type & 7));
                b.push(payload.len() as u8);
                b.extend(payload);
            }
            b
        }),
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn request_decoders_never_panic(bytes in request_bytes()) {
        prop_assert!(refused_cleanly(&wire::decode_query("ticket", &bytes)));
        prop_assert!(refused_cleanly(&wire::decode_criteria(&bytes)));
        prop_assert!(refused_cleanly(&wire::decode_ingest(&bytes)));
        prop_assert!(refused_cleanly(&wire::decode_create_collection(&bytes)));
        prop_assert!(refused_cleanly(&wire::decode_describe(&bytes)));
        prop_assert!(refused_cleanly(&wire::decode_delete(&bytes)));
        prop_assert!(refused_cleanly(&wire::decode_compact(&bytes)));
    }
}

/// A server state over a temporary warehouse holding collection `s2` with
/// one scene (so deletes, describes and compactions have work to do).
fn state() -> (tempfile::TempDir, Arc<AppState>, tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_warehouse(dir.path().join("wh"));
    config.ingest_roots = vec![dir.path().join("files").display().to_string()];
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    let wh = Arc::new(Warehouse::open(&config.warehouse).unwrap());
    let state = Arc::new(AppState::new(wh, &config));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    actions::run(
        &state,
        "create_collection",
        &serde_json::to_vec(&json!({"name": "s2", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}})).unwrap(),
    )
    .unwrap();
    let messages = valid_put(32);
    rt.block_on(pixelquery::flight::put(&state, futures::stream::iter(messages.into_iter().map(Ok)))).unwrap();
    (dir, state, rt)
}

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn actions_never_panic(action in prop::sample::select(actions::ACTIONS.iter().map(|a| a.name).collect::<Vec<_>>()), body in prop_oneof![json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()), request_bytes()]) {
        thread_local!(static STATE: (tempfile::TempDir, Arc<AppState>, tokio::runtime::Runtime) = state());
        STATE.with(|(_, state, rt)| {
            // ingest_path drives ingests on the runtime from a blocking thread, as the server does.
            let st = state.clone();
            let r = rt.block_on(async move { tokio::task::spawn_blocking(move || actions::run(&st, action, &body)).await.unwrap() });
            prop_assert!(refused_cleanly(&r), "{action}: {r:?}");
            Ok(())
        })?;
    }
}

/// The descriptor of a `size x size` DoPut of band `red`.
fn put_descriptor(size: usize, scene: &str) -> FlightDescriptor {
    let cmd = json!({
        "collection": "s2", "scene_id": scene, "acquired_at": "2024-06-15T02:03:04Z", "crs": "EPSG:32652",
        "geotransform": [322000.0, 10.0, 0.0, 4158000.0, 0.0, -10.0], "width": size, "height": size,
        "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}]
    });
    FlightDescriptor::new_cmd(Bytes::from(serde_json::to_vec(&cmd).unwrap()))
}

/// The FlightData messages of a valid `size x size` DoPut of band `red`.
fn valid_put(size: usize) -> Vec<FlightData> {
    let rows: Vec<RecordBatch> = (0..size)
        .step_by(8)
        .map(|top| {
            let a: ArrayRef = Arc::new(UInt16Array::from_iter_values((0..8 * size).map(|i| (top * size + i) as u16 % 999 + 1)));
            RecordBatch::try_from_iter([("red", a)]).unwrap()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(
        FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(put_descriptor(size, "fuzz")))
            .build(futures::stream::iter(rows.into_iter().map(Ok)))
            .try_collect::<Vec<_>>(),
    )
    .unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite a byte of a message's IPC header.
    Header(prop::sample::Index, prop::sample::Index, u8),
    /// Overwrite a byte of a message's body.
    Body(prop::sample::Index, prop::sample::Index, u8),
    /// Cut a message's header or body short.
    Truncate(prop::sample::Index, bool, prop::sample::Index),
    Drop(prop::sample::Index),
    Duplicate(prop::sample::Index),
    /// Replace a message's descriptor command with random bytes.
    Descriptor(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(m, i, v)| Mutation::Header(m, i, v)),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(m, i, v)| Mutation::Body(m, i, v)),
        (any::<prop::sample::Index>(), any::<bool>(), any::<prop::sample::Index>()).prop_map(|(m, h, i)| Mutation::Truncate(m, h, i)),
        any::<prop::sample::Index>().prop_map(Mutation::Drop),
        any::<prop::sample::Index>().prop_map(Mutation::Duplicate),
        request_bytes().prop_map(Mutation::Descriptor),
    ]
}

fn apply(messages: &mut Vec<FlightData>, m: &Mutation) {
    if messages.is_empty() {
        return;
    }
    let set = |b: &mut Bytes, i: &prop::sample::Index, v: u8| {
        if !b.is_empty() {
            let mut v2 = b.to_vec();
            let at = i.index(v2.len());
            v2[at] = v;
            *b = Bytes::from(v2);
        }
    };
    let len = messages.len();
    match m {
        Mutation::Header(mi, i, v) => set(&mut messages[mi.index(len)].data_header, i, *v),
        Mutation::Body(mi, i, v) => set(&mut messages[mi.index(len)].data_body, i, *v),
        Mutation::Truncate(mi, header, i) => {
            let msg = &mut messages[mi.index(len)];
            let b = if *header { &mut msg.data_header } else { &mut msg.data_body };
            if !b.is_empty() {
                *b = b.slice(..i.index(b.len()));
            }
        }
        Mutation::Drop(mi) => {
            messages.remove(mi.index(len));
        }
        Mutation::Duplicate(mi) => {
            let at = mi.index(len);
            messages.insert(at, messages[at].clone());
        }
        Mutation::Descriptor(cmd) => messages[0].flight_descriptor = Some(FlightDescriptor::new_cmd(cmd.clone())),
    }
}

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn the_raster_stream_decoder_never_panics(mutations in prop::collection::vec(mutation(), 1..4)) {
        thread_local!(static STATE: (tempfile::TempDir, Arc<AppState>, tokio::runtime::Runtime) = state());
        thread_local!(static VALID: Vec<FlightData> = valid_put(32));
        thread_local!(static SCENE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
        let mut messages = VALID.with(|v| v.clone());
        // A new scene id each case, so no case is skipped as a duplicate.
        let n = SCENE.with(|c| { c.set(c.get() + 1); c.get() });
        messages[0].flight_descriptor = Some(put_descriptor(32, &format!("case-{n}")));
        for m in &mutations {
            apply(&mut messages, m);
        }
        STATE.with(|(_, state, rt)| {
            let r = rt.block_on(pixelquery::flight::put(state, futures::stream::iter(messages.into_iter().map(Ok))));
            if let Err(status) = &r {
                prop_assert_ne!(status.code(), tonic::Code::Internal, "{}", status.message());
            }
            Ok(())
        })?;
    }
}

/// Regression (found by the property above): a record batch whose body was
/// cut short made arrow-ipc panic while slicing it; now `InvalidArgument`.
#[test]
fn a_truncated_batch_body_is_invalid_argument() {
    let (_dir, state, rt) = state();
    let mut messages = valid_put(32);
    messages[0].flight_descriptor = Some(put_descriptor(32, "truncated"));
    let batch = messages.iter().position(|m| !m.data_body.is_empty()).unwrap();
    messages[batch].data_body = Bytes::new();
    let err = rt.block_on(pixelquery::flight::put(&state, futures::stream::iter(messages.into_iter().map(Ok)))).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("body"), "{}", err.message());
}
