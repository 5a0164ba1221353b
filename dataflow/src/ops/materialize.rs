//! Materialize: keeps the rows of a view, ready to read, and emits the view's change per
//! epoch (the changelog that views and sinks built on this view consume).
//!
//! Rows are kept as Arrow batches ("chunks"), so a published snapshot shares their
//! arrays instead of decoding every row again at every epoch: publishing costs what
//! changed, not what the view holds. The newest chunks are merged while the newer one
//! holds at least half as many rows as the one before it, so a view keeps
//! O(log rows) chunks and each row is copied O(log rows) times over its life.
//!
//! Two modes, chosen by the planner from the plan:
//! - **keyed** ([`MaterializeOp::keyed`]): the plan can retract rows, so every row is
//!   encoded and found through `row → (chunk, position)`; a chunk keeps a multiplicity
//!   per position (0: gone) and is compacted once half of it is gone. Inputs arrive
//!   hash-exchanged by row; state is `row → count`.
//! - **append-only** ([`MaterializeOp::append_only`]): the plan only ever adds rows, so
//!   no row is encoded, hashed or looked up. Batches stay on the worker that made them
//!   and become chunks as they are; the changelog is the input itself; each epoch's new
//!   rows are stored as Arrow IPC blobs (one per worker per `BLOB_ROWS` rows), not row
//!   by row.
//!
//! At the end of a sink's query ([`MaterializeOp::emit`]) nothing is kept: changes pass
//! on (consolidated per row and epoch when the plan retracts) and no state is written.

use std::sync::Arc;

use ahash::AHashMap;
use arrow::array::{Int64Array, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::datatypes::SchemaRef;
use sabot_storage::{StateTableId, StateWriter};

use crate::batch::ChangeBatch;
use crate::error::{DataflowError, Result};
use crate::operator::Operator;
use crate::row::{Partitioner, RowCodec};

/// First byte of an append-only view's blob keys. Encoded rows (the keys of the keyed
/// format, which older versions also used for append-only views) never start with it.
const BLOB_TAG: u8 = 0xFF;

/// Rows per stored blob of an append-only view.
const BLOB_ROWS: usize = 65_536;

/// Where a keyed row lives.
#[derive(Clone, Copy)]
struct Slot {
    chunk: u32,
    index: u32,
}

/// A run of the view's rows.
struct Chunk {
    batch: RecordBatch,
    /// Multiplicity per row (0: the row is gone); empty when every row counts once.
    counts: Vec<i64>,
    /// Rows with a count above 0.
    live: usize,
    /// Rows with a count above 1.
    repeated: usize,
    /// The chunk as it reads (live rows, each as often as its count) when that is not
    /// `batch` itself.
    readable: Option<RecordBatch>,
    /// `readable` is out of date.
    stale: bool,
}

impl Chunk {
    fn plain(batch: RecordBatch) -> Self {
        Self {
            live: batch.num_rows(),
            batch,
            counts: Vec::new(),
            repeated: 0,
            readable: None,
            stale: false,
        }
    }

    fn counted(batch: RecordBatch, counts: Vec<i64>) -> Self {
        Self {
            live: counts.iter().filter(|n| **n > 0).count(),
            repeated: counts.iter().filter(|n| **n > 1).count(),
            batch,
            counts,
            readable: None,
            stale: true,
        }
    }

    /// Positions of the live rows, each repeated by its count.
    fn expanded(&self) -> Vec<u32> {
        let mut idx = Vec::with_capacity(self.live);
        for (i, c) in self.counts.iter().enumerate() {
            for _ in 0..*c {
                idx.push(i as u32);
            }
        }
        idx
    }

    /// Rebuilds `readable` after the counts changed.
    fn refresh(&mut self) -> Result<()> {
        self.stale = false;
        self.readable = if self.counts.is_empty()
            || (self.live == self.batch.num_rows() && self.repeated == 0)
        {
            None
        } else {
            Some(take(&self.batch, &self.expanded())?)
        };
        Ok(())
    }

    fn read(&self) -> &RecordBatch {
        self.readable.as_ref().unwrap_or(&self.batch)
    }
}

/// `batch`'s rows at `idx`, also for a batch without columns.
fn take(batch: &RecordBatch, idx: &[u32]) -> Result<RecordBatch> {
    if batch.num_columns() == 0 {
        let options = RecordBatchOptions::new().with_row_count(Some(idx.len()));
        return Ok(RecordBatch::try_new_with_options(
            batch.schema(),
            vec![],
            &options,
        )?);
    }
    Ok(arrow::compute::take_record_batch(
        batch,
        &UInt32Array::from(idx.to_vec()),
    )?)
}

/// The batches one after the other, also without columns.
fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    if schema.fields().is_empty() {
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        return Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            vec![],
            &options,
        )?);
    }
    Ok(arrow::compute::concat_batches(schema, batches)?)
}

pub struct MaterializeOp {
    schema: SchemaRef,
    codec: RowCodec,
    table: StateTableId,
    chunks: Vec<Chunk>,
    /// Keyed mode: where each row is (its count is in its chunk). None: append-only.
    rows: Option<AHashMap<Vec<u8>, Slot>>,
    /// Keyed: row → net change during the current epoch.
    delta: AHashMap<Vec<u8>, i64>,
    /// Append-only: the rows of the current epoch.
    pending: Vec<RecordBatch>,
    /// Append-only: this instance's worker, in the keys of its blobs.
    worker: u32,
    /// Append-only: blobs this instance wrote, in their keys after the epoch. One epoch
    /// can see several barriers (a backfill's steps, then the epoch that commits them),
    /// so the epoch alone does not make a key unique.
    blobs: u32,
    /// Keep the rows (a view); false: only pass the changes on (a sink's query).
    keep: bool,
}

impl MaterializeOp {
    /// A view whose plan can retract rows.
    pub fn keyed(schema: SchemaRef, table: StateTableId) -> Result<Self> {
        let mut op = Self::append_only(schema, table, Partitioner::single())?;
        op.rows = Some(AHashMap::new());
        Ok(op)
    }

    /// A view whose plan only adds rows.
    pub fn append_only(
        schema: SchemaRef,
        table: StateTableId,
        partitioner: Partitioner,
    ) -> Result<Self> {
        Ok(Self {
            codec: RowCodec::for_schema(&schema)?,
            schema,
            table,
            chunks: Vec::new(),
            rows: None,
            delta: AHashMap::new(),
            pending: Vec::new(),
            worker: u32::try_from(partitioner.worker).unwrap_or(u32::MAX),
            blobs: 0,
            keep: true,
        })
    }

    /// The end of a sink's query: keeps nothing; `keyed` consolidates each epoch's
    /// changes per row.
    pub fn emit(schema: SchemaRef, keyed: bool) -> Result<Self> {
        let mut op = if keyed {
            Self::keyed(schema, 0)?
        } else {
            Self::append_only(schema, 0, Partitioner::single())?
        };
        op.keep = false;
        Ok(op)
    }

    /// Decodes encoded rows into a batch of the view's schema.
    fn decode<'a>(&self, rows: impl ExactSizeIterator<Item = &'a [u8]>) -> Result<RecordBatch> {
        if self.schema.fields().is_empty() {
            let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
            return Ok(RecordBatch::try_new_with_options(
                Arc::clone(&self.schema),
                vec![],
                &options,
            )?);
        }
        let columns = self.codec.decode(rows)?;
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// Points the slots of chunk `c`'s rows at their positions (keyed mode).
    fn reindex(&mut self, c: usize) -> Result<()> {
        let Some(rows) = self.rows.as_mut() else {
            return Ok(());
        };
        let chunk = &self.chunks[c];
        let keys = if self.codec.is_empty() {
            vec![Vec::new(); chunk.batch.num_rows()]
        } else {
            let encoded = self.codec.encode(chunk.batch.columns())?;
            encoded.iter().map(|r| r.as_ref().to_vec()).collect()
        };
        for (i, key) in keys.into_iter().enumerate() {
            if chunk.counts[i] == 0 {
                continue;
            }
            let slot = rows.get_mut(&key).ok_or_else(|| {
                DataflowError::Internal("a view row is missing from its index".into())
            })?;
            *slot = Slot {
                chunk: c as u32,
                index: i as u32,
            };
        }
        Ok(())
    }

    /// Chunk `c` with only its live rows (keyed mode; a chunk without counts has no
    /// gone rows).
    fn compact(&mut self, c: usize) -> Result<()> {
        let chunk = &self.chunks[c];
        if chunk.counts.is_empty() || chunk.live == chunk.batch.num_rows() {
            return Ok(());
        }
        let idx: Vec<u32> = (0..chunk.counts.len() as u32)
            .filter(|i| chunk.counts[*i as usize] > 0)
            .collect();
        let counts = idx.iter().map(|i| chunk.counts[*i as usize]).collect();
        let batch = take(&chunk.batch, &idx)?;
        self.chunks[c] = Chunk::counted(batch, counts);
        self.reindex(c)
    }

    /// Merges the newest chunks while the newer holds at least half the rows of the
    /// older, dropping gone rows as it goes.
    fn merge_tail(&mut self) -> Result<()> {
        while self.chunks.len() >= 2 {
            let n = self.chunks.len();
            if self.chunks[n - 1].live * 2 < self.chunks[n - 2].live {
                break;
            }
            self.compact(n - 2)?;
            self.compact(n - 1)?;
            let (Some(newer), Some(older)) = (self.chunks.pop(), self.chunks.pop()) else {
                break;
            };
            let batch = concat(&self.schema, &[older.batch, newer.batch])?;
            let merged = if self.rows.is_some() {
                let mut counts = older.counts;
                counts.extend(newer.counts);
                Chunk::counted(batch, counts)
            } else {
                Chunk::plain(batch)
            };
            self.chunks.push(merged);
            self.reindex(self.chunks.len() - 1)?;
        }
        Ok(())
    }

    fn on_barrier_keyed(
        &mut self,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let delta = std::mem::take(&mut self.delta);
        if !self.keep {
            let changed: Vec<(&[u8], i64)> = delta
                .iter()
                .filter(|(_, d)| **d != 0)
                .map(|(r, d)| (r.as_slice(), *d))
                .collect();
            if !changed.is_empty() {
                let data = self.decode(changed.iter().map(|(r, _)| *r))?;
                let weights: Vec<i64> = changed.iter().map(|(_, w)| *w).collect();
                out.push(ChangeBatch::try_new(data, Int64Array::from(weights))?);
            }
            return Ok(());
        }
        let Some(rows) = self.rows.as_mut() else {
            return Ok(());
        };
        let mut changed: Vec<(&[u8], i64)> = Vec::new();
        let mut added: Vec<(&[u8], i64)> = Vec::new();
        let mut touched: Vec<usize> = Vec::new();
        for (row, d) in &delta {
            if *d == 0 {
                continue;
            }
            changed.push((row.as_slice(), *d));
            let Some(slot) = rows.get(row).copied() else {
                if *d < 0 {
                    return Err(DataflowError::Internal(format!(
                        "view row multiplicity would become {d}"
                    )));
                }
                state.put(self.table, row, &d.to_le_bytes());
                added.push((row.as_slice(), *d));
                continue;
            };
            let chunk = &mut self.chunks[slot.chunk as usize];
            let old = chunk.counts[slot.index as usize];
            let count = old + d;
            if count < 0 {
                return Err(DataflowError::Internal(format!(
                    "view row multiplicity would become {count}"
                )));
            }
            chunk.counts[slot.index as usize] = count;
            chunk.live = chunk.live + usize::from(count > 0) - usize::from(old > 0);
            chunk.repeated = chunk.repeated + usize::from(count > 1) - usize::from(old > 1);
            chunk.stale = true;
            touched.push(slot.chunk as usize);
            if count == 0 {
                rows.remove(row);
                state.delete(self.table, row);
            } else {
                state.put(self.table, row, &count.to_le_bytes());
            }
        }
        if !changed.is_empty() {
            let data = self.decode(changed.iter().map(|(r, _)| *r))?;
            let weights: Vec<i64> = changed.iter().map(|(_, w)| *w).collect();
            out.push(ChangeBatch::try_new(data, Int64Array::from(weights))?);
        }
        if !added.is_empty() {
            let batch = self.decode(added.iter().map(|(r, _)| *r))?;
            let counts = added.iter().map(|(_, w)| *w).collect();
            let c = self.chunks.len();
            let rows = self.rows.as_mut().ok_or_else(|| {
                DataflowError::Internal("keyed materialize without its index".into())
            })?;
            for (i, (row, _)) in added.iter().enumerate() {
                rows.insert(
                    row.to_vec(),
                    Slot {
                        chunk: c as u32,
                        index: i as u32,
                    },
                );
            }
            self.chunks.push(Chunk::counted(batch, counts));
            touched.push(c);
        }
        touched.sort_unstable();
        touched.dedup();
        for c in touched {
            let chunk = &self.chunks[c];
            if chunk.live * 2 < chunk.batch.num_rows() {
                self.compact(c)?;
            }
        }
        // Drop emptied chunks at the end; earlier ones stay (their positions are in
        // the index) until a merge or compaction takes them.
        while self.chunks.last().is_some_and(|c| c.live == 0) {
            self.chunks.pop();
        }
        self.merge_tail()?;
        for chunk in self.chunks.iter_mut().filter(|c| c.stale) {
            chunk.refresh()?;
        }
        Ok(())
    }

    fn on_barrier_append(&mut self, epoch: u64, state: &mut StateWriter) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        let batch = concat(&self.schema, &pending)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let seq = self.blobs;
            self.blobs = self.blobs.wrapping_add(1);
            let len = BLOB_ROWS.min(batch.num_rows() - offset);
            let mut key = Vec::with_capacity(17);
            key.push(BLOB_TAG);
            key.extend_from_slice(&epoch.to_be_bytes());
            key.extend_from_slice(&self.worker.to_be_bytes());
            key.extend_from_slice(&seq.to_be_bytes());
            state.put(self.table, &key, &to_ipc(&batch.slice(offset, len))?);
            offset += len;
        }
        self.chunks.push(Chunk::plain(batch));
        self.merge_tail()
    }
}

fn to_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(buf)
}

fn from_ipc(bytes: &[u8], schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let reader = arrow::ipc::reader::StreamReader::try_new(bytes, None)?;
    let mut out = Vec::new();
    for b in reader {
        let b = b?;
        if b.num_columns() != schema.fields().len() {
            return Err(DataflowError::Corrupt(format!(
                "a stored view blob has {} columns, the view {}",
                b.num_columns(),
                schema.fields().len()
            )));
        }
        let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
        out.push(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            b.columns().to_vec(),
            &options,
        )?);
    }
    Ok(out)
}

impl Operator for MaterializeOp {
    fn state_rows(&self) -> usize {
        self.chunks.iter().map(|c| c.live).sum()
    }

    fn name(&self) -> &'static str {
        "Materialize"
    }

    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let weights = batch.weights().values();
        if self.rows.is_none() {
            if weights.iter().any(|w| *w < 0) {
                return Err(DataflowError::Internal(
                    "an append-only view received a retraction".into(),
                ));
            }
            // The view's own schema (its column names), over the same arrays.
            let options = RecordBatchOptions::new().with_row_count(Some(batch.data().num_rows()));
            let named = RecordBatch::try_new_with_options(
                Arc::clone(&self.schema),
                batch.data().columns().to_vec(),
                &options,
            )?;
            let data = if weights.iter().all(|w| *w == 1) {
                named.clone()
            } else {
                let mut idx = Vec::with_capacity(weights.len());
                for (i, w) in weights.iter().enumerate() {
                    for _ in 0..*w {
                        idx.push(i as u32);
                    }
                }
                take(&named, &idx)?
            };
            if data.num_rows() > 0 {
                if self.keep {
                    self.pending.push(data);
                }
                out.push(ChangeBatch::try_new(named, batch.weights().clone())?);
            }
            return Ok(());
        }
        if self.codec.is_empty() {
            for w in weights.iter() {
                *self.delta.entry(Vec::new()).or_insert(0) += w;
            }
            return Ok(());
        }
        let rows = self.codec.encode(batch.data().columns())?;
        for (i, row) in rows.iter().enumerate() {
            let w = weights[i];
            if w == 0 {
                continue;
            }
            match self.delta.get_mut(row.as_ref()) {
                Some(d) => *d += w,
                None => {
                    self.delta.insert(row.as_ref().to_vec(), w);
                }
            }
        }
        Ok(())
    }

    fn on_barrier(
        &mut self,
        epoch: u64,
        state: &mut StateWriter,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        if self.rows.is_some() {
            self.on_barrier_keyed(state, out)
        } else {
            self.on_barrier_append(epoch, state)
        }
    }

    fn state_tables(&self) -> Vec<StateTableId> {
        if self.keep {
            vec![self.table]
        } else {
            Vec::new()
        }
    }

    fn restore(
        &mut self,
        _table: StateTableId,
        entries: &[(Vec<u8>, Vec<u8>)],
        partitioner: Partitioner,
    ) -> Result<()> {
        let mut rows: Vec<(&[u8], i64)> = Vec::new();
        let mut blobs = Vec::new();
        for (k, v) in entries {
            if !partitioner.owns(k) {
                continue;
            }
            if k.first() == Some(&BLOB_TAG) && self.rows.is_none() {
                blobs.extend(from_ipc(v, &self.schema)?);
                continue;
            }
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| DataflowError::Corrupt("view row count is not 8 bytes".into()))?;
            rows.push((k.as_slice(), i64::from_le_bytes(bytes)));
        }
        if !rows.is_empty() {
            let batch = self.decode(rows.iter().map(|(r, _)| *r))?;
            let counts: Vec<i64> = rows.iter().map(|(_, c)| *c).collect();
            if let Some(index) = self.rows.as_mut() {
                let c = self.chunks.len() as u32;
                for (i, (row, _)) in rows.iter().enumerate() {
                    index.insert(
                        row.to_vec(),
                        Slot {
                            chunk: c,
                            index: i as u32,
                        },
                    );
                }
                let mut chunk = Chunk::counted(batch, counts);
                chunk.refresh()?;
                self.chunks.push(chunk);
            } else {
                // Rows stored one by one by an older version: read them as they read.
                let mut chunk = Chunk::counted(batch, counts);
                chunk.refresh()?;
                self.chunks.push(Chunk::plain(chunk.read().clone()));
            }
        }
        if !blobs.is_empty() {
            let batch = concat(&self.schema, &blobs)?;
            self.chunks.push(Chunk::plain(batch));
        }
        self.merge_tail()?;
        for chunk in &mut self.chunks {
            chunk.refresh()?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        Ok(self
            .chunks
            .iter()
            .filter(|c| c.read().num_rows() > 0)
            .map(|c| c.read().clone())
            .collect())
    }
}
