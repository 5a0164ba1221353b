//! `ENCODE AVRO (schema.registry = 'http://...')`: records in the Confluent wire format
//! (a zero byte, the writer schema's id as 4 big-endian bytes, then the Avro binary
//! value), decoded by the writer's schema, fetched from the registry by id and cached.
//!
//! Columns are matched to the writer's fields by name, so the writer's schema may evolve
//! (fields added, removed, reordered, `int` widened to `long`) without the declared
//! columns changing: a column the writer lacks reads as NULL, a field no column names is
//! skipped. Records, arrays, maps and unions of several types read as JSON text.
//!
//! A record that cannot be decoded (no wire-format header, an unknown schema id, a value
//! that does not fit its column) is skipped and logged with its error. A registry that
//! cannot be reached is not a bad record: [`ConnectorError::Unavailable`] tells the
//! reader to try the same records again later.

pub mod file;
mod read;
pub mod registry;
mod schema;
pub mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};

use crate::decode::Record;
use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::sink::SinkFormat;
use crate::source_errors::SourceErrors;
use read::Plan;
use registry::{Registry, RegistryError};
pub use schema::Node;
use write::AvroEncoder;

/// A plan for one writer schema id and one set of target columns, or why there is none.
type PlanEntry = Arc<std::result::Result<Plan, String>>;

pub struct AvroFormat {
    registry: Registry,
    /// Writer schemas by id; an error is kept too (an id the registry does not have).
    writers: Mutex<HashMap<u32, std::result::Result<Arc<Node>, String>>>,
    /// Plans by target schema (its address; the entry keeps it alive) and writer id.
    plans: Mutex<HashMap<(usize, u32), (SchemaRef, PlanEntry)>>,
}

impl std::fmt::Debug for AvroFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroFormat")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// The schema id of a record in the Confluent wire format.
fn schema_id(record: &[u8]) -> Option<u32> {
    match record {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The error of a registry lookup, as the connector reports it.
fn registry_error(e: RegistryError) -> ConnectorError {
    match e {
        RegistryError::Unavailable(m) => ConnectorError::Unavailable(m),
        RegistryError::NotFound(m) | RegistryError::Bad(m) => ConnectorError::Options(m),
    }
}

/// The registry of `schema.registry` (required), `schema.registry.username`,
/// `schema.registry.password`, `schema.registry.ssl.ca.location`.
pub(crate) fn registry_of(options: &Options) -> Result<Registry> {
    let url = options.get("schema.registry").ok_or_else(|| {
        ConnectorError::Options(
            "schema.registry = 'http://host:port' is needed for ENCODE AVRO (records carry the id of their schema there)".into(),
        )
    })?;
    Registry::new(
        url,
        options.get("schema.registry.username"),
        options.get("schema.registry.password"),
        options.get("schema.registry.ssl.ca.location"),
    )
    .map_err(ConnectorError::Options)
}

/// `ENCODE AVRO` for a Kafka sink: its value schema (and, for `FORMAT UPSERT`, key
/// schema), registered under the topic's subjects when the sink is made.
#[derive(Debug, Clone)]
pub struct AvroSink {
    pub value: AvroEncoder,
    pub key: Option<AvroEncoder>,
}

impl AvroSink {
    /// Makes the schemas of sink `name`'s records (rows of `columns`; Debezium
    /// envelopes for `FORMAT DEBEZIUM`; `key` columns as the key for `FORMAT UPSERT`)
    /// and registers them as `<topic>-value` and `<topic>-key`.
    pub fn try_new(
        options: &Options,
        name: &str,
        topic: &str,
        format: SinkFormat,
        columns: &SchemaRef,
        key: &[usize],
    ) -> Result<Self> {
        let registry = registry_of(options)?;
        let value = match format {
            SinkFormat::Debezium => write::debezium_schema(name, columns.fields())?,
            _ => write::record_schema(name, columns.fields())?,
        };
        let register = |subject: String, schema: serde_json::Value| -> Result<AvroEncoder> {
            let id = registry
                .register(&subject, &schema.to_string())
                .map_err(registry_error)?;
            Ok(AvroEncoder::new(id))
        };
        let value = register(format!("{topic}-value"), value)?;
        let key = if format == SinkFormat::Upsert {
            let fields = columns.project(key)?.fields().clone();
            let schema = write::record_schema(&format!("{name}_key"), &fields)?;
            Some(register(format!("{topic}-key"), schema)?)
        } else {
            None
        };
        Ok(Self { value, key })
    }
}

impl AvroFormat {
    /// `schema.registry` (required), `schema.registry.username`,
    /// `schema.registry.password`.
    pub fn from_options(options: &Options) -> Result<Self> {
        let registry = registry_of(options)?;
        Ok(Self {
            registry,
            writers: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// The latest schema registered under `subject` (e.g. `topic-value`); `None` when
    /// the registry has no such subject.
    pub fn latest(&self, subject: &str) -> Result<Option<String>> {
        match self.registry.latest(subject) {
            Ok(text) => Ok(Some(text)),
            Err(RegistryError::NotFound(_)) => Ok(None),
            Err(e) => Err(registry_error(e)),
        }
    }

    /// The columns a record schema's fields read as (all nullable), each with whether it
    /// holds JSON text (a nested value). Times and timestamps are in microseconds, as
    /// SQL's are. Fields of type `null` have no column.
    pub fn columns(schema_text: &str) -> Result<Vec<(Field, bool)>> {
        let node = Node::parse(schema_text).map_err(ConnectorError::Schema)?;
        let Node::Record(r) = node else {
            return Err(ConnectorError::Schema(format!(
                "the Avro schema is a {}, not a record: declare the columns",
                node.describe()
            )));
        };
        Ok(r.fields
            .iter()
            .filter_map(|(name, n)| {
                let t = match n.arrow_type()? {
                    DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz),
                    DataType::Time32(_) | DataType::Time64(_) => {
                        DataType::Time64(TimeUnit::Microsecond)
                    }
                    t => t,
                };
                Some((Field::new(name, t, true), n.is_nested()))
            })
            .collect())
    }

    /// Checks that records of `schema_text` can fill `target`.
    pub fn check(schema_text: &str, target: &SchemaRef) -> Result<()> {
        let node = Node::parse(schema_text).map_err(ConnectorError::Schema)?;
        Plan::new(&node, target)
            .map(|_| ())
            .map_err(ConnectorError::Schema)
    }

    fn writer(&self, id: u32) -> Result<std::result::Result<Arc<Node>, String>> {
        if let Some(w) = self.lock_writers().get(&id) {
            return Ok(w.clone());
        }
        // Asked outside the lock: a slow registry must not stall other splits' cached
        // lookups.
        let fetched = match self.registry.schema_by_id(id) {
            Ok(text) => Node::parse(&text).map(Arc::new),
            Err(RegistryError::Unavailable(m)) => return Err(ConnectorError::Unavailable(m)),
            Err(RegistryError::NotFound(m) | RegistryError::Bad(m)) => Err(m),
        }
        .map_err(|e| format!("schema id {id}: {e}"));
        self.lock_writers().insert(id, fetched.clone());
        Ok(fetched)
    }

    fn lock_writers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u32, std::result::Result<Arc<Node>, String>>> {
        self.writers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plan(&self, id: u32, target: &SchemaRef) -> Result<PlanEntry> {
        let key = (Arc::as_ptr(target) as *const () as usize, id);
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = plans.get(&key) {
            return Ok(Arc::clone(p));
        }
        drop(plans);
        let plan = Arc::new(
            self.writer(id)?
                .and_then(|w| Plan::new(&w, target).map_err(|e| format!("schema id {id}: {e}"))),
        );
        plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.insert(key, (Arc::clone(target), Arc::clone(&plan)));
        Ok(plan)
    }

    /// The plans for the schema ids of `records` (those in the wire format) into
    /// `target`, fetching the schemas not known yet.
    fn plans_for<'a>(
        &self,
        target: &SchemaRef,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<HashMap<u32, PlanEntry>> {
        let mut plans: HashMap<u32, PlanEntry> = HashMap::new();
        for r in records {
            if let Some(id) = schema_id(r) {
                if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(id) {
                    e.insert(self.plan(id, target)?);
                }
            }
        }
        Ok(plans)
    }

    /// Fetches the schemas `records` need to be read into `target`:
    /// [`ConnectorError::Unavailable`] when the registry cannot be reached, so that a
    /// caller can put the records back before anything of them is applied.
    pub fn prepare<'a>(
        &self,
        target: &SchemaRef,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<()> {
        self.plans_for(target, records).map(|_| ())
    }

    /// Decodes `records` (byte ranges of `buf`) into rows of `schema`, with the offset of
    /// each row's record. Bad records are logged to `errors` (as `split`/offset) and
    /// left out; [`ConnectorError::Unavailable`] when a schema could not be fetched, in
    /// which case nothing was logged and the records should be read again later.
    pub fn decode(
        &self,
        schema: &SchemaRef,
        buf: &[u8],
        records: &[Record],
        split: &str,
        errors: &SourceErrors,
    ) -> Result<(RecordBatch, Vec<u64>)> {
        let bytes = |r: &Record| &buf[r.start..r.end];
        // Every schema first: an unreachable registry must leave no trace.
        let plans = self.plans_for(schema, records.iter().map(bytes))?;
        let skip = |r: &Record, e: &str| {
            errors.record(split, r.offset, e, bytes(r));
            tracing::warn!(split, offset = r.offset, error = %e, "skipped a malformed record");
        };
        let mut batches = Vec::new();
        let mut kept = Vec::with_capacity(records.len());
        let mut i = 0;
        while i < records.len() {
            let Some(id) = schema_id(bytes(&records[i])) else {
                skip(
                    &records[i],
                    "not in the schema registry's wire format (a zero byte and a 4-byte schema id first)",
                );
                i += 1;
                continue;
            };
            let entry = plans.get(&id).map(Arc::clone);
            let plan = match entry.as_deref() {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    skip(&records[i], e);
                    i += 1;
                    continue;
                }
                None => {
                    skip(&records[i], "no plan for its schema id");
                    i += 1;
                    continue;
                }
            };
            // The run of records with this schema id, read together.
            let mut rows = plan.start();
            let mut run = Vec::new();
            while i < records.len() && schema_id(bytes(&records[i])) == Some(id) {
                match rows.push(&bytes(&records[i])[5..]) {
                    Ok(()) => run.push(i),
                    Err(e) => skip(&records[i], &e),
                }
                i += 1;
            }
            match rows.finish() {
                Ok(b) => {
                    batches.push(b);
                    kept.extend(run.iter().map(|r| records[*r].offset));
                }
                // A value that does not fit its column: find it, record by record.
                Err(_) => {
                    for r in run {
                        let mut one = plan.start();
                        let result = one
                            .push(&bytes(&records[r])[5..])
                            .and_then(|()| one.finish());
                        match result {
                            Ok(b) => {
                                batches.push(b);
                                kept.push(records[r].offset);
                            }
                            Err(e) => skip(&records[r], &e),
                        }
                    }
                }
            }
        }
        let batch = match batches.len() {
            0 => RecordBatch::new_empty(Arc::clone(schema)),
            1 => batches.swap_remove(0),
            _ => arrow::compute::concat_batches(schema, &batches)?,
        };
        Ok((batch, kept))
    }
}
