//! From a DataFusion logical plan to a stream plan that can be maintained incrementally.
//!
//! DataFusion binds and optimizes the view's query (subquery decorrelation, filter push
//! down, projection pruning); this module walks the optimized plan bottom-up and emits
//! one [`PlanNode`] per operator. Anything that cannot be maintained over a changelog is
//! refused with an error that names the construct.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, JoinType};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use sabot_dataflow::ops::aggregate::{AggCall, AggKind, AggregateSpec};
use sabot_dataflow::ops::join::{JoinKind, JoinSpec};
use sabot_dataflow::{NodeKind, PlanNode, StreamPlan};
use sabot_storage::StateTableId;

use crate::error::{PlanError, Result};

/// Builds the stream plan of a view.
pub struct StreamPlanner<'a> {
    state: &'a SessionState,
    next_table: StateTableId,
    nodes: Vec<PlanNode>,
}

impl<'a> StreamPlanner<'a> {
    /// `first_table` is the first state table id the plan may use; ids are given out in
    /// plan order, so planning the same query again yields the same ids.
    pub fn new(state: &'a SessionState, first_table: StateTableId) -> Self {
        Self {
            state,
            next_table: first_table,
            nodes: Vec::new(),
        }
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
        Ok((StreamPlan { nodes: self.nodes }, self.next_table))
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
                "a subquery that is not correlated with the outer query (e.g. `v > (SELECT avg(v) FROM t)`)",
            ));
        }
        if expr.is_volatile() {
            return Err(PlanError::not_incremental(format!(
                "the volatile expression {expr}"
            )));
        }
        Ok(self.state.create_physical_expr(expr.clone(), schema)?)
    }

    fn node(&mut self, plan: &LogicalPlan) -> Result<usize> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(PlanError::not_incremental("LIMIT"));
                }
                let full_schema = scan.source.schema();
                let mut id = self.push(
                    NodeKind::Source {
                        relation: scan.table_name.table().to_string(),
                    },
                    vec![],
                    nullable_schema(&full_schema),
                    vec![],
                );
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
                let input = self.node(&f.input)?;
                let predicate = self.physical(&f.predicate, f.input.schema())?;
                Ok(self.push(
                    NodeKind::Filter { predicate },
                    vec![input],
                    nullable_schema(f.input.schema().as_arrow()),
                    vec![],
                ))
            }
            LogicalPlan::Projection(p) => {
                let input = self.node(&p.input)?;
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| self.physical(e, p.input.schema()))
                    .collect::<Result<Vec<_>>>()?;
                Ok(self.push(
                    NodeKind::Project { exprs },
                    vec![input],
                    nullable_schema(p.schema.as_arrow()),
                    vec![],
                ))
            }
            LogicalPlan::SubqueryAlias(a) => self.node(&a.input),
            LogicalPlan::Sort(s) => {
                if s.fetch.is_some() {
                    return Err(PlanError::not_incremental("ORDER BY ... LIMIT (top-N)"));
                }
                // A view is a set: its ORDER BY has no effect (SELECT orders results).
                self.node(&s.input)
            }
            LogicalPlan::Limit(l) if matches!(l.input.as_ref(), LogicalPlan::Sort(_)) => {
                Err(PlanError::not_incremental("ORDER BY ... LIMIT (top-N)"))
            }
            LogicalPlan::Limit(_) => Err(PlanError::not_incremental("LIMIT / OFFSET")),
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
            LogicalPlan::Distinct(_) => Err(PlanError::not_incremental("DISTINCT ON")),
            LogicalPlan::Window(_) => Err(PlanError::not_incremental("window functions (OVER)")),
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
            if params.distinct {
                return Err(PlanError::not_incremental(format!(
                    "{}(DISTINCT ...)",
                    name.to_uppercase()
                )));
            }
            if !params.order_by.is_empty() {
                return Err(PlanError::not_incremental("ORDER BY inside an aggregate"));
            }
            let kind = match name.as_str() {
                "count" => AggKind::Count,
                "sum" => AggKind::Sum,
                "avg" | "mean" => AggKind::Avg,
                "min" => AggKind::Min,
                "max" => AggKind::Max,
                "bool_and" => AggKind::BoolAnd,
                "bool_or" => AggKind::BoolOr,
                other => {
                    return Err(PlanError::not_incremental(format!(
                        "the aggregate function {}",
                        other.to_uppercase()
                    )))
                }
            };
            let arg = match params.args.as_slice() {
                [arg] => arg.clone(),
                [] if kind == AggKind::Count => {
                    Expr::Literal(datafusion::common::ScalarValue::Int64(Some(1)), None)
                }
                _ => {
                    return Err(PlanError::not_incremental(format!(
                        "{name} with {} arguments",
                        params.args.len()
                    )))
                }
            };
            let arg = match (kind, &arg) {
                // DataFusion casts AVG's integer argument to a float; summing the integers
                // exactly (as PostgreSQL does) and dividing at the end keeps precision.
                (AggKind::Avg, Expr::Cast(c))
                    if c.expr.get_type(in_schema).is_ok_and(|t| t.is_integer()) =>
                {
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
            calls.push(AggCall {
                kind,
                arg: arg_col,
                filter,
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
        };
        let tables = self.tables(1);
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
            return Err(PlanError::not_incremental(
                "NOT IN (subquery) (use NOT EXISTS)",
            ));
        }
        if kind != JoinKind::Inner && join.filter.is_some() {
            return Err(PlanError::not_incremental(format!(
                "a non-equality condition in a {} join",
                join.join_type.to_string().to_uppercase()
            )));
        }
        let left = self.node(&join.left)?;
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
        let spec = JoinSpec {
            kind,
            nulls_equal: join.null_equality == datafusion::common::NullEquality::NullEqualsNull,
            left_keys,
            right_keys,
            left_schema: nullable_schema(join.left.schema().as_arrow()),
            right_schema: nullable_schema(join.right.schema().as_arrow()),
            output_schema: Arc::clone(&output_schema),
        };
        let tables = self.tables(2);
        let mut id = self.push(
            NodeKind::Join(spec),
            vec![left, right],
            Arc::clone(&output_schema),
            tables,
        );
        if let Some(filter) = &join.filter {
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
