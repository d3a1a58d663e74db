//! Typed Rust client for the PixelQuery Flight server, over
//! `arrow_flight::FlightClient`: collections, raster ingest (DoPut), chunk
//! queries (GetFlightInfo + DoGet), point time series and actions.
//!
//! Requests are the protobuf messages of `proto/` ([`proto`]); actions take
//! and return JSON as the server documents them (`ListActions`).

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightClient, FlightDescriptor, FlightInfo, Ticket};
use arrow_schema::{Field, Schema};
use bytes::Bytes;
use futures::TryStreamExt;
pub use pixelquery_proto::v1 as proto;
use prost::Message;
use serde_json::Value;

/// gRPC message limit of the client, both directions (the server's default).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Rows per DoPut batch are chosen so one batch stays near this size (under
/// the Flight encoder's 2 MiB message size, so batches keep whole rows).
pub const TARGET_BATCH_BYTES: usize = 1 << 20;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Flight(#[from] FlightError),
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("invalid server uri {0:?}")]
    Uri(String),
    #[error("unexpected answer from the server: {0}")]
    Answer(String),
    #[error("invalid raster: {0}")]
    Raster(String),
}

impl ClientError {
    /// The gRPC status the server answered with, if that is what failed.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Flight(FlightError::Tonic(s)) => Some(s),
            _ => None,
        }
    }
}

/// The server's answer to a DoPut (PutResult app_metadata).
pub use pixelquery_proto::json::PutSummary;

/// How to reach a server beyond its URI.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Bearer token sent on every call (servers with auth).
    pub token: Option<String>,
    /// PEM of the CA that signed the server's certificate, for `grpc+tls://`
    /// servers with a private CA; without it the system's roots are used.
    pub tls_root_cert: Option<Vec<u8>>,
}

/// A connection to one server.
pub struct Client {
    inner: FlightClient,
}

impl Client {
    /// Connects to `grpc://host:port` (or `http://`, `grpc+tls://`, `https://`).
    pub async fn connect(uri: &str) -> Result<Self> {
        Self::connect_with(uri, &ConnectOptions::default()).await
    }

    /// Connects with a token and/or TLS settings.
    pub async fn connect_with(uri: &str, opts: &ConnectOptions) -> Result<Self> {
        let bad_uri = || ClientError::Uri(uri.to_string());
        let (http, tls) = if let Some(rest) = uri.strip_prefix("grpc+tls://").or_else(|| uri.strip_prefix("https://")) {
            (format!("https://{rest}"), true)
        } else {
            (uri.replacen("grpc+tcp://", "http://", 1).replacen("grpc://", "http://", 1), false)
        };
        // Windows of MiBs, not HTTP/2's default 64 KiB (see the server's).
        let mut endpoint = tonic::transport::Endpoint::from_shared(http)
            .map_err(|_| bad_uri())?
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20));
        if tls {
            let mut config = tonic::transport::ClientTlsConfig::new();
            config = match &opts.tls_root_cert {
                Some(pem) => config.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => config.with_native_roots(),
            };
            endpoint = endpoint.tls_config(config)?;
        }
        let channel = endpoint.connect().await?;
        let inner = FlightServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut client = Self { inner: FlightClient::new_from_inner(inner) };
        if let Some(token) = &opts.token {
            client.set_token(token)?;
        }
        Ok(client)
    }

    /// Sends `authorization: Bearer <token>` on every following call.
    pub fn set_token(&mut self, token: &str) -> Result<()> {
        self.inner.add_header("authorization", &format!("Bearer {token}"))?;
        Ok(())
    }

    /// Flight `Handshake` with a user name and password (the server's access
    /// file); the session token it returns is used for the following calls
    /// and returned.
    pub async fn handshake(&mut self, user: &str, password: &str) -> Result<String> {
        self.inner.add_header("authorization", &format!("Basic {}", base64_encode(format!("{user}:{password}").as_bytes())))?;
        let answer = self.inner.handshake(Bytes::new()).await;
        self.inner.metadata_mut().remove("authorization");
        let token = String::from_utf8(answer?.to_vec()).map_err(|_| ClientError::Answer("the handshake token is not UTF-8".into()))?;
        self.set_token(&token)?;
        Ok(token)
    }

    /// A second handle on the same connection (calls run concurrently),
    /// sending the same headers (the token).
    pub fn try_clone(&self) -> Self {
        let mut inner = FlightClient::new_from_inner(self.inner.inner().clone());
        *inner.metadata_mut() = self.inner.metadata().clone();
        Self { inner }
    }

    /// The underlying Flight client, for calls this crate does not wrap.
    pub fn flight(&mut self) -> &mut FlightClient {
        &mut self.inner
    }

    /// Runs a DoAction with a JSON body and parses its JSON result.
    pub async fn action(&mut self, name: &str, body: &Value) -> Result<Value> {
        let body = if body.is_null() { Bytes::new() } else { Bytes::from(serde_json::to_vec(body).map_err(|e| ClientError::Answer(e.to_string()))?) };
        let results: Vec<Bytes> = self.inner.do_action(Action::new(name, body)).await?.try_collect().await?;
        let first = results.first().ok_or_else(|| ClientError::Answer(format!("action {name} returned nothing")))?;
        serde_json::from_slice(first).map_err(|e| ClientError::Answer(format!("action {name}: {e}")))
    }

    pub async fn health(&mut self) -> Result<Value> {
        self.action("health", &Value::Null).await
    }

    pub async fn list_collections(&mut self) -> Result<Value> {
        self.action("list_collections", &Value::Null).await
    }

    /// Creates a collection from a JSON body (`{"name", "profile"}` or
    /// `{"name", "bands", "grid"}`); returns its description.
    pub async fn create_collection(&mut self, body: &Value) -> Result<Value> {
        self.action("create_collection", body).await
    }

    pub async fn describe(&mut self, collection: &str) -> Result<Value> {
        self.action("describe", &serde_json::json!({ "collection": collection })).await
    }

    /// Sends one raster (DoPut): `batches` hold whole rows, top row first
    /// (see [`raster_batches`]).
    pub async fn ingest(&mut self, request: &proto::IngestRequest, batches: Vec<RecordBatch>) -> Result<PutSummary> {
        self.ingest_raw(Bytes::from(request.encode_to_vec()), batches).await
    }

    /// DoPut with a descriptor command given as bytes (protobuf or JSON).
    pub async fn ingest_raw(&mut self, cmd: Bytes, batches: Vec<RecordBatch>) -> Result<PutSummary> {
        self.ingest_raw_stream(cmd, futures::stream::iter(batches.into_iter().map(Ok))).await
    }

    /// Sends one raster whose row strips arrive as a stream (so a large file
    /// is read while it is sent, in bounded memory).
    pub async fn ingest_stream<S>(&mut self, request: &proto::IngestRequest, batches: S) -> Result<PutSummary>
    where
        S: futures::Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
    {
        self.ingest_raw_stream(Bytes::from(request.encode_to_vec()), batches).await
    }

    async fn ingest_raw_stream<S>(&mut self, cmd: Bytes, batches: S) -> Result<PutSummary>
    where
        S: futures::Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
    {
        let data = FlightDataEncoderBuilder::new().with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd))).build(batches);
        let results: Vec<_> = self.inner.do_put(data).await?.try_collect().await?;
        let first = results.first().ok_or_else(|| ClientError::Answer("DoPut returned no PutResult".into()))?;
        serde_json::from_slice(&first.app_metadata).map_err(|e| ClientError::Answer(format!("PutResult metadata: {e}")))
    }

    /// GetFlightInfo for a query: schema, one endpoint per chunk, totals.
    pub async fn flight_info(&mut self, query: &proto::Query) -> Result<FlightInfo> {
        Ok(self.inner.get_flight_info(FlightDescriptor::new_cmd(query.encode_to_vec())).await?)
    }

    /// Reads one ticket to its end.
    pub async fn do_get(&mut self, ticket: Bytes) -> Result<Vec<RecordBatch>> {
        Ok(self.inner.do_get(Ticket::new(ticket)).await?.try_collect().await?)
    }

    /// Runs a query: GetFlightInfo, then every endpoint in turn.
    pub async fn query(&mut self, query: &proto::Query) -> Result<Vec<RecordBatch>> {
        let info = self.flight_info(query).await?;
        let mut out = Vec::new();
        for ep in info.endpoint {
            let ticket = ep.ticket.ok_or_else(|| ClientError::Answer("endpoint without ticket".into()))?;
            out.extend(self.do_get(ticket.ticket).await?);
        }
        Ok(out)
    }

    /// An analysis-ready load (a query with `output`, `geometry`, `groupby`
    /// or `fuse`): the answer's schema, whose metadata holds the output grid
    /// (`crs`, `geotransform`, `width`, `height`, `times`, `labels`), and
    /// every window's slices (one row per window, band and slice; `row` and
    /// `col` place it), fetched endpoint by endpoint.
    pub async fn load(&mut self, query: &proto::Query) -> Result<(arrow_schema::SchemaRef, Vec<RecordBatch>)> {
        let info = self.flight_info(query).await?;
        let schema = Arc::new(info.clone().try_decode_schema().map_err(|e| ClientError::Answer(format!("the load's schema does not decode: {e}")))?);
        let mut out = Vec::new();
        for ep in info.endpoint {
            let ticket = ep.ticket.ok_or_else(|| ClientError::Answer("endpoint without ticket".into()))?;
            out.extend(self.do_get(ticket.ticket).await?);
        }
        Ok((schema, out))
    }

    /// One location's time series: a query with `point` given as the ticket.
    pub async fn point(&mut self, query: &proto::Query) -> Result<Vec<RecordBatch>> {
        self.do_get(Bytes::from(query.encode_to_vec())).await
    }
}

/// Splits band arrays of `width x height` values (row-major) into DoPut
/// batches of whole rows, about [`TARGET_BATCH_BYTES`] each. `valid`, when
/// given, becomes the `valid` column.
pub fn raster_batches(bands: Vec<(String, ArrayRef)>, valid: Option<BooleanArray>, width: usize) -> Result<Vec<RecordBatch>> {
    let len = bands.first().map(|(_, a)| a.len()).ok_or_else(|| ClientError::Raster("no bands".into()))?;
    if width == 0 || len % width != 0 || bands.iter().any(|(_, a)| a.len() != len) || valid.as_ref().is_some_and(|v| v.len() != len) {
        return Err(ClientError::Raster(format!("every band must hold the same whole number of rows of width {width}")));
    }
    let row_bytes: usize = bands.iter().map(|(_, a)| a.data_type().primitive_width().unwrap_or(8)).sum::<usize>() * width;
    let rows_per_batch = (TARGET_BATCH_BYTES / row_bytes.max(1)).max(1);
    let mut fields: Vec<Field> = bands.iter().map(|(n, a)| Field::new(n, a.data_type().clone(), false)).collect();
    let mut columns: Vec<ArrayRef> = bands.into_iter().map(|(_, a)| a).collect();
    if let Some(v) = valid {
        fields.push(Field::new("valid", arrow_schema::DataType::Boolean, false));
        columns.push(Arc::new(v));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| ClientError::Raster(e.to_string()))?;
    let height = len / width;
    Ok((0..height).step_by(rows_per_batch).map(|r| batch.slice(r * width, rows_per_batch.min(height - r) * width)).collect())
}

/// Standard base64 with padding (for the Basic header of `handshake`).
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_encode_pads() {
        assert_eq!(super::base64_encode(b"alice:wrong"), "YWxpY2U6d3Jvbmc=");
        assert_eq!(super::base64_encode(b"a"), "YQ==");
        assert_eq!(super::base64_encode(b"abc"), "YWJj");
        assert_eq!(super::base64_encode(b""), "");
    }
}
