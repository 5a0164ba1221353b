//! # sabot-server: the `sabot` binary's library
//!
//! [`serve`] opens the database, starts the checkpoint loop, and accepts PostgreSQL wire
//! connections ([`handler`]) and HTTP requests ([`http`]: `/health`, `/metrics`).
//! [`encode`] turns Arrow results into wire values; [`params`] binds prepared-statement
//! parameters.

pub mod auth;
pub mod cancel;
pub mod copy;
pub mod encode;
pub mod handler;
pub mod http;
pub mod params;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use auth::AuthMode;
use sabot_planner::{Database, DbConfig, UserMeta};
use tokio::net::TcpListener;

/// Everything `sabot serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub db: DbConfig,
    pub pg_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// None: trust on a loopback address, refuse to start on any other.
    pub auth: Option<AuthMode>,
    /// PEM certificate chain and private key: clients may use TLS (`sslmode=require`).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database: {0}")]
    Open(#[from] sabot_planner::PlanError),
    #[error(
        "refusing to listen on {0} without authentication: pass --auth password (roles \
         log in with their passwords; SABOT_PASSWORD sets the sabot role's), or --auth trust \
         to let anyone who can reach it in"
    )]
    Insecure(SocketAddr),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the server until the process ends.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let loopback = config.pg_listen.ip().is_loopback();
    let auth = match config.auth {
        Some(a) => a,
        None if loopback => AuthMode::Trust,
        None => return Err(ServeError::Insecure(config.pg_listen)),
    };
    let tls = match &config.tls {
        Some((cert, key)) => Some(auth::tls_acceptor(cert, key).map_err(ServeError::Tls)?),
        None => None,
    };
    let db = Database::open(config.db.clone()).await?;
    if let Ok(password) = std::env::var("SABOT_PASSWORD") {
        db.create_user(
            UserMeta {
                name: sabot_planner::pg_catalog::OWNER.to_string(),
                superuser: true,
                verifier: Some(auth::verifier(&password)),
            },
            true,
        )
        .await?;
    }
    if auth == AuthMode::Password && db.users().iter().all(|u| u.verifier.is_none()) {
        tracing::warn!("--auth password, but no role has a password: set SABOT_PASSWORD");
    }
    if auth == AuthMode::Trust && !loopback {
        tracing::warn!(addr = %config.pg_listen, "--auth trust on a non-loopback address: anyone who reaches it gets in");
    }
    let pg = TcpListener::bind(config.pg_listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.pg_listen,
            source,
        })?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.http_listen,
            source,
        })?;
    tracing::info!(pg = %config.pg_listen, http = %config.http_listen, data_dir = %config.db.data_dir.display(), "sabot is ready");

    tokio::spawn(checkpoint_loop(Arc::clone(&db)));
    let recorder = http::install_recorder();
    // 1 where the process found a GPU (gpu/README.md).
    metrics::gauge!("sabot_gpu_available").set(if sabot_gpu::global().is_some() {
        1.0
    } else {
        0.0
    });
    tokio::spawn(http::serve(http, Arc::clone(&db), recorder));

    let factory = Arc::new(handler::HandlerFactory {
        handler: Arc::new(handler::SabotHandler::new(db, auth)),
    });
    loop {
        match pg.accept().await {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                let factory = Arc::clone(&factory);
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, tls, factory).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Commits an epoch every `checkpoint_interval`, and back to back while a source reader
/// has more rows ready than an epoch takes.
async fn checkpoint_loop(db: Arc<Database>) {
    let mut tick = tokio::time::interval(db.config().checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            if let Err(e) = db.checkpoint().await {
                tracing::error!(error = %e, "checkpoint failed");
                break;
            }
            if !db.wants_more().await {
                break;
            }
            // Let statements waiting for the engine lock in between epochs.
            tokio::task::yield_now().await;
        }
    }
}
