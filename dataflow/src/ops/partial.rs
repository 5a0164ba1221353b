//! Partial sums of a run of changes for an aggregate's COUNT, SUM and AVG calls, computed
//! over whole batches and merged into the aggregate's groups once per distinct key
//! instead of once per row. The group-by itself runs on the GPU through libcudf
//! ([`Kernel::Gpu`]) or, as the reference the GPU is checked against, on the CPU
//! ([`Kernel::Cpu`]).
//!
//! Per row, with weight `w` (±1: larger weights stay on the per-row path) the sums are:
//! `w` (the group's row count); per call, `w` where the argument is counted (not NULL,
//! the call's FILTER true); for integer SUM/AVG the argument split into its high and low
//! 32 bits, each times `w`, so that 64-bit sums of up to 2^31 rows cannot overflow and the
//! group's exact i128 sum is `hi << 32 + lo`; for float SUM/AVG `w * x`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch};
use arrow::compute::kernels::{bitwise, numeric, zip::zip};
use arrow::compute::{cast, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use sabot_gpu::{Agg, AggKind, BinaryOp, ExprBuilder, Gpu, GpuError, NodeId, UnaryOp};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::error::{DataflowError, Result};
use crate::row::RowCodec;

/// Which group-by computes the sums.
#[derive(Clone)]
pub enum Kernel {
    Gpu(Arc<Gpu>),
    /// The same sums on the CPU: the reference the GPU's results are checked against.
    Cpu,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kernel::Gpu(g) => write!(f, "Gpu({})", g.device().name),
            Kernel::Cpu => f.write_str("Cpu"),
        }
    }
}

/// Where an operator's buffered runs go (an aggregate's partial sums, a join's epoch
/// deltas joined with each other), and from what size on.
#[derive(Debug, Clone)]
pub struct Offload {
    pub kernel: Kernel,
    /// Input buffered until the barrier (or until [`RUN_ROWS`] rows) goes through the
    /// kernel when it holds at least this many rows; smaller runs take the per-row path.
    pub min_rows: usize,
}

/// Whether libcudf groups and joins by a column of this type exactly as the CPU's row
/// encoding compares it (floats are not: NaN and -0.0).
pub fn gpu_key_type(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Utf8 | DataType::Boolean | DataType::Date32 | DataType::Timestamp(_, None)
        )
}

/// What one call needs summed, as column offsets into the sums after the row count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CallSums {
    /// COUNT: the counted rows.
    Count { n: usize },
    /// Integer SUM/AVG: counted rows, and the high and low halves of `w * x`.
    Int { n: usize, hi: usize, lo: usize },
    /// Float SUM/AVG: counted rows and `w * x`.
    Float { n: usize, sum: usize },
}

/// One call as the partial sums see it: how its argument is summed, its argument column
/// and its FILTER column.
#[derive(Debug, Clone, Copy)]
pub struct CallInput {
    pub kind: CallKind,
    pub arg: usize,
    pub filter: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Count,
    Int,
    Float,
}

/// The partial sums of one run of changes: the group keys, the net row count per key,
/// and per call the sums of [`CallSums`].
#[derive(Debug)]
pub struct Partials {
    /// `[key columns..., rows, sums...]`, one row per distinct key.
    pub batch: RecordBatch,
    pub calls: Vec<CallSums>,
}

impl Partials {
    pub fn rows(&self) -> &Int64Array {
        self.batch.column(self.keys()).as_primitive::<Int64Type>()
    }

    pub fn keys(&self) -> usize {
        self.batch.num_columns() - 1 - self.sums()
    }

    fn sums(&self) -> usize {
        self.calls
            .iter()
            .map(|c| match c {
                CallSums::Count { .. } => 1,
                CallSums::Int { .. } => 3,
                CallSums::Float { .. } => 2,
            })
            .sum()
    }

    pub fn int(&self, col: usize) -> &Int64Array {
        self.batch
            .column(self.keys() + 1 + col)
            .as_primitive::<Int64Type>()
    }

    pub fn float(&self, col: usize) -> &Float64Array {
        self.batch
            .column(self.keys() + 1 + col)
            .as_primitive::<Float64Type>()
    }
}

/// Sums `batches` (whose first `group_count` columns are the group key) per key. `None`
/// when a weight is not ±1 (then the rows take the per-row path).
pub fn partial_sums(
    kernel: &Kernel,
    key_codec: &RowCodec,
    group_count: usize,
    calls: &[CallInput],
    batches: &[ChangeBatch],
) -> Result<Option<Partials>> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let run = ChangeBatch::concat(&first.schema(), batches)?;
    let (data, w) = (run.data(), run.weights());
    let (min, max) = (
        arrow::compute::min(w).unwrap_or(0),
        arrow::compute::max(w).unwrap_or(0),
    );
    if min < -1 || max > 1 {
        return Ok(None);
    }
    let (sums, layout) = match kernel {
        Kernel::Gpu(gpu) => match device_summands(data, w, group_count, calls)? {
            Some(d) => (gpu_device_sums(gpu, &d, group_count)?, d.layout),
            None => {
                let (input, layout) = sum_inputs(data, w, group_count, calls)?;
                (gpu_sums(gpu, &input, group_count)?, layout)
            }
        },
        Kernel::Cpu => {
            let (input, layout) = sum_inputs(data, w, group_count, calls)?;
            (cpu_sums(key_codec, &input, group_count)?, layout)
        }
    };
    Ok(Some(Partials {
        batch: sums,
        calls: layout,
    }))
}

/// `[keys..., w, per-call columns...]` with the layout of the per-call columns: what the
/// kernel groups (public for `groupby_bench`, which times building it apart).
pub fn sum_inputs(
    data: &RecordBatch,
    w: &Int64Array,
    group_count: usize,
    calls: &[CallInput],
) -> Result<(RecordBatch, Vec<CallSums>)> {
    let mut columns: Vec<ArrayRef> = data.columns()[..group_count].to_vec();
    let mut fields: Vec<Field> = data.schema().fields()[..group_count]
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("rows", DataType::Int64, false));
    columns.push(Arc::new(w.clone()));
    // Offsets after the row count.
    let mut push = |columns: &mut Vec<ArrayRef>, a: ArrayRef| {
        fields.push(Field::new(
            format!("s{}", columns.len()),
            a.data_type().clone(),
            false,
        ));
        columns.push(a);
        columns.len() - group_count - 2
    };
    let zero_i = Int64Array::new_scalar(0);
    let zero_f = Float64Array::new_scalar(0.0);
    let mut layout = Vec::with_capacity(calls.len());
    for call in calls {
        let arg = data.column(call.arg);
        // Counted: the argument is not NULL and the FILTER (if any) is true.
        let mut counted = arrow::compute::is_not_null(arg)?;
        if let Some(f) = call.filter {
            let f = data.column(f).as_boolean_opt().ok_or_else(|| {
                DataflowError::Internal("aggregate FILTER column is not boolean".into())
            })?;
            let f: BooleanArray = if f.null_count() > 0 {
                prep_null_mask_filter(f)
            } else {
                f.clone()
            };
            counted = arrow::compute::and(&counted, &f)?;
        }
        let n = push(&mut columns, zip(&counted, w, &zero_i)?);
        layout.push(match call.kind {
            CallKind::Count => CallSums::Count { n },
            CallKind::Int => {
                let x = cast(arg, &DataType::Int64)?;
                let x = x.as_primitive::<Int64Type>();
                let hi = bitwise::bitwise_shift_right_scalar(x, 32)?;
                let lo = bitwise::bitwise_and_scalar(x, 0xFFFF_FFFF)?;
                // |w| <= 1: neither product overflows.
                let hi = numeric::mul(&hi, w)?;
                let lo = numeric::mul(&lo, w)?;
                let hi = push(&mut columns, zip(&counted, &hi, &zero_i)?);
                let lo = push(&mut columns, zip(&counted, &lo, &zero_i)?);
                CallSums::Int { n, hi, lo }
            }
            CallKind::Float => {
                let x = cast(arg, &DataType::Float64)?;
                let wf = cast(w, &DataType::Float64)?;
                let wx = numeric::mul(&x, &wf)?;
                let sum = push(&mut columns, zip(&counted, &wx, &zero_f)?);
                CallSums::Float { n, sum }
            }
        });
    }
    let schema = Arc::new(Schema::new(fields));
    Ok((RecordBatch::try_new(schema, columns)?, layout))
}

/// The summands as expressions the GPU evaluates itself, so that the host sends the
/// group keys, the weights and the calls' argument and FILTER columns as they are (no
/// pass over them here, and a third of the bytes for one SUM).
pub struct DeviceSummands {
    /// `[keys..., w, the calls' columns...]`.
    pub input: RecordBatch,
    pub exprs: ExprBuilder,
    /// Per summed column, in the order of [`sum_inputs`]' (the row count, then each
    /// call's): its node.
    pub roots: Vec<NodeId>,
    pub layout: Vec<CallSums>,
    /// The sums' schema: the keys, then per root INT64 or FLOAT64.
    pub schema: SchemaRef,
}

/// [`sum_inputs`]' summands as expressions over the columns as they come, where the GPU
/// computes them exactly as the host does: `None` where it would not (a call's argument
/// of another type than a 8- to 64-bit integer (not UINT64) or FLOAT32/64, a float
/// SUM/AVG with a FILTER: `x * 0` is not 0 for NaN or infinity).
///
/// Per row with weight `w`: the row count `w`; counted rows `w * (x IS NOT NULL) *
/// filter`; for integers `(x / 2^32) * w * filter` and `(x % 2^32) * w * filter`
/// (truncating: another split than the host's shift and mask, the same `hi * 2^32 + lo`);
/// for floats `x * w`. A NULL argument or FILTER makes the summand NULL, which SUM skips.
pub fn device_summands(
    data: &RecordBatch,
    w: &Int64Array,
    group_count: usize,
    calls: &[CallInput],
) -> Result<Option<DeviceSummands>> {
    use DataType::*;
    let schema = data.schema();
    let keys: Vec<Field> = schema.fields()[..group_count]
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = data.columns()[..group_count].to_vec();
    let mut fields = keys.clone();
    let mut sums = keys;
    columns.push(Arc::new(w.clone()));
    fields.push(Field::new("w", Int64, false));
    let mut exprs = ExprBuilder::new();
    let weight = exprs.column(group_count);
    let mut roots = vec![weight];
    sums.push(Field::new("rows", Int64, false));
    // The data columns sent so far, and their nodes.
    let mut sent: Vec<(usize, NodeId)> = Vec::new();
    let mut float_weight = None;
    let mut layout = Vec::with_capacity(calls.len());
    for call in calls {
        let ty = data.column(call.arg).data_type().clone();
        let int = matches!(ty, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32);
        let float = matches!(ty, Float32 | Float64);
        let takes = match call.kind {
            CallKind::Count => int || float,
            CallKind::Int => int,
            CallKind::Float => float && call.filter.is_none(),
        };
        let filter_ok = call
            .filter
            .is_none_or(|f| data.column(f).data_type() == &Boolean);
        if !(takes && filter_ok) {
            return Ok(None);
        }
        let mut send = |c: usize, exprs: &mut ExprBuilder| -> NodeId {
            if let Some((_, node)) = sent.iter().find(|(d, _)| *d == c) {
                return *node;
            }
            let node = exprs.column(columns.len());
            columns.push(Arc::clone(data.column(c)));
            fields.push(schema.field(c).as_ref().clone().with_name(format!("c{c}")));
            sent.push((c, node));
            node
        };
        let x = send(call.arg, &mut exprs);
        let filter = call.filter.map(|f| {
            let f = send(f, &mut exprs);
            exprs.unary(UnaryOp::CastInt64, f)
        });
        let mut push = |e: NodeId, ty: DataType, exprs: &mut ExprBuilder| -> usize {
            let e = match filter {
                Some(f) => exprs.binary(BinaryOp::Mul, e, f),
                None => e,
            };
            roots.push(e);
            sums.push(Field::new(format!("s{}", roots.len()), ty, false));
            roots.len() - 2
        };
        let null = exprs.unary(UnaryOp::IsNull, x);
        let valid = exprs.unary(UnaryOp::Not, null);
        let valid = exprs.unary(UnaryOp::CastInt64, valid);
        let counted = exprs.binary(BinaryOp::Mul, weight, valid);
        let n = push(counted, Int64, &mut exprs);
        layout.push(match call.kind {
            CallKind::Count => CallSums::Count { n },
            CallKind::Int => {
                let x = if ty == Int64 {
                    x
                } else {
                    exprs.unary(UnaryOp::CastInt64, x)
                };
                let base = exprs.int64(1 << 32);
                let hi = exprs.binary(BinaryOp::Div, x, base);
                let hi = exprs.binary(BinaryOp::Mul, hi, weight);
                let lo = exprs.binary(BinaryOp::Mod, x, base);
                let lo = exprs.binary(BinaryOp::Mul, lo, weight);
                let hi = push(hi, Int64, &mut exprs);
                let lo = push(lo, Int64, &mut exprs);
                CallSums::Int { n, hi, lo }
            }
            CallKind::Float => {
                let x = if ty == Float64 {
                    x
                } else {
                    exprs.unary(UnaryOp::CastFloat64, x)
                };
                let wf =
                    *float_weight.get_or_insert_with(|| exprs.unary(UnaryOp::CastFloat64, weight));
                let wx = exprs.binary(BinaryOp::Mul, x, wf);
                let sum = push(wx, Float64, &mut exprs);
                CallSums::Float { n, sum }
            }
        });
    }
    let input = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok(Some(DeviceSummands {
        input,
        exprs,
        roots,
        layout,
        schema: Arc::new(Schema::new(sums)),
    }))
}

/// The group-by of [`DeviceSummands`] on the GPU: one SUM per root. A key whose summands
/// were all NULL gets a NULL sum, which is 0.
fn gpu_device_sums(gpu: &Gpu, d: &DeviceSummands, group_count: usize) -> Result<RecordBatch> {
    let keys: Vec<usize> = (0..group_count).collect();
    let aggs: Vec<Agg> = d
        .roots
        .iter()
        .map(|r| Agg {
            kind: AggKind::Sum,
            column: r.index(),
        })
        .collect();
    let out = gpu
        .group_by_exprs(&d.input, &keys, &d.exprs, &aggs)
        .map_err(gpu_error)?;
    sums_batch(
        &d.schema,
        out.columns().to_vec(),
        group_count,
        out.num_rows(),
    )
}

/// `columns` (keys, then sums) as a batch of `schema`, NULL sums made 0.
fn sums_batch(
    schema: &SchemaRef,
    columns: Vec<ArrayRef>,
    group_count: usize,
    rows: usize,
) -> Result<RecordBatch> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .enumerate()
        .map(|(i, (c, f))| {
            let c = if c.data_type() == f.data_type() {
                c
            } else {
                cast(&c, f.data_type())?
            };
            if i < group_count || c.null_count() == 0 {
                return Ok(c);
            }
            let valid = arrow::compute::is_not_null(&c)?;
            Ok(match f.data_type() {
                DataType::Float64 => zip(&valid, &c, &Float64Array::new_scalar(0.0))?,
                _ => zip(&valid, &c, &Int64Array::new_scalar(0))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    batch_with_schema(schema, columns, rows)
}

/// The group-by on the GPU: one SUM per column after the keys.
fn gpu_sums(gpu: &Gpu, input: &RecordBatch, group_count: usize) -> Result<RecordBatch> {
    let keys: Vec<usize> = (0..group_count).collect();
    let aggs: Vec<Agg> = (group_count..input.num_columns())
        .map(|column| Agg {
            kind: AggKind::Sum,
            column,
        })
        .collect();
    let out = gpu.group_by(input, &keys, &aggs).map_err(gpu_error)?;
    // libcudf names the columns itself and may widen: back to the input's types.
    batch_with_schema(&input.schema(), out.columns().to_vec(), out.num_rows())
}

/// Rows an operator buffers at most before a GPU run (bounds memory; far below
/// libcudf's 2^31-row column limit).
const RUN_ROWS: usize = 1 << 22;

/// The changes an operator holds back for its next GPU run (until the barrier, or
/// [`RUN_ROWS`] rows).
#[derive(Debug, Default)]
pub struct RunBuffer {
    batches: Vec<ChangeBatch>,
    rows: usize,
}

impl RunBuffer {
    /// Adds a batch; true when the buffer is full and should be run now.
    pub fn push(&mut self, batch: ChangeBatch) -> bool {
        self.rows += batch.num_rows();
        self.batches.push(batch);
        self.rows >= RUN_ROWS
    }

    /// The buffered batches and their rows, leaving the buffer empty.
    pub fn take(&mut self) -> (Vec<ChangeBatch>, usize) {
        (
            std::mem::take(&mut self.batches),
            std::mem::take(&mut self.rows),
        )
    }
}

/// Failed GPU runs in a row after which an operator keeps to the CPU.
const GIVE_UP_AFTER: u32 = 3;

/// How an operator's GPU runs have gone. A failed run is redone on the CPU; after
/// [`GIVE_UP_AFTER`] failures in a row (a type libcudf does not take, a device that
/// keeps failing) the operator stops trying.
#[derive(Debug, Default)]
pub struct GpuHealth {
    in_a_row: u32,
    pub failures: u64,
    pub runs: u64,
    disabled: bool,
}

impl GpuHealth {
    pub fn usable(&self) -> bool {
        !self.disabled
    }

    /// A run of `rows` rows went through the GPU.
    pub fn succeeded(&mut self, operator: &'static str, rows: usize) {
        self.in_a_row = 0;
        self.runs += 1;
        metrics::counter!("sabot_gpu_runs_total", "operator" => operator).increment(1);
        metrics::counter!("sabot_gpu_rows_total", "operator" => operator).increment(rows as u64);
    }

    pub fn failed(&mut self, operator: &'static str, message: &str, rows: usize) {
        metrics::counter!("sabot_gpu_fallbacks_total", "operator" => operator).increment(1);
        self.failures += 1;
        self.in_a_row += 1;
        if self.in_a_row == 1 {
            tracing::warn!(operator, %message, rows, "GPU run failed; the CPU redoes it");
        }
        if self.in_a_row >= GIVE_UP_AFTER {
            self.disabled = true;
            tracing::warn!(operator, %message, "GPU runs keep failing; this operator stays on the CPU");
        }
    }
}

pub fn gpu_error(e: GpuError) -> DataflowError {
    DataflowError::Gpu {
        cpu_can_take_over: e.cpu_can_take_over(),
        message: e.to_string(),
    }
}

/// The same group-by on the CPU.
fn cpu_sums(key_codec: &RowCodec, input: &RecordBatch, group_count: usize) -> Result<RecordBatch> {
    let keys = key_codec.encode(&input.columns()[..group_count])?;
    let mut index: hashbrown::HashMap<&[u8], usize> = hashbrown::HashMap::new();
    let mut group_of = Vec::with_capacity(input.num_rows());
    let mut distinct: Vec<&[u8]> = Vec::new();
    for i in 0..input.num_rows() {
        let k = keys.row(i).data();
        let g = *index.entry(k).or_insert_with(|| {
            distinct.push(k);
            distinct.len() - 1
        });
        group_of.push(g);
    }
    let mut columns = key_codec.decode(distinct.iter().copied())?;
    for c in &input.columns()[group_count..] {
        if let Some(a) = c.as_primitive_opt::<Int64Type>() {
            let mut sums = vec![0i64; distinct.len()];
            for (g, v) in group_of.iter().zip(a.values()) {
                sums[*g] = sums[*g].wrapping_add(*v);
            }
            columns.push(Arc::new(Int64Array::from(sums)));
        } else if let Some(a) = c.as_primitive_opt::<Float64Type>() {
            let mut sums = vec![0f64; distinct.len()];
            for (g, v) in group_of.iter().zip(a.values()) {
                sums[*g] += *v;
            }
            columns.push(Arc::new(Float64Array::from(sums)));
        } else {
            return Err(DataflowError::Internal(
                "partial sum column is neither INT64 nor FLOAT64".into(),
            ));
        }
    }
    Ok(RecordBatch::try_new(input.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Int32Array};
    use std::collections::BTreeMap;

    /// Per key (encoded): the row count, then per call its counted rows and its exact
    /// sum (integers joined from their halves; floats by their bits).
    fn totals(p: &Partials, codec: &RowCodec) -> BTreeMap<Vec<u8>, Vec<i128>> {
        let keys = codec.encode(&p.batch.columns()[..p.keys()]).unwrap();
        (0..p.batch.num_rows())
            .map(|i| {
                let mut v = vec![i128::from(p.rows().value(i))];
                for c in &p.calls {
                    match *c {
                        CallSums::Count { n } => v.push(i128::from(p.int(n).value(i))),
                        CallSums::Int { n, hi, lo } => {
                            v.push(i128::from(p.int(n).value(i)));
                            v.push(
                                (i128::from(p.int(hi).value(i)) << 32)
                                    + i128::from(p.int(lo).value(i)),
                            );
                        }
                        CallSums::Float { n, sum } => {
                            v.push(i128::from(p.int(n).value(i)));
                            v.push(i128::from(p.float(sum).value(i).to_bits()));
                        }
                    }
                }
                (keys.row(i).data().to_vec(), v)
            })
            .collect()
    }

    #[test]
    fn the_device_summands_sum_as_the_host_summands_do() {
        let n = 3000;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let edges = [
            i64::MIN,
            i64::MAX,
            -1,
            1 << 32,
            -(1 << 32),
            (1 << 32) - 1,
            0,
        ];
        let mut k: Vec<Option<i64>> = Vec::new();
        let mut a: Vec<Option<i64>> = Vec::new();
        let mut b: Vec<Option<i32>> = Vec::new();
        let mut f: Vec<Option<f64>> = Vec::new();
        let mut g: Vec<Option<f32>> = Vec::new();
        let mut flt: Vec<Option<bool>> = Vec::new();
        let mut w: Vec<i64> = Vec::new();
        let floats = [f64::NAN, -0.0, f64::INFINITY, 1.5, -2.25, 1e300];
        for _ in 0..n {
            let r = next();
            k.push((r % 13 != 0).then_some((r % 7) as i64));
            a.push(match r % 5 {
                0 => None,
                1 => Some(edges[(r >> 8) as usize % edges.len()]),
                _ => Some((r >> 3) as i64),
            });
            b.push((r % 11 != 0).then_some((r >> 16) as i32));
            f.push(
                (r % 9 != 0)
                    .then(|| floats[(r >> 20) as usize % floats.len()] * ((r >> 40) % 100) as f64),
            );
            g.push((r % 6 != 0).then_some(((r >> 24) % 1000) as f32 / 8.0));
            flt.push((r % 4 != 0).then_some(r % 3 == 0));
            // Retractions only of what (likely) came before: the sums are linear anyway.
            w.push(if r % 3 == 0 { -1 } else { 1 });
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int32, true),
            Field::new("f", DataType::Float64, true),
            Field::new("g", DataType::Float32, true),
            Field::new("flt", DataType::Boolean, true),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(k)),
                Arc::new(Int64Array::from(a)),
                Arc::new(Int32Array::from(b)),
                Arc::new(Float64Array::from(f)),
                Arc::new(Float32Array::from(g)),
                Arc::new(BooleanArray::from(flt)),
            ],
        )
        .unwrap();
        let w = Int64Array::from(w);
        let call = |kind, arg, filter| CallInput { kind, arg, filter };
        let calls = [
            call(CallKind::Count, 1, None),
            call(CallKind::Count, 3, Some(5)),
            call(CallKind::Int, 1, None),
            call(CallKind::Int, 1, Some(5)),
            call(CallKind::Int, 2, Some(5)),
            call(CallKind::Float, 3, None),
            call(CallKind::Float, 4, None),
        ];
        let codec = RowCodec::new(vec![DataType::Int64]).unwrap();
        let (input, layout) = sum_inputs(&data, &w, 1, &calls).unwrap();
        let host = Partials {
            batch: cpu_sums(&codec, &input, 1).unwrap(),
            calls: layout,
        };
        let d = device_summands(&data, &w, 1, &calls).unwrap().unwrap();
        let mut columns = d.input.columns()[..1].to_vec();
        for r in &d.roots {
            columns.push(d.exprs.evaluate(&d.input, *r).unwrap());
        }
        let evaluated = sums_batch(&d.schema, columns, 1, d.input.num_rows()).unwrap();
        let device = Partials {
            batch: cpu_sums(&codec, &evaluated, 1).unwrap(),
            calls: d.layout.clone(),
        };
        assert_eq!(totals(&device, &codec), totals(&host, &codec));
        assert_eq!(
            d.input.num_columns(),
            1 + 1 + 5,
            "keys, weights, each column once"
        );

        // What the device cannot compute as the host does stays on the host.
        assert!(
            device_summands(&data, &w, 1, &[call(CallKind::Float, 3, Some(5))])
                .unwrap()
                .is_none()
        );
        assert!(
            device_summands(&data, &w, 1, &[call(CallKind::Count, 5, None)])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_operator_gives_up_on_the_gpu_after_failures_in_a_row_only() {
        let mut h = GpuHealth::default();
        h.failed("op", "out of memory", 10);
        h.failed("op", "out of memory", 10);
        h.succeeded("op", 10);
        h.failed("op", "out of memory", 10);
        h.failed("op", "out of memory", 10);
        assert!(h.usable(), "a success in between resets the streak");
        h.failed("op", "out of memory", 10);
        assert!(!h.usable());
        assert_eq!((h.failures, h.runs), (5, 1));
    }
}
