//! Union all: passes every input through under the output schema. Linear, stateless.

use arrow::datatypes::SchemaRef;

use crate::batch::{batch_with_schema, ChangeBatch};
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
        let data = batch_with_schema(
            &self.schema,
            batch.data().columns().to_vec(),
            batch.num_rows(),
        )?;
        out.push(batch.with_data(data)?);
        Ok(())
    }
}
