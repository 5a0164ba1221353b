//! A Kafka source against a real Kafka protocol endpoint: librdkafka's mock cluster runs
//! in this test process on a loopback TCP port, and records are produced by an
//! independent client, `kcat` (Debian package `kcat`; `.ci/run` installs it). Sabot reads
//! them into a view, is SIGKILLed and restarted, and must end with every good record
//! counted exactly once; malformed records are skipped without stopping the source.
//! Kafka sinks write views back to topics, read by `kcat`: after a crash each change is
//! there exactly once.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio_postgres::{Client, SimpleQueryMessage};

fn kcat_produce(bootstrap: &str, topic: &str, partition: i32, lines: &[String]) {
    kcat_produce_with(bootstrap, topic, partition, &[], lines);
}

/// `kcat -P` of `lines` to one partition, with extra flags.
fn kcat_produce_with(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    flags: &[&str],
    lines: &[String],
) {
    let mut child = Command::new("kcat")
        .args([
            "-b",
            bootstrap,
            "-t",
            topic,
            "-P",
            "-p",
            &partition.to_string(),
        ])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kcat (apt-get install kcat) produces the test's records");
    {
        let stdin = child.stdin.as_mut().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "kcat failed");
}

async fn row(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

async fn wait_count(client: &Client, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = row(client, "SELECT n FROM totals").await;
        if got.first().map(String::as_str) == Some(want.to_string().as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "totals.n is {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Good records `first..first+n`, spread over 3 partitions.
fn produce_range(bootstrap: &str, first: u64, n: u64) {
    for p in 0..3u64 {
        let lines: Vec<String> = (first..first + n)
            .filter(|i| i % 3 == p)
            .map(|i| format!(r#"{{"id": {i}, "v": {}, "name": "n{i}"}}"#, i % 7))
            .collect();
        kcat_produce(bootstrap, "events", p as i32, &lines);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_json_source_reads_each_record_once_across_a_crash() {
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock Kafka cluster");
    cluster.create_topic("events", 3, 1).expect("create topic");
    let bootstrap = cluster.bootstrap_servers();

    produce_range(&bootstrap, 0, 3000);
    // Malformed records: not JSON, not an object, a type that does not fit.
    kcat_produce(
        &bootstrap,
        "events",
        1,
        &[
            "not json".to_string(),
            "[1, 2]".to_string(),
            r#"{"id": "abc", "v": 1}"#.to_string(),
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE ev (id BIGINT, v INT, name VARCHAR) WITH (
               connector = 'kafka', topic = 'events',
               properties.bootstrap.server = '{bootstrap}', scan.startup.mode = 'earliest')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW totals AS
               SELECT count(*) AS n, sum(id) AS s, count(DISTINCT id) AS ids, max(v) AS mv FROM ev;"
        ))
        .await
        .unwrap();
    wait_count(&client, 3000).await;
    // Caught up: no consumer lag (the high watermarks are asked every 5 s), and SHOW
    // JOBS has read to the end of all three partitions (3,003 records; offsets count
    // from 1 there).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = server.http_get("/metrics");
        let jobs = common::rows(&client, "SHOW JOBS").await;
        let job = jobs
            .iter()
            .find(|r| r[0] == "totals")
            .cloned()
            .unwrap_or_default();
        if page.contains("sabot_source_lag{source=\"ev\",view=\"totals\"} 0\n")
            && job.get(2).map(String::as_str) == Some("3006")
        {
            assert_eq!(job[3], "3006", "{job:?}");
            assert_eq!(job[4], "100", "{job:?}");
            assert_eq!(job[1], "following", "{job:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never reached 0: {job:?}\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The bad records are kept with where they came from and why they were skipped.
    assert_eq!(
        common::rows(
            &client,
            "SELECT source, split, record_offset, payload FROM sabot_catalog.source_errors WHERE source = 'ev' ORDER BY record_offset"
        )
        .await,
        vec![
            vec!["ev", "1", "1000", "not json"],
            vec!["ev", "1", "1001", "[1, 2]"],
            vec!["ev", "1", "1002", r#"{"id": "abc", "v": 1}"#],
        ]
    );
    // Record metadata as columns.
    client
        .batch_execute(&format!(
            "CREATE SOURCE ev_meta (id BIGINT) INCLUDE partition AS p INCLUDE offset AS o
               INCLUDE key AS k INCLUDE timestamp WITH (
               connector = 'kafka', topic = 'events',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_partition AS
               SELECT p, count(*) AS n, min(o) AS lo, max(o) AS hi, count(k) AS keys,
                      bool_and(_rw_kafka_timestamp > '2020-01-01 00:00:00+00') AS stamped
               FROM ev_meta GROUP BY p;"
        ))
        .await
        .unwrap();
    common::wait_for(&client, "SELECT sum(n) FROM per_partition", "3000").await;
    assert_eq!(
        common::rows(&client, "SELECT * FROM per_partition ORDER BY p").await,
        (0..3)
            .map(|p| vec![
                p.to_string(),
                "1000".into(),
                "0".into(),
                "999".into(),
                "0".into(),
                "t".into()
            ])
            .collect::<Vec<_>>()
    );
    let why = common::rows(
        &client,
        "SELECT error FROM sabot_catalog.source_errors WHERE source = 'ev' ORDER BY record_offset",
    )
    .await;
    assert!(why[0][0].contains("not a JSON object"), "{why:?}");
    assert!(why[2][0].contains("abc"), "{why:?}");
    assert!(
        server
            .http_get("/metrics")
            .contains("sabot_source_errors_total{source=\"ev\"} 3\n"),
        "{}",
        server.http_get("/metrics")
    );

    // More records arrive; the server dies while or after reading them.
    produce_range(&bootstrap, 3000, 2000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_count(&client, 5000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        row(&client, "SELECT * FROM totals").await,
        vec![
            "5000".to_string(),
            (4999u64 * 5000 / 2).to_string(),
            "5000".to_string(),
            "6".to_string()
        ]
    );

    // A topic that does not exist is refused when the source is created.
    let err = client
        .batch_execute(&format!(
            "CREATE SOURCE nope (id BIGINT) WITH (connector = 'kafka', topic = 'missing',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON"
        ))
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("does not exist")),
        "{err:?}"
    );
}

/// Every record of `topic` (all partitions, from the start), read by `kcat`.
fn kcat_consume(bootstrap: &str, topic: &str) -> Vec<serde_json::Value> {
    let out = Command::new("kcat")
        .args([
            "-b",
            bootstrap,
            "-t",
            topic,
            "-C",
            "-e",
            "-q",
            "-o",
            "beginning",
        ])
        .args(["-f", "%s\\n"])
        .stderr(Stdio::inherit())
        .output()
        .expect("kcat consumes the sink's topic");
    assert!(out.status.success(), "kcat failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sinks_write_each_change_once_across_a_crash() {
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock Kafka cluster");
    cluster.create_topic("events", 3, 1).expect("create topic");
    cluster.create_topic("picked", 2, 1).expect("create topic");
    cluster.create_topic("per_v", 2, 1).expect("create topic");
    cluster
        .create_topic("per_v_up", 2, 1)
        .expect("create topic");
    let bootstrap = cluster.bootstrap_servers();

    // The first run crashes in the middle of delivering the first records: some of
    // the epoch is in the topic, the rest only in the outbox.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[("SABOT_FAILPOINTS", "kafka-sink-partial-delivery@2")],
    );
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE ev (id BIGINT, v INT, name VARCHAR) WITH (
               connector = 'kafka', topic = 'events',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n FROM ev;
             CREATE MATERIALIZED VIEW picked AS SELECT id, name FROM ev WHERE v <> 3;
             CREATE MATERIALIZED VIEW per_v AS SELECT v, count(*) AS n, max(id) AS top FROM ev GROUP BY v;
             CREATE SINK picked_out FROM picked WITH (connector = 'kafka', topic = 'picked',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;
             CREATE SINK per_v_out FROM per_v WITH (connector = 'kafka', topic = 'per_v',
               properties.bootstrap.server = '{bootstrap}') FORMAT DEBEZIUM ENCODE JSON;
             CREATE SINK per_v_upsert FROM per_v WITH (connector = 'kafka', topic = 'per_v_up',
               properties.bootstrap.server = '{bootstrap}', primary_key = 'v')
             FORMAT UPSERT ENCODE JSON;"
        ))
        .await
        .unwrap();
    produce_range(&bootstrap, 0, 3000);
    server.wait_exit(60);
    let in_topic = kcat_consume(&bootstrap, "picked").len();
    assert!(
        in_topic > 0 && in_topic < 2571,
        "the crash should leave part of the records delivered ({in_topic})"
    );

    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_count(&client, 3000).await;
    let err = client
        .batch_execute(&format!(
            "CREATE SINK again FROM picked WITH (connector = 'kafka', topic = 'picked',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON"
        ))
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("already writes to kafka:")),
        "{err:?}"
    );

    // More records arrive; the server dies while reading and sinking them.
    produce_range(&bootstrap, 3000, 2000);
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_count(&client, 5000).await;
    client.batch_execute("FLUSH").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut ids: Vec<i64> = kcat_consume(&bootstrap, "picked")
        .iter()
        .map(|v| v["id"].as_i64().unwrap_or_else(|| panic!("{v}")))
        .collect();
    ids.sort_unstable();
    let want: Vec<i64> = (0..5000).filter(|i| i % 7 != 3).collect();
    assert_eq!(ids.len(), want.len(), "records in the plain sink's topic");
    assert!(
        ids == want,
        "the plain sink's topic is not each picked row once"
    );

    let mut replayed: std::collections::BTreeMap<(i64, i64, i64), i64> = Default::default();
    let changes = kcat_consume(&bootstrap, "per_v");
    for c in &changes {
        let (row, w) = match c["op"].as_str() {
            Some("c") => (&c["after"], 1),
            Some("d") => (&c["before"], -1),
            other => panic!("op {other:?} in {c}"),
        };
        let n = |k: &str| row[k].as_i64().unwrap_or_else(|| panic!("{k} in {c}"));
        *replayed.entry((n("v"), n("n"), n("top"))).or_default() += w;
    }
    replayed.retain(|_, w| *w != 0);
    assert!(replayed.values().all(|w| *w == 1), "{replayed:?}");
    let got: Vec<Vec<String>> = replayed
        .keys()
        .map(|(v, n, top)| vec![v.to_string(), n.to_string(), top.to_string()])
        .collect();
    assert_eq!(
        got,
        common::rows(&client, "SELECT v, n, top FROM per_v ORDER BY v").await
    );
    assert!(
        changes.len() > got.len(),
        "the aggregate's sink carries its updates"
    );

    // The upsert topic, compacted by key (each key stays in one partition, in order),
    // is the view too.
    let out = Command::new("kcat")
        .args([
            "-b",
            &bootstrap,
            "-t",
            "per_v_up",
            "-C",
            "-e",
            "-q",
            "-o",
            "beginning",
        ])
        .args(["-Z", "-f", "%k|%s\\n"])
        .stderr(Stdio::inherit())
        .output()
        .expect("kcat consumes the upsert topic");
    let mut latest: std::collections::BTreeMap<i64, Option<serde_json::Value>> = Default::default();
    for line in String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
    {
        let (k, v) = line.split_once('|').unwrap_or_else(|| panic!("{line}"));
        let key: serde_json::Value = serde_json::from_str(k).unwrap_or_else(|e| panic!("{e}: {k}"));
        let value = (v != "NULL").then(|| {
            serde_json::from_str::<serde_json::Value>(v).unwrap_or_else(|e| panic!("{e}: {v}"))
        });
        latest.insert(key["v"].as_i64().unwrap(), value);
    }
    let compacted: Vec<Vec<String>> = latest
        .values()
        .flatten()
        .map(|r| vec![r["v"].to_string(), r["n"].to_string(), r["top"].to_string()])
        .collect();
    assert_eq!(compacted, got);
}

/// Produces `key|value` lines to one partition; an empty value is a tombstone.
fn kcat_produce_keyed(bootstrap: &str, topic: &str, partition: i32, lines: &[String]) {
    kcat_produce_with(bootstrap, topic, partition, &["-Z", "-K", "|"], lines);
}

/// Upserts of users `ids` with `score = id + bonus`, and tombstones for `deleted`,
/// each on partition `id % 2`.
fn produce_users(bootstrap: &str, ids: std::ops::RangeInclusive<i64>, bonus: i64, deleted: bool) {
    for p in 0..2 {
        let lines: Vec<String> = ids
            .clone()
            .filter(|id| id % 2 == p)
            .map(|id| {
                let key = format!(r#"{{"id": {id}}}"#);
                if deleted {
                    format!("{key}|")
                } else {
                    format!(
                        r#"{key}|{{"id": {id}, "name": "u{id}", "score": {}}}"#,
                        id + bonus
                    )
                }
            })
            .collect();
        kcat_produce_keyed(bootstrap, "users", p as i32, &lines);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_table_from_kafka_is_exact_across_a_crash() {
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock Kafka cluster");
    cluster.create_topic("users", 2, 1).expect("create topic");
    let bootstrap = cluster.bootstrap_servers();
    produce_users(&bootstrap, 1..=500, 0, false);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR, score INT)
               INCLUDE key AS k INCLUDE partition AS p INCLUDE offset AS o INCLUDE timestamp
               WITH (connector = 'kafka', topic = 'users', properties.bootstrap.server = '{bootstrap}')
             FORMAT UPSERT ENCODE JSON;
             CREATE MATERIALIZED VIEW user_stats AS SELECT count(*) AS n, sum(score) AS s FROM users;"
        ))
        .await
        .unwrap();
    common::wait_for(&client, "SELECT n FROM user_stats", "500").await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE user_keys (id BIGINT) INCLUDE key AS k WITH (connector = 'kafka',
               topic = 'users', properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW key_of_7 AS SELECT k FROM user_keys WHERE id = 7;"
        ))
        .await
        .unwrap();
    let hex: String = br#"{"id": 7}"#.iter().map(|b| format!("{b:02x}")).collect();
    common::wait_for(&client, "SELECT k FROM key_of_7", &format!("\\x{hex}")).await;
    client
        .batch_execute("DROP SOURCE user_keys CASCADE")
        .await
        .unwrap();
    let err = client
        .batch_execute("INSERT INTO users VALUES (9999, 'x', 1)")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("its rows come from its connector")),
        "{err:?}"
    );

    // Updates, deletes and a bad record arrive; the server dies meanwhile.
    produce_users(&bootstrap, 1..=100, 1000, false);
    produce_users(&bootstrap, 401..=500, 0, true);
    kcat_produce_keyed(
        &bootstrap,
        "users",
        0,
        &[r#"{"id": 2}|{"id": "two"}"#.to_string()],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();
    produce_users(&bootstrap, 1..=10, 2000, false);

    let server = Server::start(dir.path());
    let client = server.connect().await;
    common::wait_for(&client, "SELECT n FROM user_stats", "400").await;
    common::wait_for(&client, "SELECT score FROM users WHERE id = 10", "2010").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let score = |id: i64| match id {
        1..=10 => id + 2000,
        11..=100 => id + 1000,
        _ => id,
    };
    let want: Vec<Vec<String>> = (1..=400)
        .map(|id| vec![id.to_string(), format!("u{id}"), score(id).to_string()])
        .collect();
    assert!(
        common::rows(&client, "SELECT id, name, score FROM users ORDER BY id").await == want,
        "the table is not the last upsert of each key"
    );
    // The INCLUDEd record metadata is the last upsert's: id 10's was the fifth of the
    // last five records on partition 0, after 250 + 50 + 50 + 1 there.
    let hex: String = br#"{"id": 10}"#.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        row(
            &client,
            "SELECT k, p, o, _rw_kafka_timestamp > '2020-01-01 00:00:00+00' FROM users WHERE id = 10"
        )
        .await,
        vec![format!("\\x{hex}"), "0".into(), "355".into(), "t".into()]
    );
    let sum: i64 = (1..=400).map(score).sum();
    assert_eq!(
        row(&client, "SELECT n, s FROM user_stats").await,
        vec!["400".to_string(), sum.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_and_sink_ride_out_a_broker_outage() {
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock Kafka cluster");
    cluster.create_topic("events", 3, 1).expect("create topic");
    cluster.create_topic("picked", 2, 1).expect("create topic");
    let bootstrap = cluster.bootstrap_servers();
    produce_range(&bootstrap, 0, 1000);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE ev (id BIGINT, v INT, name VARCHAR) WITH (
               connector = 'kafka', topic = 'events',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n FROM ev;
             CREATE MATERIALIZED VIEW picked AS SELECT id FROM ev WHERE v <> 3;
             CREATE SINK picked_out FROM picked WITH (connector = 'kafka', topic = 'picked',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;"
        ))
        .await
        .unwrap();
    wait_count(&client, 1000).await;

    // The broker goes away: the server keeps answering, the source keeps retrying.
    cluster.broker_down(1).expect("broker down");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        row(&client, "SELECT n FROM totals").await,
        vec!["1000".to_string()]
    );
    client.batch_execute("FLUSH").await.unwrap();
    cluster.broker_up(1).expect("broker up");

    // It comes back: new records are read and sunk, each once.
    produce_range(&bootstrap, 1000, 1000);
    wait_count(&client, 2000).await;
    let want: Vec<i64> = (0..2000).filter(|i| i % 7 != 3).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ids: Vec<i64> = kcat_consume(&bootstrap, "picked")
            .iter()
            .map(|v| v["id"].as_i64().unwrap_or_else(|| panic!("{v}")))
            .collect();
        ids.sort_unstable();
        if ids.len() >= want.len() || Instant::now() > deadline {
            assert!(
                ids == want,
                "the sink's topic after the outage: {} records",
                ids.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
