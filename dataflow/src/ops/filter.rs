//! Filter: keeps the rows where a predicate is true. Linear, stateless.

use std::sync::Arc;

use arrow::array::AsArray;
use datafusion::physical_expr::PhysicalExpr;

use crate::batch::ChangeBatch;
use crate::error::{DataflowError, Result};
use crate::operator::Operator;

pub struct FilterOp {
    predicate: Arc<dyn PhysicalExpr>,
}

impl FilterOp {
    pub fn new(predicate: Arc<dyn PhysicalExpr>) -> Self {
        Self { predicate }
    }
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
}
