//! The `gpu` setting over pgwire, and views whose aggregations, filters and joins the GPU
//! computes giving the same rows as the same views on the CPU, through inserts, updates,
//! deletes and a restart. Without a GPU (CI) `gpu = on` must refuse to create a view and `auto` runs on
//! the CPU; on the GPU machine (`SABOT_GPU_LIBRARY` set, see gpu/README.md) the `auto`
//! views run on the GPU and are checked against the `off` ones.

mod common;

use common::{same_multiset, scalar, Lcg, Server};
use tokio_postgres::Client;

const QUERIES: [(&str, &str); 5] = [
    (
        "by_k",
        "SELECT k, count(*) AS n, count(v) AS nv, sum(v) AS sv, avg(v) AS av, sum(f) AS sf, \
         sum(v) FILTER (WHERE v > 0) AS sp FROM t GROUP BY k",
    ),
    (
        "by_s",
        "SELECT s, k % 3 AS m, count(*) AS n, sum(v) AS sv, avg(f) AS af FROM t GROUP BY s, k % 3",
    ),
    (
        "filtered",
        "SELECT id, k, s, v, f FROM t WHERE (k % 3 = 1 OR k IN (5, 7)) AND v IS NOT NULL",
    ),
    (
        "filtered_sums",
        "SELECT k, count(*) AS n, sum(v) AS sv FROM t WHERE id % 4 <> 0 AND NOT (k > 150) GROUP BY k",
    ),
    (
        "joined",
        "SELECT t.id, t.k, u.id AS uid, t.v, u.w FROM t JOIN u ON t.k = u.k AND t.s = u.s \
         WHERE u.w > 10",
    ),
];

async fn sqlstate(client: &Client, sql: &str) -> (String, String) {
    let err = client.simple_query(sql).await.expect_err(sql);
    let db = err.as_db_error().expect("a server error");
    (db.code().code().to_string(), db.message().to_string())
}

/// The GPU views hold what the CPU views hold.
async fn compare(client: &Client, when: &str) {
    for (name, _) in QUERIES {
        let cpu = common::nullable_rows(client, &format!("SELECT * FROM cpu_{name}")).await;
        let gpu = common::nullable_rows(client, &format!("SELECT * FROM gpu_{name}")).await;
        assert!(
            !cpu.is_empty() || when == "empty",
            "{when}: cpu_{name} is empty"
        );
        assert!(
            same_multiset(cpu.clone(), gpu.clone()),
            "{when}: gpu_{name} differs from cpu_{name}\ncpu: {cpu:?}\ngpu: {gpu:?}"
        );
    }
}

/// A round of changes: new rows, updates and deletes, each in one statement; `u` changes
/// between `t`'s statements, so that some epochs change both sides of the join.
async fn churn(client: &Client, r: &mut Lcg, next_id: &mut i64, round: i64) {
    let mut joined = Vec::new();
    for _ in 0..80 {
        let k = r.below(220);
        let w = if r.below(8) == 0 {
            "NULL".to_string()
        } else {
            r.below(100).to_string()
        };
        joined.push(format!("({}, {k}, 's{}', {w})", *next_id, k % 17));
        *next_id += 1;
    }
    client
        .batch_execute(&format!("INSERT INTO u VALUES {}", joined.join(", ")))
        .await
        .expect("insert into u");
    let mut values = Vec::new();
    for _ in 0..3000 {
        let k = r.below(200);
        // Values past 32 bits, negative ones, and NULLs.
        let v = if r.below(10) == 0 {
            "NULL".to_string()
        } else {
            ((r.below(2_000_001) as i64 - 1_000_000) * 1_000_003).to_string()
        };
        let f = (r.below(1_000_000) as f64) / 64.0;
        values.push(format!("({}, {k}, 's{}', {v}, {f})", *next_id, k % 17));
        *next_id += 1;
    }
    client
        .batch_execute(&format!("INSERT INTO t VALUES {}", values.join(", ")))
        .await
        .expect("insert");
    client
        .batch_execute(&format!(
            "UPDATE t SET v = v + 7 WHERE id % 5 = {}",
            round % 5
        ))
        .await
        .expect("update");
    client
        .batch_execute(&format!(
            "UPDATE u SET w = w + 3 WHERE id % 7 = {}",
            round % 7
        ))
        .await
        .expect("update u");
    client
        .batch_execute(&format!("DELETE FROM t WHERE id % 13 = {}", round % 13))
        .await
        .expect("delete");
    client
        .batch_execute(&format!("DELETE FROM u WHERE id % 11 = {}", round % 11))
        .await
        .expect("delete from u");
    client.batch_execute("FLUSH").await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_views_match_cpu_views() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    assert_eq!(scalar(&client, "SHOW gpu").await, "auto");
    let device = scalar(&client, "SHOW gpu_device").await;
    let has_gpu = !device.starts_with("none");
    eprintln!("gpu_device: {device}");

    assert_eq!(sqlstate(&client, "SET gpu = sometimes").await.0, "22023");
    assert_eq!(sqlstate(&client, "SET gpu_min_rows = 0").await.0, "22023");
    assert_eq!(
        scalar(&client, "SHOW gpu").await,
        "auto",
        "a refused SET changes nothing"
    );

    client
        .batch_execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, k INT, s TEXT, v BIGINT, f DOUBLE PRECISION); \
             CREATE TABLE u (id BIGINT PRIMARY KEY, k INT, s TEXT, w BIGINT)",
        )
        .await
        .unwrap();
    let mut r = Lcg(42);
    let mut next_id = 0;
    churn(&client, &mut r, &mut next_id, 0).await;

    client.batch_execute("SET gpu = off").await.unwrap();
    for (name, q) in QUERIES {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW cpu_{name} AS {q}"))
            .await
            .unwrap();
    }
    client.batch_execute("SET gpu = on").await.unwrap();
    if !has_gpu {
        let (code, message) = sqlstate(
            &client,
            &format!("CREATE MATERIALIZED VIEW gpu_by_k AS {}", QUERIES[0].1),
        )
        .await;
        assert_eq!(code, "55000", "{message}");
        assert!(message.contains("no GPU"), "{message}");
        client.batch_execute("SET gpu = auto").await.unwrap();
    }
    // Every run of changes goes to the GPU, however small.
    client.batch_execute("SET gpu_min_rows = 1").await.unwrap();
    let explain = common::rows(
        &client,
        &format!("EXPLAIN CREATE MATERIALIZED VIEW x AS {}", QUERIES[0].1),
    )
    .await
    .concat()
    .join("\n");
    assert_eq!(explain.contains("on GPU"), has_gpu, "{explain}");
    let explain = common::rows(
        &client,
        &format!("EXPLAIN CREATE MATERIALIZED VIEW x AS {}", QUERIES[2].1),
    )
    .await
    .concat()
    .join("\n");
    assert_eq!(
        explain.contains("Filter") && explain.contains("on GPU"),
        has_gpu,
        "{explain}"
    );
    let explain = common::rows(
        &client,
        &format!("EXPLAIN CREATE MATERIALIZED VIEW x AS {}", QUERIES[4].1),
    )
    .await
    .concat()
    .join("\n");
    let join_line = explain
        .lines()
        .find(|l| l.contains("HashJoin"))
        .unwrap_or_else(|| panic!("no HashJoin in {explain}"));
    assert_eq!(join_line.contains("on GPU"), has_gpu, "{explain}");
    for (name, q) in QUERIES {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW gpu_{name} AS {q}"))
            .await
            .unwrap();
    }
    compare(&client, "after the backfill").await;
    for round in 1..6 {
        churn(&client, &mut r, &mut next_id, round).await;
        compare(&client, &format!("round {round}")).await;
    }

    // A restart keeps each view's setting (and recovers its state exactly).
    drop(client);
    server.kill();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    compare(&client, "after the restart").await;
    for round in 6..9 {
        churn(&client, &mut r, &mut next_id, round).await;
        compare(&client, &format!("round {round} after the restart")).await;
    }
}
