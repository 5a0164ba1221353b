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
