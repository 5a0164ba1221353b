//! Sinks write each change exactly once across crashes: a nexmark stream feeds an
//! append-only view (FORMAT PLAIN) and an aggregate (FORMAT DEBEZIUM) into filesystem
//! sinks; the server crashes mid-stream three times (at failpoints before and after an
//! epoch with sink output commits, then by SIGKILL) and is restarted. Afterwards the plain sink's
//! lines must be exactly the matching bids from the generator, and replaying the
//! Debezium sink's inserts and deletes must give exactly the view's final rows. The
//! same two queries also run as `CREATE SINK ... AS` (their own dataflows, no view in
//! between), and their output must be the same.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::{rows, scalar, wait_for, Server};
use sabot_connectors::nexmark::NexmarkConfig;
use sabot_connectors::{Options, Split};
use serde_json::Value;

const EVENTS: u64 = 200_000;

/// Every committed line of a filesystem sink, file by file in epoch order.
fn sink_lines(dir: &Path) -> Vec<Value> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("part-") && n.ends_with(".jsonl"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let text = std::fs::read_to_string(dir.join(&n)).unwrap();
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{n}: {e}: {line}")));
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".to_string(),
        other => other.to_string(),
    }
}

/// Bids with `price % 10 = 3`, as (auction, bidder, price) → how many times.
fn expected_plain() -> BTreeMap<(i64, i64, i64), i64> {
    let config = NexmarkConfig::from_options(&Options::new([
        ("nexmark.table.type".to_string(), "Bid".to_string()),
        ("nexmark.event.num".to_string(), EVENTS.to_string()),
    ]))
    .unwrap();
    let mut out = BTreeMap::new();
    for mut split in config.splits() {
        while let Some(b) = split.next_batch(10_000).unwrap() {
            let auction = b.column(0).as_primitive::<Int64Type>();
            let bidder = b.column(1).as_primitive::<Int64Type>();
            let price = b.column(2).as_primitive::<Int64Type>();
            for r in 0..b.num_rows() {
                if price.value(r) % 10 == 3 {
                    *out.entry((auction.value(r), bidder.value(r), price.value(r)))
                        .or_default() += 1;
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_sinks_write_each_change_once_across_a_crash() {
    let want_plain = expected_plain();
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let plain_dir = out.path().join("plain");
    let agg_dir = out.path().join("agg");
    let plain_direct = out.path().join("plain_direct");
    let agg_direct = out.path().join("agg_direct");
    // First run: the server crashes after the 20th epoch whose sink output is prepared,
    // before that epoch commits (its pending files must be thrown away).
    let server = Server::start_with_env(dir.path(), &[("SABOT_FAILPOINTS", "sink-prepared@20")]);
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP)
               WITH (connector = 'nexmark', nexmark.table.type = 'Bid', nexmark.event.num = '{EVENTS}',
                     nexmark.split.num = '3', nexmark.min.event.gap.in.ns = '50000');
             CREATE MATERIALIZED VIEW picked AS SELECT auction, bidder, price FROM bid WHERE price % 10 = 3;
             CREATE MATERIALIZED VIEW by_channel AS
               SELECT channel, count(*) AS n, sum(price) AS s FROM bid GROUP BY channel;
             CREATE SINK picked_out FROM picked
               WITH (connector = 'filesystem', path = '{}') FORMAT PLAIN ENCODE JSON;
             CREATE SINK channel_out FROM by_channel
               WITH (connector = 'filesystem', path = '{}') FORMAT DEBEZIUM ENCODE JSON;
             CREATE SINK picked_direct AS SELECT auction, bidder, price FROM bid WHERE price % 10 = 3
               WITH (connector = 'filesystem', path = '{}') FORMAT PLAIN ENCODE JSON;
             CREATE SINK channel_direct AS
               SELECT channel, count(*) AS n, sum(price) AS s FROM bid GROUP BY channel
               WITH (connector = 'filesystem', path = '{}') FORMAT DEBEZIUM ENCODE JSON;",
            plain_dir.display(),
            agg_dir.display(),
            plain_direct.display(),
            agg_direct.display()
        ))
        .await
        .unwrap();
    server.wait_exit(60);
    let pending = [&plain_dir, &agg_dir]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".pending")
        })
        .count();
    assert!(
        pending > 0,
        "the crash should leave prepared, uncommitted output"
    );
    // Second run: a crash after the epoch commits, before its files are renamed (they
    // must be published on restart).
    let server = Server::start_with_env(dir.path(), &[("SABOT_FAILPOINTS", "sink-committed@5")]);
    server.wait_exit(60);
    // Third run: SIGKILL at some moment.
    let server = Server::start(dir.path());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let written = sink_lines(&plain_dir).len();
    server.kill();
    let total: i64 = want_plain.values().sum();
    assert!(
        written > 0 && (written as i64) < total,
        "the crashes should come while the sink writes ({written} of {total} lines)"
    );

    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(
        &client,
        "SELECT sum(n) FROM by_channel",
        &(EVENTS * 46 / 50).to_string(),
    )
    .await;
    client.batch_execute("FLUSH").await.unwrap();
    // Give a wrongly replayed epoch time to show up as extra lines.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for dir in [&plain_dir, &plain_direct] {
        let mut got_plain: BTreeMap<(i64, i64, i64), i64> = BTreeMap::new();
        for v in sink_lines(dir) {
            let n = |k: &str| v[k].as_i64().unwrap_or_else(|| panic!("{k} in {v}"));
            *got_plain
                .entry((n("auction"), n("bidder"), n("price")))
                .or_default() += 1;
        }
        assert_eq!(
            got_plain.values().sum::<i64>(),
            total,
            "plain sink line count in {}",
            dir.display()
        );
        assert!(
            got_plain == want_plain,
            "plain sink lines in {} differ from the generator's bids",
            dir.display()
        );
    }
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM picked").await,
        total.to_string()
    );

    // Replaying the changelog gives the view.
    let want_agg = rows(
        &client,
        "SELECT channel, n, s FROM by_channel ORDER BY channel",
    )
    .await;
    for dir in [&agg_dir, &agg_direct] {
        let replayed = replay(dir);
        assert_eq!(replayed, want_agg, "replay of {}", dir.display());
        assert!(
            sink_lines(dir).len() > replayed.len(),
            "the aggregate sink should carry updates, not only final rows"
        );
    }
}

/// The rows a Debezium changelog of (channel, n, s) leaves, sorted.
fn replay(dir: &Path) -> Vec<Vec<String>> {
    let mut replayed: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for v in sink_lines(dir) {
        let (row, w) = match v["op"].as_str() {
            Some("c") => (&v["after"], 1),
            Some("d") => (&v["before"], -1),
            other => panic!("op {other:?} in {v}"),
        };
        let key = vec![text(&row["channel"]), text(&row["n"]), text(&row["s"])];
        *replayed.entry(key).or_default() += w;
    }
    replayed.retain(|_, w| *w != 0);
    assert!(replayed.values().all(|w| *w == 1), "{replayed:?}");
    replayed.into_keys().collect()
}
