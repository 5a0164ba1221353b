//! Python clients against Sabot: psycopg 3 (extended protocol, typed parameters) and
//! SQLAlchemy 2's inspector, which reads `pg_catalog` the way ORMs and BI tools do.
//!
//! Needs `SABOT_PYTHON`: a Python with `psycopg` and `sqlalchemy` (`.ci/run` makes one).
//! Without it the test says so and passes, except under CI where it must run.

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
    let mut child = Command::new(&py)
        .args(["-", &server.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(SCRIPT.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the client script failed");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("script prints JSON");
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
