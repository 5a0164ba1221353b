//! Event-time watermarks: where they come from and how they travel.
//!
//! A watermark on a column is a promise about the rows still to come: none of them has a
//! value below it there. A source or table declared with `WATERMARK FOR ts AS expr`
//! gets a [`WatermarkFilterOp`] right after its reader. It tracks the largest `expr` seen
//! (for `ts - INTERVAL '5' SECOND`: the newest event less five seconds) and, from the next
//! epoch on, drops the rows whose `ts` lies below that value: they are late, and counted.
//! The promise then holds downstream of the filter.
//!
//! After every epoch the runtime works out each node's watermarks from its inputs'
//! ([`derive`]): filters and unions keep them, projections carry them through expressions
//! that never decrease as their one input column grows (`date_bin`, `date_trunc`, adding
//! a constant, scaling by a positive constant, casts to time types), aggregates keep those of their group
//! columns, and equi-joins give both key columns the smaller of the two sides'. Operators
//! that hold per-key state use them to purge keys that can no longer change, and an
//! aggregate `EMIT ON WINDOW CLOSE` emits a group once, final, when its key falls behind
//! the watermark.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, Scalar};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use crate::batch::ChangeBatch;
use crate::error::{DataflowError, Result};
use crate::graph::{NodeKind, PlanNode};
use crate::operator::Operator;

/// Watermarks of a node's output: one entry per column, `None` where there is none.
pub type Watermarks = Vec<Option<ScalarValue>>;

/// `WATERMARK FOR column AS expr` of a source or table.
#[derive(Debug, Clone)]
pub struct WatermarkSpec {
    /// The event-time column (of the relation's full schema).
    pub column: usize,
    /// The watermark expression over the relation's columns, of the column's type.
    pub expr: Arc<dyn PhysicalExpr>,
    /// The expression as written, for EXPLAIN.
    pub text: String,
}

/// Drops rows behind the watermark and reports the largest watermark value seen.
pub struct WatermarkFilterOp {
    spec: WatermarkSpec,
    /// The column the expression never decreases with (`ts - INTERVAL ...`), when it
    /// reads no other and that column is of a time type: the largest value of the
    /// expression is then its value at the row with the largest time, one evaluation
    /// per batch instead of one per row.
    grows_with: Option<usize>,
    /// The node's watermark at the start of the epoch (set by the runtime).
    current: Option<ScalarValue>,
    /// The largest value of the watermark expression this epoch.
    observed: Option<i64>,
    late: u64,
}

impl WatermarkFilterOp {
    pub fn new(spec: WatermarkSpec) -> Self {
        let grows_with = monotone_column(&spec.expr);
        Self {
            spec,
            grows_with,
            current: None,
            observed: None,
            late: 0,
        }
    }
}

impl Operator for WatermarkFilterOp {
    fn name(&self) -> &'static str {
        "WatermarkFilter"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let batch = match &self.current {
            Some(wm) => {
                let column = batch.data().column(self.spec.column);
                let late = arrow::compute::kernels::cmp::lt(column, &Scalar::new(wm.to_array()?))?;
                let late_rows = late.true_count();
                if late_rows == 0 {
                    batch
                } else {
                    self.late += late_rows as u64;
                    // NULL compares as NULL: such rows are not late.
                    let keep = arrow::compute::or_kleene(
                        &arrow::compute::not(&late)?,
                        &arrow::compute::is_null(column)?,
                    )?;
                    batch.filter(&keep)?
                }
            }
            None => batch,
        };
        if batch.is_empty() {
            return Ok(());
        }
        let rows = match self.grows_with.map(|c| time_ints(batch.data().column(c))) {
            Some(Ok(times)) => match latest_row(&times) {
                Some(i) => batch.data().slice(i, 1),
                None => {
                    // Every time is NULL: nothing to observe.
                    out.push(batch);
                    return Ok(());
                }
            },
            // Not a time column after all: evaluate at every row.
            Some(Err(_)) | None => batch.data().clone(),
        };
        let values = self
            .spec
            .expr
            .evaluate(&rows)?
            .into_array(rows.num_rows())?;
        let values = cast(&values, &DataType::Int64)?;
        if let Some(m) = arrow::compute::max(values.as_primitive::<Int64Type>()) {
            self.observed = Some(self.observed.map_or(m, |o| o.max(m)));
        }
        out.push(batch);
        Ok(())
    }

    fn on_watermark(&mut self, _port: usize, column: usize, value: &ScalarValue) -> Result<()> {
        if column == self.spec.column {
            self.current = Some(value.clone());
        }
        Ok(())
    }

    fn take_generated(&mut self) -> (Option<i64>, u64) {
        (self.observed.take(), std::mem::take(&mut self.late))
    }
}

/// The index of the largest non-NULL value, `None` when all are NULL.
fn latest_row(times: &Int64Array) -> Option<usize> {
    let values = times.values();
    match times.nulls() {
        None => values
            .iter()
            .enumerate()
            .max_by_key(|(_, v)| **v)
            .map(|(i, _)| i),
        Some(nulls) => nulls.valid_indices().max_by_key(|i| values[*i]),
    }
}

/// Moves `slot` up to `value` when that is later: a watermark never goes back.
pub fn raise(slot: &mut Option<ScalarValue>, value: &ScalarValue) {
    let later = slot
        .as_ref()
        .is_none_or(|old| old.partial_cmp(value) == Some(std::cmp::Ordering::Less));
    if later {
        *slot = Some(value.clone());
    }
}

/// For each row of `columns`: whether one of its values lies below that column's
/// watermark (NULL never does). `None` when no column has a watermark.
pub fn behind_watermarks(
    columns: &[ArrayRef],
    watermarks: &[Option<&ScalarValue>],
) -> Result<Option<Vec<bool>>> {
    let mut behind: Option<arrow::array::BooleanArray> = None;
    for (column, wm) in columns.iter().zip(watermarks) {
        let Some(wm) = wm else { continue };
        let wm = Scalar::new(cast(&wm.to_array()?, column.data_type())?);
        let lt = arrow::compute::kernels::cmp::lt(column, &wm)?;
        behind = Some(match behind {
            Some(b) => arrow::compute::or(&b, &lt)?,
            None => lt,
        });
    }
    Ok(behind.map(|b| (0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect()))
}

/// A column of times (timestamps, dates or integers) as the integers of its type, for
/// operators that order or compare rows by time.
pub fn time_ints(a: &ArrayRef) -> Result<Int64Array> {
    let ints = match a.data_type() {
        DataType::Timestamp(_, _)
        | DataType::Date32
        | DataType::Date64
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => cast(a, &DataType::Int64)?,
        other => {
            return Err(crate::error::DataflowError::Internal(format!(
                "times of type {other} cannot be ordered"
            )))
        }
    };
    Ok(ints.as_primitive::<Int64Type>().clone())
}

/// A watermark value as the integer of its type (microseconds for a microsecond
/// timestamp); `None` for NULL.
pub fn scalar_to_i64(v: &ScalarValue) -> Result<Option<i64>> {
    let a = cast(&v.to_array()?, &DataType::Int64)?;
    let a = a.as_primitive::<Int64Type>();
    Ok(a.is_valid(0).then(|| a.value(0)))
}

/// The value of type `ty` whose integer is `v`.
pub fn scalar_from_i64(v: i64, ty: &DataType) -> Result<ScalarValue> {
    let a: ArrayRef = Arc::new(Int64Array::from(vec![v]));
    Ok(ScalarValue::try_from_array(&cast(&a, ty)?, 0)?)
}

/// The smaller of two optional watermarks; `None` when either is.
fn min_of(a: &Option<ScalarValue>, b: &Option<ScalarValue>) -> Option<ScalarValue> {
    match (a, b) {
        (Some(x), Some(y)) => match x.partial_cmp(y) {
            Some(std::cmp::Ordering::Greater) => Some(y.clone()),
            Some(_) => Some(x.clone()),
            None => None,
        },
        _ => None,
    }
}

/// The column of `e` when it is a plain column reference.
fn plain_column(e: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    e.downcast_ref::<Column>().map(Column::index)
}

/// The one input column `e` grows with, when `e` never decreases as that column grows
/// and reads no other column.
pub fn monotone_column(e: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    if let Some(c) = e.downcast_ref::<Column>() {
        return Some(c.index());
    }
    if let Some(c) = e.downcast_ref::<CastExpr>() {
        // Between times and their ticks (Int64: the planner moves a timestamp by a
        // fixed interval as `CAST(CAST(ts AS BIGINT) + n AS TIMESTAMP)`). Only
        // timestamps carry watermarks, and casting one to its ticks keeps the order.
        let time_like = |t: &DataType| {
            matches!(
                t,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 | DataType::Int64
            )
        };
        return (time_like(c.cast_type())).then(|| monotone_column(c.expr()))?;
    }
    if let Some(b) = e.downcast_ref::<BinaryExpr>() {
        use datafusion::logical_expr::Operator as Op;
        let is_const = |x: &Arc<dyn PhysicalExpr>| x.downcast_ref::<Literal>().is_some();
        let positive = |x: &Arc<dyn PhysicalExpr>| {
            x.downcast_ref::<Literal>().is_some_and(|l| {
                let v = l.value();
                ScalarValue::new_zero(&v.data_type())
                    .is_ok_and(|z| v.partial_cmp(&z) == Some(std::cmp::Ordering::Greater))
            })
        };
        return match b.op() {
            Op::Plus if is_const(b.right()) => monotone_column(b.left()),
            Op::Plus if is_const(b.left()) => monotone_column(b.right()),
            Op::Minus if is_const(b.right()) => monotone_column(b.left()),
            // Scaling by a positive constant keeps the order (integer division too).
            Op::Multiply if positive(b.right()) => monotone_column(b.left()),
            Op::Multiply if positive(b.left()) => monotone_column(b.right()),
            Op::Divide if positive(b.right()) => monotone_column(b.left()),
            _ => None,
        };
    }
    if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>() {
        // date_bin(stride, ts[, origin]) and date_trunc(unit, ts): constant but the time.
        let args = f.args();
        return match f.name() {
            "date_bin"
                if args.len() >= 2
                    && args
                        .iter()
                        .skip(2)
                        .all(|a| a.downcast_ref::<Literal>().is_some()) =>
            {
                args[0]
                    .downcast_ref::<Literal>()
                    .is_some()
                    .then(|| monotone_column(&args[1]))?
            }
            "date_trunc" if args.len() == 2 => args[0]
                .downcast_ref::<Literal>()
                .is_some()
                .then(|| monotone_column(&args[1]))?,
            _ => None,
        };
    }
    None
}

/// `e` evaluated where input column `column` is `value` (the other columns NULL).
fn evaluate_at(
    e: &Arc<dyn PhysicalExpr>,
    input: &Schema,
    column: usize,
    value: &ScalarValue,
) -> Result<Option<ScalarValue>> {
    let columns = input
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == column {
                Ok(cast(&value.to_array()?, f.data_type())?)
            } else {
                Ok(arrow::array::new_null_array(f.data_type(), 1))
            }
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    let nullable = Arc::new(Schema::new(
        input
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(nullable, columns)?;
    let out = e.evaluate(&batch)?.into_array(1)?;
    let v = ScalarValue::try_from_array(&out, 0)?;
    Ok((!v.is_null()).then_some(v))
}

/// The watermarks of node `node`'s output, given its inputs' (in input order) and their
/// schemas. A watermark filter's own value is kept by the runtime, not derived.
pub fn derive(
    node: &PlanNode,
    inputs: &[&Watermarks],
    schemas: &[SchemaRef],
) -> Result<Watermarks> {
    let width = node.schema.fields().len();
    let mut out: Watermarks = vec![None; width];
    let first = || inputs.first().copied().cloned().unwrap_or_default();
    match &node.kind {
        NodeKind::Source { .. }
        | NodeKind::Connector { .. }
        | NodeKind::WatermarkFilter(_)
        | NodeKind::Over(_)
        // A right row arriving late revises the match of older left rows.
        | NodeKind::AsofJoin(_) => {}
        NodeKind::Filter { .. } | NodeKind::GpuFilter { .. } | NodeKind::TemporalFilter(_) | NodeKind::Materialize
        | NodeKind::MaterializeAppendOnly
        | NodeKind::Emit { .. } => {
            out = first()
        }
        // The clock column carries none (yet): the input's columns keep theirs.
        NodeKind::ProcessingTime => {
            for (o, i) in out.iter_mut().zip(first()) {
                *o = i;
            }
        }
        NodeKind::Project { exprs } => {
            let (Some(input), Some(schema)) = (inputs.first(), schemas.first()) else {
                return Ok(out);
            };
            for (slot, e) in out.iter_mut().zip(exprs) {
                if let Some(c) = monotone_column(e) {
                    if let Some(Some(v)) = input.get(c) {
                        // An expression that fails at the watermark (an overflow far
                        // in the future) carries none rather than stopping the view.
                        *slot = evaluate_at(e, schema, c, v).ok().flatten();
                    }
                }
            }
        }
        NodeKind::Aggregate(spec) => {
            let input = first();
            for (slot, v) in out.iter_mut().zip(input).take(spec.group_count) {
                *slot = v;
            }
        }
        NodeKind::TopN(spec) => {
            let input = first();
            for e in &spec.partition {
                if let Some(c) = plain_column(e) {
                    if let (Some(slot), Some(v)) = (out.get_mut(c), input.get(c)) {
                        *slot = v.clone();
                    }
                }
            }
        }
        NodeKind::Session(spec) => {
            // Rows still to come out belong to sessions ending after the watermark.
            let end = spec.input_schema.fields().len() + 1;
            if let (Some(slot), Some(v)) = (out.get_mut(end), first().get(spec.time)) {
                *slot = v.clone();
            }
        }
        NodeKind::Union => {
            for (c, slot) in out.iter_mut().enumerate() {
                let mut acc: Option<Option<ScalarValue>> = None;
                for input in inputs {
                    let v = input.get(c).cloned().flatten();
                    acc = Some(match acc {
                        None => v,
                        Some(a) => min_of(&a, &v),
                    });
                }
                *slot = acc.flatten();
            }
        }
        NodeKind::Join(spec) => {
            use crate::ops::join::JoinKind;
            let (Some(left), Some(right)) = (inputs.first(), inputs.get(1)) else {
                return Ok(out);
            };
            let nl = spec.left_schema.fields().len();
            if spec.temporal {
                // Each output row comes from a left row as it arrives.
                for (slot, v) in out.iter_mut().zip(left.iter()).take(nl) {
                    *slot = v.clone();
                }
                return Ok(out);
            }
            for (l, r) in spec.left_keys.iter().zip(&spec.right_keys) {
                let (Some(l), Some(r)) = (plain_column(l), plain_column(r)) else {
                    continue;
                };
                let v = min_of(
                    &left.get(l).cloned().flatten(),
                    &right.get(r).cloned().flatten(),
                );
                if v.is_none() {
                    continue;
                }
                let slots: Vec<usize> = match spec.kind {
                    JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full => {
                        vec![l, nl + r]
                    }
                    JoinKind::LeftSemi | JoinKind::LeftAnti => vec![l],
                    JoinKind::RightSemi | JoinKind::RightAnti => vec![r],
                };
                for s in slots {
                    if let Some(slot) = out.get_mut(s) {
                        *slot = v.clone();
                    }
                }
            }
        }
    }
    if out.len() != width {
        return Err(DataflowError::Internal(format!(
            "{} watermarks for {width} columns",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_row_skips_nulls() {
        assert_eq!(latest_row(&Int64Array::from(vec![3, 9, 2])), Some(1));
        assert_eq!(
            latest_row(&Int64Array::from(vec![Some(3), None, Some(5), None])),
            Some(2)
        );
        assert_eq!(latest_row(&Int64Array::from(vec![None::<i64>, None])), None);
        assert_eq!(latest_row(&Int64Array::from(Vec::<i64>::new())), None);
    }
}
