//! CancelRequest: a client asks, on a second connection that names its session's process
//! id and secret key, to stop the statement that session runs.
//!
//! Each session registers at startup and is forgotten when its connection ends. A cancel
//! wakes whatever the session awaits at that moment; a session that runs nothing ignores
//! it, as PostgreSQL does. What a statement does when woken is up to the handler: reads
//! stop at once, a view's backfill stops between steps, and statements that change
//! state run to their end.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use pgwire::messages::startup::SecretKey;
use tokio::sync::Notify;

/// Every session that can be cancelled, by process id and secret key.
#[derive(Debug, Default)]
pub struct Cancels {
    sessions: Mutex<HashMap<(i32, Bytes), Arc<Notify>>>,
}

/// A session's entry, kept in its connection's extensions; dropping it (the connection
/// ends) removes the entry.
#[derive(Debug)]
pub struct Registration {
    key: (i32, Bytes),
    cancels: Arc<Cancels>,
    /// Woken by a cancel request for this session.
    pub notify: Arc<Notify>,
}

impl Cancels {
    pub fn register(self: &Arc<Self>, pid: i32, secret: &SecretKey) -> Registration {
        let key = (pid, secret.to_bytes());
        let notify = Arc::new(Notify::new());
        self.sessions
            .lock()
            .insert(key.clone(), Arc::clone(&notify));
        Registration {
            key,
            cancels: Arc::clone(self),
            notify,
        }
    }

    /// Wakes the session's running statement. False when no session has that pid and
    /// key (a stale or forged request), which is ignored.
    pub fn cancel(&self, pid: i32, secret: &SecretKey) -> bool {
        let notify = self.sessions.lock().get(&(pid, secret.to_bytes())).cloned();
        match notify {
            Some(n) => {
                n.notify_waiters();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let a = cancels.register(1, &SecretKey::I32(7));
        let b = cancels.register(2, &SecretKey::I32(8));
        let (a_notify, b_notify) = (Arc::clone(&a.notify), Arc::clone(&b.notify));
        let woken = a_notify.notified();
        let other = b_notify.notified();
        tokio::pin!(woken, other);
        woken.as_mut().enable();
        other.as_mut().enable();
        // A wrong key is ignored.
        assert!(!cancels.cancel(1, &SecretKey::I32(8)));
        // The same key sent as bytes (protocol 3.2's form) reaches it.
        let as_bytes = SecretKey::Bytes(Bytes::copy_from_slice(&7i32.to_be_bytes()));
        assert!(cancels.cancel(1, &as_bytes));
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("the cancelled session is woken");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), other)
                .await
                .is_err(),
            "the other session is not"
        );
        drop(a);
        assert_eq!(cancels.len(), 1);
        assert!(!cancels.cancel(1, &SecretKey::I32(7)));
    }
}
