//! Client-id ownership (takeover) and persistent sessions.
//!
//! A client id is namespaced `{user}:{id}` before it gets here, so a takeover can only ever
//! be by the same user. Persistent sessions (3.1.1 clean_session = false, 5.0 session
//! expiry > 0) keep the connection's subscriptions for the chat plane here; the general
//! plane's session lives in rumqttd (the link is reopened with clean_session = false).

use super::registry::ConnId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Asks a live connection to close; it answers on the inner sender when it is gone.
pub type Kick = oneshot::Sender<oneshot::Sender<()>>;

struct Live {
    conn: ConnId,
    kick: Kick,
}

/// What a persistent session keeps between connections.
#[derive(Clone, Debug, Default)]
pub struct SavedSession {
    /// Chat-plane filters (re-applied, after the same checks as a SUBSCRIBE).
    pub chat_filters: Vec<String>,
    /// General-plane filters held by rumqttd for this client id.
    pub general_filters: Vec<String>,
    expires: Option<Instant>,
}

impl SavedSession {
    pub fn new(chat_filters: Vec<String>, general_filters: Vec<String>, ttl: Duration) -> Self {
        SavedSession {
            chat_filters,
            general_filters,
            expires: Instant::now().checked_add(ttl),
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    saved: Mutex<HashMap<String, SavedSession>>,
}

impl Sessions {
    /// Makes `conn` the owner of `client_id`; returns the previous owner's kick handle.
    pub fn claim(&self, client_id: &str, conn: ConnId, kick: Kick) -> Option<Kick> {
        self.live
            .lock()
            .insert(client_id.to_owned(), Live { conn, kick })
            .map(|old| old.kick)
    }

    /// Gives up ownership, unless another connection has taken it over meanwhile.
    pub fn release(&self, client_id: &str, conn: ConnId) {
        let mut live = self.live.lock();
        if live.get(client_id).is_some_and(|l| l.conn == conn) {
            live.remove(client_id);
        }
    }

    pub fn save(&self, client_id: &str, session: SavedSession) {
        self.saved.lock().insert(client_id.to_owned(), session);
    }

    /// Takes a saved, unexpired session.
    pub fn take(&self, client_id: &str) -> Option<SavedSession> {
        let s = self.saved.lock().remove(client_id)?;
        (!s.expired(Instant::now())).then_some(s)
    }

    pub fn discard(&self, client_id: &str) {
        self.saved.lock().remove(client_id);
    }

    /// Drops expired sessions; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut saved = self.saved.lock();
        saved.retain(|_, s| !s.expired(now));
        saved.len()
    }

    /// Whether a connection currently owns `client_id`.
    pub fn is_live(&self, client_id: &str) -> bool {
        self.live.lock().contains_key(client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_returns_previous_owner_and_release_respects_takeover() {
        let s = Sessions::default();
        let (k1, _r1) = oneshot::channel();
        let (k2, _r2) = oneshot::channel();
        assert!(s.claim("alice:phone", 1, k1).is_none());
        assert!(s.claim("alice:phone", 2, k2).is_some());
        s.release("alice:phone", 1);
        assert!(s.is_live("alice:phone"), "still owned by connection 2");
        s.release("alice:phone", 2);
        assert!(!s.is_live("alice:phone"));
    }

    #[test]
    fn saved_sessions_expire() {
        let s = Sessions::default();
        s.save(
            "a:1",
            SavedSession::new(vec!["chat/u/a/in/#".into()], vec![], Duration::ZERO),
        );
        assert!(s.take("a:1").is_none());
        s.save(
            "a:1",
            SavedSession::new(vec![], vec!["x".into()], Duration::from_secs(60)),
        );
        assert_eq!(s.sweep(), 1);
        assert_eq!(
            s.take("a:1").map(|s| s.general_filters),
            Some(vec!["x".to_string()])
        );
    }
}
