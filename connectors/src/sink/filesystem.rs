//! The `filesystem` sink: one file per epoch with changes, in a directory: JSON lines
//! (`ENCODE JSON`, `part-<epoch>.jsonl`) or an Avro container file (`ENCODE AVRO`,
//! `part-<epoch>.avro`, compressed with `codec = 'null' | 'deflate' | 'snappy' |
//! 'zstandard'`).
//!
//! `prepare` writes `.part-<epoch>.<ext>.pending` and syncs it; `commit` renames it to
//! `part-<epoch>.<ext>` (epoch zero-padded to 20 digits, so names sort in epoch order)
//! and syncs the directory. Readers take `part-*` files only: a file is there whole or
//! not at all, and never twice.

use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;

use super::{encode_json, in_write_order, records, SinkFormat, SinkWriter};
use crate::avro::file::{container, Codec};
use crate::avro::write::{datums, debezium_schema, record_schema};
use crate::error::{ConnectorError, Result};
use crate::options::Options;

/// What the files hold: `name` and `columns` are the sink's, for the Avro schema.
pub enum FileEncode<'a> {
    Json,
    Avro {
        name: &'a str,
        columns: &'a SchemaRef,
    },
}

enum Encode {
    Json,
    /// The writer schema (JSON) of every file, and its codec.
    Avro {
        schema: String,
        codec: Codec,
    },
}

pub struct FilesystemSink {
    dir: PathBuf,
    format: SinkFormat,
    encode: Encode,
    /// The epoch whose file waits for `commit`.
    pending: Option<u64>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ConnectorError {
    ConnectorError::Write(format!("cannot {what} {}: {e}", path.display()))
}

impl FilesystemSink {
    /// Reads `path` (or `fs.path`) and, for Avro, `codec` from `options`. The directory
    /// is created by [`SinkWriter::recover`], which runs before the first write.
    pub fn try_new(options: &Options, format: SinkFormat, encode: FileEncode<'_>) -> Result<Self> {
        let path = options
            .get("path")
            .or_else(|| options.get("fs.path"))
            .ok_or_else(|| {
                ConnectorError::Options("the filesystem sink needs path = '/a/directory'".into())
            })?;
        if path.is_empty() {
            return Err(ConnectorError::Options("path must not be empty".into()));
        }
        if path.starts_with("s3://") {
            return Err(ConnectorError::Options(
                "the filesystem sink writes to a local directory; s3:// paths are not supported for sinks yet".into(),
            ));
        }
        let dir = PathBuf::from(path);
        if dir.is_relative() {
            return Err(ConnectorError::Options(format!(
                "path must be absolute, not '{path}'"
            )));
        }
        let encode = match encode {
            FileEncode::Json => Encode::Json,
            FileEncode::Avro { name, columns } => {
                if options.get("schema.registry").is_some() {
                    return Err(ConnectorError::Options(
                        "schema.registry applies to the kafka sink: an Avro container file holds its schema in its header".into(),
                    ));
                }
                let codec = Codec::parse(options.get("codec").unwrap_or("null"))
                    .map_err(ConnectorError::Options)?;
                let schema = match format {
                    SinkFormat::Debezium => debezium_schema(name, columns.fields())?,
                    _ => record_schema(name, columns.fields())?,
                };
                Encode::Avro {
                    schema: schema.to_string(),
                    codec,
                }
            }
        };
        Ok(Self {
            dir,
            format,
            encode,
            pending: None,
        })
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn extension(&self) -> &'static str {
        match self.encode {
            Encode::Json => "jsonl",
            Encode::Avro { .. } => "avro",
        }
    }

    fn pending_path(&self, epoch: u64) -> PathBuf {
        self.dir
            .join(format!(".part-{epoch:020}.{}.pending", self.extension()))
    }

    fn final_path(&self, epoch: u64) -> PathBuf {
        self.dir
            .join(format!("part-{epoch:020}.{}", self.extension()))
    }

    fn publish(&self, epoch: u64) -> Result<()> {
        let from = self.pending_path(epoch);
        let to = self.final_path(epoch);
        fs::rename(&from, &to).map_err(|e| io_error("rename", &from, e))?;
        sync_dir(&self.dir)
    }

    /// The file's bytes for `changes`; empty when there is nothing to write.
    fn encode(&self, changes: &[(RecordBatch, Int64Array)]) -> Result<Vec<u8>> {
        let changes = in_write_order(self.format, changes);
        let changes = changes.as_ref();
        let mut bytes = Vec::new();
        match &self.encode {
            Encode::Json => {
                for (batch, weights) in changes {
                    bytes.extend(encode_json(self.format, batch, weights)?.bytes);
                }
            }
            Encode::Avro { schema, codec } => {
                let mut count = 0;
                for (batch, weights) in changes {
                    if let Some((records, rows)) = records(self.format, batch, weights)? {
                        count += rows.len() as u64;
                        datums(&records, &mut bytes)?;
                    }
                }
                if count > 0 {
                    bytes = container(schema, &bytes, count, *codec, sync_marker())
                        .map_err(ConnectorError::Write)?;
                }
            }
        }
        Ok(bytes)
    }
}

/// A fresh Avro sync marker: 16 bytes no record is likely to contain.
fn sync_marker() -> [u8; 16] {
    let state = std::collections::hash_map::RandomState::new();
    let mut out = [0; 16];
    out[..8].copy_from_slice(&state.hash_one(1u8).to_le_bytes());
    out[8..].copy_from_slice(&state.hash_one(2u8).to_le_bytes());
    out
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", dir, e))
}

impl SinkWriter for FilesystemSink {
    fn prepare(
        &mut self,
        epoch: u64,
        changes: &[(RecordBatch, Int64Array)],
    ) -> Result<Option<Vec<u8>>> {
        let bytes = self.encode(changes)?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let path = self.pending_path(epoch);
        let mut f = File::create(&path).map_err(|e| io_error("create", &path, e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_error("write", &path, e))?;
        self.pending = Some(epoch);
        Ok(None)
    }

    fn commit(&mut self, epoch: u64) -> Result<()> {
        match self.pending {
            Some(p) if p == epoch => {
                self.pending = None;
                self.publish(epoch)
            }
            _ => Ok(()),
        }
    }

    fn recover(&mut self, committed: u64, _outbox: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.pending = None;
        fs::create_dir_all(&self.dir).map_err(|e| io_error("create directory", &self.dir, e))?;
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let name = entry.file_name();
            let Some(epoch) = name
                .to_str()
                .and_then(|n| n.strip_prefix(".part-"))
                .and_then(|n| n.strip_suffix(".pending"))
                .and_then(|n| n.strip_suffix(self.extension()))
                .and_then(|n| n.strip_suffix('.'))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if epoch <= committed {
                self.publish(epoch)?;
            } else {
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use arrow::array::{ArrayRef, Int32Array};
    use arrow::datatypes::Fields;

    fn changes(v: i32) -> Vec<(RecordBatch, Int64Array)> {
        let b = RecordBatch::try_from_iter(vec![(
            "v",
            Arc::new(Int32Array::from(vec![v])) as ArrayRef,
        )])
        .unwrap();
        vec![(b, Int64Array::from(vec![1]))]
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn two_phases_and_recovery() {
        let dir = std::env::temp_dir().join(format!("sabot-fs-sink-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let options = Options::new([("path".to_string(), dir.display().to_string())]);
        let format = SinkFormat::Plain {
            force_append_only: false,
        };
        let mut sink = FilesystemSink::try_new(&options, format, FileEncode::Json).unwrap();
        sink.recover(0, Vec::new()).unwrap();
        sink.prepare(3, &changes(1)).unwrap();
        assert_eq!(
            files(&dir),
            vec![".part-00000000000000000003.jsonl.pending"]
        );
        sink.commit(3).unwrap();
        assert_eq!(files(&dir), vec!["part-00000000000000000003.jsonl"]);
        // Crashed after preparing epochs 4 (committed) and 5 (not).
        sink.prepare(4, &changes(2)).unwrap();
        let mut other = FilesystemSink::try_new(&options, format, FileEncode::Json).unwrap();
        other.prepare(5, &changes(3)).unwrap();
        let mut restarted = FilesystemSink::try_new(&options, format, FileEncode::Json).unwrap();
        restarted.recover(4, Vec::new()).unwrap();
        assert_eq!(
            files(&dir),
            vec![
                "part-00000000000000000003.jsonl",
                "part-00000000000000000004.jsonl"
            ]
        );
        assert_eq!(
            fs::read_to_string(dir.join("part-00000000000000000004.jsonl")).unwrap(),
            "{\"v\":2}\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn avro_container_files_read_back() {
        use crate::avro::file::Container;
        use arrow::array::AsArray;
        use arrow::datatypes::{DataType, Field, Int32Type, Schema};
        let dir = std::env::temp_dir().join(format!("sabot-fs-avro-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let options = Options::new([
            ("path".to_string(), dir.display().to_string()),
            ("codec".to_string(), "deflate".to_string()),
        ]);
        let columns: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, true)]));
        let encode = || FileEncode::Avro {
            name: "out",
            columns: &columns,
        };
        let mut sink = FilesystemSink::try_new(&options, SinkFormat::Debezium, encode()).unwrap();
        sink.recover(0, Vec::new()).unwrap();
        let mut changes = changes(5);
        changes[0].1 = Int64Array::from(vec![-2]);
        sink.prepare(2, &changes).unwrap();
        sink.commit(2).unwrap();
        assert_eq!(files(&dir), vec!["part-00000000000000000002.avro"]);
        let bytes = fs::read(dir.join("part-00000000000000000002.avro")).unwrap();
        let file = Container::open(&bytes).unwrap();
        assert_eq!(file.count().unwrap(), 2);
        let row = Fields::from(vec![Field::new("v", DataType::Int32, true)]);
        let target: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("before", DataType::Struct(row), true),
            Field::new("op", DataType::Utf8, true),
        ]));
        let back = file.rows(&target, 0, 10).unwrap().unwrap();
        let before = back.column(0).as_struct();
        assert_eq!(
            before.column(0).as_primitive::<Int32Type>().values(),
            &[5, 5]
        );
        assert_eq!(back.column(1).as_string::<i32>().value(1), "d");
        let bad = Options::new([
            ("path".to_string(), dir.display().to_string()),
            ("codec".to_string(), "bzip2".to_string()),
        ]);
        assert!(FilesystemSink::try_new(&bad, SinkFormat::Debezium, encode()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
