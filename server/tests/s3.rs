//! The `s3` connector against a real S3 endpoint: moto's S3 server on a loopback port,
//! objects written by boto3 (`s3_peer.py`). CSV objects and a Parquet object are read
//! into views and a table (and through `connector = 'filesystem', path =
//! 's3://inbox/data/'`, the objects under a prefix); the server is SIGKILLed between
//! objects and must count every row once. Needs `SABOT_PYTHON`: a Python with
//! `moto[server]` and `boto3`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

use common::{rows, wait_for, Server};
use serde_json::{json, Value};

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    endpoint: String,
}

impl Peer {
    fn start(python: &str) -> Peer {
        let mut child = Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_peer.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("SABOT_PYTHON runs s3_peer.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let hello: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("s3_peer.py said {line:?}: {e}"));
        let endpoint = hello["endpoint"].as_str().unwrap().to_string();
        Peer {
            child,
            stdin,
            stdout,
            endpoint,
        }
    }

    fn put(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(
            line.contains("\"ok\""),
            "s3_peer.py answered {line:?} to {cmd}"
        );
    }

    fn put_text(&mut self, key: &str, text: &str) {
        self.put(json!({"cmd": "put", "key": key, "text": text}));
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn csv(first: i64, last: i64) -> String {
    let mut s = String::from("id,v,name\n");
    for id in first..=last {
        s.push_str(&format!("{id},{},n{id}\n", id % 5));
    }
    s
}

/// A Parquet file of ids `first..=last` (int64) and names, by Apache Arrow's writer.
fn parquet(path: &std::path::Path, first: i64, last: i64) {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    let ids: Vec<i64> = (first..=last).collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("n{i}")),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_are_read_once_across_a_crash() {
    let Ok(python) = std::env::var("SABOT_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set SABOT_PYTHON");
        eprintln!("skipped: SABOT_PYTHON not set (a Python with moto[server] and boto3)");
        return;
    };
    let mut peer = Peer::start(&python);
    let endpoint = peer.endpoint.clone();
    peer.put_text("data/part-000.csv", &csv(1, 1000));
    peer.put_text("other/part-000.csv", &csv(1, 10)); // not matched
    let scratch = tempfile::tempdir().unwrap();
    let pq = scratch.path().join("p.parquet");
    parquet(&pq, 1, 2500);
    peer.put(json!({"cmd": "put", "key": "pq/p-000.parquet", "file": pq.display().to_string()}));

    let s3 = |pattern: &str| {
        format!(
            "connector = 's3', s3.bucket_name = 'inbox', s3.region_name = 'us-east-1',
             s3.endpoint_url = '{endpoint}', s3.credentials.access = 'sabot',
             s3.credentials.secret = 'sabot-secret', match_pattern = '{pattern}'"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE objs (id BIGINT, v INT, name VARCHAR)
               WITH ({}, filesystem.split.num = '2') FORMAT PLAIN ENCODE CSV;
             CREATE MATERIALIZED VIEW totals AS
               SELECT count(*) AS n, sum(id) AS s, count(DISTINCT id) AS ids FROM objs;
             CREATE TABLE obj_rows (id BIGINT, v INT, name VARCHAR)
               WITH ({}) FORMAT PLAIN ENCODE CSV;
             CREATE SOURCE pq (id BIGINT, name VARCHAR) WITH ({}) FORMAT PLAIN ENCODE PARQUET;
             CREATE MATERIALIZED VIEW pq_totals AS SELECT count(*) AS n, sum(id) AS s FROM pq;
             CREATE SOURCE in_dir (id BIGINT, v INT, name VARCHAR)
               WITH (connector = 'filesystem', path = 's3://inbox/data/',
                     s3.region_name = 'us-east-1', s3.endpoint_url = '{endpoint}',
                     s3.credentials.access = 'sabot', s3.credentials.secret = 'sabot-secret',
                     match_pattern = 'part-*.csv')
               FORMAT PLAIN ENCODE CSV;
             CREATE MATERIALIZED VIEW dir_totals AS SELECT count(*) AS n, sum(id) AS s FROM in_dir;",
            s3("data/*.csv"),
            s3("data/*.csv"),
            s3("pq/*.parquet"),
        ))
        .await
        .unwrap();
    wait_for(&client, "SELECT n FROM totals", "1000").await;
    wait_for(&client, "SELECT n FROM pq_totals", "2500").await;
    peer.put_text("data/part-001.csv", &csv(1001, 5000));
    wait_for(&client, "SELECT n FROM totals", "5000").await;
    peer.put_text("data/part-002.csv", &csv(5001, 6000));
    server.kill();
    parquet(&pq, 2501, 3000);
    peer.put(json!({"cmd": "put", "key": "pq/p-001.parquet", "file": pq.display().to_string()}));

    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT n FROM totals", "6000").await;
    wait_for(&client, "SELECT count(*) FROM obj_rows", "6000").await;
    wait_for(&client, "SELECT n FROM pq_totals", "3000").await;
    // The prefix's objects only (not other/part-000.csv), the pattern within it.
    wait_for(&client, "SELECT n FROM dir_totals", "6000").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        rows(&client, "SELECT * FROM dir_totals").await,
        vec![vec!["6000", "18003000"]]
    );
    assert_eq!(
        rows(&client, "SELECT * FROM totals").await,
        vec![vec!["6000", "18003000", "6000"]]
    );
    assert_eq!(
        rows(&client, "SELECT count(DISTINCT id), sum(id) FROM obj_rows").await,
        vec![vec!["6000", "18003000"]]
    );
    assert_eq!(
        rows(&client, "SELECT * FROM pq_totals").await,
        vec![vec!["3000", "4501500"]]
    );

    // A bucket that does not exist is refused when the source is created.
    let e = client
        .batch_execute(&format!(
            "CREATE SOURCE nope (id BIGINT) WITH ({}) FORMAT PLAIN ENCODE CSV",
            s3("*").replace("'inbox'", "'missing'")
        ))
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert!(
        db.message().contains("cannot list s3://missing"),
        "{}",
        db.message()
    );
}
