//! Nexmark queries with `--gpu off` and `--gpu on`, in the same run: for each query a
//! fresh `sabot serve` per mode over the same bounded nexmark sources (as
//! benches/nexmark/bench.py sets them up), the query as a materialized view, timed from
//! the CREATE until SHOW JOBS says every source is read and a FLUSH made it visible. One
//! JSON line per query and mode (events/s, per core), then the GPU/CPU ratio; the two
//! views' rows are compared (numbers within a relative 1e-9).
//!
//! `cargo bench -p sabot-server --bench nexmark_gpu -- --events 10000000 --queries q3,q4,q5,q12`
//! (the `--gpu on` server needs the shim: `SABOT_GPU_LIBRARY`, gpu/README.md;
//! `SABOT_BIN` runs another `sabot`, e.g. one carried to the GPU machine; `--queries-dir`
//! where the qN.sql files are; `--modes off,auto` compares other modes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{same_multiset, Server};

const WATERMARK: &str = "WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND";

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Seconds from the CREATE to the view's last epoch visible, and the view's rows.
async fn run(name: &str, sql: &str, events: u64, gpu: &str) -> (f64, Vec<Vec<Option<String>>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &[], &["--gpu", gpu]);
    let client = server.connect().await;
    for kind in ["person", "auction", "bid"] {
        if sql.contains(kind) {
            client
                .batch_execute(&format!(
                    "CREATE SOURCE {kind} ({WATERMARK}) WITH (connector = 'nexmark', \
                     nexmark.table.type = '{kind}', nexmark.event.num = '{events}', \
                     nexmark.split.num = '2', nexmark.min.event.gap.in.ns = '0')"
                ))
                .await
                .expect("create source");
        }
    }
    let start = Instant::now();
    client
        .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {sql}"))
        .await
        .expect("create view");
    loop {
        let jobs = common::nullable_rows(&client, "SHOW JOBS").await;
        let job = jobs
            .iter()
            .find(|r| r[0].as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in SHOW JOBS"));
        match job[1].as_deref() {
            Some("finished") => break,
            Some("stopped") => panic!("{name} stopped: {job:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    client.batch_execute("FLUSH").await.expect("flush");
    let secs = start.elapsed().as_secs_f64();
    let out = common::nullable_rows(&client, &format!("SELECT * FROM {name}")).await;
    drop(client);
    server.kill();
    (secs, out)
}

#[allow(clippy::print_stdout)]
fn main() {
    let events: u64 = flag("--events")
        .and_then(|e| e.parse().ok())
        .unwrap_or(10_000_000);
    let queries = flag("--queries").unwrap_or_else(|| "q3,q4,q5,q12".into());
    let dir = flag("--queries-dir").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/nexmark/queries")
    });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for name in queries.split(',').map(str::trim).filter(|q| !q.is_empty()) {
        let text = std::fs::read_to_string(dir.join(format!("{name}.sql")))
            .unwrap_or_else(|e| panic!("{name}.sql: {e}"));
        let sql = text.trim().trim_end_matches(';');
        let mut rates = Vec::new();
        let mut results = Vec::new();
        let modes = flag("--modes").unwrap_or_else(|| "off,on".into());
        for gpu in modes.split(',').take(2) {
            let (secs, out) = runtime.block_on(run(name, sql, events, gpu));
            let rate = events as f64 / secs;
            println!(
                "{{\"query\": \"{name}\", \"gpu\": \"{gpu}\", \"events\": {events}, \"seconds\": {secs:.3}, \
                 \"events_per_s\": {rate:.0}, \"events_per_s_per_core\": {:.0}, \"rows\": {}}}",
                rate / 2.0,
                out.len()
            );
            rates.push(rate);
            results.push(out);
        }
        let same = same_multiset(results[0].clone(), results[1].clone());
        println!(
            "{{\"query\": \"{name}\", \"gpu_over_cpu\": {:.3}, \"same_rows\": {same}}}",
            rates[1] / rates[0]
        );
        assert!(
            same,
            "{name}: the GPU view's rows differ from the CPU view's"
        );
    }
}
