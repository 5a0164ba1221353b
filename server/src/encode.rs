//! Arrow columns to PostgreSQL wire values, in text or binary format.

use std::error::Error;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, DurationMicrosecondType,
    DurationMillisecondType, DurationNanosecondType, DurationSecondType, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, IntervalMonthDayNanoType, IntervalUnit, Schema,
    Time32MillisecondType, Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use pgwire::types::ToSqlText;
use postgres_types::{to_sql_checked, IsNull, ToSql};

/// The PostgreSQL type a column is reported as (the catalog's mapping, so `pg_attribute`
/// and row descriptions agree).
pub fn pg_type(field: &arrow::datatypes::Field) -> Type {
    Type::from_oid(sabot_planner::pg_catalog::type_oid(field)).unwrap_or(Type::TEXT)
}

/// The element type an array column is sent with: the element's own type where array
/// elements of it are encoded natively, text otherwise.
fn element_type(item: &arrow::datatypes::Field) -> Type {
    match pg_type(item) {
        t @ (Type::BOOL
        | Type::INT2
        | Type::INT4
        | Type::INT8
        | Type::FLOAT4
        | Type::FLOAT8
        | Type::NUMERIC
        | Type::VARCHAR) => t,
        _ => Type::TEXT,
    }
}

/// One element of an array value.
#[derive(Debug)]
enum Elem {
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    Float(PgText),
    Dec(rust_decimal::Decimal),
    Text(String),
}

impl Elem {
    /// Element `i` of `values`, typed as `ty` (from [`element_type`]).
    fn of(values: &ArrayRef, i: usize, ty: &Type) -> PgWireResult<Option<Elem>> {
        if values.is_null(i) {
            return Ok(None);
        }
        let as_i64 = || -> PgWireResult<i64> {
            let c =
                arrow::compute::cast(values, &DataType::Int64).map_err(|e| bad(e.to_string()))?;
            Ok(c.as_primitive::<Int64Type>().value(i))
        };
        let narrow = |e: std::num::TryFromIntError| bad(e.to_string());
        Ok(Some(match *ty {
            Type::BOOL => Elem::Bool(values.as_boolean().value(i)),
            Type::INT2 => Elem::I16(i16::try_from(as_i64()?).map_err(narrow)?),
            Type::INT4 => Elem::I32(i32::try_from(as_i64()?).map_err(narrow)?),
            Type::INT8 => Elem::I64(as_i64()?),
            Type::FLOAT4 | Type::FLOAT8 => {
                let c = arrow::compute::cast(values, &DataType::Float64)
                    .map_err(|e| bad(e.to_string()))?;
                let v = c.as_primitive::<Float64Type>().value(i);
                Elem::Float(if *ty == Type::FLOAT4 {
                    PgText::Float4(v as f32)
                } else {
                    PgText::Float8(v)
                })
            }
            Type::NUMERIC => match values.data_type() {
                DataType::Decimal128(_, scale) => Elem::Dec(
                    rust_decimal::Decimal::try_from_i128_with_scale(
                        values.as_primitive::<Decimal128Type>().value(i),
                        u32::try_from(*scale).unwrap_or(0),
                    )
                    .map_err(|e| bad(format!("numeric value out of range for the wire: {e}")))?,
                ),
                _ => Elem::Text(display(values, i)?),
            },
            _ => Elem::Text(match values.data_type() {
                DataType::Utf8 => values.as_string::<i32>().value(i).to_string(),
                DataType::LargeUtf8 => values.as_string::<i64>().value(i).to_string(),
                DataType::Utf8View => values.as_string_view().value(i).to_string(),
                _ => display(values, i)?,
            }),
        }))
    }

    fn binary(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Elem::Bool(v) => v.to_sql(ty, out),
            Elem::I16(v) => v.to_sql(ty, out),
            Elem::I32(v) => v.to_sql(ty, out),
            Elem::I64(v) => v.to_sql(ty, out),
            Elem::Float(v) => v.to_sql(ty, out),
            Elem::Dec(v) => v.to_sql(ty, out),
            Elem::Text(v) => v.to_sql(ty, out),
        }
    }

    fn text(&self, ty: &Type, opts: &FormatOptions) -> Result<String, BoxError> {
        let mut out = BytesMut::new();
        match self {
            Elem::Bool(v) => return Ok(if *v { "t" } else { "f" }.to_string()),
            Elem::I16(v) => return Ok(v.to_string()),
            Elem::I32(v) => return Ok(v.to_string()),
            Elem::I64(v) => return Ok(v.to_string()),
            Elem::Float(v) => v.to_sql_text(ty, &mut out, opts)?,
            Elem::Dec(v) => v.to_sql_text(ty, &mut out, opts)?,
            Elem::Text(v) => return Ok(v.clone()),
        };
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

/// Arrow's display of one value.
fn display(values: &ArrayRef, i: usize) -> PgWireResult<String> {
    let f = arrow::util::display::ArrayFormatter::try_new(values.as_ref(), &Default::default())
        .map_err(|e| bad(e.to_string()))?;
    Ok(f.value(i).to_string())
}

/// A one-dimensional array value, sent as PostgreSQL sends arrays.
#[derive(Debug)]
struct PgArray {
    elem: Type,
    items: Vec<Option<Elem>>,
}

impl ToSql for PgArray {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let dims = i32::from(!self.items.is_empty());
        out.put_i32(dims);
        out.put_i32(i32::from(self.items.iter().any(Option::is_none)));
        out.put_u32(self.elem.oid());
        if dims == 1 {
            out.put_i32(i32::try_from(self.items.len())?);
            out.put_i32(1);
        }
        for item in &self.items {
            match item {
                None => out.put_i32(-1),
                Some(e) => {
                    let mut buf = BytesMut::new();
                    e.binary(&self.elem, &mut buf)?;
                    out.put_i32(i32::try_from(buf.len())?);
                    out.put_slice(&buf);
                }
            }
        }
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), postgres_types::Kind::Array(_))
    }
    to_sql_checked!();
}

impl ToSqlText for PgArray {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        opts: &FormatOptions,
    ) -> Result<IsNull, BoxError> {
        out.put_u8(b'{');
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            match item {
                None => out.put_slice(b"NULL"),
                Some(e) => {
                    let text = e.text(&self.elem, opts)?;
                    out.put_slice(quote_array_element(&text).as_bytes());
                }
            }
        }
        out.put_u8(b'}');
        Ok(IsNull::No)
    }
}

/// An array element as PostgreSQL's array output writes it: in double quotes (with `"`
/// and `\` escaped) when empty, `NULL`, or containing a delimiter, brace, quote,
/// backslash or white space.
fn quote_array_element(text: &str) -> String {
    let needs = text.is_empty()
        || text.eq_ignore_ascii_case("null")
        || text
            .chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_ascii_whitespace());
    if !needs {
        return text.to_string();
    }
    let mut q = String::with_capacity(text.len() + 2);
    q.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Row descriptions for a schema, with one format per column.
pub fn fields(schema: &Schema, format: impl Fn(usize) -> FieldFormat) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| FieldInfo::new(f.name().clone(), None, None, pg_type(f), format(i)))
        .collect()
}

/// An INTERVAL value in PostgreSQL's representation.
#[derive(Debug, Clone, Copy)]
struct PgInterval {
    months: i32,
    days: i32,
    micros: i64,
}

impl ToSql for PgInterval {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_i64(self.micros);
        out.put_i32(self.days);
        out.put_i32(self.months);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
    to_sql_checked!();
}

impl ToSqlText for PgInterval {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _format_options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(
            sabot_planner::types::format_interval(self.months, self.days, self.micros).as_bytes(),
        );
        Ok(IsNull::No)
    }
}

/// Values whose binary encoding is postgres-types' but whose text form must match
/// PostgreSQL's output functions exactly (float8out, timestamp_out, time_out).
#[derive(Debug, Clone, Copy)]
enum PgText {
    Float4(f32),
    Float8(f64),
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<Utc>),
    Time(NaiveTime),
}

impl ToSql for PgText {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            PgText::Float4(v) => v.to_sql(ty, out),
            PgText::Float8(v) => v.to_sql(ty, out),
            PgText::Timestamp(v) => v.to_sql(ty, out),
            PgText::TimestampTz(v) => v.to_sql(ty, out),
            PgText::Time(v) => v.to_sql(ty, out),
        }
    }
    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::FLOAT4 | Type::FLOAT8 | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIME
        )
    }
    to_sql_checked!();
}

impl ToSqlText for PgText {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _format_options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let text = match self {
            PgText::Float4(v) => format_float(f64::from(*v), format!("{:e}", v), 6),
            PgText::Float8(v) => format_float(*v, format!("{v:e}"), 15),
            PgText::Timestamp(v) => format!(
                "{}{}",
                v.format("%Y-%m-%d %H:%M:%S"),
                fraction(v.and_utc().timestamp_subsec_micros())
            ),
            PgText::TimestampTz(v) => format!(
                "{}{}+00",
                v.format("%Y-%m-%d %H:%M:%S"),
                fraction(v.timestamp_subsec_micros())
            ),
            PgText::Time(v) => format!(
                "{}{}",
                v.format("%H:%M:%S"),
                fraction(v.nanosecond() / 1000)
            ),
        };
        out.put_slice(text.as_bytes());
        Ok(IsNull::No)
    }
}

/// `.123` for microseconds, trailing zeros dropped, empty for zero.
fn fraction(micros: u32) -> String {
    if micros == 0 {
        return String::new();
    }
    let f = format!(".{micros:06}");
    f.trim_end_matches('0').to_string()
}

/// PostgreSQL's shortest-exact float output: plain notation unless the decimal exponent is
/// below -4 or at least `max_exp` (15 for float8, 6 for float4), then `1.5e+20`.
/// `sci` is Rust's shortest round-trip scientific form of the same value (`1.5e20`).
fn format_float(v: f64, sci: String, max_exp: i32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if v != 0.0 && (exp < -4 || exp >= max_exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    // Plain notation from the same shortest digits.
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let point = exp + 1; // digits before the decimal point
    let body = if v == 0.0 {
        "0".to_string()
    } else if point <= 0 {
        format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
    } else if point as usize >= digits.len() {
        format!("{}{}", digits, "0".repeat(point as usize - digits.len()))
    } else {
        let (a, b) = digits.split_at(point as usize);
        format!("{a}.{b}")
    };
    if negative && v != 0.0 {
        format!("-{body}")
    } else if v == 0.0 && v.is_sign_negative() {
        "-0".into()
    } else {
        body
    }
}

/// A JSON value kept as text (for JSON/JSONB columns that hold invalid JSON text).
fn encode<T: ToSql + ToSqlText>(
    enc: &mut DataRowEncoder,
    value: &Option<T>,
    ty: &Type,
    format: FieldFormat,
    opts: &FormatOptions,
) -> PgWireResult<()> {
    enc.encode_field_with_type_and_format(value, ty, format, opts)
}

/// PostgreSQL's jsonb output: `{"a": 1, "bb": [1, 2]}`, object keys ordered by length,
/// then bytes (jsonb's storage order), duplicate keys already collapsed by parsing.
fn jsonb_text(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(jsonb_text).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| {
                a.0.len()
                    .cmp(&b.0.len())
                    .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
            });
            let parts: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), jsonb_text(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

fn bad(msg: String) -> PgWireError {
    PgWireError::ApiError(msg.into())
}

/// Encodes row `row` of `col` into the encoder.
fn encode_value(
    enc: &mut DataRowEncoder,
    col: &ArrayRef,
    row: usize,
    field: &FieldInfo,
    opts: &FormatOptions,
) -> PgWireResult<()> {
    let ty = field.datatype();
    let fmt = field.format();
    let valid = col.is_valid(row);
    macro_rules! prim {
        ($t:ty, $conv:expr) => {{
            let v = valid.then(|| $conv(col.as_primitive::<$t>().value(row)));
            encode(enc, &v, ty, fmt, opts)
        }};
    }
    match col.data_type() {
        DataType::Null => encode(enc, &None::<String>, ty, fmt, opts),
        DataType::Boolean => {
            let v = valid.then(|| col.as_boolean().value(row));
            encode(enc, &v, ty, fmt, opts)
        }
        DataType::Int8 => prim!(Int8Type, i16::from),
        DataType::Int16 => prim!(Int16Type, |v: i16| v),
        DataType::UInt8 => prim!(UInt8Type, i16::from),
        DataType::Int32 => prim!(Int32Type, |v: i32| v),
        DataType::UInt16 => prim!(UInt16Type, i32::from),
        DataType::Int64 => prim!(Int64Type, |v: i64| v),
        DataType::UInt32 if *ty == Type::OID => prim!(UInt32Type, |v: u32| v),
        DataType::UInt32 => prim!(UInt32Type, i64::from),
        DataType::UInt64 => prim!(UInt64Type, |v: u64| i64::try_from(v).unwrap_or(i64::MAX)),
        DataType::Float32 => prim!(Float32Type, PgText::Float4),
        DataType::Float64 => prim!(Float64Type, PgText::Float8),
        DataType::Decimal128(_, scale) => {
            let v = if valid {
                let raw = col.as_primitive::<Decimal128Type>().value(row);
                let scale = u32::try_from(*scale).unwrap_or(0);
                Some(
                    rust_decimal::Decimal::try_from_i128_with_scale(raw, scale).map_err(|e| {
                        bad(format!("numeric value out of range for the wire: {e}"))
                    })?,
                )
            } else {
                None
            };
            encode(enc, &v, ty, fmt, opts)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s: Option<&str> = if !valid {
                None
            } else {
                Some(match col.data_type() {
                    DataType::Utf8 => col.as_string::<i32>().value(row),
                    DataType::LargeUtf8 => col.as_string::<i64>().value(row),
                    _ => col.as_string_view().value(row),
                })
            };
            if *ty == Type::JSONB && fmt == FieldFormat::Text {
                // jsonb's canonical text, as PostgreSQL prints it.
                let v = match s {
                    Some(s) => Some(jsonb_text(
                        &serde_json::from_str::<serde_json::Value>(s).map_err(|e| {
                            bad(format!("invalid JSON stored in a jsonb column: {e}"))
                        })?,
                    )),
                    None => None,
                };
                encode(enc, &v, &Type::TEXT, fmt, opts)
            } else if *ty == Type::JSONB || *ty == Type::JSON {
                let v = match s {
                    Some(s) => {
                        Some(serde_json::from_str::<serde_json::Value>(s).map_err(|e| {
                            bad(format!("invalid JSON stored in a JSON column: {e}"))
                        })?)
                    }
                    None => None,
                };
                encode(enc, &v, ty, fmt, opts)
            } else {
                encode(enc, &s.map(str::to_string), ty, fmt, opts)
            }
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let v: Option<Vec<u8>> = valid.then(|| match col.data_type() {
                DataType::Binary => col.as_binary::<i32>().value(row).to_vec(),
                DataType::LargeBinary => col.as_binary::<i64>().value(row).to_vec(),
                _ => col.as_binary_view().value(row).to_vec(),
            });
            encode(enc, &v, ty, fmt, opts)
        }
        DataType::Date32 => prim!(Date32Type, |d: i32| NaiveDate::from_num_days_from_ce_opt(
            d + 719_163
        )
        .unwrap_or_default()),
        DataType::Date64 => prim!(Date64Type, |ms: i64| DateTime::from_timestamp_millis(ms)
            .map(|t| t.date_naive())
            .unwrap_or_default()),
        DataType::Time64(TimeUnit::Microsecond) => {
            prim!(Time64MicrosecondType, |us: i64| PgText::Time(time_of(
                us * 1000
            )))
        }
        DataType::Time64(_) => prim!(Time64NanosecondType, |ns: i64| PgText::Time(time_of(ns))),
        DataType::Time32(TimeUnit::Second) => {
            prim!(Time32SecondType, |s: i32| PgText::Time(time_of(
                i64::from(s) * 1_000_000_000
            )))
        }
        DataType::Time32(_) => prim!(Time32MillisecondType, |ms: i32| PgText::Time(time_of(
            i64::from(ms) * 1_000_000
        ))),
        DataType::Timestamp(unit, tz) => {
            let nanos: Option<i64> = if !valid {
                None
            } else {
                Some(match unit {
                    TimeUnit::Second => col
                        .as_primitive::<TimestampSecondType>()
                        .value(row)
                        .saturating_mul(1_000_000_000),
                    TimeUnit::Millisecond => col
                        .as_primitive::<TimestampMillisecondType>()
                        .value(row)
                        .saturating_mul(1_000_000),
                    TimeUnit::Microsecond => col
                        .as_primitive::<TimestampMicrosecondType>()
                        .value(row)
                        .saturating_mul(1000),
                    TimeUnit::Nanosecond => {
                        col.as_primitive::<TimestampNanosecondType>().value(row)
                    }
                })
            };
            let utc = nanos.map(DateTime::<Utc>::from_timestamp_nanos);
            let v = if tz.is_some() {
                utc.map(PgText::TimestampTz)
            } else {
                utc.map(|t| PgText::Timestamp(t.naive_utc()))
            };
            encode(enc, &v, ty, fmt, opts)
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = valid.then(|| {
                let v = col.as_primitive::<IntervalMonthDayNanoType>().value(row);
                PgInterval {
                    months: v.months,
                    days: v.days,
                    micros: v.nanoseconds / 1000,
                }
            });
            encode(enc, &v, ty, fmt, opts)
        }
        // The difference of two timestamps: PostgreSQL gives whole days as days.
        DataType::Duration(unit) => {
            let v = valid.then(|| {
                let micros = match unit {
                    TimeUnit::Second => col
                        .as_primitive::<DurationSecondType>()
                        .value(row)
                        .saturating_mul(1_000_000),
                    TimeUnit::Millisecond => col
                        .as_primitive::<DurationMillisecondType>()
                        .value(row)
                        .saturating_mul(1_000),
                    TimeUnit::Microsecond => {
                        col.as_primitive::<DurationMicrosecondType>().value(row)
                    }
                    TimeUnit::Nanosecond => {
                        col.as_primitive::<DurationNanosecondType>().value(row) / 1_000
                    }
                };
                const DAY: i64 = 86_400_000_000;
                PgInterval {
                    months: 0,
                    days: i32::try_from(micros / DAY).unwrap_or(i32::MAX),
                    micros: micros % DAY,
                }
            });
            encode(enc, &v, ty, fmt, opts)
        }
        DataType::List(item) => {
            let v = if valid {
                let elem = element_type(item);
                let values = col.as_list::<i32>().value(row);
                let items = (0..values.len())
                    .map(|i| Elem::of(&values, i, &elem))
                    .collect::<PgWireResult<Vec<_>>>()?;
                Some(PgArray { elem, items })
            } else {
                None
            };
            encode(enc, &v, ty, fmt, opts)
        }
        _ => {
            // Everything else travels as text.
            let v = if valid {
                let f = arrow::util::display::ArrayFormatter::try_new(
                    col.as_ref(),
                    &Default::default(),
                )
                .map_err(|e| bad(e.to_string()))?;
                Some(f.value(row).to_string())
            } else {
                None
            };
            encode(enc, &v, &Type::TEXT, fmt, opts)
        }
    }
}

fn time_of(nanos: i64) -> NaiveTime {
    let secs = nanos.div_euclid(1_000_000_000);
    let ns = nanos.rem_euclid(1_000_000_000);
    NaiveTime::from_num_seconds_from_midnight_opt(
        u32::try_from(secs).unwrap_or(0),
        u32::try_from(ns).unwrap_or(0),
    )
    .unwrap_or_default()
}

/// Encodes every row of `batches`.
pub fn encode_rows(
    batches: &[RecordBatch],
    fields: &Arc<Vec<FieldInfo>>,
) -> PgWireResult<Vec<DataRow>> {
    let opts = FormatOptions::default();
    let mut enc = DataRowEncoder::new(Arc::clone(fields));
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            for (c, field) in b.columns().iter().zip(fields.iter()) {
                encode_value(&mut enc, c, r, field, &opts)?;
            }
            rows.push(enc.take_row());
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::format_float;
    use sabot_planner::types::format_interval;

    fn f8(v: f64) -> String {
        format_float(v, format!("{v:e}"), 15)
    }

    #[test]
    fn float_text_matches_postgres() {
        assert_eq!(f8(4.0), "4");
        assert_eq!(f8(1.5), "1.5");
        assert_eq!(f8(-1e100), "-1e+100");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001), "1e-05");
        assert_eq!(f8(123456789012345.0), "123456789012345");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(2.3333333333333335), "2.3333333333333335");
        assert_eq!(f8(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(f8(0.0), "0");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(
            format_float(1234567.0, format!("{:e}", 1234567.0f32), 6),
            "1.234567e+06"
        );
    }

    #[test]
    fn jsonb_text_matches_postgres() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"bb": [1, {"z":null,"a":true}], "a": "x\"y", "c": 1.5}"#)
                .unwrap();
        assert_eq!(
            super::jsonb_text(&v),
            r#"{"a": "x\"y", "c": 1.5, "bb": [1, {"a": true, "z": null}]}"#
        );
    }

    #[test]
    fn array_elements_quoted_as_postgres_does() {
        use super::quote_array_element as q;
        assert_eq!(q("abc"), "abc");
        assert_eq!(q(""), r#""""#);
        assert_eq!(q("NULL"), r#""NULL""#);
        assert_eq!(q("a b"), r#""a b""#);
        assert_eq!(q(r#"x"y\z"#), r#""x\"y\\z""#);
        assert_eq!(q("{1,2}"), r#""{1,2}""#);
    }

    #[test]
    fn interval_text_matches_postgres() {
        assert_eq!(format_interval(0, 0, 0), "00:00:00");
        assert_eq!(
            format_interval(14, 3, 3_600_000_000 + 500_000),
            "1 year 2 mons 3 days 01:00:00.5"
        );
        assert_eq!(format_interval(0, 1, 0), "1 day");
        assert_eq!(format_interval(0, 0, -90_000_000), "-00:01:30");
    }
}
