//! `run(listener, state, shutdown)`: serves Flight on an already bound
//! listener until `shutdown` resolves. Tests call it on port 0.

use std::future::Future;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::config::Config;
use crate::flight::direct_get::DirectGet;
use crate::flight::{AppState, Service};
use crate::storage::Warehouse;

/// HTTP/2 flow-control window per stream (the connection gets twice this).
pub const STREAM_WINDOW: u32 = 8 << 20;

/// Opens the warehouse named by `config` (rebuilding its catalog) and
/// returns the shared state. Blocking.
pub fn open_state(config: &Config) -> crate::error::Result<Arc<AppState>> {
    let warehouse = Arc::new(Warehouse::open_with(&config.warehouse, config.writes)?);
    Ok(Arc::new(AppState::new(warehouse, config)))
}

/// Serves until `shutdown` completes; in-flight calls are allowed to finish.
pub async fn run(listener: TcpListener, state: Arc<AppState>, config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), tonic::transport::Error> {
    let service = Arc::new(Service::new(state));
    let generated = FlightServiceServer::from_arc(service.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // DoGet bodies go out without tonic's encode copy (see `direct_get`).
    let svc = DirectGet::new(generated, service, config.max_message_bytes);
    // The builder's tcp_nodelay only reaches sockets tonic accepts itself;
    // these come from our listener. Without it, Nagle's algorithm and the
    // client's delayed ACK held every small answer back ~40 ms.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        }
        conn
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(pem) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&pem.cert, &pem.key);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    builder
        .tcp_nodelay(true)
        // HTTP/2's default 64 KiB flow-control windows make a DoPut wait for
        // a window update every 64 KiB; rasters and chunks move in MiBs.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(2 * STREAM_WINDOW))
        .max_frame_size(Some(1 << 20))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
