//! Processing time: appends the epoch's clock to every row as one more column
//! (`PROCTIME()` in a view's select list). A row keeps the time it was first seen,
//! so the input must only ever add rows (a retraction could not find its row again).

use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampNanosecondArray};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use crate::batch::{batch_with_schema, ChangeBatch};
use crate::error::{DataflowError, Result};
use crate::operator::Operator;

pub struct ProcessingTimeOp {
    /// The input's columns, then the clock (a nanosecond timestamp).
    schema: SchemaRef,
    now: Option<i64>,
}

impl ProcessingTimeOp {
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema, now: None }
    }
}

impl Operator for ProcessingTimeOp {
    fn name(&self) -> &'static str {
        "ProcessingTime"
    }

    fn on_clock(&mut self, now_ns: i64, _out: &mut Vec<ChangeBatch>) -> Result<()> {
        self.now = Some(now_ns);
        Ok(())
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let now = self.now.ok_or_else(|| {
            DataflowError::Internal("processing time asked for before the clock".into())
        })?;
        let tz = match self.schema.fields().last().map(|f| f.data_type()) {
            Some(DataType::Timestamp(TimeUnit::Nanosecond, tz)) => tz.clone(),
            other => {
                return Err(DataflowError::Internal(format!(
                    "the processing time column has type {other:?}"
                )))
            }
        };
        let n = batch.num_rows();
        let clock: ArrayRef =
            Arc::new(TimestampNanosecondArray::from(vec![now; n]).with_timezone_opt(tz));
        let mut columns = batch.data().columns().to_vec();
        columns.push(clock);
        let data = batch_with_schema(&self.schema, columns, n)?;
        out.push(batch.with_data(data)?);
        Ok(())
    }
}
