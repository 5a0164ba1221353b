//! `/metrics` as Prometheus scrapes it: after rows went through views, the per-operator
//! counters and state sizes, the views' freshness, the sources' row counts, watermark lag,
//! checkpoint histograms, process and RocksDB memory are there with the values the
//! workload implies, and a dropped view's series are gone.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Server;

/// Samples of a Prometheus text page: `name{labels}` → value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn get(s: &HashMap<String, f64>, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("no {series} in {:#?}", s.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_dataflow() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (k INT, v INT);
             CREATE MATERIALIZED VIEW per_k AS SELECT k, sum(v) AS s FROM t GROUP BY k;
             CREATE MATERIALIZED VIEW \"odd \"\"name\"\"\" AS SELECT k FROM t WHERE v > 50;
             CREATE SOURCE bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', nexmark.table.type = 'bid',
                     nexmark.event.num = '2000', nexmark.min.event.gap.in.ns = '0');
             CREATE MATERIALIZED VIEW bids AS SELECT auction, price, date_time FROM bid;
             CREATE SOURCE live (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', nexmark.table.type = 'bid');
             CREATE MATERIALIZED VIEW live_count AS SELECT count(*) AS n FROM live;",
        )
        .await
        .unwrap();
    let values: Vec<String> = (0..100).map(|i| format!("({}, {i})", i % 7)).collect();
    client
        .batch_execute(&format!(
            "INSERT INTO t VALUES {}; FLUSH;",
            values.join(", ")
        ))
        .await
        .unwrap();
    // The nexmark reader is done once the view holds every bid.
    let deadline = Instant::now() + Duration::from_secs(60);
    let bids = loop {
        client.batch_execute("FLUSH").await.unwrap();
        let page = samples(&server.http_get("/metrics"));
        let rows = page.get("sabot_relation_rows{name=\"bids\",kind=\"materialized_view\"}");
        let read = page.get("sabot_source_rows_total{source=\"bid\",view=\"bids\"}");
        if let (Some(rows), Some(read)) = (rows, read) {
            if rows > &0.0 && rows == read {
                break *rows;
            }
        }
        assert!(Instant::now() < deadline, "the bids never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let n = common::rows(&client, "SELECT count(*) FROM bids").await;
    assert_eq!(n[0][0], (bids as u64).to_string());

    let page = server.http_get("/metrics");
    let s = samples(&page);
    // The one operator of its kind in the view.
    let op = |metric: &str, view: &str, operator: &str| {
        let prefix = format!("{metric}{{view=\"{view}\",node=\"");
        let suffix = format!("\",operator=\"{operator}\"}}");
        let found: Vec<f64> = s
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k.ends_with(&suffix))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{metric} of {operator} in {view}: {page}");
        found[0]
    };
    assert_eq!(op("sabot_operator_rows_in_total", "per_k", "Source"), 100.0);
    assert_eq!(
        op("sabot_operator_rows_out_total", "per_k", "Source"),
        100.0
    );
    assert_eq!(
        op("sabot_operator_state_rows", "per_k", "HashAggregate"),
        7.0
    );
    assert_eq!(
        op("sabot_operator_rows_out_total", "per_k", "HashAggregate"),
        7.0
    );
    assert!(
        op(
            "sabot_operator_busy_seconds_total",
            "per_k",
            "HashAggregate"
        ) > 0.0
    );
    assert_eq!(
        get(
            &s,
            "sabot_relation_rows{name=\"per_k\",kind=\"materialized_view\"}"
        ),
        7.0
    );
    // Label values are escaped.
    assert_eq!(
        get(
            &s,
            "sabot_relation_rows{name=\"odd \\\"name\\\"\",kind=\"materialized_view\"}"
        ),
        49.0
    );
    let fresh = get(&s, "sabot_view_freshness_seconds{view=\"per_k\"}");
    assert!((0.0..30.0).contains(&fresh), "freshness {fresh}");
    assert_eq!(get(&s, "sabot_view_stopped{view=\"per_k\"}"), 0.0);
    // Nexmark's event time starts in 2015: an endless source's watermark is years behind
    // the clock. A finished one's is the end of time: no lag.
    let lag = get(
        &s,
        "sabot_watermark_lag_seconds{view=\"live_count\",relation=\"live\",column=\"date_time\"}",
    );
    assert!(lag > 3.0e8, "lag {lag}");
    let lag = get(
        &s,
        "sabot_watermark_lag_seconds{view=\"bids\",relation=\"bid\",column=\"date_time\"}",
    );
    assert_eq!(lag, 0.0);
    assert!(get(&s, "sabot_checkpoints_total") >= 1.0);
    // 0 without a GPU, 1 with one: present either way.
    assert!([0.0, 1.0].contains(&get(&s, "sabot_gpu_available")));
    assert!(get(&s, "sabot_checkpoint_duration_seconds_count") >= 1.0);
    assert!(get(&s, "sabot_checkpoint_writes_sum") > 0.0);
    assert!(get(&s, "process_resident_memory_bytes") > 1.0e6);
    assert!(get(&s, "sabot_rocksdb_property{name=\"estimate-num-keys\"}") > 0.0);
    assert!(s.contains_key("sabot_rocksdb_property{name=\"cur-size-all-mem-tables\"}"));

    // Every metric the Grafana dashboard in docker/ queries is one the server exports.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docker/grafana/dashboards/sabot.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("sabot_") || word.starts_with("process_") {
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .filter(|f| page.contains(&format!("# TYPE {f} histogram")))
                        .unwrap_or(word);
                    queried.push(family.to_string());
                }
            }
        }
    }
    assert!(queried.len() > 10, "{queried:?}");
    for family in &queried {
        assert!(
            page.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {family}, which /metrics lacks"
        );
    }

    client
        .batch_execute("DROP MATERIALIZED VIEW per_k")
        .await
        .unwrap();
    let page = server.http_get("/metrics");
    assert!(!page.contains("\"per_k\""), "{page}");
}
