//! Avro container files in and out: files written by fastavro (`avro_files.py`, an
//! implementation independent of Sabot's) with two codecs and an evolved schema are read
//! by a source and a table; a sink writes Avro files that fastavro reads back. The
//! server is SIGKILLed between files and must count every row once, and the sink's
//! changes, replayed, must equal the view. Needs `SABOT_PYTHON`: a Python with fastavro.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{rows, scalar, wait_for, Server};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/avro_files.py");

fn write(python: &str, path: &Path, codec: &str, first: i64, last: i64, version: u8) {
    let status = Command::new(python)
        .args([SCRIPT, "write"])
        .arg(path)
        .args([
            codec,
            &first.to_string(),
            &last.to_string(),
            &version.to_string(),
        ])
        .status()
        .expect("SABOT_PYTHON runs avro_files.py");
    assert!(status.success(), "avro_files.py write {}", path.display());
}

fn read(python: &str, dir: &Path) -> Vec<Value> {
    let out = Command::new(python)
        .args([SCRIPT, "read"])
        .arg(dir)
        .output()
        .expect("SABOT_PYTHON runs avro_files.py");
    assert!(
        out.status.success(),
        "avro_files.py read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(records) => records,
        other => panic!("avro_files.py read printed {other}"),
    }
}

/// The state Debezium envelopes leave: per `tags`, (n, amount in cents).
fn replay(records: &[Value]) -> BTreeMap<String, (i64, i64)> {
    let mut state = BTreeMap::new();
    for r in records {
        let row = |v: &Value| {
            let cents = (v["amount"].as_str().unwrap().parse::<f64>().unwrap() * 100.0).round();
            (
                v["tags"].as_str().unwrap().to_string(),
                (v["n"].as_i64().unwrap(), cents as i64),
            )
        };
        match r["op"].as_str() {
            Some("c") => {
                let (k, v) = row(&r["after"]);
                assert!(state.insert(k, v).is_none(), "a second insert: {r}");
            }
            Some("d") => {
                let (k, v) = row(&r["before"]);
                assert_eq!(
                    state.remove(&k),
                    Some(v),
                    "a delete of what is not there: {r}"
                );
            }
            _ => panic!("not a Debezium envelope: {r}"),
        }
    }
    state
}

fn sum(first: i64, last: i64) -> i64 {
    (first + last) * (last - first + 1) / 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_files_are_read_and_written_once_across_a_crash() {
    let Ok(python) = std::env::var("SABOT_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set SABOT_PYTHON");
        eprintln!("skipped: SABOT_PYTHON not set (a Python with fastavro)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write(
        &python,
        &input.path().join("a-000.avro"),
        "deflate",
        1,
        5000,
        1,
    );
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE orders (id BIGINT, name VARCHAR, amount DECIMAL(10,2), at TIMESTAMPTZ,
                 tags JSONB, note VARCHAR, extra INT, missing VARCHAR)
               WITH (connector = 'filesystem', path = '{input}', match_pattern = '*.avro',
                     filesystem.split.num = '2')
               FORMAT PLAIN ENCODE AVRO;
             CREATE MATERIALIZED VIEW order_totals AS
               SELECT count(*) AS n, sum(id) AS ids, sum(amount) AS amount, count(note) AS notes,
                      sum(extra) AS extra, count(*) FILTER (WHERE name LIKE 'v2-%') AS v2,
                      max(at) AS last_at, count(missing) AS missing
               FROM orders;
             CREATE MATERIALIZED VIEW by_tag AS
               SELECT tags::VARCHAR AS tags, count(*) AS n, sum(amount) AS amount
               FROM orders GROUP BY tags::VARCHAR;
             CREATE TABLE latest (id BIGINT PRIMARY KEY, name VARCHAR, amount DECIMAL(10,2))
               WITH (connector = 'filesystem', path = '{input}', match_pattern = '*.avro')
               FORMAT PLAIN ENCODE AVRO;
             CREATE SINK tag_changes FROM by_tag
               WITH (connector = 'filesystem', path = '{out}')
               FORMAT DEBEZIUM ENCODE AVRO (codec = 'deflate');",
            input = input.path().display(),
            out = out.path().display(),
        ))
        .await
        .unwrap();
    wait_for(&client, "SELECT n FROM order_totals", "5000").await;
    wait_for(&client, "SELECT count(*) FROM latest", "5000").await;

    write(
        &python,
        &input.path().join("a-001.avro"),
        "null",
        5001,
        10_000,
        1,
    );
    std::fs::write(input.path().join("a-002.avro"), b"not an Avro file").unwrap();
    // Ids 2001..=12000 again, written by the evolved schema: the table's rows get the
    // new names, the source counts them a second time.
    write(
        &python,
        &input.path().join("a-003.avro"),
        "deflate",
        2001,
        12_000,
        2,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();

    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT n FROM order_totals", "20000").await;
    wait_for(&client, "SELECT count(*) FROM latest", "12000").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = sum(1, 10_000) + sum(2001, 12_000);
    assert_eq!(
        rows(
            &client,
            "SELECT n, ids, amount, notes, extra, v2,
                    last_at = TIMESTAMPTZ '2026-01-01 03:20:00+00', missing
             FROM order_totals"
        )
        .await,
        vec![vec![
            "20000".to_string(),
            ids.to_string(),
            format!("{}.{:02}", ids / 100, ids % 100),
            "5000".to_string(),
            (2 * sum(2001, 12_000)).to_string(),
            "10000".to_string(),
            "t".to_string(),
            "0".to_string(),
        ]]
    );
    assert_eq!(
        rows(
            &client,
            "SELECT count(*), count(*) FILTER (WHERE name LIKE 'v2-%'), sum(amount) FROM latest"
        )
        .await,
        vec![vec![
            "12000".to_string(),
            "10000".to_string(),
            format!("{}.{:02}", sum(1, 12_000) / 100, sum(1, 12_000) % 100),
        ]]
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM sabot_catalog.source_errors
             WHERE source = 'orders' AND split LIKE '%a-002.avro'"
        )
        .await,
        "1"
    );

    // The sink's files, read by fastavro and replayed, hold the view: each change once.
    let want: BTreeMap<String, (i64, i64)> = rows(&client, "SELECT tags, n, amount FROM by_tag")
        .await
        .into_iter()
        .map(|r| {
            let cents = (r[2].parse::<f64>().unwrap() * 100.0).round() as i64;
            (r[0].clone(), (r[1].parse().unwrap(), cents))
        })
        .collect();
    assert_eq!(want.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = replay(&read(&python, out.path()));
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink's files replay to {got:?}, the view holds {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
