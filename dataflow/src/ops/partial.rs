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
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use sabot_gpu::{Agg, AggKind, Gpu, GpuError};

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
    let (input, layout) = sum_inputs(data, w, group_count, calls)?;
    let sums = match kernel {
        Kernel::Gpu(gpu) => gpu_sums(gpu, &input, group_count)?,
        Kernel::Cpu => cpu_sums(key_codec, &input, group_count)?,
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
