//! The web dashboard in a real browser: headless Chromium (Debian `chromium`) loads
//! `http://HTTP_ADDR/` from a server running a Nexmark view, a view on it, a table and a
//! sink, and the DOM it renders must hold the graph (every object, the right kinds),
//! live numbers (the view's rows per second), the selected view's dataflow (one box per
//! operator) and the checkpoint history. Without Chromium the test says so and passes,
//! except under CI (`CI` set), where it fails.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_graph_and_live_numbers() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing (.ci/run installs it)"
        );
        eprintln!("skipped: chromium is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', nexmark.table.type = 'bid');
             CREATE MATERIALIZED VIEW hot AS
               SELECT window_start, auction, count(*) AS bids
               FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_start, auction;
             CREATE MATERIALIZED VIEW top AS SELECT max(bids) AS m FROM hot;
             CREATE TABLE t (k INT);
             CREATE SINK s FROM top WITH (connector = 'filesystem', path = '{}')
               FORMAT DEBEZIUM ENCODE JSON;",
            sink_dir.path().display()
        ))
        .await
        .unwrap();
    // Wait until the server has a rate for the view (two epochs with rows).
    let deadline = Instant::now() + Duration::from_secs(60);
    let overview = loop {
        let body = server.http_get("/api/overview");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rate = v["views"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "hot")
            .and_then(|x| x["rows_in_per_second"].as_f64());
        if rate.is_some_and(|r| r > 0.0) {
            break v;
        }
        assert!(Instant::now() < deadline, "no rate for hot: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The graph's edges as the API gives them.
    let inputs = |name: &str| -> Vec<String> {
        overview["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {overview}"))["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(inputs("hot"), ["bid"]);
    assert_eq!(inputs("top"), ["hot"]);
    assert_eq!(inputs("s"), ["top"]);
    let operators = overview["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "hot")
        .unwrap()["operators"]
        .as_array()
        .unwrap()
        .len();

    let url = format!("http://127.0.0.1:{}/#view=hot", server.http_port());
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=3000",
            "--dump-dom",
            &url,
        ])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, kind) in [
        ("bid", "source"),
        ("hot", "materialized_view"),
        ("top", "materialized_view"),
        ("t", "table"),
        ("s", "sink"),
    ] {
        assert!(
            dom.contains(&format!("data-name=\"{name}\" data-kind=\"{kind}\"")),
            "no {kind} {name} in the graph: {dom}"
        );
    }
    // Live numbers: the view's rate, rendered from the server's figures.
    let rate: f64 = dom
        .split("data-rate=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next()?.parse().ok())
        .fold(0.0, f64::max);
    assert!(rate > 0.0, "no rate rendered: {dom}");
    assert!(dom.contains("Dataflow of hot"), "{dom}");
    assert_eq!(
        dom.matches("class=\"op\"").count(),
        operators,
        "one box per operator of hot: {dom}"
    );
    assert!(dom.contains("n0 SourceReader"), "{dom}");
    assert!(
        dom.contains("class=\"checkpoint\""),
        "no checkpoint rows: {dom}"
    );
    assert!(
        dom.contains("<span id=\"error\"></span>"),
        "an error shows: {dom}"
    );
}
