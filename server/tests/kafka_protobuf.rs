//! Protobuf records from Kafka (librdkafka's mock cluster). The independent peer,
//! `proto_peer.py`, builds the descriptor set and serializes the messages with Google's
//! protobuf runtime and produces them with confluent-kafka. Needs `SABOT_PYTHON`: a
//! Python with `protobuf` and `confluent-kafka`.

mod common;

use std::process::Command;

use common::{rows, wait_for, Server};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_messages_from_a_descriptor_set() {
    let Ok(python) = std::env::var("SABOT_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set SABOT_PYTHON");
        eprintln!("skipped: SABOT_PYTHON not set (a Python with protobuf and confluent-kafka)");
        return;
    };
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock Kafka cluster");
    cluster.create_topic("orders", 1, 1).expect("create topic");
    let bootstrap = cluster.bootstrap_servers();
    let schemas = tempfile::tempdir().unwrap();
    let peer = Command::new(&python)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proto_peer.py"),
            &bootstrap,
            "orders",
            schemas.path().to_str().unwrap(),
            "100",
        ])
        .output()
        .expect("SABOT_PYTHON runs proto_peer.py");
    assert!(
        peer.status.success(),
        "proto_peer.py: {}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let location = format!("file://{}/shop.pb", schemas.path().display());

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    let with = format!(
        "WITH (connector = 'kafka', topic = 'orders', properties.bootstrap.server = '{bootstrap}')
         FORMAT PLAIN ENCODE PROTOBUF (message = 'shop.Order', schema.location = '{location}')"
    );
    // Columns from the message's fields.
    client
        .batch_execute(&format!(
            "CREATE SOURCE orders {with};
             CREATE MATERIALIZED VIEW totals AS
               SELECT count(*) AS n, sum(id) AS ids, sum(big) AS big, count(qty) AS qtys,
                      sum(delta) AS delta, count(item) AS items, sum(price) AS price,
                      count(*) FILTER (WHERE status = 'NEW') AS new,
                      count(*) FILTER (WHERE paid) AS paid
               FROM orders;
             CREATE MATERIALIZED VIEW five AS
               SELECT customer, status, tags, item, at, qty, raw FROM orders WHERE id = 5 OR id = 10;"
        ))
        .await
        .unwrap();
    let columns: Vec<String> = rows(
        &client,
        "SELECT column_name || ' ' || data_type FROM information_schema.columns
         WHERE table_name = 'orders' ORDER BY ordinal_position",
    )
    .await
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    assert_eq!(
        columns,
        vec![
            "id bigint",
            "customer text",
            "big numeric",
            "delta integer",
            "price double precision",
            "paid boolean",
            "raw bytea",
            "status text",
            "tags jsonb",
            "item jsonb",
            "at timestamp with time zone",
            "qty integer",
        ]
    );
    wait_for(&client, "SELECT n FROM totals", "100").await;
    assert_eq!(
        rows(&client, "SELECT * FROM totals").await,
        vec![vec![
            "100",
            "4950",
            // 100 × 2^63 + 4950: uint64 beyond bigint reads as NUMERIC.
            "922337203685477585750",
            "50",
            "-4950",
            "20",
            "2475",
            "50",
            "50"
        ]]
    );
    assert_eq!(
        rows(&client, "SELECT * FROM five ORDER BY customer").await,
        vec![
            vec![
                "c1",
                "PAID",
                r#"["t0", "t1"]"#,
                r#"{"n": 5, "sku": "s5"}"#,
                "2023-11-14 22:13:25.5+00",
                "NULL",
                "\\x05"
            ],
            vec![
                "c2",
                // NEW is 0, the default: proto3 leaves it off the wire.
                "NEW",
                r#"["t0"]"#,
                r#"{"n": 10, "sku": "s10"}"#,
                "2023-11-14 22:13:30.5+00",
                "10",
                "\\x0a"
            ],
        ]
    );
    let errors = rows(
        &client,
        "SELECT record_offset, error FROM sabot_catalog.source_errors
         WHERE source = 'orders' ORDER BY record_offset",
    )
    .await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0][0], "100");
    assert!(errors[0][1].contains("wire type 7"), "{errors:?}");
    assert!(errors[1][1].contains("ends early"), "{errors:?}");

    // Declared columns: by name, a column the message lacks is NULL.
    client
        .batch_execute(&format!(
            "CREATE SOURCE some (id BIGINT, status TEXT, missing INT) {with};
             CREATE MATERIALIZED VIEW some_v AS
               SELECT count(*) AS n, count(missing) AS m, max(status) AS s FROM some;"
        ))
        .await
        .unwrap();
    wait_for(&client, "SELECT n FROM some_v", "100").await;
    assert_eq!(
        rows(&client, "SELECT * FROM some_v").await,
        vec![vec!["100", "0", "PAID"]]
    );
    let e = client
        .batch_execute(&format!("CREATE SOURCE bad (customer BIGINT) {with}"))
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "42804", "{}", db.message());
    assert!(
        db.message().contains("column customer is Utf8"),
        "{}",
        db.message()
    );
}
