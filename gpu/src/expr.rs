//! Expression trees for the shim's filter and projection, built bottom-up: a node's
//! operands are nodes built before it.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch,
};
use arrow::compute::kernels::{boolean, cmp, numeric};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

use crate::sys;

/// A node of an [`ExprBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeId(pub(crate) i32);

impl NodeId {
    /// Its position in its builder's node array.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// Truncating over integers, as SQL's.
    Div,
    Mod,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    /// SQL's three-valued AND.
    And,
    /// SQL's three-valued OR.
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    IsNull,
    CastInt64,
    CastFloat64,
    Abs,
}

impl BinaryOp {
    fn code(self) -> u32 {
        match self {
            BinaryOp::Add => sys::SABOT_CUDF_OP_ADD,
            BinaryOp::Sub => sys::SABOT_CUDF_OP_SUB,
            BinaryOp::Mul => sys::SABOT_CUDF_OP_MUL,
            BinaryOp::Div => sys::SABOT_CUDF_OP_DIV,
            BinaryOp::Mod => sys::SABOT_CUDF_OP_MOD,
            BinaryOp::Eq => sys::SABOT_CUDF_OP_EQ,
            BinaryOp::NotEq => sys::SABOT_CUDF_OP_NE,
            BinaryOp::Lt => sys::SABOT_CUDF_OP_LT,
            BinaryOp::LtEq => sys::SABOT_CUDF_OP_LE,
            BinaryOp::Gt => sys::SABOT_CUDF_OP_GT,
            BinaryOp::GtEq => sys::SABOT_CUDF_OP_GE,
            BinaryOp::And => sys::SABOT_CUDF_OP_AND,
            BinaryOp::Or => sys::SABOT_CUDF_OP_OR,
        }
    }
}

impl UnaryOp {
    fn code(self) -> u32 {
        match self {
            UnaryOp::Not => sys::SABOT_CUDF_OP_NOT,
            UnaryOp::IsNull => sys::SABOT_CUDF_OP_IS_NULL,
            UnaryOp::CastInt64 => sys::SABOT_CUDF_OP_CAST_INT64,
            UnaryOp::CastFloat64 => sys::SABOT_CUDF_OP_CAST_FLOAT64,
            UnaryOp::Abs => sys::SABOT_CUDF_OP_ABS,
        }
    }
}

/// A flat array of expression nodes, as `sabot_cudf_filter_project` takes them.
#[derive(Debug, Clone, Default)]
pub struct ExprBuilder {
    nodes: Vec<sys::sabot_cudf_node>,
}

impl ExprBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn nodes(&self) -> &[sys::sabot_cudf_node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn push(
        &mut self,
        tag: u32,
        op: u32,
        column: i32,
        operands: [i32; 2],
        ival: i64,
        fval: f64,
    ) -> NodeId {
        let id = NodeId(self.nodes.len() as i32);
        self.nodes.push(sys::sabot_cudf_node {
            tag: tag as i32,
            op: op as i32,
            column,
            left: operands[0],
            right: operands[1],
            ival,
            fval,
        });
        id
    }

    /// An input column of the batch the expression runs over.
    pub fn column(&mut self, index: usize) -> NodeId {
        let column = i32::try_from(index).unwrap_or(i32::MAX);
        self.push(sys::SABOT_CUDF_NODE_COLUMN, 0, column, [-1, -1], 0, 0.0)
    }

    pub fn int32(&mut self, v: i32) -> NodeId {
        self.push(
            sys::SABOT_CUDF_NODE_INT32,
            0,
            -1,
            [-1, -1],
            i64::from(v),
            0.0,
        )
    }

    pub fn int64(&mut self, v: i64) -> NodeId {
        self.push(sys::SABOT_CUDF_NODE_INT64, 0, -1, [-1, -1], v, 0.0)
    }

    pub fn float32(&mut self, v: f32) -> NodeId {
        self.push(
            sys::SABOT_CUDF_NODE_FLOAT32,
            0,
            -1,
            [-1, -1],
            0,
            f64::from(v),
        )
    }

    pub fn float64(&mut self, v: f64) -> NodeId {
        self.push(sys::SABOT_CUDF_NODE_FLOAT64, 0, -1, [-1, -1], 0, v)
    }

    pub fn boolean(&mut self, v: bool) -> NodeId {
        self.push(
            sys::SABOT_CUDF_NODE_BOOL,
            0,
            -1,
            [-1, -1],
            i64::from(v),
            0.0,
        )
    }

    /// Both operands must have the same type (cast first), as libcudf's AST requires.
    pub fn binary(&mut self, op: BinaryOp, left: NodeId, right: NodeId) -> NodeId {
        self.push(
            sys::SABOT_CUDF_NODE_OP,
            op.code(),
            -1,
            [left.0, right.0],
            0,
            0.0,
        )
    }

    pub fn unary(&mut self, op: UnaryOp, operand: NodeId) -> NodeId {
        self.push(
            sys::SABOT_CUDF_NODE_OP,
            op.code(),
            -1,
            [operand.0, -1],
            0,
            0.0,
        )
    }
}

impl ExprBuilder {
    /// Node `root` evaluated on the CPU over `batch`, as libcudf's AST computes it:
    /// operators yield NULL where an operand is NULL (AND and OR are SQL's three-valued
    /// ones, IS NULL is never NULL), integer `+ - *` wrap, integer DIV truncates and MOD
    /// takes the dividend's sign. A reference for checking what is sent to the device
    /// where there is none (ABS is not in it).
    pub fn evaluate(&self, batch: &RecordBatch, root: NodeId) -> Result<ArrayRef, ArrowError> {
        let n = batch.num_rows();
        let node = self
            .nodes
            .get(root.index())
            .ok_or_else(|| ArrowError::InvalidArgumentError(format!("no node {}", root.0)))?;
        let operand = |i: i32| -> Result<ArrayRef, ArrowError> {
            if i < 0 || i >= root.0 {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "node {} has an operand that is not an earlier node",
                    root.0
                )));
            }
            self.evaluate(batch, NodeId(i))
        };
        let tag = node.tag as u32;
        Ok(match tag {
            sys::SABOT_CUDF_NODE_COLUMN => usize::try_from(node.column)
                .ok()
                .and_then(|c| batch.columns().get(c).cloned())
                .ok_or_else(|| ArrowError::InvalidArgumentError("column out of range".into()))?,
            sys::SABOT_CUDF_NODE_INT32 => {
                Arc::new(Int32Array::from_value(node.ival as i32, n)) as ArrayRef
            }
            sys::SABOT_CUDF_NODE_INT64 => Arc::new(Int64Array::from_value(node.ival, n)),
            sys::SABOT_CUDF_NODE_FLOAT32 => Arc::new(Float32Array::from_value(node.fval as f32, n)),
            sys::SABOT_CUDF_NODE_FLOAT64 => Arc::new(Float64Array::from_value(node.fval, n)),
            sys::SABOT_CUDF_NODE_BOOL => Arc::new(BooleanArray::from(vec![node.ival != 0; n])),
            sys::SABOT_CUDF_NODE_OP => {
                let op = node.op as u32;
                let l = operand(node.left)?;
                let bools = |a: &ArrayRef| -> Result<BooleanArray, ArrowError> {
                    a.as_boolean_opt().cloned().ok_or_else(|| {
                        ArrowError::InvalidArgumentError("a logical operand is not boolean".into())
                    })
                };
                match op {
                    sys::SABOT_CUDF_OP_NOT => Arc::new(boolean::not(&bools(&l)?)?),
                    sys::SABOT_CUDF_OP_IS_NULL => Arc::new(arrow::compute::is_null(&l)?),
                    sys::SABOT_CUDF_OP_CAST_INT64 => arrow::compute::cast(&l, &DataType::Int64)?,
                    sys::SABOT_CUDF_OP_CAST_FLOAT64 => {
                        arrow::compute::cast(&l, &DataType::Float64)?
                    }
                    _ => {
                        let r = operand(node.right)?;
                        match op {
                            sys::SABOT_CUDF_OP_ADD => numeric::add_wrapping(&l, &r)?,
                            sys::SABOT_CUDF_OP_SUB => numeric::sub_wrapping(&l, &r)?,
                            sys::SABOT_CUDF_OP_MUL => numeric::mul_wrapping(&l, &r)?,
                            sys::SABOT_CUDF_OP_DIV => numeric::div(&l, &r)?,
                            sys::SABOT_CUDF_OP_MOD => numeric::rem(&l, &r)?,
                            sys::SABOT_CUDF_OP_EQ => Arc::new(cmp::eq(&l, &r)?),
                            sys::SABOT_CUDF_OP_NE => Arc::new(cmp::neq(&l, &r)?),
                            sys::SABOT_CUDF_OP_LT => Arc::new(cmp::lt(&l, &r)?),
                            sys::SABOT_CUDF_OP_LE => Arc::new(cmp::lt_eq(&l, &r)?),
                            sys::SABOT_CUDF_OP_GT => Arc::new(cmp::gt(&l, &r)?),
                            sys::SABOT_CUDF_OP_GE => Arc::new(cmp::gt_eq(&l, &r)?),
                            sys::SABOT_CUDF_OP_AND => {
                                Arc::new(boolean::and_kleene(&bools(&l)?, &bools(&r)?)?)
                            }
                            sys::SABOT_CUDF_OP_OR => {
                                Arc::new(boolean::or_kleene(&bools(&l)?, &bools(&r)?)?)
                            }
                            other => {
                                return Err(ArrowError::NotYetImplemented(format!(
                                    "operator {other} in the CPU reference"
                                )))
                            }
                        }
                    }
                }
            }
            other => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "unknown node tag {other}"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_refer_to_earlier_nodes() {
        let mut b = ExprBuilder::new();
        let price = b.column(2);
        let limit = b.int64(100);
        let gt = b.binary(BinaryOp::Gt, price, limit);
        let not = b.unary(UnaryOp::Not, gt);
        let n = b.nodes();
        assert_eq!(n.len(), 4);
        assert_eq!(
            (n[0].tag, n[0].column),
            (sys::SABOT_CUDF_NODE_COLUMN as i32, 2)
        );
        assert_eq!(
            (n[1].tag, n[1].ival),
            (sys::SABOT_CUDF_NODE_INT64 as i32, 100)
        );
        assert_eq!(
            (n[2].op, n[2].left, n[2].right),
            (sys::SABOT_CUDF_OP_GT as i32, 0, 1)
        );
        assert_eq!(
            (n[3].op, n[3].left, n[3].right),
            (sys::SABOT_CUDF_OP_NOT as i32, 2, -1)
        );
        assert_eq!(not, NodeId(3));
    }

    #[test]
    fn the_cpu_reference_reads_nodes_as_libcudf_does() {
        use arrow::array::{Array, Int64Array};
        use arrow::datatypes::{Field, Schema};
        let x: ArrayRef = Arc::new(Int64Array::from(vec![Some(-7), Some(7), None]));
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema, vec![x]).unwrap();
        let mut b = ExprBuilder::new();
        let col = b.column(0);
        let two = b.int64(2);
        let div = b.binary(BinaryOp::Div, col, two);
        let rem = b.binary(BinaryOp::Mod, col, two);
        let is_null = b.unary(UnaryOp::IsNull, col);
        let as_int = b.unary(UnaryOp::CastInt64, is_null);
        let ints = |a: ArrayRef| -> Vec<Option<i64>> {
            a.as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .collect()
        };
        // Truncating division, remainder with the dividend's sign, NULL in and out.
        assert_eq!(
            ints(b.evaluate(&batch, div).unwrap()),
            [Some(-3), Some(3), None]
        );
        assert_eq!(
            ints(b.evaluate(&batch, rem).unwrap()),
            [Some(-1), Some(1), None]
        );
        assert_eq!(
            ints(b.evaluate(&batch, as_int).unwrap()),
            [Some(0), Some(0), Some(1)]
        );
        assert!(b.evaluate(&batch, NodeId(9)).is_err());
        assert_eq!(b.evaluate(&batch, is_null).unwrap().null_count(), 0);
    }
}
