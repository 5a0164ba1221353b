//! PostgreSQL as the oracle: the same random DML goes to a real PostgreSQL server and to
//! Sabot. Every query shape is a Sabot materialized view created *before* the DML (so it
//! is maintained incrementally, never backfilled) and a plain query in PostgreSQL. After
//! every few hundred statements Sabot FLUSHes and each view is compared with PostgreSQL's
//! answer as a multiset (floats within a relative tolerance). Midway through, Sabot is
//! SIGKILLed and restarted. Sabot runs with 2 workers.
//!
//! Needs PostgreSQL's server binaries (Debian package `postgresql`; `.ci/run` installs it).

mod common;

use common::postgres::Postgres;
use common::{same_multiset, Lcg, Server};
use tokio_postgres::{Client, SimpleQueryMessage};

/// (name, query). In Sabot each becomes `CREATE MATERIALIZED VIEW name AS query`.
const SHAPES: &[(&str, &str)] = &[
    ("q01_filter", "SELECT id, k, v FROM a WHERE v > 10"),
    ("q02_group", "SELECT k, count(*) AS c, sum(v) AS s, min(v) AS mn, max(v) AS mx FROM a GROUP BY k"),
    ("q03_avg", "SELECT k, avg(v) AS av FROM a GROUP BY k"),
    ("q04_global", "SELECT count(*) AS c, sum(v) AS s, min(s) AS ms FROM a"),
    ("q05_join", "SELECT a.id AS aid, b.id AS bid, a.v + b.w AS vw FROM a JOIN b ON a.k = b.a_k"),
    ("q06_join_group", "SELECT a.k, count(*) AS c FROM a JOIN b ON a.k = b.a_k GROUP BY a.k"),
    ("q07_bag_join", "SELECT c.label, count(*) AS n FROM c JOIN a ON c.k = a.k GROUP BY c.label"),
    (
        "q08_three_way",
        "SELECT a.id, b.w, c.label FROM a JOIN b ON a.k = b.a_k JOIN c ON c.k = b.a_k WHERE a.v < b.w",
    ),
    ("q09_having", "SELECT k, count(*) AS n FROM c GROUP BY k HAVING count(*) > 1"),
    ("q10_distinct", "SELECT DISTINCT k FROM c"),
    ("q11_exprs", "SELECT id, upper(s) AS us, coalesce(v, -1) * 2 AS v2, length(s) AS ls FROM a"),
    (
        "q12_case_group",
        "SELECT CASE WHEN v > 50 THEN 'hi' WHEN v IS NULL THEN 'none' ELSE 'lo' END AS band, count(*) AS n, sum(v) AS s FROM a GROUP BY 1",
    ),
    ("q13_union_all", "SELECT k FROM a UNION ALL SELECT k FROM c"),
    ("q14_count_distinct", "SELECT count(DISTINCT k) AS n FROM c"),
    ("q15_self_join", "SELECT a1.id AS x, a2.id AS y FROM a a1 JOIN a a2 ON a1.k = a2.k AND a1.id < a2.id"),
    ("q16_join_minmax", "SELECT b.a_k, max(b.w) AS mw, min(a.s) AS ms FROM b JOIN a ON a.k = b.a_k GROUP BY b.a_k"),
    (
        "q17_subquery",
        "SELECT k, cnt FROM (SELECT k, count(*) AS cnt FROM a GROUP BY k) t WHERE cnt > 2",
    ),
    ("q18_text_group", "SELECT s, sum(v) AS sv, count(v) AS cv FROM a WHERE s IS NOT NULL GROUP BY s"),
    ("q19_two_keys", "SELECT a.k, sum(b.w) AS sw FROM a JOIN b ON a.k = b.a_k AND a.v = b.w GROUP BY a.k"),
    ("q20_where_join", "SELECT a.id, c.label FROM a, c WHERE a.k = c.k AND c.label <> 'x'"),
    ("q21_agg_of_join_agg", "SELECT n, count(*) AS groups FROM (SELECT a.k, count(*) AS n FROM a JOIN c ON a.k = c.k GROUP BY a.k) t GROUP BY n"),
    ("q23_left", "SELECT a.id, b.id AS bid FROM a LEFT JOIN b ON a.k = b.a_k"),
    ("q24_right", "SELECT a.id, b.id AS bid, b.w FROM a RIGHT JOIN b ON a.k = b.a_k"),
    ("q25_full", "SELECT a.id, c.label FROM a FULL JOIN c ON a.k = c.k"),
    ("q26_in", "SELECT id, v FROM a WHERE k IN (SELECT a_k FROM b)"),
    ("q27_exists", "SELECT id FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.a_k = a.k AND b.w > 50)"),
    ("q28_not_exists", "SELECT id, k FROM a WHERE NOT EXISTS (SELECT 1 FROM c WHERE c.k = a.k)"),
    ("q29_left_group", "SELECT a.k, count(b.id) AS n, count(*) AS c FROM a LEFT JOIN b ON a.k = b.a_k GROUP BY a.k"),
    ("q30_filter", "SELECT k, count(*) FILTER (WHERE v > 50) AS hi, sum(v) FILTER (WHERE s = 's1') AS s1, count(*) AS n FROM a GROUP BY k"),
    ("q31_bool", "SELECT k, bool_and(v > 10) AS all_big, bool_or(s IS NULL) AS any_null FROM a GROUP BY k"),
    ("q32_union", "SELECT k FROM a UNION SELECT k FROM c"),
    ("q33_intersect", "SELECT k, v FROM a INTERSECT SELECT a_k, w FROM b"),
    ("q34_except", "SELECT k, label FROM c EXCEPT SELECT k, s FROM a"),
    ("q36_correlated_scalar", "SELECT a.id, (SELECT count(*) FROM b WHERE b.a_k = a.k) AS n FROM a"),
    ("q37_cross_small", "SELECT x.k, y.label FROM (SELECT DISTINCT k FROM a) x, (SELECT DISTINCT label FROM c) y"),
    ("q38_left_beyond_keys", "SELECT a.id, b.id AS bid FROM a LEFT JOIN b ON a.k = b.a_k AND b.w > a.v"),
    ("q39_full_beyond_keys", "SELECT a.id, b.id AS bid FROM a FULL JOIN b ON a.k = b.a_k AND a.v < b.w"),
    ("q40_exists_beyond_keys", "SELECT id FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.a_k = a.k AND b.w > a.v)"),
    ("q41_not_exists_beyond_keys", "SELECT id, v FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.a_k = a.k AND b.w < a.v)"),
    ("q42_not_in", "SELECT id, k FROM a WHERE k NOT IN (SELECT a_k FROM b WHERE w > 95)"),
    ("q43_not_in_filtered", "SELECT id, v FROM a WHERE v NOT IN (SELECT w FROM b WHERE w > 50)"),
    ("q44_scalar_where", "SELECT id, v FROM a WHERE v > (SELECT avg(w) FROM b)"),
    ("q45_scalar_select", "SELECT k, count(*) AS n, (SELECT count(*) FROM c) AS total FROM a GROUP BY k"),
    ("q46_top_n", "SELECT id, v FROM a ORDER BY v DESC NULLS LAST, id LIMIT 5"),
    ("q47_top_n_offset", "SELECT id, k FROM a ORDER BY k NULLS FIRST, id LIMIT 4 OFFSET 3"),
    ("q48_row_number", "SELECT k, id, v, rn FROM (SELECT k, id, v, row_number() OVER (PARTITION BY k ORDER BY v DESC, id) AS rn FROM a) t WHERE rn <= 2"),
    ("q49_distinct_on", "SELECT DISTINCT ON (a_k) a_k, id, w FROM b ORDER BY a_k, w DESC NULLS LAST, id"),
    ("q50_dedup", "SELECT k, label FROM (SELECT k, label, row_number() OVER (PARTITION BY k ORDER BY label) AS rn FROM c) t WHERE rn = 1"),
    ("q51_distinct_aggs", "SELECT k, count(DISTINCT v) AS dv, sum(DISTINCT v) AS sv, avg(DISTINCT v) AS av FROM a GROUP BY k"),
    ("q52_string_array_agg", "SELECT k, string_agg(s, ',' ORDER BY s, id) AS ss, array_agg(v ORDER BY id) AS vs FROM a GROUP BY k"),
    ("q53_stddev", "SELECT k, stddev(v) AS sd, var_pop(v) AS vp FROM b JOIN a ON a.k = b.a_k GROUP BY k"),
    ("q54_running_sum", "SELECT id, k, sum(v) OVER (PARTITION BY k ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS rs FROM a"),
    ("q55_lag_lead", "SELECT id, lag(v) OVER (PARTITION BY k ORDER BY id) AS pv, lead(v, 2) OVER (PARTITION BY k ORDER BY id) AS nv FROM a"),
    ("q56_sliding", "SELECT id, avg(v) OVER (PARTITION BY k ORDER BY id ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING) AS av, count(v) OVER (PARTITION BY k ORDER BY id ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING) AS cv FROM a"),
    ("q57_rank", "SELECT id, rank() OVER (PARTITION BY a_k ORDER BY w) AS r, dense_rank() OVER (PARTITION BY a_k ORDER BY w) AS dr FROM b"),
    ("q58_global_row_number", "SELECT id, row_number() OVER (ORDER BY id) AS rn, sum(v) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS s3 FROM a"),
    ("q22_cte", "WITH big AS (SELECT id, k FROM a WHERE v >= 40) SELECT big.k, count(*) AS n FROM big JOIN b ON big.k = b.a_k GROUP BY big.k"),
    ("q59_asof", "SELECT a.id, b.id AS bid, b.w FROM a ASOF JOIN b ON a.k = b.a_k AND a.v >= b.w"),
    ("q60_asof_left", "SELECT a.id, b.id AS bid FROM a ASOF LEFT JOIN b ON a.k = b.a_k AND a.v < b.w"),
];

/// PostgreSQL's wording of the shapes it has no syntax for (ASOF joins as LATERAL
/// top-1 subqueries; among equal times Sabot matches the row first in the right side's
/// row order, here the smallest id looking forward and the largest looking back).
const POSTGRES_WORDING: &[(&str, &str)] = &[
    (
        "q59_asof",
        "SELECT a.id, m.id AS bid, m.w FROM a JOIN LATERAL (SELECT b.id, b.w FROM b WHERE b.a_k = a.k AND b.w <= a.v ORDER BY b.w DESC, b.id DESC LIMIT 1) m ON true",
    ),
    (
        "q60_asof_left",
        "SELECT a.id, m.id AS bid FROM a LEFT JOIN LATERAL (SELECT b.id FROM b WHERE b.a_k = a.k AND b.w > a.v ORDER BY b.w, b.id LIMIT 1) m ON true",
    ),
];

/// The query PostgreSQL runs for a shape.
fn postgres_query<'a>(name: &str, query: &'a str) -> &'a str {
    POSTGRES_WORDING
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(query, |(_, q)| q)
}

const SCHEMA: &str = "CREATE TABLE a (id INT PRIMARY KEY, k INT, v INT, s TEXT);
CREATE TABLE b (id INT PRIMARY KEY, a_k INT, w INT);
CREATE TABLE c (k INT, label TEXT);";

impl Lcg {
    /// Skewed small keys: 0 and 1 are common, NULL sometimes.
    fn key(&mut self) -> String {
        match self.below(20) {
            0 => "NULL".into(),
            1..=8 => "0".into(),
            9..=13 => "1".into(),
            n => (n % 5 + 2).to_string(),
        }
    }
    fn value(&mut self) -> String {
        if self.below(10) == 0 {
            "NULL".into()
        } else {
            self.below(100).to_string()
        }
    }
    fn text(&mut self) -> String {
        match self.below(6) {
            0 => "NULL".into(),
            1 => "''".into(),
            n => format!("'s{}'", n % 4),
        }
    }
}

/// How far behind the newest id a row of a or b may be before a mass delete takes it.
const WINDOW: i64 = 600;

/// Generates statements valid in both systems, tracking the primary keys in use.
struct Workload {
    rng: Lcg,
    a_ids: Vec<i64>,
    b_ids: Vec<i64>,
    next_id: i64,
    last_insert: Option<String>,
}

impl Workload {
    fn statement(&mut self) -> String {
        let r = self.rng.below(100);
        // Delete the row just inserted, now and then.
        if r < 5 {
            if let Some(del) = self.last_insert.take() {
                return del;
            }
        }
        self.last_insert = None;
        match r {
            0..=29 => {
                self.next_id += 1;
                let id = self.next_id;
                self.a_ids.push(id);
                self.last_insert = Some(format!("DELETE FROM a WHERE id = {id}"));
                format!(
                    "INSERT INTO a VALUES ({id}, {}, {}, {})",
                    self.rng.key(),
                    self.rng.value(),
                    self.rng.text()
                )
            }
            30..=44 => {
                self.next_id += 1;
                let id = self.next_id;
                self.b_ids.push(id);
                self.last_insert = Some(format!("DELETE FROM b WHERE id = {id}"));
                format!(
                    "INSERT INTO b VALUES ({id}, {}, {})",
                    self.rng.key(),
                    self.rng.value()
                )
            }
            45..=59 => {
                let labels = ["'x'", "'y'", "'z'", "NULL"];
                let label = labels[self.rng.below(4) as usize];
                // Duplicates on purpose: c has no key.
                format!(
                    "INSERT INTO c VALUES ({}, {label}), ({}, {label})",
                    self.rng.key(),
                    self.rng.key()
                )
            }
            60..=74 if !self.a_ids.is_empty() => {
                let id = self.a_ids[self.rng.below(self.a_ids.len() as u64) as usize];
                format!(
                    "UPDATE a SET k = {}, v = {} WHERE id = {id}",
                    self.rng.key(),
                    self.rng.value()
                )
            }
            75..=81 if !self.b_ids.is_empty() => {
                let id = self.b_ids[self.rng.below(self.b_ids.len() as u64) as usize];
                format!("UPDATE b SET w = {} WHERE id = {id}", self.rng.value())
            }
            82..=89 if !self.a_ids.is_empty() => {
                let i = self.rng.below(self.a_ids.len() as u64) as usize;
                let id = self.a_ids.swap_remove(i);
                format!("DELETE FROM a WHERE id = {id}")
            }
            90..=93 => {
                let labels = ["'x'", "'y'", "'z'"];
                format!(
                    "DELETE FROM c WHERE k = {} AND label = {}",
                    self.rng.below(4),
                    labels[self.rng.below(3) as usize]
                )
            }
            // Mass deletes. The oldest rows of a and b go (ids more than WINDOW behind the
            // newest), and all of c's rows with one label: tables stay about as large on
            // long runs as after a few thousand statements.
            94 => {
                self.a_ids.clear(); // refreshed below from the database
                format!("DELETE FROM a WHERE id < {}", self.next_id - WINDOW)
            }
            95 => {
                self.b_ids.clear(); // refreshed below from the database
                format!("DELETE FROM b WHERE id < {}", self.next_id - WINDOW)
            }
            96 => {
                let cut = self.rng.below(15);
                self.a_ids.clear(); // refreshed below from the database
                format!("DELETE FROM a WHERE v < {cut}")
            }
            97 => {
                let labels = ["'x'", "'y'", "'z'"];
                format!(
                    "DELETE FROM c WHERE label = {}",
                    labels[self.rng.below(3) as usize]
                )
            }
            _ => format!("UPDATE c SET label = 'z' WHERE k = {}", self.rng.below(5)),
        }
    }
}

async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {e:?}"))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// Compares every shape; returns PostgreSQL's row count per shape.
async fn compare(
    sabot: &Client,
    pg: &Client,
    seed: u64,
    at: usize,
    failures: &mut Vec<String>,
) -> Vec<usize> {
    let mut counts = Vec::new();
    for (name, query) in SHAPES {
        let want = rows(pg, postgres_query(name, query))
            .await
            .expect("PostgreSQL query");
        counts.push(want.len());
        match rows(sabot, &format!("SELECT * FROM {name}")).await {
            Ok(got) if same_multiset(got.clone(), want.clone()) => {}
            Ok(got) => failures.push(format!(
                "seed {seed} after {at} statements: {name} differs\n  sabot ({} rows): {:?}\n  postgres ({} rows): {:?}",
                got.len(),
                got.iter().take(8).collect::<Vec<_>>(),
                want.len(),
                want.iter().take(8).collect::<Vec<_>>()
            )),
            Err(e) => failures.push(format!("seed {seed} after {at} statements: {name}: {e}")),
        }
    }
    counts
}

/// Returns the failures and the final row count of each shape.
async fn run_seed(
    seed: u64,
    statements: usize,
    check_every: usize,
    restart_at: Option<usize>,
) -> (Vec<String>, Vec<usize>) {
    let pg_server = Postgres::start();
    let pg = pg_server.connect().await;
    pg.batch_execute(SCHEMA).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let mut sabot = server.connect().await;
    sabot.batch_execute(SCHEMA).await.unwrap();
    for (name, query) in SHAPES {
        sabot
            .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    let mut work = Workload {
        rng: Lcg(seed),
        a_ids: Vec::new(),
        b_ids: Vec::new(),
        next_id: 0,
        last_insert: None,
    };
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for i in 1..=statements {
        let stmt = work.statement();
        let p = pg.batch_execute(&stmt).await;
        let s = sabot.batch_execute(&stmt).await;
        assert_eq!(
            p.is_ok(),
            s.is_ok(),
            "statement {i} `{stmt}`: postgres {p:?}, sabot {s:?}"
        );
        for (prefix, table) in [
            ("DELETE FROM a WHERE v <", "a"),
            ("DELETE FROM a WHERE id <", "a"),
            ("DELETE FROM b WHERE id <", "b"),
        ] {
            if stmt.starts_with(prefix) {
                let ids = rows(&pg, &format!("SELECT id FROM {table}"))
                    .await
                    .unwrap()
                    .into_iter()
                    .filter_map(|r| r[0].as_ref().and_then(|v| v.parse().ok()))
                    .collect();
                if table == "a" {
                    work.a_ids = ids;
                } else {
                    work.b_ids = ids;
                }
            }
        }
        if i % check_every == 0 || i == statements {
            sabot.batch_execute("FLUSH").await.unwrap();
            counts = compare(&sabot, &pg, seed, i, &mut failures).await;
        }
        if restart_at == Some(i) {
            sabot.batch_execute("FLUSH").await.unwrap();
            server.kill();
            server = Server::start(dir.path());
            sabot = server.connect().await;
            compare(&sabot, &pg, seed, i, &mut failures).await;
        }
    }
    let sizes = rows(
        &pg,
        "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), (SELECT count(*) FROM c)",
    )
    .await
    .unwrap_or_default();
    eprintln!(
        "seed {seed}: final table sizes (a, b, c) = {:?}",
        sizes.first()
    );
    (failures, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_match_postgres() {
    let seeds: u64 = std::env::var("SABOT_ORACLE_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let statements: usize = std::env::var("SABOT_ORACLE_STATEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let check_every: usize = std::env::var("SABOT_ORACLE_CHECK_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // Seeds first..first+seeds-1 (several processes can share a long run).
    let first: u64 = std::env::var("SABOT_ORACLE_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut failed = 0;
    let mut passed = 0;
    for seed in first..first + seeds {
        let (failures, counts) = run_seed(
            seed,
            statements,
            check_every,
            (seed == first).then_some(statements / 2),
        )
        .await;
        let bad: std::collections::BTreeSet<&str> = SHAPES
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| failures.iter().any(|f| f.contains(&format!(" {n}"))))
            .collect();
        for (i, (name, _)) in SHAPES.iter().enumerate() {
            let ok = !bad.contains(name);
            let rows = counts.get(i).copied().unwrap_or(0);
            eprintln!(
                "seed {seed} {name}: {} ({rows} rows)",
                if ok { "ok" } else { "FAILED" }
            );
            if ok {
                passed += 1;
            } else {
                failed += 1;
            }
        }
        for f in &failures {
            eprintln!("{f}");
        }
    }
    eprintln!("oracle: {passed} passed, {failed} failed");
    assert_eq!(failed, 0, "views differ from PostgreSQL");
}
