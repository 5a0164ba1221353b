//! Filter: keeps the rows where a predicate is true. Linear, stateless.
//!
//! With an offload ([`FilterOffload`]) the filter buffers the epoch's changes (holding
//! them back until the barrier reorders nothing downstream: a node's whole output of an
//! epoch reaches the next node before that epoch's watermarks do) and evaluates the
//! predicate over them at once on the GPU,
//! as libcudf's AST: the rows and their weights go to the device, the kept ones come
//! back. Runs smaller than `min_rows`, and runs the GPU fails, are filtered on the CPU.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::Operator as BinOp;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;
use sabot_gpu::{BinaryOp, ExprBuilder, NodeId, UnaryOp};
use sabot_storage::StateWriter;

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::ops::partial::{gpu_error, GpuHealth, Kernel, RunBuffer};

/// A filter's predicate as libcudf's AST, and where it runs.
#[derive(Debug, Clone)]
pub struct FilterOffload {
    /// Who evaluates it: the GPU, or (where there is none, in tests) the original
    /// predicate on the CPU over the same buffered runs, which checks the buffering and
    /// the weights' round trip.
    pub gpu: Kernel,
    pub min_rows: usize,
    exprs: ExprBuilder,
    predicate: NodeId,
    /// The translated predicate, for EXPLAIN.
    pub text: String,
}

impl FilterOffload {
    /// The predicate translated for libcudf, or why it cannot be: only what the GPU
    /// computes exactly as the CPU does (integer and boolean comparisons, AND, OR, NOT,
    /// IS [NOT] NULL, IN lists, integer `%` and `/` by a constant other than 0 and -1,
    /// widening casts). Float comparisons stay on the CPU (SQL orders NaN and -0.0 in
    /// ways IEEE comparisons do not), as does integer `+ - *` (the CPU reports overflow).
    pub fn try_new(
        gpu: Kernel,
        min_rows: usize,
        predicate: &Arc<dyn PhysicalExpr>,
        schema: &Schema,
    ) -> std::result::Result<Self, String> {
        // Every column makes the round trip through libcudf unchanged.
        for f in schema.fields() {
            let t = f.data_type();
            let ok = t.is_integer()
                || matches!(
                    t,
                    DataType::Boolean
                        | DataType::Float32
                        | DataType::Float64
                        | DataType::Utf8
                        | DataType::Date32
                        | DataType::Timestamp(_, None)
                );
            if !ok {
                return Err(format!("column {} of type {t}", f.name()));
            }
        }
        let mut exprs = ExprBuilder::new();
        let (root, ty) = translate(predicate, schema, &mut exprs)?;
        if ty != DataType::Boolean {
            return Err("the predicate is not boolean".into());
        }
        Ok(Self {
            gpu,
            min_rows,
            exprs,
            predicate: root,
            text: predicate.to_string(),
        })
    }
}

/// `e` as nodes of `b`, with its type.
fn translate(
    e: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
    b: &mut ExprBuilder,
) -> std::result::Result<(NodeId, DataType), String> {
    let any: &dyn PhysicalExpr = e.as_ref();
    let ty = e.data_type(schema).map_err(|x| x.to_string())?;
    if let Some(c) = any.downcast_ref::<Column>() {
        if !gpu_type(&ty) {
            return Err(format!("column {} of type {ty}", c.name()));
        }
        return Ok((b.column(c.index()), ty));
    }
    if let Some(l) = any.downcast_ref::<Literal>() {
        return literal(l.value(), b).map(|n| (n, ty));
    }
    if let Some(n) = any.downcast_ref::<NotExpr>() {
        let (x, t) = translate(n.arg(), schema, b)?;
        expect_bool(&t)?;
        return Ok((b.unary(UnaryOp::Not, x), DataType::Boolean));
    }
    if let Some(n) = any.downcast_ref::<IsNullExpr>() {
        let (x, _) = translate(n.arg(), schema, b)?;
        return Ok((b.unary(UnaryOp::IsNull, x), DataType::Boolean));
    }
    if let Some(n) = any.downcast_ref::<IsNotNullExpr>() {
        let (x, _) = translate(n.arg(), schema, b)?;
        let is_null = b.unary(UnaryOp::IsNull, x);
        return Ok((b.unary(UnaryOp::Not, is_null), DataType::Boolean));
    }
    if let Some(c) = any.downcast_ref::<CastExpr>() {
        let (x, from) = translate(c.expr(), schema, b)?;
        return match (&from, c.cast_type()) {
            (f, DataType::Int64) if f.is_signed_integer() => {
                Ok((b.unary(UnaryOp::CastInt64, x), DataType::Int64))
            }
            (f, to) if f == to => Ok((x, from)),
            (f, to) => Err(format!("CAST from {f} to {to}")),
        };
    }
    if let Some(list) = any.downcast_ref::<InListExpr>() {
        let (x, t) = translate(list.expr(), schema, b)?;
        if !t.is_integer() && t != DataType::Boolean {
            return Err(format!("IN over {t}"));
        }
        let mut any_eq: Option<NodeId> = None;
        for item in list.list() {
            let (v, vt) = translate(item, schema, b)?;
            if vt != t {
                return Err(format!("IN list item of type {vt} against {t}"));
            }
            let eq = b.binary(BinaryOp::Eq, x, v);
            any_eq = Some(match any_eq {
                Some(acc) => b.binary(BinaryOp::Or, acc, eq),
                None => eq,
            });
        }
        let found = any_eq.ok_or("an empty IN list")?;
        return Ok((
            if list.negated() {
                b.unary(UnaryOp::Not, found)
            } else {
                found
            },
            DataType::Boolean,
        ));
    }
    if let Some(bin) = any.downcast_ref::<BinaryExpr>() {
        let (l, lt) = translate(bin.left(), schema, b)?;
        let (r, rt) = translate(bin.right(), schema, b)?;
        if lt != rt {
            return Err(format!("{} between {lt} and {rt}", bin.op()));
        }
        let op = match bin.op() {
            BinOp::And | BinOp::Or => {
                expect_bool(&lt)?;
                if *bin.op() == BinOp::And {
                    BinaryOp::And
                } else {
                    BinaryOp::Or
                }
            }
            cmp
            @ (BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq) => {
                if !(lt.is_integer() || lt == DataType::Boolean) {
                    return Err(format!("{cmp} over {lt}"));
                }
                match cmp {
                    BinOp::Eq => BinaryOp::Eq,
                    BinOp::NotEq => BinaryOp::NotEq,
                    BinOp::Lt => BinaryOp::Lt,
                    BinOp::LtEq => BinaryOp::LtEq,
                    BinOp::Gt => BinaryOp::Gt,
                    _ => BinaryOp::GtEq,
                }
            }
            m @ (BinOp::Modulo | BinOp::Divide) if lt.is_integer() => {
                // A constant divisor other than 0 and -1: neither a division by zero nor
                // MIN / -1 can happen, so the GPU cannot differ from the CPU.
                let safe = bin
                    .right()
                    .downcast_ref::<Literal>()
                    .and_then(|v| v.value().cast_to(&DataType::Int64).ok())
                    .is_some_and(|v| {
                        !matches!(
                            v,
                            ScalarValue::Int64(Some(0 | -1)) | ScalarValue::Int64(None)
                        )
                    });
                if !safe {
                    return Err(format!("{m} by other than a constant"));
                }
                let op = if *m == BinOp::Modulo {
                    BinaryOp::Mod
                } else {
                    BinaryOp::Div
                };
                return Ok((b.binary(op, l, r), lt));
            }
            other => return Err(format!("operator {other} over {lt}")),
        };
        return Ok((b.binary(op, l, r), DataType::Boolean));
    }
    Err(format!("expression {e}"))
}

fn gpu_type(t: &DataType) -> bool {
    t.is_integer() || *t == DataType::Boolean
}

fn expect_bool(t: &DataType) -> std::result::Result<(), String> {
    if *t == DataType::Boolean {
        Ok(())
    } else {
        Err(format!("a boolean operator over {t}"))
    }
}

fn literal(v: &ScalarValue, b: &mut ExprBuilder) -> std::result::Result<NodeId, String> {
    Ok(match v {
        ScalarValue::Int32(Some(x)) => b.int32(*x),
        ScalarValue::Int64(Some(x)) => b.int64(*x),
        ScalarValue::Boolean(Some(x)) => b.boolean(*x),
        other => return Err(format!("literal {other:?}")),
    })
}

pub struct FilterOp {
    predicate: Arc<dyn PhysicalExpr>,
    offload: Option<FilterOffload>,
    pending: RunBuffer,
    gpu_health: GpuHealth,
}

impl FilterOp {
    pub fn new(predicate: Arc<dyn PhysicalExpr>) -> Self {
        Self {
            predicate,
            offload: None,
            pending: RunBuffer::default(),
            gpu_health: GpuHealth::default(),
        }
    }

    pub fn with_offload(predicate: Arc<dyn PhysicalExpr>, offload: FilterOffload) -> Self {
        Self {
            offload: Some(offload),
            ..Self::new(predicate)
        }
    }

    fn filter_cpu(&self, batch: &ChangeBatch, out: &mut Vec<ChangeBatch>) -> Result<()> {
        let mask = self
            .predicate
            .evaluate(batch.data())?
            .into_array(batch.num_rows())?;
        let mask = mask
            .as_boolean_opt()
            .ok_or_else(|| DataflowError::Internal("filter predicate is not boolean".into()))?;
        let kept = batch.filter(mask)?;
        if !kept.is_empty() {
            out.push(kept);
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<ChangeBatch>) -> Result<()> {
        let (batches, rows) = self.pending.take();
        let Some(offload) = &self.offload else {
            return Ok(());
        };
        if rows > 0 && rows >= offload.min_rows && self.gpu_health.usable() {
            // Nothing reaches `out` unless the whole run went through.
            let mut kept = Vec::new();
            match self.filter_run(offload, &batches, &mut kept) {
                Ok(()) => {
                    self.gpu_health.succeeded("Filter", rows);
                    out.extend(kept);
                    return Ok(());
                }
                Err(DataflowError::Gpu {
                    cpu_can_take_over: true,
                    message,
                }) => self.gpu_health.failed("Filter", &message, rows),
                Err(e) => return Err(e),
            }
        }
        for b in &batches {
            self.filter_cpu(b, out)?;
        }
        Ok(())
    }

    /// One buffered run through the offload: the rows with their weights as a last
    /// column, filtered together.
    fn filter_run(
        &self,
        offload: &FilterOffload,
        batches: &[ChangeBatch],
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let schema = batches[0].schema();
        let run = ChangeBatch::concat(&schema, batches)?;
        let gpu = match &offload.gpu {
            Kernel::Cpu => return self.filter_cpu(&run, out),
            Kernel::Gpu(gpu) => gpu,
        };
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("__weight", DataType::Int64, false));
        let mut columns: Vec<ArrayRef> = run.data().columns().to_vec();
        columns.push(Arc::new(run.weights().clone()));
        let with_weights = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let mut exprs = offload.exprs.clone();
        let projections: Vec<NodeId> = (0..with_weights.num_columns())
            .map(|c| exprs.column(c))
            .collect();
        let kept = gpu
            .filter_project(&with_weights, &exprs, Some(offload.predicate), &projections)
            .map_err(gpu_error)?;
        let kept = rebuild(&schema, &kept)?;
        if !kept.is_empty() {
            out.push(kept);
        }
        Ok(())
    }
}

/// The GPU's output (the columns, then the weights) back as a change batch of `schema`.
fn rebuild(schema: &SchemaRef, kept: &RecordBatch) -> Result<ChangeBatch> {
    let n = schema.fields().len();
    if kept.num_columns() != n + 1 {
        return Err(DataflowError::Internal(
            "the GPU filter returned other columns than it was given".into(),
        ));
    }
    let weights = arrow::compute::cast(kept.column(n), &DataType::Int64)?;
    let weights: &Int64Array = weights.as_primitive();
    let data = batch_with_schema(schema, kept.columns()[..n].to_vec(), kept.num_rows())?;
    ChangeBatch::try_new(data, weights.clone())
}

impl Operator for FilterOp {
    fn name(&self) -> &'static str {
        "Filter"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        if self.offload.is_none() {
            return self.filter_cpu(&batch, out);
        }
        if self.pending.push(batch) {
            self.flush(out)?;
        }
        Ok(())
    }

    fn on_barrier(
        &mut self,
        _epoch: u64,
        _state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        self.flush(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_expr::expressions::{col, lit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("k", DataType::Int32, true),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ])
    }

    fn offload(e: Arc<dyn PhysicalExpr>) -> std::result::Result<FilterOffload, String> {
        FilterOffload::try_new(Kernel::Cpu, 1, &e, &schema())
    }

    fn bin(l: Arc<dyn PhysicalExpr>, op: BinOp, r: Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    #[test]
    fn integer_and_boolean_predicates_translate() {
        let s = schema();
        let id = col("id", &s).unwrap();
        let k = col("k", &s).unwrap();
        let e = bin(
            bin(
                bin(Arc::clone(&id), BinOp::Modulo, lit(7i64)),
                BinOp::Eq,
                lit(0i64),
            ),
            BinOp::Or,
            Arc::new(NotExpr::new(bin(k, BinOp::Lt, lit(3i32)))),
        );
        let o = offload(e).unwrap();
        // id, 7, %, 0, =, k, 3, <, NOT, OR
        assert_eq!(o.exprs.len(), 10);
        assert_eq!(o.predicate.index(), 9);
        assert!(offload(Arc::new(IsNullExpr::new(id))).is_ok());
    }

    #[test]
    fn what_could_differ_from_the_cpu_stays_there() {
        let s = schema();
        let id = || col("id", &s).unwrap();
        let f = col("f", &s).unwrap();
        let refused = [
            // IEEE comparisons differ from SQL's on NaN and -0.0.
            bin(f, BinOp::Gt, lit(1.5f64)),
            // The CPU reports overflow; the GPU would wrap.
            bin(bin(id(), BinOp::Plus, lit(1i64)), BinOp::Gt, lit(3i64)),
            // Division by a column could divide by zero.
            bin(bin(id(), BinOp::Modulo, id()), BinOp::Eq, lit(0i64)),
            bin(bin(id(), BinOp::Divide, lit(0i64)), BinOp::Eq, lit(0i64)),
            bin(bin(id(), BinOp::Divide, lit(-1i64)), BinOp::Eq, lit(0i64)),
            // No string operations in the AST here.
            bin(col("s", &s).unwrap(), BinOp::Eq, lit("x")),
        ];
        for e in refused {
            assert!(offload(Arc::clone(&e)).is_err(), "{e} translated");
        }
        // A column libcudf would not hand back unchanged keeps the whole filter here.
        let with_decimal = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("d", DataType::Decimal128(10, 2), true),
        ]);
        let e = bin(col("id", &with_decimal).unwrap(), BinOp::Gt, lit(1i64));
        assert!(FilterOffload::try_new(Kernel::Cpu, 1, &e, &with_decimal).is_err());
    }
}
