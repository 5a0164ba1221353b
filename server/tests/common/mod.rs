#![allow(dead_code)] // each test binary uses a part of this module

//! Starting and stopping a real `sabot` process for integration tests.

pub mod postgres;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// A running `sabot serve`, killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    port: u16,
    http: u16,
}

impl Server {
    /// Starts `sabot serve` on `dir` (2 workers, 50 ms checkpoints) and waits for it.
    ///
    /// The ports come from the OS and are free when picked, but another process (a mock
    /// Kafka broker, a client's outgoing connection) can take one before `sabot` binds it;
    /// a server that exits before it listens is started again on fresh ports.
    pub fn start(dir: &Path) -> Server {
        Self::start_with_env(dir, &[])
    }

    /// [`Server::start`] with extra environment variables (e.g. `SABOT_FAILPOINTS`).
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_with(dir, env, &[])
    }

    /// [`Server::start`] with extra environment variables and `sabot serve` arguments.
    pub fn start_with(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        for _ in 0..5 {
            let port = free_port();
            let http = free_port();
            // SABOT_BIN: a test binary carried to another machine (the GPU machine) runs
            // the `sabot` carried beside it.
            let bin = std::env::var("SABOT_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sabot").to_string());
            let mut child = Command::new(bin)
                .args(["serve", "--data-dir"])
                .arg(dir)
                .args(["--pg-listen", &format!("127.0.0.1:{port}")])
                .args(["--http-listen", &format!("127.0.0.1:{http}")])
                .args(["--workers", "2", "--checkpoint-interval", "50ms"])
                .args(args)
                .env("SABOT_LOG", "warn")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start sabot");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = child.try_wait().expect("wait for sabot") {
                    eprintln!("sabot exited before listening ({status}); trying other ports");
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Both listeners are bound before either serves; one that failed
                    // makes the process exit at once, so a short wait tells them apart.
                    std::thread::sleep(Duration::from_millis(100));
                    if child.try_wait().expect("wait for sabot").is_none() {
                        return Server { child, port, http };
                    }
                    continue;
                }
                assert!(Instant::now() < deadline, "sabot did not start listening");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sabot did not start in five tries");
    }

    pub async fn connect(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=test dbname=sabot", self.port),
            NoTls,
        )
        .await
        .expect("connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// The body of an HTTP GET of `path` (e.g. `/metrics`).
    /// The pgwire port it listens on (for clients other than tokio-postgres).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP port it listens on.
    pub fn http_port(&self) -> u16 {
        self.http
    }

    pub fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http)).expect("http");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: sabot\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// Waits until the server stops by itself (a failpoint), failing after `secs`.
    pub fn wait_exit(mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.child.try_wait().expect("wait for sabot").is_none() {
            assert!(
                Instant::now() < deadline,
                "sabot did not stop at its failpoint"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait for sabot").is_none()
    }

    /// SIGKILL: no shutdown code of the server runs.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first column of the first row of `sql`, as text (empty when there is none).
pub async fn scalar(client: &Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.expect(sql);
    rows.into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

/// Every row of `sql`, values as text, NULL as `NULL`.
pub async fn rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let msgs = client.simple_query(sql).await.expect(sql);
    msgs.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Every row of `sql`, values as text, NULL as `None`.
pub async fn nullable_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Waits until `sql` returns `want`, or fails after a minute.
pub async fn wait_for(client: &Client, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = scalar(client, sql).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: still {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A small deterministic generator (no extra dependency, the same run every time).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Multiset equality with numbers compared as floats (relative tolerance 1e-9).
pub fn same_multiset(mut x: Vec<Vec<Option<String>>>, mut y: Vec<Vec<Option<String>>>) -> bool {
    // Sort by values rounded to 9 significant digits, then compare row by row.
    let key = |row: &Vec<Option<String>>| -> Vec<Option<String>> {
        row.iter()
            .map(|v| {
                v.as_ref().map(|s| match s.parse::<f64>() {
                    Ok(f) => format!("{f:.8e}"),
                    Err(_) => s.clone(),
                })
            })
            .collect()
    };
    x.sort_by_cached_key(key);
    y.sort_by_cached_key(key);
    let close = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(p), Ok(q)) => p == q || (p - q).abs() <= 1e-9 * p.abs().max(q.abs()),
            _ => a == b,
        },
        (None, None) => true,
        _ => false,
    };
    x.len() == y.len()
        && x.iter()
            .zip(&y)
            .all(|(r, s)| r.len() == s.len() && r.iter().zip(s).all(|(a, b)| close(a, b)))
}
