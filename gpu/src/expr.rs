//! Expression trees for the shim's filter and projection, built bottom-up: a node's
//! operands are nodes built before it.

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
}
