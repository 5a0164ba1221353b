//! The database: catalog, tables, running views, epochs and reads.
//!
//! One [`Database`] owns the store and everything in it. Statements that change data or
//! the catalog take the engine lock; reads do not: they run DataFusion over the last
//! published [`Snapshot`], which is swapped in whole when an epoch commits, so a `SELECT`
//! always sees one committed epoch across all tables and views.
//!
//! An epoch ([`Database::checkpoint`]): take every table's pending changes, push them
//! through each view's dataflow in creation order (a view's output feeds the views built
//! on it), gather every state change into one `EpochBatch`, commit it synced, then publish
//! the new snapshot. DDL commits the same way, its catalog entry in the epoch's batch.
//! Recovery replays the catalog in creation order, re-plans each view with the state
//! table ids it was given, and restores every operator from the committed state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::FormatOptions;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::ExprSchemable;
use datafusion::sql::parser::Statement as DfStatement;
use parking_lot::RwLock;
use sabot_connectors::failpoint::crash_point;
use sabot_connectors::kafka::Include;
use sabot_connectors::sink::SinkWriter;
use sabot_connectors::source_errors::SourceErrors;
use sabot_dataflow::ops::connector::SourceFactory;
use sabot_dataflow::ops::watermark::WatermarkSpec;
use sabot_dataflow::{ChangeBatch, Dataflow, TableState};
use sabot_sql::sqlparser::ast;
use sabot_sql::{
    CreateSink, CreateSource, ObjectKind, Parsed, SinkFrom, Statement, TransactionKind,
};
use sabot_storage::{EpochBatch, StateTableId, StateWriter, Store};
use serde::{Deserialize, Serialize};

use crate::error::{PlanError, Result};
use crate::gpu::GpuSettings;
use crate::ingest::Ingest;
use crate::pg_catalog::Session;
use crate::sinks::sink_spec;
use crate::sources::{AvroColumns, SourceDef};
use crate::stream::StreamPlanner;
use crate::types::{column_field, normalize_ident, normalize_name, sql_type_name};

/// Rows per batch when a new view is backfilled from existing data.
const BACKFILL_BATCH_ROWS: usize = 8192;
const NEXT_STATE_TABLE: &str = "next_state_table";
/// The schema of Sabot's system tables.
const SYSTEM_SCHEMA: &str = "sabot_catalog";

/// Settings fixed when the database opens.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Where the RocksDB store lives.
    pub data_dir: PathBuf,
    /// Worker threads per dataflow; keyed operators hash-partition across them.
    pub workers: usize,
    /// How often an epoch is committed without being asked (`FLUSH` asks).
    pub checkpoint_interval: Duration,
    /// Where new views' kernels run unless a session says otherwise (`SET gpu`).
    pub gpu: GpuSettings,
}

/// The result of a statement.
#[derive(Debug)]
pub enum Output {
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A command tag (`INSERT 0 3` is `("INSERT", Some(3))`).
    Command { tag: String, rows: Option<usize> },
    /// Done, with a notice for the client (e.g. `IF NOT EXISTS` on an existing object).
    Notice { tag: String, notice: String },
}

/// What a relation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    Table,
    MaterializedView,
    /// A `CREATE SOURCE`: readable only through views.
    Source,
    /// A `CREATE SINK`: shares the namespace, never in a snapshot.
    Sink,
}

/// One relation as of a committed epoch.
#[derive(Debug, Clone)]
pub struct Relation {
    pub kind: RelationKind,
    pub schema: SchemaRef,
    /// Its rows, in batches that share their arrays with the engine's state.
    pub data: Vec<RecordBatch>,
    /// Primary key column names (tables only).
    pub primary_key: Vec<String>,
    /// The failure that stopped this view, if any.
    pub error: Option<String>,
    /// Its object id in `pg_catalog`: fixed for the relation's lifetime.
    pub oid: u32,
    /// The statement that created it (for views, the query).
    pub definition: String,
}

impl Relation {
    pub fn num_rows(&self) -> usize {
        self.data.iter().map(RecordBatch::num_rows).sum()
    }

    /// Bytes its rows take in memory.
    pub fn memory_size(&self) -> usize {
        self.data
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }

    /// Its rows as insertions of at most `rows` rows each (a backfill's input).
    pub fn insert_batches(&self, rows: usize) -> Vec<ChangeBatch> {
        let mut out = Vec::new();
        for b in &self.data {
            let mut offset = 0;
            while offset < b.num_rows() {
                let len = rows.min(b.num_rows() - offset);
                out.push(ChangeBatch::inserts(b.slice(offset, len)));
                offset += len;
            }
        }
        out
    }
}

/// Object ids of user relations start here, as in PostgreSQL.
pub const FIRST_USER_OID: u32 = 16384;

/// A relation's OID: four per relation, so its primary key index and constraint can take
/// the next two.
fn user_oid(order: u64) -> u32 {
    u32::try_from(order)
        .ok()
        .and_then(|o| o.checked_mul(4))
        .and_then(|o| o.checked_add(FIRST_USER_OID))
        .unwrap_or(u32::MAX - 3)
}

/// Every relation as of one committed epoch.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub epoch: u64,
    pub relations: BTreeMap<String, Relation>,
    /// Each source's log of skipped records (sources whose connector decodes input).
    pub source_errors: BTreeMap<String, Arc<SourceErrors>>,
    /// Per view, the watermarks of the relations it reads.
    pub watermarks: Vec<(String, sabot_dataflow::WatermarkStatus)>,
}

/// One line of `SHOW JOBS`.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub name: String,
    /// `backfilling`, `catching up`, `following`, `finished` or `stopped`.
    pub status: &'static str,
    /// Rows backfilled, or the source readers' offsets.
    pub read: u64,
    /// What there is to read now, when known.
    pub total: Option<u64>,
    pub rows_per_second: Option<f64>,
    /// When the view last reflected everything committed to what it reads.
    pub synced_at: Option<std::time::SystemTime>,
}

/// A backfill in progress (`CREATE MATERIALIZED VIEW` over tables and views), seen by
/// `SHOW JOBS` and stopped by `CANCEL JOBS` from other sessions while it runs.
#[derive(Debug)]
struct BackfillJob {
    view: String,
    done: usize,
    total: usize,
    started: std::time::Instant,
    /// Set to stop it: the error its CREATE fails with.
    cancel: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum CatalogEntry {
    Table(TableMeta),
    View(ViewMeta),
    Source(SourceMeta),
    Sink(SinkMeta),
    User(UserMeta),
}

impl CatalogEntry {
    fn order(&self) -> u64 {
        match self {
            CatalogEntry::Table(t) => t.order,
            CatalogEntry::View(v) => v.order,
            CatalogEntry::Source(s) => s.order,
            CatalogEntry::Sink(s) => s.order,
            // Roles come first: nothing depends on them.
            CatalogEntry::User(_) => 0,
        }
    }
}

/// A login role. Only its SCRAM-SHA-256 verifier is kept, never the password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserMeta {
    pub name: String,
    pub superuser: bool,
    /// None: the role cannot log in with a password.
    pub verifier: Option<ScramVerifier>,
}

/// PostgreSQL's SCRAM-SHA-256 verifier: salt, iterations, StoredKey and ServerKey.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScramVerifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A role's catalog key: a NUL can be in no relation's name.
fn user_key(name: &str) -> String {
    format!("\u{0}user\u{0}{name}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SourceMeta {
    name: String,
    order: u64,
    /// The `CREATE SOURCE` statement, re-parsed on recovery.
    sql: String,
    /// When it was created (ms since the epoch): fixed, so regenerated data is the same.
    created_ms: i64,
    /// `ENCODE AVRO` without declared columns: the schema they were derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    avro_schema: Option<String>,
}

struct SourceEntry {
    def: Arc<SourceDef>,
    meta: SourceMeta,
    /// `WATERMARK FOR column AS expression`.
    watermark: Option<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SinkMeta {
    name: String,
    order: u64,
    /// The `CREATE SINK` statement, re-parsed on recovery.
    sql: String,
    /// The relation whose changes it writes.
    from: String,
    /// Output committed with an epoch and not yet delivered (the Kafka sink's outbox),
    /// keyed by the epoch (big-endian).
    state_table: StateTableId,
    /// Set when writing failed; the sink then stops.
    error: Option<String>,
}

struct SinkEntry {
    meta: SinkMeta,
    writer: Box<dyn SinkWriter>,
    target: String,
    /// The relation's contents when the sink was created, written with its first epoch.
    initial: Vec<ChangeBatch>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableMeta {
    name: String,
    order: u64,
    /// The `CREATE TABLE` statement, re-parsed on recovery.
    sql: String,
    state_table: StateTableId,
    /// A connector table's split offsets (split index → next offset).
    #[serde(default)]
    offsets_table: Option<StateTableId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ViewMeta {
    name: String,
    order: u64,
    /// The view's query.
    sql: String,
    first_state_table: StateTableId,
    /// Set when maintaining the view failed; the view stays readable but stops updating.
    error: Option<String>,
    /// `EMIT ON WINDOW CLOSE`.
    #[serde(default)]
    emit_on_window_close: bool,
    /// The query of a `CREATE SINK ... AS`: it runs like a view under the sink's name
    /// but keeps no rows and cannot be read; it goes with its sink.
    #[serde(default)]
    sink: bool,
    /// The GPU setting it was created with (none: created before there was one, off).
    #[serde(default)]
    gpu: Option<GpuSettings>,
}

/// Refuses a second sink onto the same target.
fn check_target(inner: &Inner, target: &str) -> Result<()> {
    match inner.sinks.values().find(|s| s.target == target) {
        Some(other) => Err(PlanError::user(
            "42710",
            format!("sink \"{}\" already writes to {target}", other.meta.name),
        )),
        None => Ok(()),
    }
}

/// The catalog key of a sink's query (the sink has the name's own key).
fn sink_query_key(name: &str) -> String {
    format!("\u{0}sink-query\u{0}{name}")
}

struct TableEntry {
    meta: TableMeta,
    state: TableState,
    /// For `CREATE TABLE ... WITH (connector = ...)`: where its rows come from.
    ingest: Option<Ingest>,
    /// `APPEND ONLY`: INSERT only.
    append_only: bool,
    /// `WATERMARK FOR column AS expression` (append-only tables only).
    watermark: Option<(String, String)>,
}

struct ViewEntry {
    meta: ViewMeta,
    dataflow: Dataflow,
    /// When the view last reflected everything committed to what it reads.
    synced_at: Option<std::time::SystemTime>,
    /// Counters after each of the last epochs, for rates.
    samples: std::collections::VecDeque<RateSample>,
}

/// A view's counters after an epoch.
struct RateSample {
    at: std::time::Instant,
    rows_in: u64,
    changes: u64,
    /// Per operator: rows out and busy seconds.
    operators: Vec<(u64, f64)>,
}

/// Epochs a view's rates are computed over (at most; and over at most 10 seconds).
const RATE_SAMPLES: usize = 64;

/// A running view's figures, for `/metrics` and the dashboard.
#[derive(Debug, Clone)]
pub struct ViewMetrics {
    /// Rows in per second and result changes per second over the last epochs (up to 10
    /// seconds back); None until two epochs ran.
    pub rates: Option<(f64, f64)>,
    /// Per operator over the same time: rows out per second and the share of a core it
    /// kept busy (empty until two epochs ran).
    pub operator_rates: Vec<(f64, f64)>,
    pub name: String,
    /// Seconds since the view last reflected everything committed to what it reads
    /// (None before its first epoch); it grows while the view is behind or stopped.
    pub freshness_seconds: Option<f64>,
    pub stopped: bool,
    pub operators: Vec<sabot_dataflow::OperatorStats>,
}

struct Inner {
    epoch: u64,
    tables: BTreeMap<String, TableEntry>,
    sources: BTreeMap<String, SourceEntry>,
    /// In creation order, so a view comes after everything it reads.
    views: Vec<ViewEntry>,
    sinks: BTreeMap<String, SinkEntry>,
    next_state_table: StateTableId,
    next_order: u64,
}

impl Inner {
    fn exists(&self, name: &str) -> Option<RelationKind> {
        if self.tables.contains_key(name) {
            Some(RelationKind::Table)
        } else if self.sources.contains_key(name) {
            Some(RelationKind::Source)
        } else if self
            .views
            .iter()
            .any(|v| v.meta.name == name && !v.meta.sink)
        {
            Some(RelationKind::MaterializedView)
        } else if self.sinks.contains_key(name) {
            Some(RelationKind::Sink)
        } else {
            None
        }
    }

    /// Every source, as the stream planner reads them.
    /// The relations that declare a watermark: name, columns and the declaration.
    fn watermark_decls(&self) -> Vec<(String, SchemaRef, &(String, String))> {
        let sources = self.sources.iter().filter_map(|(n, s)| {
            let decl = s.watermark.as_ref()?;
            Some((n.clone(), s.def.schema(), decl))
        });
        let tables = self.tables.iter().filter_map(|(n, t)| {
            let decl = t.watermark.as_ref()?;
            Some((n.clone(), Arc::clone(t.state.schema()), decl))
        });
        sources.chain(tables).collect()
    }

    fn source_factories(&self) -> HashMap<String, Arc<dyn SourceFactory>> {
        self.sources
            .iter()
            .map(|(n, s)| (n.clone(), Arc::clone(&s.def) as Arc<dyn SourceFactory>))
            .collect()
    }

    /// The columns of a table or view.
    fn columns(&self, name: &str) -> Result<SchemaRef> {
        if let Some(t) = self.tables.get(name) {
            return Ok(Arc::clone(t.state.schema()));
        }
        self.views
            .iter()
            .find(|v| v.meta.name == name)
            .and_then(|v| {
                v.dataflow
                    .plan()
                    .nodes
                    .last()
                    .map(|n| Arc::clone(&n.schema))
            })
            .ok_or_else(|| PlanError::Internal(format!("relation {name} has no columns")))
    }

    /// Whether `name`'s rows are only ever added: sources are, tables are not (they take
    /// UPDATE and DELETE), views are when their plan is.
    fn append_only(&self, name: &str) -> bool {
        if self.sources.contains_key(name) {
            return true;
        }
        if let Some(t) = self.tables.get(name) {
            return t.append_only;
        }
        match self.views.iter().find(|v| v.meta.name == name) {
            Some(v) => v.dataflow.plan().append_only(&|r| self.append_only(r)),
            None => false,
        }
    }

    /// The query of sink `name` when it was made with `CREATE SINK ... AS`.
    fn sink_query(&self, name: &str) -> Option<&ViewEntry> {
        self.views
            .iter()
            .find(|v| v.meta.sink && v.meta.name == name)
    }

    /// What a sink reads, for listings: the relation, or its query.
    fn sink_from(&self, s: &SinkEntry) -> String {
        match self.sink_query(&s.meta.name) {
            Some(v) => format!("AS {}", v.meta.sql),
            None => s.meta.from.clone(),
        }
    }

    /// Why a sink stopped: its own error, or its query's.
    fn sink_error(&self, s: &SinkEntry) -> Option<String> {
        s.meta.error.clone().or_else(|| {
            self.sink_query(&s.meta.name)
                .and_then(|v| v.meta.error.clone())
        })
    }

    /// Views that read `name`, directly or through other views, in creation order, then
    /// the sinks that write any of them.
    fn dependents(&self, name: &str) -> Vec<String> {
        let mut affected: HashSet<String> = HashSet::from([name.to_string()]);
        let mut out = Vec::new();
        for v in &self.views {
            if v.dataflow
                .plan()
                .sources()
                .iter()
                .any(|s| affected.contains(*s))
            {
                affected.insert(v.meta.name.clone());
                // A sink's query goes with its sink, listed below.
                if !v.meta.sink {
                    out.push(v.meta.name.clone());
                }
            }
        }
        for s in self.sinks.values() {
            // A sink with its own query reads from under its own name.
            if affected.contains(&s.meta.from) && s.meta.name != name {
                out.push(s.meta.name.clone());
            }
        }
        out
    }
}

/// The database: see the module docs.
pub struct Database {
    config: DbConfig,
    store: Store,
    inner: tokio::sync::Mutex<Inner>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Login roles by name (persisted in the catalog).
    users: RwLock<BTreeMap<String, UserMeta>>,
    /// The last [`CHECKPOINT_HISTORY`] epochs committed, oldest first.
    checkpoints: parking_lot::Mutex<std::collections::VecDeque<CheckpointRecord>>,
    /// Backfills running now.
    backfills: parking_lot::Mutex<Vec<BackfillJob>>,
    /// The views reading sources, as of the last epoch (see [`Database::refresh_jobs`]).
    jobs: parking_lot::Mutex<Vec<JobRow>>,
}

/// How many committed epochs [`Database::checkpoint_history`] keeps.
const CHECKPOINT_HISTORY: usize = 120;

/// One committed epoch, for the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    pub epoch: u64,
    /// When it committed, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// From the start of the epoch to its durable commit.
    pub duration_ms: f64,
    /// State and catalog entries it wrote.
    pub writes: u64,
}

/// An object of the catalog and what it reads, for the dashboard's graph.
#[derive(Debug, Clone, Serialize)]
pub struct GraphNode {
    pub name: String,
    /// `table`, `source`, `materialized_view` or `sink`.
    pub kind: &'static str,
    /// The relations it reads (views: what their query reads; sinks: their relation).
    pub inputs: Vec<String>,
    /// Why it stopped, if it did.
    pub error: Option<String>,
    /// Where a sink writes.
    pub target: Option<String>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("config", &self.config)
            .finish()
    }
}

impl Database {
    /// Opens the database in `config.data_dir`, recovering the last committed epoch.
    pub async fn open(config: DbConfig) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| PlanError::Internal(format!("cannot create data dir: {e}")))?;
        let store = Store::open(&config.data_dir)?;
        let epoch = store.committed_epoch()?;
        let next_state_table = match store.meta(NEXT_STATE_TABLE)? {
            Some(v) => u32::from_le_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| PlanError::Internal("bad next_state_table".into()))?,
            ),
            None => 1,
        };
        let db = Arc::new(Self {
            config,
            store,
            inner: tokio::sync::Mutex::new(Inner {
                epoch,
                tables: BTreeMap::new(),
                sources: BTreeMap::new(),
                views: Vec::new(),
                sinks: BTreeMap::new(),
                next_state_table,
                next_order: 0,
            }),
            users: RwLock::new(BTreeMap::new()),
            checkpoints: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            backfills: parking_lot::Mutex::new(Vec::new()),
            jobs: parking_lot::Mutex::new(Vec::new()),
            snapshot: RwLock::new(Arc::new(Snapshot {
                epoch,
                relations: BTreeMap::new(),
                source_errors: BTreeMap::new(),
                watermarks: Vec::new(),
            })),
        });
        db.recover().await?;
        Ok(db)
    }

    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    /// The last committed snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read())
    }

    /// A login role.
    pub fn user(&self, name: &str) -> Option<UserMeta> {
        self.users.read().get(name).cloned()
    }

    /// Every login role, by name.
    pub fn users(&self) -> Vec<UserMeta> {
        self.users.read().values().cloned().collect()
    }

    /// Creates a role, or with `replace` sets an existing one (startup's bootstrap user).
    pub async fn create_user(&self, meta: UserMeta, replace: bool) -> Result<Output> {
        if !replace && self.users.read().contains_key(&meta.name) {
            return Err(PlanError::user(
                "42710",
                format!("role \"{}\" already exists", meta.name),
            ));
        }
        self.put_user(meta).await?;
        Ok(command("CREATE ROLE"))
    }

    /// Changes a role's password and/or superuser flag.
    pub async fn alter_user(
        &self,
        name: &str,
        verifier: Option<Option<ScramVerifier>>,
        superuser: Option<bool>,
    ) -> Result<Output> {
        let Some(mut meta) = self.user(name) else {
            return Err(PlanError::user(
                "42704",
                format!("role \"{name}\" does not exist"),
            ));
        };
        if let Some(v) = verifier {
            meta.verifier = v;
        }
        if let Some(s) = superuser {
            meta.superuser = s;
        }
        self.put_user(meta).await?;
        Ok(command("ALTER ROLE"))
    }

    /// Drops roles; all or none.
    pub async fn drop_users(&self, names: &[String], if_exists: bool) -> Result<Output> {
        let mut inner = self.inner.lock().await;
        let mut batch = EpochBatch::new(inner.epoch + 1);
        let mut gone = Vec::new();
        for name in names {
            if self.users.read().contains_key(name) {
                batch.delete_catalog(&user_key(name));
                gone.push(name.clone());
            } else if !if_exists {
                return Err(PlanError::user(
                    "42704",
                    format!("role \"{name}\" does not exist"),
                ));
            }
        }
        self.run_epoch(&mut inner, batch, HashSet::new(), &[])?;
        let mut users = self.users.write();
        for name in gone {
            users.remove(&name);
        }
        Ok(command("DROP ROLE"))
    }

    async fn put_user(&self, meta: UserMeta) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let mut batch = EpochBatch::new(inner.epoch + 1);
        batch.put_catalog(
            &user_key(&meta.name),
            catalog_bytes(&CatalogEntry::User(meta.clone()))?,
        );
        self.run_epoch(&mut inner, batch, HashSet::new(), &[])?;
        self.users.write().insert(meta.name.clone(), meta);
        Ok(())
    }

    async fn recover(&self) -> Result<()> {
        let mut entries: Vec<CatalogEntry> = Vec::new();
        for (name, bytes) in self.store.catalog()? {
            let e: CatalogEntry = serde_json::from_slice(&bytes)
                .map_err(|e| PlanError::Internal(format!("catalog entry {name}: {e}")))?;
            entries.push(e);
        }
        entries.sort_by_key(CatalogEntry::order);
        let mut inner = self.inner.lock().await;
        let mut changed = HashSet::new();
        for entry in entries {
            match entry {
                CatalogEntry::Table(meta) => {
                    let parsed = sabot_sql::parse(&meta.sql)?;
                    let (ct, connector, table_opts) =
                        match parsed.into_iter().next().map(|p| p.statement) {
                            Some(Statement::CreateTable(ct)) => (*ct, None, (false, None)),
                            Some(Statement::CreateSource(cs)) if cs.is_table => {
                                let table = (*cs.table).clone();
                                let opts = (cs.append_only, cs.watermark.clone());
                                let connector = has_connector(&cs).then_some(cs);
                                (table, connector, opts)
                            }
                            _ => {
                                return Err(PlanError::Internal(format!(
                                    "catalog entry of {} is not CREATE TABLE",
                                    meta.name
                                )))
                            }
                        };
                    let (schema, pk) = match &connector {
                        Some(cs) => connector_table_schema(cs)?,
                        None => table_schema(&ct)?,
                    };
                    let ingest = match (connector, meta.offsets_table) {
                        (Some(cs), Some(offsets)) => {
                            let mut ingest = Ingest::try_new(
                                &cs.options,
                                cs.format.as_ref(),
                                Arc::clone(&schema),
                                &pk,
                                offsets,
                                &cs.include,
                            )?;
                            ingest.restore(self.store.scan(offsets)?)?;
                            Some(ingest)
                        }
                        _ => None,
                    };
                    let mut state = TableState::try_new(&meta.name, schema, pk, meta.state_table)?;
                    state.restore(self.store.scan(meta.state_table)?)?;
                    inner.next_order = inner.next_order.max(meta.order + 1);
                    changed.insert(meta.name.clone());
                    inner.tables.insert(
                        meta.name.clone(),
                        TableEntry {
                            meta,
                            state,
                            ingest,
                            append_only: table_opts.0,
                            watermark: table_opts.1,
                        },
                    );
                }
                CatalogEntry::Source(meta) => {
                    let parsed = sabot_sql::parse(&meta.sql)?;
                    let Some(Statement::CreateSource(cs)) =
                        parsed.into_iter().next().map(|p| p.statement)
                    else {
                        return Err(PlanError::Internal(format!(
                            "catalog entry of {} is not CREATE SOURCE",
                            meta.name
                        )));
                    };
                    let def = source_def(
                        &meta.name,
                        &cs,
                        meta.created_ms,
                        AvroColumns::Recorded(meta.avro_schema.as_deref()),
                    )?;
                    inner.next_order = inner.next_order.max(meta.order + 1);
                    changed.insert(meta.name.clone());
                    inner.sources.insert(
                        meta.name.clone(),
                        SourceEntry {
                            def: Arc::new(def),
                            meta: meta.clone(),
                            watermark: cs.watermark.clone(),
                        },
                    );
                }
                CatalogEntry::View(meta) => {
                    // Plan against the relations recovered so far (all it can read).
                    self.publish(&inner, &changed, &[])?;
                    let parsed = sabot_sql::parse(&meta.sql)?;
                    let Some(Statement::Query(q)) = parsed.into_iter().next().map(|p| p.statement)
                    else {
                        return Err(PlanError::Internal(format!(
                            "catalog entry of {} is not a query",
                            meta.name
                        )));
                    };
                    let (mut dataflow, _) = self
                        .plan_view(
                            &q,
                            meta.first_state_table,
                            &inner,
                            meta.emit_on_window_close,
                            meta.sink,
                            (meta.gpu.unwrap_or_default(), false),
                        )
                        .await?;
                    dataflow.restore(&self.store)?;
                    inner.next_order = inner.next_order.max(meta.order + 1);
                    changed.insert(meta.name.clone());
                    inner.views.push(ViewEntry {
                        meta,
                        dataflow,
                        synced_at: None,
                        samples: Default::default(),
                    });
                }
                CatalogEntry::User(meta) => {
                    self.users.write().insert(meta.name.clone(), meta);
                }
                CatalogEntry::Sink(meta) => {
                    let parsed = sabot_sql::parse(&meta.sql)?;
                    let Some(Statement::CreateSink(cs)) =
                        parsed.into_iter().next().map(|p| p.statement)
                    else {
                        return Err(PlanError::Internal(format!(
                            "catalog entry of {} is not CREATE SINK",
                            meta.name
                        )));
                    };
                    let append_only = inner.append_only(&meta.from);
                    let columns = inner.columns(&meta.from)?;
                    let mut spec = sink_spec(&cs, append_only, &columns)?;
                    let mut outbox = Vec::new();
                    for (key, value) in self.store.scan(meta.state_table)? {
                        let epoch =
                            key.as_slice()
                                .try_into()
                                .map(u64::from_be_bytes)
                                .map_err(|_| {
                                    PlanError::Internal(format!(
                                        "sink {}: bad outbox key",
                                        meta.name
                                    ))
                                })?;
                        outbox.push((epoch, value));
                    }
                    // Publish what committed epochs prepared, drop the rest.
                    spec.writer
                        .recover(inner.epoch, outbox)
                        .map_err(|e| PlanError::user("58030", e.to_string()))?;
                    inner.next_order = inner.next_order.max(meta.order + 1);
                    inner.sinks.insert(
                        meta.name.clone(),
                        SinkEntry {
                            meta,
                            writer: spec.writer,
                            target: spec.target,
                            initial: Vec::new(),
                        },
                    );
                }
            }
        }
        self.publish(&inner, &changed, &[])?;
        tracing::info!(
            epoch = inner.epoch,
            tables = inner.tables.len(),
            views = inner.views.len(),
            "recovered"
        );
        Ok(())
    }

    /// Commits one epoch: pending table changes flow through every view. Returns the
    /// epoch. With nothing pending there is nothing to commit: the last epoch already
    /// holds everything written, so it is returned as is.
    pub async fn checkpoint(&self) -> Result<u64> {
        let mut inner = self.inner.lock().await;
        let committed = inner.epoch;
        for (name, sink) in inner.sinks.iter_mut() {
            if sink.meta.error.is_none() && sink.writer.undelivered() {
                if let Err(e) = sink.writer.commit(committed) {
                    tracing::error!(sink = %name, error = %e, "sink stopped");
                    sink.meta.error = Some(e.to_string());
                }
            }
        }
        let reading = inner.views.iter().any(|v| {
            v.meta.error.is_none() && (v.dataflow.sources_active() || v.dataflow.time_driven())
        }) || inner.tables.values().any(|t| t.ingest.is_some());
        if !reading && !inner.tables.values().any(|t| t.state.has_pending()) {
            // Nothing to read: every running view is up to date.
            let now = std::time::SystemTime::now();
            for v in inner.views.iter_mut().filter(|v| v.meta.error.is_none()) {
                v.synced_at = Some(now);
            }
            self.refresh_jobs(&inner);
            return Ok(inner.epoch);
        }
        let next = inner.epoch + 1;
        self.run_epoch(&mut inner, EpochBatch::new(next), HashSet::new(), &[])
    }

    /// Each view's freshness and operators, for `/metrics`.
    pub async fn view_metrics(&self) -> Vec<ViewMetrics> {
        let inner = self.inner.lock().await;
        let now = std::time::SystemTime::now();
        inner
            .views
            .iter()
            .map(|v| ViewMetrics {
                rates: rates(&v.samples).map(|r| r.0),
                operator_rates: rates(&v.samples).map(|r| r.1).unwrap_or_default(),
                name: v.meta.name.clone(),
                freshness_seconds: v.synced_at.map(|t| {
                    now.duration_since(t)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0)
                }),
                stopped: v.meta.error.is_some(),
                operators: v.dataflow.operator_stats(),
            })
            .collect()
    }

    /// The catalog's objects and what each reads.
    pub async fn graph(&self) -> Vec<GraphNode> {
        let inner = self.inner.lock().await;
        let mut out = Vec::new();
        for name in inner.tables.keys() {
            out.push(GraphNode {
                name: name.clone(),
                kind: "table",
                inputs: Vec::new(),
                error: None,
                target: None,
            });
        }
        for name in inner.sources.keys() {
            out.push(GraphNode {
                name: name.clone(),
                kind: "source",
                inputs: Vec::new(),
                error: None,
                target: None,
            });
        }
        for v in inner.views.iter().filter(|v| !v.meta.sink) {
            out.push(GraphNode {
                name: v.meta.name.clone(),
                kind: "materialized_view",
                inputs: v
                    .dataflow
                    .plan()
                    .sources()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                error: v.meta.error.clone(),
                target: None,
            });
        }
        for (name, s) in &inner.sinks {
            // A sink with a query of its own reads what its query reads.
            let inputs = match inner.sink_query(name) {
                Some(v) => v
                    .dataflow
                    .plan()
                    .sources()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                None => vec![s.meta.from.clone()],
            };
            out.push(GraphNode {
                name: name.clone(),
                kind: "sink",
                inputs,
                error: inner.sink_error(s),
                target: Some(s.target.clone()),
            });
        }
        out
    }

    /// The last committed epochs, oldest first.
    pub fn checkpoint_history(&self) -> Vec<CheckpointRecord> {
        self.checkpoints.lock().iter().cloned().collect()
    }

    /// RocksDB's memory and size figures (see [`Store::stats`]).
    pub fn storage_stats(&self) -> Vec<(&'static str, u64)> {
        self.store.stats()
    }

    /// Whether a view's source reader has more rows ready than the last epoch took: the
    /// next epoch should follow right away rather than at the next tick.
    pub async fn wants_more(&self) -> bool {
        let inner = self.inner.lock().await;
        inner
            .views
            .iter()
            .any(|v| v.meta.error.is_none() && v.dataflow.wants_more())
            || inner
                .tables
                .values()
                .any(|t| t.ingest.as_ref().is_some_and(Ingest::wants_more))
    }

    /// Runs an epoch whose batch already holds `batch`'s catalog changes; `changed` names
    /// relations whose snapshot must be rebuilt even without data changes, `removed` those
    /// to drop from the snapshot.
    fn run_epoch(
        &self,
        inner: &mut Inner,
        mut batch: EpochBatch,
        mut changed: HashSet<String>,
        removed: &[String],
    ) -> Result<u64> {
        let epoch = batch.epoch();
        let started = std::time::Instant::now();
        let mut deltas: HashMap<String, Vec<ChangeBatch>> = HashMap::new();
        for (name, t) in inner.tables.iter_mut() {
            if let Some(ingest) = &mut t.ingest {
                let mut offsets = StateWriter::default();
                match ingest.poll(&mut t.state, &mut offsets) {
                    Ok(()) => batch.append(offsets),
                    Err(e) => {
                        // Only internal failures get here (bad records are skipped); what
                        // was applied stays, without the offsets, and reading stops.
                        tracing::error!(table = %name, error = %e, "connector table stopped reading");
                        t.ingest = None;
                    }
                }
            }
            let pending = t.state.take_pending();
            if !pending.is_empty() {
                deltas.insert(name.clone(), pending);
                changed.insert(name.clone());
            }
            let mut w = StateWriter::default();
            t.state.write_state(&mut w);
            batch.append(w);
        }
        for view in inner.views.iter_mut() {
            if view.meta.error.is_some() {
                continue;
            }
            let reads_changes = view
                .dataflow
                .plan()
                .sources()
                .iter()
                .any(|s| deltas.contains_key(*s))
                || view.dataflow.sources_active()
                || view.dataflow.time_driven();
            if !reads_changes {
                continue;
            }
            let mut own = EpochBatch::new(epoch);
            match view.dataflow.run_epoch(&deltas, &mut own) {
                Ok(out) => {
                    batch.extend(own);
                    if !out.is_empty() {
                        deltas.insert(view.meta.name.clone(), out);
                        changed.insert(view.meta.name.clone());
                    }
                }
                Err(e) => {
                    tracing::error!(view = %view.meta.name, error = %e, "view stopped");
                    view.meta.error = Some(e.to_string());
                    batch.put_catalog(
                        &view.meta.name,
                        catalog_bytes(&CatalogEntry::View(view.meta.clone()))?,
                    );
                    changed.insert(view.meta.name.clone());
                }
            }
        }
        let prepared = Self::prepare_sinks(inner, epoch, &deltas, &mut batch)?;
        if !prepared.is_empty() {
            crash_point("sink-prepared");
        }
        batch.put_meta(
            NEXT_STATE_TABLE,
            inner.next_state_table.to_le_bytes().to_vec(),
        );
        let writes = batch.len();
        self.store.commit(batch)?;
        inner.epoch = epoch;
        metrics::histogram!("sabot_checkpoint_duration_seconds").record(started.elapsed());
        {
            let mut history = self.checkpoints.lock();
            if history.len() == CHECKPOINT_HISTORY {
                history.pop_front();
            }
            history.push_back(CheckpointRecord {
                epoch,
                at_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
                writes: writes as u64,
            });
        }
        metrics::histogram!("sabot_checkpoint_writes").record(writes as f64);
        metrics::counter!("sabot_checkpoints_total").increment(1);
        let committed = std::time::SystemTime::now();
        let now = std::time::Instant::now();
        for v in inner.views.iter_mut() {
            // A view whose reader has more rows ready is behind what it reads.
            if v.meta.error.is_none() && !v.dataflow.wants_more() {
                v.synced_at = Some(committed);
            }
            let (rows_in, changes) = v.dataflow.throughput_counters();
            if v.samples.len() == RATE_SAMPLES {
                v.samples.pop_front();
            }
            let operators = v.dataflow.operator_counters();
            v.samples.push_back(RateSample {
                at: now,
                rows_in,
                changes,
                operators,
            });
        }
        if !prepared.is_empty() {
            crash_point("sink-committed");
        }
        for name in prepared {
            if let Some(sink) = inner.sinks.get_mut(&name) {
                if let Err(e) = sink.writer.commit(epoch) {
                    // The output stays prepared; recovery publishes it.
                    tracing::error!(sink = %name, error = %e, "sink stopped");
                    sink.meta.error = Some(e.to_string());
                }
            }
        }
        self.publish(inner, &changed, removed)?;
        Ok(epoch)
    }

    /// Writes each sink's changes of this epoch, not yet visible (see
    /// [`sabot_connectors::sink`]); returns the sinks that wrote something. A sink that
    /// fails stops, its error kept in the catalog with this epoch.
    fn prepare_sinks(
        inner: &mut Inner,
        epoch: u64,
        deltas: &HashMap<String, Vec<ChangeBatch>>,
        batch: &mut EpochBatch,
    ) -> Result<Vec<String>> {
        let mut prepared = Vec::new();
        for (name, sink) in inner.sinks.iter_mut() {
            if sink.meta.error.is_some() {
                continue;
            }
            let mut outbox = StateWriter::default();
            for done in sink.writer.delivered() {
                outbox.delete(sink.meta.state_table, &done.to_be_bytes());
            }
            let initial = std::mem::take(&mut sink.initial);
            let changes: Vec<(RecordBatch, Int64Array)> = initial
                .iter()
                .chain(deltas.get(&sink.meta.from).into_iter().flatten())
                .map(|c| (c.data().clone(), c.weights().clone()))
                .collect();
            if changes.is_empty() {
                batch.append(outbox);
                continue;
            }
            match sink.writer.prepare(epoch, &changes) {
                Ok(entry) => {
                    if let Some(entry) = entry {
                        outbox.put(sink.meta.state_table, &epoch.to_be_bytes(), &entry);
                    }
                    batch.append(outbox);
                    prepared.push(name.clone());
                }
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "sink stopped");
                    sink.meta.error = Some(e.to_string());
                    batch.put_catalog(name, catalog_bytes(&CatalogEntry::Sink(sink.meta.clone()))?);
                }
            }
        }
        Ok(prepared)
    }

    /// Swaps in a snapshot with `changed` relations rebuilt and `removed` ones gone.
    fn publish(&self, inner: &Inner, changed: &HashSet<String>, removed: &[String]) -> Result<()> {
        let old = self.snapshot();
        let mut relations = old.relations.clone();
        for name in removed {
            relations.remove(name);
        }
        for name in changed {
            if let Some(t) = inner.tables.get(name) {
                let schema = Arc::clone(t.state.schema());
                relations.insert(
                    name.clone(),
                    Relation {
                        kind: RelationKind::Table,
                        data: vec![t.state.contents()?],
                        primary_key: t
                            .state
                            .primary_key()
                            .iter()
                            .map(|i| schema.field(*i).name().clone())
                            .collect(),
                        schema,
                        error: None,
                        oid: user_oid(t.meta.order),
                        definition: t.meta.sql.clone(),
                    },
                );
            } else if let Some(src) = inner.sources.get(name) {
                let schema = src.def.schema();
                relations.insert(
                    name.clone(),
                    Relation {
                        kind: RelationKind::Source,
                        data: Vec::new(),
                        schema,
                        primary_key: Vec::new(),
                        error: None,
                        oid: user_oid(src.meta.order),
                        definition: src.meta.sql.clone(),
                    },
                );
            } else if let Some(v) = inner
                .views
                .iter()
                .find(|v| &v.meta.name == name && !v.meta.sink)
            {
                let data = v.dataflow.snapshot()?;
                relations.insert(
                    name.clone(),
                    Relation {
                        kind: RelationKind::MaterializedView,
                        schema: inner.columns(name)?,
                        data,
                        primary_key: Vec::new(),
                        error: v.meta.error.clone(),
                        oid: user_oid(v.meta.order),
                        definition: v.meta.sql.clone(),
                    },
                );
            }
        }
        let source_errors = inner
            .sources
            .iter()
            .filter_map(|(n, s)| s.def.errors().map(|e| (n.clone(), e)))
            .chain(
                inner
                    .tables
                    .iter()
                    .filter_map(|(n, t)| t.ingest.as_ref().map(|i| (n.clone(), i.errors()))),
            )
            .collect();
        let watermarks = inner
            .views
            .iter()
            .flat_map(|v| {
                v.dataflow
                    .watermark_status()
                    .into_iter()
                    .map(|w| (v.meta.name.clone(), w))
            })
            .collect();
        self.refresh_jobs(inner);
        *self.snapshot.write() = Arc::new(Snapshot {
            epoch: inner.epoch,
            relations,
            source_errors,
            watermarks,
        });
        Ok(())
    }

    /// Records the views reading sources as `SHOW JOBS` shows them (read without the
    /// engine's lock, which a backfill holds).
    fn refresh_jobs(&self, inner: &Inner) {
        let jobs = inner
            .views
            .iter()
            .filter_map(|v| {
                let (read, total) = v.dataflow.source_progress()?;
                Some(JobRow {
                    name: v.meta.name.clone(),
                    status: if v.meta.error.is_some() {
                        "stopped"
                    } else if !v.dataflow.sources_active() {
                        "finished"
                    } else if v.dataflow.wants_more() {
                        "catching up"
                    } else {
                        "following"
                    },
                    read,
                    total,
                    rows_per_second: rates(&v.samples).map(|r| r.0 .0),
                    synced_at: v.synced_at,
                })
            })
            .collect();
        *self.jobs.lock() = jobs;
    }

    /// A DataFusion context over `snapshot`, with `overlay` replacing one relation's data.
    fn context(
        &self,
        snapshot: &Snapshot,
        overlay: Option<(&str, Vec<RecordBatch>)>,
    ) -> Result<SessionContext> {
        let config = SessionConfig::new()
            .with_target_partitions(self.config.workers.max(1))
            .with_default_catalog_and_schema(crate::pg_catalog::DATABASE, "public");
        let ctx = SessionContext::new_with_config(config);
        for f in crate::windows::session_markers() {
            ctx.register_udf(f);
        }
        ctx.register_udf(crate::now::now_marker());
        ctx.register_udf(crate::now::proctime_marker());
        for f in crate::pg_catalog::general_functions() {
            ctx.register_udf(f);
        }
        // PostgreSQL's name for the sample variance.
        ctx.register_udaf(
            datafusion::functions_aggregate::variance::var_samp_udaf()
                .as_ref()
                .clone()
                .with_aliases(["variance"]),
        );
        for (name, rel) in &snapshot.relations {
            let data = match &overlay {
                Some((n, b)) if *n == name => b.clone(),
                _ => rel.data.clone(),
            };
            let table = MemTable::try_new(Arc::clone(&rel.schema), vec![data])?;
            ctx.register_table(TableReference::bare(name.clone()), Arc::new(table))?;
        }
        Ok(ctx)
    }

    async fn logical_plan(
        &self,
        ctx: &SessionContext,
        query: &ast::Query,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        self.plan_query(ctx, query, false).await
    }

    /// The query's logical plan; `streaming`: for a view's dataflow (SESSION windows
    /// through their marker functions).
    async fn plan_query(
        &self,
        ctx: &SessionContext,
        query: &ast::Query,
        streaming: bool,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        let mut query = query.clone();
        if streaming {
            crate::windows::rewrite_windows_for_stream(&mut query)?;
        } else {
            crate::windows::rewrite_windows(&mut query)?;
        }
        for (alias, table) in crate::temporal::rewrite_temporal(&mut query)? {
            let provider = ctx.table_provider(table.as_str()).await?;
            if !ctx.table_exist(alias.as_str())? {
                ctx.register_table(TableReference::bare(alias), provider)?;
            }
        }
        crate::now::rewrite_now(&mut query, streaming)?;
        let stmt = DfStatement::Statement(Box::new(ast::Statement::Query(Box::new(query))));
        Ok(ctx.state().statement_to_plan(stmt).await?)
    }

    /// A context for reads: [`Database::context`] plus the `sabot_catalog` system tables,
    /// and `pg_catalog` when the query reads it (then with the query rewritten for it).
    fn read_context(
        &self,
        snapshot: &Snapshot,
        query: &ast::Query,
        figures: &SystemFigures,
        session: &Session,
    ) -> Result<(SessionContext, ast::Query)> {
        let ctx = self.context(snapshot, None)?;
        let catalog = ctx
            .catalog(crate::pg_catalog::DATABASE)
            .ok_or_else(|| PlanError::Internal("no default catalog".into()))?;
        catalog.register_schema(SYSTEM_SCHEMA, Arc::new(MemorySchemaProvider::new()))?;
        let tables = [
            ("source_errors", source_errors_batch(snapshot)?),
            ("watermarks", watermarks_batch(snapshot)?),
            ("operators", operators_batch(&figures.views)?),
            (
                "sources",
                objects_batch(&figures.objects, "source", snapshot)?,
            ),
            (
                "views",
                objects_batch(&figures.objects, "materialized_view", snapshot)?,
            ),
            ("sinks", objects_batch(&figures.objects, "sink", snapshot)?),
            (
                "checkpoints",
                checkpoints_batch(&self.checkpoint_history())?,
            ),
        ];
        let system: Vec<(&str, SchemaRef)> = tables.iter().map(|(n, b)| (*n, b.schema())).collect();
        for (name, batch) in tables {
            ctx.register_table(
                TableReference::partial(SYSTEM_SCHEMA, name),
                Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
            )?;
        }
        let mut query = query.clone();
        if crate::pg_catalog::mentions_catalog(&query) {
            let names = snapshot.relations.keys().cloned().collect();
            crate::pg_catalog::rewrite(&mut query, &names);
            crate::pg_catalog::register(&ctx, snapshot, &system, &self.users(), session)?;
        }
        Ok((ctx, query))
    }

    /// What `sabot_catalog`'s views, sources, sinks and operators show, when `query`
    /// may read them (it takes the engine's lock, which other reads do without).
    async fn operator_figures(&self, query: &ast::Query) -> SystemFigures {
        if !query
            .to_string()
            .to_ascii_lowercase()
            .contains(SYSTEM_SCHEMA)
        {
            return SystemFigures::default();
        }
        let views = self.view_metrics().await;
        let inner = self.inner.lock().await;
        let objects = inner
            .sources
            .iter()
            .map(|(name, s)| CatalogObject {
                name: name.clone(),
                kind: "source",
                detail: s.def.connector_name().to_string(),
                definition: s.meta.sql.clone(),
                error: None,
                watermark: s.watermark.as_ref().map(|(c, e)| format!("{c} AS {e}")),
            })
            .chain(
                inner
                    .views
                    .iter()
                    .filter(|v| !v.meta.sink)
                    .map(|v| CatalogObject {
                        name: v.meta.name.clone(),
                        kind: "materialized_view",
                        detail: if v.meta.emit_on_window_close {
                            "emit on window close".to_string()
                        } else {
                            "emit on update".to_string()
                        },
                        definition: v.meta.sql.clone(),
                        error: v.meta.error.clone(),
                        watermark: None,
                    }),
            )
            .chain(inner.sinks.iter().map(|(name, s)| CatalogObject {
                name: name.clone(),
                kind: "sink",
                detail: format!("{} → {}", inner.sink_from(s), s.target),
                definition: s.meta.sql.clone(),
                error: inner.sink_error(s),
                watermark: None,
            }))
            .collect();
        SystemFigures { views, objects }
    }

    /// Runs a read-only query against the last committed epoch.
    pub async fn query(&self, query: &ast::Query) -> Result<Output> {
        self.query_in(query, &Session::default()).await
    }

    /// [`Database::query`] as `session` sees it: its role and settings in the catalog.
    pub async fn query_in(&self, query: &ast::Query, session: &Session) -> Result<Output> {
        if crate::temporal::has_asof(query) {
            return self.query_by_dataflow(query).await;
        }
        let snapshot = self.snapshot();
        let views = self.operator_figures(query).await;
        let (ctx, mut rewritten) = self.read_context(&snapshot, query, &views, session)?;
        crate::colnames::alias_expressions(&mut rewritten);
        let plan = self.logical_plan(&ctx, &rewritten).await?;
        check_readable(&snapshot, &plan)?;
        let df = ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        let named = crate::colnames::rename(query, &schema);
        if named == schema {
            return Ok(Output::Rows { schema, batches });
        }
        Ok(Output::Rows {
            batches: crate::colnames::with_names(&named, batches)?,
            schema: named,
        })
    }

    /// Runs a query that DataFusion cannot (an ASOF join) as a view would compute it: its
    /// dataflow over the last committed epoch's rows, in one epoch whose state is
    /// dropped. ORDER BY, LIMIT and FETCH then apply to the result, by its column names.
    async fn query_by_dataflow(&self, query: &ast::Query) -> Result<Output> {
        let mut body = query.clone();
        let order_by = body.order_by.take();
        let limit = body.limit_clause.take();
        let fetch = body.fetch.take();
        let snapshot = self.snapshot();
        let mut flow = {
            let inner = self.inner.lock().await;
            self.plan_view(
                &body,
                0,
                &inner,
                false,
                false,
                (GpuSettings::default(), false),
            )
            .await?
            .0
        };
        let mut deltas = HashMap::new();
        for node in &flow.plan().nodes {
            let (sabot_dataflow::NodeKind::Source { relation }
            | sabot_dataflow::NodeKind::Connector { relation, .. }) = &node.kind
            else {
                continue;
            };
            let rel = snapshot.relations.get(relation).ok_or_else(|| {
                PlanError::user("42P01", format!("relation \"{relation}\" does not exist"))
            })?;
            if rel.kind == RelationKind::Source {
                return Err(PlanError::user(
                    "0A000",
                    format!(
                        "source \"{relation}\" cannot be queried directly; create a materialized view over it"
                    ),
                ));
            }
            if let Some(err) = &rel.error {
                return Err(PlanError::user(
                    "55000",
                    format!("materialized view \"{relation}\" has stopped updating: {err}"),
                ));
            }
            deltas.insert(relation.clone(), rel.insert_batches(usize::MAX));
        }
        flow.run_epoch(&deltas, &mut EpochBatch::new(snapshot.epoch))?;
        let result = flow.snapshot_batch()?;
        let schema = result.schema();
        if order_by.is_none() && limit.is_none() && fetch.is_none() {
            return Ok(Output::Rows {
                schema,
                batches: vec![result],
            });
        }
        let ctx = SessionContext::new();
        ctx.register_table(
            TableReference::bare("__sabot_result"),
            Arc::new(MemTable::try_new(Arc::clone(&schema), vec![vec![result]])?),
        )?;
        let mut outer = match sqlparser::parser::Parser::parse_sql(
            &sqlparser::dialect::PostgreSqlDialect {},
            "SELECT * FROM __sabot_result",
        )
        .map_err(|e| PlanError::Internal(e.to_string()))?
        .pop()
        {
            Some(ast::Statement::Query(q)) => q,
            _ => return Err(PlanError::Internal("the result query".into())),
        };
        // The result's columns go by their names alone.
        let mut order_by = order_by;
        if let Some(o) = &mut order_by {
            let _ = ast::VisitMut::visit(o, &mut Unqualify);
        }
        outer.order_by = order_by;
        outer.limit_clause = limit;
        outer.fetch = fetch;
        let stmt = DfStatement::Statement(Box::new(ast::Statement::Query(outer)));
        let plan = ctx.state().statement_to_plan(stmt).await?;
        let df = ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(Output::Rows { schema, batches })
    }

    /// The result columns of a query and the types DataFusion infers for its
    /// placeholders (`$1`, ...), without running it.
    pub async fn infer_query(
        &self,
        query: &ast::Query,
    ) -> Result<(SchemaRef, HashMap<String, Option<DataType>>)> {
        let snapshot = self.snapshot();
        let views = self.operator_figures(query).await;
        let (ctx, mut rewritten) =
            self.read_context(&snapshot, query, &views, &Session::default())?;
        crate::colnames::alias_expressions(&mut rewritten);
        let plan = self.logical_plan(&ctx, &rewritten).await?;
        let params = plan.get_parameter_types()?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Ok((crate::colnames::rename(query, &schema), params))
    }

    /// Plans a view's query into a dataflow whose state tables start at `first_table`.
    /// Returns the dataflow and the first state table id it left unused.
    async fn plan_view(
        &self,
        query: &ast::Query,
        first_table: StateTableId,
        inner: &Inner,
        emit_on_window_close: bool,
        for_sink: bool,
        gpu: (GpuSettings, bool),
    ) -> Result<(Dataflow, StateTableId)> {
        let sources = inner.source_factories();
        let snapshot = self.snapshot();
        let ctx = self.context(&snapshot, None)?;
        let plan = self.plan_query(&ctx, query, true).await?;
        // Rows are assigned to sessions, and ASOF joins pick their match, before the
        // query's WHERE applies: a filter pushed below either would change the result.
        let session = crate::windows::has_session(query);
        let asof = crate::temporal::has_asof(query);
        let mut watermarks = HashMap::new();
        for (relation, schema, decl) in inner.watermark_decls() {
            watermarks.insert(relation, watermark_spec(&ctx, &schema, decl)?);
        }
        // DISTINCT ON is planned as a top-N per group, so it must reach the stream
        // planner as such rather than rewritten into FIRST_VALUE aggregates.
        let base = ctx.state();
        let rules = base
            .optimizers()
            .iter()
            .filter(|r| r.name() != "replace_distinct_aggregate")
            .filter(|r| !((session || asof) && r.name() == "push_down_filter"))
            // It would lift an ASOF join's time condition out of the join.
            .filter(|r| !(asof && r.name() == "eliminate_cross_join"))
            .cloned()
            .collect();
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(base)
            .with_optimizer_rules(rules)
            .build();
        let optimized = state.optimize(&plan)?;
        let append_only = snapshot
            .relations
            .keys()
            .filter(|n| inner.append_only(n))
            .cloned()
            .collect();
        let (mut stream, next) = StreamPlanner::new(&state, first_table, sources)
            .with_watermarks(watermarks)
            .with_append_only(append_only)
            .emit_on_window_close(emit_on_window_close)
            .for_sink(for_sink)
            .plan(&optimized)?;
        crate::gpu::place(&mut stream, gpu.0, gpu.1)?;
        Ok((Dataflow::try_new(stream, self.config.workers)?, next))
    }

    /// The GPU settings a statement of `session` plans with.
    fn gpu_settings(&self, session: &Session) -> Result<GpuSettings> {
        GpuSettings::for_session(self.config.gpu, &session.settings)
    }

    /// Runs one statement.
    pub async fn execute(&self, parsed: &Parsed) -> Result<Output> {
        self.execute_with_progress(parsed, &Session::default(), None)
            .await
    }

    /// Runs one statement; long work (a view's backfill) reports its progress on
    /// `progress`, for the client as NOTICE messages.
    pub async fn execute_with_progress(
        &self,
        parsed: &Parsed,
        session: &Session,
        progress: Option<Progress>,
    ) -> Result<Output> {
        match &parsed.statement {
            Statement::Query(q) => self.query_in(q, session).await,
            Statement::CreateTable(ct) => self.create_table(ct, &parsed.text).await,
            Statement::CreateSource(cs) => self.create_source(cs, &parsed.text).await,
            Statement::CreateSink(cs) => {
                let gpu = self.gpu_settings(session)?;
                self.create_sink(cs, &parsed.text, progress, gpu).await
            }
            Statement::CreateMaterializedView {
                name,
                if_not_exists,
                query,
                query_text,
                emit_on_window_close,
            } => {
                let gpu = self.gpu_settings(session)?;
                self.create_view(
                    name,
                    *if_not_exists,
                    query,
                    query_text,
                    *emit_on_window_close,
                    progress,
                    gpu,
                )
                .await
            }
            Statement::Insert(i) => self.insert(i).await,
            Statement::Update(u) => self.update(u).await,
            Statement::Delete(d) => self.delete(d).await,
            Statement::Drop {
                kind,
                names,
                if_exists,
                cascade,
            } => self.drop(*kind, names, *if_exists, *cascade).await,
            Statement::Flush => {
                self.checkpoint().await?;
                Ok(command("FLUSH"))
            }
            Statement::ShowTables => Ok(self.show(RelationKind::Table)),
            Statement::ShowSources => Ok(self.show(RelationKind::Source)),
            Statement::ShowMaterializedViews => Ok(self.show(RelationKind::MaterializedView)),
            Statement::ShowSinks => self.show_sinks().await,
            Statement::ShowJobs => self.show_jobs().await,
            Statement::CancelJobs { names } => self.cancel_jobs(names).await,
            Statement::Describe(name) => self.describe(name),
            Statement::Explain(inner) => {
                self.explain(inner, false, self.gpu_settings(session)?)
                    .await
            }
            Statement::ExplainDot(inner) => {
                self.explain(inner, true, self.gpu_settings(session)?).await
            }
            Statement::Transaction(kind) => Ok(command(match kind {
                TransactionKind::Begin => "BEGIN",
                TransactionKind::Commit => "COMMIT",
                TransactionKind::Rollback => "ROLLBACK",
            })),
            // The session streams COPY's rows; run here, it is the query.
            Statement::CopyTo { query, .. } => self.query(query).await,
            Statement::User(_) => Err(PlanError::Internal(
                "roles are created by the session, which hashes the password".into(),
            )),
            Statement::SetTransaction => Ok(command("SET")),
            Statement::SetVariable { .. }
            | Statement::ResetVariable { .. }
            | Statement::ShowVariable(_) => Err(PlanError::Internal(
                "session settings are handled by the session".into(),
            )),
        }
    }

    async fn create_table(&self, ct: &ast::CreateTable, sql: &str) -> Result<Output> {
        let name = normalize_name(&ct.name)?;
        let (schema, pk) = table_schema(ct)?;
        let mut inner = self.inner.lock().await;
        self.register_table(
            &mut inner,
            name,
            ct.if_not_exists,
            sql,
            schema,
            pk,
            None,
            (false, None),
        )
    }

    /// A table declared with `APPEND ONLY` or `WATERMARK FOR` (`cs`), fed by `connector`
    /// when it has one: checks those clauses, then registers it.
    #[allow(clippy::too_many_arguments)]
    async fn add_table(
        &self,
        name: String,
        if_not_exists: bool,
        sql: &str,
        schema: SchemaRef,
        pk: Vec<usize>,
        connector: Option<&CreateSource>,
        cs: &CreateSource,
    ) -> Result<Output> {
        if cs.append_only && !pk.is_empty() {
            return Err(PlanError::user(
                "42P16",
                "an APPEND ONLY table has no primary key (rows are only ever added)",
            ));
        }
        if cs.append_only {
            if let Some(f) = connector.and_then(|c| c.format.as_ref()) {
                if f.format != "PLAIN" {
                    return Err(PlanError::user(
                        "42P16",
                        format!("an APPEND ONLY table reads FORMAT PLAIN, not {}", f.format),
                    ));
                }
            }
        }
        if let Some(decl) = &cs.watermark {
            if !cs.append_only {
                return Err(PlanError::user(
                    "42P16",
                    "a table with a WATERMARK must be APPEND ONLY (late rows are dropped, so \
                     updates and deletes could not reach the views)",
                ));
            }
            let ctx = self.context(&self.snapshot(), None)?;
            watermark_spec(&ctx, &schema, decl)?;
        }
        let mut inner = self.inner.lock().await;
        self.register_table(
            &mut inner,
            name,
            if_not_exists,
            sql,
            schema,
            pk,
            connector,
            (cs.append_only, cs.watermark.clone()),
        )
    }

    /// Registers a new table, fed by `connector` when it has one, and commits it.
    /// `options`: APPEND ONLY and the watermark.
    #[allow(clippy::too_many_arguments)]
    fn register_table(
        &self,
        inner: &mut Inner,
        name: String,
        if_not_exists: bool,
        sql: &str,
        schema: SchemaRef,
        pk: Vec<usize>,
        connector: Option<&CreateSource>,
        options: (bool, Option<(String, String)>),
    ) -> Result<Output> {
        if let Some(kind) = inner.exists(&name) {
            return already_exists(&name, kind, if_not_exists, "CREATE TABLE");
        }
        let state_table = inner.next_state_table;
        // A connector table keeps its splits' offsets in the next state table.
        let offsets_table = connector.map(|_| state_table + 1);
        let ingest = match (connector, offsets_table) {
            (Some(cs), Some(offsets)) => Some(Ingest::try_new(
                &cs.options,
                cs.format.as_ref(),
                Arc::clone(&schema),
                &pk,
                offsets,
                &cs.include,
            )?),
            _ => None,
        };
        let state = TableState::try_new(&name, schema, pk, state_table)?;
        let meta = TableMeta {
            name: name.clone(),
            order: inner.next_order,
            sql: sql.to_string(),
            state_table,
            offsets_table,
        };
        let mut batch = EpochBatch::new(inner.epoch + 1);
        batch.put_catalog(&name, catalog_bytes(&CatalogEntry::Table(meta.clone()))?);
        inner.next_state_table += if ingest.is_some() { 2 } else { 1 };
        inner.next_order += 1;
        inner.tables.insert(
            name.clone(),
            TableEntry {
                meta,
                state,
                ingest,
                append_only: options.0,
                watermark: options.1,
            },
        );
        self.run_epoch(inner, batch, HashSet::from([name]), &[])?;
        Ok(command("CREATE TABLE"))
    }

    /// `CREATE TABLE ... WITH (connector = ...)`: a table whose rows come from a
    /// connector (see [`crate::ingest`]).
    async fn create_connector_table(&self, cs: &CreateSource, sql: &str) -> Result<Output> {
        let name = normalize_name(&cs.table.name)?;
        let (schema, pk) = connector_table_schema(cs)?;
        let connector = has_connector(cs).then_some(cs);
        self.add_table(name, cs.table.if_not_exists, sql, schema, pk, connector, cs)
            .await
    }

    async fn create_source(&self, cs: &CreateSource, sql: &str) -> Result<Output> {
        if cs.is_table {
            return self.create_connector_table(cs, sql).await;
        }
        let name = normalize_name(&cs.table.name)?;
        let created_ms = chrono::Utc::now().timestamp_millis();
        let def = source_def(&name, cs, created_ms, AvroColumns::Registry)?;
        if let Some(decl) = &cs.watermark {
            let ctx = self.context(&self.snapshot(), None)?;
            watermark_spec(&ctx, &def.schema(), decl)?;
        }
        let mut inner = self.inner.lock().await;
        if let Some(kind) = inner.exists(&name) {
            return already_exists(&name, kind, cs.table.if_not_exists, "CREATE SOURCE");
        }
        let meta = SourceMeta {
            name: name.clone(),
            order: inner.next_order,
            sql: sql.to_string(),
            created_ms,
            avro_schema: def.avro_schema().map(str::to_string),
        };
        let mut batch = EpochBatch::new(inner.epoch + 1);
        batch.put_catalog(&name, catalog_bytes(&CatalogEntry::Source(meta.clone()))?);
        inner.next_order += 1;
        inner.sources.insert(
            name.clone(),
            SourceEntry {
                def: Arc::new(def),
                meta: meta.clone(),
                watermark: cs.watermark.clone(),
            },
        );
        self.run_epoch(&mut inner, batch, HashSet::from([name]), &[])?;
        Ok(command("CREATE SOURCE"))
    }

    async fn create_sink(
        &self,
        cs: &CreateSink,
        sql: &str,
        progress: Option<Progress>,
        gpu: GpuSettings,
    ) -> Result<Output> {
        let name = normalize_name(&cs.name)?;
        let mut inner = self.inner.lock().await;
        if let Some(kind) = inner.exists(&name) {
            return already_exists(&name, kind, cs.if_not_exists, "CREATE SINK");
        }
        let from = match &cs.from {
            SinkFrom::Relation(r) => normalize_name(r)?,
            SinkFrom::Query { query, text } => {
                return self
                    .create_sink_as(cs, sql, name, query, text, inner, progress, gpu)
                    .await
            }
        };
        match inner.exists(&from) {
            Some(RelationKind::MaterializedView | RelationKind::Table) => {}
            Some(RelationKind::Source) => {
                return Err(PlanError::user(
                    "42809",
                    format!(
                        "\"{from}\" is a source; create a materialized view over it and sink that"
                    ),
                ))
            }
            Some(RelationKind::Sink) => {
                return Err(PlanError::user("42809", format!("\"{from}\" is a sink")))
            }
            None => {
                return Err(PlanError::user(
                    "42P01",
                    format!("relation \"{from}\" does not exist"),
                ))
            }
        }
        let columns = inner.columns(&from)?;
        let mut spec = sink_spec(cs, inner.append_only(&from), &columns)?;
        check_target(&inner, &spec.target)?;
        // Commit pending changes first: the sink starts with the relation's contents as of
        // a committed epoch and every later change reaches it through the changelog.
        let next = inner.epoch + 1;
        self.run_epoch(&mut inner, EpochBatch::new(next), HashSet::new(), &[])?;
        let snapshot = self.snapshot();
        let rel = snapshot
            .relations
            .get(&from)
            .ok_or_else(|| PlanError::Internal(format!("relation {from} vanished")))?;
        if let Some(err) = &rel.error {
            return Err(PlanError::user(
                "55000",
                format!("materialized view \"{from}\" has stopped updating: {err}"),
            ));
        }
        spec.writer
            .recover(0, Vec::new())
            .map_err(|e| PlanError::user("58030", e.to_string()))?;
        let initial = rel.insert_batches(BACKFILL_BATCH_ROWS);
        let meta = SinkMeta {
            name: name.clone(),
            order: inner.next_order,
            sql: sql.to_string(),
            from,
            state_table: inner.next_state_table,
            error: None,
        };
        let mut batch = EpochBatch::new(inner.epoch + 1);
        batch.put_catalog(&name, catalog_bytes(&CatalogEntry::Sink(meta.clone()))?);
        inner.next_state_table += 1;
        inner.next_order += 1;
        inner.sinks.insert(
            name,
            SinkEntry {
                meta,
                writer: spec.writer,
                target: spec.target,
                initial,
            },
        );
        self.run_epoch(&mut inner, batch, HashSet::new(), &[])?;
        Ok(command("CREATE SINK"))
    }

    /// `CREATE SINK name AS query`: the query runs as a dataflow of its own (a view that
    /// keeps no rows and cannot be read, under the sink's name) whose changes go only to
    /// the sink. Its first output is the query over the current rows, as for a view.
    #[allow(clippy::too_many_arguments)]
    async fn create_sink_as(
        &self,
        cs: &CreateSink,
        sql: &str,
        name: String,
        query: &ast::Query,
        query_text: &str,
        mut inner: tokio::sync::MutexGuard<'_, Inner>,
        progress: Option<Progress>,
        gpu: GpuSettings,
    ) -> Result<Output> {
        let next = inner.epoch + 1;
        self.run_epoch(&mut inner, EpochBatch::new(next), HashSet::new(), &[])?;
        let first = inner.next_state_table;
        let (mut dataflow, next) = self
            .plan_view(query, first, &inner, false, true, (gpu, true))
            .await?;
        let last = dataflow
            .plan()
            .nodes
            .last()
            .ok_or_else(|| PlanError::Internal("a sink's query has no plan".into()))?;
        let append_only = matches!(last.kind, sabot_dataflow::NodeKind::Emit { keyed: false });
        let columns = Arc::clone(&last.schema);
        let mut spec = sink_spec(cs, append_only, &columns)?;
        check_target(&inner, &spec.target)?;
        let deltas = self.backfill_inputs(&dataflow, &inner)?;
        let mut batch = EpochBatch::new(inner.epoch + 1);
        let initial = self
            .backfill(&mut dataflow, deltas, &mut batch, &name, progress.as_ref())
            .await?;
        spec.writer
            .recover(0, Vec::new())
            .map_err(|e| PlanError::user("58030", e.to_string()))?;
        let view = ViewMeta {
            name: name.clone(),
            order: inner.next_order,
            sql: query_text.to_string(),
            first_state_table: first,
            error: None,
            emit_on_window_close: false,
            sink: true,
            gpu: Some(gpu),
        };
        batch.put_catalog(
            &sink_query_key(&name),
            catalog_bytes(&CatalogEntry::View(view.clone()))?,
        );
        inner.next_state_table = next;
        let meta = SinkMeta {
            name: name.clone(),
            order: inner.next_order + 1,
            sql: sql.to_string(),
            from: name.clone(),
            state_table: inner.next_state_table,
            error: None,
        };
        batch.put_catalog(&name, catalog_bytes(&CatalogEntry::Sink(meta.clone()))?);
        inner.next_state_table += 1;
        inner.next_order += 2;
        inner.views.push(ViewEntry {
            meta: view,
            dataflow,
            synced_at: None,
            samples: Default::default(),
        });
        inner.sinks.insert(
            name,
            SinkEntry {
                meta,
                writer: spec.writer,
                target: spec.target,
                initial,
            },
        );
        self.run_epoch(&mut inner, batch, HashSet::new(), &[])?;
        Ok(command("CREATE SINK"))
    }

    /// One row per view that reads a source (a connector): whether it is still
    /// catching up, how much its readers have read (offsets: rows, or events for
    /// nexmark), how far through a bounded source that is, its rates and freshness.
    async fn show_jobs(&self) -> Result<Output> {
        // Read without the engine's lock: a backfill holds it while it runs.
        let mut jobs: Vec<JobRow> = self
            .backfills
            .lock()
            .iter()
            .map(|b| {
                let secs = b.started.elapsed().as_secs_f64();
                JobRow {
                    name: b.view.clone(),
                    status: "backfilling",
                    read: b.done as u64,
                    total: Some(b.total as u64),
                    rows_per_second: (secs > 0.0).then(|| b.done as f64 / secs),
                    synced_at: None,
                }
            })
            .collect();
        jobs.extend(self.jobs.lock().iter().cloned());
        let now = std::time::SystemTime::now();
        let name: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
        let status: Vec<&str> = jobs.iter().map(|j| j.status).collect();
        let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let read: Vec<i64> = jobs.iter().map(|j| big(j.read)).collect();
        let total: Vec<Option<i64>> = jobs.iter().map(|j| j.total.map(big)).collect();
        let progress: Vec<Option<f64>> = jobs
            .iter()
            .map(|j| {
                j.total.map(|e| {
                    if e == 0 {
                        100.0
                    } else {
                        (100.0 * j.read as f64 / e as f64).min(100.0)
                    }
                })
            })
            .collect();
        let rate: Vec<Option<f64>> = jobs.iter().map(|j| j.rows_per_second).collect();
        let fresh: Vec<Option<f64>> = jobs
            .iter()
            .map(|j| {
                j.synced_at.map(|t| {
                    now.duration_since(t)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0)
                })
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("Name", DataType::Utf8, false),
            Field::new("Status", DataType::Utf8, false),
            Field::new("Read", DataType::Int64, false),
            Field::new("Total", DataType::Int64, true),
            Field::new("Progress", DataType::Float64, true),
            Field::new("Rows per second", DataType::Float64, true),
            Field::new("Freshness seconds", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(name)),
                Arc::new(StringArray::from(status)),
                Arc::new(Int64Array::from(read)),
                Arc::new(Int64Array::from(total)),
                Arc::new(arrow::array::Float64Array::from(progress)),
                Arc::new(arrow::array::Float64Array::from(rate)),
                Arc::new(arrow::array::Float64Array::from(fresh)),
            ],
        )?;
        Ok(Output::Rows {
            schema,
            batches: vec![batch],
        })
    }

    /// Drops views that are jobs (views reading a source that is not read to its end);
    /// like `DROP MATERIALIZED VIEW`, refused while other views read them.
    async fn cancel_jobs(&self, names: &[ast::ObjectName]) -> Result<Output> {
        // A backfill holds the engine's lock: it is told to stop, and its CREATE fails.
        let running: Vec<String> = names.iter().map(normalize_name).collect::<Result<_>>()?;
        {
            let mut backfills = self.backfills.lock();
            if running
                .iter()
                .all(|n| backfills.iter().any(|b| &b.view == n))
            {
                for b in backfills.iter_mut().filter(|b| running.contains(&b.view)) {
                    b.cancel = Some(format!(
                        "canceling the backfill of materialized view \"{}\" (CANCEL JOBS)",
                        b.view
                    ));
                }
                return Ok(Output::Command {
                    tag: "CANCEL JOBS".into(),
                    rows: Some(names.len()),
                });
            }
        }
        {
            let inner = self.inner.lock().await;
            for n in names {
                let name = normalize_name(n)?;
                let Some(v) = inner.views.iter().find(|v| v.meta.name == name) else {
                    return Err(PlanError::user(
                        "42704",
                        format!("job \"{name}\" does not exist (SHOW JOBS lists them)"),
                    ));
                };
                if v.dataflow.source_progress().is_none() {
                    return Err(PlanError::user(
                        "42704",
                        format!("\"{name}\" reads no source: it is no job (drop it instead)"),
                    ));
                }
                if v.meta.error.is_none() && !v.dataflow.sources_active() {
                    return Err(PlanError::user(
                        "55000",
                        format!("job \"{name}\" has finished: drop the view instead"),
                    ));
                }
            }
        }
        self.drop(ObjectKind::MaterializedView, names, false, false)
            .await?;
        Ok(Output::Command {
            tag: "CANCEL JOBS".into(),
            rows: Some(names.len()),
        })
    }

    async fn show_sinks(&self) -> Result<Output> {
        let inner = self.inner.lock().await;
        let schema = Arc::new(Schema::new(vec![
            Field::new("Name", DataType::Utf8, false),
            Field::new("From", DataType::Utf8, false),
            Field::new("Target", DataType::Utf8, false),
            Field::new("Error", DataType::Utf8, true),
        ]));
        let sinks: Vec<&SinkEntry> = inner.sinks.values().collect();
        let column = |f: &dyn Fn(&SinkEntry) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(
                sinks.iter().map(|s| f(s)).collect::<Vec<Option<String>>>(),
            ))
        };
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                column(&|s| Some(s.meta.name.clone())),
                column(&|s| Some(inner.sink_from(s))),
                column(&|s| Some(s.target.clone())),
                column(&|s| inner.sink_error(s)),
            ],
        )?;
        Ok(Output::Rows {
            schema,
            batches: vec![batch],
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_view(
        &self,
        name: &ast::ObjectName,
        if_not_exists: bool,
        query: &ast::Query,
        query_text: &str,
        emit_on_window_close: bool,
        progress: Option<Progress>,
        gpu: GpuSettings,
    ) -> Result<Output> {
        let name = normalize_name(name)?;
        let mut inner = self.inner.lock().await;
        if let Some(kind) = inner.exists(&name) {
            return already_exists(&name, kind, if_not_exists, "CREATE MATERIALIZED VIEW");
        }
        // Commit pending changes first: the backfill then starts from a committed epoch
        // and every later change reaches the view through its changelog.
        let next = inner.epoch + 1;
        self.run_epoch(&mut inner, EpochBatch::new(next), HashSet::new(), &[])?;
        let first = inner.next_state_table;
        let (mut dataflow, next) = self
            .plan_view(
                query,
                first,
                &inner,
                emit_on_window_close,
                false,
                (gpu, true),
            )
            .await?;
        let deltas = self.backfill_inputs(&dataflow, &inner)?;
        let epoch = inner.epoch + 1;
        let mut batch = EpochBatch::new(epoch);
        self.backfill(&mut dataflow, deltas, &mut batch, &name, progress.as_ref())
            .await?;
        let meta = ViewMeta {
            name: name.clone(),
            order: inner.next_order,
            sql: query_text.to_string(),
            first_state_table: first,
            error: None,
            emit_on_window_close,
            sink: false,
            gpu: Some(gpu),
        };
        batch.put_catalog(&name, catalog_bytes(&CatalogEntry::View(meta.clone()))?);
        inner.next_state_table = next;
        inner.next_order += 1;
        inner.views.push(ViewEntry {
            meta,
            dataflow,
            synced_at: None,
            samples: Default::default(),
        });
        self.run_epoch(&mut inner, batch, HashSet::from([name]), &[])?;
        Ok(command("CREATE MATERIALIZED VIEW"))
    }

    /// What a new dataflow's backfill reads: the current rows of the tables and views
    /// it reads (sources it reads itself, from their start).
    fn backfill_inputs(
        &self,
        dataflow: &Dataflow,
        inner: &Inner,
    ) -> Result<HashMap<String, Vec<ChangeBatch>>> {
        let snapshot = self.snapshot();
        let mut deltas: HashMap<String, Vec<ChangeBatch>> = HashMap::new();
        for source in dataflow.plan().sources() {
            if inner.sources.contains_key(source) {
                continue;
            }
            let rel = snapshot
                .relations
                .get(source)
                .ok_or_else(|| PlanError::Internal(format!("source {source} vanished")))?;
            if let Some(err) = &rel.error {
                return Err(PlanError::user(
                    "55000",
                    format!("materialized view \"{source}\" has stopped updating: {err}"),
                ));
            }
            deltas.insert(source.to_string(), rel.insert_batches(BACKFILL_BATCH_ROWS));
        }
        Ok(deltas)
    }

    async fn drop(
        &self,
        kind: ObjectKind,
        names: &[ast::ObjectName],
        if_exists: bool,
        cascade: bool,
    ) -> Result<Output> {
        let mut inner = self.inner.lock().await;
        let (want, what, tag) = match kind {
            ObjectKind::Table => (RelationKind::Table, "table", "DROP TABLE"),
            ObjectKind::MaterializedView => (
                RelationKind::MaterializedView,
                "materialized view",
                "DROP MATERIALIZED VIEW",
            ),
            ObjectKind::Source => (RelationKind::Source, "source", "DROP SOURCE"),
            ObjectKind::Sink => (RelationKind::Sink, "sink", "DROP SINK"),
        };
        let mut to_drop: Vec<String> = Vec::new();
        for n in names {
            let name = normalize_name(n)?;
            match inner.exists(&name) {
                None if if_exists => continue,
                None => {
                    return Err(PlanError::user(
                        "42P01",
                        format!("{what} \"{name}\" does not exist"),
                    ))
                }
                Some(k) if k != want => {
                    return Err(PlanError::user(
                        "42809",
                        format!("\"{name}\" is not a {what}"),
                    ))
                }
                Some(_) => {}
            }
            let deps = inner.dependents(&name);
            if !deps.is_empty() && !cascade {
                return Err(PlanError::user(
                    "2BP01",
                    format!(
                        "cannot drop {what} {name} because other objects depend on it ({}); use DROP ... CASCADE to drop them too",
                        deps.iter()
                            .map(|d| if inner.sinks.contains_key(d) {
                                format!("sink {d}")
                            } else {
                                format!("materialized view {d}")
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            for d in deps.into_iter().rev() {
                if !to_drop.contains(&d) {
                    to_drop.push(d);
                }
            }
            if !to_drop.contains(&name) {
                to_drop.push(name);
            }
        }
        if to_drop.is_empty() {
            return Ok(command(tag));
        }
        let mut batch = EpochBatch::new(inner.epoch + 1);
        for name in &to_drop {
            batch.delete_catalog(name);
            if let Some(t) = inner.tables.remove(name) {
                batch.drop_state_table(t.meta.state_table);
                if let Some(offsets) = t.meta.offsets_table {
                    batch.drop_state_table(offsets);
                }
            } else if let Some(sink) = inner.sinks.remove(name) {
                // What it wrote stays where it wrote it; undelivered output is dropped.
                batch.drop_state_table(sink.meta.state_table);
                // `CREATE SINK ... AS`: its query goes with it.
                if let Some(pos) = inner
                    .views
                    .iter()
                    .position(|v| &v.meta.name == name && v.meta.sink)
                {
                    let v = inner.views.remove(pos);
                    for table in v.dataflow.plan().state_tables() {
                        batch.drop_state_table(table);
                    }
                    batch.delete_catalog(&sink_query_key(name));
                }
            } else if inner.sources.remove(name).is_some() {
                // A source keeps no state of its own: its readers live in the views.
            } else if let Some(pos) = inner.views.iter().position(|v| &v.meta.name == name) {
                let v = inner.views.remove(pos);
                for table in v.dataflow.plan().state_tables() {
                    batch.drop_state_table(table);
                }
            }
        }
        self.run_epoch(&mut inner, batch, HashSet::new(), &to_drop)?;
        Ok(command(tag))
    }

    /// Resolves a DML target, which must be a table.
    /// UPDATE and DELETE are refused on an APPEND ONLY table.
    fn check_not_append_only(inner: &Inner, name: &str, what: &str) -> Result<()> {
        if inner.tables.get(name).is_some_and(|t| t.append_only) {
            return Err(PlanError::user(
                "42809",
                format!("cannot {what} table \"{name}\": it is APPEND ONLY"),
            ));
        }
        Ok(())
    }

    fn dml_target(inner: &Inner, name: &ast::ObjectName) -> Result<String> {
        let name = normalize_name(name)?;
        match inner.exists(&name) {
            Some(RelationKind::Table)
                if inner
                    .tables
                    .get(&name)
                    .is_some_and(|t| t.meta.offsets_table.is_some()) =>
            {
                Err(PlanError::user(
                    "42809",
                    format!("cannot change table \"{name}\": its rows come from its connector"),
                ))
            }
            Some(RelationKind::Table) => Ok(name),
            Some(RelationKind::MaterializedView) => Err(PlanError::user(
                "42809",
                format!("cannot change materialized view \"{name}\": write to the tables it reads"),
            )),
            Some(RelationKind::Source) => Err(PlanError::user(
                "42809",
                format!("cannot change source \"{name}\": its rows come from its connector"),
            )),
            Some(RelationKind::Sink) => Err(PlanError::user(
                "42809",
                format!("cannot change sink \"{name}\": it writes out a view's changes"),
            )),
            None => Err(PlanError::user(
                "42P01",
                format!("relation \"{name}\" does not exist"),
            )),
        }
    }

    async fn insert(&self, insert: &ast::Insert) -> Result<Output> {
        if insert.on.is_some() {
            return Err(PlanError::user(
                "0A000",
                "INSERT ... ON CONFLICT is not supported yet",
            ));
        }
        if insert.returning.is_some() {
            return Err(PlanError::user(
                "0A000",
                "INSERT ... RETURNING is not supported yet",
            ));
        }
        let ast::TableObject::TableName(table_name) = &insert.table else {
            return Err(PlanError::user(
                "0A000",
                "INSERT into a table function is not supported",
            ));
        };
        let Some(source) = &insert.source else {
            return Err(PlanError::user(
                "0A000",
                "INSERT without VALUES or SELECT is not supported",
            ));
        };
        let mut inner = self.inner.lock().await;
        let name = Self::dml_target(&inner, table_name)?;
        let schema = Arc::clone(inner.tables[&name].state.schema());
        // Target columns, by position in the table.
        let targets: Vec<usize> = if insert.columns.is_empty() {
            (0..schema.fields().len()).collect()
        } else {
            insert
                .columns
                .iter()
                .map(|c| {
                    let col =
                        c.0.last()
                            .and_then(|p| p.as_ident())
                            .map(normalize_ident)
                            .unwrap_or_default();
                    schema.index_of(&col).map_err(|_| {
                        PlanError::user(
                            "42703",
                            format!("column \"{col}\" of relation \"{name}\" does not exist"),
                        )
                    })
                })
                .collect::<Result<_>>()?
        };
        let snapshot = self.snapshot();
        let ctx = self.context(&snapshot, None)?;
        let plan = self.logical_plan(&ctx, source).await?;
        let produced = plan.schema().fields().len();
        if produced > targets.len() {
            return Err(PlanError::user(
                "42601",
                "INSERT has more expressions than target columns",
            ));
        }
        if produced < targets.len() {
            return Err(PlanError::user(
                "42601",
                "INSERT has more target columns than expressions",
            ));
        }
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        let mut rows = 0;
        let table = inner
            .tables
            .get_mut(&name)
            .ok_or_else(|| PlanError::Internal("table vanished".into()))?;
        let mut converted = Vec::with_capacity(batches.len());
        for b in &batches {
            converted.push(conform(b, &targets, &schema, &table.state)?);
        }
        let all = arrow::compute::concat_batches(&schema, &converted)?;
        rows += table.state.insert(all)?;
        Ok(Output::Command {
            tag: "INSERT 0".into(),
            rows: Some(rows),
        })
    }

    /// Rows of table `name` (including uncommitted changes) matching `selection`, plus
    /// `extra` expressions evaluated on them.
    async fn select_current(
        &self,
        inner: &Inner,
        name: &str,
        alias: Option<&ast::TableAlias>,
        selection: Option<&ast::Expr>,
        extra: &[ast::Expr],
    ) -> Result<RecordBatch> {
        let table = &inner.tables[name];
        let schema = Arc::clone(table.state.schema());
        let current = table.state.contents()?;
        let snapshot = self.snapshot();
        let ctx = self.context(&snapshot, Some((name, vec![current])))?;
        let qualifier = alias
            .map(|a| quote_ident(&a.name.value))
            .unwrap_or_else(|| quote_ident(name));
        let mut items: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{qualifier}.{}", quote_ident(f.name())))
            .collect();
        items.extend(
            extra
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{e} AS \"__sabot_set_{i}\"")),
        );
        let from = match alias {
            Some(a) => format!("{} AS {}", quote_ident(name), quote_ident(&a.name.value)),
            None => quote_ident(name),
        };
        let mut sql = format!("SELECT {} FROM {from}", items.join(", "));
        if let Some(sel) = selection {
            sql.push_str(&format!(" WHERE {sel}"));
        }
        let parsed = sabot_sql::parse(&sql)?;
        let Some(Statement::Query(q)) = parsed.into_iter().next().map(|p| p.statement) else {
            return Err(PlanError::Internal("rewritten DML is not a query".into()));
        };
        let plan = self.logical_plan(&ctx, &q).await?;
        let out_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        Ok(arrow::compute::concat_batches(&out_schema, &batches)?)
    }

    async fn update(&self, update: &ast::Update) -> Result<Output> {
        if update.from.is_some() || !update.table.joins.is_empty() {
            return Err(PlanError::user(
                "0A000",
                "UPDATE ... FROM is not supported yet",
            ));
        }
        if update.returning.is_some() {
            return Err(PlanError::user(
                "0A000",
                "UPDATE ... RETURNING is not supported yet",
            ));
        }
        let ast::TableFactor::Table {
            name: table_name,
            alias,
            ..
        } = &update.table.relation
        else {
            return Err(PlanError::user(
                "0A000",
                "UPDATE of this relation is not supported",
            ));
        };
        let mut inner = self.inner.lock().await;
        let name = Self::dml_target(&inner, table_name)?;
        Self::check_not_append_only(&inner, &name, "UPDATE")?;
        let schema = Arc::clone(inner.tables[&name].state.schema());
        let mut set_cols = Vec::new();
        let mut exprs = Vec::new();
        for a in &update.assignments {
            let ast::AssignmentTarget::ColumnName(col) = &a.target else {
                return Err(PlanError::user(
                    "0A000",
                    "UPDATE of a column tuple is not supported",
                ));
            };
            let col = col
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(normalize_ident)
                .unwrap_or_default();
            let idx = schema.index_of(&col).map_err(|_| {
                PlanError::user(
                    "42703",
                    format!("column \"{col}\" of relation \"{name}\" does not exist"),
                )
            })?;
            if set_cols.contains(&idx) {
                return Err(PlanError::user(
                    "42601",
                    format!("multiple assignments to same column \"{col}\""),
                ));
            }
            set_cols.push(idx);
            exprs.push(a.value.clone());
        }
        let found = self
            .select_current(
                &inner,
                &name,
                alias.as_ref(),
                update.selection.as_ref(),
                &exprs,
            )
            .await?;
        let n = schema.fields().len();
        let old = RecordBatch::try_new(Arc::clone(&schema), found.columns()[..n].to_vec())?;
        let mut new_cols: Vec<ArrayRef> = old.columns().to_vec();
        for (k, idx) in set_cols.iter().enumerate() {
            new_cols[*idx] = cast_strict(found.column(n + k), schema.field(*idx).data_type())?;
        }
        inner.tables[&name].state.check_columns(&new_cols)?;
        let new = RecordBatch::try_new(Arc::clone(&schema), new_cols)?;
        let table = inner
            .tables
            .get_mut(&name)
            .ok_or_else(|| PlanError::Internal("table vanished".into()))?;
        let rows = table.state.replace(Some(old), new)?;
        Ok(Output::Command {
            tag: "UPDATE".into(),
            rows: Some(rows),
        })
    }

    async fn delete(&self, delete: &ast::Delete) -> Result<Output> {
        if delete.using.is_some() || !delete.tables.is_empty() {
            return Err(PlanError::user(
                "0A000",
                "DELETE ... USING is not supported yet",
            ));
        }
        if delete.returning.is_some() {
            return Err(PlanError::user(
                "0A000",
                "DELETE ... RETURNING is not supported yet",
            ));
        }
        let from = match &delete.from {
            ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
        };
        let [twj] = from.as_slice() else {
            return Err(PlanError::user(
                "0A000",
                "DELETE from several tables is not supported",
            ));
        };
        let ast::TableFactor::Table {
            name: table_name,
            alias,
            ..
        } = &twj.relation
        else {
            return Err(PlanError::user(
                "0A000",
                "DELETE from this relation is not supported",
            ));
        };
        let mut inner = self.inner.lock().await;
        let name = Self::dml_target(&inner, table_name)?;
        Self::check_not_append_only(&inner, &name, "DELETE")?;
        let found = self
            .select_current(
                &inner,
                &name,
                alias.as_ref(),
                delete.selection.as_ref(),
                &[],
            )
            .await?;
        let schema = Arc::clone(inner.tables[&name].state.schema());
        let old = RecordBatch::try_new(schema, found.columns().to_vec())?;
        let table = inner
            .tables
            .get_mut(&name)
            .ok_or_else(|| PlanError::Internal("table vanished".into()))?;
        let rows = table.state.delete(old)?;
        Ok(Output::Command {
            tag: "DELETE".into(),
            rows: Some(rows),
        })
    }

    fn show(&self, kind: RelationKind) -> Output {
        let snapshot = self.snapshot();
        let names: Vec<&str> = snapshot
            .relations
            .iter()
            .filter(|(_, r)| r.kind == kind)
            .map(|(n, _)| n.as_str())
            .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("Name", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(names))],
        );
        match batch {
            Ok(b) => Output::Rows {
                schema,
                batches: vec![b],
            },
            Err(_) => Output::Rows {
                schema,
                batches: vec![],
            },
        }
    }

    fn describe(&self, name: &ast::ObjectName) -> Result<Output> {
        let name = normalize_name(name)?;
        let snapshot = self.snapshot();
        let rel = snapshot.relations.get(&name).ok_or_else(|| {
            PlanError::user("42P01", format!("relation \"{name}\" does not exist"))
        })?;
        let mut names = Vec::new();
        let mut types = Vec::new();
        let mut nullable = Vec::new();
        let mut key = Vec::new();
        for f in rel.schema.fields() {
            names.push(f.name().clone());
            types.push(sql_type_name(f));
            let is_key = rel.primary_key.contains(f.name());
            nullable.push(if f.is_nullable() && !is_key {
                "YES"
            } else {
                "NO"
            });
            key.push(if is_key { "YES" } else { "NO" });
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("Name", DataType::Utf8, false),
            Field::new("Type", DataType::Utf8, false),
            Field::new("Nullable", DataType::Utf8, false),
            Field::new("Primary Key", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(types)),
                Arc::new(StringArray::from(nullable)),
                Arc::new(StringArray::from(key)),
            ],
        )?;
        Ok(Output::Rows {
            schema,
            batches: vec![batch],
        })
    }

    /// EXPLAIN: the plan as indented lines, one row each; with `dot`, a view's dataflow
    /// as one Graphviz document in one row (as PostgreSQL returns non-text formats).
    async fn explain(&self, stmt: &Statement, dot: bool, gpu: GpuSettings) -> Result<Output> {
        if dot && !matches!(stmt, Statement::CreateMaterializedView { .. }) {
            return Err(PlanError::user(
                "0A000",
                "EXPLAIN (FORMAT DOT) shows the dataflow of CREATE MATERIALIZED VIEW",
            ));
        }
        let text = match stmt {
            Statement::CreateMaterializedView {
                query,
                emit_on_window_close,
                ..
            } => {
                let inner = self.inner.lock().await;
                let first = inner.next_state_table;
                let (dataflow, _) = self
                    .plan_view(
                        query,
                        first,
                        &inner,
                        *emit_on_window_close,
                        false,
                        (gpu, true),
                    )
                    .await?;
                if dot {
                    dataflow.plan().explain_dot(self.config.workers)
                } else {
                    dataflow.plan().explain(self.config.workers)
                }
            }
            Statement::Query(q) => {
                let snapshot = self.snapshot();
                let views = self.operator_figures(q).await;
                let (ctx, q) = self.read_context(&snapshot, q, &views, &Session::default())?;
                let plan = self.logical_plan(&ctx, &q).await?;
                let optimized = ctx.state().optimize(&plan)?;
                format!("{}", optimized.display_indent())
            }
            _ => {
                return Err(PlanError::user(
                    "0A000",
                    "EXPLAIN of this statement is not supported",
                ))
            }
        };
        let lines: Vec<&str> = if dot {
            vec![text.as_str()]
        } else {
            text.lines().collect()
        };
        let schema = Arc::new(Schema::new(vec![Field::new(
            "QUERY PLAN",
            DataType::Utf8,
            false,
        )]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(lines))],
        )?;
        Ok(Output::Rows {
            schema,
            batches: vec![batch],
        })
    }
}

fn command(tag: &str) -> Output {
    Output::Command {
        tag: tag.to_string(),
        rows: None,
    }
}

fn already_exists(
    name: &str,
    kind: RelationKind,
    if_not_exists: bool,
    tag: &str,
) -> Result<Output> {
    let what = match kind {
        RelationKind::Table => "table",
        RelationKind::MaterializedView => "materialized view",
        RelationKind::Source => "source",
        RelationKind::Sink => "sink",
    };
    if if_not_exists {
        return Ok(Output::Notice {
            tag: tag.to_string(),
            notice: format!("relation \"{name}\" already exists, skipping"),
        });
    }
    Err(PlanError::user(
        "42P07",
        format!("relation \"{name}\" already exists (a {what})"),
    ))
}

/// Whether a `CREATE TABLE` names a connector (rather than only APPEND ONLY or a
/// watermark).
fn has_connector(cs: &CreateSource) -> bool {
    cs.options.iter().any(|(k, _)| k == "connector")
}

/// The watermark filter of `WATERMARK FOR column AS expression` over `schema`: the
/// column must be a timestamp and the expression of its type.
fn watermark_spec(
    ctx: &SessionContext,
    schema: &SchemaRef,
    (column, text): &(String, String),
) -> Result<WatermarkSpec> {
    let index = schema.index_of(column).map_err(|_| {
        PlanError::user(
            "42703",
            format!("column \"{column}\" of WATERMARK FOR does not exist"),
        )
    })?;
    let ty = schema.field(index).data_type();
    if !matches!(ty, DataType::Timestamp(..)) {
        return Err(PlanError::user(
            "42804",
            format!("WATERMARK FOR needs a timestamp column; \"{column}\" is {ty}"),
        ));
    }
    let df = datafusion::common::DFSchema::try_from(schema.as_ref().clone())?;
    let invalid = |e: datafusion::error::DataFusionError| {
        PlanError::user(
            "42804",
            format!(
                "invalid WATERMARK expression {text}: {}",
                e.strip_backtrace()
            ),
        )
    };
    let expr = ctx.parse_sql_expr(text, &df).map_err(invalid)?;
    let expr_ty = expr.get_type(&df).map_err(invalid)?;
    if &expr_ty != ty {
        return Err(PlanError::user(
            "42804",
            format!("the WATERMARK expression {text} is {expr_ty}, not {ty} like \"{column}\""),
        ));
    }
    if expr.is_volatile() {
        return Err(PlanError::user(
            "42P17",
            format!("the WATERMARK expression {text} is volatile"),
        ));
    }
    let physical = ctx.create_physical_expr(expr, &df)?;
    Ok(WatermarkSpec {
        column: index,
        expr: physical,
        text: text.clone(),
    })
}

fn catalog_bytes(entry: &CatalogEntry) -> Result<Vec<u8>> {
    serde_json::to_vec(entry).map_err(|e| PlanError::Internal(format!("catalog encoding: {e}")))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The schema and primary key columns of a `CREATE TABLE`.
/// A connector table's columns: the declared ones, then the INCLUDEd record metadata
/// (`INCLUDE key AS k`), and its primary key.
fn connector_table_schema(cs: &CreateSource) -> Result<(SchemaRef, Vec<usize>)> {
    let (schema, pk) = table_schema(&cs.table)?;
    if cs.include.is_empty() {
        return Ok((schema, pk));
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for (kind, name) in &cs.include {
        let include = Include::parse(kind)
            .ok_or_else(|| PlanError::user("42601", format!("unknown INCLUDE {kind}")))?;
        let name = name
            .clone()
            .unwrap_or_else(|| include.default_name().to_string());
        if fields.iter().any(|f| *f.name() == name) {
            return Err(PlanError::user(
                "42701",
                format!("INCLUDE ... AS {name}: the table already has a column {name}"),
            ));
        }
        fields.push(Field::new(name, include.data_type(), true));
    }
    Ok((
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        pk,
    ))
}

/// The definition of a source from its statement.
fn source_def(
    name: &str,
    cs: &CreateSource,
    created_ms: i64,
    avro_columns: AvroColumns<'_>,
) -> Result<SourceDef> {
    let declared = if cs.table.columns.is_empty() {
        Arc::new(Schema::empty())
    } else {
        let (schema, pk) = table_schema(&cs.table)?;
        if !pk.is_empty() {
            return Err(PlanError::user(
                "0A000",
                "a source has no primary key (it is an append-only stream); use a materialized view to key it",
            ));
        }
        schema
    };
    SourceDef::try_new(
        name,
        &cs.options,
        cs.format.as_ref(),
        &cs.include,
        declared,
        created_ms,
        avro_columns,
    )
}

/// `sabot_catalog.source_errors`: the records each source skipped as malformed, the
/// most recent ones per source (see [`SourceErrors`]).
/// `sabot_catalog.watermarks`: per view, each watermark of the relations it reads (in
/// UTC), and how many rows arrived behind it and were dropped.
fn watermarks_batch(snapshot: &Snapshot) -> Result<RecordBatch> {
    let mut view = Vec::new();
    let mut relation = Vec::new();
    let mut column = Vec::new();
    let mut value: Vec<ArrayRef> = Vec::new();
    let mut late = Vec::new();
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    for (v, w) in &snapshot.watermarks {
        view.push(v.clone());
        relation.push(w.relation.clone());
        column.push(w.column.clone());
        let array = match &w.value {
            Some(x) => arrow::compute::cast(&x.to_array()?, &ts)?,
            None => arrow::array::new_null_array(&ts, 1),
        };
        value.push(array);
        late.push(i64::try_from(w.late_rows).unwrap_or(i64::MAX));
    }
    let value = if value.is_empty() {
        arrow::array::new_empty_array(&ts)
    } else {
        let refs: Vec<&dyn Array> = value.iter().map(|a| a.as_ref()).collect();
        arrow::compute::concat(&refs)?
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("view_name", DataType::Utf8, false),
        Field::new("relation", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("watermark", ts, true),
        Field::new("late_rows", DataType::Int64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(view)),
            Arc::new(StringArray::from(relation)),
            Arc::new(StringArray::from(column)),
            value,
            Arc::new(Int64Array::from(late)),
        ],
    )?)
}

/// What `sabot_catalog` shows, gathered under the engine's lock.
#[derive(Default)]
struct SystemFigures {
    views: Vec<ViewMetrics>,
    objects: Vec<CatalogObject>,
}

/// A source, view or sink for `sabot_catalog.sources`, `.views` and `.sinks`.
struct CatalogObject {
    name: String,
    kind: &'static str,
    /// The connector (sources), the emit mode (views), `from → target` (sinks).
    detail: String,
    definition: String,
    error: Option<String>,
    watermark: Option<String>,
}

/// `sabot_catalog.sources` / `.views` / `.sinks`: the objects of one kind (`name`, the
/// connector / emit mode / `from → target`, `definition, error, watermark, rows`; rows
/// for views only).
fn objects_batch(
    objects: &[CatalogObject],
    kind: &str,
    snapshot: &Snapshot,
) -> Result<RecordBatch> {
    let of_kind: Vec<&CatalogObject> = objects.iter().filter(|o| o.kind == kind).collect();
    let detail = match kind {
        "source" => "connector",
        "sink" => "writes",
        _ => "emit",
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new(detail, DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("watermark", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, true),
    ]));
    let rows: Vec<Option<i64>> = of_kind
        .iter()
        .map(|o| {
            (o.kind == "materialized_view")
                .then(|| snapshot.relations.get(&o.name))
                .flatten()
                .map(|r| i64::try_from(r.num_rows()).unwrap_or(i64::MAX))
        })
        .collect();
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                of_kind.iter().map(|o| &o.name),
            )),
            Arc::new(StringArray::from_iter_values(
                of_kind.iter().map(|o| &o.detail),
            )),
            Arc::new(StringArray::from_iter_values(
                of_kind.iter().map(|o| &o.definition),
            )),
            Arc::new(StringArray::from(
                of_kind.iter().map(|o| o.error.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                of_kind
                    .iter()
                    .map(|o| o.watermark.clone())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(rows)),
        ],
    )?)
}

/// `sabot_catalog.operators`: one row per operator of each running view.
fn operators_batch(views: &[ViewMetrics]) -> Result<RecordBatch> {
    let mut view = Vec::new();
    let mut node = Vec::new();
    let mut operator = Vec::new();
    let mut detail = Vec::new();
    let mut inputs = Vec::new();
    let mut rows_in = Vec::new();
    let mut rows_out = Vec::new();
    let mut busy = Vec::new();
    let mut state = Vec::new();
    let mut rate = Vec::new();
    let mut share = Vec::new();
    for v in views {
        for (i, o) in v.operators.iter().enumerate() {
            view.push(v.name.clone());
            node.push(i32::try_from(o.node).unwrap_or(i32::MAX));
            operator.push(o.operator.to_string());
            detail.push(o.label.clone());
            inputs.push(
                o.inputs
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            rows_in.push(big(o.rows_in));
            rows_out.push(big(o.rows_out));
            busy.push(o.busy_seconds);
            state.push(big(o.state_rows));
            rate.push(v.operator_rates.get(i).map(|r| r.0));
            share.push(v.operator_rates.get(i).map(|r| r.1));
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("view_name", DataType::Utf8, false),
        Field::new("node", DataType::Int32, false),
        Field::new("operator", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("inputs", DataType::Utf8, false),
        Field::new("rows_in", DataType::Int64, false),
        Field::new("rows_out", DataType::Int64, false),
        Field::new("busy_seconds", DataType::Float64, false),
        Field::new("state_rows", DataType::Int64, false),
        Field::new("rows_out_per_second", DataType::Float64, true),
        Field::new("busy_share", DataType::Float64, true),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(view)),
            Arc::new(arrow::array::Int32Array::from(node)),
            Arc::new(StringArray::from(operator)),
            Arc::new(StringArray::from(detail)),
            Arc::new(StringArray::from(inputs)),
            Arc::new(Int64Array::from(rows_in)),
            Arc::new(Int64Array::from(rows_out)),
            Arc::new(arrow::array::Float64Array::from(busy)),
            Arc::new(Int64Array::from(state)),
            Arc::new(arrow::array::Float64Array::from(rate)),
            Arc::new(arrow::array::Float64Array::from(share)),
        ],
    )?)
}

/// `sabot_catalog.checkpoints`: the last committed epochs.
fn checkpoints_batch(history: &[CheckpointRecord]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new(
            "committed_at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("duration_ms", DataType::Float64, false),
        Field::new("state_writes", DataType::Int64, false),
    ]));
    let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(
                history.iter().map(|c| big(c.epoch)),
            )),
            Arc::new(arrow::array::TimestampMillisecondArray::from_iter_values(
                history.iter().map(|c| big(c.at_ms)),
            )),
            Arc::new(arrow::array::Float64Array::from_iter_values(
                history.iter().map(|c| c.duration_ms),
            )),
            Arc::new(Int64Array::from_iter_values(
                history.iter().map(|c| big(c.writes)),
            )),
        ],
    )?)
}

fn source_errors_batch(snapshot: &Snapshot) -> Result<RecordBatch> {
    let mut source = Vec::new();
    let mut at = Vec::new();
    let mut split = Vec::new();
    let mut offset = Vec::new();
    let mut error = Vec::new();
    let mut payload = Vec::new();
    for (name, log) in &snapshot.source_errors {
        for e in log.entries() {
            source.push(name.clone());
            at.push(e.at_ms.saturating_mul(1000));
            split.push(e.split);
            offset.push(i64::try_from(e.offset).unwrap_or(i64::MAX));
            error.push(e.error);
            payload.push(e.payload);
        }
    }
    let utc: Arc<str> = Arc::from("+00:00");
    let schema = Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::clone(&utc))),
            false,
        ),
        Field::new("split", DataType::Utf8, false),
        Field::new("record_offset", DataType::Int64, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(source)),
            Arc::new(TimestampMicrosecondArray::from(at).with_timezone(utc)),
            Arc::new(StringArray::from(split)),
            Arc::new(Int64Array::from(offset)),
            Arc::new(StringArray::from(error)),
            Arc::new(StringArray::from(payload)),
        ],
    )?)
}

/// A statement's line to its client while it runs: long work (a view's backfill) reports
/// how far it has got on `notices`, one line per message, and stops between steps once
/// `cancel` is set (the client sent a CancelRequest).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    pub cancel: Arc<std::sync::atomic::AtomicBool>,
}

impl Progress {
    fn cancelled(&self) -> bool {
        self.cancel.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn cancelled_by_client() -> PlanError {
    PlanError::user("57014", "canceling statement due to user request")
}

/// Runs `f`, work that holds its thread for a long time (a backfill step takes about a
/// second; a view with a watermark backfills in one step, however long), so that the runtime's other tasks do not wait for it: on a multi-threaded
/// runtime the worker's queued tasks move to another thread first (`SHOW JOBS`, the
/// CancelRequest that stops this backfill, other sessions). Elsewhere (a current-thread
/// runtime in tests) `f` just runs.
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Rows a backfill feeds through the view's dataflow at a time when it reports progress.
const BACKFILL_STEP_ROWS: usize = 100_000;

impl Database {
    /// Feeds a new view the current rows of what it reads, all in the epoch `batch`
    /// commits. Past [`BACKFILL_STEP_ROWS`] rows it goes in steps: between them other
    /// tasks run, `SHOW JOBS` shows how far it has got, `CANCEL JOBS` stops it (the
    /// CREATE then fails and nothing of the view stays), and with `progress` it reports
    /// after a step that passes a tenth of the rows or a second since the last report.
    /// The result is the same as in one step (the dataflow is incremental), except with
    /// watermarks: rows behind the watermark of the steps before would be dropped as
    /// late, so a view with a watermark takes everything in one step.
    async fn backfill(
        &self,
        dataflow: &mut Dataflow,
        deltas: HashMap<String, Vec<ChangeBatch>>,
        batch: &mut EpochBatch,
        view: &str,
        progress: Option<&Progress>,
    ) -> Result<Vec<ChangeBatch>> {
        if progress.is_some_and(Progress::cancelled) {
            return Err(cancelled_by_client());
        }
        let total: usize = deltas.values().flatten().map(ChangeBatch::num_rows).sum();
        let watermarked = dataflow
            .plan()
            .nodes
            .iter()
            .any(|n| matches!(n.kind, sabot_dataflow::NodeKind::WatermarkFilter(_)));
        if total <= BACKFILL_STEP_ROWS || watermarked {
            return Ok(off_the_runtime(|| dataflow.run_epoch(&deltas, batch))?);
        }
        let started = std::time::Instant::now();
        self.backfills.lock().push(BackfillJob {
            view: view.to_string(),
            done: 0,
            total,
            started,
            cancel: None,
        });
        let result = self
            .backfill_steps(dataflow, deltas, batch, view, progress, total, started)
            .await;
        self.backfills.lock().retain(|j| j.view != view);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn backfill_steps(
        &self,
        dataflow: &mut Dataflow,
        deltas: HashMap<String, Vec<ChangeBatch>>,
        batch: &mut EpochBatch,
        view: &str,
        progress: Option<&Progress>,
        total: usize,
        started: std::time::Instant,
    ) -> Result<Vec<ChangeBatch>> {
        let mut out = Vec::new();
        let mut reported = started;
        let mut done = 0usize;
        let mut step: HashMap<String, Vec<ChangeBatch>> = HashMap::new();
        let mut in_step = 0usize;
        let chunks: Vec<(String, ChangeBatch)> = deltas
            .into_iter()
            .flat_map(|(r, cs)| cs.into_iter().map(move |c| (r.clone(), c)))
            .collect();
        let count = chunks.len();
        for (i, (relation, chunk)) in chunks.into_iter().enumerate() {
            in_step += chunk.num_rows();
            step.entry(relation).or_default().push(chunk);
            if in_step < BACKFILL_STEP_ROWS && i + 1 < count {
                continue;
            }
            let deltas = std::mem::take(&mut step);
            out.extend(off_the_runtime(|| dataflow.run_epoch(&deltas, batch))?);
            let before = done;
            done += std::mem::take(&mut in_step);
            let cancelled = {
                let mut jobs = self.backfills.lock();
                let job = jobs.iter_mut().find(|j| j.view == view);
                job.and_then(|j| {
                    j.done = done;
                    j.cancel.clone()
                })
            };
            if let Some(message) = cancelled {
                return Err(PlanError::user("57014", message));
            }
            if progress.is_some_and(Progress::cancelled) {
                return Err(cancelled_by_client());
            }
            let tenth = |n: usize| n * 10 / total;
            if let Some(notices) = progress.and_then(|p| p.notices.as_ref()) {
                if reported.elapsed() >= Duration::from_secs(1) || tenth(done) > tenth(before) {
                    reported = std::time::Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    let _ = notices.send(format!(
                        "backfilling materialized view \"{view}\": {done} of {total} rows ({:.0}%), {:.0} rows/s",
                        100.0 * done as f64 / total as f64,
                        done as f64 / secs.max(1e-9)
                    ));
                }
            }
            // Let the connection send the message, and other sessions run.
            tokio::task::yield_now().await;
        }
        Ok(out)
    }
}

/// Between the oldest sample at most 10 seconds old and the newest: rows in and result
/// changes per second, and per operator rows out per second and busy share.
type Rates = ((f64, f64), Vec<(f64, f64)>);

fn rates(samples: &std::collections::VecDeque<RateSample>) -> Option<Rates> {
    let last = samples.back()?;
    let first = samples
        .iter()
        .find(|s| last.at.duration_since(s.at) <= Duration::from_secs(10))?;
    let dt = last.at.duration_since(first.at).as_secs_f64();
    if dt <= 0.0 {
        return None;
    }
    let per_second = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
    let operators = last
        .operators
        .iter()
        .zip(&first.operators)
        .map(|(l, f)| (per_second(l.0, f.0), (l.1 - f.1).max(0.0) / dt))
        .collect();
    Some((
        (
            per_second(last.rows_in, first.rows_in),
            per_second(last.changes, first.changes),
        ),
        operators,
    ))
}

/// Drops the qualifiers of column references (`t.ts` becomes `ts`).
struct Unqualify;

impl ast::VisitorMut for Unqualify {
    type Break = ();
    fn post_visit_expr(&mut self, e: &mut ast::Expr) -> std::ops::ControlFlow<()> {
        if let ast::Expr::CompoundIdentifier(parts) = e {
            if let Some(last) = parts.last().cloned() {
                *e = ast::Expr::Identifier(last);
            }
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// Refuses a read of a source (its rows exist only inside the views that read it) and
/// of a view that stopped updating (naming the failure).
fn check_readable(snapshot: &Snapshot, plan: &datafusion::logical_expr::LogicalPlan) -> Result<()> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut problem = None;
    plan.apply_with_subqueries(|p| {
        if let datafusion::logical_expr::LogicalPlan::TableScan(scan) = p {
            if scan.table_name.schema() == Some(SYSTEM_SCHEMA) {
                return Ok(TreeNodeRecursion::Continue);
            }
            let name = scan.table_name.table();
            let Some(rel) = snapshot.relations.get(name) else {
                return Ok(TreeNodeRecursion::Continue);
            };
            if rel.kind == RelationKind::Source {
                problem = Some(PlanError::user(
                    "0A000",
                    format!(
                        "source \"{name}\" cannot be queried directly; create a materialized view over it"
                    ),
                ));
            } else if let Some(err) = &rel.error {
                problem = Some(PlanError::user(
                    "55000",
                    format!("materialized view \"{name}\" has stopped updating: {err}"),
                ));
            }
            if problem.is_some() {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    problem.map_or(Ok(()), Err)
}

fn table_schema(ct: &ast::CreateTable) -> Result<(SchemaRef, Vec<usize>)> {
    if ct.columns.is_empty() {
        return Err(PlanError::user(
            "42601",
            "a table needs at least one column",
        ));
    }
    let mut pk_names: Vec<String> = Vec::new();
    let mut fields = Vec::new();
    for c in &ct.columns {
        let name = normalize_ident(&c.name);
        if fields.iter().any(|f: &Field| f.name() == &name) {
            return Err(PlanError::user(
                "42701",
                format!("column \"{name}\" specified more than once"),
            ));
        }
        let mut nullable = true;
        for opt in &c.options {
            match &opt.option {
                ast::ColumnOption::NotNull => nullable = false,
                ast::ColumnOption::Null => {}
                ast::ColumnOption::PrimaryKey(_) => {
                    nullable = false;
                    pk_names.push(name.clone());
                }
                other => {
                    return Err(PlanError::user(
                        "0A000",
                        format!("column option {other} is not supported yet"),
                    ))
                }
            }
        }
        fields.push(column_field(&name, &c.data_type, nullable)?);
    }
    for con in &ct.constraints {
        match con {
            ast::TableConstraint::PrimaryKey(pk) => {
                if !pk_names.is_empty() {
                    return Err(PlanError::user(
                        "42P16",
                        "multiple primary keys are not allowed",
                    ));
                }
                for col in &pk.columns {
                    match &col.column.expr {
                        ast::Expr::Identifier(id) => pk_names.push(normalize_ident(id)),
                        other => {
                            return Err(PlanError::user(
                                "42601",
                                format!("invalid primary key column {other}"),
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(PlanError::user(
                    "0A000",
                    format!("table constraint {other} is not supported yet"),
                ))
            }
        }
    }
    if pk_names.len() > 1
        && ct
            .columns
            .iter()
            .filter(|c| {
                c.options
                    .iter()
                    .any(|o| matches!(o.option, ast::ColumnOption::PrimaryKey(_)))
            })
            .count()
            > 1
    {
        return Err(PlanError::user(
            "42P16",
            "multiple primary keys are not allowed",
        ));
    }
    let mut pk = Vec::new();
    for n in &pk_names {
        let idx = fields.iter().position(|f| f.name() == n).ok_or_else(|| {
            PlanError::user(
                "42703",
                format!("column \"{n}\" named in key does not exist"),
            )
        })?;
        fields[idx] = fields[idx].clone().with_nullable(false);
        pk.push(idx);
    }
    Ok((Arc::new(Schema::new(fields)), pk))
}

/// Casts with errors for values that do not fit, as PostgreSQL does.
fn cast_strict(a: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if a.data_type() == to {
        return Ok(Arc::clone(a));
    }
    let opts = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    if matches!(a.data_type(), DataType::Utf8) && matches!(to, DataType::Binary) {
        return bytea_from_text(a);
    }
    let result = cast_with_options(a, to, &opts);
    if result.is_err() && matches!(a.data_type(), DataType::Utf8) {
        if let Some(parsed) = parse_timestamps_leniently(a, to) {
            return Ok(parsed);
        }
    }
    result.map_err(|e| {
        let msg = e.to_string();
        let numeric = |t: &DataType| t.is_numeric();
        let code = if msg.contains("overflow")
            || msg.contains("too large")
            || msg.contains("out of range")
            || (numeric(a.data_type()) && numeric(to))
        {
            "22003"
        } else {
            "22P02"
        };
        PlanError::user(code, format!("cannot store value as {to}: {msg}"))
    })
}

/// Text to BYTEA as PostgreSQL reads it: `\x` followed by hex digits, else the bytes of
/// the text itself (with `\\` for a backslash).
fn bytea_from_text(a: &ArrayRef) -> Result<ArrayRef> {
    let strings = a
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| PlanError::Internal("text column is not Utf8".into()))?;
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(strings.len());
    for v in strings.iter() {
        out.push(match v {
            None => None,
            Some(t) if t.starts_with("\\x") => {
                let hex: Vec<u8> = t[2..]
                    .bytes()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                if !hex.len().is_multiple_of(2) {
                    return Err(PlanError::user(
                        "22P02",
                        "invalid hexadecimal data: odd number of digits",
                    ));
                }
                let mut bytes = Vec::with_capacity(hex.len() / 2);
                for pair in hex.chunks(2) {
                    let digit = |c: u8| (c as char).to_digit(16);
                    match (digit(pair[0]), digit(pair[1])) {
                        (Some(h), Some(l)) => bytes.push((h * 16 + l) as u8),
                        _ => {
                            return Err(PlanError::user(
                                "22P02",
                                format!("invalid hexadecimal digit in \"{t}\""),
                            ))
                        }
                    }
                }
                Some(bytes)
            }
            Some(t) => Some(t.replace("\\\\", "\\").into_bytes()),
        });
    }
    Ok(Arc::new(arrow::array::BinaryArray::from_iter(out)))
}

/// Text to TIMESTAMP / TIMESTAMPTZ in the forms PostgreSQL accepts that Arrow's parser
/// does not (`2024-01-01 10:00`, `2024-01-01`). None if any value still does not parse.
fn parse_timestamps_leniently(a: &ArrayRef, to: &DataType) -> Option<ArrayRef> {
    use arrow::datatypes::TimeUnit;
    let DataType::Timestamp(TimeUnit::Microsecond, tz) = to else {
        return None;
    };
    let strings = a.as_any().downcast_ref::<StringArray>()?;
    const NAIVE: [&str; 4] = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ];
    let mut out = Vec::with_capacity(strings.len());
    for v in strings.iter() {
        let Some(text) = v else {
            out.push(None);
            continue;
        };
        let text = text.trim();
        let parsed = NAIVE
            .iter()
            .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
            .or_else(|| {
                chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })?;
        out.push(Some(parsed.and_utc().timestamp_micros()));
    }
    let array = arrow::array::TimestampMicrosecondArray::from(out).with_timezone_opt(tz.clone());
    Some(Arc::new(array))
}

/// Lays out an INSERT's rows as the table's columns: `targets[i]` is the table column
/// of produced column i; other columns are NULL.
fn conform(
    batch: &RecordBatch,
    targets: &[usize],
    schema: &SchemaRef,
    table: &TableState,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| arrow::array::new_null_array(f.data_type(), n))
        .collect();
    for (i, t) in targets.iter().enumerate() {
        columns[*t] = cast_strict(batch.column(i), schema.field(*t).data_type())?;
    }
    table.check_columns(&columns)?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}
