#![allow(dead_code)] // each test binary uses a part of this module

//! Starting and stopping a real `sabot` process for integration tests.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// A running `sabot serve`, killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `sabot serve` on `dir` (2 workers, 50 ms checkpoints) and waits for it.
    pub fn start(dir: &Path) -> Server {
        let port = free_port();
        let http = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_sabot"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--pg-listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--workers", "2", "--checkpoint-interval", "50ms"])
            .env("SABOT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sabot");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sabot did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port }
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
