//! The `filesystem` connector (also `posix_fs`): the files of a local directory, read
//! line by line as JSON objects or CSV, or whole as Parquet files (`ENCODE PARQUET`)
//! or Avro container files (`ENCODE AVRO`, no registry), new files picked up as they
//! appear.
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
//! after the ones already read (timestamped or numbered names): a split lists only the
//! names after the file it is reading (an object store from there, not the whole
//! bucket), so a file that shows up earlier in the order is never read. A line is read
//! once it ends with a newline, or once a later file exists (the last line of a finished
//! file). One record per line: CSV fields cannot hold newlines.
//!
//! Parquet and Avro files are read whole (a Parquet footer, or the Avro blocks, say how
//! many rows they hold), so a file must be complete when it gets its name: write
//! `.name.parquet`, then rename it. The offset counts rows; columns are matched by name
//! (Parquet: and cast to the declared types; Avro: read by the rules of
//! [`crate::avro`]). A file that cannot be read while a later file exists is skipped and
//! logged.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::avro::file::Container;
use crate::decode::{decode_records, Encoding, Record};
use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::source_errors::{SourceErrors, DEFAULT_KEPT};
use crate::Split;

/// How much of a file one read takes.
const CHUNK: usize = 1 << 20;

/// Where the files are.
#[derive(Debug, Clone)]
enum Location {
    Local(PathBuf),
    /// A bucket of an object store (`connector = 's3'`).
    Objects(Arc<ObjectFiles>),
}

/// An object store bucket, or the objects under a prefix of it. Its requests run on
/// [`object_runtime`]: the splits' callers are not async, and may be on another
/// runtime's threads.
struct ObjectFiles {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, for messages.
    url: String,
    /// Only the objects under this "directory" (`s3://bucket/prefix`).
    prefix: Option<ObjectPath>,
}

/// The runtime object store requests run on, one for the process (never dropped: a
/// runtime cannot be dropped inside another's tasks, where sources are dropped).
fn object_runtime() -> std::result::Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: std::sync::OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sabot-objects")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the object store client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl std::fmt::Debug for ObjectFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// How long one object store request may take.
const OBJECT_TIMEOUT: Duration = Duration::from_secs(30);

impl ObjectFiles {
    /// Runs `work` on the store's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> std::result::Result<T, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        object_runtime()?.spawn(async move {
            let result = tokio::time::timeout(OBJECT_TIMEOUT, work).await;
            let _ = tx.send(result);
        });
        match rx.recv() {
            Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            Ok(Err(_)) => Err(format!("no answer within {}s", OBJECT_TIMEOUT.as_secs())),
            Err(_) => Err("the request was dropped".into()),
        }
    }

    /// Every object's name and size; with `after`, those whose names sort after it (the
    /// store lists from there: an S3 `start-after`, not the whole bucket).
    fn list(&self, after: Option<&str>) -> std::result::Result<Vec<(String, u64)>, String> {
        use futures::TryStreamExt;
        let store = Arc::clone(&self.store);
        let after = after.map(ObjectPath::from);
        let prefix = self.prefix.clone();
        let metas: Vec<object_store::ObjectMeta> = self.run(async move {
            match after {
                Some(a) => {
                    store
                        .list_with_offset(prefix.as_ref(), &a)
                        .try_collect()
                        .await
                }
                None => store.list(prefix.as_ref()).try_collect().await,
            }
        })?;
        Ok(metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect())
    }

    fn get_range(
        &self,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> std::result::Result<Bytes, String> {
        let store = Arc::clone(&self.store);
        let path = ObjectPath::from(name);
        self.run(async move { store.get_range(&path, range).await })
    }
}

/// The settings of a filesystem source.
#[derive(Debug, Clone)]
pub struct FilesystemConfig {
    location: Location,
    pattern: Option<String>,
    encoding: Encoding,
    header: bool,
    splits: usize,
    schema: SchemaRef,
    /// Records skipped as malformed, over all splits.
    pub errors: Arc<SourceErrors>,
}

impl FilesystemConfig {
    /// `connector = 'filesystem'`: `path` (an absolute directory, or
    /// `s3://bucket/prefix` with the `s3.*` settings of [`Self::from_s3_options`]),
    /// `match_pattern` (over names within the directory), `filesystem.split.num`.
    pub fn from_options(
        options: &Options,
        schema: SchemaRef,
        encoding: Encoding,
        header: bool,
    ) -> Result<Self> {
        let path = options
            .get("path")
            .or_else(|| options.get("posix_fs.root"))
            .ok_or_else(|| {
                ConnectorError::Options("a filesystem source needs path = '/a/directory'".into())
            })?;
        if let Some(rest) = path.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ConnectorError::Options(format!(
                    "path '{path}' names no bucket (s3://bucket/prefix)"
                )));
            }
            return Self::s3(
                options,
                bucket,
                prefix.trim_matches('/'),
                schema,
                encoding,
                header,
            );
        }
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
        Self::with_location(Location::Local(dir), options, schema, encoding, header)
    }

    /// `connector = 's3'`: `s3.bucket_name`, `s3.region_name`, `s3.endpoint_url`,
    /// `s3.credentials.access`, `s3.credentials.secret` (else the `AWS_*` environment),
    /// `match_pattern` (over whole object names), `filesystem.split.num`. The bucket is
    /// listed once to check that it can be reached.
    pub fn from_s3_options(
        options: &Options,
        schema: SchemaRef,
        encoding: Encoding,
        header: bool,
    ) -> Result<Self> {
        let bucket = options.get("s3.bucket_name").ok_or_else(|| {
            ConnectorError::Options("an s3 source needs s3.bucket_name = '...'".into())
        })?;
        Self::s3(options, bucket, "", schema, encoding, header)
    }

    /// The objects of `bucket` under `prefix` (all of them when it is empty).
    fn s3(
        options: &Options,
        bucket: &str,
        prefix: &str,
        schema: SchemaRef,
        encoding: Encoding,
        header: bool,
    ) -> Result<Self> {
        // A store that is away must not stall a split for minutes: few, short retries.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        if let Some(region) = options.get("s3.region_name") {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = options.get("s3.endpoint_url") {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(key) = options.get("s3.credentials.access") {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = options.get("s3.credentials.secret") {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| ConnectorError::Options(format!("s3 bucket {bucket}: {e}")))?;
        let objects = ObjectFiles {
            store: Arc::new(store),
            url: format!("s3://{bucket}"),
            prefix: (!prefix.is_empty()).then(|| ObjectPath::from(prefix)),
        };
        objects.list(None).map_err(|e| {
            ConnectorError::Unavailable(format!("cannot list s3://{bucket}/{prefix}: {e}"))
        })?;
        Self::with_location(
            Location::Objects(Arc::new(objects)),
            options,
            schema,
            encoding,
            header,
        )
    }

    fn with_location(
        location: Location,
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
        if encoding.is_avro() {
            return Err(ConnectorError::Options(
                "schema.registry does not apply to files: an Avro container file holds its writer schema in its header".into(),
            ));
        }
        if encoding.is_protobuf() {
            return Err(ConnectorError::Options(
                "ENCODE PROTOBUF reads Kafka records (one message each); Protobuf files are not supported yet".into(),
            ));
        }
        let pattern = options.get("match_pattern").map(str::to_string);
        let splits = options.u64("filesystem.split.num", 1)?;
        if splits == 0 || splits > 1024 {
            return Err(ConnectorError::Options(
                "filesystem.split.num must be between 1 and 1024".into(),
            ));
        }
        Ok(Self {
            location,
            pattern,
            encoding,
            header,
            splits: splits as usize,
            schema,
            errors: Arc::new(SourceErrors::new(DEFAULT_KEPT)),
        })
    }

    /// Where the files are, for messages.
    fn describe(&self, name: &str) -> String {
        match &self.location {
            Location::Local(dir) => dir.join(name).display().to_string(),
            Location::Objects(o) => format!("{}/{name}", o.url),
        }
    }

    /// The bytes of file `name` from `pos`, at most `len` of them (`size`: the file's
    /// size when it was listed).
    fn read_chunk(&self, name: &str, pos: u64, len: usize, size: u64) -> Result<Vec<u8>> {
        let failed = |e: String| {
            ConnectorError::Options(format!("cannot read {}: {e}", self.describe(name)))
        };
        match &self.location {
            Location::Local(dir) => {
                let mut chunk = Vec::new();
                File::open(dir.join(name))
                    .and_then(|mut f| {
                        f.seek(SeekFrom::Start(pos))?;
                        f.take(len as u64).read_to_end(&mut chunk)
                    })
                    .map_err(|e| failed(e.to_string()))?;
                Ok(chunk)
            }
            Location::Objects(o) => {
                if pos >= size {
                    return Ok(Vec::new());
                }
                let end = size.min(pos + len as u64);
                Ok(o.get_range(name, pos..end).map_err(failed)?.to_vec())
            }
        }
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
                size: 0,
                object: None,
            })
            .collect()
    }

    /// The matching files of all splits (with `after`, those whose names sort after it),
    /// in name order, with their sizes. Names whose last part starts with `.` are left
    /// out (files being written).
    fn files(&self, after: Option<&str>) -> Result<(Vec<String>, HashMap<String, u64>)> {
        let listed: Vec<(String, u64)> = match &self.location {
            Location::Local(dir) => {
                let entries = std::fs::read_dir(dir).map_err(|e| {
                    ConnectorError::Options(format!("cannot list {}: {e}", dir.display()))
                })?;
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let meta = e.metadata().ok().filter(|m| m.is_file())?;
                        Some((e.file_name().into_string().ok()?, meta.len()))
                    })
                    .collect()
            }
            // An unreachable store lists nothing new: the split waits.
            Location::Objects(o) => o.list(after).unwrap_or_else(|e| {
                tracing::warn!(store = %o.url, error = %e, "cannot list the object store; retrying");
                Vec::new()
            }),
        };
        let mut names = Vec::with_capacity(listed.len());
        let mut sizes = HashMap::with_capacity(listed.len());
        for (name, size) in listed {
            let last = name.rsplit('/').next().unwrap_or(&name);
            // The pattern is over names within the directory (a prefix's objects: their
            // names after it).
            let within = match &self.location {
                Location::Objects(o) => o
                    .prefix
                    .as_ref()
                    .and_then(|p| name.strip_prefix(p.as_ref()))
                    .map_or(name.as_str(), |n| n.trim_start_matches('/')),
                Location::Local(_) => name.as_str(),
            };
            if last.starts_with('.')
                || after.is_some_and(|a| name.as_str() <= a)
                || !self.pattern.as_deref().is_none_or(|p| wildcard(p, within))
            {
                continue;
            }
            sizes.insert(name.clone(), size);
            names.push(name);
        }
        names.sort();
        Ok((names, sizes))
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
    /// The size of `current` when it was listed (set by `next_file`: a split lists
    /// only the names after the file it reads).
    size: u64,
    /// The file being read whole (an object, an Avro file), fetched once.
    object: Option<(String, Bytes)>,
}

impl FileSplit {
    /// Moves to the first file after `current`, if there is one (`sizes`: the listed
    /// sizes).
    fn next_file(&mut self, files: &[String], sizes: &HashMap<String, u64>) -> bool {
        let next = match &self.current {
            None => files.first(),
            Some(c) => files.iter().find(|f| f.as_str() > c.as_str()),
        };
        match next {
            Some(n) => {
                self.size = sizes.get(n).copied().unwrap_or(0);
                self.current = Some(n.clone());
                self.pos = 0;
                self.at_line_start = true;
                true
            }
            None => false,
        }
    }
}

impl FileSplit {
    /// Up to `max` rows of the split's Parquet or Avro files (`files`; `all` are every
    /// split's).
    fn next_whole(
        &mut self,
        max: usize,
        files: &[String],
        all: &[String],
        sizes: &HashMap<String, u64>,
    ) -> Result<RecordBatch> {
        let schema = Arc::clone(&self.config.schema);
        let mut batches = Vec::new();
        let mut rows = 0;
        self.caught_up = false;
        while rows < max {
            if self.current.is_none() && !self.next_file(files, sizes) {
                self.caught_up = true;
                break;
            }
            let Some(name) = self.current.clone() else {
                break;
            };
            let later = all.iter().any(|f| f.as_str() > name.as_str());
            // After a seek, whole files are passed over by their row counts.
            let from = self.pos + self.skip;
            let size = self.size;
            match self.read_whole(&name, size, &schema, from, max - rows) {
                Ok((batch, total)) => {
                    let passed = total.min(from) - self.pos.min(total);
                    self.produced += passed;
                    self.skip -= passed.min(self.skip);
                    self.pos = total.min(from);
                    if let Some(b) = batch {
                        self.pos += b.num_rows() as u64;
                        self.produced += b.num_rows() as u64;
                        rows += b.num_rows();
                        batches.push(b);
                    }
                    if self.pos >= total {
                        self.bytes += size;
                        self.object = None;
                        if !self.next_file(files, sizes) {
                            self.caught_up = true;
                            break;
                        }
                    }
                }
                // Not complete yet, unless a later file says it is done.
                Err(_) if !later => {
                    self.object = None;
                    self.caught_up = true;
                    break;
                }
                Err(e) => {
                    self.object = None;
                    let split = format!("{}:{name}", self.index);
                    self.config.errors.record(&split, self.produced, &e, b"");
                    tracing::warn!(file = %self.config.describe(&name), error = %e, "skipped an unreadable file");
                    if !self.next_file(files, sizes) {
                        self.caught_up = true;
                        break;
                    }
                }
            }
        }
        Ok(match batches.len() {
            0 => RecordBatch::new_empty(schema),
            1 => batches.swap_remove(0),
            _ => arrow::compute::concat_batches(&schema, &batches)?,
        })
    }
}

impl FileSplit {
    /// Rows `offset..` (at most `limit`) of Parquet or Avro file `name` (`size` bytes
    /// when listed), and how many rows it has. A file read whole (objects, Avro files)
    /// is read once and kept while it is being read.
    fn read_whole(
        &mut self,
        name: &str,
        size: u64,
        schema: &SchemaRef,
        offset: u64,
        limit: usize,
    ) -> std::result::Result<(Option<RecordBatch>, u64), String> {
        let what = self.config.describe(name);
        if let (Location::Local(dir), Encoding::Parquet) =
            (&self.config.location, &self.config.encoding)
        {
            let file =
                File::open(dir.join(name)).map_err(|e| format!("cannot open {what}: {e}"))?;
            return parquet_rows(file, &what, schema, offset, limit);
        }
        let cached = self.object.as_ref().filter(|(n, _)| n == name);
        let bytes = match cached {
            Some((_, b)) => b.clone(),
            None => {
                let b = match &self.config.location {
                    Location::Local(dir) => std::fs::read(dir.join(name))
                        .map(Bytes::from)
                        .map_err(|e| format!("cannot read {what}: {e}"))?,
                    Location::Objects(o) => o
                        .get_range(name, 0..size)
                        .map_err(|e| format!("cannot read {what}: {e}"))?,
                };
                self.object = Some((name.to_string(), b.clone()));
                b
            }
        };
        if self.config.encoding.is_parquet() {
            return parquet_rows(bytes, &what, schema, offset, limit);
        }
        let file = Container::open(&bytes).map_err(|e| format!("{what}: {e}"))?;
        let total = file.count().map_err(|e| format!("{what}: {e}"))?;
        let rows = file
            .rows(schema, offset, limit)
            .map_err(|e| format!("{what}: {e}"))?;
        Ok((rows, total))
    }
}

/// Rows `offset..offset + limit` of a Parquet file (`what`, for messages), in the
/// columns of `schema` (matched by name, cast; a column the file lacks is NULL), and how
/// many rows the file has.
fn parquet_rows<R: parquet::file::reader::ChunkReader + 'static>(
    reader: R,
    what: &str,
    schema: &SchemaRef,
    offset: u64,
    limit: usize,
) -> std::result::Result<(Option<RecordBatch>, u64), String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| format!("{what}: {e}"))?;
    let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    if offset >= total || limit == 0 {
        return Ok((None, total));
    }
    let file_schema = Arc::clone(builder.schema());
    let mut roots = Vec::new();
    let mut sources = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let found = file_schema.index_of(f.name()).ok().or_else(|| {
            file_schema
                .fields()
                .iter()
                .position(|g| g.name().eq_ignore_ascii_case(f.name()))
        });
        if let Some(i) = found {
            let from = file_schema.field(i).data_type();
            if !crate::decode::fits(from, f.data_type()) {
                return Err(format!(
                    "{what}: column {} is {from} in the file and cannot be read as {}",
                    f.name(),
                    f.data_type()
                ));
            }
            if !roots.contains(&i) {
                roots.push(i);
            }
        }
        sources.push(found);
    }
    roots.sort_unstable();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_offset(offset as usize)
        .with_limit(limit)
        .with_batch_size(limit.min(8192))
        .build()
        .map_err(|e| format!("{what}: {e}"))?;
    let mut read = Vec::new();
    for b in reader {
        read.push(b.map_err(|e| format!("{what}: {e}"))?);
    }
    let Some(first) = read.first() else {
        return Ok((None, total));
    };
    let projected = first.schema();
    let read = arrow::compute::concat_batches(&projected, &read).map_err(|e| e.to_string())?;
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns = schema
        .fields()
        .iter()
        .zip(&sources)
        .map(|(f, source)| match source {
            None => Ok(arrow::array::new_null_array(f.data_type(), read.num_rows())),
            Some(i) => {
                let name = file_schema.field(*i).name();
                let column = read
                    .column_by_name(name)
                    .ok_or_else(|| format!("column {name} was not read"))?;
                arrow::compute::cast_with_options(column, f.data_type(), &options)
                    .map_err(|e| format!("{what}: column {}: {e}", f.name()))
            }
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(read.num_rows()));
    let batch = RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
        .map_err(|e| e.to_string())?;
    Ok((Some(batch), total))
}

impl Split for FileSplit {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.config.schema)
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>> {
        let schema = Arc::clone(&self.config.schema);
        // Files up to the one being read are done with: list only those after it.
        let (all, sizes) = self.config.files(self.current.as_deref())?;
        let splits = self.config.splits as u64;
        let files: Vec<String> = all
            .iter()
            .filter(|n| fnv1a(n.as_bytes()) % splits == self.index as u64)
            .cloned()
            .collect();
        if self.config.encoding.is_whole_file() {
            return self.next_whole(max, &files, &all, &sizes).map(Some);
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut records: Vec<Record> = Vec::new();
        let mut split_name = String::new();
        self.caught_up = false;
        while records.len() < max {
            if self.current.is_none() && !self.next_file(&files, &sizes) {
                self.caught_up = true;
                break;
            }
            let Some(name) = self.current.clone() else {
                break;
            };
            let size = self.size;
            let chunk = self.config.read_chunk(&name, self.pos, CHUNK, size)?;
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
                        self.config.describe(&name)
                    )));
                }
                continue;
            }
            if finished {
                if !self.next_file(&files, &sizes) {
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
        self.object = None;
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

    fn write_parquet(path: &std::path::Path, batch: &RecordBatch) {
        let file = File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn parquet_files_by_column_name_resume_and_skip_bad_ones() {
        use arrow::array::{ArrayRef, Int32Array, StringArray};
        let dir = std::env::temp_dir().join(format!("sabot-fs-parquet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Columns in another order, an extra one, ids as int32 (read as bigint).
        let file = |ids: Vec<i32>| {
            let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
            RecordBatch::try_from_iter(vec![
                (
                    "extra",
                    Arc::new(Int32Array::from(vec![0; ids.len()])) as ArrayRef,
                ),
                ("name", Arc::new(StringArray::from(names)) as ArrayRef),
                ("ID", Arc::new(Int32Array::from(ids)) as ArrayRef),
            ])
            .unwrap()
        };
        write_parquet(&dir.join("a.parquet"), &file(vec![1, 2, 3, 4, 5]));
        write_parquet(&dir.join("b.parquet"), &file(vec![6, 7, 8]));
        std::fs::write(dir.join(".c.parquet"), b"being written").unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("missing", DataType::Utf8, true),
        ]));
        let options = Options::new([("path".to_string(), dir.display().to_string())]);
        let config =
            FilesystemConfig::from_options(&options, schema, Encoding::Parquet, false).unwrap();
        let mut split = config.splits().remove(0);
        assert_eq!(ids(&mut split), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(split.offset(), 8);
        // A file that cannot be read waits while it is the last, and is skipped (and
        // logged) once a later one exists.
        std::fs::write(dir.join("c.parquet"), b"not parquet").unwrap();
        assert_eq!(ids(&mut split), Vec::<i64>::new());
        write_parquet(&dir.join("d.parquet"), &file(vec![9]));
        assert_eq!(ids(&mut split), vec![9]);
        assert_eq!(config.errors.entries().len(), 1);
        let mut again = config.splits().remove(0);
        again.seek(4);
        let batch = again.next_batch(2).unwrap().unwrap();
        assert_eq!(batch.column(1).as_string::<i32>().value(0), "n5");
        assert_eq!(batch.column(2).null_count(), 2);
        assert_eq!(ids(&mut again), vec![7, 8, 9]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
