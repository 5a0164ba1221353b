//! The server's client sessions: what CancelRequest, `pg_cancel_backend`,
//! `pg_terminate_backend` and `pg_stat_activity` reach.
//!
//! Each session registers when its startup is done and is forgotten when its connection
//! ends. A CancelRequest (on a second connection, naming the session's process id and
//! secret key) or `pg_cancel_backend(pid)` wakes whatever the session awaits at that
//! moment; a session that runs nothing ignores it, as PostgreSQL does. What a statement
//! does when woken is up to the handler: reads stop at once, a view's backfill stops
//! between steps, and statements that change state run to their end.
//! `pg_terminate_backend(pid)` also marks the session: it ends with FATAL 57P01 when its
//! statement stops, or at its next message when idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;
use pgwire::messages::startup::SecretKey;
use sabot_planner::{Activity, SessionControl};
use tokio::sync::Notify;

/// Every session, by process id and secret key.
#[derive(Debug, Default)]
pub struct Cancels {
    sessions: Mutex<HashMap<(i32, Bytes), Arc<SessionEntry>>>,
}

/// One session as the others see it.
#[derive(Debug)]
pub struct SessionEntry {
    pub pid: i32,
    user: String,
    application_name: Mutex<String>,
    started: SystemTime,
    /// The statement running or last run, when it started, and whether it still runs.
    query: Mutex<Option<(String, SystemTime, bool)>>,
    /// Woken by a cancel or terminate request for this session.
    pub notify: Notify,
    terminated: AtomicBool,
}

impl SessionEntry {
    /// Marks `query` as running from now.
    pub fn start(&self, query: &str) {
        *self.query.lock() = Some((query.to_string(), SystemTime::now(), true));
    }

    /// Marks the running statement as done.
    pub fn finish(&self) {
        if let Some(q) = self.query.lock().as_mut() {
            q.2 = false;
        }
    }

    pub fn set_application_name(&self, name: &str) {
        *self.application_name.lock() = name.to_string();
    }

    /// Whether `pg_terminate_backend` ended this session.
    pub fn terminated(&self) -> bool {
        self.terminated.load(Ordering::SeqCst)
    }
}

/// A session's entry, kept in its connection's extensions; dropping it (the connection
/// ends) removes the entry.
#[derive(Debug)]
pub struct Registration {
    key: (i32, Bytes),
    cancels: Arc<Cancels>,
    pub entry: Arc<SessionEntry>,
}

impl Cancels {
    pub fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: &SecretKey,
        user: &str,
        application_name: &str,
    ) -> Registration {
        let key = (pid, secret.to_bytes());
        let entry = Arc::new(SessionEntry {
            pid,
            user: user.to_string(),
            application_name: Mutex::new(application_name.to_string()),
            started: SystemTime::now(),
            query: Mutex::new(None),
            notify: Notify::new(),
            terminated: AtomicBool::new(false),
        });
        self.sessions.lock().insert(key.clone(), Arc::clone(&entry));
        Registration {
            key,
            cancels: Arc::clone(self),
            entry,
        }
    }

    /// A CancelRequest: wakes the session's running statement. False when no session
    /// has that pid and key (a stale or forged request), which is ignored.
    pub fn cancel_request(&self, pid: i32, secret: &SecretKey) -> bool {
        let entry = self.sessions.lock().get(&(pid, secret.to_bytes())).cloned();
        match entry {
            Some(e) => {
                e.notify.notify_waiters();
                true
            }
            None => false,
        }
    }

    fn by_pid(&self, pid: i32) -> Option<Arc<SessionEntry>> {
        self.sessions
            .lock()
            .values()
            .find(|e| e.pid == pid)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SessionControl for Cancels {
    fn activity(&self) -> Vec<Activity> {
        let mut all: Vec<Activity> = self
            .sessions
            .lock()
            .values()
            .map(|e| {
                let query = e.query.lock().clone();
                Activity {
                    pid: e.pid,
                    user: e.user.clone(),
                    application_name: e.application_name.lock().clone(),
                    backend_start: e.started,
                    active: query.as_ref().is_some_and(|q| q.2),
                    query: query.map(|(q, t, _)| (q, t)),
                }
            })
            .collect();
        all.sort_by_key(|a| a.pid);
        all
    }

    fn cancel(&self, pid: i32) -> bool {
        match self.by_pid(pid) {
            Some(e) => {
                e.notify.notify_waiters();
                true
            }
            None => false,
        }
    }

    fn terminate(&self, pid: i32) -> bool {
        match self.by_pid(pid) {
            Some(e) => {
                e.terminated.store(true, Ordering::SeqCst);
                e.notify.notify_waiters();
                true
            }
            None => false,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels.sessions.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_wakes_only_its_session_and_ends_with_the_connection() {
        let cancels = Arc::new(Cancels::default());
        let a = cancels.register(1, &SecretKey::I32(7), "u", "psql");
        let b = cancels.register(2, &SecretKey::I32(8), "u", "");
        let (a_entry, b_entry) = (Arc::clone(&a.entry), Arc::clone(&b.entry));
        let woken = a_entry.notify.notified();
        let other = b_entry.notify.notified();
        tokio::pin!(woken, other);
        woken.as_mut().enable();
        other.as_mut().enable();
        // A wrong key is ignored.
        assert!(!cancels.cancel_request(1, &SecretKey::I32(8)));
        // The same key sent as bytes (protocol 3.2's form) reaches it.
        let as_bytes = SecretKey::Bytes(Bytes::copy_from_slice(&7i32.to_be_bytes()));
        assert!(cancels.cancel_request(1, &as_bytes));
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("the cancelled session is woken");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), other)
                .await
                .is_err(),
            "the other session is not"
        );
        a.entry.start("SELECT 1");
        let seen = cancels.activity();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].active && seen[0].application_name == "psql");
        assert!(!seen[1].active && seen[1].query.is_none());
        assert!(cancels.terminate(2) && b.entry.terminated());
        assert!(!a.entry.terminated());
        drop(a);
        assert_eq!(cancels.len(), 1);
        assert!(!cancels.cancel_request(1, &SecretKey::I32(7)));
        assert!(!cancels.cancel(1));
    }
}
