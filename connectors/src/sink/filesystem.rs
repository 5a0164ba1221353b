//! The `filesystem` sink: one JSON-lines file per epoch with changes, in a directory.
//!
//! `prepare` writes `.part-<epoch>.jsonl.pending` and syncs it; `commit` renames it to
//! `part-<epoch>.jsonl` (epoch zero-padded to 20 digits, so names sort in epoch order)
//! and syncs the directory. Readers take `part-*.jsonl` files only: a file is there
//! whole or not at all, and never twice.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Int64Array, RecordBatch};

use super::{encode_json, SinkFormat, SinkWriter};
use crate::error::{ConnectorError, Result};
use crate::options::Options;

pub struct FilesystemSink {
    dir: PathBuf,
    format: SinkFormat,
    /// The epoch whose file waits for `commit`.
    pending: Option<u64>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ConnectorError {
    ConnectorError::Write(format!("cannot {what} {}: {e}", path.display()))
}

impl FilesystemSink {
    /// Reads `path` (or `fs.path`) from `options`. The directory is created by
    /// [`SinkWriter::recover`], which runs before the first write.
    pub fn try_new(options: &Options, format: SinkFormat) -> Result<Self> {
        let path = options
            .get("path")
            .or_else(|| options.get("fs.path"))
            .ok_or_else(|| {
                ConnectorError::Options("the filesystem sink needs path = '/a/directory'".into())
            })?;
        if path.is_empty() {
            return Err(ConnectorError::Options("path must not be empty".into()));
        }
        let dir = PathBuf::from(path);
        if dir.is_relative() {
            return Err(ConnectorError::Options(format!(
                "path must be absolute, not '{path}'"
            )));
        }
        Ok(Self {
            dir,
            format,
            pending: None,
        })
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pending_path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!(".part-{epoch:020}.jsonl.pending"))
    }

    fn final_path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("part-{epoch:020}.jsonl"))
    }

    fn publish(&self, epoch: u64) -> Result<()> {
        let from = self.pending_path(epoch);
        let to = self.final_path(epoch);
        fs::rename(&from, &to).map_err(|e| io_error("rename", &from, e))?;
        sync_dir(&self.dir)
    }
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
        let mut bytes = Vec::new();
        for (batch, weights) in changes {
            bytes.extend(encode_json(self.format, batch, weights)?.bytes);
        }
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
                .and_then(|n| n.strip_suffix(".jsonl.pending"))
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
        let mut sink = FilesystemSink::try_new(&options, format).unwrap();
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
        let mut other = FilesystemSink::try_new(&options, format).unwrap();
        other.prepare(5, &changes(3)).unwrap();
        let mut restarted = FilesystemSink::try_new(&options, format).unwrap();
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
}
