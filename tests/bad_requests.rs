//! Table of bad requests across the RPCs: each gets the right status code, a
//! message naming the field, and leaves the warehouse byte-for-byte as it was.

mod common;

use std::sync::Arc;

use arrow_array::{ArrayRef, Int32Array, RecordBatch, UInt16Array};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{Action, FlightDescriptor, Ticket};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use pixelquery_client::{proto, Client, ClientError};
use prost::Message;
use tonic::Code;

const T: i64 = 1718416984000;

enum Call {
    /// DoPut with this descriptor command and these batches.
    Put(Bytes, Vec<RecordBatch>),
    /// DoPut whose stream has a schema but no batch.
    PutNoRows(Bytes),
    Get(Bytes),
    Info(Bytes),
    Schema(Bytes),
    List(Bytes),
    Action(&'static str, Bytes),
    /// The call made by a client with this token (or none).
    As(Option<&'static str>, Box<Call>),
    /// A raw FlightData message larger than the server's message limit.
    Oversized(usize),
}

fn as_(token: Option<&'static str>, c: Call) -> Call {
    Call::As(token, Box::new(c))
}

fn json(v: serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&v).unwrap())
}

/// A `google.protobuf.Any` envelope.
fn any_of(type_url: &str, value: Vec<u8>) -> Bytes {
    Bytes::from(prost_types::Any { type_url: type_url.into(), value }.encode_to_vec())
}

/// A Flight SQL command in its `Any` envelope, as ADBC and JDBC send it:
/// the message's field 1 (the statement or the ticket's handle) only.
fn flight_sql(command: &str, field_1: &[u8]) -> Bytes {
    let mut value = vec![0x0a, field_1.len() as u8];
    value.extend_from_slice(field_1);
    any_of(&format!("type.googleapis.com/arrow.flight.protocol.sql.{command}"), value)
}

fn ingest_json(overrides: serde_json::Value) -> Bytes {
    let mut base = serde_json::json!({
        "collection": "s2", "scene_id": "bad-scene", "acquired_at": "2024-06-15T02:03:04Z",
        "crs": "EPSG:32652", "geotransform": utm_geotransform(64), "width": 64, "height": 64,
        "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}]
    });
    for (k, v) in overrides.as_object().unwrap() {
        base[k] = v.clone();
    }
    json(base)
}

fn red_rows(rows: usize, width: usize) -> Vec<RecordBatch> {
    red_batches((0..rows * width).map(|i| (i % 500 + 1) as u16).collect(), width)
}

async fn call(server: &TestServer, client: &mut Client, c: Call) -> Result<(), ClientError> {
    if let Call::As(token, inner) = c {
        let mut other = match token {
            Some(t) => server.client_with_token(t).await,
            None => server.client().await,
        };
        return Box::pin(call(server, &mut other, *inner)).await;
    }
    let f = client.flight();
    match c {
        Call::As(..) => unreachable!("handled above"),
        Call::Oversized(n) => {
            let msg = arrow_flight::FlightData {
                flight_descriptor: Some(FlightDescriptor::new_cmd(ingest_json(serde_json::json!({})))),
                data_body: Bytes::from(vec![7u8; n]),
                ..Default::default()
            };
            let _: Vec<_> = f.do_put(futures::stream::iter([Ok(msg)])).await?.try_collect().await?;
            Ok(())
        }
        Call::Put(cmd, batches) => client.ingest_raw(cmd, batches).await.map(|_| ()),
        Call::PutNoRows(cmd) => {
            let schema = Arc::new(Schema::new(vec![Field::new("red", DataType::UInt16, false)]));
            let data = FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd)))
                .build(futures::stream::iter(Vec::<Result<RecordBatch, _>>::new()));
            let _: Vec<_> = f.do_put(data).await?.try_collect().await?;
            Ok(())
        }
        Call::Get(t) => {
            let _: Vec<_> = f.do_get(Ticket::new(t)).await?.try_collect().await?;
            Ok(())
        }
        Call::Info(cmd) => f.get_flight_info(FlightDescriptor::new_cmd(cmd)).await.map(|_| ()).map_err(Into::into),
        Call::Schema(cmd) => f.get_schema(FlightDescriptor::new_cmd(cmd)).await.map(|_| ()).map_err(Into::into),
        Call::List(expr) => {
            let _: Vec<_> = f.list_flights(expr).await?.try_collect().await?;
            Ok(())
        }
        Call::Action(name, body) => {
            let _: Vec<_> = f.do_action(Action::new(name, body)).await?.try_collect().await?;
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_write_nothing() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        with_auth(c);
        c.max_message_bytes = 4 << 20;
        c.ingest.max_raster_bytes = 1 << 20;
    })
    .await;
    let mut client = server.client_with_token(ADMIN_TOKEN).await;
    create_red_collection(&mut client, "s2").await;
    // One good scene, so "unchanged" covers chunk files too.
    client.ingest(&ingest_request("s2", "good", T, utm_geotransform(64), 64, "nearest"), red_rows(64, 64)).await.unwrap();
    let before = snapshot(&server.warehouse());
    assert!(before.keys().any(|p| p.extension().is_some_and(|e| e == "arrow")));

    let nan_gt =
        proto::IngestRequest { geotransform: vec![f64::NAN, 10.0, 0.0, 0.0, 0.0, -10.0], ..ingest_request("s2", "nan", T, utm_geotransform(64), 64, "") };
    let int32_red: Vec<RecordBatch> = {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![1; 64 * 64]));
        vec![RecordBatch::try_from_iter([("red", a)]).unwrap()]
    };
    let nir_only: Vec<RecordBatch> = {
        let a: ArrayRef = Arc::new(UInt16Array::from(vec![1u16; 64 * 64]));
        vec![RecordBatch::try_from_iter([("nir", a)]).unwrap()]
    };
    let cases: Vec<(&str, Call, Code, &str)> = vec![
        ("unknown collection", Call::Put(ingest_json(serde_json::json!({"collection": "nope"})), red_rows(64, 64)), Code::NotFound, "nope"),
        (
            "unknown band",
            Call::Put(ingest_json(serde_json::json!({"bands": [{"name": "blue", "dtype": "uint16"}]})), red_rows(64, 64)),
            Code::InvalidArgument,
            "bands[0].name",
        ),
        (
            "band dtype differs from collection",
            Call::Put(ingest_json(serde_json::json!({"bands": [{"name": "red", "dtype": "float32"}]})), red_rows(64, 64)),
            Code::InvalidArgument,
            "bands[0].dtype",
        ),
        (
            "unknown dtype",
            Call::Put(ingest_json(serde_json::json!({"bands": [{"name": "red", "dtype": "uint12"}]})), red_rows(64, 64)),
            Code::InvalidArgument,
            "bands[0].dtype",
        ),
        ("unparseable CRS", Call::Put(ingest_json(serde_json::json!({"crs": "EPSG:999999"})), red_rows(64, 64)), Code::InvalidArgument, "crs"),
        (
            "zero pixel size",
            Call::Put(ingest_json(serde_json::json!({"geotransform": [0, 0, 0, 0, 0, -10]})), red_rows(64, 64)),
            Code::InvalidArgument,
            "geotransform",
        ),
        ("NaN in geotransform", Call::Put(Bytes::from(nan_gt.encode_to_vec()), red_rows(64, 64)), Code::InvalidArgument, "geotransform"),
        (
            "geotransform of 5 numbers",
            Call::Put(ingest_json(serde_json::json!({"geotransform": [0, 10, 0, 0, -10]})), red_rows(64, 64)),
            Code::InvalidArgument,
            "geotransform",
        ),
        ("fewer rows than height", Call::Put(ingest_json(serde_json::json!({})), red_rows(32, 64)), Code::InvalidArgument, "height"),
        ("more rows than height", Call::Put(ingest_json(serde_json::json!({})), red_rows(65, 64)), Code::InvalidArgument, "width x height"),
        (
            "more values than width x height",
            Call::Put(ingest_json(serde_json::json!({"width": 60})), red_rows(64, 64)),
            Code::InvalidArgument,
            "width x height",
        ),
        ("wrong column type", Call::Put(ingest_json(serde_json::json!({})), int32_red), Code::InvalidArgument, "column red"),
        ("missing band column", Call::Put(ingest_json(serde_json::json!({})), nir_only), Code::InvalidArgument, "column red"),
        ("malformed JSON descriptor", Call::Put(Bytes::from_static(b"{\"collection\": \"s2\","), red_rows(64, 64)), Code::InvalidArgument, "descriptor.cmd"),
        ("malformed protobuf descriptor", Call::Put(Bytes::from_static(&[0x0a, 0xff, 0x01, 0x02]), red_rows(64, 64)), Code::InvalidArgument, "descriptor.cmd"),
        ("unknown descriptor field", Call::Put(ingest_json(serde_json::json!({"colour": "red"})), red_rows(64, 64)), Code::InvalidArgument, "colour"),
        ("empty stream", Call::PutNoRows(ingest_json(serde_json::json!({}))), Code::InvalidArgument, "stream"),
        ("zero width", Call::Put(ingest_json(serde_json::json!({"width": 0})), red_rows(64, 64)), Code::InvalidArgument, "width"),
        ("bad scene time", Call::Put(ingest_json(serde_json::json!({"acquired_at": "last tuesday"})), red_rows(64, 64)), Code::InvalidArgument, "acquired_at"),
        ("malformed ticket", Call::Get(Bytes::from_static(b"{not json")), Code::InvalidArgument, "ticket"),
        ("tile id that does not parse", Call::Get(json(serde_json::json!({"collection": "s2", "tiles": ["x12_y-3"]}))), Code::InvalidArgument, "tiles[0]"),
        (
            "start after end",
            Call::Info(json(serde_json::json!({"collection": "s2", "start": "2024-12-31", "end": "2024-01-01"}))),
            Code::InvalidArgument,
            "start",
        ),
        ("unknown collection in query", Call::Info(json(serde_json::json!({"collection": "nope"}))), Code::NotFound, "nope"),
        ("unknown band in query", Call::Get(json(serde_json::json!({"collection": "s2", "bands": ["swir"]}))), Code::InvalidArgument, "bands"),
        ("bbox of 3 numbers", Call::Schema(json(serde_json::json!({"collection": "s2", "bbox": [1, 2, 3]}))), Code::InvalidArgument, "bbox"),
        (
            "unparseable bbox_crs",
            Call::Info(json(serde_json::json!({"collection": "s2", "bbox": [1, 2, 3, 4], "bbox_crs": "EPSG:nope"}))),
            Code::InvalidArgument,
            "bbox_crs",
        ),
        ("malformed criteria", Call::List(Bytes::from_static(b"{\"collection\": 5}")), Code::InvalidArgument, "criteria.expression"),
        (
            "fingerprint over 128 bytes",
            Call::Put(ingest_json(serde_json::json!({"fingerprint": "f".repeat(200)})), red_rows(64, 64)),
            Code::InvalidArgument,
            "fingerprint",
        ),
        ("replace that is no boolean", Call::Put(ingest_json(serde_json::json!({"replace": "yes"})), red_rows(64, 64)), Code::InvalidArgument, "replace"),
        ("delete_collection of a bad name", Call::Action("delete_collection", json(serde_json::json!({"name": "../etc"}))), Code::InvalidArgument, "name"),
        ("delete_collection of an unknown collection", Call::Action("delete_collection", json(serde_json::json!({"name": "nope"}))), Code::NotFound, "nope"),
        (
            "create_collection with a bad nodata",
            Call::Action(
                "create_collection",
                json(serde_json::json!({"name": "n", "bands": [{"name": "v", "dtype": "float32", "nodata": "none"}], "grid": {"resolution": 10}})),
            ),
            Code::InvalidArgument,
            "nodata",
        ),
        ("Flight SQL statement naming no column", Call::Info(flight_sql("CommandStatementQuery", b"SELECT nope FROM chunks")), Code::InvalidArgument, "nope"),
        (
            "Flight SQL INSERT statement",
            Call::Info(flight_sql("CommandStatementQuery", b"INSERT INTO scenes (scene_id) VALUES ('x')")),
            Code::PermissionDenied,
            "read-only",
        ),
        ("Flight SQL statement to GetSchema", Call::Schema(flight_sql("CommandStatementQuery", b"SELECT 1")), Code::Unimplemented, "GetSchema"),
        ("Flight SQL ticket of no SQL", Call::Get(flight_sql("TicketStatementQuery", b"SELEC 1")), Code::InvalidArgument, "query"),
        ("Flight SQL ticket not UTF-8", Call::Get(flight_sql("TicketStatementQuery", b"\xff\xfe")), Code::InvalidArgument, "statement_handle"),
        (
            "Flight SQL update to DoPut",
            Call::Put(flight_sql("CommandStatementUpdate", b"DELETE FROM scenes"), red_rows(64, 64)),
            Code::PermissionDenied,
            "read-only",
        ),
        ("Any of an unknown type", Call::Info(any_of("type.googleapis.com/acme.v1.Query", Vec::new())), Code::InvalidArgument, "descriptor.cmd.type_url"),
        (
            "bad collection name",
            Call::Action(
                "create_collection",
                json(serde_json::json!({"name": "../etc", "bands": [{"name": "red", "dtype": "uint16"}], "grid": {"resolution": 10}})),
            ),
            Code::InvalidArgument,
            "name",
        ),
        (
            "unparseable grid CRS",
            Call::Action(
                "create_collection",
                json(serde_json::json!({"name": "utm", "bands": [{"name": "red", "dtype": "uint16"}], "grid": {"crs": "EPSG:0", "resolution": 10}})),
            ),
            Code::InvalidArgument,
            "grid.crs",
        ),
        (
            "zero grid resolution",
            Call::Action("create_collection", json(serde_json::json!({"name": "z", "bands": [{"name": "red", "dtype": "uint16"}], "grid": {"resolution": 0}}))),
            Code::InvalidArgument,
            "grid.resolution",
        ),
        ("unknown profile", Call::Action("create_collection", json(serde_json::json!({"name": "p", "profile": "modis"}))), Code::InvalidArgument, "profile"),
        (
            "existing collection",
            Call::Action("create_collection", json(serde_json::json!({"name": "s2", "profile": "sentinel2_l2a"}))),
            Code::AlreadyExists,
            "s2",
        ),
        ("unknown action", Call::Action("drop_everything", Bytes::new()), Code::InvalidArgument, "action.type"),
        ("describe unknown tile form", Call::Action("describe", json(serde_json::json!({"collection": "s2", "tile": "x1_y1"}))), Code::InvalidArgument, "tile"),
        ("verify unknown tile form", Call::Action("verify", json(serde_json::json!({"collection": "s2", "tile": "x1_y1"}))), Code::InvalidArgument, "tile"),
        ("verify tile without collection", Call::Action("verify", json(serde_json::json!({"tile": "x0001_y0001"}))), Code::InvalidArgument, "tile"),
        ("verify unknown field", Call::Action("verify", json(serde_json::json!({"colection": "s2"}))), Code::InvalidArgument, "action.body"),
        ("gc on a local warehouse", Call::Action("gc", json(serde_json::json!({"collection": "s2"}))), Code::InvalidArgument, "action.type"),
        ("gc unknown field", Call::Action("gc", json(serde_json::json!({"older_than": 5}))), Code::InvalidArgument, "action.body"),
        ("gc retention not a number", Call::Action("gc", json(serde_json::json!({"older_than_secs": "1h"}))), Code::InvalidArgument, "older_than_secs"),
        ("as_of not an integer", Call::Get(json(serde_json::json!({"collection": "s2", "as_of": "latest"}))), Code::InvalidArgument, "as_of"),
        ("verify unknown collection", Call::Action("verify", json(serde_json::json!({"collection": "nope"}))), Code::NotFound, "nope"),
        // Oversized.
        (
            "raster over --max-raster-mb",
            Call::Put(ingest_json(serde_json::json!({"width": 1024, "height": 1024})), red_rows(1, 64)),
            Code::InvalidArgument,
            "exceeds the server limit",
        ),
        ("message over --max-message-mb", Call::Oversized(5 << 20), Code::OutOfRange, "too large"),
        (
            "10 001 tiles in a query",
            Call::Get(json(serde_json::json!({"collection": "s2", "tiles": vec!["x0001_y0001"; 10_001]}))),
            Code::InvalidArgument,
            "at most 10000 tiles",
        ),
        // Traversal and identifiers.
        ("collection ..", Call::Info(json(serde_json::json!({"collection": ".."}))), Code::InvalidArgument, "collection"),
        (
            "collection with a slash",
            Call::Put(ingest_json(serde_json::json!({"collection": "s2/../../etc"})), red_rows(64, 64)),
            Code::InvalidArgument,
            "collection",
        ),
        ("absolute collection path", Call::Action("describe", json(serde_json::json!({"collection": "/etc"}))), Code::InvalidArgument, "collection"),
        (
            "NUL in a collection name",
            Call::Action("delete", json(serde_json::json!({"collection": "s2\0x", "scene_id": "a"}))),
            Code::InvalidArgument,
            "collection",
        ),
        (
            "collection name of 300 chars",
            Call::Action("create_collection", json(serde_json::json!({"name": "a".repeat(300), "profile": "sentinel2_l2a"}))),
            Code::InvalidArgument,
            "name",
        ),
        (
            "band name ..",
            Call::Action(
                "create_collection",
                json(serde_json::json!({"name": "b", "bands": [{"name": "../x", "dtype": "uint16"}], "grid": {"resolution": 10}})),
            ),
            Code::InvalidArgument,
            "bands[0].name",
        ),
        ("tile id with a path", Call::Action("delete", json(serde_json::json!({"collection": "s2", "tile": "../../x1_y1"}))), Code::InvalidArgument, "tile"),
        ("scene id with NUL", Call::Put(ingest_json(serde_json::json!({"scene_id": "a\0b"})), red_rows(64, 64)), Code::InvalidArgument, "scene_id"),
        (
            "ingest_path outside the roots",
            Call::Action("ingest_path", json(serde_json::json!({"collection": "s2", "paths": ["/etc/passwd"]}))),
            Code::InvalidArgument,
            "ingest",
        ),
        // Auth and roles.
        ("no token", as_(None, Call::Info(json(serde_json::json!({"collection": "s2"})))), Code::Unauthenticated, "authorization"),
        ("unknown token", as_(Some("not-a-token-of-this-server"), Call::Get(json(serde_json::json!({"collection": "s2"})))), Code::Unauthenticated, "invalid"),
        ("read token DoPut", as_(Some(READ_TOKEN), Call::Put(ingest_json(serde_json::json!({})), red_rows(64, 64))), Code::PermissionDenied, "write role"),
        (
            "read token create",
            as_(Some(READ_TOKEN), Call::Action("create_collection", json(serde_json::json!({"name": "r", "profile": "sentinel2_l2a"})))),
            Code::PermissionDenied,
            "write role",
        ),
        (
            "read token delete",
            as_(Some(READ_TOKEN), Call::Action("delete", json(serde_json::json!({"collection": "s2", "scene_id": "good"})))),
            Code::PermissionDenied,
            "delete needs the write role",
        ),
        ("read token verify", as_(Some(READ_TOKEN), Call::Action("verify", json(serde_json::json!({})))), Code::PermissionDenied, "write role"),
        (
            "read token compact",
            as_(Some(READ_TOKEN), Call::Action("compact", json(serde_json::json!({"collection": "s2"})))),
            Code::PermissionDenied,
            "write role",
        ),
        (
            "write token ingest_path",
            as_(Some(WRITE_TOKEN), Call::Action("ingest_path", json(serde_json::json!({"collection": "s2", "paths": ["/tmp"]})))),
            Code::PermissionDenied,
            "ingest_path needs the admin role",
        ),
    ];
    assert!(cases.len() >= 30);
    for (name, c, code, needle) in cases {
        let err = call(&server, &mut client, c).await.expect_err(name);
        let status = err.status().unwrap_or_else(|| panic!("{name}: not a status: {err}"));
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        assert!(status.message().contains(needle), "{name}: message {:?} does not name {needle:?}", status.message());
        assert_eq!(snapshot(&server.warehouse()), before, "{name} changed the warehouse");
        eprintln!("{name}: {:?} {}", status.code(), status.message());
    }
    server.shutdown().await;
}
