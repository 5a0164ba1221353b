//! SQL types and their Arrow representation.

use std::collections::HashMap;

use arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use sabot_sql::sqlparser::ast;

use crate::error::{PlanError, Result};

/// Field metadata key that keeps the declared SQL type name (e.g. `jsonb`), for clients.
pub const SQL_TYPE_KEY: &str = "sabot.sql_type";

/// The Arrow type of a declared SQL column type.
pub fn arrow_type(dt: &ast::DataType) -> Result<DataType> {
    let text = dt.to_string().to_uppercase();
    let base = text.split('(').next().unwrap_or("").trim();
    let ty = match base {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "SMALLINT" | "INT2" => DataType::Int16,
        "INT" | "INTEGER" | "INT4" => DataType::Int32,
        "BIGINT" | "INT8" => DataType::Int64,
        "REAL" | "FLOAT4" => DataType::Float32,
        "DOUBLE PRECISION" | "DOUBLE" | "FLOAT8" | "FLOAT" => DataType::Float64,
        "NUMERIC" | "DECIMAL" => {
            let (p, s) = match dt {
                ast::DataType::Numeric(info) | ast::DataType::Decimal(info) => match info {
                    ast::ExactNumberInfo::None => (38, 10),
                    ast::ExactNumberInfo::Precision(p) => (*p, 0),
                    ast::ExactNumberInfo::PrecisionAndScale(p, s) => {
                        (*p, u64::try_from(*s).unwrap_or(0))
                    }
                },
                _ => (38, 10),
            };
            if p == 0 || p > 38 || s > p {
                return Err(PlanError::user(
                    "22023",
                    format!("NUMERIC precision {p} and scale {s} are out of range (precision 1 to 38, scale 0 to precision)"),
                ));
            }
            DataType::Decimal128(p as u8, s as i8)
        }
        "TEXT" | "VARCHAR" | "CHARACTER VARYING" | "STRING" | "CHAR" | "CHARACTER" | "JSON"
        | "JSONB" | "UUID" => DataType::Utf8,
        "DATE" => DataType::Date32,
        "TIME" | "TIME WITHOUT TIME ZONE" => DataType::Time64(TimeUnit::Microsecond),
        "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        }
        "INTERVAL" => DataType::Interval(IntervalUnit::MonthDayNano),
        "BYTEA" => DataType::Binary,
        _ => {
            return Err(PlanError::user(
                "42704",
                format!("type \"{}\" does not exist", dt.to_string().to_lowercase()),
            ))
        }
    };
    // TIME WITH TIME ZONE parses as TIME(...) WITH TIME ZONE: refuse rather than drop the zone.
    if base.starts_with("TIME") && !base.starts_with("TIMESTAMP") && text.contains("WITH TIME ZONE")
    {
        return Err(PlanError::user(
            "0A000",
            "TIME WITH TIME ZONE is not supported",
        ));
    }
    Ok(ty)
}

/// The SQL type name to keep with a column, when Arrow alone loses it.
pub fn sql_type_tag(dt: &ast::DataType) -> Option<&'static str> {
    let text = dt.to_string().to_uppercase();
    match text.as_str() {
        "JSONB" => Some("jsonb"),
        "JSON" => Some("json"),
        "UUID" => Some("uuid"),
        t if t.starts_with("VARCHAR") || t.starts_with("CHARACTER VARYING") => Some("varchar"),
        _ => None,
    }
}

/// A field for a declared column.
pub fn column_field(name: &str, dt: &ast::DataType, nullable: bool) -> Result<Field> {
    let mut f = Field::new(name, arrow_type(dt)?, nullable);
    if let Some(tag) = sql_type_tag(dt) {
        f = f.with_metadata(HashMap::from([(SQL_TYPE_KEY.to_string(), tag.to_string())]));
    }
    Ok(f)
}

/// The PostgreSQL name of a field's type, as DESCRIBE shows it.
pub fn sql_type_name(field: &Field) -> String {
    if let Some(tag) = field.metadata().get(SQL_TYPE_KEY) {
        return match tag.as_str() {
            "varchar" => "character varying".into(),
            other => other.into(),
        };
    }
    match field.data_type() {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Null => "unknown".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// The catalog name of an object name: its last part, lower-cased unless quoted.
pub fn normalize_name(name: &ast::ObjectName) -> Result<String> {
    let parts: Vec<&ast::Ident> = name.0.iter().filter_map(|p| p.as_ident()).collect();
    if parts.len() != name.0.len() || parts.is_empty() || parts.len() > 2 {
        return Err(PlanError::user(
            "42601",
            format!("invalid object name \"{name}\""),
        ));
    }
    if parts.len() == 2 {
        let schema = normalize_ident(parts[0]);
        if schema != "public" {
            return Err(PlanError::user(
                "3F000",
                format!("schema \"{schema}\" does not exist"),
            ));
        }
    }
    Ok(normalize_ident(parts[parts.len() - 1]))
}

pub fn normalize_ident(id: &ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// PostgreSQL's default (`postgres`) interval style: `1 year 2 mons 3 days 04:05:06.5`.
pub fn format_interval(months: i32, days: i32, micros: i64) -> String {
    let mut parts = Vec::new();
    let years = months / 12;
    let mons = months % 12;
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n.abs() == 1 { "" } else { "s" });
    if years != 0 {
        parts.push(plural(i64::from(years), "year"));
    }
    if mons != 0 {
        parts.push(plural(i64::from(mons), "mon"));
    }
    if days != 0 {
        parts.push(plural(i64::from(days), "day"));
    }
    if micros != 0 || parts.is_empty() {
        let sign = if micros < 0 { "-" } else { "" };
        let m = micros.unsigned_abs();
        let secs = m / 1_000_000;
        let frac = m % 1_000_000;
        let mut t = format!(
            "{sign}{:02}:{:02}:{:02}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60
        );
        if frac != 0 {
            let f = format!("{frac:06}");
            t.push('.');
            t.push_str(f.trim_end_matches('0'));
        }
        parts.push(t);
    }
    parts.join(" ")
}
