//! Presence, last seen and profiles: what is announced on `chat/p/{user}` and answered to
//! `profile.*` and `presence.get`.

use super::*;
use crate::protocol::ProfileChange;

impl ChatService {
    /// Moves last seen, at most once per [`LAST_SEEN_EVERY`] per user.
    pub(super) async fn activity(&self, user: &str, force: bool) {
        let now = Instant::now();
        {
            let mut seen = self.last_seen_written.lock();
            match seen.get(user) {
                Some(t) if !force && now.duration_since(*t) < LAST_SEEN_EVERY => return,
                _ => {
                    seen.insert(user.to_owned(), now);
                }
            }
        }
        if let Err(e) = self.store.touch_last_seen(user, now_ms()).await {
            debug!(error = %e, "last seen not recorded");
        }
    }

    pub(super) fn presence_of(
        &self,
        user: &str,
        hide: bool,
        last_seen: Option<i64>,
        viewer: &str,
    ) -> PresenceOut {
        let state = if self.registry.is_online(user) {
            PresenceState::Online
        } else {
            PresenceState::Offline
        };
        let last_seen = super::convert::visible_last_seen(user, hide, last_seen, viewer);
        PresenceOut { state, last_seen }
    }

    /// `user`'s presence as everyone else sees it (connections + stored last seen).
    pub(super) async fn current_presence(&self, user: &str) -> Result<PresenceOut, StoreError> {
        let profile = self.store.profiles(&[user.to_owned()]).await?.pop();
        let (hide, last_seen) = profile.map_or((false, None), |p| (p.hide_last_seen, p.last_seen));
        Ok(self.presence_of(user, hide, last_seen, ""))
    }

    pub(super) async fn announce_presence(&self, user: &str) {
        // Without the store the state is still worth announcing, just without last seen.
        let out = match self.current_presence(user).await {
            Ok(out) => out,
            Err(_) => self.presence_of(user, false, None, ""),
        };
        let d = Delivery {
            topic: Bytes::from(presence_topic(user)),
            payload: self.encode(&out),
            qos: 1,
            retain: true,
            props: None,
        };
        self.registry.deliver_presence(user, &d);
    }

    pub(super) async fn profile_set(
        &self,
        me: &str,
        update: ProfileChange,
    ) -> Result<RpcResult, ChatError> {
        let p = self.store.set_profile(me, update.into()).await?;
        Ok(RpcResult::Profile(ProfileOut::from_profile(p, me)))
    }

    pub(super) async fn profile_get(
        &self,
        me: &str,
        users: Vec<String>,
    ) -> Result<RpcResult, ChatError> {
        let profiles = self
            .store
            .profiles(&users)
            .await?
            .into_iter()
            .map(|p| ProfileOut::from_profile(p, me))
            .collect();
        Ok(RpcResult::Profiles(ProfilesOut { profiles }))
    }

    pub(super) async fn presence_get(
        &self,
        me: &str,
        users: Vec<String>,
    ) -> Result<RpcResult, ChatError> {
        let mut presence = Vec::with_capacity(users.len());
        for p in self.store.profiles(&users).await? {
            let out = self.presence_of(&p.user, p.hide_last_seen, p.last_seen, me);
            presence.push(PresenceEntry {
                user: p.user,
                state: out.state,
                last_seen: out.last_seen,
            });
        }
        Ok(RpcResult::Presence(PresenceListOut { presence }))
    }
}
