//! Flight SQL: arrow-flight's `FlightSqlService` over [`crate::sql`]. The
//! FlightService in `mod.rs` recognises Flight SQL commands by their type
//! URL, checks the caller's role and hands the request here. Statements and
//! prepared statements are planned when asked for their FlightInfo and
//! planned again from their ticket (the ticket carries the SQL text, so any
//! server answers it); metadata calls answer from the same tables.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any, CommandGetCatalogs,
    CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::SchemaRef;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::sql;
use crate::state::AppState;

/// The Flight SQL half of the service.
#[derive(Clone)]
pub struct SqlService {
    state: Arc<AppState>,
}

impl SqlService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn schema_of(&self, query: &str) -> Result<SchemaRef, Status> {
        Ok(sql::answer_schema(&sql::plan(&self.state.warehouse, query).await?))
    }

    /// Runs `query` and streams its answer.
    async fn run(&self, query: &str) -> Result<Response<BoxStream<'static, Result<arrow_flight::FlightData, Status>>>, Status> {
        let df = sql::plan(&self.state.warehouse, query).await?;
        let schema = sql::answer_schema(&df);
        let text = query.to_string();
        let batches = df.execute_stream().await.map_err(|e| sql::error(query, e).into_status())?;
        let batches = batches.map_err(move |e| FlightError::Tonic(Box::new(sql::error(&text, e).into_status())));
        Ok(Response::new(encode(schema, batches)))
    }
}

fn encode(
    schema: SchemaRef,
    batches: impl futures::Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> BoxStream<'static, Result<arrow_flight::FlightData, Status>> {
    FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from).boxed()
}

/// One batch (or the error building it) as a stream.
fn batch_stream(schema: SchemaRef, batch: Result<RecordBatch, FlightError>) -> BoxStream<'static, Result<arrow_flight::FlightData, Status>> {
    encode(schema, futures::stream::once(async move { batch }))
}

/// A FlightInfo of one endpoint whose ticket is `ticket`.
fn info(schema: &arrow_schema::Schema, descriptor: FlightDescriptor, ticket: Vec<u8>) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Error::arrow("encoding a schema")(e).into_status())?
        .with_descriptor(descriptor)
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)));
    Ok(Response::new(info))
}

/// The SQL text a prepared statement handle carries.
fn handle_text(field: &str, handle: &[u8]) -> Result<String, Status> {
    String::from_utf8(handle.to_vec()).map_err(|_| Error::invalid(field, format!("{} bytes", handle.len()), "not a handle this server made").into_status())
}

fn read_only(what: &str) -> Status {
    refused_put(what).into_status()
}

/// What `GetSqlInfo` tells drivers about this server.
fn sql_info() -> &'static SqlInfoData {
    static INFO: std::sync::OnceLock<SqlInfoData> = std::sync::OnceLock::new();
    INFO.get_or_init(|| {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "PixelQuery Flight");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        b.append(SqlInfo::SqlDdlCatalog, false);
        b.append(SqlInfo::SqlDdlSchema, false);
        b.append(SqlInfo::SqlDdlTable, false);
        b.build().expect("static SQL info")
    })
}

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<BoxStream<'static, Result<HandshakeResponse, Status>>>, Status> {
        Err(Status::internal("Handshake is answered by the main service"))
    }

    async fn get_flight_info_statement(&self, query: CommandStatementQuery, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let schema = self.schema_of(&query.query).await?;
        let ticket = TicketStatementQuery { statement_handle: query.query.into_bytes().into() };
        info(&schema, request.into_inner(), ticket.as_any().encode_to_vec())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.schema_of(&handle_text("prepared_statement_handle", &cmd.prepared_statement_handle)?).await?;
        info(&schema, request.into_inner(), cmd.as_any().encode_to_vec())
    }

    async fn get_flight_info_substrait_plan(&self, _q: CommandStatementSubstraitPlan, _r: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        Err(Error::Unimplemented("Substrait plans are not supported: send SQL text".into()).into_status())
    }

    async fn get_flight_info_catalogs(&self, query: CommandGetCatalogs, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info(&schema, request.into_inner(), query.as_any().encode_to_vec())
    }

    async fn get_flight_info_schemas(&self, query: CommandGetDbSchemas, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info(&schema, request.into_inner(), query.as_any().encode_to_vec())
    }

    async fn get_flight_info_tables(&self, query: CommandGetTables, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info(&schema, request.into_inner(), query.as_any().encode_to_vec())
    }

    async fn get_flight_info_table_types(&self, query: CommandGetTableTypes, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info(&schema, request.into_inner(), query.as_any().encode_to_vec())
    }

    async fn get_flight_info_sql_info(&self, query: CommandGetSqlInfo, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(sql_info()).schema();
        info(&schema, request.into_inner(), query.as_any().encode_to_vec())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let query = handle_text("statement_handle", &ticket.statement_handle)?;
        self.run(&query).await
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let query = handle_text("prepared_statement_handle", &cmd.prepared_statement_handle)?;
        self.run(&query).await
    }

    async fn do_get_catalogs(&self, query: CommandGetCatalogs, _request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(sql::CATALOG);
        let schema = b.schema();
        Ok(Response::new(batch_stream(schema, b.build())))
    }

    async fn do_get_schemas(&self, query: CommandGetDbSchemas, _request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(sql::CATALOG, sql::SCHEMA);
        let schema = b.schema();
        Ok(Response::new(batch_stream(schema, b.build())))
    }

    async fn do_get_tables(&self, query: CommandGetTables, _request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        let schema = b.schema();
        for name in sql::tables::NAMES {
            let table = sql::tables::schema(name).ok_or_else(|| Status::internal("a listed table has no schema"))?;
            if let Err(e) = b.append(sql::CATALOG, sql::SCHEMA, name, "TABLE", &table) {
                return Ok(Response::new(batch_stream(schema, Err(e))));
            }
        }
        Ok(Response::new(batch_stream(schema, b.build())))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append("TABLE");
        let schema = b.schema();
        Ok(Response::new(batch_stream(schema, b.build())))
    }

    async fn do_get_sql_info(&self, query: CommandGetSqlInfo, _request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let b = query.into_builder(sql_info());
        let schema = b.schema();
        Ok(Response::new(batch_stream(schema, b.build())))
    }

    async fn do_put_statement_update(&self, _q: CommandStatementUpdate, _r: Request<PeekableFlightDataStream>) -> Result<i64, Status> {
        Err(read_only("CommandStatementUpdate"))
    }

    async fn do_put_statement_ingest(&self, _q: CommandStatementIngest, _r: Request<PeekableFlightDataStream>) -> Result<i64, Status> {
        Err(read_only("CommandStatementIngest"))
    }

    async fn do_put_prepared_statement_update(&self, _q: CommandPreparedStatementUpdate, _r: Request<PeekableFlightDataStream>) -> Result<i64, Status> {
        Err(read_only("CommandPreparedStatementUpdate"))
    }

    async fn do_put_substrait_plan(&self, _q: CommandStatementSubstraitPlan, _r: Request<PeekableFlightDataStream>) -> Result<i64, Status> {
        Err(read_only("CommandStatementSubstraitPlan"))
    }

    async fn do_put_prepared_statement_query(
        &self,
        _q: CommandPreparedStatementQuery,
        _r: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        Err(refused_put("CommandPreparedStatementQuery").into_status())
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let schema = self.schema_of(&query.query).await?;
        let IpcMessage(dataset_schema) =
            SchemaAsIpc::new(&schema, &IpcWriteOptions::default()).try_into().map_err(|e| Error::arrow("encoding a schema")(e).into_status())?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(&self, _query: ActionClosePreparedStatementRequest, _request: Request<Action>) -> Result<(), Status> {
        Ok(())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Whether `bytes` (a descriptor's command or a ticket) is a Flight SQL
/// message, which this module answers.
pub fn is_flight_sql(bytes: &[u8]) -> bool {
    Any::decode(bytes).is_ok_and(|a| a.type_url.starts_with("type.googleapis.com/arrow.flight.protocol.sql."))
}

/// A Flight SQL command in a DoPut: every one writes (or binds parameters,
/// which this server does not take).
pub fn refused_put(command: &str) -> Error {
    if command == "CommandPreparedStatementQuery" {
        return Error::Unimplemented("statement parameters are not supported: write the values into the SQL text".into());
    }
    Error::PermissionDenied(format!(
        "{command}: the SQL interface is read-only; write with DoPut (IngestRequest) and the delete and compact actions, see docs/protocol.md"
    ))
}

/// A Flight SQL command on an RPC that does not take one.
pub fn unsupported(rpc: &str, command: &str) -> Error {
    Error::Unimplemented(format!("{command} is not supported on {rpc}: send Flight SQL commands to GetFlightInfo, then DoGet its ticket"))
}

/// Flight SQL's DoAction types.
pub fn is_sql_action(kind: &str) -> bool {
    matches!(
        kind,
        "CreatePreparedStatement"
            | "ClosePreparedStatement"
            | "CreatePreparedSubstraitPlan"
            | "BeginTransaction"
            | "EndTransaction"
            | "BeginSavepoint"
            | "EndSavepoint"
            | "CancelQuery"
    )
}
