//! # sabot-server: the `sabot` binary's library
//!
//! [`serve`] opens the database, starts the checkpoint loop, and accepts PostgreSQL wire
//! connections ([`handler`]) and HTTP requests ([`http`]: `/health`, `/metrics`).
//! [`encode`] turns Arrow results into wire values; [`params`] binds prepared-statement
//! parameters.

pub mod copy;
pub mod encode;
pub mod handler;
pub mod http;
pub mod params;

use std::net::SocketAddr;
use std::sync::Arc;

use sabot_planner::{Database, DbConfig};
use tokio::net::TcpListener;

/// Everything `sabot serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub db: DbConfig,
    pub pg_listen: SocketAddr,
    pub http_listen: SocketAddr,
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database: {0}")]
    Open(#[from] sabot_planner::PlanError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the server until the process ends.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let db = Database::open(config.db.clone()).await?;
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
    tokio::spawn(http::serve(http, Arc::clone(&db)));

    let factory = Arc::new(handler::HandlerFactory {
        handler: Arc::new(handler::SabotHandler::new(db)),
    });
    loop {
        match pg.accept().await {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                let factory = Arc::clone(&factory);
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, factory).await {
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
