//! # sabot-storage: durable state, committed one epoch at a time
//!
//! Everything Sabot must remember across a crash lives in one RocksDB database:
//!
//! | key prefix | what |
//! | --- | --- |
//! | `m` + name | metadata, e.g. the last committed epoch |
//! | `c` + name | catalog entries (tables, views), as JSON |
//! | `s` + state table id (u32, big endian) + key | operator and table state |
//!
//! Operators buffer their changes for an epoch in a [`StateWriter`]; the coordinator
//! gathers every writer of the epoch into one [`EpochBatch`] and [`Store::commit`]s it as a
//! single synced RocksDB `WriteBatch`, together with the epoch number and any catalog
//! changes. So after a crash the store holds exactly the state of some committed epoch:
//! never half of one.

use std::path::Path;

use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

/// Identifies one keyed state table (one per stateful operator, one per table).
pub type StateTableId = u32;

const META: u8 = b'm';
const CATALOG: u8 = b'c';
const STATE: u8 = b's';
const EPOCH_KEY: &[u8] = b"mepoch";
const FORMAT_KEY: &[u8] = b"mformat";

/// The layout of operator state this build writes and reads. Raised whenever an
/// operator's state entries change meaning (2: append-only operators keep packed
/// entries); a store of another format is refused at open instead of misread.
pub const STATE_FORMAT: u32 = 2;

/// Errors from the storage layer. All of them are faults of the environment (disk,
/// corruption) or bugs, never of the user.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("RocksDB: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error(
        "the data directory {dir} was written by another build of Sabot (state format \
         {found}, this build reads {STATE_FORMAT}): start with an empty data directory"
    )]
    Incompatible { dir: String, found: String },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The database that holds Sabot's durable state.
pub struct Store {
    db: DB,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Operators write state in epoch-sized batches and read it back only when they
        // start: a vector memtable takes each write in O(1) on the committing thread
        // and sorts once, on flush, in the background (a skip list compares keys on
        // every insert). Larger memtables flush less often.
        opts.set_allow_concurrent_memtable_write(false);
        opts.set_memtable_factory(rocksdb::MemtableFactory::Vector);
        opts.set_write_buffer_size(128 << 20);
        opts.set_max_write_buffer_number(4);
        let db = DB::open(&opts, dir)?;
        let store = Self { db };
        store.check_format(dir)?;
        Ok(store)
    }

    /// Marks a new store with [`STATE_FORMAT`]; refuses one written in another format
    /// (or before formats were recorded).
    fn check_format(&self, dir: &Path) -> Result<()> {
        let found = match self.db.get(FORMAT_KEY)? {
            Some(v) => match <[u8; 4]>::try_from(v.as_slice()) {
                Ok(b) if u32::from_le_bytes(b) == STATE_FORMAT => return Ok(()),
                Ok(b) => u32::from_le_bytes(b).to_string(),
                Err(_) => "unreadable".to_string(),
            },
            None if self.db.iterator(IteratorMode::Start).next().is_none() => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db
                    .put_opt(FORMAT_KEY, STATE_FORMAT.to_le_bytes(), &wo)?;
                return Ok(());
            }
            None => "none recorded".to_string(),
        };
        Err(StorageError::Incompatible {
            dir: dir.display().to_string(),
            found,
        })
    }

    /// The last committed epoch, 0 for a new store.
    pub fn committed_epoch(&self) -> Result<u64> {
        match self.db.get(EPOCH_KEY)? {
            None => Ok(0),
            Some(v) => {
                let bytes: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("epoch is not 8 bytes".into()))?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    /// All catalog entries, ordered by name.
    pub fn catalog(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&[CATALOG], Direction::Forward))
        {
            let (k, v) = item?;
            if k.first() != Some(&CATALOG) {
                break;
            }
            let name = String::from_utf8(k[1..].to_vec())
                .map_err(|_| StorageError::Corrupt("catalog key is not UTF-8".into()))?;
            out.push((name, v.to_vec()));
        }
        Ok(out)
    }

    /// Every (key, value) of one state table, in key order.
    pub fn scan(&self, table: StateTableId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = state_prefix(table);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Writes one epoch atomically and durably (fsync of the WAL).
    pub fn commit(&self, batch: EpochBatch) -> Result<()> {
        let mut wb = WriteBatch::default();
        for (kind, key, value) in batch.log.iter() {
            match kind {
                OpKind::Put => wb.put(key, value),
                OpKind::Delete => wb.delete(key),
                OpKind::DeleteRange => wb.delete_range(key, value),
            }
        }
        wb.put(EPOCH_KEY, batch.epoch.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    /// RocksDB's own memory and size figures, for metrics: (property without the
    /// `rocksdb.` prefix, value). Properties RocksDB does not report are left out.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        [
            "cur-size-all-mem-tables",
            "size-all-mem-tables",
            "estimate-table-readers-mem",
            "block-cache-usage",
            "block-cache-pinned-usage",
            "total-sst-files-size",
            "estimate-live-data-size",
            "estimate-num-keys",
        ]
        .into_iter()
        .filter_map(|p| {
            self.db
                .property_int_value(&format!("rocksdb.{p}"))
                .ok()
                .flatten()
                .map(|v| (p, v))
        })
        .collect()
    }

    /// A metadata value, if set.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let mut k = vec![META];
        k.extend_from_slice(name.as_bytes());
        Ok(self.db.get(k)?)
    }
}

fn state_prefix(table: StateTableId) -> [u8; 5] {
    let t = table.to_be_bytes();
    [STATE, t[0], t[1], t[2], t[3]]
}

/// The first key after every key that starts with `prefix` (a state key's prefix,
/// never empty and never all `0xff`: it starts with [`STATE`]).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![STATE + 1]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Put,
    Delete,
    /// Deletes the keys from the op's key (inclusive) to its value (exclusive).
    DeleteRange,
}

/// One buffered write: its kind, and where its key and value lie in the log's bytes.
#[derive(Debug, Clone, Copy)]
struct RawOp {
    kind: OpKind,
    start: usize,
    key_end: usize,
    end: usize,
}

/// Writes in order, their keys and values in one buffer: an epoch can buffer millions
/// of small writes, and this costs no allocation per write.
#[derive(Debug, Default)]
struct Log {
    bytes: Vec<u8>,
    ops: Vec<RawOp>,
}

impl Log {
    /// Buffers a write whose key is the concatenation of `key`.
    fn push(&mut self, kind: OpKind, key: &[&[u8]], value: &[u8]) {
        let start = self.bytes.len();
        for part in key {
            self.bytes.extend_from_slice(part);
        }
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ops.push(RawOp {
            kind,
            start,
            key_end,
            end: self.bytes.len(),
        });
    }

    /// Appends another log's writes after this one's.
    fn extend(&mut self, other: Log) {
        if self.ops.is_empty() {
            *self = other;
            return;
        }
        let shift = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ops.extend(other.ops.into_iter().map(|op| RawOp {
            start: op.start + shift,
            key_end: op.key_end + shift,
            end: op.end + shift,
            ..op
        }));
    }

    fn iter(&self) -> impl Iterator<Item = (OpKind, &[u8], &[u8])> + '_ {
        self.ops.iter().map(|op| {
            (
                op.kind,
                &self.bytes[op.start..op.key_end],
                &self.bytes[op.key_end..op.end],
            )
        })
    }

    fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Changes to state tables buffered by one operator (or one worker's instance of it)
/// during an epoch.
#[derive(Debug, Default)]
pub struct StateWriter {
    log: Log,
}

impl StateWriter {
    pub fn put(&mut self, table: StateTableId, key: &[u8], value: &[u8]) {
        self.log
            .push(OpKind::Put, &[&state_prefix(table), key], value);
    }

    pub fn delete(&mut self, table: StateTableId, key: &[u8]) {
        self.log
            .push(OpKind::Delete, &[&state_prefix(table), key], &[]);
    }

    /// Deletes every key of `table` that starts with `prefix`, in one write.
    pub fn delete_prefix(&mut self, table: StateTableId, prefix: &[u8]) {
        let mut from = state_prefix(table).to_vec();
        from.extend_from_slice(prefix);
        let to = prefix_end(&from);
        self.log.push(OpKind::DeleteRange, &[&from], &to);
    }

    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.len() == 0
    }
}

/// Everything one epoch writes: state changes, catalog changes, the epoch number.
#[derive(Debug)]
pub struct EpochBatch {
    epoch: u64,
    log: Log,
}

impl EpochBatch {
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            log: Log::default(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Appends the changes an operator buffered.
    pub fn append(&mut self, writer: StateWriter) {
        self.log.extend(writer.log);
    }

    /// Takes over the writes of another batch of the same epoch.
    pub fn extend(&mut self, other: EpochBatch) {
        self.log.extend(other.log);
    }

    /// Removes a whole state table (its operator or table was dropped).
    pub fn drop_state_table(&mut self, table: StateTableId) {
        let from = state_prefix(table);
        self.log
            .push(OpKind::DeleteRange, &[&from], &prefix_end(&from));
    }

    pub fn put_catalog(&mut self, name: &str, value: Vec<u8>) {
        self.log
            .push(OpKind::Put, &[&[CATALOG], name.as_bytes()], &value);
    }

    pub fn delete_catalog(&mut self, name: &str) {
        self.log
            .push(OpKind::Delete, &[&[CATALOG], name.as_bytes()], &[]);
    }

    pub fn put_meta(&mut self, name: &str, value: Vec<u8>) {
        self.log
            .push(OpKind::Put, &[&[META], name.as_bytes()], &value);
    }

    /// Number of buffered writes (for metrics and tests).
    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_commit_is_atomic_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.committed_epoch().unwrap(), 0);
            let mut w = StateWriter::default();
            w.put(7, b"a", b"1");
            w.put(7, b"b", b"2");
            w.put(8, b"a", b"x");
            let mut batch = EpochBatch::new(1);
            batch.append(w);
            batch.put_catalog("t", b"{}".to_vec());
            store.commit(batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.committed_epoch().unwrap(), 1);
        assert_eq!(
            store.scan(7).unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(
            store.catalog().unwrap(),
            vec![("t".to_string(), b"{}".to_vec())]
        );

        let mut batch = EpochBatch::new(2);
        batch.drop_state_table(7);
        let mut w = StateWriter::default();
        w.delete(8, b"a");
        batch.append(w);
        store.commit(batch).unwrap();
        assert!(store.scan(7).unwrap().is_empty());
        assert!(store.scan(8).unwrap().is_empty());
        assert_eq!(store.committed_epoch().unwrap(), 2);
    }

    /// A prefix delete takes exactly the keys that start with it, also where the
    /// prefix ends in `0xff` bytes, and writes after it in the epoch stay.
    #[test]
    fn delete_prefix_takes_exactly_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys: [&[u8]; 7] = [
            b"a",
            b"ab",
            b"ab\xff",
            b"ab\xff\x00",
            b"ab\xff\xff",
            b"ac",
            b"b",
        ];
        let mut w = StateWriter::default();
        for k in keys {
            w.put(4, k, b"v");
            w.put(5, k, b"v");
        }
        w.delete_prefix(4, b"ab\xff");
        w.delete_prefix(5, b"ab");
        w.put(5, b"ab\x01", b"after");
        let mut batch = EpochBatch::new(1);
        batch.append(w);
        store.commit(batch).unwrap();
        let keys_of =
            |t| -> Vec<Vec<u8>> { store.scan(t).unwrap().into_iter().map(|(k, _)| k).collect() };
        assert_eq!(keys_of(4), [&b"a"[..], b"ab", b"ac", b"b"]);
        assert_eq!(keys_of(5), [&b"a"[..], b"ab\x01", b"ac", b"b"]);
        assert_eq!(prefix_end(&[STATE, 0xff, 0xff]), [STATE + 1]);
    }

    /// A new store is marked with this build's format and reopens; a store of another
    /// format, or one written before formats were recorded, is refused with an error
    /// that says what to do.
    #[test]
    fn a_store_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        drop(Store::open(dir.path()).unwrap());
        let other = tempfile::tempdir().unwrap();
        {
            let db = DB::open_default(other.path()).unwrap();
            db.put(EPOCH_KEY, 7u64.to_be_bytes()).unwrap();
        }
        let err = Store::open(other.path()).unwrap_err().to_string();
        assert!(err.contains("state format none recorded"), "{err}");
        assert!(err.contains("start with an empty data directory"), "{err}");
        {
            let db = DB::open_default(other.path()).unwrap();
            db.put(FORMAT_KEY, 1u32.to_le_bytes()).unwrap();
        }
        let err = Store::open(other.path()).unwrap_err().to_string();
        assert!(err.contains("state format 1, this build reads 2"), "{err}");
    }

    /// Writes apply in the order they were buffered, across writers and batches.
    #[test]
    fn later_writes_win_across_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut first = StateWriter::default();
        first.put(3, b"k", b"old");
        first.put(3, b"gone", b"x");
        first.put(3, b"kept", b"1");
        let mut second = StateWriter::default();
        second.put(3, b"k", b"new");
        second.delete(3, b"gone");
        let mut other = EpochBatch::new(1);
        let mut third = StateWriter::default();
        third.put(3, b"late", b"");
        other.append(third);
        let mut batch = EpochBatch::new(1);
        batch.append(first);
        batch.append(second);
        batch.extend(other);
        assert_eq!(batch.len(), 6);
        store.commit(batch).unwrap();
        assert_eq!(
            store.scan(3).unwrap(),
            vec![
                (b"k".to_vec(), b"new".to_vec()),
                (b"kept".to_vec(), b"1".to_vec()),
                (b"late".to_vec(), b"".to_vec()),
            ]
        );
    }
}
