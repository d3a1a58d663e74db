//! `run(listener, state, shutdown)`: serves Flight on an already bound
//! listener until `shutdown` resolves. Tests call it on port 0.

use std::future::Future;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::flight::{AppState, Service};
use crate::storage::Warehouse;

/// Opens the warehouse named by `config` (rebuilding its catalog) and
/// returns the shared state. Blocking.
pub fn open_state(config: &Config) -> crate::error::Result<Arc<AppState>> {
    let warehouse = Arc::new(Warehouse::open(&config.warehouse)?);
    Ok(Arc::new(AppState::new(warehouse, config)))
}

/// Serves until `shutdown` completes; in-flight calls are allowed to finish.
pub async fn run(listener: TcpListener, state: Arc<AppState>, config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), tonic::transport::Error> {
    let svc = FlightServiceServer::new(Service::new(state))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let mut builder = tonic::transport::Server::builder();
    if let Some(pem) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&pem.cert, &pem.key);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    builder
        .tcp_nodelay(true)
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
