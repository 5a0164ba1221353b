//! Sinks declared with `CREATE SINK`: options and format checked, the writer built.

use arrow::datatypes::SchemaRef;
use sabot_connectors::sink::blackhole::BlackholeSink;
use sabot_connectors::sink::filesystem::{FileEncode, FilesystemSink};
use sabot_connectors::sink::kafka::{KafkaEncode, KafkaSink};
use sabot_connectors::sink::{SinkFormat, SinkWriter};
use sabot_connectors::{ConnectorError, Options};
use sabot_sql::{CreateSink, SinkFrom};

use crate::error::{PlanError, Result};

/// A sink's writer and what it writes.
pub struct SinkSpec {
    pub format: SinkFormat,
    pub writer: Box<dyn SinkWriter>,
    /// Where it writes, for `SHOW SINKS` and to keep two sinks off one target
    /// (e.g. `filesystem:/data/out`).
    pub target: String,
}

/// `primary_key = 'a, b'`: the key columns of an upsert sink, by position.
fn upsert_key(options: &Options, columns: &SchemaRef) -> Result<Vec<usize>> {
    let Some(list) = options.get("primary_key") else {
        return Err(PlanError::user(
            "42P16",
            "FORMAT UPSERT needs primary_key = 'column, ...': the columns that identify a row",
        ));
    };
    list.split(',')
        .map(|c| {
            let c = c.trim().to_lowercase();
            columns.index_of(&c).map_err(|_| {
                PlanError::user(
                    "42703",
                    format!("primary_key column \"{c}\" is not in the relation"),
                )
            })
        })
        .collect()
}

fn options_error(e: ConnectorError) -> PlanError {
    PlanError::user("22023", e.to_string())
}

/// Checks `cs`'s options and format and builds its writer. `append_only` tells whether
/// the relation it reads never retracts rows (what `FORMAT PLAIN` needs).
pub fn sink_spec(cs: &CreateSink, append_only: bool, columns: &SchemaRef) -> Result<SinkSpec> {
    let blackhole = cs
        .options
        .iter()
        .any(|(k, v)| k == "connector" && v.eq_ignore_ascii_case("blackhole"));
    if blackhole {
        // It writes nothing, so it takes any changes and needs no format.
        let options = Options::new(cs.options.clone());
        let _ = options.get("connector");
        options.check_all_used().map_err(options_error)?;
        return Ok(SinkSpec {
            format: SinkFormat::Debezium,
            writer: Box::new(BlackholeSink::new()),
            target: format!("blackhole:{}", cs.name),
        });
    }
    let Some(f) = &cs.format else {
        return Err(PlanError::user(
            "42601",
            "CREATE SINK needs FORMAT PLAIN ENCODE JSON (append-only views) or FORMAT DEBEZIUM ENCODE JSON",
        ));
    };
    let avro = match f.encode.as_str() {
        "JSON" => false,
        "AVRO" => true,
        other => {
            return Err(PlanError::user(
                "0A000",
                format!("ENCODE {other} is not supported for sinks yet (JSON and AVRO are)"),
            ))
        }
    };
    let mut options: Vec<(String, String)> = cs.options.clone();
    options.extend(f.options.iter().cloned());
    let options = Options::new(options);
    let force_append_only = match options.get("force_append_only") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(PlanError::user(
                "22023",
                format!("force_append_only must be 'true' or 'false', not '{v}'"),
            ))
        }
    };
    let format = match f.format.as_str() {
        "PLAIN" => {
            if !append_only && !force_append_only {
                return Err(PlanError::user(
                    "42P17",
                    format!(
                        "{} can delete or update rows, which FORMAT PLAIN cannot express; \
                         use FORMAT DEBEZIUM, or force_append_only = 'true' to drop deletes",
                        match &cs.from {
                            SinkFrom::Relation(r) => format!("\"{r}\""),
                            SinkFrom::Query { .. } => "the sink's query".to_string(),
                        }
                    ),
                ));
            }
            SinkFormat::Plain { force_append_only }
        }
        "DEBEZIUM" => SinkFormat::Debezium,
        "UPSERT" => SinkFormat::Upsert,
        other => {
            return Err(PlanError::user(
                "22023",
                format!("unknown sink format {other} (PLAIN, DEBEZIUM, UPSERT)"),
            ))
        }
    };
    let connector = options
        .get("connector")
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| PlanError::user("22023", "a sink needs a connector option"))?;
    let (writer, target): (Box<dyn SinkWriter>, String) = match connector.as_str() {
        "filesystem" | "fs" if format == SinkFormat::Upsert => {
            return Err(PlanError::user(
                "0A000",
                "FORMAT UPSERT needs keyed records: the kafka sink has them, files do not",
            ))
        }
        "filesystem" | "fs" => {
            let name = cs.name.to_string();
            let encode = if avro {
                FileEncode::Avro {
                    name: &name,
                    columns,
                }
            } else {
                FileEncode::Json
            };
            let sink = FilesystemSink::try_new(&options, format, encode).map_err(|e| match e {
                ConnectorError::Schema(m) => PlanError::user("42804", m),
                other => options_error(other),
            })?;
            let target = format!("filesystem:{}", sink.dir().display());
            (Box::new(sink), target)
        }
        "kafka" => {
            let key = if format == SinkFormat::Upsert {
                upsert_key(&options, columns)?
            } else {
                Vec::new()
            };
            let name = cs.name.to_string();
            let encode = if avro {
                KafkaEncode::Avro {
                    name: &name,
                    columns,
                }
            } else {
                KafkaEncode::Json
            };
            let sink = KafkaSink::try_new(&options, format, key, encode).map_err(|e| match e {
                ConnectorError::Unavailable(m) => PlanError::user("08000", m),
                ConnectorError::Schema(m) => PlanError::user("42804", m),
                other => options_error(other),
            })?;
            let target = sink.target();
            (Box::new(sink), target)
        }
        other => {
            return Err(PlanError::user(
                "22023",
                format!("unknown sink connector '{other}' (filesystem, kafka, blackhole)"),
            ))
        }
    };
    options.check_all_used().map_err(options_error)?;
    Ok(SinkSpec {
        format,
        writer,
        target,
    })
}
