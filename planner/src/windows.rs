//! Window table functions: `TUMBLE(t, ts, size)` and `HOP(t, ts, slide, size)` in FROM.
//!
//! They are rewritten, before DataFusion sees the query, into ordinary subqueries that
//! add `window_start` and `window_end` columns to every row of `t`:
//!
//! - `TUMBLE`: one window per row, `window_start = date_bin(size, ts)`.
//! - `HOP`: `size / slide` windows per row (the slide must divide the size), one copy of
//!   the row per window, as a `UNION ALL` of the shifted windows.
//!
//! A view over them is then maintained like any other query: a window's aggregate is
//! updated as its rows arrive and retracted as they go.
//!
//! `SESSION(t, ts, gap [, partition column, ...])` groups, per partition, rows whose
//! times lie less than `gap` apart into one window `[first ts, last ts + gap)`. Which
//! window a row is in depends on other rows, so it is no row-wise rewrite: a view reads
//! it through the marker functions `sabot_session_start` / `sabot_session_end`, which
//! the stream planner turns into a session operator; a plain `SELECT` computes it with
//! window functions (a new session where the gap to the previous row reaches `gap`).

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, ObjectName, Query, TableFactor, VisitMut, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

use crate::error::{PlanError, Result};

/// Windows per row above which HOP is refused (each window is one copy of the input).
const MAX_HOP_WINDOWS: i64 = 64;

/// The marker function a view's `SESSION` computes `window_start` with.
pub const SESSION_START_FN: &str = "sabot_session_start";
/// The marker function a view's `SESSION` computes `window_end` with.
pub const SESSION_END_FN: &str = "sabot_session_end";

/// Rewrites every TUMBLE / HOP / SESSION in `query` in place, for a batch query.
pub fn rewrite_windows(query: &mut Query) -> Result<()> {
    rewrite(query, false)
}

/// Rewrites every TUMBLE / HOP / SESSION in `query` in place, for a view's dataflow.
pub fn rewrite_windows_for_stream(query: &mut Query) -> Result<()> {
    rewrite(query, true)
}

/// Whether `query` uses a SESSION window.
pub fn has_session(query: &Query) -> bool {
    use sqlparser::ast::Visit;
    struct Find(bool);
    impl sqlparser::ast::Visitor for Find {
        type Break = ();
        fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                args: Some(_),
                ..
            } = f
            {
                if name.to_string().eq_ignore_ascii_case("session") {
                    self.0 = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Find(false);
    let _ = query.visit(&mut f);
    f.0
}

fn rewrite(query: &mut Query, streaming: bool) -> Result<()> {
    let mut v = Rewriter {
        error: None,
        streaming,
    };
    let _ = query.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Rewriter {
    error: Option<PlanError>,
    streaming: bool,
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name, args, alias, ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let func = name.to_string().to_ascii_lowercase();
        let (Some(args), "tumble" | "hop" | "session") = (args.as_ref(), func.as_str()) else {
            return ControlFlow::Continue(());
        };
        let result = if func == "session" {
            session_subquery(&args.args, self.streaming)
        } else {
            window_subquery(&func, &args.args)
        };
        match result {
            Ok((subquery, table)) => {
                let alias = alias.clone().or_else(|| {
                    Some(ast::TableAlias {
                        explicit: true,
                        name: table,
                        columns: vec![],
                        at: None,
                    })
                });
                *factor = TableFactor::Derived {
                    lateral: false,
                    subquery: Box::new(subquery),
                    alias,
                    sample: None,
                };
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

fn expr_arg(a: &FunctionArg) -> Option<&Expr> {
    match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
        FunctionArg::Named {
            arg: FunctionArgExpr::Expr(e),
            ..
        } => Some(e),
        _ => None,
    }
}

/// An interval literal's length in microseconds, for checking HOP's slide and size.
fn interval_micros(e: &Expr) -> Option<i64> {
    let Expr::Interval(iv) = e else { return None };
    let text = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::Number(n, _) => n.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let mut parts = text.split_whitespace();
    let n: f64 = parts.next()?.parse().ok()?;
    let unit = match (&iv.leading_field, parts.next()) {
        (Some(f), None) => f.to_string().to_ascii_lowercase(),
        (None, Some(u)) => u.to_ascii_lowercase(),
        _ => return None,
    };
    let scale = match unit.trim_end_matches('s') {
        "microsecond" => 1.0,
        "millisecond" => 1e3,
        "second" | "sec" => 1e6,
        "minute" | "min" => 60e6,
        "hour" => 3600e6,
        "day" => 86_400e6,
        _ => return None,
    };
    Some((n * scale).round() as i64)
}

fn window_subquery(func: &str, args: &[FunctionArg]) -> Result<(Query, ast::Ident)> {
    let usage = if func == "tumble" {
        "TUMBLE(table, time_column, size)"
    } else {
        "HOP(table, time_column, slide, size)"
    };
    let bad = || PlanError::user("42601", format!("expected {usage}"));
    let exprs: Vec<&Expr> = args
        .iter()
        .map(expr_arg)
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let want = if func == "tumble" { 3 } else { 4 };
    if exprs.len() != want {
        return Err(bad());
    }
    let table: ObjectName = match exprs[0] {
        Expr::Identifier(i) => ObjectName::from(vec![i.clone()]),
        Expr::CompoundIdentifier(parts) => ObjectName::from(parts.clone()),
        _ => return Err(bad()),
    };
    let alias = table
        .0
        .last()
        .and_then(|p| p.as_ident())
        .cloned()
        .ok_or_else(bad)?;
    let ts = exprs[1].to_string();
    let sql = if func == "tumble" {
        let size = exprs[2].to_string();
        format!(
            "SELECT *, date_bin({size}, {ts}, TIMESTAMP '1970-01-01 00:00:00') AS window_start, \
             date_bin({size}, {ts}, TIMESTAMP '1970-01-01 00:00:00') + {size} AS window_end FROM {table}"
        )
    } else {
        let (slide, size) = (exprs[2], exprs[3]);
        let (Some(s), Some(z)) = (interval_micros(slide), interval_micros(size)) else {
            return Err(PlanError::user(
                "0A000",
                "HOP needs constant slide and size intervals (e.g. INTERVAL '2' SECOND)",
            ));
        };
        if s <= 0 || z <= 0 || z % s != 0 {
            return Err(PlanError::user(
                "22023",
                "HOP's slide must be positive and divide its size",
            ));
        }
        let k = z / s;
        if k > MAX_HOP_WINDOWS {
            return Err(PlanError::user(
                "0A000",
                format!("HOP with more than {MAX_HOP_WINDOWS} windows per row (size / slide) is not supported yet"),
            ));
        }
        let (slide, size) = (slide.to_string(), size.to_string());
        (0..k)
            .map(|i| {
                let start = format!(
                    "date_bin({slide}, {ts}, TIMESTAMP '1970-01-01 00:00:00') - INTERVAL '{} microseconds'",
                    i * s
                );
                format!(
                    "SELECT *, {start} AS window_start, {start} + {size} AS window_end FROM {table}"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    };
    let dialect = PostgreSqlDialect {};
    let query = Parser::new(&dialect)
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| PlanError::Internal(format!("window rewrite: {e}")))?;
    Ok((*query, alias))
}

/// `SESSION(t, ts, gap [, partition column, ...])` as a subquery over `t`.
fn session_subquery(args: &[FunctionArg], streaming: bool) -> Result<(Query, ast::Ident)> {
    let bad = || {
        PlanError::user(
            "42601",
            "expected SESSION(table, time_column, gap [, partition_column, ...])",
        )
    };
    let exprs: Vec<&Expr> = args
        .iter()
        .map(expr_arg)
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if exprs.len() < 3 {
        return Err(bad());
    }
    let table: ObjectName = match exprs[0] {
        Expr::Identifier(i) => ObjectName::from(vec![i.clone()]),
        Expr::CompoundIdentifier(parts) => ObjectName::from(parts.clone()),
        _ => return Err(bad()),
    };
    let alias = table
        .0
        .last()
        .and_then(|p| p.as_ident())
        .cloned()
        .ok_or_else(bad)?;
    let ts = exprs[1].to_string();
    let gap = exprs[2];
    let micros = interval_micros(gap).ok_or_else(|| {
        PlanError::user(
            "0A000",
            "SESSION needs a constant gap interval (e.g. INTERVAL '10' SECOND)",
        )
    })?;
    if micros <= 0 {
        return Err(PlanError::user("22023", "SESSION's gap must be positive"));
    }
    let keys: Vec<String> = exprs[3..]
        .iter()
        .map(|e| match e {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => Ok(e.to_string()),
            _ => Err(PlanError::user(
                "0A000",
                "SESSION partitions by columns only",
            )),
        })
        .collect::<Result<_>>()?;
    let dialect = PostgreSqlDialect {};
    let parse = |sql: &str| {
        Parser::new(&dialect)
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_query())
            .map_err(|e| PlanError::Internal(format!("session rewrite: {e}")))
    };
    if streaming {
        let args = std::iter::once(ts.clone())
            .chain(std::iter::once(micros.to_string()))
            .chain(keys.iter().cloned())
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT *, {SESSION_START_FN}({args}) AS window_start, \
             {SESSION_END_FN}({args}) AS window_end FROM {table}"
        );
        return Ok((*parse(&sql)?, alias));
    }
    let gap = gap.to_string();
    let by_key = if keys.is_empty() {
        String::new()
    } else {
        format!("PARTITION BY {}", keys.join(", "))
    };
    let by_session = keys
        .iter()
        .cloned()
        .chain(std::iter::once("__sabot_sid".to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT * FROM (\
           SELECT *, \
             CASE WHEN {ts} IS NULL THEN NULL \
                  ELSE min({ts}) OVER (PARTITION BY {by_session}) END AS window_start, \
             CASE WHEN {ts} IS NULL THEN NULL \
                  ELSE max({ts}) OVER (PARTITION BY {by_session}) + {gap} END AS window_end \
           FROM (\
             SELECT *, sum(CASE WHEN __sabot_prev IS NULL OR {ts} >= __sabot_prev + {gap} \
                                THEN 1 ELSE 0 END) \
                 OVER ({by_key} ORDER BY {ts} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) \
                 AS __sabot_sid \
             FROM (SELECT *, lag({ts}) OVER ({by_key} ORDER BY {ts}) AS __sabot_prev \
                   FROM {table}) AS __sabot_s1) AS __sabot_s2) AS __sabot_s3"
    );
    let mut query = parse(&sql)?;
    // The helper columns stay inside: SELECT * EXCLUDE (...) (built here, as the
    // PostgreSQL dialect does not parse EXCLUDE).
    if let ast::SetExpr::Select(select) = query.body.as_mut() {
        select.projection = vec![ast::SelectItem::Wildcard(ast::WildcardAdditionalOptions {
            opt_exclude: Some(ast::ExcludeSelectItem::Multiple(vec![
                ast::Ident::new("__sabot_prev").into(),
                ast::Ident::new("__sabot_sid").into(),
            ])),
            ..Default::default()
        })];
    }
    Ok((*query, alias))
}

/// The marker functions a view's SESSION windows are planned through. Evaluated
/// anywhere else (they cannot be: the rewrite puts them only where the stream planner
/// takes them out), they raise an error.
pub fn session_markers() -> Vec<datafusion::logical_expr::ScalarUDF> {
    [SESSION_START_FN, SESSION_END_FN]
        .into_iter()
        .map(|name| {
            marker_udf(
                name,
                "SESSION windows are computed by the session operator of a view",
            )
        })
        .collect()
}

/// A volatile function that stands in a view's plan for what an operator computes: it
/// returns its first argument's type, and evaluated it raises `message`.
pub fn marker_udf(
    name: &'static str,
    message: &'static str,
) -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(SessionMarker::new(name, message))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionMarker {
    name: &'static str,
    message: &'static str,
    signature: datafusion::logical_expr::Signature,
}

impl SessionMarker {
    fn new(name: &'static str, message: &'static str) -> Self {
        Self {
            name,
            message,
            signature: datafusion::logical_expr::Signature::variadic_any(
                // Volatile: the optimizer neither copies nor merges it elsewhere.
                datafusion::logical_expr::Volatility::Volatile,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for SessionMarker {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }
    fn return_type(
        &self,
        args: &[arrow::datatypes::DataType],
    ) -> datafusion::error::Result<arrow::datatypes::DataType> {
        args.first().cloned().ok_or_else(|| {
            datafusion::error::DataFusionError::Plan(format!("{} takes arguments", self.name))
        })
    }
    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        Err(datafusion::error::DataFusionError::Execution(
            self.message.into(),
        ))
    }
}
