//! The `datagen` connector: rows made up column by column, with RisingWave's options.
//!
//! ```sql
//! CREATE SOURCE s (id BIGINT, v INT, name VARCHAR, ts TIMESTAMP) WITH (
//!   connector = 'datagen',
//!   fields.id.kind = 'sequence', fields.id.start = '1', fields.id.end = '1000',
//!   fields.v.kind = 'random', fields.v.min = '0', fields.v.max = '99', fields.v.seed = '7',
//!   fields.name.length = '8',
//!   fields.ts.max_past = '1h',
//!   datagen.rows.per.second = '100', datagen.split.num = '2');
//! ```
//!
//! Integer columns are `random` by default (uniform in `min..=max`, default 0..=32767) or
//! `sequence` (`start`, `start + 1`, ... up to `end`; the source ends when any sequence
//! ends). Float columns are random in `min..max`; text columns are random lowercase
//! strings of `length` characters (default 10); booleans are random; timestamps are random
//! within `max_past` (default 1 day) before the time the source was created. Row `g` of
//! the whole source is computed from `g` and each field's seed alone, so splits interleave
//! (`split i` makes rows `i, i + n, ...`) and resume from any offset.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::rng::Rng;
use crate::Split;

#[derive(Debug, Clone)]
enum FieldGen {
    Sequence {
        start: i64,
        end: i64,
    },
    RandomInt {
        min: i64,
        max: i64,
        seed: u64,
    },
    RandomFloat {
        min: f64,
        max: f64,
        seed: u64,
    },
    Text {
        length: usize,
        seed: u64,
    },
    Bool {
        seed: u64,
    },
    /// Microseconds: `base - uniform(0..=max_past)`.
    Timestamp {
        base_us: i64,
        max_past_us: i64,
        seed: u64,
    },
}

/// The settings of a datagen source.
#[derive(Debug, Clone)]
pub struct DatagenConfig {
    schema: SchemaRef,
    fields: Vec<FieldGen>,
    rows_per_second: f64,
    split_num: u64,
}

/// Parses `90`, `90s`, `15m`, `2h`, `1d` into microseconds.
fn duration_us(key: &str, v: &str) -> Result<i64> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, "s"),
    };
    let n: i64 = num.trim().parse().map_err(|_| {
        ConnectorError::Options(format!(
            "option {key} must be a duration like '30s' or '2h', not '{v}'"
        ))
    })?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" | "seconds" => 1_000_000,
        "m" | "min" | "minute" | "minutes" => 60_000_000,
        "h" | "hour" | "hours" => 3_600_000_000,
        "d" | "day" | "days" => 86_400_000_000,
        other => {
            return Err(ConnectorError::Options(format!(
                "option {key}: unknown duration unit '{other}'"
            )))
        }
    };
    n.checked_mul(scale)
        .filter(|x| *x >= 0)
        .ok_or_else(|| ConnectorError::Options(format!("option {key} is out of range")))
}

impl DatagenConfig {
    /// `base_time_ms`: when the source was created (random timestamps lie before it).
    pub fn from_options(options: &Options, schema: SchemaRef, base_time_ms: i64) -> Result<Self> {
        if schema.fields().is_empty() {
            return Err(ConnectorError::Schema(
                "a datagen source needs its columns declared".into(),
            ));
        }
        let mut fields = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let name = f.name().to_ascii_lowercase();
            let key = |k: &str| format!("fields.{name}.{k}");
            let seed = options
                .u64(&key("seed"), i as u64)?
                .wrapping_mul(0x2545_F491_4F6C_DD1D)
                ^ i as u64;
            let kind = options.get(&key("kind")).map(str::to_ascii_lowercase);
            let int_range = |lo: i64, hi: i64| -> Result<(i64, i64)> {
                let get = |k: &str, d: i64| -> Result<i64> {
                    match options.get(&key(k)) {
                        None => Ok(d),
                        Some(v) => v.trim().parse().map_err(|_| {
                            ConnectorError::Options(format!(
                                "option {} must be an integer, not '{v}'",
                                key(k)
                            ))
                        }),
                    }
                };
                Ok((get("min", lo)?, get("max", hi)?))
            };
            let gen = match f.data_type() {
                DataType::Int16 | DataType::Int32 | DataType::Int64 => match kind.as_deref() {
                    Some("sequence") => {
                        let get = |k: &str, d: i64| -> Result<i64> {
                            match options.get(&key(k)) {
                                None => Ok(d),
                                Some(v) => v.trim().parse().map_err(|_| {
                                    ConnectorError::Options(format!(
                                        "option {} must be an integer, not '{v}'",
                                        key(k)
                                    ))
                                }),
                            }
                        };
                        let start = get("start", 0)?;
                        let end = get("end", i64::MAX)?;
                        if end < start {
                            return Err(ConnectorError::Options(format!(
                                "{} is before {}",
                                key("end"),
                                key("start")
                            )));
                        }
                        FieldGen::Sequence { start, end }
                    }
                    None | Some("random") => {
                        let (min, max) = int_range(0, 32767)?;
                        if max < min {
                            return Err(ConnectorError::Options(format!(
                                "{} is below {}",
                                key("max"),
                                key("min")
                            )));
                        }
                        FieldGen::RandomInt { min, max, seed }
                    }
                    Some(other) => {
                        return Err(ConnectorError::Options(format!(
                            "{} must be 'random' or 'sequence', not '{other}'",
                            key("kind")
                        )))
                    }
                },
                DataType::Float32 | DataType::Float64 => FieldGen::RandomFloat {
                    min: options.f64(&key("min"), 0.0)?,
                    max: options.f64(&key("max"), 32767.0)?,
                    seed,
                },
                DataType::Utf8 => FieldGen::Text {
                    length: options.u64(&key("length"), 10)?.min(1 << 20) as usize,
                    seed,
                },
                DataType::Boolean => FieldGen::Bool { seed },
                DataType::Timestamp(TimeUnit::Microsecond, _) => FieldGen::Timestamp {
                    base_us: base_time_ms.saturating_mul(1000),
                    max_past_us: match options.get(&key("max_past")) {
                        Some(v) => duration_us(&key("max_past"), v)?,
                        None => 86_400_000_000,
                    },
                    seed,
                },
                other => {
                    return Err(ConnectorError::Schema(format!(
                        "datagen cannot generate column {name} of type {other}"
                    )))
                }
            };
            if !matches!(gen, FieldGen::Sequence { .. } | FieldGen::RandomInt { .. })
                && kind.as_deref().is_some_and(|k| k != "random")
            {
                return Err(ConnectorError::Options(format!(
                    "{} can only be 'random' for a column of type {}",
                    key("kind"),
                    f.data_type()
                )));
            }
            fields.push(gen);
        }
        let rows_per_second = options.f64("datagen.rows.per.second", 10.0)?;
        let split_num = options.u64("datagen.split.num", 1)?;
        if split_num == 0 || split_num > 1024 {
            return Err(ConnectorError::Options(
                "datagen.split.num must be between 1 and 1024".into(),
            ));
        }
        Ok(Self {
            schema,
            fields,
            rows_per_second,
            split_num,
        })
    }

    pub fn splits(&self) -> Vec<DatagenSplit> {
        (0..self.split_num)
            .map(|index| DatagenSplit {
                config: self.clone(),
                index,
                position: 0,
            })
            .collect()
    }
}

/// One split: rows `index + k * split_num` of the source.
#[derive(Debug, Clone)]
pub struct DatagenSplit {
    config: DatagenConfig,
    index: u64,
    position: u64,
}

impl DatagenSplit {
    fn row_number(&self, k: u64) -> u64 {
        self.index + k * self.config.split_num
    }

    fn exhausted(&self) -> bool {
        let g = self.row_number(self.position);
        self.config.fields.iter().any(|f| match f {
            FieldGen::Sequence { start, end } => {
                i64::try_from(g).map_or(true, |g| start.checked_add(g).is_none_or(|v| v > *end))
            }
            _ => false,
        })
    }
}

impl Split for DatagenSplit {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.config.schema)
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>> {
        if self.exhausted() {
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(max.min(1 << 16));
        while rows.len() < max && !self.exhausted() {
            rows.push(self.row_number(self.position));
            self.position += 1;
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.config.fields.len());
        for (gen, field) in self.config.fields.iter().zip(self.config.schema.fields()) {
            let ty = field.data_type();
            let column: ArrayRef = match gen {
                FieldGen::Sequence { start, .. } => {
                    let vals = rows.iter().map(|g| start.saturating_add(*g as i64));
                    int_column(ty, vals)?
                }
                FieldGen::RandomInt { min, max, seed } => {
                    let span = (*max as i128 - *min as i128 + 1) as u128;
                    let vals = rows.iter().map(|g| {
                        let mut r = Rng::for_item(*seed, *g);
                        let off = ((u128::from(r.next_u64()) * span) >> 64) as i128;
                        (*min as i128 + off) as i64
                    });
                    int_column(ty, vals)?
                }
                FieldGen::RandomFloat { min, max, seed } => {
                    let vals = rows
                        .iter()
                        .map(|g| min + Rng::for_item(*seed, *g).unit() * (max - min));
                    if *ty == DataType::Float32 {
                        let mut b = Float32Builder::with_capacity(rows.len());
                        vals.for_each(|v| b.append_value(v as f32));
                        Arc::new(b.finish())
                    } else {
                        let mut b = Float64Builder::with_capacity(rows.len());
                        vals.for_each(|v| b.append_value(v));
                        Arc::new(b.finish())
                    }
                }
                FieldGen::Text { length, seed } => {
                    let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * length);
                    let mut s = String::with_capacity(*length);
                    for g in &rows {
                        s.clear();
                        Rng::for_item(*seed, *g).string(*length, &mut s);
                        b.append_value(&s);
                    }
                    Arc::new(b.finish())
                }
                FieldGen::Bool { seed } => {
                    let mut b = BooleanBuilder::with_capacity(rows.len());
                    for g in &rows {
                        b.append_value(Rng::for_item(*seed, *g).below(2) == 1);
                    }
                    Arc::new(b.finish())
                }
                FieldGen::Timestamp {
                    base_us,
                    max_past_us,
                    seed,
                } => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
                    for g in &rows {
                        let past = Rng::for_item(*seed, *g).below(*max_past_us as u64 + 1) as i64;
                        b.append_value(base_us - past);
                    }
                    let a = b.finish();
                    match ty {
                        DataType::Timestamp(_, Some(tz)) => Arc::new(a.with_timezone(tz.as_ref())),
                        _ => Arc::new(a),
                    }
                }
            };
            columns.push(column);
        }
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.config.schema),
            columns,
        )?))
    }

    fn offset(&self) -> u64 {
        self.position
    }

    fn end_offset(&self) -> Option<u64> {
        // Rows k with start + index + k * split_num <= end, for the tightest sequence.
        let step = self.config.split_num.max(1);
        self.config
            .fields
            .iter()
            .filter_map(|f| match f {
                FieldGen::Sequence { start, end } => {
                    let room = i128::from(*end) - i128::from(*start) - i128::from(self.index);
                    Some(if room < 0 {
                        0
                    } else {
                        u64::try_from(room / i128::from(step) + 1).unwrap_or(u64::MAX)
                    })
                }
                _ => None,
            })
            .min()
    }

    fn seek(&mut self, offset: u64) {
        self.position = offset;
    }

    fn rate(&self) -> Option<f64> {
        (self.config.rows_per_second > 0.0)
            .then(|| self.config.rows_per_second / self.config.split_num as f64)
    }
}

fn int_column(ty: &DataType, vals: impl Iterator<Item = i64>) -> Result<ArrayRef> {
    let narrow = |v: i64, t: &str| {
        ConnectorError::Options(format!("generated value {v} does not fit in {t}"))
    };
    Ok(match ty {
        DataType::Int16 => {
            let mut b = Int16Builder::new();
            for v in vals {
                b.append_value(i16::try_from(v).map_err(|_| narrow(v, "SMALLINT"))?);
            }
            Arc::new(b.finish())
        }
        DataType::Int32 => {
            let mut b = Int32Builder::new();
            for v in vals {
                b.append_value(i32::try_from(v).map_err(|_| narrow(v, "INT"))?);
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = Int64Builder::new();
            vals.for_each(|v| b.append_value(v));
            Arc::new(b.finish())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Field, Int64Type, Schema};

    fn source(opts: &[(&str, &str)]) -> Result<DatagenConfig> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Int32, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let options = Options::new(opts.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let c = DatagenConfig::from_options(&options, schema, 1_700_000_000_000)?;
        options.check_all_used()?;
        Ok(c)
    }

    /// Each split knows where it ends: the rows it produces until it is exhausted.
    #[test]
    fn end_offsets_count_the_rows_each_split_produces() {
        for (start, end, splits) in [("1", "10", "3"), ("5", "104", "2"), ("7", "7", "4")] {
            let c = source(&[
                ("fields.id.kind", "sequence"),
                ("fields.id.start", start),
                ("fields.id.end", end),
                ("datagen.split.num", splits),
            ])
            .unwrap();
            for mut split in c.splits() {
                let expected = split.end_offset();
                let mut produced = 0;
                while let Some(b) = split.next_batch(3).unwrap() {
                    produced += b.num_rows() as u64;
                }
                assert_eq!(
                    expected,
                    Some(produced),
                    "{start}..={end} over {splits} splits"
                );
                assert_eq!(split.offset(), produced);
            }
        }
        // Without a sequence a split never ends.
        let c = source(&[]).unwrap();
        assert!(c.splits().iter().all(|s| s.end_offset().is_none()));
    }

    #[test]
    fn sequences_end_and_randoms_stay_in_range() {
        let c = source(&[
            ("fields.id.kind", "sequence"),
            ("fields.id.start", "5"),
            ("fields.id.end", "104"),
            ("fields.v.min", "-3"),
            ("fields.v.max", "3"),
            ("fields.ts.max_past", "1h"),
            ("datagen.split.num", "2"),
        ])
        .unwrap();
        let mut ids = Vec::new();
        for mut s in c.splits() {
            while let Some(b) = s.next_batch(7).unwrap() {
                ids.extend(
                    b.column(0)
                        .as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .copied(),
                );
                let v = b.column(1).as_primitive::<arrow::datatypes::Int32Type>();
                assert!(v.values().iter().all(|x| (-3..=3).contains(x)));
                let ts = b
                    .column(3)
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
                let base = 1_700_000_000_000_000i64;
                assert!(ts
                    .values()
                    .iter()
                    .all(|t| *t <= base && *t >= base - 3_600_000_000));
                assert!(b
                    .column(2)
                    .as_string::<i32>()
                    .iter()
                    .all(|s| s.unwrap().len() == 10));
            }
        }
        ids.sort();
        assert_eq!(ids, (5..=104).collect::<Vec<i64>>());
    }

    #[test]
    fn resuming_repeats_nothing() {
        let c = source(&[("fields.id.kind", "sequence")]).unwrap();
        let mut a = c.splits().remove(0);
        let first = a.next_batch(10).unwrap().unwrap();
        let second = a.next_batch(10).unwrap().unwrap();
        let mut b = c.splits().remove(0);
        b.seek(10);
        assert_eq!(b.next_batch(10).unwrap().unwrap(), second);
        assert_ne!(first, second);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(source(&[("fields.v.kind", "zigzag")]).is_err());
        assert!(source(&[("fields.v.min", "9"), ("fields.v.max", "1")]).is_err());
        assert!(source(&[("fields.name.kind", "sequence")]).is_err());
        assert!(source(&[("fields.ts.max_past", "3 parsecs")]).is_err());
        let e = source(&[("fields.nope.kind", "random")]).unwrap_err();
        assert!(e.to_string().contains("unknown option"));
    }
}
