//! The Flight service, thin: decode the request -> call ingest / query /
//! actions -> encode the answer. Errors become `Status` through
//! [`Error::into_status`] only.

pub mod direct_get;
mod encode;
mod sql;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, PollInfo, PutResult,
    SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::actions;
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::ingest;
use crate::query::{self, Answer};
pub use crate::state::AppState;
use crate::wire::{self, Command, Expect, QuerySpec};

/// Bytes of messages a DoGet reader hands to the response stream at once:
/// the first run is small, so the first bytes leave while the rest is
/// read and checked, and each run after doubles up to the largest.
const FIRST_READER_RUN: usize = 128 << 10;
const READER_RUN: usize = 4 << 20;

/// The FlightService implementation.
#[derive(Clone)]
pub struct Service {
    state: Arc<AppState>,
    /// One permit per DoGet reading chunks on a blocking thread: a DoGet
    /// past them waits for one without holding a thread, so readers
    /// cannot take every blocking thread from the other calls.
    readers: Arc<tokio::sync::Semaphore>,
    /// Flight SQL commands and actions go here.
    sql: sql::SqlService,
}

impl Service {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { sql: sql::SqlService::new(state.clone()), state, readers: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)) }
    }
}

/// DoGet readers on blocking threads at once (tokio's pool has 512).
const MAX_READERS: usize = 256;

/// Runs blocking work (GDAL, file IO) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("task failed: {e}")))?
}

/// The command a descriptor carries, decoded once.
fn command(d: &FlightDescriptor, expect: Expect) -> Result<Command> {
    if d.r#type() != DescriptorType::Cmd {
        return Err(Error::invalid("descriptor.type", d.r#type().as_str_name(), "expected a CMD descriptor holding a Query or IngestRequest"));
    }
    Command::decode("descriptor.cmd", &d.cmd, expect)
}

/// The query a read RPC was given; Flight SQL goes to its own room.
fn query(rpc: &str, command: Command) -> Result<QuerySpec> {
    match command {
        Command::Query(q) => Ok(*q),
        Command::FlightSql { command, .. } => Err(sql::unsupported(rpc, &command)),
        Command::Ingest(_) => Err(Error::invalid("descriptor.cmd", "IngestRequest", "an IngestRequest goes to DoPut")),
    }
}

async fn plan(state: &AppState, mut spec: QuerySpec) -> Result<Answer> {
    if spec.as_of.is_none() {
        // Tickets carry the version planned against: every server answers
        // them with the same rows.
        spec.as_of = state.warehouse.version(&spec.collection);
    }
    // Tiles (every ticket GetFlightInfo hands out) and whole collections are
    // looked up in the in-memory catalog: microseconds, no hop to a
    // blocking thread. A bbox or point goes through GDAL.
    if spec.load.is_none() && matches!(spec.area, wire::Area::All | wire::Area::Tiles(_)) {
        return query::plan(&state.warehouse, spec);
    }
    let wh = state.warehouse.clone();
    blocking(move || query::plan(&wh, spec)).await
}

/// The answer's schema, totals and endpoints (a point series is one small
/// answer: the query is its own ticket).
fn flight_info(answer: &Answer, descriptor: FlightDescriptor, locations: &[String]) -> Result<FlightInfo> {
    let schema = answer.schema()?;
    let mut info = FlightInfo::new()
        .try_with_schema(&schema)
        .map_err(Error::arrow("encoding a schema"))?
        .with_descriptor(descriptor.clone())
        .with_total_records(answer.total_records() as i64)
        .with_total_bytes(answer.total_bytes() as i64);
    for (i, ticket) in answer.tickets(&descriptor.cmd).into_iter().enumerate() {
        let mut endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        // Every server can serve every ticket: each endpoint lists them
        // all, a different one first, so clients reading the first
        // location spread their reads.
        for k in 0..locations.len() {
            endpoint = endpoint.with_location(locations[(i + k) % locations.len()].clone());
        }
        info = info.with_endpoint(endpoint);
    }
    Ok(info)
}

/// Request ids, unique per server process.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// A new request id.
pub fn request_id() -> u64 {
    NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)
}

impl Service {
    /// Refuses a caller whose token does not carry the role `need` (`None`:
    /// no token needed, as for Handshake). With auth off every caller passes.
    fn authorize(&self, rpc: &str, metadata: &MetadataMap, need: Option<Role>) -> Result<()> {
        let (Some(auth), Some(need)) = (&self.state.auth, need) else { return Ok(()) };
        let role = auth.check_headers(metadata.get_all("authorization").iter().map(|v| v.as_bytes()))?;
        if role < need {
            return Err(Error::PermissionDenied(format!("{rpc} needs the {} role; this token has {}", need.as_str(), role.as_str())));
        }
        Ok(())
    }

    /// On a warehouse on object storage, brings this server's copy up to
    /// the shared catalog, so that others' commits are seen before anything
    /// is planned; a ticket pinned to a version this copy has applied
    /// already (`pinned`: collection and version) needs nothing. A store
    /// that cannot be read now leaves the last version applied: answers
    /// stay consistent (tickets pin a version), and a write's commit fails
    /// on its own if the store is down.
    async fn refresh(&self, pinned: Option<(&str, i64)>) {
        let wh = &self.state.warehouse;
        if wh.remote().is_none() || pinned.is_some_and(|(c, v)| wh.version(c).is_some_and(|have| have >= v)) {
            return;
        }
        let wh = wh.clone();
        if let Err(e) = blocking(move || wh.refresh()).await {
            tracing::warn!(error = %e, "refreshing from the shared warehouse failed; serving the last version applied");
        }
    }

    /// A query storing its answer (`into`) writes: it needs the write role.
    fn authorize_into(&self, rpc: &str, metadata: &MetadataMap, spec: &QuerySpec) -> Result<()> {
        match spec.steps.into {
            Some(_) => self.authorize(&format!("{rpc} with into"), metadata, Some(Role::Write)),
            None => Ok(()),
        }
    }

    /// Runs one call: a request id (on every log line of the call and sent
    /// back as `x-request-id`), the auth check, the deadline, and a panic
    /// turned into `Internal` (logged with the RPC; the server keeps serving).
    async fn call<T>(
        &self,
        rpc: &str,
        metadata: &MetadataMap,
        need: Option<Role>,
        handler: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        self.call_within(self.state.limits.request_timeout, rpc, metadata, need, handler).await
    }

    /// [`Service::call`] with its own deadline.
    async fn call_within<T>(
        &self,
        limit: Duration,
        rpc: &str,
        metadata: &MetadataMap,
        need: Option<Role>,
        handler: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let id = request_id();
        let span = tracing::info_span!("call", id, rpc);
        let started = Instant::now();
        let result = async {
            self.authorize(rpc, metadata, need)?;
            // DoGet refreshes once it knows its ticket's version.
            if rpc != "DoGet" {
                self.refresh(None).await;
            }
            match tokio::time::timeout(limit, guarded(rpc, handler)).await {
                Ok(r) => r,
                Err(_) => Err(deadline_exceeded(limit)),
            }
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let id_value = MetadataValue::from(id);
        match result {
            Ok(mut response) => {
                tracing::debug!(ms, "call answered");
                response.metadata_mut().insert("x-request-id", id_value);
                Ok(response)
            }
            Err(mut status) => {
                tracing::info!(ms, code = ?status.code(), message = status.message(), "call failed");
                status.metadata_mut().insert("x-request-id", id_value);
                Err(status)
            }
        }
    }
}

/// The `authorization` header's bytes, if any.
fn authorization(metadata: &MetadataMap) -> Option<&[u8]> {
    metadata.get("authorization").map(|v| v.as_bytes())
}

/// How much longer than its deadline a DoPut call may take to undo what it
/// appended before answering.
const PUT_UNDO_GRACE: Duration = Duration::from_secs(5);

fn deadline_exceeded(limit: Duration) -> Status {
    Status::deadline_exceeded(format!("the call ran longer than the server's request timeout of {} s (--request-timeout-secs)", limit.as_secs()))
}

/// `stream`, ended with `DeadlineExceeded` if it is still running after
/// `limit` (a slow reader cannot hold a reader thread for ever).
fn with_deadline<T: Send + 'static>(stream: BoxStream<'static, Result<T, Status>>, limit: Duration) -> BoxStream<'static, Result<T, Status>> {
    let sleep = Box::pin(tokio::time::sleep(limit));
    futures::stream::unfold(Some((stream, sleep)), move |state| async move {
        let (mut stream, mut sleep) = state?;
        tokio::select! {
            item = stream.next() => item.map(|i| (i, Some((stream, sleep)))),
            _ = &mut sleep => Some((Err(deadline_exceeded(limit)), None)),
        }
    })
    .boxed()
}

/// Runs a handler so that a panic in it becomes `Internal` (logged with the
/// RPC's name) instead of dropping the connection; the server keeps serving.
async fn guarded<T>(rpc: &str, handler: impl std::future::Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            tracing::error!(rpc, panic = %what, "handler panicked");
            Err(Status::internal(format!("internal error in {rpc} (a bug; the server logged it and keeps serving)")))
        }
    }
}

/// A transport error of the client's DoPut stream, as a request error.
fn stream_error(s: Status) -> Error {
    if s.code() == tonic::Code::DeadlineExceeded {
        Error::DeadlineExceeded(s.message().to_string())
    } else {
        Error::invalid("stream", s.code().description(), s.message())
    }
}

/// An Arrow IPC message of a DoPut that does not decode, as a request error.
fn ipc_error(e: impl std::fmt::Display) -> Error {
    Error::invalid("stream", "", &format!("malformed Arrow IPC stream: {e}"))
}

/// A DoPut's Arrow IPC messages as record batches, each read from its
/// message body in place. (arrow-flight's decoder copies every body that
/// does not start at a multiple of 64 bytes, which is nearly all of them:
/// one more copy of the whole raster. Here a buffer is copied only if it
/// is misaligned for its type.) Each header is parsed once and checked
/// against its body ([`check_ipc_frame`]) before the decoder reads it.
/// Dictionary batches are refused: raster bands are plain columns.
fn raster_batches<S>(data: S) -> impl futures::Stream<Item = crate::error::Result<arrow_array::RecordBatch>> + Unpin
where
    S: futures::Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    use arrow_ipc::MessageHeader;
    let mut schema: Option<arrow_schema::SchemaRef> = None;
    let no_dictionaries = std::collections::HashMap::new();
    data.map(move |fd| -> crate::error::Result<Option<arrow_array::RecordBatch>> {
        let fd = fd.map_err(stream_error)?;
        if fd.data_header.is_empty() {
            return Ok(None);
        }
        let msg = arrow_ipc::root_as_message(&fd.data_header).map_err(|e| bad_frame(format!("undecodable message header: {e}")))?;
        check_ipc_frame(&msg, fd.data_body.len())?;
        match msg.header_type() {
            MessageHeader::Schema => {
                let fb = msg.header_as_schema().ok_or_else(|| ipc_error("a schema message without a schema"))?;
                schema = Some(Arc::new(schema_of(fb)?));
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = schema.clone().ok_or_else(|| ipc_error("a record batch before the schema"))?;
                let header = msg.header_as_record_batch().ok_or_else(|| ipc_error("a record batch message without its header"))?;
                let body = arrow_buffer::Buffer::from(fd.data_body.clone());
                // arrow-ipc 59 asserts on some inconsistent headers (a
                // validity buffer shorter than its length) instead of failing.
                let decode = || {
                    arrow_ipc::reader::RecordBatchDecoder::try_new(&body, header, schema, &no_dictionaries, &msg.version()).and_then(|d| d.read_record_batch())
                };
                let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
                    .map_err(|_| ipc_error("a record batch whose buffers do not match its header"))?
                    .map_err(ipc_error)?;
                Ok(Some(batch))
            }
            MessageHeader::DictionaryBatch => Err(ipc_error("dictionary batches are not supported: send band values as plain columns")),
            other => Err(ipc_error(format!("unexpected message {}", other.variant_name().unwrap_or("UNKNOWN")))),
        }
    })
    .filter_map(|r| std::future::ready(r.transpose()))
    .boxed()
}

/// A DoPut's messages -> one ingested scene: the descriptor rides on the
/// first message; the rest is the Arrow IPC stream of the raster's rows.
pub async fn put<S>(state: &AppState, mut stream: S) -> Result<ingest::PutSummary, Status>
where
    S: futures::Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
{
    // A transport error (say, a message over the size limit) keeps its status.
    let first = stream.next().await.transpose()?.ok_or_else(|| Error::invalid("stream", "no messages", "DoPut needs a descriptor and raster rows"))?;
    let descriptor =
        first.flight_descriptor.clone().ok_or_else(|| Error::invalid("descriptor", "none", "the first DoPut message must carry a FlightDescriptor"))?;
    let spec = match command(&descriptor, Expect::Ingest)? {
        Command::Ingest(spec) => spec,
        Command::FlightSql { command, .. } => return Err(sql::refused_put(&command).into()),
        Command::Query(_) => {
            return Err(Error::invalid("descriptor.cmd", "Query", "DoPut takes an IngestRequest; a Query goes to GetFlightInfo or DoGet").into())
        }
    };
    let batches = raster_batches(futures::stream::once(async move { Ok(first) }).chain(stream));
    Ok(ingest::ingest(state.warehouse.clone(), state.ingest.clone(), spec, batches).await?)
}

/// A schema message's schema. arrow-ipc 59 (the release DataFusion and
/// delta-rs build on) asserts instead of failing on some malformed schemas,
/// so its panic is caught and answered as a bad request.
fn schema_of(fb: arrow_ipc::Schema<'_>) -> crate::error::Result<arrow_schema::Schema> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| arrow_ipc::convert::fb_to_schema(fb)))
        .map_err(|_| ipc_error("a schema message that does not decode"))
}

/// An IPC message whose header does not parse or does not match its body.
fn bad_frame(reason: String) -> Error {
    Error::invalid("stream", "Arrow IPC message", &reason)
}

/// Checks that an IPC message's body holds what its header says, before the
/// Arrow decoder slices it (arrow-ipc panics on a body shorter than a
/// buffer it names; found by `tests/hostile_input.rs`).
fn check_ipc_frame(msg: &arrow_ipc::Message<'_>, body_len: usize) -> crate::error::Result<()> {
    let body = msg.bodyLength();
    if body < 0 || body as u64 > body_len as u64 {
        return Err(bad_frame(format!("the header announces a {body}-byte body but {body_len} bytes came")));
    }
    let buffers = match (msg.header_as_record_batch(), msg.header_as_dictionary_batch()) {
        (Some(batch), _) => batch.buffers(),
        (None, Some(dict)) => dict.data().and_then(|b| b.buffers()),
        _ => None,
    };
    for b in buffers.iter().flatten() {
        let end = b.offset().checked_add(b.length());
        if b.offset() < 0 || b.length() < 0 || end.is_none_or(|end| end > body) {
            return Err(bad_frame(format!("a buffer at offset {} of length {} lies outside the {body}-byte body", b.offset(), b.length())));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl FlightService for Service {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(&self, request: Request<Streaming<HandshakeRequest>>) -> Result<Response<Self::HandshakeStream>, Status> {
        let Some(auth) = self.state.auth.clone() else {
            return Err(Status::unimplemented("auth is off on this server: call the other RPCs without a token"));
        };
        let metadata = request.metadata().clone();
        let peer = request.extensions().get::<crate::auth::Peer>().map(|p| p.0);
        // Handshake is how a caller without a token gets one: no role needed.
        self.call("Handshake", &metadata, None, async {
            let (token, role) = auth.handshake(authorization(&metadata), peer)?;
            tracing::info!(role = role.as_str(), "session token issued");
            let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| Status::internal("token is not ASCII"))?;
            let answer = HandshakeResponse { protocol_version: 0, payload: token.into_bytes().into() };
            let mut response = Response::new(futures::stream::once(async move { Ok(answer) }).boxed());
            response.metadata_mut().insert("authorization", bearer);
            Ok(response)
        })
        .await
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let (metadata, _, criteria) = request.into_parts();
        self.call("ListFlights", &metadata, Some(Role::Read), async move {
            let spec = wire::decode_criteria(&criteria.expression)?;
            let stores =
                if spec.collection.is_empty() { self.state.warehouse.collections() } else { vec![self.state.warehouse.collection(&spec.collection)?] };
            let mut infos = Vec::new();
            for store in stores {
                let mut s = spec.clone();
                s.collection = store.meta.name.clone();
                // Criteria select chunks, never a point.
                let Answer::Chunks(chunks) = plan(&self.state, s).await? else { continue };
                for (ticket, one) in chunks.per_chunk() {
                    infos.push(Ok(flight_info(&Answer::Chunks(one), FlightDescriptor::new_cmd(ticket), &self.state.locations)?));
                }
            }
            Ok(Response::new(futures::stream::iter(infos).boxed()))
        })
        .await
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        if request.get_ref().r#type() == DescriptorType::Cmd && sql::is_flight_sql(&request.get_ref().cmd) {
            let metadata = request.metadata().clone();
            return self.call("GetFlightInfo (Flight SQL)", &metadata, Some(Role::Read), FlightService::get_flight_info(&self.sql, request)).await;
        }
        let (metadata, _, descriptor) = request.into_parts();
        let md = &metadata;
        self.call("GetFlightInfo", &metadata, Some(Role::Read), async move {
            let spec = query("GetFlightInfo", command(&descriptor, Expect::Query)?)?;
            self.authorize_into("GetFlightInfo", md, &spec)?;
            let p = plan(&self.state, spec).await?;
            Ok(Response::new(flight_info(&p, descriptor, &self.state.locations)?))
        })
        .await
    }

    async fn poll_flight_info(&self, _request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("PollFlightInfo is not supported: GetFlightInfo answers at once"))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let (metadata, _, descriptor) = request.into_parts();
        let md = &metadata;
        self.call("GetSchema", &metadata, Some(Role::Read), async move {
            let spec = query("GetSchema", command(&descriptor, Expect::Query)?)?;
            self.authorize_into("GetSchema", md, &spec)?;
            let p = plan(&self.state, spec).await?;
            let schema = p.schema()?;
            let result: SchemaResult = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
                .try_into()
                .map_err(|e: arrow_schema::ArrowError| Error::arrow("encoding a schema")(e))?;
            Ok(Response::new(result))
        })
        .await
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        if sql::is_flight_sql(&request.get_ref().ticket) {
            let metadata = request.metadata().clone();
            let limit = self.state.limits.request_timeout;
            return self
                .call("DoGet (Flight SQL)", &metadata, Some(Role::Read), async {
                    let stream = FlightService::do_get(&self.sql, request).await?.into_inner();
                    Ok(Response::new(with_deadline(stream, limit)))
                })
                .await;
        }
        let (metadata, _, ticket) = request.into_parts();
        let md = &metadata;
        self.call("DoGet", &metadata, Some(Role::Read), async move {
            let spec = query("DoGet", Command::decode("ticket", &ticket.ticket, Expect::Query)?)?;
            self.refresh(spec.as_of.map(|v| (spec.collection.as_str(), v))).await;
            self.authorize_into("DoGet", md, &spec)?;
            let p = plan(&self.state, spec).await?;
            let max = self.state.limits.max_query_bytes;
            if p.total_bytes() > max {
                return Err(Error::Exhausted(format!(
                    "the ticket selects {} stored bytes, more than the server's limit of {max} (--max-query-mb): fetch GetFlightInfo's endpoints one by one or narrow the query",
                    p.total_bytes()
                ))
                .into());
            }
            // A blocking reader feeds a small channel with runs of messages
            // (one hand-off per run of bytes, not per message); it stops
            // when the client goes away (the receiver is dropped and `send`
            // fails).
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<FlightData>, Status>>(2);
            let permit = self.readers.clone().acquire_owned().await.map_err(|_| Error::Internal("the reader pool is closed".into()))?;
            let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stalled_reader = stalled.clone();
            let runtime = tokio::runtime::Handle::current();
            let stall = self.state.limits.write_stall;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                // Waits at most `stall` for room: a client that stops
                // reading frees the thread (and is told why) after that.
                let send = |item: Result<Vec<FlightData>, Status>| match runtime.block_on(tokio::time::timeout(stall, tx.send(item))) {
                    Ok(sent) => sent.is_ok(),
                    Err(_) => {
                        stalled_reader.store(true, Ordering::Release);
                        false
                    }
                };
                let (mut run, mut run_bytes, mut run_limit) = (Vec::new(), 0, FIRST_READER_RUN);
                let mut emit = |fd: FlightData| {
                    run_bytes += fd.data_body.len() + fd.data_header.len();
                    run.push(fd);
                    if run_bytes < run_limit {
                        return true;
                    }
                    run_bytes = 0;
                    run_limit = (run_limit * 2).min(READER_RUN);
                    send(Ok(std::mem::take(&mut run)))
                };
                // A panic must end the stream with an error, not look like its end.
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode::write_answer(&p, &mut emit)))
                    .unwrap_or_else(|_| Err(Error::Internal("reading the chunks panicked".into())));
                if stalled_reader.load(Ordering::Acquire) || (!run.is_empty() && !send(Ok(run))) {
                    return;
                }
                if let Err(e) = res {
                    send(Err(e.into_status()));
                }
            });
            // A reader that gave up on a stalled client ends the stream with
            // an error, never as if the answer were complete.
            let stall_end = futures::stream::once(async move {
                stalled.load(Ordering::Acquire).then(|| {
                    Err(Status::deadline_exceeded(format!("the client did not read the answer for {stall:?}; the stream was ended")))
                })
            })
            .filter_map(futures::future::ready);
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
                .flat_map(|run| futures::stream::iter(match run {
                    Ok(run) => run.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                }))
                .chain(stall_end)
                .boxed();
            Ok(Response::new(with_deadline(stream, self.state.limits.request_timeout)))
        })
        .await
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        let (metadata, _, stream) = request.into_parts();
        // The deadline ends the incoming stream, so the put fails through
        // its own error path, which waits for the scene's uncommitted
        // appends to be undone before answering ("writes nothing"); the
        // call's deadline, a little later, only backs it up.
        let limit = self.state.limits.request_timeout;
        let stream = with_deadline(stream.boxed(), limit);
        self.call_within(limit + PUT_UNDO_GRACE, "DoPut", &metadata, Some(Role::Write), async move {
            let _slot = self.state.put_slot()?;
            let summary = put(&self.state, stream).await?;
            tracing::info!(scene = %summary.scene_id, observations = summary.observations, bytes = summary.bytes, ms = summary.elapsed_ms, duplicate = summary.duplicate, "ingested");
            let meta = serde_json::to_vec(&summary).map_err(|e| Error::Internal(e.to_string()))?;
            let result = PutResult { app_metadata: meta.into() };
            Ok(Response::new(futures::stream::once(async move { Ok(result) }).boxed()))
        })
        .await
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        if sql::is_sql_action(&request.get_ref().r#type) {
            let metadata = request.metadata().clone();
            let rpc = format!("DoAction {} (Flight SQL)", request.get_ref().r#type);
            return self.call(&rpc, &metadata, Some(Role::Read), FlightService::do_action(&self.sql, request)).await;
        }
        let (metadata, _, action) = request.into_parts();
        let doc = actions::Action::doc(&action.r#type);
        let need = actions::Action::required_role(&action.r#type);
        // Known action names only: a client's string does not reach the logs.
        let rpc = doc.map(|d| format!("DoAction {}", d.name)).unwrap_or_else(|| "DoAction".into());
        self.call(&rpc, &metadata, Some(need), async move {
            let _slot = if doc.is_some_and(|d| d.takes_write_slot) { Some(self.state.put_slot()?) } else { None };
            let state = self.state.clone();
            let value = blocking(move || actions::run(&state, &action.r#type, &action.body)).await?;
            let body = serde_json::to_vec(&value).map_err(|e| Error::Internal(e.to_string()))?;
            let result = arrow_flight::Result { body: body.into() };
            Ok(Response::new(futures::stream::once(async move { Ok(result) }).boxed()))
        })
        .await
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let (metadata, _, _) = request.into_parts();
        self.call("ListActions", &metadata, Some(Role::Read), async move {
            let list = actions::ACTIONS.iter().map(|a| Ok(ActionType { r#type: a.name.to_string(), description: a.description.to_string() }));
            Ok(Response::new(futures::stream::iter(list.collect::<Vec<_>>()).boxed()))
        })
        .await
    }

    async fn do_exchange(&self, _request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported: use DoPut to write and DoGet to read"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FlightData of a schema and `batches`, as a client's encoder makes
    /// them (dictionaries sent as dictionary batches).
    async fn encoded(batches: Vec<arrow_array::RecordBatch>) -> Vec<FlightData> {
        let input = futures::stream::iter(batches.into_iter().map(Ok));
        arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_dictionary_handling(arrow_flight::encode::DictionaryHandling::Resend)
            .build(input)
            .map(Result::unwrap)
            .collect()
            .await
    }

    #[tokio::test]
    async fn raster_batches_are_read_from_the_message_bodies_in_place() {
        let values: Vec<u16> = (0..5000).collect();
        let batch =
            arrow_array::RecordBatch::try_from_iter([("red", Arc::new(arrow_array::UInt16Array::from(values.clone())) as arrow_array::ArrayRef)]).unwrap();
        let data = encoded(vec![batch.clone(), batch.clone()]).await;
        let bodies: Vec<std::ops::Range<usize>> =
            data.iter().map(|d| d.data_body.as_ptr() as usize..d.data_body.as_ptr() as usize + d.data_body.len()).collect();
        let got: Vec<_> = raster_batches(futures::stream::iter(data.into_iter().map(Ok))).collect().await;
        assert_eq!(got.len(), 2);
        for b in got {
            let b = b.unwrap();
            assert_eq!(b, batch);
            let at = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::UInt16Type>(b.column(0)).values().as_ptr() as usize;
            assert!(bodies.iter().any(|r| r.contains(&at)), "the values were copied out of the message body");
        }
    }

    #[tokio::test]
    async fn raster_batches_refuse_a_batch_before_its_schema_and_dictionaries() {
        let batch =
            arrow_array::RecordBatch::try_from_iter([("red", Arc::new(arrow_array::UInt16Array::from(vec![1u16, 2])) as arrow_array::ArrayRef)]).unwrap();
        let data = encoded(vec![batch]).await;
        let without_schema: Vec<_> = raster_batches(futures::stream::iter(data.into_iter().skip(1).map(Ok))).collect().await;
        assert!(without_schema[0].as_ref().unwrap_err().to_string().contains("before the schema"), "{:?}", without_schema[0]);
        let dict = arrow_array::DictionaryArray::<arrow_array::types::Int32Type>::from_iter(["a", "b", "a"]);
        let batch = arrow_array::RecordBatch::try_from_iter([("red", Arc::new(dict) as arrow_array::ArrayRef)]).unwrap();
        let got: Vec<_> = raster_batches(futures::stream::iter(encoded(vec![batch]).await.into_iter().map(Ok))).collect().await;
        assert!(got.iter().any(|r| r.as_ref().is_err_and(|e| e.to_string().contains("dictionary"))), "{got:?}");
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_internal() {
        let ok = guarded("Test", async { Ok::<_, Status>(5) }).await;
        assert_eq!(ok.unwrap(), 5);
        let err = guarded("Test", async {
            if true {
                panic!("boom");
            }
            Ok::<u8, Status>(0)
        })
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("Test"));
    }
}
