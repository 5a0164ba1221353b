//! Crash recovery: the `sabot` process is SIGKILLed at several points (right after a
//! FLUSH, with unflushed writes in flight, in the middle of a large checkpoint) and
//! restarted on the same data dir. After each restart:
//!
//! - the table holds exactly the state after some prefix of the statements sent, and at
//!   least everything acknowledged before the last completed FLUSH;
//! - every view equals its query recomputed over that table state (computed here in
//!   Rust, independently of Sabot);
//! - views keep updating correctly from new writes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Lcg, Server};
use tokio_postgres::Client;

type Table = BTreeMap<i64, (String, i64)>;

/// One DML statement and its effect on the model.
fn random_statement(rng: &mut Lcg, table: &mut Table) -> String {
    let id = rng.below(60) as i64;
    let k = format!("k{}", rng.below(5));
    let v = rng.below(1000) as i64 - 200;
    match (table.contains_key(&id), rng.below(3)) {
        (false, _) => {
            table.insert(id, (k.clone(), v));
            format!("INSERT INTO t VALUES ({id}, '{k}', {v})")
        }
        (true, 0) => {
            table.remove(&id);
            format!("DELETE FROM t WHERE id = {id}")
        }
        (true, _) => {
            table.insert(id, (k.clone(), v));
            format!("UPDATE t SET k = '{k}', v = {v} WHERE id = {id}")
        }
    }
}

async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = client.simple_query(sql).await.expect(sql);
    let mut out: Vec<Vec<Option<String>>> = msgs
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn table_rows(t: &Table) -> Vec<Vec<Option<String>>> {
    let mut r: Vec<_> = t
        .iter()
        .map(|(id, (k, v))| vec![s(id), s(k), s(v)])
        .collect();
    r.sort();
    r
}

/// SELECT k, count(*), sum(v), min(v), max(v) FROM t GROUP BY k
fn agg_rows(t: &Table) -> Vec<Vec<Option<String>>> {
    let mut g: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (k, v) in t.values() {
        g.entry(k).or_default().push(*v);
    }
    let mut r: Vec<_> = g
        .into_iter()
        .map(|(k, vs)| {
            vec![
                s(k),
                s(vs.len()),
                s(vs.iter().sum::<i64>()),
                s(vs.iter().min().unwrap()),
                s(vs.iter().max().unwrap()),
            ]
        })
        .collect();
    r.sort();
    r
}

/// SELECT a.id, b.id FROM t a JOIN t b ON a.k = b.k WHERE a.v > 500 AND b.v < 0
fn join_rows(t: &Table) -> Vec<Vec<Option<String>>> {
    let mut r = Vec::new();
    for (ia, (ka, va)) in t {
        for (ib, (kb, vb)) in t {
            if ka == kb && *va > 500 && *vb < 0 {
                r.push(vec![s(ia), s(ib)]);
            }
        }
    }
    r.sort();
    r
}

/// Checks that the server holds one of `states[from..]` exactly, with views consistent.
/// Returns the index of the state found.
async fn check_recovered(client: &Client, states: &[Table], from: usize) -> usize {
    let got = rows(client, "SELECT id, k, v FROM t").await;
    let idx = (from..states.len())
        .rev()
        .find(|i| table_rows(&states[*i]) == got)
        .unwrap_or_else(|| {
            panic!(
                "recovered table matches no state from {from} to {}: {} rows",
                states.len() - 1,
                got.len()
            )
        });
    let t = &states[idx];
    assert_eq!(
        rows(client, "SELECT * FROM agg").await,
        agg_rows(t),
        "agg after recovery"
    );
    assert_eq!(
        rows(client, "SELECT * FROM pairs").await,
        join_rows(t),
        "join after recovery"
    );
    assert_eq!(
        rows(client, "SELECT * FROM agg_total").await,
        vec![vec![s(t.len())]],
        "view on view after recovery"
    );
    idx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_at_any_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(42);
    let mut model = Table::new();
    // states[i] is the table after the first i statements.
    let mut states = vec![model.clone()];

    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, k TEXT, v BIGINT);
             CREATE MATERIALIZED VIEW agg AS SELECT k, count(*) AS c, sum(v) AS s, min(v) AS mn, max(v) AS mx FROM t GROUP BY k;
             CREATE MATERIALIZED VIEW pairs AS SELECT a.id AS a, b.id AS b FROM t a JOIN t b ON a.k = b.k WHERE a.v > 500 AND b.v < 0;
             CREATE MATERIALIZED VIEW agg_total AS SELECT sum(c) AS n FROM agg;",
        )
        .await
        .unwrap();
    let mut server = Some(server);
    let mut client = client;
    let mut flushed = 0usize;

    // Kill points: after a FLUSH, mid-stream (unflushed writes), and during a big checkpoint.
    for round in 0..4 {
        for _ in 0..120 {
            let stmt = random_statement(&mut rng, &mut model);
            client.batch_execute(&stmt).await.unwrap();
            states.push(model.clone());
        }
        match round {
            0 | 2 => {
                client.batch_execute("FLUSH").await.unwrap();
                flushed = states.len() - 1;
            }
            1 => {
                // A few more writes not covered by any FLUSH.
                for _ in 0..15 {
                    let stmt = random_statement(&mut rng, &mut model);
                    client.batch_execute(&stmt).await.unwrap();
                    states.push(model.clone());
                }
            }
            _ => {
                // A large statement whose checkpoint is cut short.
                let base = 1000 + round as i64 * 100_000;
                let values: Vec<String> = (0..20_000)
                    .map(|i| format!("({}, 'k{}', {})", base + i, i % 5, i % 997))
                    .collect();
                client
                    .batch_execute(&format!("INSERT INTO t VALUES {}", values.join(",")))
                    .await
                    .unwrap();
                for i in 0..20_000 {
                    model.insert(base + i, (format!("k{}", i % 5), i % 997));
                }
                states.push(model.clone());
                let c2 = server.as_ref().unwrap().connect().await;
                tokio::spawn(async move {
                    let _ = c2.batch_execute("FLUSH").await;
                });
                tokio::time::sleep(Duration::from_millis(5 + rng.below(40))).await;
            }
        }
        server.take().unwrap().kill();

        let restarted = Server::start(dir.path());
        client = restarted.connect().await;
        let idx = check_recovered(&client, &states, flushed).await;
        // Continue from what survived: later statements were lost with the crash.
        states.truncate(idx + 1);
        model = states[idx].clone();
        server = Some(restarted);

        // Views keep updating after recovery.
        for _ in 0..30 {
            let stmt = random_statement(&mut rng, &mut model);
            client.batch_execute(&stmt).await.unwrap();
            states.push(model.clone());
        }
        client.batch_execute("FLUSH").await.unwrap();
        flushed = states.len() - 1;
        let idx = check_recovered(&client, &states, flushed).await;
        assert_eq!(idx, states.len() - 1);
    }
    server.take().unwrap().kill();
}
