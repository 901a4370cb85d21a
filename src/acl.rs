//! Who may publish and subscribe where (pure; unit-tested).
//!
//! The `chat/` namespace is the chat plane and follows SPEC §2 only: a user publishes to its
//! own `chat/u/{me}/out/{send|receipt|typing|rpc}`, subscribes to its own `chat/u/{me}/…`,
//! to `chat/g/{gid}/…` (membership is checked by the chat layer) and to `chat/p/{user}`.
//! `[[acl]]` rules cannot open anything under `chat/`.
//!
//! Every other topic is the general plane, served by the embedded rumqttd router. It is
//! closed by default; ordered `[[acl]]` rules open it. The first rule whose pattern covers
//! the topic (publish) or the whole filter (subscribe: every topic the filter can match)
//! decides. A wildcard filter such as `#` only ever receives general-plane traffic: chat
//! messages never enter rumqttd.

use crate::protocol::{OutKind, CHAT_PREFIX};
use crate::topic::{self, matches};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn allows_read(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
    fn allows_write(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    #[default]
    Allow,
    Deny,
}

/// One `[[acl]]` rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Topic pattern; `+`/`#` wildcards; `%u` = user id, `%c` = the client's own client id.
    pub topic: String,
    pub access: Access,
    #[serde(default)]
    pub permission: Permission,
    /// Restrict the rule to these users; absent = everyone (including anonymous clients).
    #[serde(default)]
    pub users: Option<Vec<String>>,
}

impl AclRule {
    pub fn validate(&self) -> Result<(), String> {
        if self.topic.starts_with(CHAT_PREFIX) || self.topic == "chat" {
            return Err("the chat/ namespace is governed by the chat plane, not by [[acl]]".into());
        }
        let probe = self.topic.replace("%u", "u").replace("%c", "c");
        if topic::valid_filter(&probe).is_err() || !topic::engine_safe(&probe) {
            return Err(format!("`{}` is not a valid topic filter", self.topic));
        }
        Ok(())
    }

    /// The pattern with placeholders filled in; `None` when the rule cannot apply
    /// (e.g. `%u` for an anonymous client, or a placeholder value that would act as a
    /// wildcard or level separator).
    fn pattern_for(&self, who: &Who<'_>) -> Option<String> {
        if let Some(users) = &self.users {
            let user = who.user?;
            if !users.iter().any(|u| u == user || u == "*") {
                return None;
            }
        }
        let mut p = self.topic.clone();
        if p.contains("%u") {
            p = p.replace("%u", safe_level(who.user?)?);
        }
        if p.contains("%c") {
            p = p.replace("%c", safe_level(who.client_id)?);
        }
        Some(p)
    }
}

fn safe_level(s: &str) -> Option<&str> {
    (!s.is_empty() && !s.contains(['/', '+', '#'])).then_some(s)
}

/// The authenticated party a decision is about.
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    /// `None` for an anonymous client.
    pub user: Option<&'a str>,
    /// The client id as the client sent it (before namespacing).
    pub client_id: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// Not a valid topic name / filter.
    Invalid,
    /// Valid, but not this client's to use.
    NotAuthorized,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishRoute {
    /// One of the user's own `out/` topics: handled by the chat layer.
    Chat(OutKind),
    /// A general-plane topic opened by `[[acl]]`: forwarded to rumqttd.
    General,
    Deny(DenyReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeRoute {
    /// A chat-namespace filter: handed to the chat plane.
    Chat(ChatFilter),
    /// General plane (possibly `$share/...`): forwarded to rumqttd.
    General,
    Deny(DenyReason),
}

/// What a chat-namespace filter the ACL accepted covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatFilter {
    /// A filter inside the user's own `chat/u/{me}/` space. `inbox` is true when it covers
    /// `chat/u/{me}/in/msg` (subscribing it starts offline delivery).
    User { inbox: bool },
    /// A filter inside `chat/g/{gid}/`; membership is checked by the chat layer.
    Group { gid: String },
    /// `chat/p/{user}`, exactly.
    Presence { user: String },
}

pub struct Acl {
    rules: Vec<AclRule>,
}

impl Acl {
    pub fn new(rules: Vec<AclRule>) -> Acl {
        Acl { rules }
    }

    pub fn publish(&self, who: &Who<'_>, topic: &str) -> PublishRoute {
        if topic::valid_name(topic).is_err() {
            return PublishRoute::Deny(DenyReason::Invalid);
        }
        if let Some(rest) = topic.strip_prefix(CHAT_PREFIX) {
            let levels: Vec<&str> = rest.split('/').collect();
            return match (levels.as_slice(), who.user) {
                (["u", user, "out", kind], Some(me)) if user == &me => {
                    match OutKind::from_level(kind) {
                        Some(kind) => PublishRoute::Chat(kind),
                        None => PublishRoute::Deny(DenyReason::NotAuthorized),
                    }
                }
                _ => PublishRoute::Deny(DenyReason::NotAuthorized),
            };
        }
        if topic == "chat" || topic.starts_with('$') {
            return PublishRoute::Deny(DenyReason::NotAuthorized);
        }
        if !topic::engine_safe(topic) {
            // The engine cannot take it (see `topic::engine_safe`).
            return PublishRoute::Deny(DenyReason::Invalid);
        }
        if self.decide(who, topic, Access::allows_write) {
            PublishRoute::General
        } else {
            PublishRoute::Deny(DenyReason::NotAuthorized)
        }
    }

    pub fn subscribe(&self, who: &Who<'_>, filter: &str) -> SubscribeRoute {
        if topic::valid_filter(filter).is_err() {
            return SubscribeRoute::Deny(DenyReason::Invalid);
        }
        if let Some(shared) = filter.strip_prefix("$share/") {
            // `$share/{group}/{filter}`: the group name is one level, the rest a filter that
            // must itself be a general-plane filter this client may read.
            // `topic::valid_filter` checked the group and the inner filter's syntax.
            let Some((_group, inner)) = shared.split_once('/') else {
                return SubscribeRoute::Deny(DenyReason::Invalid);
            };
            if !topic::engine_safe(inner) {
                return SubscribeRoute::Deny(DenyReason::Invalid);
            }
            if inner.starts_with(CHAT_PREFIX) || inner.starts_with('$') {
                return SubscribeRoute::Deny(DenyReason::NotAuthorized);
            }
            return match self.decide(who, inner, Access::allows_read) {
                true => SubscribeRoute::General,
                false => SubscribeRoute::Deny(DenyReason::NotAuthorized),
            };
        }
        if let Some(rest) = filter.strip_prefix(CHAT_PREFIX) {
            return chat_subscription(who.user, rest);
        }
        if filter == "chat" || filter.starts_with('$') {
            return SubscribeRoute::Deny(DenyReason::NotAuthorized);
        }
        if !topic::engine_safe(filter) {
            return SubscribeRoute::Deny(DenyReason::Invalid);
        }
        if self.decide(who, filter, Access::allows_read) {
            SubscribeRoute::General
        } else {
            SubscribeRoute::Deny(DenyReason::NotAuthorized)
        }
    }

    /// First rule that covers `topic_or_filter` with the wanted access decides; default deny.
    fn decide(&self, who: &Who<'_>, topic_or_filter: &str, wants: fn(Access) -> bool) -> bool {
        for rule in &self.rules {
            if !wants(rule.access) {
                continue;
            }
            let Some(pattern) = rule.pattern_for(who) else {
                continue;
            };
            // `matches` compares a filter against a filter too: a wildcard level in the
            // requested filter is only covered by a wildcard in the pattern.
            if matches(topic_or_filter, &pattern) {
                return rule.permission == Permission::Allow;
            }
        }
        false
    }
}

fn chat_subscription(user: Option<&str>, rest: &str) -> SubscribeRoute {
    let Some(me) = user else {
        return SubscribeRoute::Deny(DenyReason::NotAuthorized);
    };
    let levels: Vec<&str> = rest.split('/').collect();
    match levels.as_slice() {
        ["u", u, tail @ ..] if *u == me => {
            // `chat/u/me/#`, `chat/u/me/in/#`, `chat/u/me/in/+`, `chat/u/me/in/msg`, …
            let inbox = matches!(
                tail,
                ["#"] | ["in", "#"] | ["in", "+"] | ["in", "msg"] | ["+", "#"] | ["+", "msg"]
            );
            if tail.is_empty() {
                // `chat/u/me` itself is never published to.
                return SubscribeRoute::Deny(DenyReason::NotAuthorized);
            }
            SubscribeRoute::Chat(ChatFilter::User { inbox })
        }
        ["g", gid, tail @ ..] if !tail.is_empty() && crate::store::valid_id(gid) => {
            SubscribeRoute::Chat(ChatFilter::Group {
                gid: (*gid).to_owned(),
            })
        }
        ["p", u] if crate::store::valid_id(u) => SubscribeRoute::Chat(ChatFilter::Presence {
            user: (*u).to_owned(),
        }),
        _ => SubscribeRoute::Deny(DenyReason::NotAuthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(topic: &str, access: Access, permission: Permission) -> AclRule {
        AclRule {
            topic: topic.into(),
            access,
            permission,
            users: None,
        }
    }

    fn alice() -> Who<'static> {
        Who {
            user: Some("alice"),
            client_id: "phone",
        }
    }

    #[test]
    fn chat_publish_table() {
        let acl = Acl::new(vec![rule("#", Access::ReadWrite, Permission::Allow)]);
        let w = alice();
        assert_eq!(
            acl.publish(&w, "chat/u/alice/out/send"),
            PublishRoute::Chat(OutKind::Send)
        );
        assert_eq!(
            acl.publish(&w, "chat/u/alice/out/receipt"),
            PublishRoute::Chat(OutKind::Receipt)
        );
        assert_eq!(
            acl.publish(&w, "chat/u/alice/out/typing"),
            PublishRoute::Chat(OutKind::Typing)
        );
        assert_eq!(
            acl.publish(&w, "chat/u/alice/out/rpc"),
            PublishRoute::Chat(OutKind::Rpc)
        );
        for denied in [
            "chat/u/bob/out/send",
            "chat/u/alice/in/msg",
            "chat/u/bob/in/msg",
            "chat/g/team/msg",
            "chat/p/alice",
            "chat/u/alice/out/other",
            "chat/u/alice/out/send/extra",
            "chat",
            "$SYS/x",
        ] {
            assert_eq!(
                acl.publish(&w, denied),
                PublishRoute::Deny(DenyReason::NotAuthorized),
                "{denied}"
            );
        }
        assert_eq!(
            acl.publish(&w, "a/+"),
            PublishRoute::Deny(DenyReason::Invalid)
        );
        assert_eq!(acl.publish(&w, ""), PublishRoute::Deny(DenyReason::Invalid));
    }

    #[test]
    fn anonymous_has_no_chat_plane() {
        let acl = Acl::new(vec![rule("#", Access::ReadWrite, Permission::Allow)]);
        let anon = Who {
            user: None,
            client_id: "x",
        };
        assert_eq!(
            acl.publish(&anon, "chat/u/alice/out/send"),
            PublishRoute::Deny(DenyReason::NotAuthorized)
        );
        assert_eq!(
            acl.subscribe(&anon, "chat/u/alice/in/#"),
            SubscribeRoute::Deny(DenyReason::NotAuthorized)
        );
        assert_eq!(acl.publish(&anon, "sensors/1"), PublishRoute::General);
    }

    #[test]
    fn chat_subscribe_table() {
        let acl = Acl::new(vec![]);
        let w = alice();
        assert_eq!(
            acl.subscribe(&w, "chat/u/alice/in/#"),
            SubscribeRoute::Chat(ChatFilter::User { inbox: true })
        );
        assert_eq!(
            acl.subscribe(&w, "chat/u/alice/#"),
            SubscribeRoute::Chat(ChatFilter::User { inbox: true })
        );
        assert_eq!(
            acl.subscribe(&w, "chat/u/alice/in/msg"),
            SubscribeRoute::Chat(ChatFilter::User { inbox: true })
        );
        assert_eq!(
            acl.subscribe(&w, "chat/u/alice/in/ack"),
            SubscribeRoute::Chat(ChatFilter::User { inbox: false })
        );
        assert_eq!(
            acl.subscribe(&w, "chat/g/team/#"),
            SubscribeRoute::Chat(ChatFilter::Group { gid: "team".into() })
        );
        assert_eq!(
            acl.subscribe(&w, "chat/g/team/msg"),
            SubscribeRoute::Chat(ChatFilter::Group { gid: "team".into() })
        );
        assert_eq!(
            acl.subscribe(&w, "chat/p/bob"),
            SubscribeRoute::Chat(ChatFilter::Presence { user: "bob".into() })
        );
        for denied in [
            "chat/u/bob/in/#",
            "chat/u/+/in/#",
            "chat/#",
            "chat/+/alice/in/msg",
            "chat/g/+/msg",
            "chat/g/#",
            "chat/p/+",
            "chat/p/#",
            "chat/u/alice",
            "$share/g/chat/u/alice/in/#",
            "$SYS/#",
        ] {
            assert_eq!(
                acl.subscribe(&w, denied),
                SubscribeRoute::Deny(DenyReason::NotAuthorized),
                "{denied}"
            );
        }
        assert_eq!(
            acl.subscribe(&w, "a/#/b"),
            SubscribeRoute::Deny(DenyReason::Invalid)
        );
    }

    #[test]
    fn general_plane_is_closed_by_default() {
        let acl = Acl::new(vec![]);
        assert_eq!(
            acl.publish(&alice(), "sensors/1"),
            PublishRoute::Deny(DenyReason::NotAuthorized)
        );
        assert_eq!(
            acl.subscribe(&alice(), "#"),
            SubscribeRoute::Deny(DenyReason::NotAuthorized)
        );
    }

    #[test]
    fn placeholders_and_ordered_rules() {
        let acl = Acl::new(vec![
            rule("iot/%u/secret", Access::ReadWrite, Permission::Deny),
            rule("iot/%u/#", Access::ReadWrite, Permission::Allow),
            rule("dev/%c/#", Access::Write, Permission::Allow),
            rule("public/#", Access::Read, Permission::Allow),
        ]);
        let w = alice();
        assert_eq!(acl.publish(&w, "iot/alice/temp"), PublishRoute::General);
        assert_eq!(
            acl.publish(&w, "iot/bob/temp"),
            PublishRoute::Deny(DenyReason::NotAuthorized)
        );
        assert_eq!(
            acl.publish(&w, "iot/alice/secret"),
            PublishRoute::Deny(DenyReason::NotAuthorized)
        );
        assert_eq!(acl.publish(&w, "dev/phone/x"), PublishRoute::General);
        assert_eq!(
            acl.subscribe(&w, "dev/phone/x"),
            SubscribeRoute::Deny(DenyReason::NotAuthorized)
        );
        assert_eq!(acl.subscribe(&w, "public/+/x"), SubscribeRoute::General);
        assert_eq!(
            acl.publish(&w, "public/x"),
            PublishRoute::Deny(DenyReason::NotAuthorized)
        );
        // A filter wider than the rule is not covered by it.
        assert_eq!(
            acl.subscribe(&w, "iot/+/temp"),
            SubscribeRoute::Deny(DenyReason::NotAuthorized)
        );
        assert_eq!(acl.subscribe(&w, "iot/alice/+"), SubscribeRoute::General);
        assert_eq!(
            acl.subscribe(&w, "$share/workers/iot/alice/jobs"),
            SubscribeRoute::General
        );
        assert_eq!(
            acl.subscribe(&w, "$share/workers/iot/bob/jobs"),
            SubscribeRoute::Deny(DenyReason::NotAuthorized)
        );
        // %u never matches an anonymous client.
        let anon = Who {
            user: None,
            client_id: "c1",
        };
        assert_eq!(
            acl.publish(&anon, "iot/%u/x"),
            PublishRoute::Deny(DenyReason::NotAuthorized)
        );
        // A client id that would act as a wildcard is never substituted.
        let sneaky = Who {
            user: Some("alice"),
            client_id: "#",
        };
        assert_eq!(
            acl.publish(&sneaky, "dev/x/y"),
            PublishRoute::Deny(DenyReason::NotAuthorized)
        );
    }

    #[test]
    fn rules_restricted_to_users() {
        let acl = Acl::new(vec![AclRule {
            topic: "bench/#".into(),
            access: Access::ReadWrite,
            permission: Permission::Allow,
            users: Some(vec!["loadtest".into()]),
        }]);
        let lt = Who {
            user: Some("loadtest"),
            client_id: "c",
        };
        assert_eq!(acl.publish(&lt, "bench/1"), PublishRoute::General);
        assert_eq!(
            acl.publish(&alice(), "bench/1"),
            PublishRoute::Deny(DenyReason::NotAuthorized)
        );
    }

    #[test]
    fn rule_validation() {
        assert!(rule("chat/#", Access::Read, Permission::Allow)
            .validate()
            .is_err());
        assert!(rule("a/#/b", Access::Read, Permission::Allow)
            .validate()
            .is_err());
        assert!(rule("iot/%u/#", Access::Read, Permission::Allow)
            .validate()
            .is_ok());
    }
}
