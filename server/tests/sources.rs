//! Sources read exactly once across crashes: views over the nexmark and datagen
//! connectors are SIGKILLed mid-stream, restarted, and must end with exactly the result
//! of reading every generated row once, computed here straight from the generator. The
//! nexmark views include the operators that keep append-only state in packed entries
//! (DISTINCT values, a deduplicating top-N, session windows), so their restore is
//! checked across a crash too.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use common::{rows, scalar, wait_for, Server};
use sabot_connectors::nexmark::NexmarkConfig;
use sabot_connectors::{Options, Split};

const EVENTS: u64 = 200_000;

const BID_SOURCE: &str = "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP) \
     WITH (connector = 'nexmark', nexmark.table.type = 'Bid', nexmark.event.num = '200000', \
           nexmark.split.num = '3', nexmark.min.event.gap.in.ns = '50000')";

/// What the views must hold once every generated bid is read.
struct Expected {
    n: i64,
    sum: i64,
    /// Per channel: (count, sum of price, distinct bidders, distinct auctions).
    by_channel: BTreeMap<String, (i64, i64, usize, usize)>,
    /// Distinct (bidder, auction) pairs: the rows of a top-1 per pair.
    pairs: usize,
    /// Per-bidder sessions with a 100 ms gap.
    sessions: usize,
}

const SESSION_GAP_US: i64 = 100_000;

fn expected_bids() -> Expected {
    let config = NexmarkConfig::from_options(&Options::new([
        ("nexmark.table.type".to_string(), "Bid".to_string()),
        ("nexmark.event.num".to_string(), EVENTS.to_string()),
    ]))
    .unwrap();
    let (mut n, mut sum) = (0i64, 0i64);
    let mut by_channel: BTreeMap<String, (i64, i64, BTreeSet<i64>, BTreeSet<i64>)> =
        BTreeMap::new();
    let mut pairs: BTreeSet<(i64, i64)> = BTreeSet::new();
    let mut times: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for mut split in config.splits() {
        while let Some(b) = split.next_batch(10_000).unwrap() {
            let column = |name: &str| Arc::clone(b.column(b.schema().index_of(name).unwrap()));
            let (auction, bidder, price) = (column("auction"), column("bidder"), column("price"));
            let (auction, bidder) = (
                auction.as_primitive::<Int64Type>(),
                bidder.as_primitive::<Int64Type>(),
            );
            let price = price.as_primitive::<Int64Type>();
            let channel = column("channel");
            let channel = channel.as_string::<i32>();
            let time = column("date_time");
            let time = time.as_primitive::<TimestampMicrosecondType>();
            for r in 0..b.num_rows() {
                n += 1;
                sum += price.value(r);
                let e = by_channel.entry(channel.value(r).to_string()).or_default();
                e.0 += 1;
                e.1 += price.value(r);
                e.2.insert(bidder.value(r));
                e.3.insert(auction.value(r));
                pairs.insert((bidder.value(r), auction.value(r)));
                times
                    .entry(bidder.value(r))
                    .or_default()
                    .push(time.value(r));
            }
        }
    }
    let mut sessions = 0;
    for ts in times.values_mut() {
        ts.sort_unstable();
        sessions += 1 + ts
            .windows(2)
            .filter(|w| w[1] - w[0] >= SESSION_GAP_US)
            .count();
    }
    Expected {
        n,
        sum,
        by_channel: by_channel
            .into_iter()
            .map(|(c, (k, s, b, a))| (c, (k, s, b.len(), a.len())))
            .collect(),
        pairs: pairs.len(),
        sessions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_views_are_exact_after_a_crash_mid_stream() {
    let Expected {
        n,
        sum,
        by_channel,
        pairs,
        sessions,
    } = expected_bids();
    assert_eq!(n, 184_000, "46 of every 50 events are bids");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client.batch_execute(BID_SOURCE).await.unwrap();
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(price) AS s FROM bid;
             CREATE MATERIALIZED VIEW by_channel AS
               SELECT channel, count(*) AS n, sum(price) AS s, count(DISTINCT bidder) AS b,
                 count(DISTINCT auction) AS a FROM bid
               WHERE channel IN ('Google', 'Facebook', 'Baidu', 'Apple') GROUP BY channel;
             CREATE MATERIALIZED VIEW latest AS
               SELECT bidder, auction, date_time FROM (
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction
                   ORDER BY date_time DESC) AS rn FROM bid) t
               WHERE rn <= 1;
             CREATE MATERIALIZED VIEW sessions AS
               SELECT bidder, window_start, count(*) AS n
               FROM SESSION(bid, date_time, INTERVAL '100' MILLISECOND, bidder)
               GROUP BY bidder, window_start",
        )
        .await
        .unwrap();
    // Let part of the stream in, then crash.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before: i64 = scalar(&client, "SELECT n FROM totals")
        .await
        .parse()
        .unwrap();
    server.kill();
    assert!(
        before > 0 && before < n,
        "the crash should come mid-stream (had read {before} of {n})"
    );

    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT n FROM totals", &n.to_string()).await;
    // Give a wrongly re-read split time to show up as extra rows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rows(&client, "SELECT n, s FROM totals").await,
        vec![vec![n.to_string(), sum.to_string()]]
    );
    let want: Vec<Vec<String>> = by_channel
        .iter()
        .filter(|(c, _)| ["Google", "Facebook", "Baidu", "Apple"].contains(&c.as_str()))
        .map(|(c, (k, s, b, a))| {
            vec![
                c.clone(),
                k.to_string(),
                s.to_string(),
                b.to_string(),
                a.to_string(),
            ]
        })
        .collect();
    assert_eq!(
        rows(&client, "SELECT * FROM by_channel ORDER BY channel").await,
        want
    );
    // Each view reads the source on its own: these may still be catching up.
    wait_for(&client, "SELECT count(*) FROM latest", &pairs.to_string()).await;
    wait_for(&client, "SELECT sum(n) FROM sessions", &n.to_string()).await;
    assert_eq!(
        rows(&client, "SELECT count(*), sum(n) FROM sessions").await,
        vec![vec![sessions.to_string(), n.to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagen_sequence_is_read_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE SOURCE seq (id BIGINT, v INT, name VARCHAR) WITH (
               connector = 'datagen',
               fields.id.kind = 'sequence', fields.id.start = '1', fields.id.end = '30000',
               fields.v.min = '1', fields.v.max = '6', fields.name.length = '4',
               datagen.rows.per.second = '15000', datagen.split.num = '2');
             CREATE MATERIALIZED VIEW seen AS
               SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(id) AS s, min(v) AS lo, max(v) AS hi FROM seq;",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before: i64 = scalar(&client, "SELECT n FROM seen").await.parse().unwrap();
    server.kill();
    assert!(
        before > 0 && before < 30_000,
        "crash mid-stream (read {before})"
    );

    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT n FROM seen", "30000").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rows(&client, "SELECT * FROM seen").await,
        vec![vec![
            "30000".to_string(),
            "30000".to_string(),
            (30_000i64 * 30_001 / 2).to_string(),
            "1".to_string(),
            "6".to_string()
        ]]
    );
}

/// CSV lines `id,v,name` for ids `first..=last`, with a header.
fn csv_file(first: i64, last: i64) -> String {
    let mut s = String::from("id,v,name\n");
    for id in first..=last {
        s.push_str(&format!("{id},{},n{id}\n", id % 5));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_source_reads_new_files_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(input.path().join(name), text).unwrap();
    let mut first = csv_file(1, 1000);
    first.push_str("oops,1,x\n\n"); // a bad record and an empty line
    write("part-000.csv", &first);
    write("part-000.json", "{\"id\": 99999}\n"); // not matched by the pattern

    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE f (id BIGINT, v INT, name VARCHAR) WITH (
               connector = 'filesystem', path = '{0}', match_pattern = '*.csv',
               filesystem.split.num = '2')
             FORMAT PLAIN ENCODE CSV;
             CREATE MATERIALIZED VIEW fs_totals AS
               SELECT count(*) AS n, sum(id) AS s, count(DISTINCT id) AS ids, max(v) AS top FROM f;
             CREATE TABLE f_rows (id BIGINT, v INT, name VARCHAR) WITH (
               connector = 'filesystem', path = '{0}', match_pattern = '*.csv')
             FORMAT PLAIN ENCODE CSV;",
            input.path().display()
        ))
        .await
        .unwrap();
    wait_for(&client, "SELECT n FROM fs_totals", "1000").await;
    let errors = rows(
        &client,
        "SELECT source, record_offset, payload, split FROM sabot_catalog.source_errors WHERE source = 'f'",
    )
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0][..3], ["f", "1000", "oops,1,x"], "{errors:?}");
    assert!(errors[0][3].ends_with(":part-000.csv"), "{errors:?}");
    // Every byte of the file was read, once (the other file does not match).
    let want = format!(
        "sabot_source_bytes_total{{source=\"f\",view=\"fs_totals\"}} {}\n",
        first.len()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.http_get("/metrics").contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "want {want}: {}",
            server.http_get("/metrics")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // New files are picked up; the server dies after committing some of them, so the
    // restart must resume from the committed offsets.
    write("part-001.csv", &csv_file(1001, 20_000));
    wait_for(&client, "SELECT n FROM fs_totals", "20000").await;
    write("part-002.csv", &csv_file(20_001, 30_000));
    server.kill();

    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT n FROM fs_totals", "30000").await;
    // A last line without a newline is read once a later file shows the file is done.
    write("part-003.csv", "id,v,name\n30001,1,a\n30002,2,b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(scalar(&client, "SELECT n FROM fs_totals").await, "30001");
    write("part-004.csv", &csv_file(30_003, 30_010));
    wait_for(&client, "SELECT n FROM fs_totals", "30010").await;
    // The table reading the same files (append-only, no key) has each line once too.
    wait_for(&client, "SELECT count(*) FROM f_rows", "30010").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rows(&client, "SELECT count(DISTINCT id), sum(id) FROM f_rows").await,
        vec![vec![
            "30010".to_string(),
            (30_010i64 * 30_011 / 2).to_string()
        ]]
    );
    assert_eq!(
        rows(&client, "SELECT * FROM fs_totals").await,
        vec![vec![
            "30010".to_string(),
            (30_010i64 * 30_011 / 2).to_string(),
            "30010".to_string(),
            "4".to_string()
        ]]
    );
}

/// A Parquet file of rows `first..=last` (`id` int32, `v` double, `name`), written by
/// Apache Arrow's Parquet writer with snappy compression, two row groups.
fn parquet_file(path: &std::path::Path, first: i32, last: i32) {
    use arrow::array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    let ids: Vec<i32> = (first..=last).collect();
    let batch = RecordBatch::try_from_iter(vec![
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("n{i}")),
            )) as ArrayRef,
        ),
        (
            "v",
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| f64::from(*i) / 2.0),
            )) as ArrayRef,
        ),
        ("id", Arc::new(Int32Array::from(ids.clone())) as ArrayRef),
    ])
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ids.len().div_ceil(2).max(1)))
        .build();
    // Written under a hidden name, then renamed: a reader never sees half a file.
    let hidden = path.with_file_name(format!(".{}", path.file_name().unwrap().to_str().unwrap()));
    let file = std::fs::File::create(&hidden).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::rename(hidden, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_files_are_read_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    parquet_file(&input.path().join("p-000.parquet"), 1, 10_000);
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE pq (id BIGINT, v DOUBLE PRECISION, name VARCHAR) WITH (
               connector = 'filesystem', path = '{0}', match_pattern = '*.parquet',
               filesystem.split.num = '2')
             FORMAT PLAIN ENCODE PARQUET;
             CREATE MATERIALIZED VIEW pq_totals AS
               SELECT count(*) AS n, sum(id) AS s, count(DISTINCT name) AS names, sum(v) AS v FROM pq;
             CREATE TABLE pq_rows (id BIGINT PRIMARY KEY, name VARCHAR) WITH (
               connector = 'filesystem', path = '{0}', match_pattern = '*.parquet')
             FORMAT PLAIN ENCODE PARQUET;",
            input.path().display()
        ))
        .await
        .unwrap();
    wait_for(&client, "SELECT n FROM pq_totals", "10000").await;
    for (i, first) in [10_001, 40_001, 70_001].iter().enumerate() {
        parquet_file(
            &input.path().join(format!("p-{:03}.parquet", i + 1)),
            *first,
            first + 29_999,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT n FROM pq_totals", "100000").await;
    wait_for(&client, "SELECT count(*) FROM pq_rows", "100000").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM pq_rows WHERE name = 'n' || id::VARCHAR"
        )
        .await,
        "100000"
    );
    let n: i64 = 100_000;
    assert_eq!(
        rows(&client, "SELECT * FROM pq_totals").await,
        vec![vec![
            n.to_string(),
            (n * (n + 1) / 2).to_string(),
            n.to_string(),
            (n * (n + 1) / 4).to_string(),
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_table_from_files_applies_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let change = |op: &str, before: &str, after: &str| {
        format!(r#"{{"before": {before}, "after": {after}, "op": "{op}", "ts_ms": 1}}"#)
    };
    let row = |id: i64, qty: i64| format!(r#"{{"id": {id}, "item": "i{id}", "qty": {qty}}}"#);
    let mut lines = Vec::new();
    for id in 1..=50 {
        lines.push(change("r", "null", &row(id, id)));
    }
    for id in 1..=10 {
        lines.push(change("u", &row(id, id), &row(id, id * 100)));
    }
    for id in 41..=50 {
        lines.push(change("d", &row(id, id), "null"));
    }
    // Wrapped in a schema/payload envelope, as Kafka Connect writes with schemas on.
    lines.push(format!(
        r#"{{"schema": {{}}, "payload": {{"before": null, "after": {}, "op": "c"}}}}"#,
        row(51, 7)
    ));
    lines.push(r#"{"before": null, "after": null, "op": "x"}"#.to_string());
    lines.push("not json".to_string());
    std::fs::write(input.path().join("changes-1.json"), lines.join("\n") + "\n").unwrap();

    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, item VARCHAR, qty BIGINT) WITH (
               connector = 'filesystem', path = '{}') FORMAT DEBEZIUM ENCODE JSON;
             CREATE MATERIALIZED VIEW order_total AS SELECT count(*) AS n, sum(qty) AS q FROM orders;",
            input.path().display()
        ))
        .await
        .unwrap();
    let q: i64 = (1..=10).map(|i| i * 100).sum::<i64>() + (11..=40).sum::<i64>() + 7;
    wait_for(&client, "SELECT q FROM order_total", &q.to_string()).await;
    assert_eq!(scalar(&client, "SELECT n FROM order_total").await, "41");
    assert_eq!(
        rows(
            &client,
            "SELECT id, item, qty FROM orders WHERE id IN (1, 40, 41, 51) ORDER BY id"
        )
        .await,
        vec![
            vec!["1".to_string(), "i1".to_string(), "100".to_string()],
            vec!["40".to_string(), "i40".to_string(), "40".to_string()],
            vec!["51".to_string(), "i51".to_string(), "7".to_string()],
        ]
    );
    let errors = rows(
        &client,
        "SELECT source, record_offset, payload FROM sabot_catalog.source_errors ORDER BY record_offset",
    )
    .await;
    assert_eq!(
        errors,
        vec![
            vec!["orders".to_string(), "71".to_string(), "x".to_string()],
            vec![
                "orders".to_string(),
                "72".to_string(),
                "not json".to_string()
            ],
        ]
    );
    // A later change file is picked up; rows keep their keys.
    std::fs::write(
        input.path().join("changes-2.json"),
        change("d", &row(51, 7), "null") + "\n",
    )
    .unwrap();
    wait_for(&client, "SELECT n FROM order_total", "40").await;
}
