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

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, ObjectName, Query, TableFactor, VisitMut, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

use crate::error::{PlanError, Result};

/// Windows per row above which HOP is refused (each window is one copy of the input).
const MAX_HOP_WINDOWS: i64 = 64;

/// Rewrites every TUMBLE / HOP in `query` in place.
pub fn rewrite_windows(query: &mut Query) -> Result<()> {
    let mut v = Rewriter { error: None };
    let _ = query.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Rewriter {
    error: Option<PlanError>,
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
        let (Some(args), "tumble" | "hop") = (args.as_ref(), func.as_str()) else {
            return ControlFlow::Continue(());
        };
        match window_subquery(&func, &args.args) {
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
