//! After the socket: will, persistent session, engine link, registry and presence.

use super::*;

impl Conn {
    /// Cleanup after the socket is gone: will, session, engine link, registry, presence.
    pub(super) async fn finish(mut self, close: Close) {
        debug!(?close, "closed");
        let chat_filters = self.chat.take().map(|c| c.end()).unwrap_or_default();
        if close.publishes_will() {
            if let Some(will) = self.will.take() {
                self.publish_will(will);
            }
        }
        let persistent = !self.session_ttl.is_zero();
        if persistent {
            let general = self.general.filters.drain().collect();
            let cfg = &self.state.config.mqtt;
            let caps = SaveCaps {
                per_user: cfg.max_saved_sessions_per_user,
                total: cfg.max_saved_sessions,
            };
            let user = self.client.as_ref().map(|c| c.user.as_str());
            let session = SavedSession::new(chat_filters, general, self.session_ttl);
            match self
                .state
                .sessions
                .save(user, &self.namespaced, session, caps)
            {
                None => {}
                Some(Dropped::UsersOldest(id)) => {
                    metrics::counter!(m::LIMITS_HIT, "limit" => "saved_sessions_per_user")
                        .increment(1);
                    info!(
                        dropped = %id,
                        max = caps.per_user,
                        "the user's oldest saved session was dropped to keep this one"
                    );
                }
                Some(Dropped::Full) => {
                    metrics::counter!(m::LIMITS_HIT, "limit" => "saved_sessions").increment(1);
                    warn!(
                        max = caps.total,
                        "session not kept: mqtt.max_saved_sessions reached"
                    );
                }
            }
        }
        if let Some(link) = self.general.link.take() {
            link.close().await;
        }
        let remaining = self.state.registry.unregister(self.conn_id);
        if let Some(client) = &self.client {
            self.state.chat.detached(client, remaining).await;
        }
        self.state.sessions.release(&self.namespaced, self.conn_id);
        if let Close::TakenOver(Some(done)) = close {
            let _ = done.send(());
        }
    }

    pub(super) fn publish_will(&self, will: Will) {
        let delay = will.delay.min(self.session_ttl);
        let engine = self.state.engine.clone();
        if delay.is_zero() {
            engine.publish_will(&will.will, will.props.as_ref());
            return;
        }
        // 5.0 will delay: publish later unless the client id is back online by then. At most
        // `mqtt.max_connections` wills wait at once; past that one is published now (early,
        // never lost).
        let Ok(slot) = self.state.will_slots.clone().try_acquire_owned() else {
            metrics::counter!(m::LIMITS_HIT, "limit" => "delayed_wills").increment(1);
            engine.publish_will(&will.will, will.props.as_ref());
            return;
        };
        let state = self.state.clone();
        let id = self.namespaced.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::time::sleep(delay).await;
            if !state.sessions.is_live(&id) {
                engine.publish_will(&will.will, will.props.as_ref());
            }
        });
    }
}
