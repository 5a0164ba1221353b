//! From a DataFusion logical plan to a stream plan that can be maintained incrementally.
//!
//! DataFusion binds and optimizes the view's query (subquery decorrelation, filter push
//! down, projection pruning); this module walks the optimized plan bottom-up and emits
//! one [`PlanNode`] per operator. Anything that cannot be maintained over a changelog is
//! refused with an error that names the construct.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{DFSchema, JoinType, ScalarValue};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Distinct, Expr, ExprSchemable, FetchType, LogicalPlan, SkipType, SortExpr,
};
use datafusion::physical_expr::PhysicalExpr;
use sabot_dataflow::ops::aggregate::{AggCall, AggKind, AggregateSpec};
use sabot_dataflow::ops::connector::SourceFactory;
use sabot_dataflow::ops::join::{JoinKind, JoinSpec};
use sabot_dataflow::ops::over::OverSpec;
use sabot_dataflow::ops::session::SessionSpec;
use sabot_dataflow::ops::temporal_filter::TemporalFilterSpec;
use sabot_dataflow::ops::topn::TopNSpec;
use sabot_dataflow::ops::watermark::WatermarkSpec;
use sabot_dataflow::{NodeKind, PlanNode, StreamPlan};
use sabot_storage::StateTableId;

use crate::error::{PlanError, Result};
use crate::temporal::{ASOF_PREFIX, TEMPORAL_PREFIX};
use crate::windows::{SESSION_END_FN, SESSION_START_FN};

/// Builds the stream plan of a view.
pub struct StreamPlanner<'a> {
    state: &'a SessionState,
    next_table: StateTableId,
    nodes: Vec<PlanNode>,
    /// External sources by name: a scan of one becomes a reader of its own.
    sources: HashMap<String, Arc<dyn SourceFactory>>,
    /// `WATERMARK FOR` of the sources and tables that declare one.
    watermarks: HashMap<String, WatermarkSpec>,
    emit_on_window_close: bool,
    /// The relations whose rows are only ever added.
    append_only: HashSet<String>,
    /// Plan a sink's query (see [`StreamPlanner::for_sink`]).
    for_sink: bool,
    /// The node of each subplan planned so far: a subplan that occurs twice (q5's two
    /// identical windowed scans, a self-join's two scans) is computed once, by one node
    /// that feeds both consumers.
    planned: HashMap<LogicalPlan, usize>,
}

impl<'a> StreamPlanner<'a> {
    /// `first_table` is the first state table id the plan may use; ids are given out in
    /// plan order, so planning the same query again yields the same ids.
    pub fn new(
        state: &'a SessionState,
        first_table: StateTableId,
        sources: HashMap<String, Arc<dyn SourceFactory>>,
    ) -> Self {
        Self {
            state,
            next_table: first_table,
            nodes: Vec::new(),
            sources,
            watermarks: HashMap::new(),
            emit_on_window_close: false,
            append_only: HashSet::new(),
            for_sink: false,
            planned: HashMap::new(),
        }
    }

    /// The query of a `CREATE SINK ... AS`: it ends in `Emit`, keeping no rows.
    pub fn for_sink(mut self, on: bool) -> Self {
        self.for_sink = on;
        self
    }

    /// The relations whose rows are only ever added (a temporal join's left side must be).
    pub fn with_append_only(mut self, relations: HashSet<String>) -> Self {
        self.append_only = relations;
        self
    }

    /// The watermarks declared on relations, by relation name.
    pub fn with_watermarks(mut self, watermarks: HashMap<String, WatermarkSpec>) -> Self {
        self.watermarks = watermarks;
        self
    }

    /// `EMIT ON WINDOW CLOSE`: every aggregate grouped by a column with a watermark
    /// emits each group once, final, when the watermark passes it.
    pub fn emit_on_window_close(mut self, on: bool) -> Self {
        self.emit_on_window_close = on;
        self
    }

    /// Plans `plan` and appends the final `Materialize`. Returns the plan and the first
    /// unused state table id.
    pub fn plan(mut self, plan: &LogicalPlan) -> Result<(StreamPlan, StateTableId)> {
        let root = self.node(plan)?;
        let schema = nullable_schema(plan.schema().as_arrow());
        let tables = self.tables(1);
        self.nodes.push(PlanNode {
            kind: NodeKind::Materialize,
            inputs: vec![root],
            schema,
            state_tables: tables,
        });
        let mut plan = StreamPlan { nodes: self.nodes };
        if self.emit_on_window_close {
            mark_emit_on_window_close(&mut plan)?;
        }
        // Aggregates and top-Ns over inputs that only add rows keep less state.
        plan.mark_append_only_inputs(&|r| self.append_only.contains(r));
        // A plan that only adds rows keeps them without a key (no retraction needs to
        // find its row).
        let append_only = plan.append_only(&|r| self.append_only.contains(r));
        if let Some(last) = plan.nodes.last_mut() {
            if self.for_sink {
                last.kind = NodeKind::Emit {
                    keyed: !append_only,
                };
                last.state_tables.clear();
            } else if append_only {
                last.kind = NodeKind::MaterializeAppendOnly;
            }
        }
        Ok((plan, self.next_table))
    }

    fn tables(&mut self, n: u32) -> Vec<StateTableId> {
        let out = (self.next_table..self.next_table + n).collect();
        self.next_table += n;
        out
    }

    fn push(
        &mut self,
        kind: NodeKind,
        inputs: Vec<usize>,
        schema: SchemaRef,
        state_tables: Vec<StateTableId>,
    ) -> usize {
        self.nodes.push(PlanNode {
            kind,
            inputs,
            schema,
            state_tables,
        });
        self.nodes.len() - 1
    }

    fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        use datafusion::common::tree_node::TreeNode;
        let subquery = expr.exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })?;
        if subquery {
            return Err(PlanError::not_incremental(
                "a subquery in this position (scalar subqueries work in WHERE, HAVING and the \
                 select list; IN and EXISTS in WHERE)",
            ));
        }
        if crate::now::contains_now(expr) {
            return Err(crate::now::misplaced());
        }
        if crate::now::contains_proctime(expr) {
            return Err(crate::now::proctime_misplaced());
        }
        if expr.is_volatile() {
            return Err(PlanError::not_incremental(format!(
                "the volatile expression {expr}"
            )));
        }
        let physical = self.state.create_physical_expr(expr.clone(), schema)?;
        Ok(checked_arithmetic(physical, schema.as_arrow())?)
    }

    /// The node computing `plan`: planned once, shared by every occurrence.
    fn node(&mut self, plan: &LogicalPlan) -> Result<usize> {
        if let Some(n) = self.planned.get(plan) {
            return Ok(*n);
        }
        let n = self.plan_node(plan)?;
        self.planned.insert(plan.clone(), n);
        Ok(n)
    }

    fn plan_node(&mut self, plan: &LogicalPlan) -> Result<usize> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(PlanError::not_incremental("LIMIT"));
                }
                let full_schema = scan.source.schema();
                let mut relation = scan.table_name.table().to_string();
                if let Some(real) = relation.strip_prefix(ASOF_PREFIX) {
                    relation = real.to_string();
                }
                let temporal = match relation.strip_prefix(TEMPORAL_PREFIX) {
                    Some(real) => {
                        relation = real.to_string();
                        true
                    }
                    None => false,
                };
                if temporal && self.sources.contains_key(&relation) {
                    return Err(PlanError::user(
                        "0A000",
                        format!(
                            "FOR SYSTEM_TIME AS OF PROCTIME() reads a table or materialized \
                             view; \"{relation}\" is a source"
                        ),
                    ));
                }
                let mut id = match self.sources.get(&relation) {
                    Some(factory) => {
                        let factory = Arc::clone(factory);
                        let tables = self.tables(1);
                        self.push(
                            NodeKind::Connector {
                                relation: relation.clone(),
                                factory,
                            },
                            vec![],
                            nullable_schema(&full_schema),
                            tables,
                        )
                    }
                    None => self.push(
                        NodeKind::Source {
                            relation: relation.clone(),
                        },
                        vec![],
                        nullable_schema(&full_schema),
                        vec![],
                    ),
                };
                // A table read as of processing time is looked up, not streamed: its
                // watermark does not apply.
                let watermark = self.watermarks.get(&relation).filter(|_| !temporal);
                if let Some(spec) = watermark.cloned() {
                    let tables = self.tables(1);
                    id = self.push(
                        NodeKind::WatermarkFilter(spec),
                        vec![id],
                        nullable_schema(&full_schema),
                        tables,
                    );
                }
                if !scan.filters.is_empty() {
                    let df =
                        DFSchema::try_from_qualified_schema(scan.table_name.clone(), &full_schema)?;
                    let predicate = scan
                        .filters
                        .iter()
                        .cloned()
                        .reduce(|a, b| a.and(b))
                        .ok_or_else(|| PlanError::Internal("empty filter list".into()))?;
                    let predicate = self.physical(&predicate, &df)?;
                    id = self.push(
                        NodeKind::Filter { predicate },
                        vec![id],
                        nullable_schema(&full_schema),
                        vec![],
                    );
                }
                if let Some(projection) = &scan.projection {
                    let exprs: Vec<Arc<dyn PhysicalExpr>> = projection
                        .iter()
                        .map(|i| {
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                full_schema.field(*i).name(),
                                *i,
                            )) as Arc<dyn PhysicalExpr>
                        })
                        .collect();
                    id = self.push(
                        NodeKind::Project { exprs },
                        vec![id],
                        nullable_schema(scan.projected_schema.as_arrow()),
                        vec![],
                    );
                }
                Ok(id)
            }
            LogicalPlan::Filter(f) => {
                if let Some(id) = self.row_number_top_n(f)? {
                    return Ok(id);
                }
                let input = self.node(&f.input)?;
                if crate::now::contains_now(&f.predicate) {
                    return self.temporal_filter(f, input);
                }
                if let Some((joined, schema, exprs)) = self.scalar_subqueries(
                    input,
                    f.input.schema(),
                    std::slice::from_ref(&f.predicate),
                )? {
                    let predicate = self.physical(&exprs[0], &schema)?;
                    let filtered = self.push(
                        NodeKind::Filter { predicate },
                        vec![joined],
                        nullable_schema(schema.as_arrow()),
                        vec![],
                    );
                    let columns: Vec<Expr> = f
                        .input
                        .schema()
                        .columns()
                        .into_iter()
                        .map(Expr::Column)
                        .collect();
                    return self.project(filtered, &columns, &schema, f.input.schema());
                }
                let predicate = self.physical(&f.predicate, f.input.schema())?;
                Ok(self.push(
                    NodeKind::Filter { predicate },
                    vec![input],
                    nullable_schema(f.input.schema().as_arrow()),
                    vec![],
                ))
            }
            LogicalPlan::Projection(p) if p.expr.iter().any(is_session_marker) => self.session(p),
            LogicalPlan::Projection(p) if p.expr.iter().any(crate::now::contains_proctime) => {
                self.processing_time(p)
            }
            LogicalPlan::Projection(p) => {
                let input = self.node(&p.input)?;
                match self.scalar_subqueries(input, p.input.schema(), &p.expr)? {
                    Some((joined, schema, exprs)) => {
                        self.project(joined, &exprs, &schema, &p.schema)
                    }
                    None => self.project(input, &p.expr, p.input.schema(), &p.schema),
                }
            }
            LogicalPlan::SubqueryAlias(a) => self.node(&a.input),
            LogicalPlan::Sort(s) => match s.fetch {
                Some(limit) => self.top_n(&s.input, &[], &s.expr, 0, limit, None),
                // A view is a set: its ORDER BY has no effect (SELECT orders results).
                None => self.node(&s.input),
            },
            LogicalPlan::Limit(l) => self.limit(l),
            LogicalPlan::Distinct(Distinct::All(input)) => {
                // DISTINCT: a group per distinct row, no aggregate calls.
                let id = self.node(input)?;
                let schema = nullable_schema(input.schema().as_arrow());
                let spec = AggregateSpec {
                    group_count: schema.fields().len(),
                    calls: vec![],
                    input_schema: Arc::clone(&schema),
                    output_schema: Arc::clone(&schema),
                    emit_on_window_close: false,
                    append_only_input: false,
                    offload: None,
                };
                let tables = self.tables(2);
                Ok(self.push(NodeKind::Aggregate(spec), vec![id], schema, tables))
            }
            LogicalPlan::Distinct(Distinct::On(d)) => {
                // DISTINCT ON (on) ... ORDER BY sort: the first row of each `on` group.
                let order = d.sort_expr.clone().unwrap_or_default();
                let id = self.top_n(&d.input, &d.on_expr, &order, 0, 1, None)?;
                self.project(id, &d.select_expr, d.input.schema(), &d.schema)
            }
            LogicalPlan::Aggregate(agg) => self.aggregate(agg),
            LogicalPlan::Join(join) => self.join(join),
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .iter()
                    .map(|i| self.node(i))
                    .collect::<Result<Vec<_>>>()?;
                Ok(self.push(
                    NodeKind::Union,
                    inputs,
                    nullable_schema(u.schema.as_arrow()),
                    vec![],
                ))
            }
            LogicalPlan::Window(w) => self.over(w),
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
                Err(PlanError::not_incremental(
                    "a query that reads no table or view (VALUES or SELECT without FROM)",
                ))
            }
            LogicalPlan::Subquery(_) => Err(PlanError::not_incremental("this subquery")),
            LogicalPlan::Unnest(_) => Err(PlanError::not_incremental("UNNEST")),
            LogicalPlan::RecursiveQuery(_) => Err(PlanError::not_incremental("WITH RECURSIVE")),
            LogicalPlan::Repartition(r) => self.node(&r.input),
            other => Err(PlanError::not_incremental(format!(
                "the {} plan node",
                other.display()
            ))),
        }
    }

    /// Uncorrelated scalar subqueries in `exprs` (over node `input` with `schema`): each
    /// is planned as its own dataflow branch and cross-joined onto the input as one more
    /// column, and the expressions are rewritten to read that column. Returns `None`
    /// when the expressions have no scalar subquery.
    fn scalar_subqueries(
        &mut self,
        input: usize,
        schema: &DFSchema,
        exprs: &[Expr],
    ) -> Result<Option<(usize, DFSchema, Vec<Expr>)>> {
        use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
        let mut found: Vec<datafusion::logical_expr::Subquery> = Vec::new();
        for e in exprs {
            e.apply(|e| {
                if let Expr::ScalarSubquery(sq) = e {
                    if !found.contains(sq) {
                        found.push(sq.clone());
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        if found.is_empty() {
            return Ok(None);
        }
        let mut id = input;
        let mut current = nullable_schema(schema.as_arrow());
        let mut added = Vec::new();
        for (n, sq) in found.iter().enumerate() {
            if !sq.outer_ref_columns.is_empty() {
                return Err(PlanError::not_incremental(
                    "this correlated scalar subquery",
                ));
            }
            if !returns_one_row(&sq.subquery) {
                return Err(PlanError::not_incremental(
                    "a scalar subquery other than an aggregate without GROUP BY (it could \
                     return no row or several)",
                ));
            }
            let sub = self.node(&sq.subquery)?;
            let field = sq.subquery.schema().field(0);
            let name = format!("__sabot_scalar_{n}");
            let new_field = Field::new(&name, field.data_type().clone(), true);
            let sub_schema = Arc::new(Schema::new(vec![new_field.clone()]));
            let mut fields: Vec<Field> = current
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(new_field.clone());
            let joined = Arc::new(Schema::new(fields));
            let spec = JoinSpec {
                kind: JoinKind::Inner,
                nulls_equal: false,
                left_keys: vec![],
                right_keys: vec![],
                left_schema: Arc::clone(&current),
                right_schema: sub_schema,
                output_schema: Arc::clone(&joined),
                temporal: false,
                intervals: vec![],
                filter: None,
                offload: None,
            };
            let tables = self.tables(2);
            id = self.push(
                NodeKind::Join(spec),
                vec![id, sub],
                Arc::clone(&joined),
                tables,
            );
            current = joined;
            added.push(new_field);
        }
        let extended = schema.join(&DFSchema::from_unqualified_fields(
            added.into(),
            Default::default(),
        )?)?;
        let rewritten = exprs
            .iter()
            .map(|e| {
                Ok(e.clone()
                    .transform_up(|e| match e {
                        Expr::ScalarSubquery(sq) => {
                            let n = found.iter().position(|f| *f == sq).unwrap_or(0);
                            Ok(Transformed::yes(Expr::Column(
                                datafusion::common::Column::new_unqualified(format!(
                                    "__sabot_scalar_{n}"
                                )),
                            )))
                        }
                        other => Ok(Transformed::no(other)),
                    })?
                    .data)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((id, extended, rewritten)))
    }

    /// `x NOT IN (SELECT y ...)`: true when the subquery is empty; otherwise only for a
    /// non-NULL `x` that matches no `y` while no `y` is NULL. Planned as the anti join on
    /// `x = y`, cross-joined with the subquery's row count and NULL count, filtered by
    /// that rule.
    fn null_aware_anti_join(&mut self, join: &datafusion::logical_expr::Join) -> Result<usize> {
        let ([(left_key, right_key)], None, JoinType::LeftAnti) =
            (join.on.as_slice(), &join.filter, join.join_type)
        else {
            return Err(PlanError::not_incremental(
                "this NOT IN (subquery) (use NOT EXISTS)",
            ));
        };
        let mut plain = join.clone();
        plain.null_aware = false;
        let anti = self.join(&plain)?;
        // The subquery's row count and NULL count, planned as a second branch.
        let right = self.node(&join.right)?;
        let is_null = self.physical(&right_key.clone().is_null(), join.right.schema())?;
        let flag_schema = Arc::new(Schema::new(vec![Field::new(
            "is_null",
            DataType::Boolean,
            true,
        )]));
        let flag = self.push(
            NodeKind::Project {
                exprs: vec![is_null],
            },
            vec![right],
            Arc::clone(&flag_schema),
            vec![],
        );
        let (n, nulls) = ("__sabot_rows", "__sabot_nulls");
        let stats_fields = vec![
            Field::new(n, DataType::Int64, true),
            Field::new(nulls, DataType::Int64, true),
        ];
        let stats_schema = Arc::new(Schema::new(stats_fields.clone()));
        let spec = AggregateSpec {
            group_count: 0,
            calls: vec![
                AggCall::new(AggKind::Count, 0, None),
                AggCall::new(AggKind::Count, 0, Some(0)),
            ],
            input_schema: flag_schema,
            output_schema: Arc::clone(&stats_schema),
            emit_on_window_close: false,
            append_only_input: false,
            offload: None,
        };
        let tables = self.tables(2);
        let stats = self.push(
            NodeKind::Aggregate(spec),
            vec![flag],
            Arc::clone(&stats_schema),
            tables,
        );
        let left_schema = nullable_schema(join.left.schema().as_arrow());
        let mut fields: Vec<Field> = left_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(stats_fields.iter().cloned());
        let joined = Arc::new(Schema::new(fields));
        let spec = JoinSpec {
            kind: JoinKind::Inner,
            nulls_equal: false,
            left_keys: vec![],
            right_keys: vec![],
            left_schema: Arc::clone(&left_schema),
            right_schema: stats_schema,
            output_schema: Arc::clone(&joined),
            temporal: false,
            intervals: vec![],
            filter: None,
            offload: None,
        };
        let tables = self.tables(2);
        let cross = self.push(
            NodeKind::Join(spec),
            vec![anti, stats],
            Arc::clone(&joined),
            tables,
        );
        let df = join.left.schema().join(&DFSchema::from_unqualified_fields(
            stats_fields.into(),
            Default::default(),
        )?)?;
        let col = |name: &str| Expr::Column(datafusion::common::Column::new_unqualified(name));
        let zero = || Expr::Literal(datafusion::common::ScalarValue::Int64(Some(0)), None);
        let keep = col(n)
            .eq(zero())
            .or(left_key.clone().is_not_null().and(col(nulls).eq(zero())));
        let predicate = self.physical(&keep, &df)?;
        let filtered = self.push(NodeKind::Filter { predicate }, vec![cross], joined, vec![]);
        let back: Vec<Arc<dyn PhysicalExpr>> = left_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                Arc::new(datafusion::physical_expr::expressions::Column::new(
                    f.name(),
                    i,
                )) as Arc<dyn PhysicalExpr>
            })
            .collect();
        Ok(self.push(
            NodeKind::Project { exprs: back },
            vec![filtered],
            nullable_schema(join.schema.as_arrow()),
            vec![],
        ))
    }

    /// An ASOF join: the equalities of its condition are the keys, one inequality between
    /// a left and a right expression picks the match; other conditions on the right side
    /// alone narrow the candidates (and on the left side alone, in an inner join, the
    /// left rows).
    fn asof_join(
        &mut self,
        join: &datafusion::logical_expr::Join,
        kind: JoinKind,
    ) -> Result<usize> {
        use datafusion::logical_expr::{BinaryExpr, Operator};
        use sabot_dataflow::ops::asof::{AsofMatch, AsofSpec};
        if !matches!(kind, JoinKind::Inner | JoinKind::Left) {
            return Err(PlanError::user(
                "0A000",
                "an ASOF join is an inner or LEFT join",
            ));
        }
        let (ls, rs) = (join.left.schema(), join.right.schema());
        let only = |e: &Expr, s: &DFSchema| e.column_refs().iter().all(|c| s.has_column(c));
        let mut time: Option<(Expr, AsofMatch, Expr)> = None;
        let mut left_only = Vec::new();
        let mut right_only = Vec::new();
        let conjuncts = join
            .filter
            .as_ref()
            .map(split_conjunction)
            .unwrap_or_default();
        for c in conjuncts {
            if only(c, rs) && !c.column_refs().is_empty() {
                right_only.push(c.clone());
                continue;
            }
            if only(c, ls) && !c.column_refs().is_empty() {
                if kind == JoinKind::Left {
                    return Err(PlanError::not_incremental(
                        "a condition on the left side alone in the ON of an ASOF LEFT JOIN",
                    ));
                }
                left_only.push(c.clone());
                continue;
            }
            let pair = match c {
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    if only(left, ls) && only(right, rs) {
                        Some(((**left).clone(), *op, (**right).clone()))
                    } else if only(left, rs) && only(right, ls) {
                        op.swap()
                            .map(|op| ((**right).clone(), op, (**left).clone()))
                    } else {
                        None
                    }
                }
                _ => None,
            };
            let matching = match pair.as_ref().map(|p| p.1) {
                Some(Operator::GtEq) => AsofMatch::AtOrBefore,
                Some(Operator::Gt) => AsofMatch::Before,
                Some(Operator::LtEq) => AsofMatch::AtOrAfter,
                Some(Operator::Lt) => AsofMatch::After,
                _ => {
                    return Err(PlanError::not_incremental(format!(
                        "the condition {c} in an ASOF join (its ON holds equalities, one \
                         inequality between a left and a right time, and conditions on the \
                         right side alone)"
                    )))
                }
            };
            if time.is_some() {
                return Err(PlanError::user(
                    "0A000",
                    "an ASOF join takes one inequality between a left and a right time",
                ));
            }
            if let Some((l, _, r)) = pair {
                time = Some((l, matching, r));
            }
        }
        let Some((left_time, matching, right_time)) = time else {
            return Err(PlanError::user(
                "42601",
                "an ASOF join needs an inequality between a left and a right time in its ON \
                 condition, e.g. ON l.k = r.k AND l.ts >= r.ts",
            ));
        };
        let mut left = self.node(&join.left)?;
        if let Some(cond) = datafusion::logical_expr::utils::conjunction(left_only) {
            let predicate = self.physical(&cond, ls)?;
            let schema = Arc::clone(&self.nodes[left].schema);
            left = self.push(NodeKind::Filter { predicate }, vec![left], schema, vec![]);
        }
        let mut right = self.node(&join.right)?;
        if let Some(cond) = datafusion::logical_expr::utils::conjunction(right_only) {
            let predicate = self.physical(&cond, rs)?;
            let schema = Arc::clone(&self.nodes[right].schema);
            right = self.push(NodeKind::Filter { predicate }, vec![right], schema, vec![]);
        }
        let output_schema = nullable_schema(join.schema.as_arrow());
        let spec = AsofSpec {
            join: JoinSpec {
                filter: None,
                kind,
                nulls_equal: false,
                left_keys: join
                    .on
                    .iter()
                    .map(|(l, _)| self.physical(l, ls))
                    .collect::<Result<Vec<_>>>()?,
                right_keys: join
                    .on
                    .iter()
                    .map(|(_, r)| self.physical(r, rs))
                    .collect::<Result<Vec<_>>>()?,
                left_schema: nullable_schema(ls.as_arrow()),
                right_schema: nullable_schema(rs.as_arrow()),
                output_schema: Arc::clone(&output_schema),
                temporal: false,
                intervals: Vec::new(),
                offload: None,
            },
            left_time: self.physical(&left_time, ls)?,
            right_time: self.physical(&right_time, rs)?,
            matching,
        };
        let tables = self.tables(2);
        Ok(self.push(
            NodeKind::AsofJoin(spec),
            vec![left, right],
            output_schema,
            tables,
        ))
    }

    /// A projection that reads the processing time: the clock appended to each row, then
    /// the projection over it.
    fn processing_time(&mut self, p: &datafusion::logical_expr::Projection) -> Result<usize> {
        let input = self.node(&p.input)?;
        let prefix = StreamPlan {
            nodes: self.nodes[..=input].to_vec(),
        };
        if !prefix.append_only(&|r| self.append_only.contains(r)) {
            return Err(crate::now::proctime_misplaced());
        }
        let (exprs, ty) = crate::now::bind_proctime(&p.expr, p.input.schema())?;
        let clock = DFSchema::try_from(Schema::new(vec![Field::new(
            crate::now::PROCTIME_COLUMN,
            ty,
            false,
        )]))?;
        let extended = p.input.schema().join(&clock)?;
        let id = self.push(
            NodeKind::ProcessingTime,
            vec![input],
            nullable_schema(extended.as_arrow()),
            vec![],
        );
        self.project(id, &exprs, &extended, &p.schema)
    }

    /// A filter whose condition reads the clock: the other conjuncts as a plain filter,
    /// then a temporal filter per time condition.
    fn temporal_filter(
        &mut self,
        f: &datafusion::logical_expr::Filter,
        input: usize,
    ) -> Result<usize> {
        let schema = nullable_schema(f.input.schema().as_arrow());
        let (timed, plain): (Vec<&Expr>, Vec<&Expr>) = split_conjunction(&f.predicate)
            .into_iter()
            .partition(|e| crate::now::contains_now(e));
        let mut id = input;
        if let Some(rest) = datafusion::logical_expr::utils::conjunction(plain.into_iter().cloned())
        {
            let predicate = self.physical(&rest, f.input.schema())?;
            id = self.push(
                NodeKind::Filter { predicate },
                vec![id],
                Arc::clone(&schema),
                vec![],
            );
        }
        for conjunct in timed {
            let clock = crate::now::clock_schema(conjunct, f.input.schema())?;
            for c in crate::now::conditions(conjunct)? {
                let row_type = c.row.get_type(f.input.schema())?;
                let now = if c.now.get_type(&clock)? == row_type {
                    c.now
                } else {
                    Expr::Cast(datafusion::logical_expr::Cast::new(
                        Box::new(c.now),
                        row_type,
                    ))
                };
                let text = format!(
                    "{} {} {}",
                    crate::now::display(&c.row),
                    c.bound.symbol(),
                    crate::now::display(&now)
                );
                let spec = TemporalFilterSpec {
                    row_expr: self.physical(&c.row, f.input.schema())?,
                    bound: c.bound,
                    now_expr: self.state.create_physical_expr(now, &clock)?,
                    now_schema: Arc::new(clock.as_arrow().clone()),
                    input_schema: Arc::clone(&schema),
                    text,
                };
                let tables = self.tables(1);
                id = self.push(
                    NodeKind::TemporalFilter(spec),
                    vec![id],
                    Arc::clone(&schema),
                    tables,
                );
            }
        }
        Ok(id)
    }

    /// PARTITION BY and ORDER BY expressions over `schema`, as physical expressions
    /// (the latter with their direction and NULL placement).
    #[allow(clippy::type_complexity)]
    fn partition_and_order(
        &self,
        partition: &[Expr],
        order: &[SortExpr],
        schema: &DFSchema,
    ) -> Result<(
        Vec<Arc<dyn PhysicalExpr>>,
        Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
    )> {
        let partition = partition
            .iter()
            .map(|e| self.physical(e, schema))
            .collect::<Result<Vec<_>>>()?;
        let order = order
            .iter()
            .map(|s| {
                Ok((
                    self.physical(&s.expr, schema)?,
                    SortOptions {
                        descending: !s.asc,
                        nulls_first: s.nulls_first,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((partition, order))
    }

    /// Window functions (`OVER (PARTITION BY ... ORDER BY ... ROWS ...)`), all of one
    /// node sharing their PARTITION BY and ORDER BY.
    fn over(&mut self, w: &datafusion::logical_expr::Window) -> Result<usize> {
        let mut shared: Option<(Vec<Expr>, Vec<SortExpr>)> = None;
        for e in &w.window_expr {
            let inner = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                other => other,
            };
            let Expr::WindowFunction(f) = inner else {
                return Err(PlanError::not_incremental(format!(
                    "the window expression {e}"
                )));
            };
            let key = (f.params.partition_by.clone(), f.params.order_by.clone());
            match &shared {
                None => shared = Some(key),
                Some(k) if *k == key => {}
                Some(_) => {
                    return Err(PlanError::not_incremental(
                        "window functions with different PARTITION BY or ORDER BY in one \
                         SELECT (use a subquery per window)",
                    ))
                }
            }
        }
        let (partition, order) = shared.unwrap_or_default();
        let input = self.node(&w.input)?;
        let in_schema = w.input.schema();
        let (partition, order) = self.partition_and_order(&partition, &order, in_schema)?;
        let props = self.state.execution_props();
        let functions = w
            .window_expr
            .iter()
            .map(|e| {
                Ok(datafusion::physical_planner::create_window_expr(
                    e,
                    in_schema,
                    props,
                    &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext::default(),
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        let output_schema = nullable_schema(w.schema.as_arrow());
        let spec = OverSpec {
            partition,
            order,
            functions,
            input_schema: nullable_schema(in_schema.as_arrow()),
            output_schema: Arc::clone(&output_schema),
        };
        let tables = self.tables(1);
        Ok(self.push(NodeKind::Over(spec), vec![input], output_schema, tables))
    }

    /// The projection a SESSION window was rewritten into: a session operator over the
    /// input, adding the window bounds, and the projection reading them.
    fn session(&mut self, p: &datafusion::logical_expr::Projection) -> Result<usize> {
        use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
        let mut call: Option<Vec<Expr>> = None;
        for e in &p.expr {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if is_marker_name(f.func.name()) {
                        call = Some(f.args.clone());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        let args = call.ok_or_else(|| PlanError::Internal("session marker vanished".into()))?;
        let in_schema = p.input.schema();
        let column = |e: &Expr| -> Result<usize> {
            match e {
                Expr::Column(c) => Ok(in_schema.index_of_column(c)?),
                other => Err(PlanError::not_incremental(format!(
                    "SESSION over the expression {other} (give a column)"
                ))),
            }
        };
        let [ts, gap, keys @ ..] = args.as_slice() else {
            return Err(PlanError::Internal(
                "session marker without arguments".into(),
            ));
        };
        let time = column(ts)?;
        let keys = keys.iter().map(column).collect::<Result<Vec<_>>>()?;
        let Expr::Literal(gap, _) = gap else {
            return Err(PlanError::Internal("session gap is not a constant".into()));
        };
        let micros = i64::try_from(v_as_i128(gap).unwrap_or(0)).unwrap_or(0);
        let input_schema = nullable_schema(in_schema.as_arrow());
        let ts_type = input_schema.field(time).data_type().clone();
        let gap = match &ts_type {
            DataType::Timestamp(unit, _) => match unit {
                arrow::datatypes::TimeUnit::Second => micros / 1_000_000,
                arrow::datatypes::TimeUnit::Millisecond => micros / 1_000,
                arrow::datatypes::TimeUnit::Microsecond => micros,
                arrow::datatypes::TimeUnit::Nanosecond => micros.saturating_mul(1_000),
            },
            other => {
                return Err(PlanError::user(
                    "42804",
                    format!("SESSION needs a timestamp time column, not {other}"),
                ))
            }
        };
        if gap <= 0 {
            return Err(PlanError::user(
                "22023",
                "SESSION's gap is below the time column's precision",
            ));
        }
        let (start, end) = ("__sabot_session_start", "__sabot_session_end");
        let added = vec![
            Field::new(start, ts_type.clone(), true),
            Field::new(end, ts_type, true),
        ];
        let mut fields: Vec<Field> = input_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(added.iter().cloned());
        let output_schema = Arc::new(Schema::new(fields));
        let input = self.node(&p.input)?;
        let tables = self.tables(1);
        let id = self.push(
            NodeKind::Session(SessionSpec {
                time,
                gap,
                keys,
                input_schema,
                output_schema: Arc::clone(&output_schema),
                append_only_input: false,
            }),
            vec![input],
            output_schema,
            tables,
        );
        let extended = in_schema.join(&DFSchema::from_unqualified_fields(
            added.into(),
            Default::default(),
        )?)?;
        let exprs = p
            .expr
            .iter()
            .map(|e| {
                Ok(e.clone()
                    .transform_up(|e| match &e {
                        Expr::ScalarFunction(f) if is_marker_name(f.func.name()) => {
                            let name = if f.func.name() == SESSION_START_FN {
                                start
                            } else {
                                end
                            };
                            Ok(Transformed::yes(Expr::Column(
                                datafusion::common::Column::new_unqualified(name),
                            )))
                        }
                        _ => Ok(Transformed::no(e)),
                    })?
                    .data)
            })
            .collect::<Result<Vec<_>>>()?;
        self.project(id, &exprs, &extended, &p.schema)
    }

    /// A projection of `exprs` (over `input_schema`) on top of node `input`.
    fn project(
        &mut self,
        input: usize,
        exprs: &[Expr],
        input_schema: &DFSchema,
        output: &DFSchema,
    ) -> Result<usize> {
        let exprs = exprs
            .iter()
            .map(|e| self.physical(e, input_schema))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.push(
            NodeKind::Project { exprs },
            vec![input],
            nullable_schema(output.as_arrow()),
            vec![],
        ))
    }

    /// A top-N over `input`: per `partition`, the rows at positions offset+1 ..=
    /// offset+limit in `order`. With `row_number_schema` (the input columns plus one)
    /// each row also carries its position.
    fn top_n(
        &mut self,
        input: &LogicalPlan,
        partition: &[Expr],
        order: &[SortExpr],
        offset: usize,
        limit: usize,
        row_number_schema: Option<&DFSchema>,
    ) -> Result<usize> {
        let id = self.node(input)?;
        let in_schema = input.schema();
        let (partition, order) = self.partition_and_order(partition, order, in_schema)?;
        let input_schema = nullable_schema(in_schema.as_arrow());
        let output_schema = match row_number_schema {
            Some(s) => nullable_schema(s.as_arrow()),
            None => Arc::clone(&input_schema),
        };
        let spec = TopNSpec {
            partition,
            order,
            offset,
            limit,
            row_number: row_number_schema.is_some(),
            input_schema,
            output_schema: Arc::clone(&output_schema),
            append_only_input: false,
        };
        let tables = self.tables(1);
        Ok(self.push(NodeKind::TopN(spec), vec![id], output_schema, tables))
    }

    /// `ORDER BY ... LIMIT n OFFSET m`, possibly with a projection between the two.
    fn limit(&mut self, l: &datafusion::logical_expr::Limit) -> Result<usize> {
        let offset = match l.get_skip_type()? {
            SkipType::Literal(n) => n,
            SkipType::UnsupportedExpr => {
                return Err(PlanError::not_incremental(
                    "an OFFSET that is not a constant",
                ))
            }
        };
        let limit = match l.get_fetch_type()? {
            FetchType::Literal(n) => n.unwrap_or(usize::MAX),
            FetchType::UnsupportedExpr => {
                return Err(PlanError::not_incremental("a LIMIT that is not a constant"))
            }
        };
        match l.input.as_ref() {
            LogicalPlan::Sort(s) => self.top_n(&s.input, &[], &s.expr, offset, limit, None),
            LogicalPlan::Projection(p) => match p.input.as_ref() {
                LogicalPlan::Sort(s) => {
                    let id = self.top_n(&s.input, &[], &s.expr, offset, limit, None)?;
                    self.project(id, &p.expr, p.input.schema(), &p.schema)
                }
                _ => Err(PlanError::not_incremental(
                    "LIMIT / OFFSET without ORDER BY (which rows it keeps is not defined)",
                )),
            },
            _ => Err(PlanError::not_incremental(
                "LIMIT / OFFSET without ORDER BY (which rows it keeps is not defined)",
            )),
        }
    }

    /// `SELECT ... FROM (SELECT ..., ROW_NUMBER() OVER (PARTITION BY p ORDER BY o) AS rn
    /// FROM t) WHERE rn <= N`: a filter on a lone ROW_NUMBER() window with an upper bound
    /// becomes a top-N that carries the row number. Other conditions of the filter are
    /// applied after it.
    fn row_number_top_n(&mut self, f: &datafusion::logical_expr::Filter) -> Result<Option<usize>> {
        let (projection, window) = match f.input.as_ref() {
            LogicalPlan::Window(w) => (None, w),
            LogicalPlan::Projection(p) => match p.input.as_ref() {
                LogicalPlan::Window(w) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) => {
                    (Some(p), w)
                }
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        let [Expr::WindowFunction(wf)] = window.window_expr.as_slice() else {
            return Ok(None);
        };
        if wf.fun.name() != "row_number" {
            return Ok(None);
        }
        let rn_name = window
            .schema
            .field(window.input.schema().fields().len())
            .name()
            .clone();
        let mut limit: Option<usize> = None;
        let mut rest = Vec::new();
        for conjunct in split_conjunction(&f.predicate) {
            match row_number_bound(conjunct, &rn_name) {
                Some(n) => limit = Some(limit.map_or(n, |l| l.min(n))),
                None => rest.push(conjunct.clone()),
            }
        }
        let Some(limit) = limit else {
            return Ok(None);
        };
        let mut id = self.top_n(
            &window.input,
            &wf.params.partition_by,
            &wf.params.order_by,
            0,
            limit,
            Some(&window.schema),
        )?;
        if let Some(p) = projection {
            id = self.project(id, &p.expr, p.input.schema(), &p.schema)?;
        }
        if let Some(predicate) = rest.into_iter().reduce(|a, b| a.and(b)) {
            let predicate = self.physical(&predicate, f.input.schema())?;
            id = self.push(
                NodeKind::Filter { predicate },
                vec![id],
                nullable_schema(f.input.schema().as_arrow()),
                vec![],
            );
        }
        Ok(Some(id))
    }

    fn aggregate(&mut self, agg: &datafusion::logical_expr::Aggregate) -> Result<usize> {
        let input = self.node(&agg.input)?;
        let in_schema = agg.input.schema();
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        let mut fields: Vec<Field> = Vec::new();
        for g in &agg.group_expr {
            if matches!(g, Expr::GroupingSet(_)) {
                return Err(PlanError::not_incremental("GROUPING SETS / ROLLUP / CUBE"));
            }
            let p = self.physical(g, in_schema)?;
            fields.push(Field::new(
                g.schema_name().to_string(),
                p.data_type(in_schema.as_arrow())?,
                true,
            ));
            exprs.push(p);
        }
        let mut calls = Vec::new();
        for a in &agg.aggr_expr {
            let inner = match a {
                Expr::Alias(al) => al.expr.as_ref(),
                other => other,
            };
            let Expr::AggregateFunction(f) = inner else {
                return Err(PlanError::not_incremental(format!(
                    "the aggregate expression {a}"
                )));
            };
            let name = f.func.name().to_lowercase();
            let params = &f.params;
            let kind = match name.as_str() {
                "count" => AggKind::Count,
                "sum" => AggKind::Sum,
                "avg" | "mean" => AggKind::Avg,
                "min" => AggKind::Min,
                "max" => AggKind::Max,
                "bool_and" => AggKind::BoolAnd,
                "bool_or" => AggKind::BoolOr,
                "var_samp" | "var" | "variance" | "var_sample" => AggKind::VarSamp,
                "var_pop" | "var_population" => AggKind::VarPop,
                "stddev" | "stddev_samp" => AggKind::StddevSamp,
                "stddev_pop" => AggKind::StddevPop,
                "string_agg" => AggKind::StringAgg,
                "array_agg" => AggKind::ArrayAgg,
                other => {
                    return Err(PlanError::not_incremental(format!(
                        "the aggregate function {}",
                        other.to_uppercase()
                    )))
                }
            };
            if !params.order_by.is_empty()
                && !matches!(kind, AggKind::StringAgg | AggKind::ArrayAgg)
            {
                return Err(PlanError::not_incremental(format!(
                    "ORDER BY inside {}",
                    name.to_uppercase()
                )));
            }
            let mut separator = String::new();
            let arg = match (kind, params.args.as_slice()) {
                (_, [arg]) if kind != AggKind::StringAgg => arg.clone(),
                (AggKind::Count, []) => {
                    Expr::Literal(datafusion::common::ScalarValue::Int64(Some(1)), None)
                }
                (AggKind::StringAgg, [arg, sep]) => {
                    separator = match sep {
                        Expr::Literal(v, _) if v.is_null() => String::new(),
                        Expr::Literal(v, _) => v.to_string(),
                        Expr::Cast(c) if matches!(c.expr.as_ref(), Expr::Literal(..)) => {
                            match c.expr.as_ref() {
                                Expr::Literal(v, _) if !v.is_null() => v.to_string(),
                                _ => String::new(),
                            }
                        }
                        _ => {
                            return Err(PlanError::not_incremental(
                                "STRING_AGG with a separator that is not a constant",
                            ))
                        }
                    };
                    arg.clone()
                }
                _ => {
                    return Err(PlanError::not_incremental(format!(
                        "{name} with {} arguments",
                        params.args.len()
                    )))
                }
            };
            let arg = match (kind, &arg) {
                // DataFusion casts an integer argument of AVG, VARIANCE and STDDEV to a
                // float; accumulating the integers exactly (as PostgreSQL does) and
                // dividing at the end keeps precision.
                (
                    AggKind::Avg
                    | AggKind::VarSamp
                    | AggKind::VarPop
                    | AggKind::StddevSamp
                    | AggKind::StddevPop,
                    Expr::Cast(c),
                ) if c.expr.get_type(in_schema).is_ok_and(|t| t.is_integer()) => {
                    c.expr.as_ref().clone()
                }
                _ => arg,
            };
            let p = self.physical(&arg, in_schema)?;
            fields.push(Field::new(
                arg.schema_name().to_string(),
                p.data_type(in_schema.as_arrow())?,
                true,
            ));
            let arg_col = exprs.len();
            exprs.push(p);
            let filter = match &params.filter {
                Some(f) => {
                    let pf = self.physical(f, in_schema)?;
                    fields.push(Field::new(
                        f.schema_name().to_string(),
                        DataType::Boolean,
                        true,
                    ));
                    exprs.push(pf);
                    Some(exprs.len() - 1)
                }
                None => None,
            };
            let mut order = Vec::new();
            for sort in &params.order_by {
                let p = self.physical(&sort.expr, in_schema)?;
                fields.push(Field::new(
                    sort.expr.schema_name().to_string(),
                    p.data_type(in_schema.as_arrow())?,
                    true,
                ));
                exprs.push(p);
                order.push((
                    exprs.len() - 1,
                    SortOptions {
                        descending: !sort.asc,
                        nulls_first: sort.nulls_first,
                    },
                ));
            }
            calls.push(AggCall {
                kind,
                arg: arg_col,
                filter,
                distinct: params.distinct,
                order,
                separator,
            });
        }
        let pre_schema: SchemaRef = Arc::new(Schema::new(fields));
        let pre = self.push(
            NodeKind::Project { exprs },
            vec![input],
            Arc::clone(&pre_schema),
            vec![],
        );
        let output_schema = nullable_schema(agg.schema.as_arrow());
        let spec = AggregateSpec {
            group_count: agg.group_expr.len(),
            calls,
            input_schema: pre_schema,
            output_schema: Arc::clone(&output_schema),
            emit_on_window_close: false,
            append_only_input: false,
            offload: None,
        };
        let tables = self.tables(2);
        Ok(self.push(NodeKind::Aggregate(spec), vec![pre], output_schema, tables))
    }

    fn join(&mut self, join: &datafusion::logical_expr::Join) -> Result<usize> {
        let kind = match join.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            JoinType::Right => JoinKind::Right,
            JoinType::Full => JoinKind::Full,
            JoinType::LeftSemi => JoinKind::LeftSemi,
            JoinType::LeftAnti => JoinKind::LeftAnti,
            JoinType::RightSemi => JoinKind::RightSemi,
            JoinType::RightAnti => JoinKind::RightAnti,
            other => {
                return Err(PlanError::not_incremental(format!(
                    "{} JOIN",
                    other.to_string().to_uppercase()
                )))
            }
        };
        if join.null_aware {
            return self.null_aware_anti_join(join);
        }
        if direct_scan(&join.right).is_some_and(|t| t.starts_with(ASOF_PREFIX)) {
            return self.asof_join(join, kind);
        }
        if reads_temporal(&join.left) {
            return Err(PlanError::user(
                "0A000",
                "the table read FOR SYSTEM_TIME AS OF PROCTIME() must be the right side of its join",
            ));
        }
        let temporal = reads_temporal(&join.right);
        if temporal && !matches!(kind, JoinKind::Inner | JoinKind::Left) {
            return Err(PlanError::user(
                "0A000",
                "a join FOR SYSTEM_TIME AS OF PROCTIME() is an inner or LEFT join",
            ));
        }
        if temporal && kind == JoinKind::Left && join.filter.is_some() {
            return Err(PlanError::not_incremental(
                "a LEFT temporal join with conditions other than equalities",
            ));
        }
        let left = self.node(&join.left)?;
        if temporal {
            let prefix = StreamPlan {
                nodes: self.nodes[..=left].to_vec(),
            };
            if !prefix.append_only(&|r| self.append_only.contains(r)) {
                return Err(PlanError::user(
                    "0A000",
                    "the stream joined FOR SYSTEM_TIME AS OF PROCTIME() must be append-only \
                     (a source, an APPEND ONLY table, or a view that only adds rows): a \
                     retraction could not find the row it was joined with",
                ));
            }
        }
        let right = self.node(&join.right)?;
        let left_keys = join
            .on
            .iter()
            .map(|(l, _)| self.physical(l, join.left.schema()))
            .collect::<Result<Vec<_>>>()?;
        let right_keys = join
            .on
            .iter()
            .map(|(_, r)| self.physical(r, join.right.schema()))
            .collect::<Result<Vec<_>>>()?;
        let output_schema = nullable_schema(join.schema.as_arrow());
        // Inner joins filter their output; for the other kinds the condition decides
        // which pairs match, so the join evaluates it over both sides' columns.
        let pair_filter = match &join.filter {
            Some(f) if kind != JoinKind::Inner => {
                let both = join.left.schema().join(join.right.schema())?;
                Some(self.physical(f, &both)?)
            }
            _ => None,
        };
        let spec = JoinSpec {
            filter: pair_filter,
            kind,
            nulls_equal: join.null_equality == datafusion::common::NullEquality::NullEqualsNull,
            left_keys,
            right_keys,
            left_schema: nullable_schema(join.left.schema().as_arrow()),
            right_schema: nullable_schema(join.right.schema().as_arrow()),
            output_schema: Arc::clone(&output_schema),
            temporal,
            intervals: match (&join.filter, kind) {
                (Some(f), JoinKind::Inner) if !temporal => {
                    interval_bounds(f, join.left.schema(), join.right.schema())
                }
                _ => Vec::new(),
            },
            offload: None,
        };
        let tables = self.tables(2);
        let mut id = self.push(
            NodeKind::Join(spec),
            vec![left, right],
            Arc::clone(&output_schema),
            tables,
        );
        if let (Some(filter), JoinKind::Inner) = (&join.filter, kind) {
            let predicate = self.physical(filter, &join.schema)?;
            id = self.push(
                NodeKind::Filter { predicate },
                vec![id],
                output_schema,
                vec![],
            );
        }
        Ok(id)
    }
}

/// The bounds between a left and a right timestamp column (same unit) in an inner join's
/// condition: conjuncts `l op r ± interval` (either way round, BETWEEN too) with `op`
/// one of `>= > <= <`.
fn interval_bounds(
    filter: &Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Vec<sabot_dataflow::ops::join::IntervalBound> {
    use datafusion::logical_expr::{Between, BinaryExpr, Operator};
    use sabot_dataflow::ops::join::IntervalBound;
    // A column of either side plus a constant offset in microseconds.
    let term = |e: &Expr| -> Option<(bool, usize, i64)> {
        let (col, offset) = match e {
            Expr::Column(c) => (c, 0),
            Expr::BinaryExpr(BinaryExpr {
                left: l,
                op,
                right: r,
            }) => {
                let (Expr::Column(c), Expr::Literal(v, _)) = (l.as_ref(), r.as_ref()) else {
                    return None;
                };
                let m = interval_micros(v)?;
                match op {
                    Operator::Plus => (c, m),
                    Operator::Minus => (c, -m),
                    _ => return None,
                }
            }
            _ => return None,
        };
        if let Ok(i) = left.index_of_column(col) {
            return Some((true, i, offset));
        }
        right.index_of_column(col).ok().map(|i| (false, i, offset))
    };
    let mut comparisons: Vec<(Expr, Operator, Expr)> = Vec::new();
    for c in split_conjunction(filter) {
        match c {
            Expr::BinaryExpr(BinaryExpr {
                left: l,
                op,
                right: r,
            }) => comparisons.push((l.as_ref().clone(), *op, r.as_ref().clone())),
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                comparisons.push((expr.as_ref().clone(), Operator::GtEq, low.as_ref().clone()));
                comparisons.push((expr.as_ref().clone(), Operator::LtEq, high.as_ref().clone()));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (a, op, b) in comparisons {
        let (Some(a), Some(b)) = (term(&a), term(&b)) else {
            continue;
        };
        // As `l op r + c`.
        let (l, op, r, c) = match (a.0, b.0) {
            (true, false) => (a.1, op, b.1, b.2 - a.2),
            (false, true) => match op.swap() {
                Some(op) => (b.1, op, a.1, a.2 - b.2),
                None => continue,
            },
            _ => continue,
        };
        let (lt, rt) = (left.field(l).data_type(), right.field(r).data_type());
        let unit = match (lt, rt) {
            (DataType::Timestamp(u, _), DataType::Timestamp(v, _)) if u == v => *u,
            _ => continue,
        };
        let c = match unit {
            arrow::datatypes::TimeUnit::Second => c / 1_000_000,
            arrow::datatypes::TimeUnit::Millisecond => c / 1_000,
            arrow::datatypes::TimeUnit::Microsecond => c,
            arrow::datatypes::TimeUnit::Nanosecond => c.saturating_mul(1_000),
        };
        let bound = match op {
            // l >= r + c: l >= r - (-c).
            Operator::GtEq | Operator::Gt => IntervalBound {
                left: l,
                right: r,
                left_lower: true,
                offset: -c,
            },
            Operator::LtEq | Operator::Lt => IntervalBound {
                left: l,
                right: r,
                left_lower: false,
                offset: c,
            },
            _ => continue,
        };
        out.push(bound);
    }
    out
}

/// A constant interval's length in microseconds (no months: their length varies).
fn interval_micros(v: &datafusion::common::ScalarValue) -> Option<i64> {
    use datafusion::common::ScalarValue;
    match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            Some(i64::from(i.days) * 86_400_000_000 + i.nanoseconds / 1_000)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            Some(i64::from(i.days) * 86_400_000_000 + i64::from(i.milliseconds) * 1_000)
        }
        ScalarValue::DurationSecond(Some(s)) => s.checked_mul(1_000_000),
        ScalarValue::DurationMillisecond(Some(s)) => s.checked_mul(1_000),
        ScalarValue::DurationMicrosecond(Some(s)) => Some(*s),
        ScalarValue::DurationNanosecond(Some(s)) => Some(s / 1_000),
        _ => None,
    }
}

fn is_marker_name(name: &str) -> bool {
    name == SESSION_START_FN || name == SESSION_END_FN
}

/// Whether `e` calls a SESSION window's marker function.
fn is_session_marker(e: &Expr) -> bool {
    use datafusion::common::tree_node::TreeNode;
    e.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if is_marker_name(f.func.name()))))
        .unwrap_or(false)
}

/// The table `plan` reads when it is a scan under projections, filters and aliases only.
fn direct_scan(plan: &LogicalPlan) -> Option<&str> {
    match plan {
        LogicalPlan::TableScan(s) => Some(s.table_name.table()),
        LogicalPlan::Projection(p) => direct_scan(&p.input),
        LogicalPlan::Filter(f) => direct_scan(&f.input),
        LogicalPlan::SubqueryAlias(a) => direct_scan(&a.input),
        _ => None,
    }
}

/// Whether `plan` reads a table `FOR SYSTEM_TIME AS OF PROCTIME()`.
fn reads_temporal(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNode;
    plan.exists(|p| {
        Ok(matches!(p, LogicalPlan::TableScan(s)
            if s.table_name.table().starts_with(TEMPORAL_PREFIX)))
    })
    .unwrap_or(false)
}

/// Sets `emit_on_window_close` on every aggregate grouped by a column that carries a
/// watermark; an error when there is none.
fn mark_emit_on_window_close(plan: &mut StreamPlan) -> Result<()> {
    let marks = plan.watermark_columns()?;
    let mut any = false;
    for node in &mut plan.nodes {
        let NodeKind::Aggregate(spec) = &mut node.kind else {
            continue;
        };
        let Some(input) = node.inputs.first() else {
            continue;
        };
        let watermarked = marks
            .get(*input)
            .is_some_and(|m| m.iter().take(spec.group_count).any(|w| *w));
        if watermarked {
            spec.emit_on_window_close = true;
            any = true;
        }
    }
    if !any {
        return Err(PlanError::user(
            "0A000",
            "EMIT ON WINDOW CLOSE needs a GROUP BY on a column with a watermark: declare \
             WATERMARK FOR on the source or table and group by the time column or by \
             window_start / window_end of TUMBLE or HOP over it",
        ));
    }
    Ok(())
}

/// The expression with integer `+`, `-` and `*` raising an error on overflow, as in
/// PostgreSQL, instead of wrapping around (DataFusion's default). A timestamp plus or
/// minus a constant interval of a fixed length (no months or days, as in window bounds
/// and `ts - INTERVAL '10' SECOND`) becomes integer arithmetic on the timestamp's ticks:
/// the same values, without Arrow's per-value calendar arithmetic.
fn checked_arithmetic(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> datafusion::common::Result<Arc<dyn PhysicalExpr>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Literal};
    Ok(expr
        .transform_up(|e| {
            let Some(b) = e.downcast_ref::<BinaryExpr>() else {
                return Ok(Transformed::no(e));
            };
            if !matches!(
                b.op(),
                Operator::Plus | Operator::Minus | Operator::Multiply
            ) {
                return Ok(Transformed::no(e));
            }
            if let (DataType::Timestamp(unit, tz), Operator::Plus | Operator::Minus) =
                (b.left().data_type(schema)?, b.op())
            {
                if let Some(n) = fixed_interval_nanos(b.right()).and_then(|n| ticks(n, unit)) {
                    let as_int: Arc<dyn PhysicalExpr> =
                        Arc::new(CastExpr::new(Arc::clone(b.left()), DataType::Int64, None));
                    let moved = BinaryExpr::new(
                        as_int,
                        *b.op(),
                        Arc::new(Literal::new(ScalarValue::Int64(Some(n)))),
                    )
                    .with_fail_on_overflow(true);
                    let back = CastExpr::new(Arc::new(moved), DataType::Timestamp(unit, tz), None);
                    return Ok(Transformed::yes(Arc::new(back) as Arc<dyn PhysicalExpr>));
                }
            }
            let checked = BinaryExpr::new(Arc::clone(b.left()), *b.op(), Arc::clone(b.right()))
                .with_fail_on_overflow(true);
            Ok(Transformed::yes(Arc::new(checked) as Arc<dyn PhysicalExpr>))
        })?
        .data)
}

/// A literal interval's length in nanoseconds, when it has no months or days (its
/// length is then the same wherever it is added).
fn fixed_interval_nanos(expr: &Arc<dyn PhysicalExpr>) -> Option<i128> {
    let lit = expr.downcast_ref::<datafusion::physical_expr::expressions::Literal>()?;
    match lit.value() {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 && v.days == 0 => {
            Some(i128::from(v.nanoseconds))
        }
        ScalarValue::IntervalDayTime(Some(v)) if v.days == 0 => {
            Some(i128::from(v.milliseconds) * 1_000_000)
        }
        _ => None,
    }
}

/// `nanos` in ticks of `unit`, if it is a whole number of them.
fn ticks(nanos: i128, unit: TimeUnit) -> Option<i64> {
    let per_tick: i128 = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    if nanos % per_tick != 0 {
        return None;
    }
    i64::try_from(nanos / per_tick).ok()
}

/// Whether a plan yields exactly one row whatever its input: an aggregate without
/// GROUP BY, under projections and aliases.
fn returns_one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(a) => a.group_expr.is_empty(),
        LogicalPlan::Projection(p) => returns_one_row(&p.input),
        LogicalPlan::SubqueryAlias(a) => returns_one_row(&a.input),
        _ => false,
    }
}

/// The bound N of a conjunct `rn <= N`, `rn < N + 1`, `rn = 1` or `N >= rn` on the row
/// number column `rn`.
fn row_number_bound(e: &Expr, rn: &str) -> Option<usize> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) if c.name == rn => (*op, v),
        (Expr::Literal(v, _), Expr::Column(c)) if c.name == rn => (op.swap()?, v),
        _ => return None,
    };
    let n = i64::try_from(v_as_i128(value)?).ok()?;
    let bound = match op {
        Operator::LtEq => n,
        Operator::Lt => n - 1,
        Operator::Eq if n == 1 => 1,
        _ => return None,
    };
    usize::try_from(bound.max(0)).ok()
}

fn v_as_i128(v: &datafusion::common::ScalarValue) -> Option<i128> {
    use datafusion::common::ScalarValue::*;
    Some(match v {
        Int8(Some(x)) => i128::from(*x),
        Int16(Some(x)) => i128::from(*x),
        Int32(Some(x)) => i128::from(*x),
        Int64(Some(x)) => i128::from(*x),
        UInt8(Some(x)) => i128::from(*x),
        UInt16(Some(x)) => i128::from(*x),
        UInt32(Some(x)) => i128::from(*x),
        UInt64(Some(x)) => i128::from(*x),
        _ => return None,
    })
}

/// The same schema with every field nullable: rows in a changelog may carry NULLs where
/// the optimizer proved none in a batch query (retractions of outer rows, casts), and a
/// non-nullable field would make Arrow reject such batches.
pub fn nullable_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}
