//! Group ops (create, add, remove, leave, info, list) and the membership events they send.

use super::*;

impl ChatService {
    pub(super) async fn group_create(
        &self,
        me: &str,
        name: String,
        members: Vec<String>,
    ) -> Result<RpcResult, ChatError> {
        let ts = now_ms();
        let gid = format!("g{:x}", self.ids.next(ts));
        let info = self
            .store
            .create_group(&gid, &name, me, &members, ts, self.group_max_members)
            .await?;
        let mut everyone = self.store.members(&gid).await?;
        everyone.sort();
        let ev = EventOut {
            kind: EventKind::GroupCreated,
            gid: gid.clone(),
            by: me.to_owned(),
            users: everyone.clone(),
            ts,
            name: Some(name),
        };
        self.announce_membership(&ev);
        Ok(RpcResult::Group(GroupInfoOut::from_info(
            info,
            Some(everyone),
        )))
    }

    pub(super) async fn group_add(
        &self,
        me: &str,
        gid: String,
        users: Vec<String>,
    ) -> Result<RpcResult, ChatError> {
        self.require_admin(&gid, me).await?;
        let change = self
            .store
            .add_members(&gid, &users, now_ms(), self.group_max_members)
            .await?;
        if !change.changed.is_empty() {
            let ev = EventOut {
                kind: EventKind::GroupAdded,
                gid: gid.clone(),
                by: me.to_owned(),
                users: change.changed.clone(),
                ts: now_ms(),
                name: None,
            };
            self.announce_membership(&ev);
        }
        Ok(RpcResult::Membership(MembershipOut::of(&gid, change)))
    }

    pub(super) async fn group_remove(
        &self,
        me: &str,
        gid: String,
        users: Vec<String>,
    ) -> Result<RpcResult, ChatError> {
        self.require_admin(&gid, me).await?;
        let change = self.store.remove_members(&gid, &users).await?;
        self.after_removal(&gid, me, &change.changed, EventKind::GroupRemoved)
            .await;
        Ok(RpcResult::Membership(MembershipOut::of(&gid, change)))
    }

    pub(super) async fn group_leave(&self, me: &str, gid: String) -> Result<RpcResult, ChatError> {
        if !self.is_member(&gid, me).await? {
            return Err(ChatError::not_found(format!("not a member of group {gid}")));
        }
        let change = self.store.remove_members(&gid, &[me.to_owned()]).await?;
        self.after_removal(&gid, me, &change.changed, EventKind::GroupLeft)
            .await;
        Ok(RpcResult::Membership(MembershipOut::of(&gid, change)))
    }

    pub(super) async fn group_info(&self, me: &str, gid: String) -> Result<RpcResult, ChatError> {
        let info = self
            .store
            .group(&gid)
            .await?
            .ok_or_else(|| ChatError::not_found(format!("no group {gid}")))?;
        if !self.is_member(&gid, me).await? {
            return Err(ChatError::forbidden(format!("not a member of group {gid}")));
        }
        let members = if info.member_count <= GROUP_INFO_MEMBERS_MAX {
            let mut m = self.store.members(&gid).await?;
            m.sort();
            Some(m)
        } else {
            None
        };
        Ok(RpcResult::Group(GroupInfoOut::from_info(info, members)))
    }

    pub(super) async fn group_list(&self, me: &str) -> Result<RpcResult, ChatError> {
        let mut groups = Vec::new();
        for gid in self.store.groups_of(me).await? {
            if let Some(info) = self.store.group(&gid).await? {
                groups.push(GroupInfoOut::from_info(info, None));
            }
        }
        Ok(RpcResult::Groups(GroupListOut { groups }))
    }

    pub(super) async fn require_admin(&self, gid: &str, me: &str) -> Result<(), ChatError> {
        let info = self
            .store
            .group(gid)
            .await?
            .ok_or_else(|| ChatError::not_found(format!("no group {gid}")))?;
        if info.admins.iter().any(|a| a == me) {
            Ok(())
        } else {
            Err(ChatError::forbidden(format!(
                "only admins of group {gid} can change its members"
            )))
        }
    }

    /// Removed members stop receiving the group at once, then everyone concerned is told.
    pub(super) async fn after_removal(
        &self,
        gid: &str,
        by: &str,
        removed: &[String],
        kind: EventKind,
    ) {
        if removed.is_empty() {
            return;
        }
        for u in removed {
            self.registry.drop_group_member(gid, u);
        }
        let ev = EventOut {
            kind,
            gid: gid.to_owned(),
            by: by.to_owned(),
            users: removed.to_vec(),
            ts: now_ms(),
            name: None,
        };
        self.announce_membership(&ev);
    }

    /// A membership event goes to each user it names (`in/event`) and to the group's
    /// subscribers (`chat/g/{gid}/event`).
    fn announce_membership(&self, ev: &EventOut) {
        for u in &ev.users {
            self.to_user(u, InKind::Event, ev);
        }
        self.to_group(&ev.gid, GroupKind::Event, ev, 1);
    }
}
