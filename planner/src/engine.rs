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

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::FormatOptions;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use parking_lot::RwLock;
use sabot_dataflow::{ChangeBatch, Dataflow, TableState};
use sabot_sql::sqlparser::ast;
use sabot_sql::{ObjectKind, Parsed, Statement, TransactionKind};
use sabot_storage::{EpochBatch, StateTableId, StateWriter, Store};
use serde::{Deserialize, Serialize};

use crate::error::{PlanError, Result};
use crate::stream::StreamPlanner;
use crate::types::{column_field, normalize_ident, normalize_name, sql_type_name};

/// Rows per batch when a new view is backfilled from existing data.
const BACKFILL_BATCH_ROWS: usize = 8192;
const NEXT_STATE_TABLE: &str = "next_state_table";

/// Settings fixed when the database opens.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Where the RocksDB store lives.
    pub data_dir: PathBuf,
    /// Worker threads per dataflow; keyed operators hash-partition across them.
    pub workers: usize,
    /// How often an epoch is committed without being asked (`FLUSH` asks).
    pub checkpoint_interval: Duration,
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
}

/// One relation as of a committed epoch.
#[derive(Debug, Clone)]
pub struct Relation {
    pub kind: RelationKind,
    pub schema: SchemaRef,
    pub data: RecordBatch,
    /// Primary key column names (tables only).
    pub primary_key: Vec<String>,
    /// The failure that stopped this view, if any.
    pub error: Option<String>,
}

/// Every relation as of one committed epoch.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub epoch: u64,
    pub relations: BTreeMap<String, Relation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum CatalogEntry {
    Table(TableMeta),
    View(ViewMeta),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableMeta {
    name: String,
    order: u64,
    /// The `CREATE TABLE` statement, re-parsed on recovery.
    sql: String,
    state_table: StateTableId,
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
}

struct TableEntry {
    meta: TableMeta,
    state: TableState,
}

struct ViewEntry {
    meta: ViewMeta,
    dataflow: Dataflow,
}

struct Inner {
    epoch: u64,
    tables: BTreeMap<String, TableEntry>,
    /// In creation order, so a view comes after everything it reads.
    views: Vec<ViewEntry>,
    next_state_table: StateTableId,
    next_order: u64,
}

impl Inner {
    fn exists(&self, name: &str) -> Option<RelationKind> {
        if self.tables.contains_key(name) {
            Some(RelationKind::Table)
        } else if self.views.iter().any(|v| v.meta.name == name) {
            Some(RelationKind::MaterializedView)
        } else {
            None
        }
    }

    /// Views that read `name`, directly or through other views, in creation order.
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
                out.push(v.meta.name.clone());
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
                views: Vec::new(),
                next_state_table,
                next_order: 0,
            }),
            snapshot: RwLock::new(Arc::new(Snapshot {
                epoch,
                relations: BTreeMap::new(),
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

    async fn recover(&self) -> Result<()> {
        let mut entries: Vec<CatalogEntry> = Vec::new();
        for (name, bytes) in self.store.catalog()? {
            let e: CatalogEntry = serde_json::from_slice(&bytes)
                .map_err(|e| PlanError::Internal(format!("catalog entry {name}: {e}")))?;
            entries.push(e);
        }
        entries.sort_by_key(|e| match e {
            CatalogEntry::Table(t) => t.order,
            CatalogEntry::View(v) => v.order,
        });
        let mut inner = self.inner.lock().await;
        let mut changed = HashSet::new();
        for entry in entries {
            match entry {
                CatalogEntry::Table(meta) => {
                    let parsed = sabot_sql::parse(&meta.sql)?;
                    let Some(Statement::CreateTable(ct)) =
                        parsed.into_iter().next().map(|p| p.statement)
                    else {
                        return Err(PlanError::Internal(format!(
                            "catalog entry of {} is not CREATE TABLE",
                            meta.name
                        )));
                    };
                    let (schema, pk) = table_schema(&ct)?;
                    let mut state = TableState::try_new(&meta.name, schema, pk, meta.state_table)?;
                    state.restore(self.store.scan(meta.state_table)?)?;
                    inner.next_order = inner.next_order.max(meta.order + 1);
                    changed.insert(meta.name.clone());
                    inner
                        .tables
                        .insert(meta.name.clone(), TableEntry { meta, state });
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
                    let (mut dataflow, _) = self.plan_view(&q, meta.first_state_table).await?;
                    dataflow.restore(&self.store)?;
                    inner.next_order = inner.next_order.max(meta.order + 1);
                    changed.insert(meta.name.clone());
                    inner.views.push(ViewEntry { meta, dataflow });
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
        if !inner.tables.values().any(|t| t.state.has_pending()) {
            return Ok(inner.epoch);
        }
        let next = inner.epoch + 1;
        self.run_epoch(&mut inner, EpochBatch::new(next), HashSet::new(), &[])
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
        let mut deltas: HashMap<String, Vec<ChangeBatch>> = HashMap::new();
        for (name, t) in inner.tables.iter_mut() {
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
                .any(|s| deltas.contains_key(*s));
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
        batch.put_meta(
            NEXT_STATE_TABLE,
            inner.next_state_table.to_le_bytes().to_vec(),
        );
        self.store.commit(batch)?;
        inner.epoch = epoch;
        self.publish(inner, &changed, removed)?;
        Ok(epoch)
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
                        data: t.state.contents()?,
                        primary_key: t
                            .state
                            .primary_key()
                            .iter()
                            .map(|i| schema.field(*i).name().clone())
                            .collect(),
                        schema,
                        error: None,
                    },
                );
            } else if let Some(v) = inner.views.iter().find(|v| &v.meta.name == name) {
                let data = v.dataflow.snapshot()?;
                relations.insert(
                    name.clone(),
                    Relation {
                        kind: RelationKind::MaterializedView,
                        schema: data.schema(),
                        data,
                        primary_key: Vec::new(),
                        error: v.meta.error.clone(),
                    },
                );
            }
        }
        *self.snapshot.write() = Arc::new(Snapshot {
            epoch: inner.epoch,
            relations,
        });
        Ok(())
    }

    /// A DataFusion context over `snapshot`, with `overlay` replacing one relation's data.
    fn context(
        &self,
        snapshot: &Snapshot,
        overlay: Option<(&str, RecordBatch)>,
    ) -> Result<SessionContext> {
        let config = SessionConfig::new()
            .with_target_partitions(self.config.workers.max(1))
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        for (name, rel) in &snapshot.relations {
            let data = match &overlay {
                Some((n, b)) if *n == name => b.clone(),
                _ => rel.data.clone(),
            };
            let table = MemTable::try_new(Arc::clone(&rel.schema), vec![vec![data]])?;
            ctx.register_table(TableReference::bare(name.clone()), Arc::new(table))?;
        }
        Ok(ctx)
    }

    async fn logical_plan(
        &self,
        ctx: &SessionContext,
        query: &ast::Query,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        let stmt = DfStatement::Statement(Box::new(ast::Statement::Query(Box::new(query.clone()))));
        Ok(ctx.state().statement_to_plan(stmt).await?)
    }

    /// Runs a read-only query against the last committed epoch.
    pub async fn query(&self, query: &ast::Query) -> Result<Output> {
        let snapshot = self.snapshot();
        let ctx = self.context(&snapshot, None)?;
        let plan = self.logical_plan(&ctx, query).await?;
        check_view_errors(&snapshot, &plan)?;
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
        let ctx = self.context(&snapshot, None)?;
        let plan = self.logical_plan(&ctx, query).await?;
        let params = plan.get_parameter_types()?;
        Ok((Arc::new(plan.schema().as_arrow().clone()), params))
    }

    /// Plans a view's query into a dataflow whose state tables start at `first_table`.
    /// Returns the dataflow and the first state table id it left unused.
    async fn plan_view(
        &self,
        query: &ast::Query,
        first_table: StateTableId,
    ) -> Result<(Dataflow, StateTableId)> {
        let snapshot = self.snapshot();
        let ctx = self.context(&snapshot, None)?;
        let plan = self.logical_plan(&ctx, query).await?;
        let state = ctx.state();
        let optimized = state.optimize(&plan)?;
        let (stream, next) = StreamPlanner::new(&state, first_table).plan(&optimized)?;
        Ok((Dataflow::try_new(stream, self.config.workers)?, next))
    }

    /// Runs one statement.
    pub async fn execute(&self, parsed: &Parsed) -> Result<Output> {
        match &parsed.statement {
            Statement::Query(q) => self.query(q).await,
            Statement::CreateTable(ct) => self.create_table(ct, &parsed.text).await,
            Statement::CreateMaterializedView {
                name,
                if_not_exists,
                query,
                query_text,
            } => {
                self.create_view(name, *if_not_exists, query, query_text)
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
            Statement::ShowMaterializedViews => Ok(self.show(RelationKind::MaterializedView)),
            Statement::Describe(name) => self.describe(name),
            Statement::Explain(inner) => self.explain(inner).await,
            Statement::Transaction(kind) => Ok(command(match kind {
                TransactionKind::Begin => "BEGIN",
                TransactionKind::Commit => "COMMIT",
                TransactionKind::Rollback => "ROLLBACK",
            })),
            Statement::SetVariable { .. } | Statement::ShowVariable(_) => Err(PlanError::Internal(
                "session settings are handled by the session".into(),
            )),
        }
    }

    async fn create_table(&self, ct: &ast::CreateTable, sql: &str) -> Result<Output> {
        let name = normalize_name(&ct.name)?;
        let (schema, pk) = table_schema(ct)?;
        let mut inner = self.inner.lock().await;
        if let Some(kind) = inner.exists(&name) {
            return already_exists(&name, kind, ct.if_not_exists, "CREATE TABLE");
        }
        let state_table = inner.next_state_table;
        let state = TableState::try_new(&name, schema, pk, state_table)?;
        let meta = TableMeta {
            name: name.clone(),
            order: inner.next_order,
            sql: sql.to_string(),
            state_table,
        };
        let mut batch = EpochBatch::new(inner.epoch + 1);
        batch.put_catalog(&name, catalog_bytes(&CatalogEntry::Table(meta.clone()))?);
        inner.next_state_table += 1;
        inner.next_order += 1;
        inner
            .tables
            .insert(name.clone(), TableEntry { meta, state });
        self.run_epoch(&mut inner, batch, HashSet::from([name]), &[])?;
        Ok(command("CREATE TABLE"))
    }

    async fn create_view(
        &self,
        name: &ast::ObjectName,
        if_not_exists: bool,
        query: &ast::Query,
        query_text: &str,
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
        let (mut dataflow, next) = self.plan_view(query, first).await?;
        let snapshot = self.snapshot();
        let mut deltas: HashMap<String, Vec<ChangeBatch>> = HashMap::new();
        for source in dataflow.plan().sources() {
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
            let mut chunks = Vec::new();
            let mut offset = 0;
            while offset < rel.data.num_rows() {
                let len = BACKFILL_BATCH_ROWS.min(rel.data.num_rows() - offset);
                chunks.push(ChangeBatch::inserts(rel.data.slice(offset, len)));
                offset += len;
            }
            deltas.insert(source.to_string(), chunks);
        }
        let epoch = inner.epoch + 1;
        let mut batch = EpochBatch::new(epoch);
        dataflow.run_epoch(&deltas, &mut batch)?;
        let meta = ViewMeta {
            name: name.clone(),
            order: inner.next_order,
            sql: query_text.to_string(),
            first_state_table: first,
            error: None,
        };
        batch.put_catalog(&name, catalog_bytes(&CatalogEntry::View(meta.clone()))?);
        inner.next_state_table = next;
        inner.next_order += 1;
        inner.views.push(ViewEntry { meta, dataflow });
        self.run_epoch(&mut inner, batch, HashSet::from([name]), &[])?;
        Ok(command("CREATE MATERIALIZED VIEW"))
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
                        "cannot drop {what} {name} because other objects depend on it (materialized view {}); use DROP ... CASCADE to drop them too",
                        deps.join(", ")
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
    fn dml_target(inner: &Inner, name: &ast::ObjectName) -> Result<String> {
        let name = normalize_name(name)?;
        match inner.exists(&name) {
            Some(RelationKind::Table) => Ok(name),
            Some(RelationKind::MaterializedView) => Err(PlanError::user(
                "42809",
                format!("cannot change materialized view \"{name}\": write to the tables it reads"),
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
        let ctx = self.context(&snapshot, Some((name, current)))?;
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

    async fn explain(&self, stmt: &Statement) -> Result<Output> {
        let text = match stmt {
            Statement::CreateMaterializedView { query, .. } => {
                let first = self.inner.lock().await.next_state_table;
                let (dataflow, _) = self.plan_view(query, first).await?;
                dataflow.plan().explain(self.config.workers)
            }
            Statement::Query(q) => {
                let snapshot = self.snapshot();
                let ctx = self.context(&snapshot, None)?;
                let plan = self.logical_plan(&ctx, q).await?;
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
        let lines: Vec<&str> = text.lines().collect();
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

fn catalog_bytes(entry: &CatalogEntry) -> Result<Vec<u8>> {
    serde_json::to_vec(entry).map_err(|e| PlanError::Internal(format!("catalog encoding: {e}")))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The schema and primary key columns of a `CREATE TABLE`.
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

/// Refuses reads of views that stopped updating, naming the failure.
fn check_view_errors(
    snapshot: &Snapshot,
    plan: &datafusion::logical_expr::LogicalPlan,
) -> Result<()> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut failed = None;
    plan.apply_with_subqueries(|node| {
        if let datafusion::logical_expr::LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table();
            if let Some(err) = snapshot.relations.get(name).and_then(|r| r.error.as_ref()) {
                failed = Some((name.to_string(), err.clone()));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match failed {
        Some((name, err)) => Err(PlanError::user(
            "55000",
            format!("materialized view \"{name}\" has stopped updating: {err}"),
        )),
        None => Ok(()),
    }
}
