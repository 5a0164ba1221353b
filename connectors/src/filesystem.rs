//! The `filesystem` connector (also `posix_fs`): the files of a local directory, read
//! line by line as JSON objects or CSV, new files picked up as they appear.
//!
//! ```sql
//! CREATE SOURCE s (id BIGINT, name VARCHAR) WITH (
//!   connector = 'filesystem', path = '/data/in', match_pattern = '*.csv')
//! FORMAT PLAIN ENCODE CSV (without_header = 'false', delimiter = ',');
//! ```
//!
//! Files are read in name order, each split taking the files whose name hashes to it.
//! A split's offset is the number of records (non-empty lines after a CSV header) it has
//! read, so a restart skips exactly those: files must only grow, and new files must sort
//! after the ones already read (timestamped or numbered names); a file that shows up
//! earlier in the order than the one being read is skipped with a warning. A line is read
//! once it ends with a newline, or once a later file exists (the last line of a finished
//! file). One record per line: CSV fields cannot hold newlines.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::decode::{decode_records, Encoding, Record};
use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::source_errors::{SourceErrors, DEFAULT_KEPT};
use crate::Split;

/// How much of a file one read takes.
const CHUNK: usize = 1 << 20;

/// The settings of a filesystem source.
#[derive(Debug, Clone)]
pub struct FilesystemConfig {
    dir: PathBuf,
    pattern: Option<String>,
    encoding: Encoding,
    header: bool,
    splits: usize,
    schema: SchemaRef,
    /// Records skipped as malformed, over all splits.
    pub errors: Arc<SourceErrors>,
}

impl FilesystemConfig {
    pub fn from_options(
        options: &Options,
        schema: SchemaRef,
        encoding: Encoding,
        header: bool,
    ) -> Result<Self> {
        if schema.fields().is_empty() {
            return Err(ConnectorError::Schema(
                "a filesystem source needs its columns declared".into(),
            ));
        }
        if encoding.is_avro() || encoding.is_protobuf() {
            return Err(ConnectorError::Options(
                "ENCODE AVRO and PROTOBUF read Kafka records (one message each); Avro and Protobuf files are not supported yet".into(),
            ));
        }
        let path = options
            .get("path")
            .or_else(|| options.get("posix_fs.root"))
            .ok_or_else(|| {
                ConnectorError::Options("a filesystem source needs path = '/a/directory'".into())
            })?;
        let dir = PathBuf::from(path);
        if !dir.is_absolute() {
            return Err(ConnectorError::Options(format!(
                "path must be absolute, not '{path}'"
            )));
        }
        if !dir.is_dir() {
            return Err(ConnectorError::Options(format!(
                "path '{path}' is not a directory"
            )));
        }
        let pattern = options.get("match_pattern").map(str::to_string);
        let splits = options.u64("filesystem.split.num", 1)?;
        if splits == 0 || splits > 1024 {
            return Err(ConnectorError::Options(
                "filesystem.split.num must be between 1 and 1024".into(),
            ));
        }
        Ok(Self {
            dir,
            pattern,
            encoding,
            header,
            splits: splits as usize,
            schema,
            errors: Arc::new(SourceErrors::new(DEFAULT_KEPT)),
        })
    }

    pub fn splits(&self) -> Vec<FileSplit> {
        let config = Arc::new(self.clone());
        (0..self.splits)
            .map(|index| FileSplit {
                config: Arc::clone(&config),
                index,
                current: None,
                pos: 0,
                at_line_start: true,
                produced: 0,
                skip: 0,
                caught_up: false,
                bytes: 0,
            })
            .collect()
    }

    /// The matching files of all splits, in name order.
    fn files(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            ConnectorError::Options(format!("cannot list {}: {e}", self.dir.display()))
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter(|n| self.pattern.as_deref().is_none_or(|p| wildcard(p, n)))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Matches `*` (any run) and `?` (one character).
fn wildcard(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The files of one split.
pub struct FileSplit {
    config: Arc<FilesystemConfig>,
    index: usize,
    /// The file being read (the last in name order so far).
    current: Option<String>,
    /// Byte position in `current`.
    pos: u64,
    /// Whether `pos` is at the start of `current` (a CSV header comes next).
    at_line_start: bool,
    /// Records read (good or bad), the split's offset.
    produced: u64,
    /// Records still to pass over after a seek.
    skip: u64,
    caught_up: bool,
    /// File bytes consumed since the split was made.
    bytes: u64,
}

impl FileSplit {
    /// Moves to the first file after `current`, if there is one.
    fn next_file(&mut self, files: &[String]) -> bool {
        let next = match &self.current {
            None => files.first(),
            Some(c) => files.iter().find(|f| f.as_str() > c.as_str()),
        };
        match next {
            Some(n) => {
                self.current = Some(n.clone());
                self.pos = 0;
                self.at_line_start = true;
                true
            }
            None => false,
        }
    }
}

impl Split for FileSplit {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.config.schema)
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>> {
        let schema = Arc::clone(&self.config.schema);
        let all = self.config.files()?;
        let splits = self.config.splits as u64;
        let files: Vec<String> = all
            .iter()
            .filter(|n| fnv1a(n.as_bytes()) % splits == self.index as u64)
            .cloned()
            .collect();
        let mut buf: Vec<u8> = Vec::new();
        let mut records: Vec<Record> = Vec::new();
        let mut split_name = String::new();
        self.caught_up = false;
        while records.len() < max {
            if self.current.is_none() && !self.next_file(&files) {
                self.caught_up = true;
                break;
            }
            let Some(name) = self.current.clone() else {
                break;
            };
            let path = self.config.dir.join(&name);
            let mut chunk = Vec::new();
            File::open(&path)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(self.pos))?;
                    f.take(CHUNK as u64).read_to_end(&mut chunk)
                })
                .map_err(|e| {
                    ConnectorError::Options(format!("cannot read {}: {e}", path.display()))
                })?;
            let at_end = chunk.len() < CHUNK;
            // A later file (of any split) means this one is finished: its last line
            // needs no newline.
            let finished = at_end && all.iter().any(|f| f.as_str() > name.as_str());
            let mut used = 0;
            while records.len() < max && used < chunk.len() {
                let rest = &chunk[used..];
                let line = match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        used += i + 1;
                        &rest[..i]
                    }
                    None if finished => {
                        used = chunk.len();
                        rest
                    }
                    None => break,
                };
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if std::mem::replace(&mut self.at_line_start, false) && self.config.header {
                    continue;
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                self.produced += 1;
                if self.skip > 0 {
                    self.skip -= 1;
                    continue;
                }
                if split_name.is_empty() {
                    split_name.clone_from(&name);
                }
                let start = buf.len();
                buf.extend_from_slice(line);
                records.push(Record {
                    offset: self.produced - 1,
                    start,
                    end: buf.len(),
                });
                buf.push(b'\n');
            }
            self.pos += used as u64;
            self.bytes += used as u64;
            if records.len() >= max {
                break;
            }
            if !at_end {
                if used == 0 {
                    return Err(ConnectorError::Options(format!(
                        "{}: a line longer than {CHUNK} bytes",
                        path.display()
                    )));
                }
                continue;
            }
            if finished {
                if !self.next_file(&files) {
                    // The later files belong to other splits.
                    self.caught_up = true;
                    break;
                }
                if !records.is_empty() {
                    // One file per batch, so a bad record is reported with its file.
                    break;
                }
            } else {
                self.caught_up = true;
                break;
            }
        }
        let split = format!("{}:{split_name}", self.index);
        let batch = decode_records(
            &self.config.encoding,
            &schema,
            &buf,
            &records,
            &split,
            &self.config.errors,
        )?;
        Ok(Some(batch))
    }

    fn offset(&self) -> u64 {
        self.produced
    }

    fn seek(&mut self, offset: u64) {
        self.current = None;
        self.pos = 0;
        self.at_line_start = true;
        self.produced = 0;
        self.skip = offset;
    }

    fn caught_up(&self) -> bool {
        self.caught_up
    }

    fn bytes_read(&self) -> Option<u64> {
        Some(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    #[test]
    fn wildcards() {
        assert!(wildcard("*.csv", "a.csv"));
        assert!(wildcard("part-??.json", "part-01.json"));
        assert!(!wildcard("*.csv", "a.json"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxbyy"));
    }

    fn ids(split: &mut FileSplit) -> Vec<i64> {
        let mut out = Vec::new();
        while let Some(b) = split.next_batch(3).unwrap() {
            if b.num_rows() == 0 && split.caught_up() {
                break;
            }
            out.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
        }
        out
    }

    #[test]
    fn reads_files_in_order_resumes_and_picks_up_new_ones() {
        let dir = std::env::temp_dir().join(format!("sabot-fs-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.csv"), "id,name\n1,x\n\n2,y\n3,z").unwrap();
        std::fs::write(dir.join("b.csv"), "id,name\n4,w\n5,v\n6,").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored\n").unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let options = Options::new([
            ("path".to_string(), dir.display().to_string()),
            ("match_pattern".to_string(), "*.csv".to_string()),
        ]);
        let config = FilesystemConfig::from_options(
            &options,
            schema,
            Encoding::Csv { delimiter: b',' },
            true,
        )
        .unwrap();
        let mut split = config.splits().remove(0);
        // b.csv's last line has no newline and no later file: it waits.
        assert_eq!(ids(&mut split), vec![1, 2, 3, 4, 5]);
        std::fs::write(dir.join("c.csv"), "id,name\n7,u\n").unwrap();
        assert_eq!(ids(&mut split), vec![6, 7]);
        assert_eq!(split.offset(), 7);
        let mut again = config.splits().remove(0);
        again.seek(4);
        assert_eq!(ids(&mut again), vec![5, 6, 7]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
