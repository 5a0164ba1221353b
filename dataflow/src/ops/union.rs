//! Union all: passes every input through under the output schema. Linear, stateless.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;

use crate::batch::ChangeBatch;
use crate::error::Result;
use crate::operator::Operator;

pub struct UnionOp {
    schema: SchemaRef,
}

impl UnionOp {
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema }
    }
}

impl Operator for UnionOp {
    fn name(&self) -> &'static str {
        "Union"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let columns = batch
            .data()
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(Arc::clone(c))
                } else {
                    cast(c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let data = RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options)?;
        out.push(batch.with_data(data)?);
        Ok(())
    }
}
