//! Hash aggregate over a changelog: per-group accumulators that accept retractions.
//!
//! Input columns are `[group columns..., argument columns...]` (a projection before the
//! aggregate computes them). Each epoch the operator updates the groups touched by the
//! epoch's changes and, at the barrier, emits for each group whose result changed a −1 of
//! the old result row and a +1 of the new one. COUNT/SUM/AVG keep sums and counts;
//! STDDEV/VARIANCE keep the count, sum and sum of squares (exact in i128 over integers);
//! MIN and MAX keep the ordered multiset of values, so deleting the current minimum is
//! exact; STRING_AGG and ARRAY_AGG keep the multiset of values ordered by their
//! `ORDER BY` key. A `DISTINCT` call keeps per group how often each value occurs and
//! feeds its accumulator only when a value appears or disappears.

use std::collections::BTreeMap;
use std::sync::Arc;

use ahash::AHashSet as HashSet;
use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
};
use arrow::compute::{cast, SortOptions};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use arrow::row::Rows;
use datafusion::common::ScalarValue;
use hashbrown::hash_map::EntryRef;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::codec::{join_prefixed, put_bytes, split_prefixed, Reader, Writer};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
pub use crate::ops::partial::Offload;
use crate::ops::partial::{
    gpu_key_type, partial_sums, CallInput, CallKind, CallSums, GpuHealth, Partials, RunBuffer,
};
use crate::ops::watermark::{behind_watermarks, raise};
use crate::row::{Partitioner, RowCodec};

/// Keyed by encoded bytes, looked up by slice: an absent key is copied only to insert it.
type HashMap<V> = hashbrown::HashMap<Vec<u8>, V>;

/// The aggregate functions that can be maintained under retraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    BoolAnd,
    BoolOr,
    VarSamp,
    VarPop,
    StddevSamp,
    StddevPop,
    /// STRING_AGG(value, separator)
    StringAgg,
    ArrayAgg,
}

impl AggKind {
    pub fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Avg => "avg",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::BoolAnd => "bool_and",
            AggKind::BoolOr => "bool_or",
            AggKind::VarSamp => "var_samp",
            AggKind::VarPop => "var_pop",
            AggKind::StddevSamp => "stddev_samp",
            AggKind::StddevPop => "stddev_pop",
            AggKind::StringAgg => "string_agg",
            AggKind::ArrayAgg => "array_agg",
        }
    }
}

/// One aggregate call: its function, the input column of its argument, and the input
/// column of its `FILTER (WHERE ...)` condition, if any (rows where it is not true are
/// skipped by this call only).
#[derive(Debug, Clone)]
pub struct AggCall {
    pub kind: AggKind,
    pub arg: usize,
    pub filter: Option<usize>,
    /// `agg(DISTINCT ...)`: each distinct value counts once.
    pub distinct: bool,
    /// `ORDER BY` inside the call (STRING_AGG, ARRAY_AGG): input columns and directions.
    pub order: Vec<(usize, SortOptions)>,
    /// STRING_AGG's separator.
    pub separator: String,
}

impl AggCall {
    /// A call without DISTINCT, ORDER BY or separator.
    pub fn new(kind: AggKind, arg: usize, filter: Option<usize>) -> Self {
        Self {
            kind,
            arg,
            filter,
            distinct: false,
            order: Vec::new(),
            separator: String::new(),
        }
    }
}

/// The fixed settings of an aggregate.
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    /// The first `group_count` input columns are the group key.
    pub group_count: usize,
    pub calls: Vec<AggCall>,
    pub input_schema: SchemaRef,
    /// `[group columns..., one column per call]`, with the types the plan expects.
    pub output_schema: SchemaRef,
    /// Emit each group once, final, when a watermark on one of its group columns passes
    /// its key (`EMIT ON WINDOW CLOSE`), instead of every change as it happens.
    pub emit_on_window_close: bool,
    /// The input only ever adds rows (the planner proves it). MIN/MAX then keep only
    /// their current value and DISTINCT calls only whether a value was seen, so state
    /// stays small; a retraction arriving anyway is refused as a bug.
    pub append_only_input: bool,
    /// Where COUNT/SUM/AVG-only aggregates sum their input per key over whole batches
    /// before merging into the groups (on the GPU, see [`crate::ops::partial`]); `None`:
    /// row by row on the CPU.
    pub offload: Option<Offload>,
}

impl AggregateSpec {
    /// Whether partial sums can compute this aggregate: a group key of types libcudf
    /// groups by, and only COUNT and SUM/AVG over integers or floats, without DISTINCT.
    /// `Err` says why not.
    pub fn offload_calls(&self) -> std::result::Result<Vec<CallInput>, String> {
        if self.group_count == 0 {
            return Err("a global aggregate (no GROUP BY) has one group".into());
        }
        for f in &self.input_schema.fields()[..self.group_count] {
            if !gpu_key_type(f.data_type()) {
                return Err(format!("group key type {}", f.data_type()));
            }
        }
        self.calls
            .iter()
            .map(|call| {
                let ty = self
                    .input_schema
                    .fields()
                    .get(call.arg)
                    .map(|f| f.data_type().clone())
                    .ok_or("aggregate argument out of range")?;
                if call.distinct || !call.order.is_empty() {
                    return Err(format!("{}(DISTINCT/ORDER BY ...)", call.kind.name()));
                }
                let kind = match method_for(call.kind, &ty).map_err(|e| e.to_string())? {
                    Method::Count => CallKind::Count,
                    // Past i64::MAX the 32-bit halves of an INT64 cast would not hold it.
                    Method::IntSum { .. } if ty == DataType::UInt64 => {
                        return Err(format!("{}({ty})", call.kind.name()))
                    }
                    Method::IntSum { .. } => CallKind::Int,
                    Method::FloatSum { .. } => CallKind::Float,
                    _ => return Err(format!("{}({ty})", call.kind.name())),
                };
                Ok(CallInput {
                    kind,
                    arg: call.arg,
                    filter: call.filter,
                })
            })
            .collect()
    }
}

/// A retraction where the planner said the input only adds rows: a planning bug, which
/// stops the view rather than corrupt what it keeps.
fn retraction_on_append_only() -> DataflowError {
    DataflowError::Internal("a retraction reached an aggregate over an append-only input".into())
}

/// How a call accumulates, chosen from its function and argument type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Count,
    /// SUM/AVG over integers, exact in i128.
    IntSum {
        avg: bool,
    },
    FloatSum {
        avg: bool,
    },
    /// SUM/AVG over decimals of `scale`, exact in i128.
    DecSum {
        avg: bool,
        scale: i8,
    },
    Ordered {
        max: bool,
    },
    Bool {
        and: bool,
    },
    /// Variance or standard deviation, sample or population.
    Moments {
        int: bool,
        sample: bool,
        sqrt: bool,
    },
    /// STRING_AGG (`string`) or ARRAY_AGG.
    Collect {
        string: bool,
    },
}

#[derive(Debug, Clone)]
enum Acc {
    Count(i64),
    Int {
        sum: i128,
        n: i64,
    },
    Float {
        sum: f64,
        n: i64,
    },
    Ordered(BTreeMap<Vec<u8>, i64>),
    Bools {
        trues: i64,
        falses: i64,
    },
    IntMoments {
        n: i64,
        sum: i128,
        sumsq: i128,
    },
    FloatMoments {
        n: i64,
        sum: f64,
        sumsq: f64,
    },
    /// (order key, value) → multiplicity.
    Collect(BTreeMap<(Vec<u8>, Vec<u8>), i64>),
}

#[derive(Debug, Clone, PartialEq)]
enum OutVal {
    Int(Option<i128>),
    Float(Option<f64>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
    /// Encoded values in order (STRING_AGG, ARRAY_AGG); None over no values.
    Seq(Option<Vec<Vec<u8>>>),
}

#[derive(Debug, Clone)]
struct Group {
    rows: i64,
    accs: Vec<Acc>,
    /// Per call: for DISTINCT calls, how often each value occurs.
    distinct: Vec<Option<HashMap<i64>>>,
    /// Touched this epoch: its result before the epoch (`Some(None)`: it had no row).
    before: Option<Option<Vec<OutVal>>>,
    /// Over an append-only input, per call: the DISTINCT values first seen this epoch,
    /// each as `len (u32, little endian) ++ value`; empty until a value is.
    fresh: Vec<Vec<u8>>,
}

/// Extra digits DataFusion gives AVG over decimals.
const AVG_DEC_EXTRA_SCALE: i8 = 4;

pub struct AggregateOp {
    spec: AggregateSpec,
    methods: Vec<Method>,
    key_codec: RowCodec,
    /// For MIN/MAX, STRING_AGG/ARRAY_AGG and DISTINCT calls: the codec of the argument.
    value_codecs: Vec<Option<RowCodec>>,
    /// For calls with ORDER BY: the codec of their order key.
    order_codecs: Vec<Option<RowCodec>>,
    /// Groups: key → row count and accumulators.
    table: StateTableId,
    /// DISTINCT calls' values, kept apart from the group so that an epoch writes only
    /// the values it changed. Under retractions one entry per value:
    /// `join_prefixed(group key, call (u16, big endian) ++ value)` → multiplicity (i64,
    /// little endian). Over an append-only input a value, once seen, stays: one entry
    /// per group, call and epoch holds the values first seen in that epoch,
    /// `join_prefixed(group key, call ++ epoch (u64, big endian))` → `len ++ value`...
    /// (a few large writes where there were many small ones, which RocksDB sorts on
    /// every flush).
    distinct_table: StateTableId,
    partitioner: Partitioner,
    groups: HashMap<Group>,
    /// DISTINCT values changed this epoch (under retractions), as their state keys in
    /// `distinct_table`.
    distinct_dirty: HashSet<Vec<u8>>,
    /// The keys of the groups touched this epoch (their `before` is set).
    dirty: Vec<Vec<u8>>,
    /// Per group column: the input watermark (groups with a key below it are closed).
    watermarks: Vec<Option<ScalarValue>>,
    /// The watermarks the last purge used: a purge runs when one advanced.
    purged_at: Vec<Option<ScalarValue>>,
    /// With an offload: the calls as partial sums take them, and the input buffered
    /// since the last run.
    offload: Option<(Offload, Vec<CallInput>)>,
    pending: RunBuffer,
    /// How its partial-sum runs on the GPU have gone.
    gpu_health: GpuHealth,
}

impl AggregateOp {
    pub fn try_new(
        spec: AggregateSpec,
        [table, distinct_table]: [StateTableId; 2],
        partitioner: Partitioner,
    ) -> Result<Self> {
        let input = &spec.input_schema;
        let key_types = input.fields()[..spec.group_count]
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        if spec.calls.len() > usize::from(u16::MAX) {
            return Err(DataflowError::user(
                "54000",
                format!("too many aggregate calls: {}", spec.calls.len()),
            ));
        }
        let mut methods = Vec::new();
        let mut value_codecs = Vec::new();
        let mut order_codecs = Vec::new();
        for call in &spec.calls {
            let ty = input
                .fields()
                .get(call.arg)
                .ok_or_else(|| DataflowError::Internal("aggregate argument out of range".into()))?
                .data_type()
                .clone();
            let method = method_for(call.kind, &ty)?;
            let needs_codec =
                call.distinct || matches!(method, Method::Ordered { .. } | Method::Collect { .. });
            value_codecs.push(if needs_codec {
                Some(RowCodec::new(vec![ty])?)
            } else {
                None
            });
            order_codecs.push(if call.order.is_empty() {
                None
            } else {
                let types = call
                    .order
                    .iter()
                    .map(|(c, _)| {
                        input
                            .fields()
                            .get(*c)
                            .map(|f| f.data_type().clone())
                            .ok_or_else(|| {
                                DataflowError::Internal(
                                    "aggregate order column out of range".into(),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(RowCodec::with_options(
                    types,
                    call.order.iter().map(|(_, o)| *o).collect(),
                )?)
            });
            methods.push(method);
        }
        let offload = match &spec.offload {
            Some(o) => match spec.offload_calls() {
                Ok(calls) => Some((o.clone(), calls)),
                Err(why) => {
                    return Err(DataflowError::Internal(format!(
                        "aggregate planned for partial sums it cannot take: {why}"
                    )))
                }
            },
            None => None,
        };
        Ok(Self {
            offload,
            pending: RunBuffer::default(),
            gpu_health: GpuHealth::default(),
            order_codecs,
            key_codec: RowCodec::new(key_types)?,
            watermarks: vec![None; spec.group_count],
            purged_at: vec![None; spec.group_count],
            spec,
            methods,
            value_codecs,
            table,
            distinct_table,
            partitioner,
            groups: HashMap::default(),
            distinct_dirty: HashSet::new(),
            dirty: Vec::new(),
        })
    }

    /// Removes the groups whose key lies behind a watermark (no row can reach them any
    /// more). Emitting on window close, each such group's result is emitted now, once.
    fn purge_closed(&mut self, state: &mut StateWriter, out: &mut Vec<ChangeBatch>) -> Result<()> {
        if self.watermarks == self.purged_at || self.groups.is_empty() {
            return Ok(());
        }
        self.purged_at = self.watermarks.clone();
        let keys: Vec<&Vec<u8>> = self.groups.keys().collect();
        let columns = self.key_codec.decode(keys.iter().map(|k| k.as_slice()))?;
        let watermarks: Vec<Option<&ScalarValue>> =
            self.watermarks.iter().map(Option::as_ref).collect();
        let Some(behind) = behind_watermarks(&columns, &watermarks)? else {
            return Ok(());
        };
        let closed: Vec<Vec<u8>> = keys
            .iter()
            .zip(behind)
            .filter(|(_, b)| *b)
            .map(|(k, _)| (*k).clone())
            .collect();
        let mut emitted: Vec<(Vec<u8>, Vec<OutVal>)> = Vec::new();
        for key in closed {
            if let Some(g) = self.groups.remove(&key) {
                if self.spec.emit_on_window_close && g.rows > 0 {
                    emitted.push((key.clone(), outputs(&self.methods, &g)));
                }
                if self.spec.append_only_input {
                    if g.distinct.iter().any(Option::is_some) {
                        // All of the group's entries, whatever epochs they came from.
                        state.delete_prefix(self.distinct_table, &join_prefixed(&key, &[]));
                    }
                } else {
                    for (c, values) in g.distinct.iter().enumerate() {
                        for value in values.iter().flat_map(|v| v.keys()) {
                            state.delete(self.distinct_table, &distinct_key(&key, c, value));
                        }
                    }
                }
            }
            state.delete(self.table, &key);
        }
        if !emitted.is_empty() {
            let rows: Vec<(&[u8], &[OutVal], i64)> = emitted
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice(), 1))
                .collect();
            out.push(self.build_output(&rows)?);
        }
        Ok(())
    }

    fn is_global(&self) -> bool {
        self.spec.group_count == 0
    }

    fn new_group(&self) -> Group {
        new_group(&self.methods, &self.spec.calls)
    }

    /// Per-call argument arrays prepared for accumulation.
    fn prepare_args(&self, data: &RecordBatch) -> Result<Vec<PreparedArg>> {
        let missing = || DataflowError::Internal("missing value codec".into());
        self.spec
            .calls
            .iter()
            .zip(&self.methods)
            .enumerate()
            .map(|(c, (call, m))| {
                let col = data.column(call.arg);
                Ok(match m {
                    Method::Count => PreparedArg::Nulls(Arc::clone(col)),
                    Method::IntSum { .. } | Method::Moments { int: true, .. } => {
                        PreparedArg::Int(cast(col, &DataType::Int64)?)
                    }
                    Method::FloatSum { .. } | Method::Moments { int: false, .. } => {
                        PreparedArg::Float(cast(col, &DataType::Float64)?)
                    }
                    Method::DecSum { .. } => PreparedArg::Dec(Arc::clone(col)),
                    Method::Bool { .. } => PreparedArg::Bool(cast(col, &DataType::Boolean)?),
                    Method::Ordered { .. } => {
                        let codec = self.value_codecs[c].as_ref().ok_or_else(missing)?;
                        PreparedArg::Ordered(
                            Arc::clone(col),
                            codec.encode(std::slice::from_ref(col))?,
                        )
                    }
                    Method::Collect { string } => {
                        let codec = self.value_codecs[c].as_ref().ok_or_else(missing)?;
                        let order = match &self.order_codecs[c] {
                            Some(oc) => {
                                let cols: Vec<ArrayRef> = call
                                    .order
                                    .iter()
                                    .map(|(i, _)| Arc::clone(data.column(*i)))
                                    .collect();
                                Some(oc.encode(&cols)?)
                            }
                            None => None,
                        };
                        PreparedArg::Collect {
                            values: Arc::clone(col),
                            encoded: codec.encode(std::slice::from_ref(col))?,
                            order,
                            skip_nulls: *string,
                        }
                    }
                })
            })
            .collect()
    }

    /// For DISTINCT calls: each row's encoded argument.
    fn distinct_values(&self, data: &RecordBatch) -> Result<Vec<Option<Rows>>> {
        self.spec
            .calls
            .iter()
            .zip(&self.value_codecs)
            .map(|(call, codec)| match (call.distinct, codec) {
                (true, Some(codec)) => Ok(Some(
                    codec.encode(std::slice::from_ref(data.column(call.arg)))?,
                )),
                (true, None) => Err(DataflowError::Internal("missing value codec".into())),
                _ => Ok(None),
            })
            .collect()
    }

    fn encode_group(g: &Group) -> Vec<u8> {
        let mut w = Writer::default();
        w.i64(g.rows);
        for acc in &g.accs {
            match acc {
                Acc::Count(c) => {
                    w.u8(0).i64(*c);
                }
                Acc::Int { sum, n } => {
                    w.u8(1).i128(*sum).i64(*n);
                }
                Acc::Float { sum, n } => {
                    w.u8(2).f64(*sum).i64(*n);
                }
                Acc::Ordered(values) => {
                    w.u8(3).i64(values.len() as i64);
                    for (v, c) in values {
                        w.bytes(v).i64(*c);
                    }
                }
                Acc::Bools { trues, falses } => {
                    w.u8(4).i64(*trues).i64(*falses);
                }
                Acc::IntMoments { n, sum, sumsq } => {
                    w.u8(5).i64(*n).i128(*sum).i128(*sumsq);
                }
                Acc::FloatMoments { n, sum, sumsq } => {
                    w.u8(6).i64(*n).f64(*sum).f64(*sumsq);
                }
                Acc::Collect(values) => {
                    w.u8(7).i64(values.len() as i64);
                    for ((o, v), c) in values {
                        w.bytes(o).bytes(v).i64(*c);
                    }
                }
            }
        }
        // DISTINCT values are entries of their own (`distinct_table`).
        for _ in &g.distinct {
            w.u8(0);
        }
        w.finish()
    }

    fn decode_group(&self, bytes: &[u8]) -> Result<Group> {
        let mut r = Reader::new(bytes);
        let rows = r.i64()?;
        let mut accs = Vec::with_capacity(self.methods.len());
        for _ in &self.methods {
            accs.push(match r.u8()? {
                0 => Acc::Count(r.i64()?),
                1 => Acc::Int {
                    sum: r.i128()?,
                    n: r.i64()?,
                },
                2 => Acc::Float {
                    sum: r.f64()?,
                    n: r.i64()?,
                },
                3 => {
                    let n = r.i64()?;
                    let mut values = BTreeMap::new();
                    for _ in 0..n {
                        let v = r.bytes()?.to_vec();
                        values.insert(v, r.i64()?);
                    }
                    Acc::Ordered(values)
                }
                4 => Acc::Bools {
                    trues: r.i64()?,
                    falses: r.i64()?,
                },
                5 => Acc::IntMoments {
                    n: r.i64()?,
                    sum: r.i128()?,
                    sumsq: r.i128()?,
                },
                6 => Acc::FloatMoments {
                    n: r.i64()?,
                    sum: r.f64()?,
                    sumsq: r.f64()?,
                },
                7 => {
                    let n = r.i64()?;
                    let mut values = BTreeMap::new();
                    for _ in 0..n {
                        let o = r.bytes()?.to_vec();
                        let v = r.bytes()?.to_vec();
                        values.insert((o, v), r.i64()?);
                    }
                    Acc::Collect(values)
                }
                t => {
                    return Err(DataflowError::Corrupt(format!(
                        "unknown accumulator tag {t}"
                    )))
                }
            });
        }
        let mut distinct = Vec::with_capacity(self.methods.len());
        for call in &self.spec.calls {
            distinct.push(match r.u8()? {
                0 => call.distinct.then(HashMap::default),
                _ => {
                    let n = r.i64()?;
                    let mut values = HashMap::default();
                    for _ in 0..n {
                        let v = r.bytes()?.to_vec();
                        values.insert(v, r.i64()?);
                    }
                    Some(values)
                }
            });
        }
        Ok(Group {
            rows,
            accs,
            distinct,
            before: None,
            fresh: Vec::new(),
        })
    }

    /// Builds output rows `(group key, result values)` with their weights.
    fn build_output(&self, rows: &[(&[u8], &[OutVal], i64)]) -> Result<ChangeBatch> {
        let out_schema = &self.spec.output_schema;
        let mut columns: Vec<ArrayRef> = if self.is_global() {
            Vec::new()
        } else {
            self.key_codec.decode(rows.iter().map(|(k, _, _)| *k))?
        };
        for (c, m) in self.methods.iter().enumerate() {
            let vals = rows.iter().map(|(_, v, _)| &v[c]);
            let array: ArrayRef = match m {
                Method::Count | Method::IntSum { avg: false } => Arc::new(
                    vals.map(|v| match v {
                        OutVal::Int(Some(x)) => i64::try_from(*x)
                            .map(Some)
                            .map_err(|_| DataflowError::user("22003", "bigint out of range")),
                        _ => Ok(None),
                    })
                    .collect::<Result<Int64Array>>()?,
                ),
                Method::Collect { string } => {
                    let codec = self.value_codecs[c]
                        .as_ref()
                        .ok_or_else(|| DataflowError::Internal("missing value codec".into()))?;
                    let sep = self.spec.calls[c].separator.as_str();
                    let field = self.spec.output_schema.field(self.spec.group_count + c);
                    collect_output(codec, vals, *string, sep, field.data_type())?
                }
                Method::IntSum { avg: true } | Method::FloatSum { .. } | Method::Moments { .. } => {
                    Arc::new(
                        vals.map(|v| match v {
                            OutVal::Float(x) => *x,
                            _ => None,
                        })
                        .collect::<Float64Array>(),
                    )
                }
                Method::DecSum { avg, scale } => {
                    let scale = if *avg {
                        scale + AVG_DEC_EXTRA_SCALE
                    } else {
                        *scale
                    };
                    Arc::new(
                        vals.map(|v| match v {
                            OutVal::Int(x) => *x,
                            _ => None,
                        })
                        .collect::<Decimal128Array>()
                        .with_precision_and_scale(38, scale)?,
                    )
                }
                Method::Bool { .. } => Arc::new(
                    vals.map(|v| match v {
                        OutVal::Bool(x) => *x,
                        _ => None,
                    })
                    .collect::<arrow::array::BooleanArray>(),
                ),
                Method::Ordered { .. } => {
                    let codec = self.value_codecs[c]
                        .as_ref()
                        .ok_or_else(|| DataflowError::Internal("missing value codec".into()))?;
                    let present: Vec<&[u8]> = rows
                        .iter()
                        .filter_map(|(_, v, _)| match &v[c] {
                            OutVal::Bytes(Some(b)) => Some(b.as_slice()),
                            _ => None,
                        })
                        .collect();
                    let decoded = if present.is_empty() {
                        arrow::array::new_empty_array(&codec.types()[0])
                    } else {
                        codec.decode(present)?.remove(0)
                    };
                    // Spread decoded values back over rows, NULL where there was none.
                    let mut idx = 0u32;
                    let take: arrow::array::UInt32Array = rows
                        .iter()
                        .map(|(_, v, _)| match &v[c] {
                            OutVal::Bytes(Some(_)) => {
                                idx += 1;
                                Some(idx - 1)
                            }
                            _ => None,
                        })
                        .collect();
                    arrow::compute::take(&decoded, &take, None)?
                }
            };
            columns.push(array);
        }
        let data = batch_with_schema(out_schema, columns, rows.len())?;
        ChangeBatch::try_new(data, rows.iter().map(|(_, _, w)| *w).collect())
    }
}

/// A group before any row.
fn new_group(methods: &[Method], calls: &[AggCall]) -> Group {
    Group {
        rows: 0,
        accs: methods
            .iter()
            .map(|m| match m {
                Method::Count => Acc::Count(0),
                Method::IntSum { .. } | Method::DecSum { .. } => Acc::Int { sum: 0, n: 0 },
                Method::FloatSum { .. } => Acc::Float { sum: 0.0, n: 0 },
                Method::Ordered { .. } => Acc::Ordered(BTreeMap::new()),
                Method::Bool { .. } => Acc::Bools {
                    trues: 0,
                    falses: 0,
                },
                Method::Moments { int: true, .. } => Acc::IntMoments {
                    n: 0,
                    sum: 0,
                    sumsq: 0,
                },
                Method::Moments { int: false, .. } => Acc::FloatMoments {
                    n: 0,
                    sum: 0.0,
                    sumsq: 0.0,
                },
                Method::Collect { .. } => Acc::Collect(BTreeMap::new()),
            })
            .collect(),
        distinct: calls
            .iter()
            .map(|c| c.distinct.then(HashMap::default))
            .collect(),
        before: None,
        fresh: Vec::new(),
    }
}

/// A group's result values, one per call.
fn outputs(methods: &[Method], g: &Group) -> Vec<OutVal> {
    g.accs
        .iter()
        .zip(methods)
        .map(|(acc, m)| match (acc, m) {
            (Acc::Count(c), _) => OutVal::Int(Some(i128::from(*c))),
            (
                Acc::Int { sum, n },
                Method::IntSum { avg: false } | Method::DecSum { avg: false, .. },
            ) => OutVal::Int((*n > 0).then_some(*sum)),
            (Acc::Int { sum, n }, Method::IntSum { avg: true }) => {
                OutVal::Float((*n > 0).then(|| *sum as f64 / *n as f64))
            }
            (Acc::Int { sum, n }, Method::DecSum { avg: true, .. }) => {
                OutVal::Int((*n > 0).then(|| {
                    div_round(
                        sum.saturating_mul(10i128.pow(AVG_DEC_EXTRA_SCALE as u32)),
                        i128::from(*n),
                    )
                }))
            }
            (Acc::Float { sum, n }, Method::FloatSum { avg }) => {
                OutVal::Float((*n > 0).then(|| if *avg { *sum / *n as f64 } else { *sum }))
            }
            (Acc::Bools { trues, falses }, Method::Bool { and }) => {
                OutVal::Bool((trues + falses > 0).then_some(if *and {
                    *falses == 0
                } else {
                    *trues > 0
                }))
            }
            (Acc::Ordered(values), Method::Ordered { max }) => OutVal::Bytes(if *max {
                values.keys().next_back().cloned()
            } else {
                values.keys().next().cloned()
            }),
            (Acc::IntMoments { n, sum, sumsq }, Method::Moments { sample, sqrt, .. }) => {
                OutVal::Float(moments_int(*n, *sum, *sumsq, *sample, *sqrt))
            }
            (Acc::FloatMoments { n, sum, sumsq }, Method::Moments { sample, sqrt, .. }) => {
                OutVal::Float(moments_float(*n, *sum, *sumsq, *sample, *sqrt))
            }
            (Acc::Collect(values), Method::Collect { .. }) => {
                OutVal::Seq((!values.is_empty()).then(|| {
                    values
                        .iter()
                        .flat_map(|((_, v), c)| {
                            std::iter::repeat_n(v.clone(), usize::try_from(*c).unwrap_or(0))
                        })
                        .collect()
                }))
            }
            // Accumulators are built from their methods; any other pairing is a bug
            // caught by the output builder as a type error.
            _ => OutVal::Int(None),
        })
        .collect()
}

enum PreparedArg {
    Nulls(ArrayRef),
    Bool(ArrayRef),
    Int(ArrayRef),
    Float(ArrayRef),
    Dec(ArrayRef),
    Ordered(ArrayRef, Rows),
    Collect {
        values: ArrayRef,
        encoded: Rows,
        order: Option<Rows>,
        skip_nulls: bool,
    },
}

/// Adds `w` copies of row `i`'s argument to an accumulator.
fn accumulate(acc: &mut Acc, arg: &PreparedArg, i: usize, w: i64) -> Result<()> {
    match (acc, arg) {
        (Acc::Count(c), PreparedArg::Nulls(a)) => {
            if a.is_valid(i) {
                *c += w;
            }
        }
        (Acc::Int { sum, n }, PreparedArg::Int(a)) => {
            if a.is_valid(i) {
                *sum = sum.saturating_add(
                    i128::from(a.as_primitive::<Int64Type>().value(i)) * i128::from(w),
                );
                *n += w;
            }
        }
        (Acc::Int { sum, n }, PreparedArg::Dec(a)) => {
            if a.is_valid(i) {
                let v = a
                    .as_primitive::<arrow::datatypes::Decimal128Type>()
                    .value(i);
                *sum = sum.saturating_add(v.saturating_mul(i128::from(w)));
                *n += w;
            }
        }
        (Acc::Float { sum, n }, PreparedArg::Float(a)) => {
            if a.is_valid(i) {
                *sum += a.as_primitive::<Float64Type>().value(i) * w as f64;
                *n += w;
            }
        }
        (Acc::IntMoments { n, sum, sumsq }, PreparedArg::Int(a)) => {
            if a.is_valid(i) {
                let v = i128::from(a.as_primitive::<Int64Type>().value(i));
                *n += w;
                *sum = sum.saturating_add(v * i128::from(w));
                *sumsq = sumsq.saturating_add(v.saturating_mul(v).saturating_mul(i128::from(w)));
            }
        }
        (Acc::FloatMoments { n, sum, sumsq }, PreparedArg::Float(a)) => {
            if a.is_valid(i) {
                let v = a.as_primitive::<Float64Type>().value(i);
                *n += w;
                *sum += v * w as f64;
                *sumsq += v * v * w as f64;
            }
        }
        (Acc::Bools { trues, falses }, PreparedArg::Bool(a)) => {
            if a.is_valid(i) {
                if a.as_boolean().value(i) {
                    *trues += w;
                } else {
                    *falses += w;
                }
            }
        }
        (Acc::Ordered(values), PreparedArg::Ordered(a, rows)) => {
            if a.is_valid(i) {
                add_count(values, rows.row(i).data(), w);
            }
        }
        (
            Acc::Collect(values),
            PreparedArg::Collect {
                values: a,
                encoded,
                order,
                skip_nulls,
            },
        ) => {
            if a.is_valid(i) || !skip_nulls {
                let o = order
                    .as_ref()
                    .map(|o| o.row(i).data().to_vec())
                    .unwrap_or_default();
                let key = (o, encoded.row(i).data().to_vec());
                let c = values.entry(key.clone()).or_insert(0);
                *c += w;
                if *c == 0 {
                    values.remove(&key);
                }
            }
        }
        _ => {
            return Err(DataflowError::Internal(
                "accumulator/argument mismatch".into(),
            ))
        }
    }
    Ok(())
}

/// The state key of a DISTINCT call's value in its group (the layout of
/// [`crate::codec::join_prefixed`], built in one allocation).
fn distinct_key(group: &[u8], call: usize, value: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + group.len() + 2 + value.len());
    k.extend_from_slice(&(group.len() as u32).to_le_bytes());
    k.extend_from_slice(group);
    k.extend_from_slice(&(call as u16).to_be_bytes());
    k.extend_from_slice(value);
    k
}

/// Append-only MIN/MAX: only the current extreme can still be the result.
fn keep_extreme(values: &mut BTreeMap<Vec<u8>, i64>, max: bool) {
    while values.len() > 1 {
        if max {
            values.pop_first();
        } else {
            values.pop_last();
        }
    }
}

/// Adds `w` to the count of a DISTINCT call's `value`, removing it at zero; returns the
/// count before.
fn add_distinct(values: &mut HashMap<i64>, value: &[u8], w: i64) -> i64 {
    match values.get_mut(value) {
        Some(c) => {
            let before = *c;
            *c += w;
            if *c == 0 {
                values.remove(value);
            }
            before
        }
        None => {
            values.insert(value.to_vec(), w);
            0
        }
    }
}

/// Adds `w` to the count of `value`, removing it at zero; returns the count before.
fn add_count(values: &mut BTreeMap<Vec<u8>, i64>, value: &[u8], w: i64) -> i64 {
    match values.get_mut(value) {
        Some(c) => {
            let before = *c;
            *c += w;
            if *c == 0 {
                values.remove(value);
            }
            before
        }
        None => {
            values.insert(value.to_vec(), w);
            0
        }
    }
}

/// Variance (or its square root) from exact integer moments.
fn moments_int(n: i64, sum: i128, sumsq: i128, sample: bool, sqrt: bool) -> Option<f64> {
    let n128 = i128::from(n);
    let denominator = if sample {
        n128 * (n128 - 1)
    } else {
        n128 * n128
    };
    if n <= 0 || denominator <= 0 {
        return None;
    }
    let var = match n128
        .checked_mul(sumsq)
        .and_then(|a| sum.checked_mul(sum).and_then(|b| a.checked_sub(b)))
    {
        Some(numerator) => numerator as f64 / denominator as f64,
        None => moments_float(n, sum as f64, sumsq as f64, sample, false)?,
    };
    Some(if sqrt {
        var.max(0.0).sqrt()
    } else {
        var.max(0.0)
    })
}

/// Variance (or its square root) from floating-point moments.
fn moments_float(n: i64, sum: f64, sumsq: f64, sample: bool, sqrt: bool) -> Option<f64> {
    let nf = n as f64;
    let denominator = if sample { nf * (nf - 1.0) } else { nf * nf };
    if n <= 0 || denominator <= 0.0 {
        return None;
    }
    let var = ((nf * sumsq - sum * sum) / denominator).max(0.0);
    Some(if sqrt { var.sqrt() } else { var })
}

/// STRING_AGG / ARRAY_AGG results from the encoded values of each row.
fn collect_output<'a>(
    codec: &RowCodec,
    vals: impl Iterator<Item = &'a OutVal>,
    string: bool,
    separator: &str,
    out_type: &DataType,
) -> Result<ArrayRef> {
    let seqs: Vec<Option<&Vec<Vec<u8>>>> = vals
        .map(|v| match v {
            OutVal::Seq(s) => s.as_ref(),
            _ => None,
        })
        .collect();
    let all: Vec<&[u8]> = seqs
        .iter()
        .flatten()
        .flat_map(|s| s.iter().map(Vec::as_slice))
        .collect();
    let values = if all.is_empty() {
        arrow::array::new_empty_array(&codec.types()[0])
    } else {
        codec.decode(all)?.remove(0)
    };
    if string {
        let text = cast(&values, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let mut next = 0usize;
        let mut out = arrow::array::StringBuilder::new();
        for seq in &seqs {
            match seq {
                Some(s) => {
                    let mut joined = String::new();
                    for k in 0..s.len() {
                        if k > 0 {
                            joined.push_str(separator);
                        }
                        joined.push_str(text.value(next + k));
                    }
                    next += s.len();
                    out.append_value(joined);
                }
                None => out.append_null(),
            }
        }
        return Ok(Arc::new(out.finish()));
    }
    let field = match out_type {
        DataType::List(f) => Arc::clone(f),
        _ => Arc::new(arrow::datatypes::Field::new_list_field(
            values.data_type().clone(),
            true,
        )),
    };
    let values = if values.data_type() == field.data_type() {
        values
    } else {
        cast(&values, field.data_type())?
    };
    let lengths = seqs.iter().map(|s| s.map_or(0, |s| s.len()));
    let nulls =
        arrow::buffer::NullBuffer::from(seqs.iter().map(Option::is_some).collect::<Vec<_>>());
    Ok(Arc::new(arrow::array::ListArray::try_new(
        field,
        arrow::buffer::OffsetBuffer::from_lengths(lengths),
        values,
        Some(nulls),
    )?))
}

fn method_for(kind: AggKind, ty: &DataType) -> Result<Method> {
    use DataType::*;
    let numeric_int = matches!(
        ty,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
    );
    let float = matches!(ty, Float16 | Float32 | Float64);
    Ok(match kind {
        AggKind::Count => Method::Count,
        AggKind::Min => Method::Ordered { max: false },
        AggKind::Max => Method::Ordered { max: true },
        AggKind::BoolAnd | AggKind::BoolOr if matches!(ty, DataType::Boolean | DataType::Null) => {
            Method::Bool {
                and: kind == AggKind::BoolAnd,
            }
        }
        AggKind::BoolAnd | AggKind::BoolOr => {
            return Err(DataflowError::user(
                "42883",
                format!("function bool_and/bool_or({ty}) does not exist"),
            ))
        }
        AggKind::VarSamp | AggKind::VarPop | AggKind::StddevSamp | AggKind::StddevPop => {
            if !(numeric_int || float || matches!(ty, Decimal128(..) | Null)) {
                return Err(DataflowError::user(
                    "42883",
                    format!("function {}({ty}) does not exist", kind.name()),
                ));
            }
            Method::Moments {
                int: numeric_int,
                sample: matches!(kind, AggKind::VarSamp | AggKind::StddevSamp),
                sqrt: matches!(kind, AggKind::StddevSamp | AggKind::StddevPop),
            }
        }
        AggKind::StringAgg => Method::Collect { string: true },
        AggKind::ArrayAgg => Method::Collect { string: false },
        AggKind::Sum | AggKind::Avg => {
            let avg = kind == AggKind::Avg;
            if numeric_int {
                Method::IntSum { avg }
            } else if float {
                Method::FloatSum { avg }
            } else if let Decimal128(_, s) = ty {
                Method::DecSum { avg, scale: *s }
            } else {
                return Err(DataflowError::user(
                    "42883",
                    format!(
                        "function {}({ty}) does not exist",
                        if avg { "avg" } else { "sum" }
                    ),
                ));
            }
        }
    })
}

/// The group of `key` (created if new), its result before this epoch noted the first
/// time the epoch touches it.
fn touch<'a>(
    groups: &'a mut HashMap<Group>,
    dirty: &mut Vec<Vec<u8>>,
    methods: &[Method],
    calls: &[AggCall],
    key: &[u8],
    global: bool,
) -> &'a mut Group {
    let (group, existed) = match groups.entry_ref(key) {
        EntryRef::Occupied(e) => (e.into_mut(), true),
        EntryRef::Vacant(e) => (e.insert(new_group(methods, calls)), false),
    };
    if group.before.is_none() {
        // A group created now had no result row; a global group, once created, always
        // has one (it is never removed).
        group.before =
            Some((existed && (group.rows > 0 || global)).then(|| outputs(methods, group)));
        dirty.push(key.to_vec());
    }
    group
}

/// Integer division rounding half away from zero.
fn div_round(a: i128, b: i128) -> i128 {
    let q = a / b;
    let r = a % b;
    if 2 * r.abs() >= b.abs() {
        q + if (a < 0) != (b < 0) { -1 } else { 1 }
    } else {
        q
    }
}

impl AggregateOp {
    /// Adds a batch's changes to the groups, row by row.
    fn apply_rows(&mut self, batch: &ChangeBatch) -> Result<()> {
        let data = batch.data();
        let weights = batch.weights().values();
        let keys = if self.is_global() {
            None
        } else {
            let cols: Vec<ArrayRef> = data.columns()[..self.spec.group_count].to_vec();
            Some(self.key_codec.encode(&cols)?)
        };
        let args = self.prepare_args(data)?;
        let distinct = self.distinct_values(data)?;
        let filters: Vec<Option<arrow::array::BooleanArray>> = self
            .spec
            .calls
            .iter()
            .map(|c| c.filter.map(|f| data.column(f).as_boolean().clone()))
            .collect();
        let empty: &[u8] = &[];
        let append_only = self.spec.append_only_input;
        let global = self.is_global();
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            if w < 0 && append_only {
                return Err(retraction_on_append_only());
            }
            let key: &[u8] = keys.as_ref().map(|k| k.row(i).data()).unwrap_or(empty);
            let group = touch(
                &mut self.groups,
                &mut self.dirty,
                &self.methods,
                &self.spec.calls,
                key,
                global,
            );
            group.rows += w;
            for (c, (((acc, arg), filter), method)) in group
                .accs
                .iter_mut()
                .zip(&args)
                .zip(&filters)
                .zip(&self.methods)
                .enumerate()
            {
                if let Some(f) = filter {
                    if !f.is_valid(i) || !f.value(i) {
                        continue;
                    }
                }
                let w = match (&mut group.distinct[c], &distinct[c]) {
                    (Some(seen), Some(values)) if append_only => {
                        // No copy of a value ever goes: seen once is all to know.
                        let value = values.row(i).data();
                        let EntryRef::Vacant(e) = seen.entry_ref(value) else {
                            continue;
                        };
                        e.insert(1);
                        if group.fresh.is_empty() {
                            group.fresh.resize(self.spec.calls.len(), Vec::new());
                        }
                        put_bytes(&mut group.fresh[c], value);
                        1
                    }
                    (Some(seen), Some(values)) => {
                        let value = values.row(i).data();
                        let before = add_distinct(seen, value, w);
                        self.distinct_dirty.insert(distinct_key(key, c, value));
                        // A DISTINCT call sees a value when it first appears and when
                        // its last copy goes.
                        match (before > 0, before + w > 0) {
                            (false, true) => 1,
                            (true, false) => -1,
                            _ => continue,
                        }
                    }
                    _ => w,
                };
                accumulate(acc, arg, i, w)?;
                if append_only {
                    if let (Acc::Ordered(values), Method::Ordered { max }) = (acc, method) {
                        keep_extreme(values, *max);
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies the buffered input: as partial sums when there is enough of it and the
    /// kernel takes it, row by row otherwise (or when the GPU fails: nothing of the run
    /// was applied, so the CPU redoes it whole).
    fn flush_pending(&mut self) -> Result<()> {
        let (batches, rows) = self.pending.take();
        let Some((offload, calls)) = &self.offload else {
            return Ok(());
        };
        if rows > 0 && rows >= offload.min_rows && self.gpu_health.usable() {
            match partial_sums(
                &offload.kernel,
                &self.key_codec,
                self.spec.group_count,
                calls,
                &batches,
            ) {
                Ok(Some(partials)) => {
                    self.gpu_health.succeeded("HashAggregate", rows);
                    return self.merge_partials(&partials);
                }
                Ok(None) => {}
                Err(DataflowError::Gpu {
                    cpu_can_take_over: true,
                    message,
                }) => self.gpu_health.failed("HashAggregate", &message, rows),
                Err(e) => return Err(e),
            }
        }
        for b in &batches {
            self.apply_rows(b)?;
        }
        Ok(())
    }

    /// Adds per-key partial sums to the groups: what [`Self::apply_rows`] does for each
    /// of the rows they sum.
    fn merge_partials(&mut self, p: &Partials) -> Result<()> {
        let keys = self
            .key_codec
            .encode(&p.batch.columns()[..self.spec.group_count])?;
        let rows = p.rows();
        if self.spec.append_only_input && arrow::compute::min(rows).is_some_and(|m| m < 0) {
            return Err(retraction_on_append_only());
        }
        for i in 0..p.batch.num_rows() {
            let key = keys.row(i).data();
            let group = touch(
                &mut self.groups,
                &mut self.dirty,
                &self.methods,
                &self.spec.calls,
                key,
                false,
            );
            group.rows += rows.value(i);
            for (acc, sums) in group.accs.iter_mut().zip(&p.calls) {
                match (acc, *sums) {
                    (Acc::Count(c), CallSums::Count { n }) => *c += p.int(n).value(i),
                    (Acc::Int { sum, n: count }, CallSums::Int { n, hi, lo }) => {
                        let total =
                            (i128::from(p.int(hi).value(i)) << 32) + i128::from(p.int(lo).value(i));
                        *sum = sum.saturating_add(total);
                        *count += p.int(n).value(i);
                    }
                    (Acc::Float { sum, n: count }, CallSums::Float { n, sum: s }) => {
                        *sum += p.float(s).value(i);
                        *count += p.int(n).value(i);
                    }
                    _ => {
                        return Err(DataflowError::Internal(
                            "partial sums do not match the aggregate's calls".into(),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

impl Operator for AggregateOp {
    fn state_rows(&self) -> usize {
        self.groups.len()
    }

    fn name(&self) -> &'static str {
        "HashAggregate"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        _out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        if self.offload.is_none() {
            return self.apply_rows(&batch);
        }
        if self.pending.push(batch) {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn on_barrier(
        &mut self,
        epoch: u64,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        self.flush_pending()?;
        // A global aggregate has a result row even over no input: emit it once.
        if self.is_global() && self.partitioner.owns(&[]) && !self.groups.contains_key(&[][..]) {
            let mut g = self.new_group();
            g.before = Some(None);
            self.groups.insert(Vec::new(), g);
            self.dirty.push(Vec::new());
        }
        let dirty = std::mem::take(&mut self.dirty);
        let mut changes: Vec<(Vec<u8>, Vec<OutVal>, i64)> = Vec::new();
        // Emitting on window close, a group's changes wait for its window to close.
        let hold_back = self.spec.emit_on_window_close;
        let global = self.is_global();
        for key in dirty {
            let Some(group) = self.groups.get_mut(&key) else {
                continue;
            };
            let Some(before) = group.before.take() else {
                continue;
            };
            if group.rows < 0 {
                return Err(DataflowError::Internal(format!(
                    "group row count would become {}",
                    group.rows
                )));
            }
            for (c, fresh) in group.fresh.iter_mut().enumerate() {
                if !fresh.is_empty() {
                    let k = distinct_key(&key, c, &epoch.to_be_bytes());
                    state.put(self.distinct_table, &k, &std::mem::take(fresh));
                }
            }
            let exists = group.rows > 0 || global;
            let after = exists.then(|| outputs(&self.methods, group));
            if exists {
                state.put(self.table, &key, &Self::encode_group(group));
            } else {
                self.groups.remove(&key);
                state.delete(self.table, &key);
            }
            if before == after || hold_back {
                continue;
            }
            if let Some(b) = before {
                changes.push((key.clone(), b, -1));
            }
            if let Some(a) = after {
                changes.push((key, a, 1));
            }
        }
        for k in std::mem::take(&mut self.distinct_dirty) {
            let (group, rest) = split_prefixed(&k)?;
            let count = match rest {
                [hi, lo, value @ ..] => self
                    .groups
                    .get(group)
                    .and_then(|g| g.distinct.get(usize::from(u16::from_be_bytes([*hi, *lo]))))
                    .and_then(Option::as_ref)
                    .and_then(|values| values.get(value))
                    .copied(),
                _ => None,
            };
            match count {
                Some(n) if n > 0 => state.put(self.distinct_table, &k, &n.to_le_bytes()),
                _ => state.delete(self.distinct_table, &k),
            }
        }
        if !changes.is_empty() {
            let rows: Vec<(&[u8], &[OutVal], i64)> = changes
                .iter()
                .map(|(k, v, w)| (k.as_slice(), v.as_slice(), *w))
                .collect();
            out.push(self.build_output(&rows)?);
        }
        self.purge_closed(state, out)
    }

    fn on_watermark(&mut self, _port: usize, column: usize, value: &ScalarValue) -> Result<()> {
        if let Some(slot) = self.watermarks.get_mut(column) {
            raise(slot, value);
        }
        Ok(())
    }

    fn state_tables(&self) -> Vec<StateTableId> {
        vec![self.table, self.distinct_table]
    }

    fn restore(
        &mut self,
        table: StateTableId,
        entries: &[(Vec<u8>, Vec<u8>)],
        partitioner: Partitioner,
    ) -> Result<()> {
        if table == self.distinct_table {
            let blank = self.new_group();
            for (k, v) in entries {
                let (group, rest) = split_prefixed(k)?;
                if !partitioner.owns(group) {
                    continue;
                }
                let [hi, lo, rest @ ..] = rest else {
                    return Err(DataflowError::Corrupt(
                        "malformed DISTINCT value entry".into(),
                    ));
                };
                let call = usize::from(u16::from_be_bytes([*hi, *lo]));
                let g = self
                    .groups
                    .entry_ref(group)
                    .or_insert_with(|| blank.clone());
                let Some(Some(values)) = g.distinct.get_mut(call) else {
                    return Err(DataflowError::Corrupt(format!(
                        "DISTINCT value entry for call {call}, which is not DISTINCT"
                    )));
                };
                if self.spec.append_only_input {
                    // An epoch's new values (`rest` is the epoch).
                    let mut r = Reader::new(v);
                    while !r.is_empty() {
                        values.insert(r.bytes()?.to_vec(), 1);
                    }
                } else {
                    let Ok(count) = <[u8; 8]>::try_from(v.as_slice()) else {
                        return Err(DataflowError::Corrupt(
                            "malformed DISTINCT value count".into(),
                        ));
                    };
                    values.insert(rest.to_vec(), i64::from_le_bytes(count));
                }
            }
            return Ok(());
        }
        for (k, v) in entries {
            if partitioner.owns(k) {
                let mut g = self.decode_group(v)?;
                // DISTINCT values restored first stay.
                if let Some(old) = self.groups.remove(k) {
                    for (d, o) in g.distinct.iter_mut().zip(old.distinct) {
                        if o.as_ref().is_some_and(|o| !o.is_empty()) {
                            *d = o;
                        }
                    }
                }
                self.groups.insert(k.clone(), g);
            }
        }
        Ok(())
    }
}
