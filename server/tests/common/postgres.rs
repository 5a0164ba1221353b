//! A real PostgreSQL server for tests that compare Sabot with it.

use std::path::PathBuf;
use std::process::Command;

use tokio_postgres::{Client, NoTls};

/// A PostgreSQL server in a temporary directory, stopped on drop.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn as_postgres_user(args: &[&str]) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).args(args);
        c
    } else {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (apt-get install postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().expect("initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status();
        assert!(status.is_ok());
        let data = dir.path().join("data");
        let initdb = bin.join("initdb");
        let out = as_postgres_user(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--locale=C",
            "-E",
            "UTF8",
        ])
        .output()
        .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg_ctl = bin.join("pg_ctl");
        let log = dir.path().join("pg.log");
        // A port picked free can be taken before PostgreSQL binds it: then start on another.
        let mut started = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let opts = format!(
                "-p {port} -k {} -c fsync=off -c listen_addresses=127.0.0.1",
                dir.path().display()
            );
            let out = as_postgres_user(&[
                pg_ctl.to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ])
            .output()
            .expect("pg_ctl start");
            if out.status.success() {
                started = Some(port);
                break;
            }
            eprintln!(
                "pg_ctl start on port {port} failed, trying another: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = started.expect("PostgreSQL did not start on any of 5 ports");
        Postgres {
            bin,
            data,
            port,
            _dir: dir,
        }
    }

    pub async fn connect(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            NoTls,
        )
        .await
        .expect("connect to PostgreSQL");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let _ = as_postgres_user(&[
            pg_ctl.to_str().unwrap_or("pg_ctl"),
            "-D",
            self.data.to_str().unwrap_or(""),
            "-m",
            "immediate",
            "stop",
        ])
        .output();
    }
}
