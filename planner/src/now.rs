//! `NOW()` in views: temporal filters.
//!
//! DataFusion folds `now()` into a constant when it plans a statement, which is right for
//! a query and wrong for a view that runs for months. Before a view's query is planned,
//! each `now()` / `CURRENT_TIMESTAMP` becomes [`NOW_MARKER`]`(now())`: the volatile
//! marker keeps its place in the plan (and `now()`'s type, time zone included), and the
//! stream planner turns each `WHERE` conjunct comparing a row expression with it into a
//! temporal filter that is re-evaluated at every epoch's clock
//! ([`sabot_dataflow::ops::temporal_filter`]). Anywhere else the marker is refused.

use std::ops::ControlFlow;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use sabot_dataflow::ops::temporal_filter::TimeBound;
use sqlparser::ast::{self, Query, VisitMut, VisitorMut};

use crate::error::{PlanError, Result};

/// The marker function that stands for the clock in a view's plan.
pub const NOW_MARKER: &str = "sabot_now";

/// The marker function that stands for the time a row is processed.
pub const PROCTIME_MARKER: &str = "sabot_proctime";

/// The column the clock is bound to in a temporal filter's time side.
pub const NOW_COLUMN: &str = "__sabot_now";

/// The column the processing time is appended as.
pub const PROCTIME_COLUMN: &str = "__sabot_proctime";

/// For a view (`streaming`): wraps every `now()` and `CURRENT_TIMESTAMP` of `query` in
/// [`NOW_MARKER`] and every `PROCTIME()` in [`PROCTIME_MARKER`]. For a query, `PROCTIME()`
/// is `now()`. Runs after the temporal join rewrite (which takes `FOR SYSTEM_TIME AS OF
/// PROCTIME()` out).
pub fn rewrite_now(query: &mut Query, streaming: bool) -> Result<()> {
    let _ = query.visit(&mut Rewriter { streaming });
    Ok(())
}

struct Rewriter {
    streaming: bool,
}

fn call(name: &str, args: Vec<ast::Expr>) -> ast::Expr {
    ast::Expr::Function(ast::Function {
        name: ast::ObjectName::from(vec![ast::Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: ast::FunctionArguments::None,
        args: ast::FunctionArguments::List(ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut ast::Expr) -> ControlFlow<()> {
        let ast::Expr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        let name = f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_ascii_lowercase());
        if f.over.is_some() {
            return ControlFlow::Continue(());
        }
        match (name.as_deref(), self.streaming) {
            (Some("now" | "current_timestamp"), true) => {
                *expr = call(NOW_MARKER, vec![expr.clone()]);
            }
            (Some("proctime"), true) => {
                *expr = call(PROCTIME_MARKER, vec![call("now", vec![])]);
            }
            (Some("proctime"), false) => *expr = call("now", vec![]),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// The marker function, for a view's planning context.
pub fn now_marker() -> datafusion::logical_expr::ScalarUDF {
    crate::windows::marker_udf(
        NOW_MARKER,
        "NOW() in a view is evaluated by its temporal filter",
    )
}

/// The processing time marker, for a view's planning context.
pub fn proctime_marker() -> datafusion::logical_expr::ScalarUDF {
    crate::windows::marker_udf(
        PROCTIME_MARKER,
        "PROCTIME() in a view is the processing time operator's",
    )
}

/// Whether `e` reads the processing time.
pub fn contains_proctime(e: &Expr) -> bool {
    e.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if f.name() == PROCTIME_MARKER)))
        .unwrap_or(true)
}

/// The error for the processing time where a view cannot keep it.
pub fn proctime_misplaced() -> PlanError {
    PlanError::not_incremental(
        "PROCTIME() outside the select list of a query over rows that are only ever \
         added (a source, an APPEND ONLY table)",
    )
}

/// `exprs` with the processing time marker replaced by [`PROCTIME_COLUMN`], and the
/// marker's type (`now()`'s).
pub fn bind_proctime(
    exprs: &[Expr],
    input: &DFSchema,
) -> Result<(Vec<Expr>, arrow::datatypes::DataType)> {
    use datafusion::logical_expr::ExprSchemable;
    let mut ty = None;
    let mut out = Vec::with_capacity(exprs.len());
    for e in exprs {
        let bound = e
            .clone()
            .transform(|e| match &e {
                Expr::ScalarFunction(f) if f.name() == PROCTIME_MARKER => {
                    if ty.is_none() {
                        ty = Some(
                            f.args
                                .first()
                                .ok_or_else(|| {
                                    datafusion::error::DataFusionError::Plan(
                                        "the processing time marker takes now()".into(),
                                    )
                                })?
                                .get_type(input)?,
                        );
                    }
                    Ok(Transformed::yes(Expr::Column(Column::from_name(
                        PROCTIME_COLUMN,
                    ))))
                }
                _ => Ok(Transformed::no(e)),
            })?
            .data;
        out.push(bound);
    }
    let ty = ty.ok_or_else(proctime_misplaced)?;
    Ok((out, ty))
}

pub fn is_now_marker(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.name() == NOW_MARKER)
}

/// Whether `e` reads the clock.
pub fn contains_now(e: &Expr) -> bool {
    e.exists(|e| Ok(is_now_marker(e))).unwrap_or(true)
}

/// The error for the clock where a view cannot follow it.
pub fn misplaced() -> PlanError {
    PlanError::not_incremental(
        "NOW() outside a temporal filter (a view's WHERE may compare a row's time with \
         NOW() plus or minus a constant, e.g. WHERE ts > NOW() - INTERVAL '1' HOUR)",
    )
}

/// One temporal filter: `row <bound> time side`, the time side over [`NOW_COLUMN`].
pub struct TimeCondition {
    pub row: Expr,
    pub bound: TimeBound,
    pub now: Expr,
}

/// The temporal filters of one `WHERE` conjunct that reads the clock.
pub fn conditions(conjunct: &Expr) -> Result<Vec<TimeCondition>> {
    match conjunct {
        Expr::Between(b) if !b.negated => {
            let low = Expr::BinaryExpr(BinaryExpr::new(
                b.expr.clone(),
                Operator::GtEq,
                b.low.clone(),
            ));
            let high = Expr::BinaryExpr(BinaryExpr::new(
                b.expr.clone(),
                Operator::LtEq,
                b.high.clone(),
            ));
            let mut out = Vec::new();
            for e in [low, high] {
                if contains_now(&e) {
                    out.extend(conditions(&e)?);
                } else {
                    return Err(misplaced());
                }
            }
            Ok(out)
        }
        Expr::BinaryExpr(b) => {
            let (row, op, now) = match (contains_now(&b.left), contains_now(&b.right)) {
                (false, true) => (&b.left, b.op, &b.right),
                (true, false) => (&b.right, b.op.swap().ok_or_else(misplaced)?, &b.left),
                _ => return Err(misplaced()),
            };
            let bound = match op {
                Operator::Gt => TimeBound::Above { inclusive: false },
                Operator::GtEq => TimeBound::Above { inclusive: true },
                Operator::Lt => TimeBound::Below { inclusive: false },
                Operator::LtEq => TimeBound::Below { inclusive: true },
                _ => return Err(misplaced()),
            };
            if !never_decreasing(now) {
                return Err(misplaced());
            }
            let now = now
                .clone()
                .transform(|e| {
                    Ok(if is_now_marker(&e) {
                        Transformed::yes(Expr::Column(Column::from_name(NOW_COLUMN)))
                    } else {
                        Transformed::no(e)
                    })
                })?
                .data;
            Ok(vec![TimeCondition {
                row: (**row).clone(),
                bound,
                now,
            }])
        }
        _ => Err(misplaced()),
    }
}

/// `e` as EXPLAIN shows it: the clock as `now()`, intervals as SQL writes them.
pub fn display(e: &Expr) -> String {
    use datafusion::common::ScalarValue;
    let shown = e
        .clone()
        .transform(|e| {
            Ok(match &e {
                Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) => {
                    Transformed::yes(Expr::Column(Column::from_name(format!(
                        "INTERVAL '{}'",
                        crate::types::format_interval(v.months, v.days, v.nanoseconds / 1_000)
                    ))))
                }
                Expr::Column(c) if c.name == NOW_COLUMN => {
                    Transformed::yes(Expr::Column(Column::from_name("now()")))
                }
                _ => Transformed::no(e),
            })
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| e.clone());
    shown.to_string()
}

/// A constant: no column, no clock.
fn constant(e: &Expr) -> bool {
    !contains_now(e) && e.column_refs().is_empty() && !e.is_volatile()
}

/// Whether `e`, over the clock, never decreases as the clock moves on.
fn never_decreasing(e: &Expr) -> bool {
    match e {
        e if is_now_marker(e) => true,
        Expr::Alias(a) => never_decreasing(&a.expr),
        Expr::Cast(c) => never_decreasing(&c.expr),
        Expr::TryCast(c) => never_decreasing(&c.expr),
        Expr::BinaryExpr(b) => match b.op {
            Operator::Plus => {
                (never_decreasing(&b.left) && constant(&b.right))
                    || (constant(&b.left) && never_decreasing(&b.right))
            }
            Operator::Minus => never_decreasing(&b.left) && constant(&b.right),
            _ => false,
        },
        // Truncating to a unit or binning keeps the order.
        Expr::ScalarFunction(f) => match (f.name(), f.args.as_slice()) {
            ("date_trunc", [unit, t]) => constant(unit) && never_decreasing(t),
            ("date_bin", [stride, t, rest @ ..]) => {
                constant(stride) && never_decreasing(t) && rest.iter().all(constant)
            }
            _ => false,
        },
        _ => false,
    }
}

/// The schema the time side is planned against: the clock as `now()`'s type.
pub fn clock_schema(conjunct: &Expr, input: &DFSchema) -> Result<DFSchema> {
    use datafusion::logical_expr::ExprSchemable;
    let mut ty = None;
    conjunct.apply(|e| {
        if let Expr::ScalarFunction(f) = e {
            if f.name() == NOW_MARKER {
                ty = Some(match f.args.first() {
                    Some(arg) => arg.get_type(input),
                    None => Err(datafusion::error::DataFusionError::Plan(
                        "the clock marker takes now()".into(),
                    )),
                });
                return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    let ty = ty.ok_or_else(misplaced)??;
    if !matches!(
        ty,
        arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, _)
    ) {
        return Err(misplaced());
    }
    let schema =
        arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(NOW_COLUMN, ty, false)]);
    Ok(DFSchema::try_from(schema)?)
}
