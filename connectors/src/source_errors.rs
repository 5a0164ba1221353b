//! Records a source skipped as malformed: counted, and the most recent ones kept with
//! their position and error for `sabot_catalog.source_errors`.
//!
//! Every view reads a source on its own, so the same bad record is met once per view
//! (and again after a restart replays it): entries are keyed by split and offset and a
//! record is counted once while its entry is kept.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// How many skipped records a source keeps by default.
pub const DEFAULT_KEPT: usize = 1000;

/// How many characters of a bad record's payload are kept.
const PAYLOAD_CHARS: usize = 256;

/// One skipped record.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceError {
    /// When it was met, ms since the Unix epoch.
    pub at_ms: i64,
    /// The split it came from (a Kafka partition number).
    pub split: String,
    pub offset: u64,
    pub error: String,
    /// The start of the record, lossily as UTF-8.
    pub payload: String,
}

#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<SourceError>,
    keys: HashSet<(String, u64)>,
    total: u64,
}

/// A bounded log of skipped records, shared by every reader of one source.
#[derive(Debug)]
pub struct SourceErrors {
    capacity: usize,
    log: Mutex<Log>,
}

impl SourceErrors {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            log: Mutex::new(Log::default()),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic elsewhere while holding the lock leaves the log usable.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a skipped record (once per split and offset while it is kept).
    pub fn record(&self, split: &str, offset: u64, error: &str, payload: &[u8]) {
        let key = (split.to_string(), offset);
        let mut log = self.log();
        if log.keys.contains(&key) {
            return;
        }
        log.total += 1;
        if log.entries.len() == self.capacity {
            if let Some(old) = log.entries.pop_front() {
                log.keys.remove(&(old.split, old.offset));
            }
        }
        let payload: String = String::from_utf8_lossy(payload)
            .chars()
            .take(PAYLOAD_CHARS)
            .collect();
        log.entries.push_back(SourceError {
            at_ms: now_ms(),
            split: key.0.clone(),
            offset,
            error: error.to_string(),
            payload,
        });
        log.keys.insert(key);
    }

    /// Records skipped since the server started.
    pub fn total(&self) -> u64 {
        self.log().total
    }

    /// The kept entries, oldest first.
    pub fn entries(&self) -> Vec<SourceError> {
        self.log().entries.iter().cloned().collect()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_counted_once() {
        let log = SourceErrors::new(2);
        log.record("0", 5, "bad", b"x");
        log.record("0", 5, "bad", b"x"); // a second view meets it too
        log.record("1", 5, "bad", &[0xff, b'y']);
        log.record("1", 6, "worse", b"z");
        assert_eq!(log.total(), 3);
        let e = log.entries();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].split.as_str(), e[0].offset), ("1", 5));
        assert_eq!(e[0].payload, "\u{fffd}y");
        assert_eq!(e[1].error, "worse");
    }
}
