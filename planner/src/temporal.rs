//! Temporal joins: `JOIN t FOR SYSTEM_TIME AS OF PROCTIME()`.
//!
//! Each row of the stream on the left is joined with `t` as it is when the row arrives;
//! later changes to `t` do not revise rows already produced (a lookup join, the usual
//! way to enrich events with a dimension table). Before DataFusion sees the query, each
//! such table reference is renamed to [`TEMPORAL_PREFIX`]`name` (aliased to its old name
//! so the query's column references still resolve); the context registers that name as
//! the same table, and the stream planner turns the join whose right side reads it into
//! a temporal join.

use std::ops::ControlFlow;

use sqlparser::ast::{self, Query, TableFactor, TableVersion, VisitMut, VisitorMut};

use crate::error::{PlanError, Result};

/// Prefix of a relation read as of processing time.
pub const TEMPORAL_PREFIX: &str = "__sabot_as_of_proctime__";

/// Renames every table read `FOR SYSTEM_TIME AS OF PROCTIME()` in `query`; returns the
/// names of those tables.
pub fn rewrite_temporal(query: &mut Query) -> Result<Vec<String>> {
    let mut v = Rewriter {
        names: Vec::new(),
        error: None,
    };
    let _ = query.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(v.names),
    }
}

struct Rewriter {
    names: Vec<String>,
    error: Option<PlanError>,
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            version,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let Some(TableVersion::ForSystemTimeAsOf(expr)) = version else {
            return ControlFlow::Continue(());
        };
        let is_proctime = matches!(expr, ast::Expr::Function(f)
            if f.name.to_string().eq_ignore_ascii_case("proctime"));
        if !is_proctime {
            self.error = Some(PlanError::user(
                "0A000",
                "FOR SYSTEM_TIME AS OF takes PROCTIME() only",
            ));
            return ControlFlow::Break(());
        }
        let Some(last) = name.0.last().and_then(|p| p.as_ident()).cloned() else {
            return ControlFlow::Continue(());
        };
        let table = match last.quote_style {
            Some(_) => last.value.clone(),
            None => last.value.to_lowercase(),
        };
        if alias.is_none() {
            *alias = Some(ast::TableAlias {
                explicit: true,
                name: last.clone(),
                columns: vec![],
                at: None,
            });
        }
        *name = ast::ObjectName::from(vec![ast::Ident::with_quote(
            '"',
            format!("{TEMPORAL_PREFIX}{table}"),
        )]);
        *version = None;
        if !self.names.contains(&table) {
            self.names.push(table);
        }
        ControlFlow::Continue(())
    }
}
