//! Crash points for tests: `SABOT_FAILPOINTS=name@n,other@m` makes the process abort
//! (as `kill -9` would stop it: no destructors, no flushing) the `n`-th time it passes
//! `name`. Recovery tests use them to stop the server at exactly the step they check,
//! such as after a sink's output is prepared but before its epoch commits. Without the
//! variable each point costs one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Points {
    /// Name → (hits so far, the hit that aborts).
    points: HashMap<String, (AtomicU64, u64)>,
}

fn points() -> &'static Points {
    static POINTS: OnceLock<Points> = OnceLock::new();
    POINTS.get_or_init(|| {
        let spec = std::env::var("SABOT_FAILPOINTS").unwrap_or_default();
        let points = spec
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let (name, n) = p.trim().split_once('@').unwrap_or((p.trim(), "1"));
                let n = n.parse().unwrap_or(1);
                (name.to_string(), (AtomicU64::new(0), n))
            })
            .collect();
        Points { points }
    })
}

/// Aborts the process if `name` is armed and this is its chosen pass.
pub fn crash_point(name: &str) {
    let points = points();
    if points.points.is_empty() {
        return;
    }
    if let Some((hits, at)) = points.points.get(name) {
        if hits.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            tracing::error!(failpoint = name, "crashing here, as SABOT_FAILPOINTS asks");
            std::process::abort();
        }
    }
}
