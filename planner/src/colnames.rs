//! The names PostgreSQL gives a query's result columns, for the columns DataFusion names
//! differently.
//!
//! DataFusion names an unaliased expression by its text (`count(*)`,
//! `current_setting(Utf8("a"))`); PostgreSQL by a rule (its `FigureColname`): a column
//! reference by the column, a function call by the function (`count`), a cast by what it
//! casts or else by the type (`int4`), `CASE` as `case`, a scalar subquery by its own
//! column, and anything else `?column?`. Clients show these names and some look columns
//! up by them, so a query's result is renamed by this rule before it is sent; aliased
//! items keep their aliases.
//!
//! DataFusion also wants a projection's names unique, where PostgreSQL does not mind
//! (`SELECT x, x::text, x`): [`alias_expressions`] gives such items internal aliases
//! before planning, and the renaming puts PostgreSQL's names back.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use sqlparser::ast::{self, DataType as SqlType, Expr, ObjectNamePart, Query, SelectItem, SetExpr};

/// Gives each unaliased expression in `query`'s select list (not a plain column) an
/// alias of its own, so that DataFusion, which wants the names of a projection unique,
/// plans what PostgreSQL allows (`SELECT x, x::text`). The result is then renamed by
/// [`rename`], from the query as written.
pub fn alias_expressions(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let mut columns = std::collections::HashSet::new();
    for (i, item) in select.projection.iter_mut().enumerate() {
        if let SelectItem::UnnamedExpr(e) = item {
            // A plain column keeps its name unless it is there twice (`SELECT x, x`).
            let column = match e {
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) => figure(e),
                _ => None,
            };
            if column.is_none_or(|c| !columns.insert(c)) {
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: ast::Ident::with_quote('"', format!("__sabot_column_{i}")),
                };
            }
        }
    }
}

/// `schema`, the result of `query`, with PostgreSQL's column names ([`postgres_names`]).
pub fn rename(query: &Query, schema: &SchemaRef) -> SchemaRef {
    let names = postgres_names(query, schema.fields().len());
    if names.iter().all(Option::is_none) {
        return Arc::clone(schema);
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .zip(&names)
        .map(|(f, n)| match n {
            Some(n) if n != f.name() => Arc::new(f.as_ref().clone().with_name(n)),
            _ => Arc::clone(f),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batches` with their columns named as in `schema` (by position; the batches' own
/// types stay, which may differ from the plan's, e.g. `Utf8View` for `Utf8`).
pub fn with_names(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> arrow::error::Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .map(|b| {
            let fields: Vec<_> = b
                .schema()
                .fields()
                .iter()
                .zip(schema.fields())
                .map(|(f, named)| Arc::new(f.as_ref().clone().with_name(named.name())))
                .collect();
            let renamed = Arc::new(Schema::new_with_metadata(
                fields,
                b.schema().metadata().clone(),
            ));
            RecordBatch::try_new(renamed, b.columns().to_vec())
        })
        .collect()
}

/// Per result column of `query`: the name PostgreSQL gives it by rule; `None` keeps
/// DataFusion's name (an item with an alias, whose name DataFusion keeps as written, and
/// the columns a wildcard produces). The result has `width` entries, or is empty when the select list
/// cannot be lined up with the columns.
pub fn postgres_names(query: &Query, width: usize) -> Vec<Option<String>> {
    let Some(items) = select_items(&query.body) else {
        return Vec::new();
    };
    let wildcard = |i: &SelectItem| {
        matches!(
            i,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    };
    let names: Vec<Option<String>> = items.iter().map(item_name).collect();
    match items.iter().position(wildcard) {
        None if items.len() == width => names,
        None => Vec::new(),
        // Items before the first wildcard name the first columns, items after the last
        // one the last columns; what the wildcards produce in between keeps its names.
        Some(first) => {
            let last = items.iter().rposition(wildcard).unwrap_or(first);
            let tail = items.len() - last - 1;
            if first + tail > width {
                return Vec::new();
            }
            let mut out = vec![None; width];
            out[..first].clone_from_slice(&names[..first]);
            out[width - tail..].clone_from_slice(&names[last + 1..]);
            out
        }
    }
}

/// The select list that names a query's columns: of a set operation, its first
/// branch's.
fn select_items(body: &SetExpr) -> Option<&[SelectItem]> {
    match body {
        SetExpr::Select(s) => Some(&s.projection),
        SetExpr::Query(q) => select_items(&q.body),
        SetExpr::SetOperation { left, .. } => select_items(left),
        _ => None,
    }
}

fn item_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::UnnamedExpr(e) => Some(figure(e).unwrap_or_else(|| "?column?".to_string())),
        _ => None,
    }
}

/// PostgreSQL's name for an expression, if its rule gives one.
fn figure(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(ident(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident),
        Expr::Nested(e) => figure(e),
        Expr::Function(f) => match f.name.0.last() {
            Some(ObjectNamePart::Identifier(i)) => Some(ident(i)),
            _ => None,
        },
        Expr::Cast {
            expr, data_type, ..
        } => figure(expr).or_else(|| type_name(data_type)),
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Subquery(q) => match select_items(&q.body)?.first()? {
            SelectItem::ExprWithAlias { alias, .. } => Some(ident(alias)),
            SelectItem::UnnamedExpr(e) => figure(e),
            _ => None,
        },
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        Expr::AtTimeZone { .. } => Some("timezone".into()),
        Expr::Interval(_) => Some("interval".into()),
        Expr::Tuple(_) => Some("row".into()),
        Expr::TypedString(t) => type_name(&t.data_type),
        Expr::Collate { expr, .. } => figure(expr),
        Expr::CompoundFieldAccess { root, .. } => figure(root),
        _ => None,
    }
}

/// An unquoted identifier folds to lower case, as PostgreSQL folds it.
fn ident(i: &ast::Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

/// The name PostgreSQL's grammar gives a type written in a cast (`::int` is `int4`).
fn type_name(t: &SqlType) -> Option<String> {
    let name = match t {
        SqlType::SmallInt(_) | SqlType::Int2(_) => "int2",
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => "int4",
        SqlType::BigInt(_) | SqlType::Int8(_) => "int8",
        SqlType::Real | SqlType::Float4 => "float4",
        SqlType::DoublePrecision | SqlType::Float8 | SqlType::Double(_) => "float8",
        SqlType::Float(_) => "float8",
        SqlType::Boolean | SqlType::Bool => "bool",
        SqlType::Numeric(_) | SqlType::Decimal(_) | SqlType::Dec(_) => "numeric",
        SqlType::Text => "text",
        SqlType::Varchar(_) | SqlType::CharacterVarying(_) => "varchar",
        SqlType::Char(_) | SqlType::Character(_) => "bpchar",
        SqlType::Date => "date",
        SqlType::Timestamp(_, tz) => match tz {
            ast::TimezoneInfo::Tz | ast::TimezoneInfo::WithTimeZone => "timestamptz",
            _ => "timestamp",
        },
        SqlType::Time(_, _) => "time",
        SqlType::Interval { .. } => "interval",
        SqlType::Bytea => "bytea",
        SqlType::JSON => "json",
        SqlType::JSONB => "jsonb",
        SqlType::Uuid => "uuid",
        SqlType::Regclass => "regclass",
        SqlType::Custom(name, _) => match name.0.last() {
            Some(ObjectNamePart::Identifier(i)) => return Some(ident(i)),
            _ => return None,
        },
        _ => return None,
    };
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str, width: usize) -> Vec<Option<String>> {
        let stmts =
            sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, sql)
                .unwrap();
        let ast::Statement::Query(q) = &stmts[0] else {
            panic!("{sql}");
        };
        postgres_names(q, width)
    }

    fn some(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect()
    }

    #[test]
    fn names_follow_postgres() {
        assert_eq!(
            names(
                "SELECT a, t.b, count(*), Sum(x) AS \"S\", 1, a + 1, '1'::int, b::text, \
                 CAST(1 AS BIGINT), CASE WHEN a THEN 1 END, (SELECT max(y) FROM u), \
                 (SELECT 1 AS one), EXISTS (SELECT 1), current_user, \"Quoted\"(a), \
                 DATE '2020-01-01', (a), pg_catalog.format_type(1, 2) FROM t",
                18
            ),
            some(&[
                "a",
                "b",
                "count",
                "",
                "?column?",
                "?column?",
                "int4",
                "b",
                "int8",
                "case",
                "max",
                "one",
                "exists",
                "current_user",
                "Quoted",
                "date",
                "a",
                "format_type"
            ])
        );
    }

    #[test]
    fn wildcards_keep_their_columns_and_set_operations_take_the_first_branch() {
        assert_eq!(
            names("SELECT count(*), *, 1 FROM t", 5),
            some(&["count", "", "", "", "?column?"])
        );
        assert_eq!(
            names("SELECT sum(a) FROM t UNION ALL SELECT 1", 1),
            some(&["sum"])
        );
        // A select list that cannot line up renames nothing.
        assert!(names("SELECT 1, 2", 3).is_empty());
        assert!(names("VALUES (1)", 1).is_empty());
    }
}
