//! Small binary encoding helpers for state values.

use crate::error::{DataflowError, Result};

#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i128(&mut self, v: i128) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        put_bytes(&mut self.buf, v);
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
    /// What was written so far, leaving the writer empty for the next value.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Appends `len (u32, little endian) ++ v` to `buf`, as [`Writer::bytes`] does and
/// [`Reader::bytes`] reads back.
pub fn put_bytes(buf: &mut Vec<u8>, v: &[u8]) {
    buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
    buf.extend_from_slice(v);
}

#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(DataflowError::Corrupt("state value too short".into()));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        s.try_into()
            .map_err(|_| DataflowError::Corrupt("bad length".into()))
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(self.array()?))
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        self.take(n)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Splits a `len(key) ++ key ++ rest` state key.
pub fn split_prefixed(key: &[u8]) -> Result<(&[u8], &[u8])> {
    let mut r = Reader::new(key);
    let k = r.bytes()?;
    Ok((k, r.buf))
}

/// Builds a `len(key) ++ key ++ rest` state key.
pub fn join_prefixed(key: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + key.len() + rest.len());
    v.extend_from_slice(&(key.len() as u32).to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(rest);
    v
}

/// The state key of a row kept by key and time (session windows, ASOF joins, temporal
/// filters): the key, the time (8 bytes, big endian), then the row.
pub fn timed_row_key(key: &[u8], time: i64, row: &[u8]) -> Vec<u8> {
    let mut rest = Vec::with_capacity(8 + row.len());
    rest.extend_from_slice(&time.to_be_bytes());
    rest.extend_from_slice(row);
    join_prefixed(key, &rest)
}

/// A state entry written under [`timed_row_key`] with its multiplicity (8 bytes, little
/// endian): (key, time, row, multiplicity).
pub fn split_timed_row<'a>(k: &'a [u8], v: &[u8]) -> Result<(&'a [u8], i64, &'a [u8], i64)> {
    let (key, rest) = split_prefixed(k)?;
    let (Some(time), Some(row), Ok(count)) = (rest.get(..8), rest.get(8..), <[u8; 8]>::try_from(v))
    else {
        return Err(DataflowError::Corrupt("timed row state entry".into()));
    };
    let time: [u8; 8] = time
        .try_into()
        .map_err(|_| DataflowError::Corrupt("timed row time".into()))?;
    Ok((
        key,
        i64::from_be_bytes(time),
        row,
        i64::from_le_bytes(count),
    ))
}

/// The state key of a row kept in order within a partition (top-N, window functions):
/// the partition, the order key, then the row.
pub fn ordered_row_key(partition: &[u8], order: &[u8], row: &[u8]) -> Vec<u8> {
    // join_prefixed(partition, join_prefixed(order, row)), in one allocation.
    let mut v = Vec::with_capacity(8 + partition.len() + order.len() + row.len());
    v.extend_from_slice(&(partition.len() as u32).to_le_bytes());
    v.extend_from_slice(partition);
    v.extend_from_slice(&(order.len() as u32).to_le_bytes());
    v.extend_from_slice(order);
    v.extend_from_slice(row);
    v
}

/// The parts of an [`ordered_row_key`]: (partition, order key, row).
pub fn split_ordered_key(key: &[u8]) -> Result<(&[u8], &[u8], &[u8])> {
    let (partition, rest) = split_prefixed(key)?;
    let (order, row) = split_prefixed(rest)?;
    Ok((partition, order, row))
}

/// A row kept in order within a partition: (partition, order key, row, multiplicity).
pub type OrderedRow<'a> = (&'a [u8], &'a [u8], &'a [u8], i64);

/// A state entry written under [`ordered_row_key`] with its multiplicity (8 bytes, little
/// endian): (partition, order key, row, multiplicity).
pub fn split_ordered_row<'a>(key: &'a [u8], value: &[u8]) -> Result<OrderedRow<'a>> {
    let (partition, order, row) = split_ordered_key(key)?;
    let count: [u8; 8] = value
        .try_into()
        .map_err(|_| DataflowError::Corrupt("row count is not 8 bytes".into()))?;
    Ok((partition, order, row, i64::from_le_bytes(count)))
}
