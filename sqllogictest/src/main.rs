//! `sabot-slt`: runs `.slt` files against Sabot over the PostgreSQL wire protocol.
//!
//! By default each file gets its own freshly started `sabot serve` (free loopback ports,
//! an empty data dir), so files cannot leak state into each other. With `--url` the
//! files run against a server that is already up.
//!
//! Values come back through the simple query protocol as text, exactly as psql shows
//! them; NULL is written `NULL` and the empty string `(empty)`. Errors read
//! `<message> (SQLSTATE <code>)`, so `statement error` lines can match either.

#![allow(clippy::print_stdout)] // a command-line runner: its report goes to stdout

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Parser;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[derive(Parser)]
#[command(name = "sabot-slt", about = "Run .slt files against Sabot over pgwire")]
struct Args {
    /// .slt files or directories holding them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Connect to this running server instead of starting one per file.
    #[arg(long)]
    url: Option<String>,
    /// The sabot binary to start (default: `sabot` next to this binary).
    #[arg(long)]
    sabot: Option<PathBuf>,
    /// Workers for the started servers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[derive(Debug, thiserror::Error)]
enum SltError {
    #[error("{message} (SQLSTATE {code})")]
    Db { message: String, code: String },
    #[error("connection: {0}")]
    Connection(String),
}

impl From<tokio_postgres::Error> for SltError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => SltError::Db {
                message: db.message().to_string(),
                code: db.code().code().to_string(),
            },
            None => SltError::Connection(e.to_string()),
        }
    }
}

struct Sabot {
    client: tokio_postgres::Client,
}

#[async_trait]
impl AsyncDB for Sabot {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns = 0;
        let mut saw_rows = false;
        let mut count = 0;
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(d) => {
                    saw_rows = true;
                    columns = d.len();
                }
                SimpleQueryMessage::Row(r) => {
                    saw_rows = true;
                    columns = r.len();
                    let row = (0..r.len())
                        .map(|i| match r.get(i) {
                            None => "NULL".to_string(),
                            Some("") => "(empty)".to_string(),
                            Some(v) => v.to_string(),
                        })
                        .collect();
                    rows.push(row);
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        if saw_rows {
            Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; columns],
                rows,
            })
        } else {
            Ok(DBOutput::StatementComplete(count))
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sabot"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// A `sabot serve` child process, killed on drop.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `sabot serve` on free loopback ports. A port picked free can be taken by another
/// process before the server binds it; the server then exits at once, and this starts it
/// again on other ports.
fn start_server(bin: &Path, workers: usize) -> Result<Server, String> {
    const ATTEMPTS: usize = 5;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        match try_start_server(bin, workers)? {
            Some(server) => return Ok(server),
            None => last = "server exited before listening (port taken?)".into(),
        }
    }
    Err(format!("{last}; gave up after {ATTEMPTS} attempts"))
}

/// One start: `Ok(None)` when the server exited before it listened.
fn try_start_server(bin: &Path, workers: usize) -> Result<Option<Server>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pg = free_port().map_err(|e| e.to_string())?;
    let http = free_port().map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--pg-listen", &format!("127.0.0.1:{pg}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--workers", &workers.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env("SABOT_LOG", "warn")
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut server = Server {
        child,
        url: format!("host=127.0.0.1 port={pg} user=slt dbname=sabot"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if server
            .child
            .try_wait()
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(None);
        }
        if std::net::TcpStream::connect(("127.0.0.1", pg)).is_ok() {
            // Something listens there; make sure it is this server, not whoever took the port.
            std::thread::sleep(Duration::from_millis(100));
            if server
                .child
                .try_wait()
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Ok(None);
            }
            return Ok(Some(server));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("server did not start listening within 30 s".into())
}

fn collect(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                let mut inner: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                inner.sort();
                files.extend(collect(&inner));
            }
        } else if p.extension().is_some_and(|e| e == "slt") {
            files.push(p.clone());
        }
    }
    files
}

async fn run_file(url: &str, file: &Path) -> Result<usize, String> {
    let url = url.to_string();
    let mut runner = sqllogictest::Runner::new(move || {
        let url = url.clone();
        async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sabot { client })
        }
    });
    let records = sqllogictest::parse_file::<DefaultColumnType>(file).map_err(|e| e.to_string())?;
    let count = records
        .iter()
        .filter(|r| {
            matches!(
                r,
                sqllogictest::Record::Statement { .. } | sqllogictest::Record::Query { .. }
            )
        })
        .count();
    runner
        .run_file_async(file)
        .await
        .map_err(|e| e.display(true).to_string())?;
    Ok(count)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let sabot = args.sabot.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("sabot")))
            .unwrap_or_else(|| PathBuf::from("sabot"))
    });
    let files = collect(&args.paths);
    if files.is_empty() {
        eprintln!("no .slt files found");
        return ExitCode::FAILURE;
    }
    let (mut passed, mut failed, mut records) = (0, 0, 0);
    for file in &files {
        let started = Instant::now();
        let server = match &args.url {
            Some(_) => None,
            None => match start_server(&sabot, args.workers) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("FAIL {}: {e}", file.display());
                    failed += 1;
                    continue;
                }
            },
        };
        let url = args
            .url
            .clone()
            .or_else(|| server.as_ref().map(|s| s.url.clone()))
            .unwrap_or_default();
        match run_file(&url, file).await {
            Ok(n) => {
                passed += 1;
                records += n;
                println!(
                    "ok   {} ({n} records, {:.1}s)",
                    file.display(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {}\n{e}", file.display());
            }
        }
        drop(server);
    }
    println!("{records} records in {} files", files.len());
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
