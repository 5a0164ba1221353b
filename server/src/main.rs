//! `sabot`: a streaming SQL database that speaks the PostgreSQL protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sabot_planner::DbConfig;
use sabot_server::auth::AuthMode;
use sabot_server::{serve, ServeConfig};

#[derive(Parser)]
#[command(
    name = "sabot",
    version,
    about = "Sabot: a streaming SQL database that speaks the PostgreSQL protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve {
        /// Directory of the RocksDB store (created if missing).
        #[arg(long, default_value = "./sabot-data")]
        data_dir: PathBuf,
        /// Address for PostgreSQL clients (psql -h HOST -p PORT).
        #[arg(long, default_value = "127.0.0.1:5544")]
        pg_listen: SocketAddr,
        /// Address for HTTP (/health, /metrics).
        #[arg(long, default_value = "127.0.0.1:5545")]
        http_listen: SocketAddr,
        /// Worker threads per dataflow (default: the number of cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Time between checkpoints, e.g. `1s`, `250ms` (FLUSH also commits at once).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        checkpoint_interval: Duration,
        /// How clients log in: `trust` (default on a loopback address) or `password`
        /// (SCRAM-SHA-256; required choice on any other address).
        #[arg(long, value_enum)]
        auth: Option<AuthMode>,
        /// PEM certificate chain for TLS (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for TLS (with --tls-cert).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Where new views' aggregations run: `off` (CPU), `auto` (the GPU when there is
        /// one, through libcudf), `on` (as auto, but a view fails to create without a
        /// GPU). Sessions override it with `SET gpu`.
        #[arg(long, default_value = "auto")]
        gpu: String,
        /// The GPU shim, libsabot_cudf.so (default: $SABOT_GPU_LIBRARY, else found on
        /// the library path). See gpu/README.md.
        #[arg(long)]
        gpu_library: Option<PathBuf>,
        /// Rows an aggregation buffers at least before the GPU takes them.
        #[arg(long, default_value_t = sabot_planner::gpu::DEFAULT_GPU_MIN_ROWS)]
        gpu_min_rows: usize,
    },
    /// Write the events a nexmark source generates to files, `person.json`,
    /// `auction.json` and `bid.json` (JSON lines, the sources' columns), so that another
    /// engine can read the same events (benches/nexmark compares with Flink this way).
    NexmarkGen {
        /// Events in all (every kind counts), as `nexmark.event.num`.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// As `nexmark.seed`.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure the nexmark generator alone: generate a source's rows as a split does
    /// (one split, one thread, no rate limit), keep nothing, and print the rate.
    NexmarkRate {
        /// Events in all (every kind counts), as `nexmark.event.num`.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// `Person`, `Auction` or `Bid`, as `nexmark.table.type`.
        #[arg(long, default_value = "Bid")]
        table: String,
    },
}

/// `sabot nexmark-rate`: one line, `table rows seconds events/s rows/s`, where events/s
/// counts the whole event stream the rows were drawn from.
fn nexmark_rate(events: u64, table: &str) -> Result<(), String> {
    use sabot_connectors::nexmark::NexmarkConfig;
    use sabot_connectors::{Options, Split};
    use std::io::Write;
    let config = NexmarkConfig::from_options(&Options::new([
        ("nexmark.table.type".to_string(), table.to_string()),
        ("nexmark.event.num".to_string(), events.to_string()),
        ("nexmark.split.num".to_string(), "1".to_string()),
        ("nexmark.min.event.gap.in.ns".to_string(), "0".to_string()),
    ]))
    .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let mut rows = 0u64;
    for mut split in config.splits() {
        while let Some(b) = split.next_batch(8192).map_err(|e| e.to_string())? {
            rows += b.num_rows() as u64;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{table} rows={rows} seconds={secs:.3} events/s={:.0} rows/s={:.0}",
        events as f64 / secs,
        rows as f64 / secs
    )
    .map_err(|e| e.to_string())
}

/// `sabot nexmark-gen`.
fn nexmark_gen(events: u64, seed: u64, out: &std::path::Path) -> Result<(), String> {
    use sabot_connectors::nexmark::{write_json_lines, EventKind};
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (kind, name) in [
        (EventKind::Person, "person"),
        (EventKind::Auction, "auction"),
        (EventKind::Bid, "bid"),
    ] {
        let path = out.join(format!("{name}.json"));
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rows = write_json_lines(kind, events, seed, std::io::BufWriter::new(file))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), rows, "written");
    }
    Ok(())
}

/// Rust's allocations go to jemalloc: state operators allocate and free many small
/// keys per row, and glibc's malloc spent 15–20% of the Nexmark queries' CPU on it
/// (consolidating freed chunks). RocksDB's C++ keeps glibc's malloc.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// glibc gives threads that allocate at once arenas of their own (up to eight per core),
/// and the dataflow runs each node of each epoch on fresh scoped threads: memory freed
/// in one arena is not reused by another, and on the soak test (benches/soak) RSS crept
/// up by about 0.1 MiB/s. With two arenas it stays flat. `MALLOC_ARENA_MAX` in the
/// environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it runs before any thread
        // is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SABOT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::NexmarkRate { events, table } => match nexmark_rate(events, &table) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "nexmark-rate failed");
                ExitCode::FAILURE
            }
        },
        Command::NexmarkGen { events, seed, out } => match nexmark_gen(events, seed, &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "nexmark-gen failed");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            data_dir,
            pg_listen,
            http_listen,
            workers,
            checkpoint_interval,
            auth,
            tls_cert,
            tls_key,
            gpu,
            gpu_library,
            gpu_min_rows,
        } => {
            let gpu = match sabot_planner::gpu::GpuMode::parse(&gpu) {
                Ok(mode) => sabot_planner::gpu::GpuSettings {
                    mode,
                    min_rows: gpu_min_rows.max(1),
                },
                Err(e) => {
                    tracing::error!(error = %e.client_message(), "--gpu");
                    return ExitCode::FAILURE;
                }
            };
            if gpu.mode != sabot_planner::gpu::GpuMode::Off {
                match sabot_gpu::init(gpu_library.as_deref()) {
                    Ok(g) => {
                        tracing::info!(device = %g.device().name, library = %g.path(), "GPU ready")
                    }
                    Err(why) if gpu.mode == sabot_planner::gpu::GpuMode::On => {
                        tracing::error!(reason = %why, "--gpu on, but there is no GPU");
                        return ExitCode::FAILURE;
                    }
                    Err(why) => {
                        tracing::info!(reason = %why, "no GPU: aggregations run on the CPU")
                    }
                }
            }
            let workers = workers
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                })
                .max(1);
            let config = ServeConfig {
                db: DbConfig {
                    data_dir,
                    workers,
                    checkpoint_interval: checkpoint_interval.max(Duration::from_millis(10)),
                    gpu,
                },
                pg_listen,
                http_listen,
                auth,
                tls: tls_cert.zip(tls_key),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "sabot stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Parses `1s`, `250ms`, `2m` or a bare number of milliseconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "ms"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 1s or 250ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    }
}
