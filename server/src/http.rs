//! A minimal HTTP endpoint: `/health` and `/metrics` in Prometheus text format.
//!
//! `/metrics` holds what the `metrics` recorder collected (checkpoint latency and size),
//! then figures read from the engine at scrape time: relations, views (freshness, each
//! operator's rows, time and state), sources, watermarks, the process's memory and
//! RocksDB's. Series of a dropped view go with it.

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::common::ScalarValue;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sabot_planner::{Database, RelationKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Installs the process's `metrics` recorder; None (with a warning) when one is already
/// installed.
pub fn install_recorder() -> Option<PrometheusHandle> {
    const SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const WRITES: &[f64] = &[0.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("sabot_checkpoint_duration_seconds".into()),
            SECONDS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("sabot_checkpoint_writes".into()),
                WRITES,
            )
        });
    match builder.and_then(|b| b.install_recorder()) {
        Ok(handle) => {
            let upkeep = handle.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no metrics recorder: checkpoint histograms are off");
            None
        }
    }
}

pub async fn serve(listener: TcpListener, db: Arc<Database>, recorder: Option<PrometheusHandle>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let db = Arc::clone(&db);
        let recorder = recorder.clone();
        tokio::spawn(async move {
            // The request head may come in pieces: read up to its blank line (8 KiB at
            // most). Closing with unread input would reset the connection.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let request = String::from_utf8_lossy(&buf);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            const TEXT: &str = "text/plain; version=0.0.4";
            let (status, content_type, body) = match path {
                "/health" => ("200 OK", TEXT, "ok\n".to_string()),
                "/metrics" => ("200 OK", TEXT, metrics(&db, recorder.as_ref()).await),
                "/" | "/index.html" => {
                    ("200 OK", "text/html; charset=utf-8", DASHBOARD.to_string())
                }
                "/api/overview" => ("200 OK", "application/json", overview(&db).await),
                _ => ("404 Not Found", TEXT, "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

/// The dashboard: one page that polls `/api/overview`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the dashboard draws, as JSON: the catalog's objects with what each reads and
/// its rows; per view its freshness, rates and operators (with their EXPLAIN lines and
/// inputs, for the dataflow drawing); the last checkpoints; memory.
async fn overview(db: &Database) -> String {
    let snap = db.snapshot();
    let views = db.view_metrics().await;
    let objects: Vec<serde_json::Value> = db
        .graph()
        .await
        .into_iter()
        .map(|g| {
            let rows = snap.relations.get(&g.name).and_then(|r| match r.kind {
                RelationKind::Table | RelationKind::MaterializedView => Some(r.num_rows()),
                RelationKind::Source | RelationKind::Sink => None,
            });
            serde_json::json!({
                "name": g.name,
                "kind": g.kind,
                "inputs": g.inputs,
                "error": g.error,
                "target": g.target,
                "rows": rows,
            })
        })
        .collect();
    let views: Vec<serde_json::Value> = views
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v.name,
                "freshness_seconds": v.freshness_seconds,
                "stopped": v.stopped,
                "rows_in_per_second": v.rates.map(|r| r.0),
                "changes_per_second": v.rates.map(|r| r.1),
                "operators": v.operators.iter().enumerate().map(|(i, o)| serde_json::json!({
                    "rows_out_per_second": v.operator_rates.get(i).map(|r| r.0),
                    "busy_share": v.operator_rates.get(i).map(|r| r.1),
                    "node": o.node,
                    "operator": o.operator,
                    "label": o.label,
                    "inputs": o.inputs,
                    "rows_in": o.rows_in,
                    "rows_out": o.rows_out,
                    "busy_seconds": o.busy_seconds,
                    "state_rows": o.state_rows,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serde_json::json!({
        "epoch": snap.epoch,
        "now_ms": now_ms,
        "objects": objects,
        "views": views,
        "checkpoints": db.checkpoint_history(),
        "resident_bytes": resident_bytes(),
    })
    .to_string()
}

/// A label value with `\\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `# HELP` and `# TYPE` lines.
fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// The resident memory of this process, from /proc (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A timestamp watermark as seconds since the Unix epoch.
fn epoch_seconds(v: &ScalarValue) -> Option<f64> {
    Some(match v {
        ScalarValue::TimestampSecond(Some(x), _) => *x as f64,
        ScalarValue::TimestampMillisecond(Some(x), _) => *x as f64 / 1e3,
        ScalarValue::TimestampMicrosecond(Some(x), _) => *x as f64 / 1e6,
        ScalarValue::TimestampNanosecond(Some(x), _) => *x as f64 / 1e9,
        ScalarValue::Date32(Some(d)) => f64::from(*d) * 86_400.0,
        _ => return None,
    })
}

async fn metrics(db: &Database, recorder: Option<&PrometheusHandle>) -> String {
    let snap = db.snapshot();
    let mut s = recorder.map(PrometheusHandle::render).unwrap_or_default();
    let _ = writeln!(s, "# HELP sabot_committed_epoch The last committed epoch.");
    let _ = writeln!(s, "# TYPE sabot_committed_epoch gauge");
    let _ = writeln!(s, "sabot_committed_epoch {}", snap.epoch);
    let _ = writeln!(
        s,
        "# HELP sabot_relation_rows Rows in each table and view as of the last committed epoch."
    );
    let _ = writeln!(s, "# TYPE sabot_relation_rows gauge");
    for (name, rel) in &snap.relations {
        let kind = match rel.kind {
            RelationKind::Table => "table",
            RelationKind::MaterializedView => "materialized_view",
            // A source holds no rows of its own.
            RelationKind::Source | RelationKind::Sink => continue,
        };
        let _ = writeln!(
            s,
            "sabot_relation_rows{{name=\"{}\",kind=\"{kind}\"}} {}",
            label(name),
            rel.num_rows()
        );
    }
    let _ = writeln!(
        s,
        "# HELP sabot_source_errors_total Records each source skipped as malformed since the server started."
    );
    let _ = writeln!(s, "# TYPE sabot_source_errors_total counter");
    for (name, log) in &snap.source_errors {
        let _ = writeln!(
            s,
            "sabot_source_errors_total{{source=\"{}\"}} {}",
            label(name),
            log.total()
        );
    }
    view_metrics(db, &mut s).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    header(
        &mut s,
        "sabot_watermark_lag_seconds",
        "gauge",
        "Wall time minus the watermark, per view and the relation and column it is declared on.",
    );
    for (view, w) in &snap.watermarks {
        if let Some(t) = w.value.as_ref().and_then(epoch_seconds) {
            let _ = writeln!(
                s,
                "sabot_watermark_lag_seconds{{view=\"{}\",relation=\"{}\",column=\"{}\"}} {}",
                label(view),
                label(&w.relation),
                label(&w.column),
                // A finished bounded source's watermark is the end of time: no lag.
                (now - t).max(0.0)
            );
        }
    }
    if let Some(rss) = resident_bytes() {
        header(
            &mut s,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the sabot process.",
        );
        let _ = writeln!(s, "process_resident_memory_bytes {rss}");
    }
    header(
        &mut s,
        "sabot_rocksdb_property",
        "gauge",
        "RocksDB's integer properties (rocksdb.<name>): memtables, table readers, block cache, sizes.",
    );
    for (name, v) in db.storage_stats() {
        let _ = writeln!(s, "sabot_rocksdb_property{{name=\"{name}\"}} {v}");
    }
    s
}

/// Per view: freshness, whether it stopped, and each operator's figures; per source the
/// rows each view's reader took.
async fn view_metrics(db: &Database, s: &mut String) {
    let views = db.view_metrics().await;
    header(
        s,
        "sabot_view_freshness_seconds",
        "gauge",
        "Seconds since the view last reflected everything committed to what it reads.",
    );
    for v in &views {
        if let Some(f) = v.freshness_seconds {
            let _ = writeln!(
                s,
                "sabot_view_freshness_seconds{{view=\"{}\"}} {f}",
                label(&v.name)
            );
        }
    }
    header(
        s,
        "sabot_view_stopped",
        "gauge",
        "1 when the view stopped on an error (see sabot_catalog.views).",
    );
    for v in &views {
        let _ = writeln!(
            s,
            "sabot_view_stopped{{view=\"{}\"}} {}",
            label(&v.name),
            u8::from(v.stopped)
        );
    }
    type Pick = fn(&sabot_dataflow::OperatorStats) -> f64;
    let series: [(&str, &str, &str, Pick); 4] = [
        (
            "sabot_operator_rows_in_total",
            "counter",
            "Rows (changes) that reached the operator since the server started.",
            |o| o.rows_in as f64,
        ),
        (
            "sabot_operator_rows_out_total",
            "counter",
            "Rows (changes) the operator emitted since the server started.",
            |o| o.rows_out as f64,
        ),
        (
            "sabot_operator_busy_seconds_total",
            "counter",
            "Wall time the operator's step took, over all epochs since the server started.",
            |o| o.busy_seconds,
        ),
        (
            "sabot_operator_state_rows",
            "gauge",
            "Entries (groups, rows) the operator holds in memory, over all workers.",
            |o| o.state_rows as f64,
        ),
    ];
    for (name, kind, help, pick) in series {
        header(s, name, kind, help);
        for v in &views {
            for o in &v.operators {
                let _ = writeln!(
                    s,
                    "{name}{{view=\"{}\",node=\"{}\",operator=\"{}\"}} {}",
                    label(&v.name),
                    o.node,
                    o.operator,
                    pick(o)
                );
            }
        }
    }
    header(
        s,
        "sabot_source_bytes_total",
        "counter",
        "Bytes of input each view's reader of a source has read since the server started (Kafka record keys and values, file contents; generators read none).",
    );
    for v in &views {
        for o in v.operators.iter().filter(|o| o.operator == "SourceReader") {
            if let (Some(r), Some(bytes)) = (&o.relation, o.source_bytes) {
                let _ = writeln!(
                    s,
                    "sabot_source_bytes_total{{source=\"{}\",view=\"{}\"}} {bytes}",
                    label(r),
                    label(&v.name)
                );
            }
        }
    }
    header(
        s,
        "sabot_source_lag",
        "gauge",
        "Offsets each view's reader of a source has still to read: Kafka's consumer lag in records (against the high watermarks, asked every 5 s), or what is left of a bounded generator.",
    );
    for v in &views {
        for o in v.operators.iter().filter(|o| o.operator == "SourceReader") {
            if let (Some(r), Some((read, Some(end)))) = (&o.relation, o.source_progress) {
                let _ = writeln!(
                    s,
                    "sabot_source_lag{{source=\"{}\",view=\"{}\"}} {}",
                    label(r),
                    label(&v.name),
                    end.saturating_sub(read)
                );
            }
        }
    }
    header(
        s,
        "sabot_source_rows_total",
        "counter",
        "Rows each view's reader of a source has read since the server started.",
    );
    for v in &views {
        for o in v.operators.iter().filter(|o| o.operator == "SourceReader") {
            if let Some(r) = &o.relation {
                let _ = writeln!(
                    s,
                    "sabot_source_rows_total{{source=\"{}\",view=\"{}\"}} {}",
                    label(r),
                    label(&v.name),
                    o.rows_out
                );
            }
        }
    }
}
