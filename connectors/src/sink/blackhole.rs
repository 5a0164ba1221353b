//! `connector = 'blackhole'`: a sink that drops what it is given, as Flink's and
//! RisingWave's do. It runs a query to its end without writing anywhere (benchmarks,
//! trying a query's cost); the rows it dropped are counted in `rows()`.

use arrow::array::{Int64Array, RecordBatch};

use super::SinkWriter;
use crate::error::Result;

#[derive(Debug, Default)]
pub struct BlackholeSink {
    rows: u64,
}

impl BlackholeSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows (inserts and deletes, by weight) it has been given.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

impl SinkWriter for BlackholeSink {
    fn prepare(
        &mut self,
        _epoch: u64,
        changes: &[(RecordBatch, Int64Array)],
    ) -> Result<Option<Vec<u8>>> {
        let n: u64 = changes
            .iter()
            .flat_map(|(_, w)| w.values().iter())
            .map(|w| w.unsigned_abs())
            .sum();
        self.rows += n;
        Ok(None)
    }

    fn commit(&mut self, _epoch: u64) -> Result<()> {
        Ok(())
    }

    fn recover(&mut self, _committed: u64, _outbox: Vec<(u64, Vec<u8>)>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_what_it_drops() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("a", arrow::datatypes::DataType::Int64, true),
        ]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let mut s = BlackholeSink::new();
        s.recover(0, Vec::new()).unwrap();
        let out = s
            .prepare(1, &[(batch, Int64Array::from(vec![1, -2, 1]))])
            .unwrap();
        assert!(out.is_none());
        s.commit(1).unwrap();
        assert_eq!(s.rows(), 4);
    }
}
