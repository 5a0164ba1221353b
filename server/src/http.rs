//! A minimal HTTP endpoint: `/health` and a first `/metrics` in Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;

use sabot_planner::{Database, RelationKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, db: Arc<Database>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                socket.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/health" => ("200 OK", "ok\n".to_string()),
                "/metrics" => ("200 OK", metrics(&db)),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

fn metrics(db: &Database) -> String {
    let snap = db.snapshot();
    let mut s = String::new();
    let _ = writeln!(s, "# HELP sabot_committed_epoch The last committed epoch.");
    let _ = writeln!(s, "# TYPE sabot_committed_epoch gauge");
    let _ = writeln!(s, "sabot_committed_epoch {}", snap.epoch);
    let _ = writeln!(
        s,
        "# HELP sabot_relation_rows Rows in each table and view as of the last committed epoch."
    );
    let _ = writeln!(s, "# TYPE sabot_relation_rows gauge");
    for (name, rel) in &snap.relations {
        let kind = match rel.kind {
            RelationKind::Table => "table",
            RelationKind::MaterializedView => "materialized_view",
            // A source holds no rows of its own.
            RelationKind::Source | RelationKind::Sink => continue,
        };
        let _ = writeln!(
            s,
            "sabot_relation_rows{{name=\"{name}\",kind=\"{kind}\"}} {}",
            rel.data.num_rows()
        );
    }
    let _ = writeln!(
        s,
        "# HELP sabot_source_errors_total Records each source skipped as malformed since the server started."
    );
    let _ = writeln!(s, "# TYPE sabot_source_errors_total counter");
    for (name, log) in &snap.source_errors {
        let _ = writeln!(
            s,
            "sabot_source_errors_total{{source=\"{name}\"}} {}",
            log.total()
        );
    }
    s
}
