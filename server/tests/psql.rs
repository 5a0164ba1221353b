//! psql against Sabot, with PostgreSQL as the oracle: the same objects created in both,
//! and psql's describe commands (`\dt`, `\d name`, ...) must print the same.
//!
//! psql builds those commands from queries over `pg_catalog` (run `psql -E` to see
//! them), so this checks the catalog tables, the functions they call, and the rewrites
//! of PostgreSQL-only syntax such as `OPERATOR(pg_catalog.~)`.

mod common;

use std::process::Command;

use common::postgres::Postgres;
use common::{wait_for, Server};

/// Runs one psql command; returns stdout, failing on any error output.
fn psql(port: u16, user: &str, db: &str, command: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", user, "-d", db, "-c", command])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (apt-get install postgresql-client)");
    // psql reports an empty listing on stderr ("Did not find any relations."), not
    // as an error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && (stderr.is_empty() || stderr.starts_with("Did not find any")),
        "psql {command} failed on port {port}: {stderr}"
    );
    String::from_utf8(out.stdout).expect("psql prints UTF-8")
}

const DDL: &str = "CREATE TABLE orders (
    id INT PRIMARY KEY,
    customer BIGINT NOT NULL,
    item TEXT,
    note VARCHAR,
    price NUMERIC(10,2),
    weight DOUBLE PRECISION,
    paid BOOLEAN,
    at TIMESTAMP,
    day DATE
);
CREATE TABLE pairs (a INT, b TEXT, c SMALLINT, PRIMARY KEY (a, b));
CREATE TABLE plain (x INT, y REAL);
CREATE MATERIALIZED VIEW per_customer AS
    SELECT customer, count(*) AS n, sum(id) AS ids, max(item) AS last_item
    FROM orders GROUP BY customer;";

/// Rows with characters COPY must escape or quote.
const ROWS: &str = r#"INSERT INTO orders (id, customer, item, note, price, paid, at, day) VALUES
    (1, 7, 'tea', NULL, 3.50, true, '2026-11-23 10:00:00', '2026-11-23'),
    (2, 7, 'cake, "big"', E'two\tcols', 4.25, false, NULL, NULL),
    (3, 9, E'back\\slash\nnew line', '', NULL, NULL, NULL, NULL)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describe_commands_match_postgres() {
    let pg = Postgres::start();
    let pg_client = pg.connect().await;
    pg_client.batch_execute(DDL).await.unwrap();
    // Sabot's objects are owned by `sabot`: give PostgreSQL's the same owner.
    pg_client
        .batch_execute(
            "CREATE ROLE sabot;
             ALTER TABLE orders OWNER TO sabot;
             ALTER TABLE pairs OWNER TO sabot;
             ALTER TABLE plain OWNER TO sabot;
             ALTER MATERIALIZED VIEW per_customer OWNER TO sabot;",
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client.batch_execute(DDL).await.unwrap();
    for c in [&client, &pg_client] {
        c.batch_execute(ROWS).await.unwrap();
    }
    pg_client
        .batch_execute("REFRESH MATERIALIZED VIEW per_customer")
        .await
        .unwrap();
    wait_for(
        &client,
        "SELECT n FROM per_customer WHERE customer = 7",
        "2",
    )
    .await;

    for command in [
        r"\dt",
        r"\dm",
        r"\d orders",
        r"\d pairs",
        r"\d plain",
        r"\d per_customer",
        r"\d orders_pkey",
        r"\d pairs_pkey",
        r"\d+ orders",
        r"\d+ pairs",
        r"\dt public.*",
        r"\d pl*",
        r"\dt+ nothing_here",
        r"\copy (SELECT * FROM orders ORDER BY id) to stdout",
        r"\copy (SELECT * FROM orders ORDER BY id) to stdout csv header",
        r"\copy (SELECT id, note FROM orders ORDER BY id) to stdout with (format csv, delimiter ';', null 'NULL')",
        r"\copy (SELECT * FROM per_customer ORDER BY 1) to stdout",
    ] {
        let want = psql(pg.port, "postgres", "postgres", command);
        let got = psql(server.port(), "sabot", "sabot", command);
        assert_eq!(
            got, want,
            "psql {command}: Sabot (left) differs from PostgreSQL (right)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_lists_sabot_objects() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE SOURCE gen (id BIGINT, v INT) WITH (connector = 'datagen',
                 datagen.rows.per.second = '10', fields.id.kind = 'sequence',
                 fields.v.min = '0', fields.v.max = '9');
             CREATE MATERIALIZED VIEW counts AS SELECT v, count(*) AS n FROM gen GROUP BY v;",
        )
        .await
        .unwrap();
    let port = server.port();

    let schemas = psql(port, "sabot", "sabot", r"\dn");
    assert!(schemas.contains(" public "), "{schemas}");
    assert!(schemas.contains(" sabot_catalog "), "{schemas}");

    let databases = psql(port, "sabot", "sabot", r"\l");
    assert!(databases.contains(" sabot "), "{databases}");

    let sources = psql(port, "sabot", "sabot", r"\dE");
    assert!(
        sources.contains(" gen  | foreign table | sabot"),
        "{sources}"
    );

    let source = psql(port, "sabot", "sabot", r"\d gen");
    assert!(source.contains(r#"Foreign table "public.gen""#), "{source}");
    assert!(source.contains(" id     | bigint  |"), "{source}");

    let view = psql(port, "sabot", "sabot", r"\d+ counts");
    assert!(
        view.contains(r#"Materialized view "public.counts""#),
        "{view}"
    );
    assert!(view.contains("View definition:"), "{view}");
    assert!(view.contains("GROUP BY v"), "{view}");

    let all = psql(port, "sabot", "sabot", r"\d");
    for name in ["gen", "counts"] {
        assert!(all.contains(&format!(" {name} ")), "{all}");
    }
    // Commands over catalogs Sabot keeps empty still run.
    for command in [r"\df", r"\du", r"\dT", r"\di", r"\dv", r"\ds"] {
        psql(port, "sabot", "sabot", command);
    }
}

/// A large backfill reports its progress while it runs: psql prints NOTICEs, one per
/// tenth of the rows, counts rising to the total; a small one says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_backfill_progress_as_notices() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE big (k BIGINT, v BIGINT);
             INSERT INTO big SELECT value % 1000, value FROM generate_series(1, 600000);
             CREATE TABLE small (k BIGINT);
             INSERT INTO small VALUES (1), (2);
             FLUSH;",
        )
        .await
        .unwrap();
    let run = |sql: &str| {
        let out = Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &server.port().to_string(),
                "-U",
                "sabot",
                "-d",
                "sabot",
            ])
            .args(["-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "{sql}: {out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let notices = run(
        "CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n, sum(v) AS s FROM big GROUP BY k",
    );
    let done: Vec<u64> = notices
        .lines()
        .map(|l| {
            let rest = l
                .strip_prefix("NOTICE:  backfilling materialized view \"per_k\": ")
                .unwrap_or_else(|| panic!("not a progress notice: {l}"));
            assert!(rest.contains(" of 600000 rows ("), "{l}");
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(done.len() >= 5, "{notices}");
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{notices}");
    assert_eq!(done.last(), Some(&600_000), "{notices}");
    assert!(
        notices.lines().last().is_some_and(|l| l.contains("(100%)")),
        "{notices}"
    );
    assert_eq!(
        common::rows(&client, "SELECT count(*), sum(n), sum(s) FROM per_k").await,
        vec![vec![
            "1000".to_string(),
            "600000".to_string(),
            (600_000u64 * 600_001 / 2).to_string()
        ]]
    );
    assert_eq!(
        run("CREATE MATERIALIZED VIEW tiny AS SELECT k FROM small"),
        ""
    );
}
