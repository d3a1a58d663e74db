//! SQL over the warehouse: DataFusion plans and runs read-only statements
//! against the live catalog ([`tables`], built when a statement scans them)
//! and a point's pixels through the `point_series` table function.

pub mod tables;

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::catalog::{MemTable, MemoryCatalogProvider, SchemaProvider, Session, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::DataFrame;

use crate::error::{Error, Result};
use crate::query::{self, Answer, Piece};
use crate::storage::Warehouse;

/// The one catalog and schema the tables live in.
pub const CATALOG: &str = "pixelquery";
pub const SCHEMA: &str = "public";

/// A session over `warehouse`: the catalog tables and `point_series`.
pub fn context(warehouse: &Arc<Warehouse>) -> SessionContext {
    let config = SessionConfig::new().with_default_catalog_and_schema(CATALOG, SCHEMA).with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    let catalog = MemoryCatalogProvider::new();
    let _ = datafusion::catalog::CatalogProvider::register_schema(&catalog, SCHEMA, Arc::new(LiveSchema { warehouse: warehouse.clone() }));
    ctx.register_catalog(CATALOG, Arc::new(catalog));
    ctx.register_udtf("point_series", Arc::new(PointSeries { warehouse: warehouse.clone() }));
    ctx
}

/// Plans `sql` read-only: statements that would write (DDL, DML, `COPY`,
/// `SET`) are refused with `PermissionDenied`.
pub async fn plan(warehouse: &Arc<Warehouse>, sql: &str) -> Result<DataFrame> {
    check_read_only(sql)?;
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let ctx = context(warehouse);
    match ctx.sql_with_options(sql, options).await {
        Ok(df) => Ok(df),
        Err(e) if is_refused_write(&e) => Err(Error::PermissionDenied(format!("the SQL interface is read-only: {}", root_message(&e)))),
        Err(e) => Err(error(sql, e)),
    }
}

/// The schema of a planned statement's answer.
pub fn answer_schema(df: &DataFrame) -> SchemaRef {
    Arc::new(df.schema().as_arrow().clone())
}

/// Refuses anything but queries (and `EXPLAIN` or `SHOW` of them) before
/// planning, so a write is refused as a write whatever else is wrong with it.
fn check_read_only(sql: &str) -> Result<()> {
    use datafusion::sql::parser::{DFParser, Statement as DfStatement};
    use datafusion::sql::sqlparser::ast::Statement;
    let Ok(statements) = DFParser::parse_sql(sql) else { return Ok(()) };
    for s in &statements {
        let allowed = match s {
            DfStatement::Statement(s) => match s.as_ref() {
                Statement::Query(_) | Statement::ShowTables { .. } | Statement::ShowColumns { .. } => true,
                Statement::Explain { statement, .. } => matches!(statement.as_ref(), Statement::Query(_)),
                _ => false,
            },
            _ => false,
        };
        if !allowed {
            let kind = s.to_string().split_whitespace().next().unwrap_or_default().to_uppercase();
            return Err(Error::PermissionDenied(format!("the SQL interface is read-only: {kind} statements are refused; write with DoPut and the actions")));
        }
    }
    Ok(())
}

fn is_refused_write(e: &DataFusionError) -> bool {
    let text = root_message(e);
    ["DDL not supported", "DML not supported", "Statement not supported"].iter().any(|s| text.contains(s))
}

fn root_message(e: &DataFusionError) -> String {
    e.find_root().to_string()
}

/// A DataFusion error as ours: our own errors (a missing collection, data
/// loss) keep their kind; the rest is a problem with the statement.
pub fn error(sql: &str, e: DataFusionError) -> Error {
    let root = e.find_root();
    if let DataFusionError::External(inner) = root {
        if let Some(ours) = inner.downcast_ref::<Error>() {
            return clone_error(ours);
        }
    }
    Error::invalid("query", sql, &root.to_string())
}

/// Our error again, for one DataFusion hands back by reference.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Invalid { field, value, reason } => Error::Invalid { field: field.clone(), value: value.clone(), reason: reason.clone() },
        Error::NotFound { what } => Error::NotFound { what: what.clone() },
        Error::DataLoss(m) => Error::DataLoss(m.clone()),
        Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
        Error::Exhausted(m) => Error::Exhausted(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}

fn external(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The catalog tables, looked up by name as a statement is planned.
struct LiveSchema {
    warehouse: Arc<Warehouse>,
}

#[async_trait::async_trait]
impl SchemaProvider for LiveSchema {
    fn table_names(&self) -> Vec<String> {
        tables::NAMES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        Ok(tables::schema(name).map(|schema| Arc::new(LiveTable { source: Source::Catalog(name.to_string()), schema, warehouse: self.warehouse.clone() }) as _))
    }

    fn table_exist(&self, name: &str) -> bool {
        tables::NAMES.contains(&name)
    }
}

/// What a [`LiveTable`] reads when it is scanned.
enum Source {
    /// A catalog table, by name (only the projected columns are built).
    Catalog(String),
    /// One location's series: the point query, JSON.
    Point(String),
}

/// A table whose rows are read when a statement scans it, never before.
struct LiveTable {
    source: Source,
    schema: SchemaRef,
    warehouse: Arc<Warehouse>,
}

#[async_trait::async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        match self.source {
            Source::Catalog(_) => TableType::Base,
            Source::Point(_) => TableType::Temporary,
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let (warehouse, schema) = (self.warehouse.clone(), self.schema.clone());
        match &self.source {
            Source::Catalog(name) => {
                let (name, columns) = (name.clone(), projection.cloned());
                let batch = blocking(move || tables::build(&warehouse, &name, columns.as_deref())).await?;
                MemTable::try_new(batch.schema(), vec![vec![batch]])?.scan(state, None, filters, limit).await
            }
            Source::Point(query) => {
                let query = query.clone();
                let batches = blocking(move || point_batches(&warehouse, &query, &schema)).await?;
                MemTable::try_new(self.schema.clone(), vec![batches])?.scan(state, projection, filters, limit).await
            }
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> datafusion::error::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| external(Error::Internal(format!("task failed: {e}"))))?.map_err(external)
}

/// `point_series(collection, x, y [, crs])`: one location's series with
/// the columns of the Flight point answer (`x`, `y` in `crs`, by default
/// EPSG:4326 longitude and latitude).
struct PointSeries {
    warehouse: Arc<Warehouse>,
}

impl TableFunctionImpl for PointSeries {
    fn call_with_args(&self, args: datafusion::catalog::TableFunctionArgs) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let usage = "point_series(collection, x, y [, crs]): a collection name, two numbers and an optional CRS such as 'EPSG:4326'";
        if !(3..=4).contains(&exprs.len()) {
            return Err(external(Error::invalid("point_series", exprs.len(), &format!("takes 3 or 4 arguments: {usage}"))));
        }
        let text = |e: &Expr| match literal(e) {
            Some(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => Ok(s),
            _ => Err(external(Error::invalid("point_series", e.to_string(), usage))),
        };
        let number = |e: &Expr| {
            literal(e).and_then(|v| v.cast_to(&arrow_schema::DataType::Float64).ok()).and_then(|v| match v {
                ScalarValue::Float64(Some(f)) if f.is_finite() => Some(f),
                _ => None,
            })
        };
        let number = |e: &Expr| number(e).ok_or_else(|| external(Error::invalid("point_series", e.to_string(), usage)));
        let collection = text(&exprs[0])?;
        let (x, y) = (number(&exprs[1])?, number(&exprs[2])?);
        let mut query = serde_json::json!({"collection": collection, "point": [x, y]});
        if let Some(crs) = exprs.get(3) {
            query["bbox_crs"] = text(crs)?.into();
        }
        let store = self.warehouse.collection(&collection).map_err(external)?;
        let schema = Arc::new(query::point_schema(&store.meta.bands));
        Ok(Arc::new(LiveTable { source: Source::Point(query.to_string()), schema, warehouse: self.warehouse.clone() }))
    }
}

/// A literal argument, with a leading minus folded in.
fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Negative(inner) => literal(inner)?.arithmetic_negate().ok(),
        Expr::Cast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        _ => None,
    }
}

/// The Flight point answer of `query` as record batches. Blocking.
fn point_batches(warehouse: &Arc<Warehouse>, query: &str, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let spec = crate::wire::decode_query("point_series", query.as_bytes())?;
    let Answer::Point(point) = query::plan(warehouse, spec)? else {
        return Err(Error::Internal("a point query did not plan as a point".into()));
    };
    if point.schema()? != *schema {
        return Err(Error::Internal("the point answer's schema changed while the statement ran".into()));
    }
    let mut batches = Vec::new();
    point.write(&mut |piece| {
        if let Piece::Batch(b) = piece {
            batches.push(b);
        }
        true
    })?;
    Ok(batches)
}

macro_rules! debug_by_name {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($t))
            }
        }
    )*};
}
debug_by_name!(LiveSchema, LiveTable, PointSeries);
