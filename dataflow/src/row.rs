//! Order-preserving binary encoding of rows and keys (Arrow's row format).
//!
//! State tables are keyed by encoded rows: equal values encode to equal bytes and the
//! byte order is the value order, so a `BTreeMap` of encoded values keeps MIN/MAX and
//! RocksDB keeps keys sorted. The encoding is stable for one build of Sabot; state is
//! not meant to move between versions yet.

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};

use crate::error::Result;

/// Encodes and decodes rows of a fixed list of column types.
#[derive(Debug)]
pub struct RowCodec {
    converter: RowConverter,
    types: Vec<DataType>,
}

impl RowCodec {
    pub fn new(types: Vec<DataType>) -> Result<Self> {
        let fields = types.iter().cloned().map(SortField::new).collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
            types,
        })
    }

    /// A codec whose byte order follows the given direction and NULL placement per column.
    pub fn with_options(
        types: Vec<DataType>,
        options: Vec<arrow::compute::SortOptions>,
    ) -> Result<Self> {
        let fields = types
            .iter()
            .cloned()
            .zip(options)
            .map(|(t, o)| SortField::new_with_options(t, o))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
            types,
        })
    }

    pub fn for_schema(schema: &SchemaRef) -> Result<Self> {
        Self::new(
            schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
        )
    }

    pub fn types(&self) -> &[DataType] {
        &self.types
    }

    /// Encodes `columns` (all of the same length) row by row. With no columns every row
    /// encodes to the empty key; callers handle that case through [`Self::is_empty`].
    pub fn encode(&self, columns: &[ArrayRef]) -> Result<Rows> {
        Ok(self.converter.convert_columns(columns)?)
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Decodes rows encoded by this codec back into columns.
    pub fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        Ok(self
            .converter
            .convert_rows(rows.into_iter().map(|r| parser.parse(r)))?)
    }
}

/// A stable 64-bit hash of an encoded key, used to choose a worker.
pub fn hash_key(key: &[u8]) -> u64 {
    // FNV-1a: simple, deterministic across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche so that similar keys spread over workers.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Which worker owns which keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioner {
    pub worker: usize,
    pub workers: usize,
}

impl Partitioner {
    pub fn single() -> Self {
        Self {
            worker: 0,
            workers: 1,
        }
    }

    pub fn worker_of(workers: usize, key: &[u8]) -> usize {
        if workers <= 1 {
            0
        } else {
            (hash_key(key) % workers as u64) as usize
        }
    }

    pub fn owns(&self, key: &[u8]) -> bool {
        Self::worker_of(self.workers, key) == self.worker
    }
}
