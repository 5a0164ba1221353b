//! `SHOW JOBS`: views reading sources and how far they have got. A view over a bounded,
//! rate-limited nexmark source is seen part of the way through (0 < progress < 100,
//! offsets growing), then finished at 100%; a view over an endless source has no
//! total; a view over a table is no job.

mod common;

use std::time::{Duration, Instant};

use common::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_jobs_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    // 40,000 events at 10,000 a second: about four seconds of reading.
    client
        .batch_execute(
            "CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid',
               nexmark.event.num = '40000', nexmark.min.event.gap.in.ns = '100000');
             CREATE SOURCE live WITH (connector = 'nexmark', nexmark.table.type = 'bid');
             CREATE TABLE t (k INT);
             CREATE MATERIALIZED VIEW bids AS SELECT auction, price FROM bid;
             CREATE MATERIALIZED VIEW live_count AS SELECT count(*) AS n FROM live;
             CREATE MATERIALIZED VIEW from_table AS SELECT k FROM t;",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut partway: Vec<(i64, f64)> = Vec::new();
    let finished = loop {
        let jobs = common::rows(&client, "SHOW JOBS").await;
        let names: Vec<&str> = jobs.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(names, ["bids", "live_count"], "{jobs:?}");
        let live = &jobs[1];
        assert_eq!(live[1], "following", "{live:?}");
        assert_eq!(
            (live[3].as_str(), live[4].as_str()),
            ("NULL", "NULL"),
            "{live:?}"
        );
        let bids = jobs[0].clone();
        let read: i64 = bids[2].parse().unwrap();
        let progress: f64 = bids[4].parse().unwrap();
        assert_eq!(bids[3], "40000", "{bids:?}");
        if bids[1] == "finished" {
            break bids;
        }
        if progress > 0.0 && progress < 100.0 {
            partway.push((read, progress));
        }
        assert!(Instant::now() < deadline, "never finished: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(partway.len() >= 2, "not seen part of the way: {partway:?}");
    assert!(
        partway
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "{partway:?}"
    );
    assert!(
        partway.first().unwrap().0 < partway.last().unwrap().0,
        "{partway:?}"
    );
    assert_eq!(finished[2], "40000", "{finished:?}");
    assert_eq!(finished[4], "100", "{finished:?}");
    // Every bid of the 40,000 events is in the view.
    let n = common::rows(&client, "SELECT count(*) FROM bids").await;
    assert_eq!(n[0][0], "36800");

    // CANCEL JOBS drops a view still reading; finished jobs, views over tables, unknown
    // names and views others read are refused.
    let refused = |sql: &'static str, code: &'static str, says: &'static str| {
        let client = &client;
        async move {
            let e = client.batch_execute(sql).await.unwrap_err();
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e:?}"));
            assert_eq!(db.code().code(), code, "{sql}: {db:?}");
            assert!(db.message().contains(says), "{sql}: {db:?}");
        }
    };
    refused("CANCEL JOBS bids", "55000", "has finished").await;
    refused("CANCEL JOBS from_table", "42704", "reads no source").await;
    refused("CANCEL JOBS nope", "42704", "does not exist").await;
    client
        .batch_execute("CREATE MATERIALIZED VIEW on_live AS SELECT n FROM live_count")
        .await
        .unwrap();
    refused("CANCEL JOBS live_count", "2BP01", "depend").await;
    client
        .batch_execute("DROP MATERIALIZED VIEW on_live; CANCEL JOBS live_count")
        .await
        .unwrap();
    let jobs = common::rows(&client, "SHOW JOBS").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0][0], "bids");
    let views = common::rows(&client, "SHOW MATERIALIZED VIEWS").await;
    assert!(views.iter().all(|r| r[0] != "live_count"), "{views:?}");
}

/// A backfill over a table is a job while its CREATE runs: another session sees it in
/// SHOW JOBS with its progress and can cancel it; the CREATE then fails (57014) and
/// leaves nothing behind, and the same view can be created afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_shows_in_show_jobs_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE big (k BIGINT, v BIGINT);
             INSERT INTO big SELECT value % 1000, value FROM generate_series(1, 800000);
             FLUSH;",
        )
        .await
        .unwrap();
    const VIEW: &str = "CREATE MATERIALIZED VIEW j AS
        SELECT k, count(*) AS n, sum(v) AS s, count(DISTINCT v % 97) AS d FROM big GROUP BY k";
    let creator = server.connect().await;
    let create = tokio::spawn(async move { creator.batch_execute(VIEW).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let jobs = common::rows(&client, "SHOW JOBS").await;
        if let Some(j) = jobs.iter().find(|r| r[0] == "j") {
            break j.clone();
        }
        assert!(
            !create.is_finished() && Instant::now() < deadline,
            "the backfill was never seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(seen[1], "backfilling", "{seen:?}");
    assert_eq!(seen[3], "800000", "{seen:?}");
    let read: u64 = seen[2].parse().unwrap();
    assert!(read < 800_000, "{seen:?}");
    client.batch_execute("CANCEL JOBS j").await.unwrap();
    let e = create.await.unwrap().unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(db.code().code(), "57014", "{db:?}");
    assert!(common::rows(&client, "SHOW JOBS").await.is_empty());
    let views = common::rows(&client, "SHOW MATERIALIZED VIEWS").await;
    assert!(views.is_empty(), "{views:?}");
    // Nothing of it stayed: the same view can be made, complete.
    client.batch_execute(VIEW).await.unwrap();
    assert_eq!(
        common::rows(&client, "SELECT count(*), sum(n), min(d) FROM j").await,
        vec![vec![
            "1000".to_string(),
            "800000".to_string(),
            "97".to_string()
        ]]
    );
}
