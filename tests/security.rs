//! Auth (tokens, roles, Handshake), TLS, and the per-call limits, each
//! against a real server over a real Flight connection.

mod common;

use std::time::Duration;

use arrow_array::RecordBatch;
use common::*;
use futures::{StreamExt, TryStreamExt};
use pixelquery::config::TlsPem;
use pixelquery_client::{proto, Client, ConnectOptions};
use tonic::Code;

const T: i64 = 1718416984000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_trades_a_password_for_a_session_token() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), with_auth).await;
    let mut admin = server.client_with_token(ADMIN_TOKEN).await;
    create_red_collection(&mut admin, "s2").await;

    let mut alice = server.client().await;
    let (code, msg) = code_of(alice.health().await);
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    let token = alice.handshake("alice", "alice-password-0123").await.expect("handshake");
    assert_eq!(token.len(), 64);
    // alice has the write role: she may ingest but not make the server read files.
    alice
        .ingest(&ingest_request("s2", "by-alice", T, utm_geotransform(64), 64, "nearest"), red_batches(raster(64, 0), 64))
        .await
        .expect("write role may DoPut");
    let (code, msg) = code_of(alice.action("ingest_path", &serde_json::json!({"collection": "s2", "paths": ["/tmp"]})).await);
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("admin") && msg.contains("write"), "{msg}");
    // A second connection can use the session token as a bearer token.
    let mut again = server.client_with_token(&token).await;
    assert_eq!(again.health().await.unwrap()["status"], "ok");

    let mut mallory = server.client().await;
    let (code, msg) = code_of(mallory.handshake("alice", "not-her-password-at-all").await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(!msg.contains("not-her-password"), "the password is not echoed: {msg}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_carry_a_request_id() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), with_auth).await;
    let mut anon = server.client().await;
    let err = anon.health().await.unwrap_err();
    let status = err.status().unwrap();
    let id = status.metadata().get("x-request-id").expect("x-request-id on an error").to_str().unwrap().to_string();
    assert!(id.parse::<u64>().is_ok(), "{id}");
    server.shutdown().await;
}

/// A self-signed certificate for `localhost`, made now.
fn test_certificate() -> TlsPem {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    TlsPem { cert: ck.cert.pem().into_bytes(), key: ck.signing_key.serialize_pem().into_bytes() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate_only() {
    let pem = test_certificate();
    let cert = pem.cert.clone();
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), move |c| c.tls = Some(pem)).await;
    assert!(server.uri.starts_with("grpc+tls://"));
    let opts = ConnectOptions { token: None, tls_root_cert: Some(cert) };
    let mut client = Client::connect_with(&server.uri, &opts).await.expect("TLS connect");
    create_red_collection(&mut client, "s2").await;
    client.ingest(&ingest_request("s2", "tls", T, utm_geotransform(64), 64, "nearest"), red_batches(raster(64, 0), 64)).await.unwrap();
    let q = proto::Query { collection: "s2".into(), ..Default::default() };
    let table = client.query(&q).await.unwrap();
    assert!(table.iter().map(RecordBatch::num_rows).sum::<usize>() > 0);

    // Without the CA the handshake fails; plain gRPC to a TLS port fails.
    let untrusted = async { Client::connect_with(&server.uri, &ConnectOptions::default()).await?.health().await };
    assert!(untrusted.await.is_err(), "a client that does not trust the certificate must fail");
    let port = server.uri.rsplit(':').next().unwrap();
    let plain = async { Client::connect(&format!("grpc://127.0.0.1:{port}")).await?.health().await };
    assert!(tokio::time::timeout(Duration::from_secs(10), plain).await.map(|r| r.is_err()).unwrap_or(true));
    server.shutdown().await;
}

/// A DoPut whose rows are fed by the returned sender; it stays open until
/// the sender sends the rest or is dropped.
fn held_put(
    client: &Client,
    scene: &str,
) -> (tokio::sync::mpsc::Sender<RecordBatch>, tokio::task::JoinHandle<pixelquery_client::Result<pixelquery_client::PutSummary>>) {
    held_ingest(client, ingest_request("s2", scene, T, utm_geotransform(64), 64, "nearest"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_the_concurrency_limit_are_refused_not_queued() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.limits.max_concurrent_puts = 1).await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let batches = red_batches(raster(64, 0), 64);
    let (tx, first) = held_put(&client, "first");
    tx.send(batches[0].clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (code, msg) = code_of(client.ingest(&ingest_request("s2", "second", T, utm_geotransform(64), 64, "nearest"), batches.clone()).await);
    assert_eq!(code, Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("--max-concurrent-puts"), "{msg}");
    let (code, _) = code_of(client.action("ingest_path", &serde_json::json!({"collection": "s2", "paths": ["/nonexistent"]})).await);
    assert_eq!(code, Code::ResourceExhausted, "ingest_path takes a write slot too");

    for b in &batches[1..] {
        tx.send(b.clone()).await.unwrap();
    }
    drop(tx);
    assert!(!first.await.unwrap().expect("the first write completes").duplicate);
    // The slot is free again.
    client.ingest(&ingest_request("s2", "third", T, utm_geotransform(64), 64, "nearest"), batches).await.expect("after the first finished");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_request_timeout_fails_and_writes_nothing() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.limits.request_timeout = Duration::from_secs(1)).await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let before = snapshot(&server.warehouse());
    let batches = red_batches(raster(64, 0), 64);
    let (tx, stalled) = held_put(&client, "stalled");
    tx.send(batches[0].clone()).await.unwrap();
    let started = std::time::Instant::now();
    let (code, msg) = code_of(tokio::time::timeout(Duration::from_secs(20), stalled).await.expect("the server ends the call").unwrap());
    assert_eq!(code, Code::DeadlineExceeded, "{msg}");
    assert!(msg.contains("--request-timeout-secs"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(tx);
    assert_eq!(snapshot(&server.warehouse()), before, "a timed-out DoPut writes nothing");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_selecting_more_than_the_query_limit_is_refused() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.limits.max_query_bytes = 400_000).await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    // 600 x 600 px at 10 m spans at least 4 tiles of 256 x 256 px.
    client.ingest(&ingest_request("s2", "big", T, utm_geotransform(600), 600, "nearest"), red_batches(raster(600, 0), 600)).await.unwrap();
    let q = proto::Query { collection: "s2".into(), ..Default::default() };
    let info = client.flight_info(&q).await.expect("GetFlightInfo is not limited");
    assert!(info.total_bytes > 400_000, "{}", info.total_bytes);
    assert!(info.endpoint.len() >= 4);
    let mut whole = Vec::new();
    prost::Message::encode(&q, &mut whole).unwrap();
    let (code, msg) = code_of(client.flight().do_get(arrow_flight::Ticket::new(whole)).await.map_err(Into::into).map(|_| ()));
    assert_eq!(code, Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("--max-query-mb"), "{msg}");
    // Each endpoint is small enough.
    for ep in &info.endpoint {
        let batches: Vec<RecordBatch> = client.flight().do_get(ep.ticket.clone().unwrap()).await.unwrap().try_collect().await.unwrap();
        assert!(!batches.is_empty());
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_clients_grpc_timeout_ends_with_deadline_exceeded() {
    let server = TestServer::start_in(tempfile::tempdir().unwrap()).await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let before = snapshot(&server.warehouse());
    // Plain HTTP/2, because gRPC clients enforce their own deadline too and
    // would hide whether the server does: a DoPut that sends nothing.
    let addr = server.uri.trim_start_matches("grpc://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/arrow.flight.protocol.FlightService/DoPut"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(())
        .unwrap();
    let started = std::time::Instant::now();
    let (answer, _open_body) = h2.send_request(request, false).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), answer).await.expect("the server ends the call").unwrap();
    let header = |name: &str| answer.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert_eq!(header("grpc-status"), (Code::DeadlineExceeded as i32).to_string(), "{:?}", answer.headers());
    assert!(header("grpc-message").contains("grpc-timeout"), "{:?}", answer.headers());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(snapshot(&server.warehouse()), before, "a timed-out DoPut writes nothing");
    server.shutdown().await;
}

/// A CRS given as a URL or a file name is refused without being read: no
/// connection reaches the URL's listener, no file is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crs_definitions_never_fetch_urls_or_read_files() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/crs.prj", listener.local_addr().unwrap());
    let prj = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        prj.path(),
        "GEOGCS[\"WGS 84\",DATUM[\"WGS_1984\",SPHEROID[\"WGS 84\",6378137,298.257223563]],PRIMEM[\"Greenwich\",0],UNIT[\"degree\",0.0174532925199433]]",
    )
    .unwrap();
    for crs in [url.as_str(), prj.path().to_str().unwrap(), "+init=epsg:4326"] {
        let q = pixelquery_client::proto::Query { collection: "s2".into(), bbox: vec![127.0, 37.5, 127.1, 37.6], bbox_crs: crs.into(), ..Default::default() };
        let (code, msg) = code_of(client.flight_info(&q).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{crs}: {msg}");
        assert!(msg.contains("bbox_crs") && msg.contains("not read"), "{crs}: {msg}");
    }
    assert!(listener.accept().is_err(), "the server connected to the CRS URL");
    server.shutdown().await;
}

/// Two `authorization` headers are refused, whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_refused() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), with_auth).await;
    let channel = tonic::transport::Endpoint::from_shared(server.uri.clone()).unwrap().connect().await.unwrap();
    let mut raw = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    for (first, second) in [(READ_TOKEN, "nonsense"), ("nonsense", READ_TOKEN), (READ_TOKEN, READ_TOKEN)] {
        let mut request = tonic::Request::new(arrow_flight::Action::new("health", ""));
        request.metadata_mut().append("authorization", format!("Bearer {first}").parse().unwrap());
        request.metadata_mut().append("authorization", format!("Bearer {second}").parse().unwrap());
        let status = raw.do_action(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("one authorization header"), "{status:?}");
    }
    let mut one = tonic::Request::new(arrow_flight::Action::new("health", ""));
    one.metadata_mut().insert("authorization", format!("Bearer {READ_TOKEN}").parse().unwrap());
    assert!(raw.do_action(one).await.is_ok());
    server.shutdown().await;
}

/// A connection that sends nothing is closed after the first-byte timeout
/// instead of holding a descriptor for ever; clients meanwhile are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start().await;
    let addr = server.uri.trim_start_matches("grpc://").to_string();
    let mut silent: Vec<tokio::net::TcpStream> = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut client = server.client().await;
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    let started = std::time::Instant::now();
    for s in &mut silent {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(pixelquery::server::FIRST_BYTE + Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent connection was still open: {read:?}");
    }
    assert!(started.elapsed() <= pixelquery::server::FIRST_BYTE + Duration::from_secs(5));
    server.shutdown().await;
}

/// Plain HTTP/2 to the server: a DoAction (unary: tonic reads its whole
/// body before the handler) announcing a 60 MiB message and sending a few
/// bytes of it, with `token` as its bearer token if any. Returns the
/// answer's headers, or `None` if none came within 5 s.
async fn unfinished_action(addr: &str, token: Option<&str>) -> Option<http::HeaderMap> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{addr}/arrow.flight.protocol.FlightService/DoAction"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let (answer, mut body) = h2.send_request(request.body(()).unwrap(), false).unwrap();
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(60u32 << 20).to_be_bytes());
    prefix.extend_from_slice(b"\x0a\x06health");
    body.send_data(prefix.into(), false).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer).await.ok()?.ok()?;
    std::mem::forget(body);
    Some(answer.headers().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_are_refused_before_their_body_is_read() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), with_auth).await;
    let addr = server.uri.trim_start_matches("grpc://").to_string();
    for token in [None, Some("not-a-token")] {
        let started = std::time::Instant::now();
        let headers = unfinished_action(&addr, token).await.expect("an answer before the body is complete");
        assert_eq!(headers.get("grpc-status").map(|v| v.to_str().unwrap().to_string()), Some((Code::Unauthenticated as i32).to_string()), "{headers:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // A valid token's call waits for its body, as it should.
    assert!(unfinished_action(&addr, Some(READ_TOKEN)).await.is_none());
    // Served as ever.
    let mut client = server.client_with_token(READ_TOKEN).await;
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    server.shutdown().await;
}

/// Past `--max-connections`, new connections are closed at once (the
/// descriptors stay for the files the served ones need); one let go makes
/// room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_and_room_comes_back() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.limits.max_connections = Some(3)).await;
    let addr = server.uri.trim_start_matches("grpc://").to_string();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        let task = tokio::spawn(connection);
        idle.push((h2.ready().await.unwrap(), task));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = pixelquery_client::Client::connect(&server.uri).await?;
        c.health().await
    })
    .await
    .expect("refused at once, not held");
    assert!(refused.is_err(), "a fourth connection is served: {refused:?}");
    let (h2, task) = idle.pop().unwrap();
    drop(h2);
    task.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = server.client().await;
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    server.shutdown().await;
}

/// A DoGet whose client stops reading gives its reader thread back after
/// the write-stall limit, and the stream ends with `DeadlineExceeded`
/// (never as if complete) when the client reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_client_stops_reading_is_ended_not_parked() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.limits.write_stall = Duration::from_millis(500)).await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    // More than the client's 64 KiB window, the server's send buffer and
    // the reader's queue hold.
    for k in 0..20 {
        let req = ingest_request("s2", &format!("s{k:02}"), T + k * 86_400_000, utm_geotransform(1024), 1024, "nearest");
        client.ingest(&req, red_batches(raster(1024, k as u16), 1024)).await.unwrap();
    }
    let whole = proto::Query { collection: "s2".into(), ..Default::default() };
    let ticket = prost::Message::encode_to_vec(&whole);
    let channel = tonic::transport::Endpoint::from_shared(server.uri.replace("grpc://", "http://")).unwrap().connect().await.unwrap();
    let mut flight = arrow_flight::FlightClient::new(channel);
    let mut stream = flight.do_get(arrow_flight::Ticket::new(ticket)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut end = Ok(0usize);
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => end = end.map(|n| n + b.num_rows()),
            Err(e) => {
                end = Err(e);
                break;
            }
        }
    }
    let err = end.expect_err("the stream ends with an error");
    assert!(err.to_string().contains("did not read"), "{err}");
    // Served as ever.
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    server.shutdown().await;
}

/// A live HTTP/2 connection with no call in flight is closed after
/// `--idle-timeout-secs`; one with a call in flight is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_busy_ones_kept() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.limits.idle_timeout = Duration::from_secs(1)).await;
    let addr = server.uri.trim_start_matches("grpc://").to_string();
    let open = |addr: String| async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        (h2, tokio::spawn(connection))
    };
    // Idle after one finished call.
    let (h2, idle) = open(addr.clone()).await;
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/arrow.flight.protocol.FlightService/ListActions"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (answer, mut body) = h2.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    let mut answer = answer.await.unwrap().into_body();
    while answer.data().await.is_some() {}
    // Busy: a call whose body never ends.
    let (h2b, busy) = open(addr.clone()).await;
    let mut h2b = h2b.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/arrow.flight.protocol.FlightService/DoAction"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (_answer, mut pending) = h2b.send_request(request, false).unwrap();
    pending.send_data(bytes::Bytes::from_static(&[0, 0, 0, 1, 0]), false).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle).await;
    assert!(closed.is_ok(), "the idle connection was still open after 5 s");
    assert!(!busy.is_finished(), "the connection with a call in flight was closed");
    pending.send_reset(h2::Reason::CANCEL);
    busy.abort();
    // Served as ever.
    let mut client = server.client().await;
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    server.shutdown().await;
}

/// Failed Handshakes back off per address too: spraying many user names
/// from one peer is slowed like guessing one user's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_guesses_from_one_address_back_off_whatever_the_names() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), with_auth).await;
    let mut client = server.client().await;
    let mut refused = None;
    for k in 0..12 {
        let (code, message) = code_of(client.handshake(&format!("user{k}"), "guess").await);
        assert_eq!(code, Code::Unauthenticated, "{message}");
        if message.contains("from this address") {
            refused = Some(k);
            break;
        }
    }
    assert_eq!(refused, Some(10), "the 11th name from one address should wait");
    server.shutdown().await;
}

/// With `--quota-mb-per-collection`, a scene that would take a collection
/// past its quota is refused with ResourceExhausted and nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scene_past_the_collection_quota_is_refused_and_not_kept() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.writes.quota_bytes = Some(3 << 20)).await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    client.ingest(&ingest_request("s2", "first", T, utm_geotransform(64), 64, "nearest"), red_batches(raster(64, 0), 64)).await.unwrap();
    let mut refused = None;
    for k in 0..40 {
        let put = client
            .ingest(&ingest_request("s2", &format!("more{k}"), T + k as i64 + 1, utm_geotransform(64), 64, "nearest"), red_batches(raster(64, 0), 64))
            .await;
        if put.is_err() {
            refused = Some((k, code_of(put)));
            break;
        }
    }
    let (k, (code, message)) = refused.expect("the quota never refused a scene");
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("quota") && message.contains("nothing of it was kept"), "{message}");
    let d = client.describe("s2").await.unwrap();
    assert_eq!(d["scenes"], k + 1, "the refused scene left a trace");
    server.shutdown().await;
}
