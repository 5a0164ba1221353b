//! Parameters of prepared statements: inferring their types, and binding values.
//!
//! Parameter types are inferred when a statement is parsed (so `Describe` can answer):
//! DataFusion infers placeholders in queries and WHERE clauses; `INSERT ... VALUES ($1)`
//! and `SET col = $1` take the target column's type. At execution each value is decoded
//! (text or binary) and put into the statement as a literal.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use pgwire::api::portal::Portal;
use pgwire::api::Type;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use sabot_planner::types::normalize_name;
use sabot_planner::Database;
use sabot_sql::sqlparser::ast::{self, Expr, Value, VisitMut, VisitorMut};
use sabot_sql::{Parsed, Statement};

use crate::encode::pg_type;

/// Highest `$n` used in a statement.
pub fn placeholder_count(stmt: &mut Statement) -> usize {
    let mut max = 0usize;
    let _ = visit_placeholders(stmt, &mut |p: &mut Expr| {
        if let Some(n) = placeholder_index(p) {
            max = max.max(n);
        }
    });
    max
}

fn placeholder_index(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p.strip_prefix('$').and_then(|n| n.parse().ok()),
            _ => None,
        },
        _ => None,
    }
}

struct ExprVisitor<'a, F: FnMut(&mut Expr)>(&'a mut F);

impl<F: FnMut(&mut Expr)> VisitorMut for ExprVisitor<'_, F> {
    type Break = ();
    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        (self.0)(expr);
        ControlFlow::Continue(())
    }
}

fn visit_placeholders<F: FnMut(&mut Expr)>(stmt: &mut Statement, f: &mut F) -> ControlFlow<()> {
    let mut v = ExprVisitor(f);
    match stmt {
        Statement::Query(q) => q.visit(&mut v),
        Statement::Insert(i) => i.visit(&mut v),
        Statement::Update(u) => u.visit(&mut v),
        Statement::Delete(d) => d.visit(&mut v),
        Statement::CreateMaterializedView { query, .. } => query.visit(&mut v),
        Statement::Explain(inner) | Statement::ExplainDot(inner) => visit_placeholders(inner, f),
        _ => ControlFlow::Continue(()),
    }
}

fn param_type(dt: &Option<DataType>) -> Type {
    match dt {
        Some(DataType::Null) | None => Type::TEXT,
        Some(dt) => pg_type(&Field::new("", dt.clone(), true)),
    }
}

fn parse_query(sql: &str) -> Option<Box<ast::Query>> {
    match sabot_sql::parse(sql).ok()?.into_iter().next()?.statement {
        Statement::Query(q) => Some(q),
        _ => None,
    }
}

/// Infers the type of each placeholder `$1..$n` (TEXT where nothing tells).
pub async fn infer_types(db: &Database, parsed: &Parsed) -> Vec<Type> {
    let mut stmt = parsed.statement.clone();
    let n = placeholder_count(&mut stmt);
    let mut types = vec![Type::TEXT; n];
    if n == 0 {
        return types;
    }
    let mut set = |name: &str, t: Type| {
        if let Some(i) = name.strip_prefix('$').and_then(|i| i.parse::<usize>().ok()) {
            if (1..=n).contains(&i) {
                types[i - 1] = t;
            }
        }
    };
    let snapshot = db.snapshot();
    let table_schema = |name: &ast::ObjectName| {
        normalize_name(name).ok().and_then(|n| {
            snapshot
                .relations
                .get(&n)
                .map(|r| (n, Arc::clone(&r.schema)))
        })
    };
    let where_query = |table: &str, selection: &Option<Expr>| {
        selection.as_ref().and_then(|s| {
            parse_query(&format!(
                "SELECT * FROM \"{}\" WHERE {s}",
                table.replace('"', "\"\"")
            ))
        })
    };
    let mut queries: Vec<Box<ast::Query>> = Vec::new();
    match &parsed.statement {
        Statement::Query(q) => queries.push(q.clone()),
        Statement::Insert(i) => {
            if let (ast::TableObject::TableName(name), Some(src)) = (&i.table, &i.source) {
                if let Some((_, schema)) = table_schema(name) {
                    let cols: Vec<usize> = if i.columns.is_empty() {
                        (0..schema.fields().len()).collect()
                    } else {
                        i.columns
                            .iter()
                            .filter_map(|c| {
                                let id = c.0.last()?.as_ident()?;
                                schema
                                    .index_of(&sabot_planner::types::normalize_ident(id))
                                    .ok()
                            })
                            .collect()
                    };
                    if let ast::SetExpr::Values(values) = src.body.as_ref() {
                        for row in &values.rows {
                            for (j, e) in row.iter().enumerate() {
                                if let (Some(p), Some(c)) = (placeholder_name(e), cols.get(j)) {
                                    set(&p, pg_type(schema.field(*c)));
                                }
                            }
                        }
                    } else {
                        queries.push(src.clone());
                    }
                }
            }
        }
        Statement::Update(u) => {
            if let ast::TableFactor::Table { name, .. } = &u.table.relation {
                if let Some((tname, schema)) = table_schema(name) {
                    for a in &u.assignments {
                        if let (ast::AssignmentTarget::ColumnName(c), Some(p)) =
                            (&a.target, placeholder_name(&a.value))
                        {
                            let col =
                                c.0.last()
                                    .and_then(|p| p.as_ident())
                                    .map(sabot_planner::types::normalize_ident);
                            if let Some(idx) = col.and_then(|c| schema.index_of(&c).ok()) {
                                set(&p, pg_type(schema.field(idx)));
                            }
                        }
                    }
                    queries.extend(where_query(&tname, &u.selection));
                }
            }
        }
        Statement::Delete(d) => {
            let from = match &d.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            if let Some(ast::TableFactor::Table { name, .. }) = from.first().map(|t| &t.relation) {
                if let Some((tname, _)) = table_schema(name) {
                    queries.extend(where_query(&tname, &d.selection));
                }
            }
        }
        _ => {}
    }
    for q in queries {
        if let Ok((_, params)) = db.infer_query(&q).await {
            for (name, dt) in params {
                if dt.is_some() {
                    set(&name, param_type(&dt));
                }
            }
        }
    }
    types
}

fn placeholder_name(e: &Expr) -> Option<String> {
    placeholder_index(e).map(|i| format!("${i}"))
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

fn literal(sql: &str) -> PgWireResult<Expr> {
    let dialect = sabot_sql::sqlparser::dialect::PostgreSqlDialect {};
    sabot_sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| user_error("22P02", format!("invalid parameter value: {e}")))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The SQL literal for parameter `idx` of `portal`, decoded as `ty`.
fn param_literal(portal: &Portal<SabotStatement>, idx: usize, ty: &Type) -> PgWireResult<Expr> {
    macro_rules! get {
        ($t:ty) => {
            portal.parameter::<$t>(idx, ty)
        };
    }
    let text: Option<String> = match *ty {
        Type::BOOL => get!(bool)?.map(|v| v.to_string()),
        Type::INT2 => get!(i16)?.map(|v| v.to_string()),
        Type::INT4 => get!(i32)?.map(|v| v.to_string()),
        Type::INT8 => get!(i64)?.map(|v| v.to_string()),
        Type::FLOAT4 => get!(f32)?.map(|v| float_literal(f64::from(v))),
        Type::FLOAT8 => get!(f64)?.map(float_literal),
        Type::NUMERIC => get!(rust_decimal::Decimal)?.map(|v| {
            format!(
                "CAST({} AS NUMERIC(38, {}))",
                quote(&v.to_string()),
                v.scale().min(37)
            )
        }),
        Type::DATE => get!(NaiveDate)?.map(|v| format!("DATE {}", quote(&v.to_string()))),
        Type::TIME => get!(NaiveTime)?.map(|v| format!("CAST({} AS TIME)", quote(&v.to_string()))),
        Type::TIMESTAMP => get!(NaiveDateTime)?.map(|v| {
            format!(
                "TIMESTAMP {}",
                quote(&v.format("%Y-%m-%d %H:%M:%S%.f").to_string())
            )
        }),
        Type::TIMESTAMPTZ => get!(DateTime<FixedOffset>)?
            .map(|v| format!("CAST({} AS TIMESTAMPTZ)", quote(&v.to_rfc3339()))),
        Type::BYTEA => get!(Vec<u8>)?.map(|v| {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            format!("X'{hex}'")
        }),
        Type::JSON | Type::JSONB => get!(serde_json::Value)?.map(|v| quote(&v.to_string())),
        _ => get!(String)?.map(|v| quote(&v)),
    };
    match text {
        None => Ok(Expr::value(Value::Null)),
        Some(t) => literal(&t),
    }
}

fn float_literal(v: f64) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else if v.is_nan() {
        "CAST('NaN' AS DOUBLE)".into()
    } else if v > 0.0 {
        "CAST('Infinity' AS DOUBLE)".into()
    } else {
        "CAST('-Infinity' AS DOUBLE)".into()
    }
}

/// A prepared statement: the parsed statement and its parameter types.
#[derive(Debug, Clone)]
pub struct SabotStatement {
    pub parsed: Option<Parsed>,
    pub param_types: Vec<Type>,
}

/// The statement of `portal` with its parameters in place.
pub fn bind(portal: &Portal<SabotStatement>) -> PgWireResult<Option<Parsed>> {
    let stored = &portal.statement;
    let Some(parsed) = &stored.statement.parsed else {
        return Ok(None);
    };
    let mut parsed = parsed.clone();
    let client_types = &stored.parameter_types;
    let types: Vec<Type> = (0..portal.parameter_len())
        .map(|i| {
            client_types
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN)
                .or_else(|| stored.statement.param_types.get(i).cloned())
                .unwrap_or(Type::TEXT)
        })
        .collect();
    let mut literals: HashMap<usize, Expr> = HashMap::new();
    for (i, ty) in types.iter().enumerate() {
        literals.insert(i + 1, param_literal(portal, i, ty)?);
    }
    let mut missing = None;
    let _ = visit_placeholders(&mut parsed.statement, &mut |e: &mut Expr| {
        if let Some(n) = placeholder_index(e) {
            match literals.get(&n) {
                Some(l) => *e = Expr::Nested(Box::new(l.clone())),
                None => missing = Some(n),
            }
        }
    });
    if let Some(n) = missing {
        return Err(user_error("08P01", format!("there is no parameter ${n}")));
    }
    Ok(Some(parsed))
}
