//! The `kafka` sink: each change is one record (JSON, or Avro through a schema
//! registry), written exactly once across crashes.
//!
//! ```sql
//! CREATE SINK s FROM mv WITH (
//!   connector = 'kafka', topic = 'out', properties.bootstrap.server = '127.0.0.1:9092')
//! FORMAT DEBEZIUM ENCODE JSON;
//! ```
//!
//! How: `prepare` encodes the epoch's records and returns them as an outbox entry, which
//! the engine commits with the epoch. After the commit the records are produced with an
//! idempotent producer (no duplicates or reordering within a partition from retries),
//! each carrying the headers `sabot.epoch` and `sabot.seq`; the outbox entry is deleted
//! once every record is acknowledged. A record goes to the partition chosen by a hash of
//! its row, so a row's insert and delete stay in order.
//!
//! After a crash, or after a delivery that failed, the sink reads the last records of
//! each partition: records of an epoch are produced in `seq` order and epochs in order,
//! so everything up to the largest `(epoch, seq)` there is already in that partition, and
//! only the rest of the outbox is produced again. This relies on Sabot being the only
//! writer of the topic (two sinks may not share a topic). Records of one epoch become
//! visible one by one, not atomically (no Kafka transactions).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use arrow::row::{RowConverter, SortField};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{encode_json, in_write_order, records, SinkFormat, SinkWriter};
use crate::avro::AvroSink;
use crate::error::{ConnectorError, Result};
use crate::kafka::{partition_count, METADATA_TIMEOUT};
use crate::options::Options;

/// How long one delivery may wait for acknowledgements before it counts as failed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// While reading a topic's tail after a crash, this long without a record ends it.
const RESYNC_QUIET: Duration = Duration::from_millis(500);

/// Counts records the producer gave up on.
struct Context {
    failed: Arc<AtomicU64>,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, "kafka sink: a record was not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq)]
struct OutRecord {
    /// Its place in the epoch's records.
    seq: u32,
    partition: i32,
    key: Option<Vec<u8>>,
    /// `None`: a tombstone (FORMAT UPSERT's delete).
    payload: Option<Vec<u8>>,
}

/// One epoch's records, seq increasing.
struct Outgoing {
    epoch: u64,
    records: Vec<OutRecord>,
}

/// How a Kafka sink encodes its records.
#[derive(Debug, Clone, Copy)]
pub enum KafkaEncode<'a> {
    Json,
    /// Avro through the schema registry of `options` (see [`AvroSink`]): sink `name`'s
    /// rows of `columns`.
    Avro {
        name: &'a str,
        columns: &'a arrow::datatypes::SchemaRef,
    },
}

pub struct KafkaSink {
    topic: String,
    servers: String,
    format: SinkFormat,
    /// `None`: JSON.
    avro: Option<AvroSink>,
    upsert_key: Vec<usize>,
    partitions: i32,
    producer: BaseProducer<Context>,
    failed: Arc<AtomicU64>,
    /// Committed or recovered epochs not yet acknowledged, oldest first.
    outgoing: Vec<Outgoing>,
    /// Prepared, not yet committed.
    prepared: Option<Outgoing>,
    delivered: Vec<u64>,
    /// The topic must be read before producing again (after a crash or a failure).
    resync: bool,
    next_attempt: Instant,
    backoff: Duration,
    /// Whether `SABOT_FAILPOINTS` is set, and records sent while it is (for tests).
    failpoint_armed: bool,
    sent: u64,
}

fn kafka_error(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Write(format!("kafka sink: {what}: {e}"))
}

impl KafkaSink {
    /// Checks the options and asks the broker how many partitions the topic has.
    /// `upsert_key`: for FORMAT UPSERT, the key columns of the rows written.
    pub fn try_new(
        options: &Options,
        format: SinkFormat,
        upsert_key: Vec<usize>,
        encode: KafkaEncode<'_>,
    ) -> Result<Self> {
        let topic = options
            .get("topic")
            .ok_or_else(|| ConnectorError::Options("a kafka sink needs topic = '...'".into()))?
            .to_string();
        let servers = options
            .get("properties.bootstrap.server")
            .ok_or_else(|| {
                ConnectorError::Options(
                    "a kafka sink needs properties.bootstrap.server = 'host:port'".into(),
                )
            })?
            .to_string();
        let failed = Arc::new(AtomicU64::new(0));
        let producer: BaseProducer<Context> = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5")
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "10000")
            .create_with_context(Context {
                failed: Arc::clone(&failed),
            })
            .map_err(|e| ConnectorError::Options(format!("cannot create a Kafka producer: {e}")))?;
        let partitions = partition_count(producer.client(), &servers, &topic)?;
        let avro = match encode {
            KafkaEncode::Json => None,
            KafkaEncode::Avro { name, columns } => Some(AvroSink::try_new(
                options,
                name,
                &topic,
                format,
                columns,
                &upsert_key,
            )?),
        };
        Ok(Self {
            topic,
            servers,
            format,
            avro,
            upsert_key,
            partitions: i32::try_from(partitions).unwrap_or(i32::MAX),
            producer,
            failed,
            outgoing: Vec::new(),
            prepared: None,
            delivered: Vec::new(),
            resync: false,
            next_attempt: Instant::now(),
            backoff: Duration::from_millis(100),
            failpoint_armed: std::env::var_os("SABOT_FAILPOINTS").is_some(),
            sent: 0,
        })
    }

    /// `servers/topic`, to keep two sinks off one topic.
    pub fn target(&self) -> String {
        format!("kafka:{}/{}", self.servers, self.topic)
    }

    /// The largest `(epoch, seq)` among the last records of each partition (`None`:
    /// none of Sabot's). Reads from just before the high watermark to the end: a broker's
    /// reported watermark may trail what it holds (tansu's does, briefly), so the read
    /// goes on until no record has come for a while rather than stopping at it.
    fn last_written(&self) -> Result<Vec<Option<(u64, u32)>>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("group.id", "sabot-sink")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| kafka_error("cannot create a consumer", e))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, p, METADATA_TIMEOUT)
                .map_err(|e| kafka_error("cannot read the topic's offsets", e))?;
            tpl.add_partition_offset(&self.topic, p, Offset::Offset((high - 1).max(low)))
                .map_err(|e| kafka_error("cannot seek", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error("cannot seek", e))?;
        let mut out: Vec<Option<(u64, u32)>> = vec![None; self.partitions as usize];
        let give_up = Instant::now() + METADATA_TIMEOUT;
        // Quiet this long after the last record (longer before the first) means the end.
        let mut quiet_until = Instant::now() + RESYNC_QUIET * 3;
        while Instant::now() < quiet_until && Instant::now() < give_up {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    quiet_until = Instant::now() + RESYNC_QUIET;
                    let Some(slot) = out.get_mut(m.partition() as usize) else {
                        continue;
                    };
                    let mut epoch = None;
                    let mut seq = None;
                    for Header { key, value } in m.headers().iter().flat_map(|h| h.iter()) {
                        let v = value.and_then(|v| std::str::from_utf8(v).ok());
                        match key {
                            "sabot.epoch" => epoch = v.and_then(|v| v.parse().ok()),
                            "sabot.seq" => seq = v.and_then(|v| v.parse().ok()),
                            _ => {}
                        }
                    }
                    if let Some(es) = epoch.zip(seq) {
                        *slot = (*slot).max(Some(es));
                    }
                }
                Some(Err(e)) => return Err(kafka_error("cannot read the topic", e)),
                None => {}
            }
        }
        Ok(out)
    }

    /// Drops from `outgoing` what the topic already holds.
    fn skip_written(&mut self) -> Result<()> {
        let last = self.last_written()?;
        for out in &mut self.outgoing {
            let epoch = out.epoch;
            out.records.retain(|r| {
                !matches!(last.get(r.partition as usize), Some(Some(l)) if (epoch, r.seq) <= *l)
            });
        }
        Ok(())
    }

    /// Produces everything outgoing and waits for the acknowledgements.
    fn deliver(&mut self) -> Result<()> {
        if self.resync {
            self.skip_written()?;
            self.resync = false;
        }
        let failed_before = self.failed.load(Ordering::Relaxed);
        for out in &self.outgoing {
            let epoch = out.epoch.to_string();
            for r in &out.records {
                let seq = r.seq.to_string();
                let headers = OwnedHeaders::new_with_capacity(2)
                    .insert(Header {
                        key: "sabot.epoch",
                        value: Some(epoch.as_str()),
                    })
                    .insert(Header {
                        key: "sabot.seq",
                        value: Some(seq.as_str()),
                    });
                let mut record: BaseRecord<'_, Vec<u8>, Vec<u8>> = BaseRecord::to(&self.topic)
                    .partition(r.partition)
                    .headers(headers);
                if let Some(k) = &r.key {
                    record = record.key(k);
                }
                if let Some(p) = &r.payload {
                    record = record.payload(p);
                }
                if self.failpoint_armed {
                    // A crash with part of an epoch acknowledged and the rest not sent.
                    self.sent += 1;
                    if self.sent.is_multiple_of(500) {
                        let _ = self.producer.flush(FLUSH_TIMEOUT);
                        crate::failpoint::crash_point("kafka-sink-partial-delivery");
                    }
                }
                loop {
                    match self.producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            self.producer.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => return Err(kafka_error("cannot produce", e)),
                    }
                }
            }
        }
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(|e| kafka_error("records not acknowledged", e))?;
        if self.failed.load(Ordering::Relaxed) != failed_before {
            return Err(kafka_error("records not delivered", "see the log"));
        }
        self.delivered
            .extend(self.outgoing.drain(..).map(|o| o.epoch));
        Ok(())
    }

    /// Delivers now unless a recent failure asks to wait.
    fn try_deliver(&mut self) {
        if self.outgoing.is_empty() || Instant::now() < self.next_attempt {
            return;
        }
        match self.deliver() {
            Ok(()) => self.backoff = Duration::from_millis(100),
            Err(e) => {
                // What was queued may or may not have landed: drop it and read the topic
                // before the next try.
                self.producer
                    .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                self.producer.poll(Duration::ZERO);
                self.resync = true;
                tracing::warn!(error = %e, retry_in = ?self.backoff, "kafka sink: delivery failed");
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// FNV-1a: a hash that is the same in every process, so a row's partition is too.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The outbox entry: for each record its partition, then key and payload, each as a
/// length (`u32::MAX`: none) and bytes.
fn encode_outbox(records: &[OutRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&r.partition.to_le_bytes());
        for part in [&r.key, &r.payload] {
            match part {
                Some(b) => {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            }
        }
    }
    out
}

fn decode_outbox(mut bytes: &[u8]) -> Result<Vec<OutRecord>> {
    let bad = || ConnectorError::Write("kafka sink: a damaged outbox entry".into());
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (p, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
        bytes = rest;
        let mut parts = [None, None];
        for part in &mut parts {
            let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
            let len = u32::from_le_bytes(*len);
            bytes = rest;
            if len != u32::MAX {
                let len = len as usize;
                if bytes.len() < len {
                    return Err(bad());
                }
                *part = Some(bytes[..len].to_vec());
                bytes = &bytes[len..];
            }
        }
        let [key, payload] = parts;
        out.push(OutRecord {
            seq: out.len() as u32,
            partition: i32::from_le_bytes(*p),
            key,
            payload,
        });
    }
    Ok(out)
}

/// A row's partition: a hash of its bytes (the same in every process).
fn partition_of(bytes: &[u8], partitions: i32) -> i32 {
    (fnv1a(bytes) % partitions.max(1) as u64) as i32
}

impl KafkaSink {
    /// The records of FORMAT PLAIN / DEBEZIUM changes, each with the row it came from.
    fn payloads(
        &self,
        batch: &RecordBatch,
        weights: &Int64Array,
    ) -> Result<(Vec<Vec<u8>>, Vec<u32>)> {
        let Some(avro) = &self.avro else {
            let encoded = encode_json(self.format, batch, weights)?;
            let lines = encoded.lines().map(<[u8]>::to_vec).collect();
            return Ok((lines, encoded.rows));
        };
        let Some((records, rows)) = records(self.format, batch, weights)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        Ok((avro.value.encode(&records)?, rows))
    }

    /// FORMAT PLAIN / DEBEZIUM: one record per change, no key, partitioned by the row.
    fn line_records(&self, changes: &[(RecordBatch, Int64Array)]) -> Result<Vec<OutRecord>> {
        let mut records = Vec::new();
        for (batch, weights) in in_write_order(self.format, changes).iter() {
            let (payloads, rows) = self.payloads(batch, weights)?;
            if rows.is_empty() {
                continue;
            }
            let row_bytes = row_bytes(batch, batch.columns())?;
            for (payload, row) in payloads.into_iter().zip(&rows) {
                records.push(OutRecord {
                    seq: records.len() as u32,
                    partition: partition_of(row_bytes.row(*row as usize).as_ref(), self.partitions),
                    key: None,
                    payload: Some(payload),
                });
            }
        }
        Ok(records)
    }

    /// Each row of `batch` as a record value, or (`key`) as a record key.
    fn rows(&self, batch: &RecordBatch, key: bool) -> Result<Vec<Vec<u8>>> {
        let encoder = self
            .avro
            .as_ref()
            .map(|a| if key { a.key.as_ref() } else { Some(&a.value) });
        match encoder {
            None => json_lines(batch),
            Some(Some(e)) => e.encode(batch),
            Some(None) => Err(ConnectorError::Write(
                "kafka sink: no Avro key schema (FORMAT UPSERT registers one)".into(),
            )),
        }
    }
}

/// FORMAT UPSERT: per key (the `key` columns, encoded by `encode(keys, true)`), the
/// epoch's last inserted row (`encode(rows, false)`), or a tombstone when the key was
/// only deleted.
fn upsert_records(
    changes: &[(RecordBatch, Int64Array)],
    key: &[usize],
    partitions: i32,
    encode: impl Fn(&RecordBatch, bool) -> Result<Vec<Vec<u8>>>,
) -> Result<Vec<OutRecord>> {
    // key JSON → (first seen, row JSON or None for a delete)
    let mut by_key: HashMap<Vec<u8>, (usize, Option<Vec<u8>>)> = HashMap::new();
    for (batch, weights) in changes {
        if batch.num_rows() == 0 {
            continue;
        }
        let keys = batch.project(key)?;
        let key_lines = encode(&keys, true)?;
        let value_lines = encode(batch, false)?;
        for ((k, v), w) in key_lines.iter().zip(&value_lines).zip(weights.values()) {
            let order = by_key.len();
            let entry = by_key.entry(k.to_vec()).or_insert((order, None));
            if *w > 0 {
                entry.1 = Some(v.to_vec());
            }
        }
    }
    let mut records: Vec<(usize, Vec<u8>, Option<Vec<u8>>)> = by_key
        .into_iter()
        .map(|(k, (order, v))| (order, k, v))
        .collect();
    records.sort_by_key(|r| r.0);
    Ok(records
        .into_iter()
        .enumerate()
        .map(|(seq, (_, key, payload))| OutRecord {
            seq: seq as u32,
            partition: partition_of(&key, partitions),
            key: Some(key),
            payload,
        })
        .collect())
}

/// Each row of `batch` as a JSON object, NULLs written out.
fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let encoded = encode_json(
        SinkFormat::Plain {
            force_append_only: true,
        },
        batch,
        &Int64Array::from(vec![1; batch.num_rows()]),
    )?;
    Ok(encoded.lines().map(<[u8]>::to_vec).collect())
}

fn row_bytes(batch: &RecordBatch, columns: &[arrow::array::ArrayRef]) -> Result<arrow::row::Rows> {
    let fields = batch
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    Ok(RowConverter::new(fields)?.convert_columns(columns)?)
}

impl SinkWriter for KafkaSink {
    fn prepare(
        &mut self,
        epoch: u64,
        changes: &[(RecordBatch, Int64Array)],
    ) -> Result<Option<Vec<u8>>> {
        let records = if self.format == SinkFormat::Upsert {
            upsert_records(changes, &self.upsert_key, self.partitions, |b, key| {
                self.rows(b, key)
            })?
        } else {
            self.line_records(changes)?
        };
        if records.is_empty() {
            return Ok(None);
        }
        let entry = encode_outbox(&records);
        self.prepared = Some(Outgoing { epoch, records });
        Ok(Some(entry))
    }

    fn commit(&mut self, epoch: u64) -> Result<()> {
        if let Some(p) = self.prepared.take() {
            if p.epoch == epoch {
                self.outgoing.push(p);
            }
        }
        self.try_deliver();
        Ok(())
    }

    fn recover(&mut self, committed: u64, outbox: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.prepared = None;
        self.outgoing.clear();
        let mut outbox = outbox;
        outbox.sort_by_key(|(e, _)| *e);
        for (epoch, bytes) in outbox {
            if epoch <= committed {
                self.outgoing.push(Outgoing {
                    epoch,
                    records: decode_outbox(&bytes)?,
                });
            }
        }
        // A new sink (committed 0) has written nothing yet, so there is nothing to skip.
        self.resync = committed > 0;
        self.try_deliver();
        Ok(())
    }

    fn delivered(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.delivered)
    }

    fn undelivered(&self) -> bool {
        !self.outgoing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_round_trip() {
        let records = vec![
            OutRecord {
                seq: 0,
                partition: 1,
                key: None,
                payload: Some(b"{\"a\":1}".to_vec()),
            },
            OutRecord {
                seq: 1,
                partition: 0,
                key: Some(b"k".to_vec()),
                payload: None,
            },
            OutRecord {
                seq: 2,
                partition: 0,
                key: Some(Vec::new()),
                payload: Some(Vec::new()),
            },
        ];
        assert_eq!(decode_outbox(&encode_outbox(&records)).unwrap(), records);
        assert!(decode_outbox(&[1, 0, 0, 0, 9, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn upserts_keep_the_last_row_per_key_and_tombstone_deleted_keys() {
        use arrow::array::{ArrayRef, Int32Array, StringArray};
        let batch = RecordBatch::try_from_iter(vec![
            (
                "k",
                Arc::new(Int32Array::from(vec![1, 1, 2, 3])) as ArrayRef,
            ),
            (
                "v",
                Arc::new(StringArray::from(vec!["old", "new", "gone", "x"])) as ArrayRef,
            ),
        ])
        .unwrap();
        // Key 1 updated (old row out, new row in), key 2 deleted, key 3 inserted.
        let weights = Int64Array::from(vec![-1, 1, -1, 1]);
        let records = upsert_records(&[(batch, weights)], &[0], 3, |b, _| json_lines(b)).unwrap();
        let got: Vec<(String, Option<String>)> = records
            .iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.clone().unwrap()).unwrap(),
                    r.payload.clone().map(|p| String::from_utf8(p).unwrap()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("{\"k\":1}".into(), Some("{\"k\":1,\"v\":\"new\"}".into())),
                ("{\"k\":2}".into(), None),
                ("{\"k\":3}".into(), Some("{\"k\":3,\"v\":\"x\"}".into())),
            ]
        );
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
