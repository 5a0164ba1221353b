//! Sources declared with `CREATE SOURCE`: their columns checked against the connector,
//! and the connector's splits handed to the dataflow.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{Field, Schema, SchemaRef};
use sabot_connectors::avro::registry::{base64, unbase64};
use sabot_connectors::avro::AvroFormat;
use sabot_connectors::datagen::DatagenConfig;
use sabot_connectors::decode::Encoding;
use sabot_connectors::filesystem::FilesystemConfig;
use sabot_connectors::kafka::{Include, KafkaConfig};
use sabot_connectors::nexmark::NexmarkConfig;
use sabot_connectors::protobuf::ProtobufFormat;
use sabot_connectors::source_errors::SourceErrors;
use sabot_connectors::{ConnectorError, Options, Split};
use sabot_dataflow::ops::connector::{SourceFactory, SourceSplit};
use sabot_dataflow::DataflowError;
use sabot_sql::Format;

use crate::error::{PlanError, Result};
use crate::types::SQL_TYPE_KEY;

#[derive(Debug, Clone)]
enum Connector {
    Nexmark(NexmarkConfig),
    Datagen(DatagenConfig),
    Kafka(KafkaConfig),
    Filesystem(FilesystemConfig),
}

/// A declared source: the connector and the columns the user sees.
#[derive(Debug, Clone)]
pub struct SourceDef {
    name: String,
    connector: Connector,
    /// The declared columns (all the connector's when none were declared).
    schema: SchemaRef,
    /// For each declared column, the connector column it reads.
    projection: Vec<usize>,
    /// `ENCODE AVRO` (or `PROTOBUF` with a registry) with no declared columns: the
    /// registry's schema they came from (Avro's JSON text; Protobuf's files as
    /// [`protobuf_record`] writes them).
    avro_schema: Option<String>,
}

/// Where an Avro source without declared columns takes them from.
#[derive(Debug, Clone, Copy)]
pub enum AvroColumns<'a> {
    /// The schema registry's latest schema for the topic's values (`CREATE SOURCE`).
    Registry,
    /// The schema recorded when the source was created (recovery: the columns do not
    /// change, and the registry need not be up).
    Recorded(Option<&'a str>),
}

fn options_error(e: ConnectorError) -> PlanError {
    match e {
        ConnectorError::Schema(m) => PlanError::user("42804", m),
        ConnectorError::Unavailable(m) => PlanError::user("08000", m),
        other => PlanError::user("22023", other.to_string()),
    }
}

impl SourceDef {
    /// Checks the options and the declared columns (`declared` may be empty).
    /// `created_ms` is when the source was created (datagen's timestamps lie before it).
    pub fn try_new(
        name: &str,
        options: &[(String, String)],
        format: Option<&Format>,
        include: &[(String, Option<String>)],
        declared: SchemaRef,
        created_ms: i64,
        avro_columns: AvroColumns<'_>,
    ) -> Result<Self> {
        let options = Options::new(options.iter().cloned());
        let connector = options
            .get("connector")
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| PlanError::user("22023", "a source needs a connector option"))?;
        if let Some(f) = format {
            if f.format != "PLAIN" {
                return Err(PlanError::user(
                    "0A000",
                    format!(
                        "FORMAT {} is not supported for sources yet (FORMAT PLAIN is)",
                        f.format
                    ),
                ));
            }
        }
        let format_options = Options::new(format.map(|f| f.options.clone()).unwrap_or_default());
        let (encoding, header) = Encoding::from_format(
            format.map_or("JSON", |f| f.encode.as_str()),
            &format_options,
        )
        .map_err(|e| match e {
            ConnectorError::Options(m) if m.starts_with("ENCODE") => PlanError::user("0A000", m),
            other => options_error(other),
        })?;
        format_options.check_all_used().map_err(options_error)?;
        let generated = |what: &str| -> Result<()> {
            if !encoding.is_json() || header {
                return Err(PlanError::user(
                    "22023",
                    format!("the {what} connector generates rows itself: only FORMAT PLAIN ENCODE JSON (or none) applies"),
                ));
            }
            Ok(())
        };
        let mut avro_schema = None;
        let mut declared = declared;
        if let (Encoding::Avro(avro), "kafka") = (&encoding, connector.as_str()) {
            let topic = options.get("topic").unwrap_or_default();
            (declared, avro_schema) = avro_source_columns(avro, topic, declared, avro_columns)?;
        }
        if let (Encoding::Protobuf(proto), "kafka") = (&encoding, connector.as_str()) {
            if proto.is_registry() {
                let topic = options.get("topic").unwrap_or_default();
                (declared, avro_schema) =
                    protobuf_source_columns(proto, topic, declared, avro_columns)?;
            } else if declared.fields().is_empty() {
                declared = Arc::new(Schema::new(tag_json(
                    proto.columns(&[]).map_err(options_error)?,
                )));
            } else {
                proto.check(&declared, &[]).map_err(options_error)?;
            }
        }
        let (connector, produced) = match connector.as_str() {
            "nexmark" => {
                generated("nexmark")?;
                let c = NexmarkConfig::from_options(&options).map_err(options_error)?;
                let schema = c.kind.schema();
                (Connector::Nexmark(c), schema)
            }
            "datagen" => {
                generated("datagen")?;
                let c = DatagenConfig::from_options(&options, Arc::clone(&declared), created_ms)
                    .map_err(options_error)?;
                (Connector::Datagen(c), Arc::clone(&declared))
            }
            "kafka" => {
                if header {
                    return Err(PlanError::user(
                        "22023",
                        "Kafka records have no header line: use ENCODE CSV (without_header = 'true')",
                    ));
                }
                let mut includes = Vec::new();
                for (kind, name) in include {
                    let i = Include::parse(kind).ok_or_else(|| {
                        PlanError::user("42601", format!("unknown INCLUDE {kind}"))
                    })?;
                    includes.push((i, name.clone().unwrap_or_else(|| i.default_name().into())));
                }
                let c = KafkaConfig::from_options(&options, Arc::clone(&declared), encoding)
                    .and_then(|c| c.with_includes(includes))
                    .map_err(options_error)?;
                let output = c.splits_schema();
                (Connector::Kafka(c), output)
            }
            "filesystem" | "posix_fs" | "s3" => {
                let columns = Arc::clone(&declared);
                let c = if connector == "s3" {
                    FilesystemConfig::from_s3_options(&options, columns, encoding, header)
                } else {
                    FilesystemConfig::from_options(&options, columns, encoding, header)
                }
                .map_err(|e| match e {
                    ConnectorError::Options(m) if m.starts_with("ENCODE") => {
                        PlanError::user("0A000", m)
                    }
                    other => options_error(other),
                })?;
                (Connector::Filesystem(c), Arc::clone(&declared))
            }
            other => {
                return Err(PlanError::user(
                    "22023",
                    format!(
                        "unknown connector '{other}' (nexmark, datagen, kafka, filesystem and s3 are supported)"
                    ),
                ))
            }
        };
        options.check_all_used().map_err(options_error)?;
        if !include.is_empty() && !matches!(connector, Connector::Kafka(_)) {
            return Err(PlanError::user(
                "0A000",
                "INCLUDE applies to kafka sources only",
            ));
        }
        // Declared columns, then the INCLUDEd ones (the kafka connector adds them last).
        let declared = if include.is_empty() || declared.fields().is_empty() {
            declared
        } else {
            let n = declared.fields().len();
            Arc::new(Schema::new(
                declared
                    .fields()
                    .iter()
                    .cloned()
                    .chain(produced.fields().iter().skip(n).cloned())
                    .collect::<Vec<_>>(),
            ))
        };
        let (schema, projection) = if declared.fields().is_empty() {
            let all = (0..produced.fields().len()).collect();
            (produced, all)
        } else {
            let mut projection = Vec::new();
            for f in declared.fields() {
                let i = produced.index_of(f.name()).map_err(|_| {
                    PlanError::user(
                        "42703",
                        format!(
                            "the {} source has no column \"{}\" (it has {})",
                            connector_name(&connector),
                            f.name(),
                            produced
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                let from = produced.field(i).data_type();
                if !arrow::compute::can_cast_types(from, f.data_type()) {
                    return Err(PlanError::user(
                        "42804",
                        format!(
                            "column \"{}\" is declared as {} but the source produces {from}",
                            f.name(),
                            f.data_type()
                        ),
                    ));
                }
                projection.push(i);
            }
            (declared, projection)
        };
        Ok(Self {
            name: name.to_string(),
            connector,
            schema,
            projection,
            avro_schema,
        })
    }

    /// The Avro schema an undeclared source's columns came from, to be recorded.
    pub fn avro_schema(&self) -> Option<&str> {
        self.avro_schema.as_deref()
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    pub fn connector_name(&self) -> &'static str {
        connector_name(&self.connector)
    }

    /// The log of records skipped as malformed (connectors that decode input).
    pub fn errors(&self) -> Option<Arc<SourceErrors>> {
        match &self.connector {
            Connector::Kafka(c) => Some(Arc::clone(&c.errors)),
            Connector::Filesystem(c) => Some(Arc::clone(&c.errors)),
            Connector::Nexmark(_) | Connector::Datagen(_) => None,
        }
    }
}

fn connector_name(c: &Connector) -> &'static str {
    match c {
        Connector::Nexmark(_) => "nexmark",
        Connector::Datagen(_) => "datagen",
        Connector::Kafka(_) => "kafka",
        Connector::Filesystem(_) => "filesystem",
    }
}

impl SourceFactory for SourceDef {
    fn splits(&self) -> sabot_dataflow::Result<Vec<Box<dyn SourceSplit>>> {
        let splits: Vec<Box<dyn Split>> = match &self.connector {
            Connector::Nexmark(c) => c
                .splits()
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Split>)
                .collect(),
            Connector::Datagen(c) => c
                .splits()
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Split>)
                .collect(),
            Connector::Kafka(c) => c
                .splits()
                .map_err(|e| DataflowError::user("08000", e.to_string()))?
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Split>)
                .collect(),
            Connector::Filesystem(c) => c
                .splits()
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Split>)
                .collect(),
        };
        Ok(splits
            .into_iter()
            .map(|split| {
                Box::new(Projected {
                    split,
                    schema: Arc::clone(&self.schema),
                    projection: self.projection.clone(),
                }) as Box<dyn SourceSplit>
            })
            .collect())
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn describe(&self) -> String {
        format!("{} connector", self.connector_name())
    }
}

/// A connector split seen through the declared columns.
struct Projected {
    split: Box<dyn Split>,
    schema: SchemaRef,
    projection: Vec<usize>,
}

impl SourceSplit for Projected {
    fn next_batch(&mut self, max: usize) -> sabot_dataflow::Result<Option<RecordBatch>> {
        let Some(b) = self
            .split
            .next_batch(max)
            .map_err(|e| DataflowError::user("22000", e.to_string()))?
        else {
            return Ok(None);
        };
        let columns = self
            .projection
            .iter()
            .zip(self.schema.fields())
            .map(|(i, f)| {
                let c = b.column(*i);
                Ok(if c.data_type() == f.data_type() {
                    Arc::clone(c)
                } else {
                    cast(c, f.data_type())?
                })
            })
            .collect::<sabot_dataflow::Result<Vec<ArrayRef>>>()?;
        Ok(Some(RecordBatch::try_new_with_options(
            Arc::new(Schema::new(self.schema.fields().clone())),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
        )?))
    }

    fn offset(&self) -> u64 {
        self.split.offset()
    }

    fn seek(&mut self, offset: u64) {
        self.split.seek(offset)
    }

    fn end_offset(&self) -> Option<u64> {
        self.split.end_offset()
    }

    fn bytes_read(&self) -> Option<u64> {
        self.split.bytes_read()
    }

    fn rate(&self) -> Option<f64> {
        self.split.rate()
    }

    fn caught_up(&self) -> bool {
        self.split.caught_up()
    }
}

impl SourceDef {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The columns of a Kafka source with `ENCODE AVRO`, and the schema they were derived
/// from (when none were declared). Declared columns are checked against the subject's
/// latest schema at `CREATE SOURCE`, when it has one.
fn avro_source_columns(
    avro: &AvroFormat,
    topic: &str,
    declared: SchemaRef,
    at: AvroColumns<'_>,
) -> Result<(SchemaRef, Option<String>)> {
    let subject = format!("{topic}-value");
    let text = match at {
        AvroColumns::Recorded(text) => text.map(str::to_string),
        AvroColumns::Registry => avro.latest(&subject).map_err(options_error)?,
    };
    let Some(text) = text else {
        if declared.fields().is_empty() {
            return Err(PlanError::user(
                "42804",
                format!("the schema registry has no subject {subject} to take the columns from: declare them"),
            ));
        }
        // Declared before anything was registered: checked as records come.
        return Ok((declared, None));
    };
    if !declared.fields().is_empty() {
        if matches!(at, AvroColumns::Registry) {
            AvroFormat::check(&text, &declared)
                .map_err(|e| PlanError::user("42804", format!("subject {subject}: {e}")))?;
        }
        return Ok((declared, None));
    }
    let fields = tag_json(
        AvroFormat::columns(&text)
            .map_err(|e| PlanError::user("42804", format!("subject {subject}: {e}")))?,
    );
    if fields.is_empty() {
        return Err(PlanError::user(
            "42804",
            format!("subject {subject}: the Avro schema has no fields to read"),
        ));
    }
    Ok((Arc::new(Schema::new(fields)), Some(text)))
}

/// How a Protobuf schema from a registry is recorded in the catalog (in the place of an
/// Avro schema's text): `{"protobuf": [base64 FileDescriptorProto, ...]}`, its own file
/// first.
fn protobuf_record(files: &[Vec<u8>]) -> String {
    let files: Vec<String> = files.iter().map(|f| base64(f)).collect();
    serde_json::json!({ "protobuf": files }).to_string()
}

fn protobuf_recorded(text: &str) -> Option<Vec<Vec<u8>>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("protobuf")?
        .as_array()?
        .iter()
        .map(|f| unbase64(f.as_str()?))
        .collect()
}

/// The columns of a Kafka source with `ENCODE PROTOBUF (schema.registry = ...)`, and the
/// recorded schema they were derived from (when none were declared), as for Avro.
fn protobuf_source_columns(
    proto: &ProtobufFormat,
    topic: &str,
    declared: SchemaRef,
    at: AvroColumns<'_>,
) -> Result<(SchemaRef, Option<String>)> {
    let subject = format!("{topic}-value");
    let files = match at {
        AvroColumns::Recorded(text) => text.and_then(protobuf_recorded),
        AvroColumns::Registry => proto.latest(&subject).map_err(options_error)?,
    };
    let Some(files) = files else {
        if declared.fields().is_empty() {
            return Err(PlanError::user(
                "42804",
                format!("the schema registry has no subject {subject} to take the columns from: declare them"),
            ));
        }
        return Ok((declared, None));
    };
    let in_subject =
        |e: ConnectorError| PlanError::user("42804", format!("subject {subject}: {e}"));
    if !declared.fields().is_empty() {
        if matches!(at, AvroColumns::Registry) {
            proto.check(&declared, &files).map_err(in_subject)?;
        }
        return Ok((declared, None));
    }
    let fields = tag_json(proto.columns(&files).map_err(in_subject)?);
    if fields.is_empty() {
        return Err(PlanError::user(
            "42804",
            format!("subject {subject}: the message has no fields to read"),
        ));
    }
    Ok((Arc::new(Schema::new(fields)), Some(protobuf_record(&files))))
}

/// Derived columns, those holding JSON text typed `jsonb` for clients.
fn tag_json(columns: Vec<(Field, bool)>) -> Vec<Field> {
    columns
        .into_iter()
        .map(|(f, json)| {
            if json {
                f.with_metadata(HashMap::from([(
                    SQL_TYPE_KEY.to_string(),
                    "jsonb".to_string(),
                )]))
            } else {
                f
            }
        })
        .collect()
}
