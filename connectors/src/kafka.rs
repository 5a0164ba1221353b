//! The `kafka` connector: each partition of a topic is a split whose offset is the next
//! Kafka offset to read. Records are JSON objects (`FORMAT PLAIN ENCODE JSON`) decoded into
//! the declared columns; a record that is not valid JSON or does not fit the columns is
//! skipped, counted and logged, and never stops the source.
//!
//! ```sql
//! CREATE SOURCE s (id BIGINT, name VARCHAR) WITH (
//!   connector = 'kafka', topic = 'events',
//!   properties.bootstrap.server = '127.0.0.1:9092',
//!   scan.startup.mode = 'earliest')
//! FORMAT PLAIN ENCODE JSON;
//! ```

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::SchemaRef;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::decode::{binary_column, decode_records_with_offsets, raw_batch, Encoding, Record};
use crate::error::{ConnectorError, Result};
use crate::options::Options;
use crate::source_errors::{SourceErrors, DEFAULT_KEPT};
use crate::Split;

/// How long to wait for the broker when a source is created.
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    Earliest,
    Latest,
    /// The first record at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

/// Record metadata a Kafka source can add as columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// The record's key, BYTEA.
    Key,
    /// The partition, INT.
    Partition,
    /// The offset in its partition, BIGINT.
    Offset,
    /// The record's timestamp, TIMESTAMPTZ.
    Timestamp,
}

impl Include {
    /// `key`, `partition`, `offset` or `timestamp`.
    pub fn parse(kind: &str) -> Option<Self> {
        match kind.to_ascii_lowercase().as_str() {
            "key" => Some(Include::Key),
            "partition" => Some(Include::Partition),
            "offset" => Some(Include::Offset),
            "timestamp" => Some(Include::Timestamp),
            _ => None,
        }
    }

    /// The column's name without `AS` (RisingWave's, so that its DDL carries over).
    pub fn default_name(self) -> &'static str {
        match self {
            Include::Key => "_rw_kafka_key",
            Include::Partition => "_rw_kafka_partition",
            Include::Offset => "_rw_kafka_offset",
            Include::Timestamp => "_rw_kafka_timestamp",
        }
    }

    /// The column's type.
    pub fn data_type(self) -> DataType {
        match self {
            Include::Key => DataType::Binary,
            Include::Partition => DataType::Int32,
            Include::Offset => DataType::Int64,
            Include::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        }
    }
}

/// The settings of a Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    topic: String,
    servers: String,
    startup: Startup,
    partitions: usize,
    /// The columns records decode into.
    schema: SchemaRef,
    /// `schema` followed by the INCLUDEd columns.
    output: SchemaRef,
    includes: Vec<(Include, String)>,
    encoding: Encoding,
    /// Records skipped as malformed, over all splits.
    pub errors: Arc<SourceErrors>,
}

/// How many partitions `topic` has; an error when Kafka cannot be reached or the topic
/// does not exist.
pub(crate) fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    servers: &str,
    topic: &str,
) -> Result<usize> {
    let metadata = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| {
            ConnectorError::Options(format!(
                "cannot reach Kafka at {servers} for topic {topic}: {e}"
            ))
        })?;
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ConnectorError::Options(format!("topic {topic} does not exist at {servers}"))
        })
}

fn client(servers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "sabot")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "10000")
        .create()
        .map_err(|e| ConnectorError::Options(format!("cannot create a Kafka client: {e}")))
}

impl KafkaConfig {
    /// Checks the options and asks the broker how many partitions the topic has.
    pub fn from_options(options: &Options, schema: SchemaRef, encoding: Encoding) -> Result<Self> {
        encoding.check_records()?;
        if schema.fields().is_empty() {
            return Err(ConnectorError::Schema(
                "a kafka source needs its columns declared".into(),
            ));
        }
        let topic = options
            .get("topic")
            .ok_or_else(|| ConnectorError::Options("a kafka source needs topic = '...'".into()))?
            .to_string();
        let servers = options
            .get("properties.bootstrap.server")
            .ok_or_else(|| {
                ConnectorError::Options(
                    "a kafka source needs properties.bootstrap.server = 'host:port'".into(),
                )
            })?
            .to_string();
        let startup = match options
            .get("scan.startup.mode")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("earliest") => Startup::Earliest,
            Some("latest") => Startup::Latest,
            Some("timestamp") => {
                let ms = options
                    .get("scan.startup.timestamp.millis")
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .filter(|ms| *ms >= 0)
                    .ok_or_else(|| {
                        ConnectorError::Options(
                            "scan.startup.mode = 'timestamp' needs scan.startup.timestamp.millis = '<ms since 1970>'"
                                .into(),
                        )
                    })?;
                Startup::Timestamp(ms)
            }
            Some(other) => {
                return Err(ConnectorError::Options(format!(
                    "scan.startup.mode must be 'earliest', 'latest' or 'timestamp', not '{other}'"
                )))
            }
        };
        let partitions = partition_count(client(&servers)?.client(), &servers, &topic)?;
        Ok(Self {
            topic,
            servers,
            startup,
            partitions,
            output: Arc::clone(&schema),
            schema,
            includes: Vec::new(),
            encoding,
            errors: Arc::new(SourceErrors::new(DEFAULT_KEPT)),
        })
    }

    /// The columns the splits produce: the decoded ones, then the INCLUDEd ones.
    pub fn splits_schema(&self) -> SchemaRef {
        Arc::clone(&self.output)
    }

    /// Adds record metadata columns after the decoded ones (`INCLUDE ... AS name`).
    pub fn with_includes(mut self, includes: Vec<(Include, String)>) -> Result<Self> {
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for (include, name) in &includes {
            if fields.iter().any(|f| f.name() == name) {
                return Err(ConnectorError::Schema(format!(
                    "INCLUDE ... AS {name}: the source already has a column {name}"
                )));
            }
            fields.push(Field::new(name, include.data_type(), true));
        }
        self.output = Arc::new(Schema::new(fields));
        self.includes = includes;
        Ok(self)
    }

    pub fn splits(&self) -> Result<Vec<KafkaSplit>> {
        (0..self.partitions)
            .map(|p| {
                Ok(KafkaSplit {
                    config: self.clone(),
                    partition: p as i32,
                    consumer: None,
                    next: None,
                    caught_up: false,
                    high: None,
                    bytes: 0,
                    retry_at: None,
                })
            })
            .collect()
    }
}

/// One partition.
pub struct KafkaSplit {
    config: KafkaConfig,
    partition: i32,
    /// Connected on first use.
    consumer: Option<BaseConsumer>,
    /// The next offset to read; `None` until the startup mode is resolved.
    next: Option<i64>,
    caught_up: bool,
    /// The partition's high watermark as last asked (the offset the next record
    /// produced will get), and when: asked again every [`HIGH_WATERMARK_EVERY`].
    high: Option<(i64, std::time::Instant)>,
    /// Key and value bytes of the records read since the split was made.
    bytes: u64,
    /// Records could not be decoded (the schema registry was away): not before then.
    retry_at: Option<std::time::Instant>,
}

/// How long a split waits before reading again records it could not decode.
const DECODE_RETRY: Duration = Duration::from_secs(1);

/// How often a split asks the broker for its partition's high watermark (for lag).
const HIGH_WATERMARK_EVERY: Duration = Duration::from_secs(5);

impl KafkaSplit {
    fn connect(&mut self) -> Result<()> {
        if self.consumer.is_none() {
            let consumer = client(&self.config.servers)?;
            let start = match self.next {
                Some(o) => o,
                None => {
                    let (low, high) = consumer
                        .fetch_watermarks(&self.config.topic, self.partition, METADATA_TIMEOUT)
                        .map_err(|e| ConnectorError::Options(format!("Kafka: {e}")))?;
                    match self.config.startup {
                        Startup::Earliest => low,
                        Startup::Latest => high,
                        Startup::Timestamp(ms) => {
                            let mut query = TopicPartitionList::new();
                            query
                                .add_partition_offset(
                                    &self.config.topic,
                                    self.partition,
                                    Offset::Offset(ms),
                                )
                                .map_err(|e| ConnectorError::Options(format!("Kafka: {e}")))?;
                            let found = consumer
                                .offsets_for_times(query, METADATA_TIMEOUT)
                                .map_err(|e| ConnectorError::Options(format!("Kafka: {e}")))?;
                            // No record that late: start at the end.
                            match found.elements().first().map(|e| e.offset()) {
                                Some(Offset::Offset(o)) if o >= 0 => o,
                                _ => high,
                            }
                        }
                    }
                }
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.config.topic, self.partition, Offset::Offset(start))
                .map_err(|e| ConnectorError::Options(format!("Kafka: {e}")))?;
            consumer
                .assign(&tpl)
                .map_err(|e| ConnectorError::Options(format!("Kafka: {e}")))?;
            self.next = Some(start);
            self.consumer = Some(consumer);
        }
        Ok(())
    }
}

impl Split for KafkaSplit {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.config.output)
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>> {
        let schema = Arc::clone(&self.config.output);
        let topic = self.config.topic.clone();
        let partition = self.partition;
        if self
            .retry_at
            .is_some_and(|at| std::time::Instant::now() < at)
        {
            self.caught_up = true;
            return Ok(Some(RecordBatch::new_empty(schema)));
        }
        self.retry_at = None;
        if let Err(e) = self.connect() {
            // The broker may be away: try again next epoch.
            tracing::warn!(topic, partition, error = %e, "kafka source not connected; retrying");
            self.consumer = None;
            self.caught_up = true;
            return Ok(Some(RecordBatch::new_empty(schema)));
        }
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(Some(RecordBatch::new_empty(schema)));
        };
        // Payloads back to back, one per line, and each record's offset and extent.
        let mut buf: Vec<u8> = Vec::new();
        let mut records: Vec<Record> = Vec::new();
        // Raw mode: key ranges and whether the value is NULL (a tombstone); keys and
        // timestamps also when INCLUDEd.
        let mut key_buf: Vec<u8> = Vec::new();
        let mut keys: Vec<Option<(usize, usize)>> = Vec::new();
        let mut null_value: Vec<bool> = Vec::new();
        let mut timestamps: Vec<Option<i64>> = Vec::new();
        let raw = self.config.encoding.is_raw();
        let metadata = raw || !self.config.includes.is_empty();
        let mut next = self.next.unwrap_or(0);
        let mut caught_up = false;
        while records.len() < max {
            let Some(result) = consumer.poll(Duration::ZERO) else {
                caught_up = true;
                break;
            };
            let msg = match result {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic, partition, error = %e, "kafka poll failed; retrying");
                    caught_up = true;
                    break;
                }
            };
            if msg.partition() != partition || msg.offset() < next {
                continue;
            }
            next = msg.offset() + 1;
            self.bytes +=
                (msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)) as u64;
            if metadata {
                keys.push(msg.key().map(|k| {
                    let start = key_buf.len();
                    key_buf.extend_from_slice(k);
                    (start, key_buf.len())
                }));
                null_value.push(msg.payload().is_none());
                timestamps.push(msg.timestamp().to_millis());
            }
            let start = buf.len();
            buf.extend_from_slice(msg.payload().unwrap_or_default());
            records.push(Record {
                offset: u64::try_from(msg.offset()).unwrap_or(0),
                start,
                end: buf.len(),
            });
            buf.push(b'\n');
        }
        self.next = Some(next);
        self.caught_up = caught_up;
        let stale = self
            .high
            .is_none_or(|(_, at)| at.elapsed() >= HIGH_WATERMARK_EVERY);
        if stale {
            match consumer.fetch_watermarks(&topic, partition, Duration::from_secs(2)) {
                Ok((_, high)) => self.high = Some((high, std::time::Instant::now())),
                Err(e) => tracing::debug!(topic, partition, error = %e, "no high watermark"),
            }
        }
        if records.is_empty() {
            return Ok(Some(RecordBatch::new_empty(schema)));
        }
        if raw {
            let values: Vec<Option<(usize, usize)>> = records
                .iter()
                .zip(&null_value)
                .map(|(r, null)| (!null).then_some((r.start, r.end)))
                .collect();
            let offsets = records.iter().map(|r| r.offset).collect();
            return Ok(Some(raw_batch(
                &key_buf, &keys, &buf, &values, offsets, timestamps,
            )?));
        }
        let decoded = decode_records_with_offsets(
            &self.config.encoding,
            &self.config.schema,
            &buf,
            &records,
            &partition.to_string(),
            &self.config.errors,
        );
        let (batch, kept) = match decoded {
            Err(ConnectorError::Unavailable(e)) => {
                // The records cannot be decoded now (the schema registry is away): read
                // them again next epoch.
                tracing::warn!(topic, partition, error = %e, "cannot decode records yet; retrying");
                self.next = i64::try_from(records[0].offset).ok();
                self.consumer = None;
                self.caught_up = true;
                self.retry_at = Some(std::time::Instant::now() + DECODE_RETRY);
                return Ok(Some(RecordBatch::new_empty(schema)));
            }
            other => other?,
        };
        if self.config.includes.is_empty() {
            return Ok(Some(batch));
        }
        // The decoded rows' records: offsets increase, so one walk finds them.
        let mut rows = Vec::with_capacity(kept.len());
        let mut r = 0;
        for offset in &kept {
            while records[r].offset != *offset {
                r += 1;
            }
            rows.push(r);
        }
        let mut columns = batch.columns().to_vec();
        for (include, _) in &self.config.includes {
            columns.push(match include {
                Include::Key => {
                    let ranges: Vec<_> = rows.iter().map(|r| keys[*r]).collect();
                    binary_column(&key_buf, &ranges)
                }
                Include::Partition => Arc::new(Int32Array::from(vec![partition; rows.len()])),
                Include::Offset => Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| records[*r].offset as i64),
                )),
                Include::Timestamp => Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter()
                            .map(|r| timestamps[*r].map(|ms| ms.saturating_mul(1000)))
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("+00:00"),
                ),
            });
        }
        Ok(Some(RecordBatch::try_new(schema, columns)?))
    }

    fn offset(&self) -> u64 {
        self.next.map_or(0, |o| o as u64 + 1)
    }

    fn seek(&mut self, offset: u64) {
        // 0 means "not started": the startup mode decides.
        self.next = offset.checked_sub(1).map(|o| o as i64);
        self.consumer = None;
    }

    fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Where the split would be after reading everything in the partition now (the
    /// high watermark as last asked, in [`Split::offset`]'s terms): the difference is
    /// the consumer lag.
    fn bytes_read(&self) -> Option<u64> {
        Some(self.bytes)
    }

    fn end_offset(&self) -> Option<u64> {
        let (high, _) = self.high?;
        let next = self.next?;
        u64::try_from(high.max(next)).ok().map(|h| h + 1)
    }
}
