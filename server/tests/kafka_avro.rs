//! Avro with a schema registry, end to end. Kafka is librdkafka's mock cluster (the real
//! protocol on a loopback port). The independent peer, `avro_peer.py`, runs a tiny
//! Confluent-compatible schema registry over HTTP with basic authentication, and
//! produces records with Confluent's own Python client and its AvroSerializer (the
//! registry's wire format). Needs `SABOT_PYTHON`: a Python with `confluent-kafka[avro]`.
//!
//! Checked: a source whose columns come from the registry; declared columns read by
//! name across schema versions; malformed records skipped and kept with their errors; a
//! failing registry delays records instead of losing them; recovery after SIGKILL keeps
//! the columns and counts every record once; `FORMAT UPSERT` and `FORMAT DEBEZIUM`
//! tables over Avro keys and values; clear errors for bad definitions.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{rows, scalar, wait_for, Server};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::{json, Value};

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    registry: String,
}

impl Peer {
    fn start(python: &str, bootstrap: &str) -> Peer {
        Self::start_with(python, bootstrap, &[])
    }

    /// With extra arguments (`--tls DIR`).
    fn start_with(python: &str, bootstrap: &str, args: &[&str]) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/avro_peer.py");
        let mut child = Command::new(python)
            .args([script, bootstrap])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("SABOT_PYTHON runs avro_peer.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let hello: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("avro_peer.py said {line:?}: {e}"));
        let registry = hello["registry"].as_str().unwrap().to_string();
        Peer {
            child,
            stdin,
            stdout,
            registry,
        }
    }

    fn send(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("avro_peer.py answered {line:?} to {cmd}: {e}"));
        assert_eq!(
            answer["ok"],
            json!(true),
            "avro_peer.py answered {line:?} to {cmd}"
        );
        answer
    }

    /// Every record of `topic` (at least `least`), decoded by Confluent's
    /// AvroDeserializer: `(key, value)`.
    fn consume(&mut self, topic: &str, least: usize) -> Vec<(Value, Value)> {
        let answer = self.send(json!({"cmd": "consume", "topic": topic, "min": least}));
        answer["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["key"].clone(), r["value"].clone()))
            .collect()
    }

    fn produce(&mut self, topic: &str, partition: i32, schema: &Value, values: Vec<Value>) {
        self.send(
            json!({"cmd": "produce", "topic": topic, "partition": partition,
                         "schema": schema, "values": values}),
        );
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn order_schema(version: u32) -> Value {
    let mut fields = vec![
        json!({"name": "id", "type": "long"}),
        json!({"name": "customer", "type": "string"}),
        json!({"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                                          "precision": 10, "scale": 2}}),
        json!({"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}),
        json!({"name": "status", "type": {"type": "enum", "name": "Status",
                                          "symbols": ["NEW", "PAID", "SHIPPED"]}}),
        json!({"name": "tags", "type": {"type": "array", "items": "string"}}),
    ];
    match version {
        // v1 has a nullable note.
        1 => fields.push(json!({"name": "note", "type": ["null", "string"], "default": null})),
        // v2 drops the note and adds a discount, first.
        _ => fields.insert(
            0,
            json!({"name": "discount", "type": "double", "default": 0.0}),
        ),
    }
    json!({"type": "record", "name": "Order", "namespace": "shop", "fields": fields})
}

/// Orders `first..first + n` in the shape of schema `version`.
fn orders(version: u32, first: i64, n: i64) -> Vec<Value> {
    (first..first + n)
        .map(|i| {
            let status = ["NEW", "PAID", "SHIPPED"][(i % 3) as usize];
            let mut o = json!({
                "id": i,
                "customer": format!("c{}", i % 5),
                // A decimal as text: the peer makes it a Python Decimal.
                "amount": format!("{}.{:02}", i * 101 / 100, i * 101 % 100),
                "at": 1_700_000_000_000i64 + i * 1000,
                "status": status,
                "tags": (0..(i % 3)).map(|t| format!("t{t}")).collect::<Vec<_>>(),
            });
            if version == 1 {
                o["note"] = if i % 2 == 0 {
                    json!(format!("n{i}"))
                } else {
                    Value::Null
                };
            } else {
                o["discount"] = json!(0.5);
            }
            o
        })
        .collect()
}

async fn error_of(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let e = client.batch_execute(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_sources_and_tables_through_a_schema_registry() {
    let Ok(python) = std::env::var("SABOT_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set SABOT_PYTHON");
        eprintln!("skipped: SABOT_PYTHON not set (a Python with confluent-kafka[avro])");
        return;
    };
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock Kafka cluster");
    let topics = [
        ("orders", 3),
        ("users", 1),
        ("cdc", 1),
        ("status_out", 2),
        ("users_out", 1),
    ];
    for (topic, partitions) in topics {
        cluster
            .create_topic(topic, partitions, 1)
            .expect("create topic");
    }
    let bootstrap = cluster.bootstrap_servers();
    let mut peer = Peer::start(&python, &bootstrap);
    let registry = peer.registry.clone();
    let v1 = order_schema(1);
    for p in 0..3 {
        peer.produce("orders", p, &v1, orders(1, p as i64 * 100, 100));
    }
    // Malformed: not the wire format, an id the registry does not have, a cut record.
    peer.send(
        json!({"cmd": "produce_raw", "topic": "orders", "partition": 0,
                     "hex": ["6e6f7420617672", "0000000063020304", "000000000102"]}),
    );

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    let avro = format!(
        "ENCODE AVRO (schema.registry = '{registry}', schema.registry.username = 'sabot',
                      schema.registry.password = 's3cret')"
    );
    let kafka = |topic: &str| {
        format!(
            "connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}'"
        )
    };
    // Columns from the registry's latest schema for orders-value.
    client
        .batch_execute(&format!(
            "CREATE SOURCE orders WITH ({}) FORMAT PLAIN {avro};
             CREATE MATERIALIZED VIEW per_status AS
               SELECT status, count(*) AS n, sum(id) AS ids, sum(amount) AS amount,
                      count(note) AS notes, min(at) AS first_at
               FROM orders GROUP BY status;",
            kafka("orders")
        ))
        .await
        .unwrap();
    let columns = "SELECT column_name || ' ' || data_type FROM information_schema.columns
                   WHERE table_name = 'orders' ORDER BY ordinal_position";
    let declared = vec![
        "id bigint",
        "customer text",
        "amount numeric",
        "at timestamp with time zone",
        "status text",
        "tags jsonb",
        "note text",
    ];
    let column_list =
        |rows: Vec<Vec<String>>| rows.into_iter().map(|r| r[0].clone()).collect::<Vec<_>>();
    assert_eq!(column_list(rows(&client, columns).await), declared);
    wait_for(&client, "SELECT sum(n) FROM per_status", "300").await;
    assert_eq!(
        rows(&client, "SELECT * FROM per_status ORDER BY status").await,
        vec![
            vec![
                "NEW",
                "100",
                "14850",
                "14998.50",
                "50",
                "2023-11-14 22:13:20+00"
            ],
            vec![
                "PAID",
                "100",
                "14950",
                "15099.50",
                "50",
                "2023-11-14 22:13:21+00"
            ],
            vec![
                "SHIPPED",
                "100",
                "15050",
                "15200.50",
                "50",
                "2023-11-14 22:13:22+00"
            ],
        ]
    );
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW two AS SELECT id, tags, note FROM orders WHERE id = 2",
        )
        .await
        .unwrap();
    wait_for(&client, "SELECT count(*) FROM two", "1").await;
    assert_eq!(
        rows(&client, "SELECT * FROM two").await,
        vec![vec!["2", r#"["t0", "t1"]"#, "n2"]]
    );
    let errors = rows(
        &client,
        "SELECT split, record_offset, error FROM sabot_catalog.source_errors
         WHERE source = 'orders' ORDER BY record_offset",
    )
    .await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0][2].contains("wire format"), "{errors:?}");
    assert!(errors[1][2].contains("schema id 99"), "{errors:?}");
    assert!(errors[2][2].contains("ends"), "{errors:?}");

    // A second version: the columns stay, read by name (note is gone: NULL).
    let v2 = order_schema(2);
    peer.produce("orders", 1, &v2, orders(2, 1000, 30));
    wait_for(&client, "SELECT sum(n) FROM per_status", "330").await;
    assert_eq!(
        scalar(&client, "SELECT sum(notes) FROM per_status").await,
        "150"
    );

    // A registry failing to give schemas by id holds back records of a schema not yet
    // seen: nothing is lost or logged as bad, and they arrive once it answers again.
    peer.send(json!({"cmd": "registry", "ids": false}));
    let v3 = json!({"type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"}, {"name": "customer", "type": "string"},
        {"name": "status", "type": "string"}]});
    peer.produce(
        "orders",
        2,
        &v3,
        (2000..2020)
            .map(|i| json!({"id": i, "customer": "late", "status": "NEW"}))
            .collect(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        scalar(&client, "SELECT sum(n) FROM per_status").await,
        "330"
    );
    peer.send(json!({"cmd": "registry", "ids": true}));
    wait_for(&client, "SELECT sum(n) FROM per_status", "350").await;
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM sabot_catalog.source_errors WHERE source = 'orders'"
        )
        .await,
        "3"
    );

    // Tables: upserts keyed by an Avro key, and Debezium envelopes.
    let user = json!({"type": "record", "name": "User", "fields": [
        {"name": "id", "type": "long"}, {"name": "name", "type": "string"},
        {"name": "score", "type": ["null", "int"]}]});
    let user_key = json!({"type": "record", "name": "UserKey", "fields": [
        {"name": "id", "type": "long"}]});
    peer.send(json!({"cmd": "produce", "topic": "users", "partition": 0,
        "schema": user, "key_schema": user_key,
        "keys": [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 1}, {"id": 2}],
        "values": [{"id": 1, "name": "ann", "score": 5}, {"id": 2, "name": "bob", "score": null},
                   {"id": 3, "name": "cy", "score": 7}, {"id": 1, "name": "ann", "score": 9},
                   null]}));
    let row = json!({"type": "record", "name": "Value", "fields": [
        {"name": "id", "type": "int"}, {"name": "city", "type": ["null", "string"]}]});
    let envelope = json!({"type": "record", "name": "Envelope", "fields": [
        {"name": "before", "type": ["null", row]},
        {"name": "after", "type": ["null", "Value"]},
        {"name": "source", "type": {"type": "record", "name": "Source", "fields": [
            {"name": "db", "type": "string"}]}},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"]}]});
    let src = json!({"db": "shop"});
    peer.produce("cdc", 0, &envelope, vec![
        json!({"before": null, "after": {"id": 1, "city": "Oslo"}, "source": src, "op": "c", "ts_ms": 1}),
        json!({"before": null, "after": {"id": 2, "city": "Rome"}, "source": src, "op": "r", "ts_ms": null}),
        json!({"before": {"id": 1, "city": "Oslo"}, "after": {"id": 1, "city": "Bergen"}, "source": src, "op": "u", "ts_ms": 2}),
        json!({"before": {"id": 2, "city": "Rome"}, "after": null, "source": src, "op": "d", "ts_ms": 3}),
    ]);
    client
        .batch_execute(&format!(
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR, score INT)
               WITH ({}) FORMAT UPSERT {avro};
             CREATE TABLE cities (id INT PRIMARY KEY, city VARCHAR)
               WITH ({}) FORMAT DEBEZIUM {avro};",
            kafka("users"),
            kafka("cdc")
        ))
        .await
        .unwrap();
    wait_for(&client, "SELECT count(*) FROM users", "2").await;
    wait_for(&client, "SELECT count(*) FROM cities", "1").await;
    assert_eq!(
        rows(&client, "SELECT * FROM users ORDER BY id").await,
        vec![vec!["1", "ann", "9"], vec!["3", "cy", "7"]]
    );
    assert_eq!(
        rows(&client, "SELECT * FROM cities").await,
        vec![vec!["1", "Bergen"]]
    );

    // Bad definitions are refused with the reason.
    let (code, msg) = error_of(
        &client,
        &format!(
            "CREATE SOURCE x WITH ({}) FORMAT PLAIN ENCODE AVRO",
            kafka("orders")
        ),
    )
    .await;
    assert_eq!(code, "22023", "{msg}");
    assert!(msg.contains("schema.registry"), "{msg}");
    let (code, msg) = error_of(
        &client,
        &format!(
            "CREATE SOURCE x WITH ({}) FORMAT PLAIN ENCODE AVRO (schema.registry = '{registry}')",
            kafka("orders")
        ),
    )
    .await;
    assert!(msg.contains("not allowed"), "{code} {msg}");
    let (code, msg) = error_of(
        &client,
        &format!(
            "CREATE SOURCE x (id BIGINT, customer BIGINT) WITH ({}) FORMAT PLAIN {avro}",
            kafka("orders")
        ),
    )
    .await;
    assert_eq!(code, "42804", "{msg}");
    assert!(msg.contains("column customer is string"), "{msg}");

    // Sinks: Debezium envelopes of a view's changes and upserts of a table, in Avro.
    client
        .batch_execute(&format!(
            "CREATE SINK status_out FROM per_status WITH ({}) FORMAT DEBEZIUM {avro};
             CREATE SINK users_out FROM users WITH ({}, primary_key = 'id') FORMAT UPSERT {avro};",
            kafka("status_out"),
            kafka("users_out")
        ))
        .await
        .unwrap();

    // After a crash the columns are those recorded at CREATE SOURCE (the registry's
    // latest schema has changed since), and every record counts once.
    peer.produce("orders", 0, &v1, orders(1, 3000, 10));
    server.kill();
    peer.produce("orders", 0, &v1, orders(1, 4000, 10));
    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT sum(n) FROM per_status", "370").await;
    assert_eq!(column_list(rows(&client, columns).await), declared);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        scalar(&client, "SELECT sum(n) FROM per_status").await,
        "370"
    );
    assert_eq!(
        rows(&client, "SELECT * FROM users ORDER BY id").await,
        vec![vec!["1", "ann", "9"], vec!["3", "cy", "7"]]
    );

    // The sinks' topics, decoded with the registered schemas by Confluent's
    // deserializer: replaying the envelopes gives the view's rows, and the last record
    // per key the table's.
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let row_of = |r: &Value| {
        ["status", "n", "ids", "amount", "notes"]
            .iter()
            .map(|c| text(&r[*c]))
            .collect::<Vec<_>>()
    };
    let mut replayed: std::collections::HashMap<Vec<String>, i64> = Default::default();
    for (key, value) in peer.consume("status_out", 3) {
        assert_eq!(key, Value::Null);
        match value["op"].as_str() {
            Some("c") => *replayed.entry(row_of(&value["after"])).or_default() += 1,
            Some("d") => *replayed.entry(row_of(&value["before"])).or_default() -= 1,
            other => panic!("op {other:?} in {value}"),
        }
    }
    replayed.retain(|_, n| *n != 0);
    let mut replayed: Vec<Vec<String>> = replayed
        .into_iter()
        .flat_map(|(row, n)| {
            assert_eq!(n, 1, "{row:?} replayed {n} times");
            Some(row)
        })
        .collect();
    replayed.sort();
    assert_eq!(
        replayed,
        rows(
            &client,
            "SELECT status, n, ids, amount, notes FROM per_status ORDER BY status"
        )
        .await
    );
    let mut users: std::collections::BTreeMap<i64, Value> = Default::default();
    for (key, value) in peer.consume("users_out", 2) {
        users.insert(key["id"].as_i64().unwrap(), value);
    }
    assert_eq!(
        users.into_iter().collect::<Vec<_>>(),
        vec![
            (1, json!({"id": 1, "name": "ann", "score": 9})),
            (3, json!({"id": 3, "name": "cy", "score": 7})),
        ]
    );
}

/// Protobuf through the same registry: Confluent's ProtobufSerializer registers
/// `shop.proto` (its import `common.proto` as a reference) and writes the wire format
/// with message indexes; a source takes its columns from the latest schema, a table
/// declares its own; bad records are logged; after SIGKILL the source keeps its columns
/// (recorded at CREATE) and counts every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_sources_and_tables_through_a_schema_registry() {
    let Ok(python) = std::env::var("SABOT_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set SABOT_PYTHON");
        eprintln!("skipped: SABOT_PYTHON not set (a Python with confluent-kafka and protobuf)");
        return;
    };
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock Kafka cluster");
    cluster.create_topic("pb", 2, 1).expect("create topic");
    let bootstrap = cluster.bootstrap_servers();
    let mut peer = Peer::start(&python, &bootstrap);
    let registry = peer.registry.clone();
    let produce = |peer: &mut Peer, partition: i32, first: i64, count: i64| {
        peer.send(
            json!({"cmd": "produce_proto", "topic": "pb", "partition": partition,
                         "first": first, "count": count}),
        );
    };
    produce(&mut peer, 0, 0, 100);
    produce(&mut peer, 1, 100, 100);
    // Malformed: not the wire format, an id the registry does not have, a cut message.
    peer.send(json!({"cmd": "produce_raw", "topic": "pb", "partition": 0,
                     "hex": ["0a0b0c", "000000006300", "00000000010202087b12"]}));

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    let proto = format!(
        "ENCODE PROTOBUF (schema.registry = '{registry}', schema.registry.username = 'sabot',
                          schema.registry.password = 's3cret', message = 'shop.Order')"
    );
    let kafka = format!(
        "connector = 'kafka', topic = 'pb', properties.bootstrap.server = '{bootstrap}',
         scan.startup.mode = 'earliest'"
    );
    client
        .batch_execute(&format!(
            "CREATE SOURCE pb WITH ({kafka}) FORMAT PLAIN {proto};
             CREATE MATERIALIZED VIEW pb_totals AS
               SELECT count(*) AS n, sum(id) AS ids, count(item) AS items,
                      count(*) FILTER (WHERE item::VARCHAR LIKE '%\"sku\":\"s' || id::VARCHAR || '\"%') AS skus,
                      count(*) FILTER (WHERE at = to_timestamp(1700000000 + id)) AS ats,
                      count(*) FILTER (WHERE (tags::VARCHAR = '[]') = (id % 3 = 0)) AS tags
               FROM pb;
             CREATE TABLE pbt (id BIGINT PRIMARY KEY, customer VARCHAR)
               WITH ({kafka}) FORMAT PLAIN {proto};"
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &client,
            "SELECT column_name, data_type FROM information_schema.columns
             WHERE table_name = 'pb' ORDER BY ordinal_position"
        )
        .await,
        [
            ["id", "bigint"],
            ["customer", "text"],
            ["item", "jsonb"],
            ["at", "timestamp with time zone"],
            ["tags", "jsonb"],
        ]
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
    let all = |n: i64| {
        vec![vec![
            n.to_string(),
            (n * (n - 1) / 2).to_string(),
            (n / 2).to_string(),
            (n / 2).to_string(),
            n.to_string(),
            n.to_string(),
        ]]
    };
    wait_for(&client, "SELECT n FROM pb_totals", "200").await;
    assert_eq!(rows(&client, "SELECT * FROM pb_totals").await, all(200));
    wait_for(&client, "SELECT count(*) FROM pbt", "200").await;
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM sabot_catalog.source_errors WHERE source = 'pb'"
        )
        .await,
        "3"
    );

    server.kill();
    produce(&mut peer, 0, 200, 50);
    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT n FROM pb_totals", "250").await;
    wait_for(&client, "SELECT count(*) FROM pbt", "250").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rows(&client, "SELECT * FROM pb_totals").await, all(250));
    assert_eq!(
        scalar(&client, "SELECT customer FROM pbt WHERE id = 249").await,
        "c1"
    );
}

/// An `https://` registry with a self-signed certificate: trusted through
/// `schema.registry.ssl.ca.location`, refused (a TLS error, not a retry) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_through_an_https_registry() {
    let Ok(python) = std::env::var("SABOT_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set SABOT_PYTHON");
        eprintln!("skipped: SABOT_PYTHON not set (a Python with confluent-kafka and cryptography)");
        return;
    };
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock Kafka cluster");
    cluster.create_topic("orders", 1, 1).expect("create topic");
    let bootstrap = cluster.bootstrap_servers();
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().display().to_string();
    let mut peer = Peer::start_with(&python, &bootstrap, &["--tls", &certs_dir]);
    let registry = peer.registry.clone();
    assert!(registry.starts_with("https://localhost:"), "{registry}");
    let ca = certs.path().join("ca.pem").display().to_string();
    peer.produce("orders", 0, &order_schema(1), orders(1, 0, 50));

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    let kafka = format!(
        "connector = 'kafka', topic = 'orders', properties.bootstrap.server = '{bootstrap}'"
    );
    let (code, message) = error_of(
        &client,
        &format!(
            "CREATE SOURCE untrusted WITH ({kafka}) FORMAT PLAIN ENCODE AVRO (
               schema.registry = '{registry}', schema.registry.username = 'sabot',
               schema.registry.password = 's3cret')"
        ),
    )
    .await;
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("TLS"), "{message}");
    client
        .batch_execute(&format!(
            "CREATE SOURCE orders WITH ({kafka}) FORMAT PLAIN ENCODE AVRO (
               schema.registry = '{registry}', schema.registry.username = 'sabot',
               schema.registry.password = 's3cret', schema.registry.ssl.ca.location = '{ca}');
             CREATE MATERIALIZED VIEW order_count AS SELECT count(*) AS n, sum(id) AS ids FROM orders;"
        ))
        .await
        .unwrap();
    wait_for(&client, "SELECT n FROM order_count", "50").await;
    assert_eq!(scalar(&client, "SELECT ids FROM order_count").await, "1225");
}
