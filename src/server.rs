//! `run(listener, state, shutdown)`: serves Flight on an already bound
//! listener until `shutdown` resolves. Tests call it on port 0.
//!
//! Connections are served by hyper's HTTP/2 server directly rather than
//! through `tonic::transport::Server`, which does not expose the per-stream
//! send buffer (see [`SEND_BUFFER`]). The Flight service is tonic's
//! generated one behind [`DirectGet`]; this module adds what tonic's
//! transport added around it: TLS, the client's `grpc-timeout`, and a
//! graceful shutdown that lets calls in flight finish.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tonic::body::Body;
use tonic::codegen::Service as TowerService;
use tonic::Status;

use crate::config::{Config, TlsPem};
use crate::flight::direct_get::DirectGet;
use crate::flight::Service;
use crate::state::AppState;
use crate::storage::Warehouse;

/// HTTP/2 flow-control window per stream (the connection gets twice this).
pub const STREAM_WINDOW: u32 = 8 << 20;

/// Bytes a stream may queue for the connection before its task waits.
/// hyper's default of 400 KiB holds about three 128 KiB chunk messages, so
/// a DoGet's task would park and be woken by the connection's task every
/// few messages (a context switch each; `docs/performance.md`). The queued
/// bytes are mostly `Bytes` of the chunk files' mappings, not copies.
pub const SEND_BUFFER: usize = 8 << 20;

/// A TLS handshake that has not finished by then is dropped.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// A plain connection that has sent no byte by then is dropped: silent
/// sockets would otherwise hold a file descriptor each for ever.
pub const FIRST_BYTE: Duration = Duration::from_secs(10);

/// How often an idle connection is pinged, and how long its answer may
/// take before the connection is dropped (a peer that went away).
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(20));

/// Opens the warehouse named by `config` (rebuilding its catalog) and
/// returns the shared state. Blocking.
pub fn open_state(config: &Config) -> crate::error::Result<Arc<AppState>> {
    let warehouse = match &config.shared {
        None => Warehouse::open_with(&config.warehouse, config.writes)?,
        Some(url) => {
            if config.warehouse == crate::config::default_cache_dir() && config.warehouse.exists() {
                // A copy a server of this process id left: rebuilt whole.
                std::fs::remove_dir_all(&config.warehouse).map_err(crate::error::Error::io(&config.warehouse))?;
            }
            Warehouse::open_remote(url, &config.warehouse, config.writes, tokio::runtime::Handle::current())?
        }
    };
    let warehouse = Arc::new(warehouse);
    Ok(Arc::new(AppState::new(warehouse, config)))
}

/// Serves until `shutdown` completes: then stops accepting and waits for
/// the open connections' calls to finish. Fails only on unusable TLS
/// material; a failed accept or connection is logged and serving goes on.
pub async fn run(listener: TcpListener, state: Arc<AppState>, config: &Config, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let (auth, limit) = (state.auth.clone(), state.limits.request_timeout + BODY_GRACE);
    let service = Arc::new(Service::new(state));
    let generated =
        FlightServiceServer::from_arc(service.clone()).max_decoding_message_size(config.max_message_bytes).max_encoding_message_size(config.max_message_bytes);
    // DoGet bodies go out without tonic's encode copy (see `direct_get`).
    let svc = ClientDeadline { inner: DirectGet::new(generated, service, config.max_message_bytes), auth, limit, peer: None, calls: Arc::default() };
    let idle = config.limits.idle_timeout;
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        // HTTP/2's default 64 KiB flow-control windows make a DoPut wait for
        // a window update every 64 KiB; rasters and chunks move in MiBs.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(2 * STREAM_WINDOW)
        .max_frame_size(1 << 20)
        .max_send_buf_size(SEND_BUFFER)
        .keep_alive_interval(Some(KEEP_ALIVE.0))
        .keep_alive_timeout(KEEP_ALIVE.1);
    // hyper's other defaults stay: at most 200 concurrent streams per
    // connection (tonic's transport set no limit), 16 KiB of headers.

    // Each connection holds a receiver; a message asks them to finish, and
    // `closed` resolves once the last one has.
    let (stop, stopping) = tokio::sync::watch::channel(());
    let cap = config.limits.connection_cap();
    let connections = Arc::new(tokio::sync::Semaphore::new(cap));
    let mut refused_logged: Option<std::time::Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (or a connection reset before it
                    // was accepted): wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without it, Nagle's algorithm and the client's delayed ACK held
        // every small answer back ~40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Full: closed at once, so the descriptors stay for the
            // connections served and the files they read.
            drop(stream);
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(%peer, cap, "connection limit reached (--max-connections); new connections are closed");
                refused_logged = Some(std::time::Instant::now());
            }
            continue;
        };
        let (http, mut svc, tls, stopping) = (http.clone(), svc.clone(), tls.clone(), stopping.clone());
        svc.peer = Some(peer);
        let calls = Arc::new(Calls::default());
        svc.calls = calls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let hyper_svc = TowerToHyperService::new(svc);
            let served = match tls {
                None => {
                    // HTTP/2 starts with the client's preface: wait for its
                    // first byte, not for ever.
                    if !matches!(tokio::time::timeout(FIRST_BYTE, stream.peek(&mut [0u8; 1])).await, Ok(Ok(n)) if n > 0) {
                        return tracing::debug!(%peer, "no bytes from a new connection; closed");
                    }
                    serve_connection(&http, TokioIo::new(stream), hyper_svc, stopping, &calls, idle).await
                }
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(&http, TokioIo::new(stream), hyper_svc, stopping, &calls, idle).await,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(stopping);
    // Fails only if no connection is open.
    let _ = stop.send(());
    stop.closed().await;
    Ok(())
}

/// The calls in flight on one connection (a response body streaming
/// counts) and when the last one ended.
#[derive(Default)]
struct Calls {
    open: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Calls {
    fn start(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// How long the connection has had no call in flight (`None`: one is).
    fn idle_for(&self, opened: std::time::Instant) -> Option<Duration> {
        if self.open.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(opened);
        Some(last.elapsed())
    }
}

/// Held while a call runs and its answer streams; dropped, it marks the
/// time.
struct CallGuard(Arc<Calls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A response body that holds its call's guard until it is dropped.
struct Guarded {
    inner: Body,
    _guard: CallGuard,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one connection; once `stopping` receives, or no call has been
/// in flight for `idle`, lets its calls in flight finish and closes it.
async fn serve_connection<I, S>(
    http: &hyper::server::conn::http2::Builder<TokioExecutor>,
    io: I,
    svc: S,
    mut stopping: tokio::sync::watch::Receiver<()>,
    calls: &Calls,
    idle: Duration,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(http.serve_connection(io, svc));
    let opened = std::time::Instant::now();
    let check = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::select! {
            served = &mut conn => return served,
            _ = stopping.changed() => break,
            _ = tokio::time::sleep(check) => {
                if calls.idle_for(opened).is_some_and(|d| d >= idle) {
                    tracing::debug!(?idle, "connection idle; closed");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// The service behind the connections: takes hyper's request bodies,
/// refuses a call without a valid token from its headers alone, before any
/// of its body is read (with auth on; `Handshake` signs in, so it passes),
/// and ends a call whose client's `grpc-timeout`, or the server's request
/// timeout, passes before it answered. The role a call needs is checked
/// inside, with the request timeout that covers its handler; this one also
/// covers reading a request body, which tonic does before the handler.
#[derive(Clone)]
struct ClientDeadline<S> {
    inner: S,
    auth: Option<Arc<crate::auth::Auth>>,
    limit: Duration,
    /// The connection's peer, on every log line of its calls (auth
    /// failures included).
    peer: Option<std::net::SocketAddr>,
    /// The connection's calls in flight, for its idle timeout.
    calls: Arc<Calls>,
}

/// What the outer deadline adds to `--request-timeout-secs`: the handler's
/// own deadline fires first and a DoPut then has time to undo its appends.
const BODY_GRACE: Duration = Duration::from_secs(15);

const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";

impl<S> ClientDeadline<S> {
    /// The refusal of a call whose headers carry no valid token, with a
    /// request id as every answer has (logged with it).
    fn refusal(&self, req: &http::Request<Incoming>) -> Option<Status> {
        let auth = self.auth.as_ref()?;
        if req.uri().path() == HANDSHAKE_PATH {
            return None;
        }
        let error = auth.check_headers(req.headers().get_all("authorization").iter().map(|v| v.as_bytes())).err()?;
        let id = crate::flight::request_id();
        let mut status = tracing::info_span!("call", id, path = req.uri().path(), peer = ?self.peer).in_scope(|| error.into_status());
        if let Ok(v) = id.to_string().parse() {
            status.metadata_mut().insert("x-request-id", v);
        }
        Some(status)
    }
}

impl<S> TowerService<http::Request<Incoming>> for ClientDeadline<S>
where
    S: TowerService<http::Request<Body>, Response = http::Response<Body>, Error = std::convert::Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<http::Response<Body>, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Incoming>) -> Self::Future {
        let guard = self.calls.start();
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(crate::auth::Peer(peer.ip()));
        }
        if let Some(status) = self.refusal(&req) {
            // The body is dropped unread: the stream is reset, nothing held.
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let client = req.headers().get("grpc-timeout").and_then(|v| grpc_timeout(v.as_bytes()));
        let server = self.limit;
        let span = tracing::info_span!("conn", peer = ?self.peer);
        let answer = tracing::Instrument::instrument(self.inner.call(req.map(Body::new)), span);
        Box::pin(async move {
            let limit = client.map_or(server, |c| c.min(server));
            match tokio::time::timeout(limit, answer).await {
                Ok(Ok(answer)) => Ok(answer.map(|inner| Body::new(Guarded { inner, _guard: guard }))),
                Ok(Err(never)) => match never {},
                Err(_) if client.is_some_and(|c| c <= server) => {
                    Ok(Status::deadline_exceeded(format!("the call ran past the client's grpc-timeout of {limit:?}")).into_http())
                }
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the request was not received and answered within the server's request timeout of {} s (--request-timeout-secs)",
                    (server - BODY_GRACE).as_secs()
                ))
                .into_http()),
            }
        })
    }
}

/// A `grpc-timeout` header's duration: at most eight digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`); `None` if malformed (then ignored, as
/// tonic does).
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A TLS acceptor for `pem`'s certificate chain and key, offering HTTP/2.
fn tls_acceptor(pem: &TlsPem) -> io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"));
    let certs = CertificateDer::pem_slice_iter(&pem.cert).collect::<Result<Vec<_>, _>>().map_err(|e| invalid("TLS certificate (--tls-cert)", &e))?;
    if certs.is_empty() {
        return Err(invalid("TLS certificate (--tls-cert)", &"no PEM certificate found"));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| invalid("TLS key (--tls-key)", &e))?;
    // The provider is named: rustls is built with both ring and aws-lc-rs
    // (the object store's HTTP client brings the latter), and then has no
    // process default.
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("TLS certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_spells_them() {
        assert_eq!(grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout(b"10S"), Some(Duration::from_secs(10)));
        assert_eq!(grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(b"99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [&b""[..], b"S", b"10", b"10s", b"123456789S", b"-1S", b"1.5S", b" 1S"] {
            assert_eq!(grpc_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn unusable_tls_material_is_refused_with_the_flag_it_came_from() {
        let err = tls_acceptor(&TlsPem { cert: b"not a certificate".to_vec(), key: Vec::new() }).err().expect("refused");
        assert!(err.to_string().contains("--tls-cert"), "{err}");
    }
}
