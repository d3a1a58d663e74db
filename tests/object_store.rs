//! The warehouse on object storage (S3 through SeaweedFS on loopback):
//! the put-if-absent the commit protocol stands on, scenes committed to the
//! Delta catalog table and read back by any server, a scene id committed by
//! two servers at once stored once, orphans removed by `gc`, and a store
//! that cannot be reached failing at start.

#[path = "common/azurite.rs"]
mod azurite;
mod common;
#[path = "common/seaweed.rs"]
mod seaweed;

use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use common::*;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use pixelquery::config::Config;
use pixelquery_client::{proto, Client};
use seaweed::Seaweed;

const JUN: i64 = 1_717_200_000_000;
const DAY: i64 = 86_400_000;

/// One store for every test of this binary.
fn store() -> &'static Seaweed {
    static STORE: OnceLock<Seaweed> = OnceLock::new();
    STORE.get_or_init(|| {
        let s = Seaweed::start();
        s.export();
        s
    })
}

/// A server on `s3://pqtest/<prefix>` with its own local copy.
async fn shared_server(prefix: &str) -> TestServer {
    shared_server_with(prefix, |_| {}).await
}

async fn shared_server_with(prefix: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    store();
    let url = format!("s3://{}/{prefix}", seaweed::BUCKET);
    TestServer::start_with(tempfile::tempdir().unwrap(), move |c: &mut Config| {
        c.shared = Some(url);
        adjust(c);
    })
    .await
}

/// A server's chunk files of `collection`: path below its warehouse, bytes.
fn chunk_files(s: &TestServer, collection: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    snapshot(&s.warehouse().join(collection).join("tiles"))
        .into_iter()
        .map(|(p, bytes)| (p.strip_prefix(s.warehouse()).unwrap().to_path_buf(), bytes))
        .collect()
}

/// Rows as (tile, band, time, scene), sorted: what a read holds, whatever
/// the order.
fn row_keys(batches: &[RecordBatch]) -> Vec<(String, String, i64, String)> {
    use arrow_array::cast::AsArray;
    let mut keys = Vec::new();
    for b in batches {
        let text = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (tile, band, scene) = (text("tile_id"), text("band"), text("scene_id"));
        let time = b.column_by_name("time").unwrap().as_primitive::<arrow_array::types::TimestampMillisecondType>().clone();
        for i in 0..b.num_rows() {
            keys.push((tile.value(i).to_string(), band.value(i).to_string(), time.value(i), scene.value(i).to_string()));
        }
    }
    keys.sort();
    keys
}

/// Scene `scene-<i>` dated `day` days after June 1st, ingested through a
/// shared server and through the local one; new on both.
async fn ingest_beside(shared: &mut Client, local: &mut Client, i: usize, day: i64) {
    let req = ingest_request("s2", &format!("scene-{i}"), JUN + day * DAY, utm_geotransform(300), 300, "bilinear");
    assert!(!shared.ingest(&req, red_batches(raster(300, i as u16), 300)).await.unwrap().duplicate);
    assert!(!local.ingest(&req, red_batches(raster(300, i as u16), 300)).await.unwrap().duplicate);
}

/// Collection "s2" on the shared warehouse of `a` and `b`, and on a new
/// local server beside them: the servers and a client of each.
async fn beside(a: TestServer, b: TestServer) -> ([TestServer; 3], [Client; 3]) {
    let local = TestServer::start().await;
    let (mut ca, cb, mut cl) = (a.client().await, b.client().await, local.client().await);
    create_red_collection(&mut ca, "s2").await;
    create_red_collection(&mut cl, "s2").await;
    ([a, b, local], [ca, cb, cl])
}

async fn read_all(client: &mut pixelquery_client::Client, collection: &str) -> Vec<RecordBatch> {
    client.query(&proto::Query { collection: collection.into(), ..Default::default() }).await.unwrap()
}

/// 16 writers race to create one key, 50 rounds: exactly one wins each.
/// (SeaweedFS makes contending conditional puts of one key wait up to a few
/// seconds each, so ten rounds, on ten keys, run at a time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_if_absent_has_exactly_one_winner() {
    one_winner_each_round(Arc::new(store().store()), 50).await;
}

/// `rounds` rounds of 16 writers racing to create one key, ten rounds (on
/// ten keys) at a time: exactly one wins each.
async fn one_winner_each_round(s: Arc<dyn ObjectStore>, rounds: usize) {
    for group in 0..rounds.div_ceil(10) {
        let rounds = (group * 10..(group * 10 + 10).min(rounds)).map(|round| {
            let s = s.clone();
            async move {
                let path = object_store::path::Path::from(format!("atomicity/round-{round}"));
                let puts = (0..16).map(|i| {
                    let (s, path) = (s.clone(), path.clone());
                    tokio::spawn(async move {
                        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                        s.put_opts(&path, PutPayload::from(format!("writer {i}").into_bytes()), opts).await
                    })
                });
                let results = futures::future::join_all(puts).await;
                let winners = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
                let losers = results.iter().filter(|r| matches!(r, Ok(Err(object_store::Error::AlreadyExists { .. })))).count();
                assert_eq!((winners, losers), (1, 15), "round {round}: {results:?}");
            }
        });
        futures::future::join_all(rounds).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenes_on_object_storage_read_back_on_every_server() {
    let gt = utm_geotransform(300);
    let a = shared_server("readback").await;
    let local = TestServer::start().await;
    let (mut ca, mut cl) = (a.client().await, local.client().await);
    create_red_collection(&mut ca, "s2").await;
    create_red_collection(&mut cl, "s2").await;
    for i in 0..3i64 {
        let req = ingest_request("s2", &format!("scene-{i}"), JUN + i * DAY, gt, 300, "bilinear");
        let put = ca.ingest(&req, red_batches(raster(300, i as u16), 300)).await.unwrap();
        assert!(!put.duplicate);
        cl.ingest(&req, red_batches(raster(300, i as u16), 300)).await.unwrap();
    }
    let again = ca.ingest(&ingest_request("s2", "scene-1", JUN + DAY, gt, 300, "bilinear"), red_batches(raster(300, 1), 300)).await.unwrap();
    assert!(again.duplicate, "a retried scene is stored once");

    // The same rows as the local backend holds.
    let on_s3 = read_all(&mut ca, "s2").await;
    assert_eq!(on_s3, read_all(&mut cl, "s2").await);
    assert!(on_s3.iter().map(|b| b.num_rows()).sum::<usize>() >= 3);

    // A second server with an empty local copy sees every scene, and its
    // chunk files hold the same bytes.
    let b = shared_server("readback").await;
    let mut cb = b.client().await;
    assert_eq!(read_all(&mut cb, "s2").await, on_s3);
    assert_eq!(cb.describe("s2").await.unwrap()["scenes"], ca.describe("s2").await.unwrap()["scenes"]);
    // Scenes committed through one server are seen by the other at once.
    cb.ingest(&ingest_request("s2", "scene-9", JUN + 9 * DAY, gt, 300, "bilinear"), red_batches(raster(300, 9), 300)).await.unwrap();
    assert_eq!(read_all(&mut ca, "s2").await, read_all(&mut cb, "s2").await);
    let files = |s: &TestServer| chunk_files(s, "s2");
    assert_eq!(files(&a), files(&b), "every server's chunk files hold the same bytes");

    // Tickets pin the catalog version: a scene committed after
    // GetFlightInfo is not in its tickets' answers, on any server.
    let info = ca.flight_info(&proto::Query { collection: "s2".into(), ..Default::default() }).await.unwrap();
    let tickets: Vec<bytes::Bytes> = info.endpoint.iter().map(|e| e.ticket.clone().unwrap().ticket).collect();
    assert!(tickets.iter().all(|t| String::from_utf8_lossy(t).contains("\"as_of\"")), "{tickets:?}");
    let mut before = Vec::new();
    for t in &tickets {
        before.push(ca.do_get(t.clone()).await.unwrap());
    }
    cb.ingest(&ingest_request("s2", "scene-10", JUN + 10 * DAY, gt, 300, "bilinear"), red_batches(raster(300, 10), 300)).await.unwrap();
    for (t, old) in tickets.iter().zip(&before) {
        assert_eq!(&cb.do_get(t.clone()).await.unwrap(), old);
        assert_eq!(&ca.do_get(t.clone()).await.unwrap(), old);
    }
    assert!(read_all(&mut ca, "s2").await.iter().map(|b| b.num_rows()).sum::<usize>() > before.iter().flatten().map(|b| b.num_rows()).sum::<usize>());
    for s in [a, b, local] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_scene_id_sent_to_two_servers_at_once_is_stored_once() {
    let gt = utm_geotransform(300);
    // A short request timeout: gc may then take objects 15 s old.
    let short = |c: &mut Config| c.limits.request_timeout = std::time::Duration::from_secs(5);
    let a = shared_server_with("race", short).await;
    let b = shared_server_with("race", short).await;
    let mut ca = a.client().await;
    create_red_collection(&mut ca, "s2").await;
    let mut cb = b.client().await;
    for round in 0..5i64 {
        let req = ingest_request("s2", &format!("twice-{round}"), JUN + round * DAY, gt, 300, "nearest");
        let (ra, rb) = tokio::join!(ca.ingest(&req, red_batches(raster(300, 7), 300)), cb.ingest(&req, red_batches(raster(300, 7), 300)));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!([ra.duplicate, rb.duplicate].iter().filter(|d| !**d).count(), 1, "round {round}: exactly one is stored: {ra:?} {rb:?}");
    }
    for c in [&mut ca, &mut cb] {
        let d = c.describe("s2").await.unwrap();
        assert_eq!(d["scenes"], 5, "{d}");
    }
    let rows = read_all(&mut ca, "s2").await;
    assert_eq!(rows, read_all(&mut cb, "s2").await);
    let scenes: Vec<String> = rows
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("scene_id").unwrap();
            let s = arrow_array::cast::AsArray::as_string::<i32>(col);
            s.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    let mut unique = scenes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5);

    // The losers' objects were removed or are orphans: gc leaves reads alone.
    let s3 = store().store();
    let orphan = object_store::path::Path::from("race/s2/tiles/x0000_y0000/2024-06/red/orphan.arrows");
    s3.put(&orphan, PutPayload::from_static(b"left by a crashed writer")).await.unwrap();
    let (code, msg) = code_of(ca.action("gc", &serde_json::json!({"collection": "s2", "older_than_secs": 0})).await);
    assert_eq!(code, tonic::Code::InvalidArgument, "an ingest still running could lose its objects: {msg}");
    tokio::time::sleep(std::time::Duration::from_secs(16)).await;
    let gc = ca.action("gc", &serde_json::json!({"collection": "s2", "older_than_secs": 15})).await.unwrap();
    assert!(gc["objects_removed"].as_u64().unwrap() >= 1, "{gc}");
    assert!(matches!(s3.head(&orphan).await, Err(object_store::Error::NotFound { .. })));
    assert_eq!(read_all(&mut cb, "s2").await, rows, "gc changes no read");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_store_fails_at_start_with_url_and_reason() {
    store();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    // The endpoint comes from the environment; this process's points at
    // the live store, so the server runs as a child with another.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pixelquery"))
        .args(["serve", "--listen", "127.0.0.1:0", "--warehouse", "s3://pqtest/unreachable", "--cache-dir"])
        .arg(tempfile::tempdir().unwrap().path().join("copy"))
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("s3://pqtest/unreachable"), "{text}");
    assert!(!text.contains(seaweed::SECRET_KEY), "no secret in errors: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_table_is_a_delta_table_with_one_commit_per_scene() {
    let gt = utm_geotransform(300);
    let a = shared_server("delta").await;
    let mut ca = a.client().await;
    create_red_collection(&mut ca, "s2").await;
    for i in 0..2i64 {
        ca.ingest(&ingest_request("s2", &format!("d-{i}"), JUN + i * DAY, gt, 300, "nearest"), red_batches(raster(300, 3), 300)).await.unwrap();
    }
    let s3 = store().store();
    let log = object_store::path::Path::from("delta/s2/_catalog/_delta_log");
    let mut entries: Vec<String> =
        futures::TryStreamExt::try_collect::<Vec<_>>(s3.list(Some(&log))).await.unwrap().into_iter().map(|m| m.location.to_string()).collect();
    entries.sort();
    // The table's creation, then one commit per scene.
    assert_eq!(entries.iter().filter(|e| e.ends_with(".json")).count(), 3, "{entries:?}");
    let last = s3.get(&object_store::path::Path::from(entries.iter().rfind(|e| e.ends_with(".json")).unwrap().as_str())).await.unwrap().bytes().await.unwrap();
    let text = String::from_utf8_lossy(&last);
    assert!(text.contains("\"txn\"") && text.contains("\"appId\":\"d-1\""), "{text}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_fails_the_put_with_unavailable_and_commits_nothing() {
    // A store of its own: this test stops it.
    let mut own = Seaweed::start();
    let url = format!("s3://{}/outage", seaweed::BUCKET);
    // The process environment points at the shared store; a server on its
    // own store runs as a child.
    let copy = tempfile::tempdir().unwrap();
    let mut cmd = serve_command(std::path::Path::new(&url));
    cmd.arg("--cache-dir").arg(copy.path());
    for (k, v) in own.env() {
        cmd.env(k, v);
    }
    let (mut child, uri) = spawn_server(&mut cmd);
    let mut c = pixelquery_client::Client::connect(&uri).await.unwrap();
    create_red_collection(&mut c, "s2").await;
    let gt = utm_geotransform(300);
    c.ingest(&ingest_request("s2", "before", JUN, gt, 300, "nearest"), red_batches(raster(300, 1), 300)).await.unwrap();
    own.kill();
    let (code, msg) = code_of(c.ingest(&ingest_request("s2", "during", JUN + DAY, gt, 300, "nearest"), red_batches(raster(300, 2), 300)).await);
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    assert!(!msg.contains(seaweed::SECRET_KEY) && !msg.contains(seaweed::ACCESS_KEY), "{msg}");
    own.restart();
    let d = c.describe("s2").await.unwrap();
    assert_eq!(d["scenes"], 1, "the failed put left no committed trace: {d}");
    let again = c.ingest(&ingest_request("s2", "during", JUN + DAY, gt, 300, "nearest"), red_batches(raster(300, 2), 300)).await.unwrap();
    assert!(!again.duplicate);
    assert_eq!(c.describe("s2").await.unwrap()["scenes"], 2);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_scene_leaves_every_server_and_can_come_back() {
    let gt = utm_geotransform(300);
    let a = shared_server("delete").await;
    let b = shared_server("delete").await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    create_red_collection(&mut ca, "s2").await;
    for i in 0..3i64 {
        ca.ingest(&ingest_request("s2", &format!("scene-{i}"), JUN + i * DAY, gt, 300, "bilinear"), red_batches(raster(300, i as u16), 300)).await.unwrap();
    }
    let scene_ids = |batches: &[RecordBatch]| {
        let mut ids: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                arrow_array::cast::AsArray::as_string::<i32>(b.column_by_name("scene_id").unwrap()).iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let out = ca.action("delete", &serde_json::json!({"collection": "s2", "scene_id": "scene-1"})).await.unwrap();
    assert_eq!(out["scenes_removed"], serde_json::json!(["scene-1"]), "{out}");
    assert!(out["rows_removed"].as_u64().unwrap() >= 1, "{out}");
    let rows = read_all(&mut cb, "s2").await;
    assert_eq!(scene_ids(&rows), ["scene-0", "scene-2"]);
    assert_eq!(cb.describe("s2").await.unwrap()["scenes"], 2);
    assert_eq!(read_all(&mut ca, "s2").await, rows);
    // A server starting now replays the log (the add, then the delete).
    let c = shared_server("delete").await;
    let mut cc = c.client().await;
    assert_eq!(read_all(&mut cc, "s2").await, rows);
    let files = |s: &TestServer| chunk_files(s, "s2");
    assert_eq!(files(&a), files(&b));
    assert_eq!(files(&a), files(&c));

    let (code, msg) = code_of(ca.action("delete", &serde_json::json!({"collection": "s2", "scene_id": "scene-1"})).await);
    assert_eq!(code, tonic::Code::NotFound, "{msg}");
    // A deleted scene can be ingested again.
    let again = cb.ingest(&ingest_request("s2", "scene-1", JUN + DAY, gt, 300, "bilinear"), red_batches(raster(300, 1), 300)).await.unwrap();
    assert!(!again.duplicate);
    assert_eq!(scene_ids(&read_all(&mut cc, "s2").await), ["scene-0", "scene-1", "scene-2"]);
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

/// Compaction and deletes by tile, time and scene on object storage give
/// the rows the local backend gives for the same calls, on every server;
/// a server starting afterwards replays them to the same chunk bytes; a
/// ticket planned before a compaction that mixed later rows among its own
/// is refused with `Aborted`, not answered wrongly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_and_deletes_match_the_local_backend() {
    let gt = utm_geotransform(300);
    let ([a, b, local], [mut ca, mut cb, mut cl]) = beside(shared_server("rewrite").await, shared_server("rewrite").await).await;
    // June and July, out of time order, through both servers.
    for (i, day) in [3, 0, 5, 31, 33, 1].into_iter().enumerate() {
        let shared = if i.is_multiple_of(2) { &mut ca } else { &mut cb };
        ingest_beside(shared, &mut cl, i, day).await;
    }
    let all = proto::Query { collection: "s2".into(), ..Default::default() };
    let tickets = |info: arrow_flight::FlightInfo| info.endpoint.into_iter().map(|e| e.ticket.unwrap().ticket).collect::<Vec<_>>();
    let early = tickets(ca.flight_info(&all).await.unwrap());
    let mut before = Vec::new();
    for t in &early {
        before.extend(ca.do_get(t.clone()).await.unwrap());
    }

    let compact = serde_json::json!({"collection": "s2"});
    let out = ca.action("compact", &compact).await.unwrap();
    assert_eq!(out, cl.action("compact", &compact).await.unwrap());
    assert!(out["chunks_rewritten"].as_u64().unwrap() > 0, "{out}");
    let rows = read_all(&mut cl, "s2").await;
    assert_eq!(read_all(&mut ca, "s2").await, rows, "compacted like the local backend");
    assert_eq!(read_all(&mut cb, "s2").await, rows, "and on the other server");
    // Compacting again finds nothing to do.
    assert_eq!(cb.action("compact", &compact).await.unwrap()["chunks_rewritten"], 0);
    // A ticket from before holds the same rows (now in time order).
    let mut after = Vec::new();
    for t in &early {
        after.extend(cb.do_get(t.clone()).await.unwrap());
    }
    assert_eq!(row_keys(&after), row_keys(&before));

    // A scene dated among June's rows, then a compaction: a ticket planned
    // before the scene would need rows out of the middle of a batch on the
    // server that applied both (another, still at the ticket's version,
    // answers it as planned).
    let pinned = tickets(cb.flight_info(&all).await.unwrap());
    ingest_beside(&mut ca, &mut cl, 6, 2).await;
    let first_tile = row_keys(&rows)[0].0.clone();
    let one_tile = serde_json::json!({"collection": "s2", "tiles": [first_tile]});
    assert_eq!(ca.action("compact", &one_tile).await.unwrap(), cl.action("compact", &one_tile).await.unwrap());
    let mut refused = 0;
    for t in &pinned {
        match ca.do_get(t.clone()).await {
            Ok(_) => {}
            Err(e) => {
                let (code, msg) = code_of::<()>(Err(e));
                assert_eq!(code, tonic::Code::Aborted, "{msg}");
                assert!(msg.contains("plan the query again"), "{msg}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 1, "the compacted June chunk of {first_tile} is refused");
    assert_eq!(read_all(&mut cb, "s2").await, read_all(&mut cl, "s2").await);

    // Deletes by tile, by time range, then a whole scene: the same counts
    // and rows as the local backend.
    for filter in [
        serde_json::json!({"collection": "s2", "tile": first_tile}),
        serde_json::json!({"collection": "s2", "start": "2024-07-01T00:00:00Z", "end": "2024-07-03T00:00:00Z"}),
        serde_json::json!({"collection": "s2", "scene_id": "scene-0"}),
        serde_json::json!({"collection": "s2", "scene_id": "scene-5", "start": "2024-06-01T00:00:00Z"}),
    ] {
        let out = cb.action("delete", &filter).await.unwrap();
        assert_eq!(out, cl.action("delete", &filter).await.unwrap(), "{filter}");
        assert!(out["rows_removed"].as_u64().unwrap() > 0, "{filter}: {out}");
        let rows = read_all(&mut cl, "s2").await;
        assert_eq!(read_all(&mut ca, "s2").await, rows, "{filter}");
        assert_eq!(read_all(&mut cb, "s2").await, rows, "{filter}");
        assert_eq!(ca.describe("s2").await.unwrap()["scenes"], cl.describe("s2").await.unwrap()["scenes"], "{filter}");
    }
    // The July delete took scene-3 whole; it can be ingested again.
    let req = ingest_request("s2", "scene-3", JUN + 31 * DAY, gt, 300, "bilinear");
    assert!(!ca.ingest(&req, red_batches(raster(300, 3), 300)).await.unwrap().duplicate);
    cl.ingest(&req, red_batches(raster(300, 3), 300)).await.unwrap();
    let rows = read_all(&mut cl, "s2").await;
    assert_eq!(read_all(&mut cb, "s2").await, rows);

    // A server starting now replays adds, compactions and deletes to the
    // same chunk bytes.
    let c = shared_server("rewrite").await;
    let mut cc = c.client().await;
    assert_eq!(read_all(&mut cc, "s2").await, rows);
    assert_eq!(chunk_files(&a, "s2"), chunk_files(&b, "s2"));
    assert_eq!(chunk_files(&a, "s2"), chunk_files(&c, "s2"));
    for s in [a, b, c, local] {
        s.shutdown().await;
    }
}

/// The same protocol on Azure Blob Storage (Azurite on loopback): its
/// conditional put has one winner; scenes ingested through one server read
/// back on another, and a compaction and a delete give the local
/// backend's rows, with the same chunk bytes on both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_blob_storage_serves_the_same_protocol() {
    let az = azurite::Azurite::start();
    az.export();
    az.create_container("pqazure");
    one_winner_each_round(Arc::new(az.store("pqazure")), 10).await;

    let server = async || TestServer::start_with(tempfile::tempdir().unwrap(), |c: &mut Config| c.shared = Some("az://pqazure/warehouse".into())).await;
    let ([a, b, local], [mut ca, mut cb, mut cl]) = beside(server().await, server().await).await;
    for (i, day) in [2, 0, 1].into_iter().enumerate() {
        ingest_beside(&mut ca, &mut cl, i, day).await;
    }
    let retry = ingest_request("s2", "scene-1", JUN, utm_geotransform(300), 300, "bilinear");
    assert!(cb.ingest(&retry, red_batches(raster(300, 1), 300)).await.unwrap().duplicate, "a scene id is stored once");
    assert_eq!(read_all(&mut cb, "s2").await, read_all(&mut cl, "s2").await);
    let compact = serde_json::json!({"collection": "s2"});
    assert_eq!(cb.action("compact", &compact).await.unwrap(), cl.action("compact", &compact).await.unwrap());
    let delete = serde_json::json!({"collection": "s2", "scene_id": "scene-2"});
    assert_eq!(ca.action("delete", &delete).await.unwrap(), cl.action("delete", &delete).await.unwrap());
    let rows = read_all(&mut cl, "s2").await;
    assert_eq!(read_all(&mut ca, "s2").await, rows);
    assert_eq!(read_all(&mut cb, "s2").await, rows);
    assert_eq!(chunk_files(&a, "s2"), chunk_files(&b, "s2"));
    for s in [a, b, local] {
        s.shutdown().await;
    }
}

/// A scene sent again with `replace` (another acquisition time) takes the
/// old one's place in one commit, on every server, as on a local
/// warehouse; without `replace` it is refused there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_scene_matches_the_local_backend() {
    let ([a, b, local], [mut ca, mut cb, mut cl]) = beside(shared_server("replace").await, shared_server("replace").await).await;
    for i in 0..2 {
        ingest_beside(&mut ca, &mut cl, i, i as i64).await;
    }
    let mut again = ingest_request("s2", "scene-0", JUN + 7 * DAY, utm_geotransform(300), 300, "bilinear");
    let (code, msg) = code_of(cb.ingest(&again, red_batches(raster(300, 9), 300)).await);
    assert_eq!(code, tonic::Code::AlreadyExists, "{msg}");
    again.replace = true;
    let put = cb.ingest(&again, red_batches(raster(300, 9), 300)).await.unwrap();
    assert!(!put.duplicate);
    cl.ingest(&again, red_batches(raster(300, 9), 300)).await.unwrap();
    let rows = read_all(&mut cl, "s2").await;
    assert_eq!(read_all(&mut ca, "s2").await, rows);
    assert_eq!(read_all(&mut cb, "s2").await, rows);
    assert_eq!(ca.describe("s2").await.unwrap()["scenes"], 2);
    // A retry of the replacement is a duplicate.
    assert!(ca.ingest(&again, red_batches(raster(300, 9), 300)).await.unwrap().duplicate);
    // Replacing an id nothing holds stores it as a new scene.
    let mut fresh = ingest_request("s2", "scene-7", JUN + 8 * DAY, utm_geotransform(300), 300, "bilinear");
    fresh.replace = true;
    assert!(!cb.ingest(&fresh, red_batches(raster(300, 7), 300)).await.unwrap().duplicate);
    cl.ingest(&fresh, red_batches(raster(300, 7), 300)).await.unwrap();
    let rows = read_all(&mut cl, "s2").await;
    assert_eq!(read_all(&mut ca, "s2").await, rows);
    assert_eq!(ca.describe("s2").await.unwrap()["scenes"], 3);
    let c = shared_server("replace").await;
    let mut cc = c.client().await;
    assert_eq!(read_all(&mut cc, "s2").await, rows);
    assert_eq!(chunk_files(&a, "s2"), chunk_files(&b, "s2"));
    assert_eq!(chunk_files(&a, "s2"), chunk_files(&c, "s2"));
    for s in [a, b, c, local] {
        s.shutdown().await;
    }
}
