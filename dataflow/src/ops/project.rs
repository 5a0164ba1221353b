//! Project: computes expressions over each row. Linear, stateless.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::error::Result;
use crate::operator::Operator;

pub struct ProjectOp {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl ProjectOp {
    pub fn new(exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef) -> Self {
        Self { exprs, schema }
    }
}

impl Operator for ProjectOp {
    fn name(&self) -> &'static str {
        "Project"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let n = batch.num_rows();
        let columns = self
            .exprs
            .iter()
            .map(|e| e.evaluate(batch.data())?.into_array(n))
            .collect::<Result<Vec<_>, _>>()?;
        let data = batch_with_schema(&self.schema, columns, n)?;
        out.push(batch.with_data(data)?);
        Ok(())
    }
}
