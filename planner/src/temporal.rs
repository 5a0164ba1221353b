//! Temporal joins: `JOIN t FOR SYSTEM_TIME AS OF PROCTIME()`.
//!
//! Each row of the stream on the left is joined with `t` as it is when the row arrives;
//! later changes to `t` do not revise rows already produced (a lookup join, the usual
//! way to enrich events with a dimension table). Before DataFusion sees the query, each
//! such table reference is renamed to [`TEMPORAL_PREFIX`]`name` (aliased to its old name
//! so the query's column references still resolve); the context registers that name as
//! the same table, and the stream planner turns the join whose right side reads it into
//! a temporal join.
//!
//! The right table of an ASOF join (marked by the parser, see
//! [`sabot_sql::ASOF_MARK`]) is renamed the same way, to [`ASOF_PREFIX`]`name`.

use std::ops::ControlFlow;

use sqlparser::ast::{self, Query, TableFactor, TableVersion, VisitMut, VisitorMut};

use crate::error::{PlanError, Result};

/// Prefix of a relation read as of processing time.
pub const TEMPORAL_PREFIX: &str = "__sabot_as_of_proctime__";

/// Prefix of the right table of an ASOF join.
pub const ASOF_PREFIX: &str = "__sabot_asof__";

/// Renames every table read `FOR SYSTEM_TIME AS OF PROCTIME()` or on the right of an
/// ASOF join in `query`; returns (new name, table) for each.
pub fn rewrite_temporal(query: &mut Query) -> Result<Vec<(String, String)>> {
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

/// Whether `query` holds an ASOF join.
pub fn has_asof(query: &Query) -> bool {
    use sqlparser::ast::Visit;
    struct Find;
    impl sqlparser::ast::Visitor for Find {
        type Break = ();
        fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
            match f {
                TableFactor::Table {
                    version: Some(TableVersion::VersionAsOf(ast::Expr::Identifier(i))),
                    ..
                } if i.value == sabot_sql::ASOF_MARK => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    query.visit(&mut Find).is_break()
}

struct Rewriter {
    names: Vec<(String, String)>,
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
        let prefix = match version {
            Some(TableVersion::ForSystemTimeAsOf(expr)) => {
                let is_proctime = matches!(expr, ast::Expr::Function(f)
                    if f.name.to_string().eq_ignore_ascii_case("proctime"));
                if !is_proctime {
                    self.error = Some(PlanError::user(
                        "0A000",
                        "FOR SYSTEM_TIME AS OF takes PROCTIME() only",
                    ));
                    return ControlFlow::Break(());
                }
                TEMPORAL_PREFIX
            }
            Some(TableVersion::VersionAsOf(ast::Expr::Identifier(i)))
                if i.value == sabot_sql::ASOF_MARK =>
            {
                ASOF_PREFIX
            }
            _ => return ControlFlow::Continue(()),
        };
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
            format!("{prefix}{table}"),
        )]);
        *version = None;
        let renamed = (format!("{prefix}{table}"), table);
        if !self.names.contains(&renamed) {
            self.names.push(renamed);
        }
        ControlFlow::Continue(())
    }
}
