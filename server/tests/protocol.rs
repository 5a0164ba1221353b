//! The extended query protocol through tokio-postgres: prepared statements with typed
//! parameters (inferred by the server), binary results, NULLs, and errors that leave the
//! connection usable.

mod common;

use chrono::{NaiveDate, NaiveDateTime};
use common::Server;
use tokio_postgres::types::Type;

fn ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_with_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, k TEXT, v DOUBLE PRECISION, n INT, ok BOOLEAN, ts TIMESTAMP, day DATE)",
        )
        .await
        .unwrap();

    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .await
        .unwrap();
    assert_eq!(
        insert.params(),
        &[
            Type::INT8,
            Type::TEXT,
            Type::FLOAT8,
            Type::INT4,
            Type::BOOL,
            Type::TIMESTAMP,
            Type::DATE
        ]
    );
    for i in 0..10i64 {
        let k = (i != 7).then(|| format!("k{}", i % 3));
        let n = i32::try_from(i).unwrap();
        let when = ts(&format!("2024-01-0{} 12:00:00", i % 9 + 1));
        let day = NaiveDate::from_ymd_opt(2024, 2, u32::try_from(i + 1).unwrap()).unwrap();
        let inserted = client
            .execute(
                &insert,
                &[&i, &k, &(i as f64 * 1.5), &n, &(i % 2 == 0), &when, &day],
            )
            .await
            .unwrap();
        assert_eq!(inserted, 1);
    }
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW mv AS SELECT k, count(*) AS c, sum(v) AS s, max(ts) AS latest FROM t GROUP BY k",
        )
        .await
        .unwrap();

    let select = client
        .prepare("SELECT id, k, v, n, ok, ts, day FROM t WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(select.params(), &[Type::INT8]);
    let types: Vec<Type> = select.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        vec![
            Type::INT8,
            Type::TEXT,
            Type::FLOAT8,
            Type::INT4,
            Type::BOOL,
            Type::TIMESTAMP,
            Type::DATE
        ]
    );
    let row = client.query_one(&select, &[&3i64]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("k0"));
    assert_eq!(row.get::<_, f64>(2), 4.5);
    assert_eq!(row.get::<_, i32>(3), 3);
    assert!(!row.get::<_, bool>(4));
    assert_eq!(row.get::<_, NaiveDateTime>(5), ts("2024-01-04 12:00:00"));
    assert_eq!(
        row.get::<_, NaiveDate>(6),
        NaiveDate::from_ymd_opt(2024, 2, 4).unwrap()
    );
    let row = client.query_one(&select, &[&7i64]).await.unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(1),
        None,
        "NULL parameter stored as NULL"
    );

    let groups = client
        .query(
            "SELECT k, c, s, latest FROM mv WHERE c >= $1 ORDER BY k",
            &[&3i64],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64, f64)> = groups
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, f64>(2),
            )
        })
        .collect();
    // k0: ids 0,3,6,9; k1: ids 1,4; k2: ids 2,5,8 (id 7 has k NULL).
    assert_eq!(got, vec![("k0".into(), 4, 27.0), ("k2".into(), 3, 22.5)]);

    let update = client
        .prepare("UPDATE t SET v = $1 WHERE k = $2")
        .await
        .unwrap();
    assert_eq!(update.params(), &[Type::FLOAT8, Type::TEXT]);
    assert_eq!(
        client.execute(&update, &[&100.0f64, &"k1"]).await.unwrap(),
        2
    );
    let delete = client.prepare("DELETE FROM t WHERE n < $1").await.unwrap();
    assert_eq!(delete.params(), &[Type::INT4]);
    assert_eq!(client.execute(&delete, &[&2i32]).await.unwrap(), 2);
    client.batch_execute("FLUSH").await.unwrap();
    let row = client
        .query_one("SELECT c, s FROM mv WHERE k = $1", &[&"k1"])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, f64>(1)),
        (1, 100.0),
        "id 1 deleted, id 4 updated"
    );

    // Errors carry SQLSTATEs and leave the connection usable.
    let err = client.prepare("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    let err = client
        .execute(
            &insert,
            &[
                &3i64,
                &None::<String>,
                &0.0f64,
                &0i32,
                &true,
                &ts("2024-01-01 00:00:00"),
                &NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));
    let err = client.batch_execute("SELEC 1").await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42601");
    assert!(matches!(
        db.position(),
        Some(tokio_postgres::error::ErrorPosition::Original(1))
    ));
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 8);
}

/// Execute with a row limit: a portal hands its rows over in pieces (PortalSuspended
/// between them), in order, and ends with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_return_rows_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE p (n BIGINT); INSERT INTO p SELECT value FROM generate_series(1, 10); FLUSH",
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT n FROM p WHERE n > $1 ORDER BY n")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[&0i64]).await.unwrap();
    let mut pieces = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 3).await.unwrap();
        if rows.is_empty() {
            break;
        }
        pieces.push(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>());
    }
    assert_eq!(
        pieces,
        vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9], vec![10]]
    );
    // Two portals at once keep their own places.
    let a = tx.bind(&stmt, &[&5i64]).await.unwrap();
    let b = tx.bind(&stmt, &[&8i64]).await.unwrap();
    let first_a = tx.query_portal(&a, 2).await.unwrap();
    let first_b = tx.query_portal(&b, 2).await.unwrap();
    let rest_a = tx.query_portal(&a, 0).await.unwrap();
    let ints = |rows: &[tokio_postgres::Row]| rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>();
    assert_eq!(ints(&first_a), [6, 7]);
    assert_eq!(ints(&first_b), [9, 10]);
    assert_eq!(ints(&rest_a), [8, 9, 10]);
    tx.commit().await.unwrap();
}

fn canceled(e: &tokio_postgres::Error) -> String {
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(db.code().code(), "57014", "{db:?}");
    db.message().to_string()
}

/// A CancelRequest (on its own connection, with the session's key) stops a running
/// query, and the session goes on; one sent while nothing runs changes nothing. A
/// view's backfill stops between steps and its CREATE leaves nothing. A request with
/// the wrong key is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_stop_queries_and_backfills() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE c (x BIGINT);
             INSERT INTO c SELECT value FROM generate_series(1, 2000)",
        )
        .await
        .unwrap();
    // Nothing runs: the request is ignored, and the next statement runs whole.
    client
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        common::rows(&client, "SELECT count(*) FROM c").await[0][0],
        "2000"
    );

    // 8 billion rows: it runs until cancelled.
    const ENDLESS: &str = "SELECT sum(a.x * b.x + c.x) FROM c a, c b, c c";
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let e = client.simple_query(ENDLESS).await.unwrap_err();
    assert_eq!(canceled(&e), "canceling statement due to user request");
    cancel.await.unwrap().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(common::rows(&client, "SELECT 1").await[0][0], "1");

    // The extended protocol too, and another session's key does not reach it.
    let other = server.connect().await;
    let token = client.cancel_token();
    let wrong = other.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        wrong.cancel_query(tokio_postgres::NoTls).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let e = client.query(ENDLESS, &[]).await.unwrap_err();
    canceled(&e);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    cancel.await.unwrap().unwrap();
    assert_eq!(
        common::rows(&other, "SELECT count(*) FROM c").await[0][0],
        "2000"
    );

    // A backfill past one step.
    client
        .batch_execute(
            "CREATE TABLE big (k BIGINT, v BIGINT);
             INSERT INTO big SELECT value % 1000, value FROM generate_series(1, 800000);
             FLUSH;",
        )
        .await
        .unwrap();
    // A self-join: its backfill takes about 15 seconds here (debug build), in steps.
    const VIEW: &str = "CREATE MATERIALIZED VIEW j AS
        SELECT a.k, count(*) AS n, sum(b.v) AS s FROM big a JOIN big b ON a.v = b.v GROUP BY a.k";
    let token = client.cancel_token();
    let create = tokio::spawn(async move { client.batch_execute(VIEW).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !common::rows(&other, "SHOW JOBS")
        .await
        .iter()
        .any(|r| r[0] == "j")
    {
        if create.is_finished() {
            panic!("the CREATE ended unseen: {:?}", create.await);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backfill was never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let asked = std::time::Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let sent = asked.elapsed();
    let e = match create.await.unwrap() {
        Ok(()) => panic!(
            "the CREATE finished although cancelled: request sent after {sent:?}, CREATE done after {:?}",
            asked.elapsed()
        ),
        Err(e) => e,
    };
    assert_eq!(canceled(&e), "canceling statement due to user request");
    // The error itself shows it stopped between steps (once the last step is done the
    // CREATE succeeds); this only guards against waiting for something else.
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        asked.elapsed()
    );
    assert!(common::rows(&other, "SHOW MATERIALIZED VIEWS")
        .await
        .is_empty());
    assert!(common::rows(&other, "SHOW JOBS").await.is_empty());
}

/// `SET` is the session's own: `current_setting`, `SHOW` and `pg_settings` see it, other
/// sessions do not. `current_user` is the role logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_are_seen_by_current_setting() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let a = server.connect().await;
    let b = server.connect().await;
    a.batch_execute("SET application_name = 'grafana'; SET search_path TO public")
        .await
        .unwrap();
    let q = "SELECT current_setting('application_name'), current_setting('server_version_num'), \
             current_user, (SELECT source FROM pg_settings WHERE name = 'application_name')";
    assert_eq!(
        common::rows(&a, q).await,
        vec![vec!["grafana", "150000", "test", "session"]]
    );
    assert_eq!(
        common::rows(&b, q).await,
        vec![vec!["", "150000", "test", "default"]]
    );
    // Prepared, too.
    let row = a
        .query_one("SELECT current_setting($1)", &[&"application_name"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "grafana");
    assert_eq!(
        common::rows(&a, "SHOW application_name").await,
        vec![vec!["grafana"]]
    );
    let e = a
        .simple_query("SELECT current_setting('no_such_setting')")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert!(
        db.message()
            .contains("unrecognized configuration parameter \"no_such_setting\""),
        "{db:?}"
    );
    assert_eq!(
        common::rows(
            &a,
            "SELECT current_setting('no_such_setting', true) IS NULL"
        )
        .await,
        vec![vec!["t"]]
    );
    // RESET puts one back, RESET ALL and DISCARD ALL every one.
    a.batch_execute("SET timezone = 'Europe/Paris'; RESET application_name")
        .await
        .unwrap();
    let both = "SELECT current_setting('application_name'), current_setting('timezone')";
    assert_eq!(common::rows(&a, both).await, vec![vec!["", "Europe/Paris"]]);
    a.batch_execute("SET application_name = 'x'; RESET ALL")
        .await
        .unwrap();
    assert_eq!(common::rows(&a, both).await, vec![vec!["", "UTC"]]);
    a.batch_execute("SET application_name = 'x'; DISCARD ALL")
        .await
        .unwrap();
    assert_eq!(common::rows(&a, both).await, vec![vec!["", "UTC"]]);

    // The startup message's parameters are the session's settings, and what RESET
    // returns to.
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=test dbname=sabot application_name=dashboards",
            server.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        common::rows(&c, both).await,
        vec![vec!["dashboards", "UTC"]]
    );
    c.batch_execute("SET application_name = 'x'; RESET application_name")
        .await
        .unwrap();
    assert_eq!(
        common::rows(&c, both).await,
        vec![vec!["dashboards", "UTC"]]
    );
}

/// Result columns are named as PostgreSQL names them (a function by its name, a cast by
/// its type, anything else `?column?`), in Describe and in the rows alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_columns_have_postgres_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE n (x BIGINT, y TEXT)")
        .await
        .unwrap();
    // DataFusion alone refuses x twice and x beside x::text (names must be unique).
    let sql = "SELECT x, n.y, count(*), sum(x) AS \"Total\", x + 1, '7'::int, x::text, \
               current_setting('timezone'), CASE WHEN x > 0 THEN 1 END, \
               (SELECT max(x) FROM n), x FROM n GROUP BY x, y";
    let expected = [
        "x",
        "y",
        "count",
        "Total",
        "?column?",
        "int4",
        "x",
        "current_setting",
        "case",
        "max",
        "x",
    ];
    let stmt = client.prepare(sql).await.unwrap();
    let described: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(described, expected);
    let simple = client.simple_query(sql).await.unwrap();
    let Some(tokio_postgres::SimpleQueryMessage::RowDescription(cols)) = simple.first() else {
        panic!("{simple:?}");
    };
    let named: Vec<&str> = cols.iter().map(|c| c.name()).collect();
    assert_eq!(named, expected);
}

/// Superset's way of stopping a query: `pg_backend_pid()` in the session that runs it,
/// then from another session `pg_stat_activity` shows it and `pg_cancel_backend` stops
/// its statement, or `pg_terminate_backend` ends the session (FATAL 57P01, connection
/// closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_seen_and_stopped_through_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let runner = server.connect().await;
    let admin = server.connect().await;
    runner
        .batch_execute(
            "SET application_name = 'sql lab';
             CREATE TABLE c (x BIGINT);
             INSERT INTO c SELECT value FROM generate_series(1, 2000);
             FLUSH",
        )
        .await
        .unwrap();
    let pid: i32 = runner
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    const ENDLESS: &str = "SELECT sum(a.x * b.x + c.x) FROM c a, c b, c c";
    let running = tokio::spawn(async move {
        let e = runner.simple_query(ENDLESS).await.unwrap_err();
        (runner, e)
    });
    // It shows as active with its query, among the sessions.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows = common::rows(
            &admin,
            &format!(
                "SELECT state, query, application_name, usename FROM pg_stat_activity WHERE pid = {pid}"
            ),
        )
        .await;
        if rows.first().is_some_and(|r| r[0] == "active") {
            assert_eq!(rows[0][1..], [ENDLESS, "sql lab", "test"], "{rows:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let sessions = common::rows(&admin, "SELECT count(*) FROM pg_stat_activity").await;
    assert_eq!(sessions[0][0], "2");
    assert_eq!(
        common::rows(&admin, &format!("SELECT pg_cancel_backend({pid})")).await[0][0],
        "t"
    );
    let (runner, e) = running.await.unwrap();
    canceled(&e);
    assert_eq!(common::rows(&runner, "SELECT 1").await[0][0], "1");
    let idle = common::rows(
        &admin,
        &format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}"),
    )
    .await;
    assert_eq!(idle[0][0], "idle");
    // No such session.
    assert_eq!(
        common::rows(&admin, "SELECT pg_cancel_backend(-5)").await[0][0],
        "f"
    );
    // Terminated while idle: its next statement ends it.
    assert_eq!(
        common::rows(&admin, &format!("SELECT pg_terminate_backend({pid})")).await[0][0],
        "t"
    );
    let e = runner.simple_query("SELECT 1").await.unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(
        (db.severity(), db.code().code()),
        ("FATAL", "57P01"),
        "{db:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(runner.is_closed(), "{e:?}");
    let left = common::rows(&admin, "SELECT count(*) FROM pg_stat_activity").await;
    assert_eq!(left[0][0], "1");
}

/// Statements that return rows describe their columns when prepared (psycopg prepares
/// a query from its fifth run and then trusts Describe), and the rows match them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_show_describe_and_explain_describe_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (k INT, v TEXT);
             CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid');
             CREATE MATERIALIZED VIEW live AS SELECT count(*) AS n FROM bid;",
        )
        .await
        .unwrap();
    for (sql, columns) in [
        ("SHOW JOBS", 7),
        ("SHOW TABLES", 1),
        ("SHOW MATERIALIZED VIEWS", 1),
        ("SHOW SOURCES", 0),
        ("DESCRIBE t", 0),
        ("EXPLAIN SELECT k FROM t", 0),
        ("SHOW ALL", 2),
        ("SHOW timezone", 1),
    ] {
        let stmt = client.prepare(sql).await.unwrap();
        assert!(!stmt.columns().is_empty(), "{sql}: no columns described");
        if columns > 0 {
            assert_eq!(stmt.columns().len(), columns, "{sql}");
        }
        for _ in 0..2 {
            let rows = client.query(&stmt, &[]).await.unwrap();
            assert!(!rows.is_empty(), "{sql}");
            assert_eq!(rows[0].len(), stmt.columns().len(), "{sql}");
        }
    }
}
