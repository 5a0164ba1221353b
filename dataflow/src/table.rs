//! Tables: the rows that DML writes, and the changelog they feed to views.
//!
//! A table with a primary key keeps `key → row`; one without is an append-only multiset
//! (`row → count`; UPDATE and DELETE still work on it, row by row). Every accepted
//! statement is checked in full before any row changes, so a statement that fails (a
//! duplicate key, a NULL key) changes nothing. Changes accumulate as a pending changelog
//! until the coordinator takes them at the next barrier.

use std::sync::Arc;

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::ChangeBatch;
use crate::error::{DataflowError, Result};
use crate::row::RowCodec;

pub struct TableState {
    name: String,
    schema: SchemaRef,
    /// Primary key column indices; empty for an append-only table.
    pk: Vec<usize>,
    row_codec: RowCodec,
    pk_codec: RowCodec,
    table: StateTableId,
    /// With a primary key: key → row.
    by_key: HashMap<Vec<u8>, Vec<u8>>,
    /// Without: row → multiplicity.
    multiset: HashMap<Vec<u8>, i64>,
    dirty: HashSet<Vec<u8>>,
    pending: Vec<ChangeBatch>,
}

impl TableState {
    pub fn try_new(
        name: &str,
        schema: SchemaRef,
        pk: Vec<usize>,
        table: StateTableId,
    ) -> Result<Self> {
        let pk_types = pk
            .iter()
            .map(|i| schema.field(*i).data_type().clone())
            .collect();
        Ok(Self {
            name: name.to_string(),
            row_codec: RowCodec::for_schema(&schema)?,
            pk_codec: RowCodec::new(pk_types)?,
            schema,
            pk,
            table,
            by_key: HashMap::new(),
            multiset: HashMap::new(),
            dirty: HashSet::new(),
            pending: Vec::new(),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn state_table(&self) -> StateTableId {
        self.table
    }

    pub fn primary_key(&self) -> &[usize] {
        &self.pk
    }

    fn pk_columns(&self, data: &RecordBatch) -> Vec<ArrayRef> {
        self.pk
            .iter()
            .map(|i| Arc::clone(data.column(*i)))
            .collect()
    }

    fn check_not_null(&self, data: &RecordBatch) -> Result<()> {
        self.check_columns(data.columns())
    }

    /// Refuses NULLs in NOT NULL and key columns (SQLSTATE 23502), before the columns are
    /// put under the table's schema.
    pub fn check_columns(&self, columns: &[ArrayRef]) -> Result<()> {
        for (i, f) in self.schema.fields().iter().enumerate() {
            let nullable = f.is_nullable() && !self.pk.contains(&i);
            if !nullable && columns.get(i).is_some_and(|c| c.null_count() > 0) {
                return Err(DataflowError::user(
                    "23502",
                    format!(
                        "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                        f.name(),
                        self.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn duplicate_key(&self, data: &RecordBatch, row: usize) -> DataflowError {
        let names: Vec<&str> = self
            .pk
            .iter()
            .map(|i| self.schema.field(*i).name().as_str())
            .collect();
        let values: Vec<String> = self
            .pk
            .iter()
            .map(|i| {
                arrow::util::display::array_value_to_string(data.column(*i), row)
                    .unwrap_or_else(|_| "?".into())
            })
            .collect();
        DataflowError::user(
            "23505",
            format!(
                "duplicate key value violates unique constraint \"{}_pkey\": Key ({})=({}) already exists.",
                self.name,
                names.join(", "),
                values.join(", ")
            ),
        )
    }

    /// Inserts rows (already cast to the table's schema). All or nothing.
    pub fn insert(&mut self, data: RecordBatch) -> Result<usize> {
        self.replace(None, data)
    }

    /// Deletes rows, given as they are in the table. Returns how many were deleted.
    pub fn delete(&mut self, old: RecordBatch) -> Result<usize> {
        let n = old.num_rows();
        let rows = self.row_codec.encode(old.columns())?;
        if self.pk.is_empty() {
            for r in rows.iter() {
                let c = self.multiset.get(r.data()).copied().unwrap_or(0);
                if c <= 0 {
                    return Err(DataflowError::Internal(
                        "deleting a row that is not there".into(),
                    ));
                }
            }
            for r in rows.iter() {
                let key = r.data();
                if let Some(c) = self.multiset.get_mut(key) {
                    *c -= 1;
                    if *c == 0 {
                        self.multiset.remove(key);
                    }
                }
                self.dirty.insert(key.to_vec());
            }
        } else {
            let keys = self.pk_codec.encode(&self.pk_columns(&old))?;
            for k in keys.iter() {
                self.by_key.remove(k.data());
                self.dirty.insert(k.data().to_vec());
            }
        }
        if n > 0 {
            self.pending.push(ChangeBatch::deletes(old));
        }
        Ok(n)
    }

    /// Replaces `old` rows (as they are in the table, possibly none) by `new` rows: the
    /// UPDATE path, and INSERT with `old = None`. All or nothing.
    pub fn replace(&mut self, old: Option<RecordBatch>, new: RecordBatch) -> Result<usize> {
        self.check_not_null(&new)?;
        if !self.pk.is_empty() {
            let removed: HashSet<Vec<u8>> = match &old {
                Some(o) => self
                    .pk_codec
                    .encode(&self.pk_columns(o))?
                    .iter()
                    .map(|k| k.data().to_vec())
                    .collect(),
                None => HashSet::new(),
            };
            let keys = self.pk_codec.encode(&self.pk_columns(&new))?;
            let mut seen = HashSet::new();
            for (i, k) in keys.iter().enumerate() {
                let k = k.data();
                if (self.by_key.contains_key(k) && !removed.contains(k)) || !seen.insert(k) {
                    return Err(self.duplicate_key(&new, i));
                }
            }
        }
        if let Some(o) = old {
            self.delete(o)?;
        }
        let rows = self.row_codec.encode(new.columns())?;
        if self.pk.is_empty() {
            for r in rows.iter() {
                *self.multiset.entry(r.data().to_vec()).or_insert(0) += 1;
                self.dirty.insert(r.data().to_vec());
            }
        } else {
            let keys = self.pk_codec.encode(&self.pk_columns(&new))?;
            for (k, r) in keys.iter().zip(rows.iter()) {
                self.by_key.insert(k.data().to_vec(), r.data().to_vec());
                self.dirty.insert(k.data().to_vec());
            }
        }
        let n = new.num_rows();
        if n > 0 {
            self.pending.push(ChangeBatch::inserts(new));
        }
        Ok(n)
    }

    /// Inserts rows or replaces the rows with the same primary key (a connector's
    /// upserts). Within the batch the last row of a key wins; rows with a NULL key are
    /// left out and counted in the result. Needs a primary key.
    pub fn upsert(&mut self, new: RecordBatch) -> Result<usize> {
        if self.pk.is_empty() {
            return Err(DataflowError::Internal(
                "upsert into a table without a key".into(),
            ));
        }
        let pk_columns = self.pk_columns(&new);
        let null_key = |i: usize| pk_columns.iter().any(|c| c.is_null(i));
        let keys = self.pk_codec.encode(&pk_columns)?;
        let rows = self.row_codec.encode(new.columns())?;
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        let mut skipped = 0;
        for i in 0..new.num_rows() {
            if null_key(i) {
                skipped += 1;
            } else {
                last.insert(keys.row(i).data(), i);
            }
        }
        let mut old_rows: Vec<Vec<u8>> = Vec::new();
        let mut inserted: Vec<u32> = Vec::new();
        for i in 0..new.num_rows() {
            let k = keys.row(i).data();
            if last.get(k) != Some(&i) {
                continue;
            }
            let row = rows.row(i).data();
            match self.by_key.get(k) {
                Some(old) if old.as_slice() == row => continue,
                Some(old) => old_rows.push(old.clone()),
                None => {}
            }
            self.by_key.insert(k.to_vec(), row.to_vec());
            self.dirty.insert(k.to_vec());
            inserted.push(i as u32);
        }
        self.push_replaced(old_rows, &new, inserted)?;
        Ok(skipped)
    }

    /// Deletes the rows whose primary key is in `keys` (the key columns, in key order);
    /// keys that are not there are ignored.
    pub fn delete_keys(&mut self, keys: &[ArrayRef]) -> Result<()> {
        let encoded = self.pk_codec.encode(keys)?;
        let mut old_rows = Vec::new();
        for k in encoded.iter() {
            if let Some(old) = self.by_key.remove(k.data()) {
                self.dirty.insert(k.data().to_vec());
                old_rows.push(old);
            }
        }
        let empty = RecordBatch::new_empty(Arc::clone(&self.schema));
        self.push_replaced(old_rows, &empty, Vec::new())
    }

    /// Adds the retraction of `old_rows` (encoded) and the insertion of `new[inserted]`
    /// to the pending changelog.
    fn push_replaced(
        &mut self,
        old_rows: Vec<Vec<u8>>,
        new: &RecordBatch,
        inserted: Vec<u32>,
    ) -> Result<()> {
        if !old_rows.is_empty() {
            let columns = self.row_codec.decode(old_rows.iter().map(Vec::as_slice))?;
            let old = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
            self.pending.push(ChangeBatch::deletes(old));
        }
        if !inserted.is_empty() {
            let rows = arrow::compute::take_record_batch(new, &UInt32Array::from(inserted))?;
            self.pending.push(ChangeBatch::inserts(rows));
        }
        Ok(())
    }

    /// The table as it is now, including changes not yet committed.
    pub fn contents(&self) -> Result<RecordBatch> {
        let (rows, counts): (Vec<&[u8]>, Vec<i64>) = if self.pk.is_empty() {
            self.multiset
                .iter()
                .map(|(r, c)| (r.as_slice(), *c))
                .unzip()
        } else {
            self.by_key.values().map(|r| (r.as_slice(), 1)).unzip()
        };
        if rows.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.schema)));
        }
        let columns = self.row_codec.decode(rows)?;
        let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        if counts.iter().all(|c| *c == 1) {
            return Ok(data);
        }
        let mut idx = Vec::new();
        for (i, c) in counts.iter().enumerate() {
            for _ in 0..*c {
                idx.push(i as u32);
            }
        }
        Ok(arrow::compute::take_record_batch(
            &data,
            &UInt32Array::from(idx),
        )?)
    }

    /// Whether changes wait for the next epoch.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.dirty.is_empty()
    }

    /// Takes the changes made since the last call.
    pub fn take_pending(&mut self) -> Vec<ChangeBatch> {
        std::mem::take(&mut self.pending)
    }

    /// Writes the rows changed since the last call.
    pub fn write_state(&mut self, state: &mut StateWriter) {
        for k in self.dirty.drain() {
            if self.pk.is_empty() {
                match self.multiset.get(&k) {
                    Some(c) => state.put(self.table, &k, &c.to_le_bytes()),
                    None => state.delete(self.table, &k),
                }
            } else {
                match self.by_key.get(&k) {
                    Some(r) => state.put(self.table, &k, r),
                    None => state.delete(self.table, &k),
                }
            }
        }
    }

    /// Loads the committed rows after a restart.
    pub fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        for (k, v) in entries {
            if self.pk.is_empty() {
                let bytes: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| DataflowError::Corrupt("row count is not 8 bytes".into()))?;
                self.multiset.insert(k, i64::from_le_bytes(bytes));
            } else {
                self.by_key.insert(k, v);
            }
        }
        Ok(())
    }

    pub fn num_rows(&self) -> usize {
        if self.pk.is_empty() {
            self.multiset
                .values()
                .map(|c| usize::try_from(*c).unwrap_or(0))
                .sum()
        } else {
            self.by_key.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn batch(schema: &SchemaRef, rows: &[(i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    /// Upserts and key deletes against a map: the table and the sum of its changelog
    /// both end as the map, whatever the order and duplicates.
    #[test]
    fn upserts_and_key_deletes_match_a_map() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let mut t = TableState::try_new("t", Arc::clone(&schema), vec![0], 1).unwrap();
        let mut model: BTreeMap<i64, i64> = BTreeMap::new();
        let mut changes: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..300 {
            let rows: Vec<(i64, i64)> = (0..next(6))
                .map(|_| (next(12) as i64, next(4) as i64))
                .collect();
            if next(3) == 0 {
                let keys: Vec<i64> = rows.iter().map(|r| r.0).collect();
                t.delete_keys(&[Arc::new(Int64Array::from(keys.clone())) as ArrayRef])
                    .unwrap();
                for k in keys {
                    model.remove(&k);
                }
            } else {
                assert_eq!(t.upsert(batch(&schema, &rows)).unwrap(), 0);
                for (k, v) in rows {
                    model.insert(k, v);
                }
            }
            for c in t.take_pending() {
                let k = c.data().column(0).as_primitive::<Int64Type>();
                let v = c.data().column(1).as_primitive::<Int64Type>();
                for i in 0..c.data().num_rows() {
                    *changes.entry((k.value(i), v.value(i))).or_default() += c.weights().value(i);
                }
            }
            changes.retain(|_, w| *w != 0);
            let want: BTreeMap<(i64, i64), i64> =
                model.iter().map(|(k, v)| ((*k, *v), 1)).collect();
            assert_eq!(changes, want);
            assert_eq!(t.num_rows(), model.len());
        }
    }
}
