//! Real clients against Sabot: psycopg 3 (extended protocol, typed parameters),
//! SQLAlchemy 2's inspector (which reads `pg_catalog` the way ORMs and BI tools do),
//! asyncpg (binary protocol throughout), node's `pg` and pgJDBC.
//!
//! Needs `SABOT_PYTHON` (a Python with psycopg, sqlalchemy and asyncpg),
//! `SABOT_NODE_PATH` (node_modules with `pg`) and `SABOT_JDBC_JAR` (pgJDBC, with `java`
//! on the path); `.ci/run` provides all three. Without them the tests say so and pass,
//! except under CI where they must run.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{wait_for, Server};

const SCRIPT: &str = r#"
import datetime, decimal, json, sys
import psycopg
from sqlalchemy import create_engine, inspect, text

port = sys.argv[1]
out = {}
with psycopg.connect(f"host=127.0.0.1 port={port} user=sabot dbname=sabot", autocommit=True) as conn:
    conn.execute("""CREATE TABLE orders (id INT PRIMARY KEY, customer BIGINT NOT NULL,
        item TEXT, price NUMERIC(10,2), weight DOUBLE PRECISION, paid BOOLEAN,
        at TIMESTAMP, day DATE)""")
    rows = [
        (1, 7, "tea", decimal.Decimal("3.50"), 0.25, True,
         datetime.datetime(2026, 11, 23, 10, 0, 0), datetime.date(2026, 11, 23)),
        (2, 7, "cake", decimal.Decimal("4.25"), 1.5, False,
         datetime.datetime(2026, 11, 23, 11, 30, 0), datetime.date(2026, 11, 24)),
        (3, 9, None, None, None, None, None, None),
    ]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO orders VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    conn.execute("""CREATE MATERIALIZED VIEW per_customer AS
        SELECT customer, count(*) AS n, sum(price) AS total FROM orders GROUP BY customer""")
    conn.execute("FLUSH")
    got = conn.execute("SELECT * FROM orders ORDER BY id").fetchall()
    out["roundtrip"] = [list(r) for r in got] == [list(r) for r in rows]
    got = conn.execute("SELECT * FROM orders WHERE customer = %s AND paid = %s", (7, True)).fetchall()
    out["filtered"] = [r[0] for r in got]
    got = conn.execute("SELECT customer, n FROM per_customer WHERE n >= %s ORDER BY 1", (1,)).fetchall()
    out["view"] = [list(r) for r in got]
    for name, binary in (("text", False), ("binary", True)):
        cur = conn.cursor(binary=binary)
        got = cur.execute("SELECT price, at, day FROM orders WHERE id = %s", (1,)).fetchone()
        out[name] = [str(v) for v in got]

engine = create_engine(f"postgresql+psycopg://sabot@127.0.0.1:{port}/sabot")
insp = inspect(engine)
out["tables"] = insp.get_table_names()
out["views"] = insp.get_materialized_view_names()
out["columns"] = [[c["name"], str(c["type"]), c["nullable"]] for c in insp.get_columns("orders")]
out["pk"] = insp.get_pk_constraint("orders")["constrained_columns"]
with engine.connect() as c:
    out["sa_rows"] = [list(r) for r in c.execute(text("SELECT customer, n FROM per_customer ORDER BY 1"))]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_sqlalchemy_work() {
    let Ok(py) = std::env::var("SABOT_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SABOT_PYTHON (.ci/run does)"
        );
        eprintln!("skipped: SABOT_PYTHON not set (a Python with psycopg and sqlalchemy)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let got = run_script(&py, &["-", &server.port().to_string()], &[], SCRIPT);
    let want = serde_json::json!({
        "roundtrip": true,
        "filtered": [1],
        "view": [[7, 2], [9, 1]],
        "text": ["3.50", "2026-11-23 10:00:00", "2026-11-23"],
        "binary": ["3.50", "2026-11-23 10:00:00", "2026-11-23"],
        "tables": ["orders"],
        "views": ["per_customer"],
        "columns": [
            ["id", "INTEGER", false],
            ["customer", "BIGINT", false],
            ["item", "TEXT", true],
            ["price", "NUMERIC(10, 2)", true],
            ["weight", "DOUBLE PRECISION", true],
            ["paid", "BOOLEAN", true],
            ["at", "TIMESTAMP", true],
            ["day", "DATE", true],
        ],
        "pk": ["id"],
        "sa_rows": [[7, 2], [9, 1]],
    });
    assert_eq!(got, want);
    // The view the script made is live for other clients too.
    let client = server.connect().await;
    wait_for(
        &client,
        "SELECT n FROM per_customer WHERE customer = 7",
        "2",
    )
    .await;
}

const ASYNCPG: &str = r#"
import asyncio, datetime, decimal, json, sys
import asyncpg

async def main(port):
    c = await asyncpg.connect(host="127.0.0.1", port=port, user="sabot", database="sabot")
    await c.execute("""CREATE TABLE m (id INT PRIMARY KEY, v DOUBLE PRECISION, s TEXT,
        d NUMERIC(10,2), at TIMESTAMP, ok BOOLEAN)""")
    await c.executemany("INSERT INTO m VALUES ($1, $2, $3, $4, $5, $6)", [
        (1, 1.5, "a", decimal.Decimal("1.25"), datetime.datetime(2026, 1, 1, 12, 0), True),
        (2, None, None, None, None, None),
    ])
    await c.execute("CREATE MATERIALIZED VIEW mc AS SELECT count(*) AS n, sum(d) AS total FROM m")
    await c.execute("FLUSH")
    rows = await c.fetch("SELECT * FROM m WHERE id >= $1 ORDER BY id", 1)
    stmt = await c.prepare("SELECT n, total FROM mc")
    r = await stmt.fetchrow()
    print(json.dumps({
        "rows": [[None if v is None else str(v) for v in row.values()] for row in rows],
        "view": [r["n"], str(r["total"])],
    }))
    await c.close()

asyncio.run(main(int(sys.argv[1])))
"#;

/// Runs `program args...` with `script` on stdin; returns its stdout as JSON.
fn run_script(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    script: &str,
) -> serde_json::Value {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the client script failed");
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_works() {
    let Ok(py) = std::env::var("SABOT_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set SABOT_PYTHON");
        eprintln!("skipped: SABOT_PYTHON not set (a Python with asyncpg)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let got = run_script(&py, &["-", &server.port().to_string()], &[], ASYNCPG);
    let want = serde_json::json!({
        "rows": [
            ["1", "1.5", "a", "1.25", "2026-01-01 12:00:00", "True"],
            ["2", null, null, null, null, null],
        ],
        "view": [2, "1.25"],
    });
    assert_eq!(got, want);
}

const NODE_PG: &str = r#"
const { Client } = require('pg');
(async () => {
  const c = new Client({ host: '127.0.0.1', port: +process.argv[process.argv.length - 1], user: 'sabot', database: 'sabot' });
  await c.connect();
  await c.query('CREATE TABLE n (id INT PRIMARY KEY, name TEXT, price NUMERIC(10,2), at TIMESTAMP)');
  await c.query('INSERT INTO n VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)',
    [1, 'x', '2.50', '2026-01-01 00:00:00', 2, null, null, null]);
  await c.query('CREATE MATERIALIZED VIEW nc AS SELECT count(*) AS k FROM n');
  await c.query('FLUSH');
  const r = await c.query({ text: 'SELECT id, name, price FROM n WHERE id > $1 ORDER BY id', values: [0] });
  const v = await c.query({ name: 'count', text: 'SELECT k FROM nc' });
  const again = await c.query({ name: 'count', text: 'SELECT k FROM nc' });
  const tables = await c.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1");
  console.log(JSON.stringify({ rows: r.rows, k: v.rows[0].k, again: again.rows[0].k,
    tables: tables.rows.map(t => t.table_name) }));
  await c.end();
})().catch(e => { console.error(e); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_works() {
    let Ok(modules) = std::env::var("SABOT_NODE_PATH") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SABOT_NODE_PATH"
        );
        eprintln!("skipped: SABOT_NODE_PATH not set (node_modules with `pg`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port().to_string();
    let got = run_script("node", &["-", &port], &[("NODE_PATH", &modules)], NODE_PG);
    let want = serde_json::json!({
        "rows": [{"id": 1, "name": "x", "price": "2.50"}, {"id": 2, "name": null, "price": null}],
        "k": "2",
        "again": "2",
        "tables": ["n", "nc"],
    });
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_works() {
    let Ok(jar) = std::env::var("SABOT_JDBC_JAR") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SABOT_JDBC_JAR"
        );
        eprintln!("skipped: SABOT_JDBC_JAR not set (Debian's libpostgresql-jdbc-java)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/Jdbc.java");
    let out = Command::new("java")
        .args(["-cp", &jar, source, &server.port().to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("java (apt-get install default-jdk-headless)");
    assert!(out.status.success(), "the JDBC program failed");
    let got = String::from_utf8(out.stdout).unwrap();
    // getTables orders by type, then name, as the JDBC spec says.
    let want = "\
rows 1|x|2.50|2026-01-01 10:00:00.0|true;2|null|null|null|null;
rows 1|x|2.50|2026-01-01 10:00:00.0|true;2|null|null|null|null;
view 2
product PostgreSQL 15
table j_pkey INDEX
table jv MATERIALIZED VIEW
table j TABLE
column id int4 4 NO
column name text 12 YES
column price numeric 2 YES
column at timestamp 93 YES
column ok bool -7 YES
pk id
";
    assert_eq!(got, want);
}
