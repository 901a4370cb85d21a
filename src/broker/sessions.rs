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

/// Saved sessions, with each user's client ids in the order they were saved (oldest first).
#[derive(Default)]
struct Saved {
    by_id: HashMap<String, (Option<String>, SavedSession)>,
    by_user: HashMap<String, Vec<String>>,
}

impl Saved {
    fn remove(&mut self, client_id: &str) -> Option<SavedSession> {
        let (user, session) = self.by_id.remove(client_id)?;
        if let Some(user) = user {
            if let Some(ids) = self.by_user.get_mut(&user) {
                ids.retain(|id| id != client_id);
                if ids.is_empty() {
                    self.by_user.remove(&user);
                }
            }
        }
        Some(session)
    }
}

/// Why [`Sessions::save`] dropped a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The user had `per_user` saved sessions: their oldest (this client id) made room.
    UsersOldest(String),
    /// `total` sessions are saved already: this one was not kept.
    Full,
}

/// Bounds on saved sessions.
#[derive(Clone, Copy, Debug)]
pub struct SaveCaps {
    /// Saved sessions one user may have (anonymous sessions count only towards `total`).
    pub per_user: usize,
    pub total: usize,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    saved: Mutex<Saved>,
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

    /// Keeps `user`'s session for `client_id`, within `caps`: a user at the cap loses their
    /// oldest saved session; when the broker holds `caps.total`, the new one is not kept.
    pub fn save(
        &self,
        user: Option<&str>,
        client_id: &str,
        session: SavedSession,
        caps: SaveCaps,
    ) -> Option<Dropped> {
        let mut saved = self.saved.lock();
        saved.remove(client_id);
        let mut dropped = None;
        if let Some(user) = user {
            let held = saved.by_user.get(user).map_or(0, Vec::len);
            if held >= caps.per_user.max(1) {
                let oldest = saved.by_user.get(user).and_then(|ids| ids.first().cloned());
                if let Some(oldest) = oldest {
                    saved.remove(&oldest);
                    dropped = Some(Dropped::UsersOldest(oldest));
                }
            }
        }
        if saved.by_id.len() >= caps.total {
            return Some(Dropped::Full);
        }
        if let Some(user) = user {
            saved
                .by_user
                .entry(user.to_owned())
                .or_default()
                .push(client_id.to_owned());
        }
        saved
            .by_id
            .insert(client_id.to_owned(), (user.map(str::to_owned), session));
        dropped
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
        let expired: Vec<String> = saved
            .by_id
            .iter()
            .filter(|(_, (_, s))| s.expired(now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            saved.remove(&id);
        }
        saved.by_id.len()
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

    const CAPS: SaveCaps = SaveCaps {
        per_user: 2,
        total: 4,
    };

    fn session(filter: &str) -> SavedSession {
        SavedSession::new(vec![filter.into()], vec![], Duration::from_secs(60))
    }

    #[test]
    fn saved_sessions_expire() {
        let s = Sessions::default();
        s.save(
            Some("a"),
            "a:1",
            SavedSession::new(vec!["chat/u/a/in/#".into()], vec![], Duration::ZERO),
            CAPS,
        );
        assert!(s.take("a:1").is_none());
        s.save(
            Some("a"),
            "a:1",
            SavedSession::new(vec![], vec!["x".into()], Duration::from_secs(60)),
            CAPS,
        );
        s.save(
            Some("a"),
            "a:2",
            SavedSession::new(vec![], vec![], Duration::ZERO),
            CAPS,
        );
        assert_eq!(s.sweep(), 1);
        assert_eq!(
            s.take("a:1").map(|s| s.general_filters),
            Some(vec!["x".to_string()])
        );
    }

    #[test]
    fn a_user_at_the_cap_loses_their_oldest_session() {
        let s = Sessions::default();
        assert_eq!(s.save(Some("a"), "a:1", session("1"), CAPS), None);
        assert_eq!(s.save(Some("a"), "a:2", session("2"), CAPS), None);
        // Saving an id again replaces it without counting twice.
        assert_eq!(s.save(Some("a"), "a:2", session("2b"), CAPS), None);
        assert_eq!(
            s.save(Some("a"), "a:3", session("3"), CAPS),
            Some(Dropped::UsersOldest("a:1".into()))
        );
        assert!(s.take("a:1").is_none());
        assert_eq!(
            s.take("a:2").map(|x| x.chat_filters),
            Some(vec!["2b".into()])
        );
        assert!(s.take("a:3").is_some());
        // Taken sessions no longer count.
        assert_eq!(s.save(Some("a"), "a:4", session("4"), CAPS), None);
        assert_eq!(s.save(Some("a"), "a:5", session("5"), CAPS), None);
    }

    #[test]
    fn the_total_cap_keeps_existing_sessions() {
        let s = Sessions::default();
        for i in 0..4 {
            let id = format!("~anon:{i}");
            assert_eq!(s.save(None, &id, session("x"), CAPS), None);
        }
        assert_eq!(
            s.save(None, "~anon:9", session("x"), CAPS),
            Some(Dropped::Full)
        );
        assert_eq!(
            s.save(Some("b"), "b:1", session("x"), CAPS),
            Some(Dropped::Full)
        );
        assert!(s.take("~anon:9").is_none());
        assert!(s.take("~anon:0").is_some());
        assert_eq!(s.save(Some("b"), "b:1", session("x"), CAPS), None);
        assert_eq!(s.sweep(), 4);
    }
}
