//! Chat topic names (SPEC §2) and a classifier for topics and subscription filters.

use crate::store::valid_id;

/// The first level of every chat topic.
pub const CHAT_ROOT: &str = "chat";
/// Everything under this prefix is the chat namespace, reserved to the broker's rules.
pub const CHAT_PREFIX: &str = "chat/";
/// `chat/u/{user}/in/…` and `chat/u/{user}/out/…`.
pub const USER_PREFIX: &str = "chat/u/";
/// `chat/g/{gid}/…`.
pub const GROUP_PREFIX: &str = "chat/g/";
/// `chat/p/{user}`.
pub const PRESENCE_PREFIX: &str = "chat/p/";

/// What a client publishes on `chat/u/{me}/out/{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutKind {
    Send,
    Receipt,
    Typing,
    Rpc,
}

impl OutKind {
    pub const ALL: [OutKind; 4] = [
        OutKind::Send,
        OutKind::Receipt,
        OutKind::Typing,
        OutKind::Rpc,
    ];

    /// The last topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            OutKind::Send => "send",
            OutKind::Receipt => "receipt",
            OutKind::Typing => "typing",
            OutKind::Rpc => "rpc",
        }
    }

    pub fn from_level(level: &str) -> Option<OutKind> {
        OutKind::ALL.into_iter().find(|k| k.as_str() == level)
    }
}

/// What the server publishes on `chat/u/{user}/in/{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InKind {
    Msg,
    Ack,
    Receipt,
    Typing,
    Rpc,
    Event,
}

impl InKind {
    pub const ALL: [InKind; 6] = [
        InKind::Msg,
        InKind::Ack,
        InKind::Receipt,
        InKind::Typing,
        InKind::Rpc,
        InKind::Event,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InKind::Msg => "msg",
            InKind::Ack => "ack",
            InKind::Receipt => "receipt",
            InKind::Typing => "typing",
            InKind::Rpc => "rpc",
            InKind::Event => "event",
        }
    }

    pub fn from_level(level: &str) -> Option<InKind> {
        InKind::ALL.into_iter().find(|k| k.as_str() == level)
    }
}

/// What the server publishes on `chat/g/{gid}/{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupKind {
    Msg,
    Receipt,
    Typing,
    Event,
}

impl GroupKind {
    pub const ALL: [GroupKind; 4] = [
        GroupKind::Msg,
        GroupKind::Receipt,
        GroupKind::Typing,
        GroupKind::Event,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Msg => "msg",
            GroupKind::Receipt => "receipt",
            GroupKind::Typing => "typing",
            GroupKind::Event => "event",
        }
    }

    pub fn from_level(level: &str) -> Option<GroupKind> {
        GroupKind::ALL.into_iter().find(|k| k.as_str() == level)
    }
}

/// `chat/u/{user}/out/{kind}`: the user and what they sent, or `None` for any other topic
/// (including an invalid user id, extra levels or wildcards).
pub fn parse_out_topic(topic: &str) -> Option<(&str, OutKind)> {
    let (user, rest) = topic.strip_prefix(USER_PREFIX)?.split_once('/')?;
    let kind = OutKind::from_level(rest.strip_prefix("out/")?)?;
    valid_id(user).then_some((user, kind))
}

/// `chat/u/{user}/out/{kind}`, the topic a client publishes to.
pub fn user_out_topic(user: &str, kind: OutKind) -> String {
    format!("{USER_PREFIX}{user}/out/{}", kind.as_str())
}

/// `chat/u/{user}/in/{kind}`.
pub fn user_in_topic(user: &str, kind: InKind) -> String {
    format!("{USER_PREFIX}{user}/in/{}", kind.as_str())
}

/// `chat/u/{user}/in/#`, the one filter a client subscribes to for everything addressed to it.
pub fn user_in_filter(user: &str) -> String {
    format!("{USER_PREFIX}{user}/in/#")
}

/// `chat/g/{gid}/{kind}`.
pub fn group_topic(gid: &str, kind: GroupKind) -> String {
    format!("{GROUP_PREFIX}{gid}/{}", kind.as_str())
}

/// `chat/g/{gid}/#`, what a member subscribes to.
pub fn group_filter(gid: &str) -> String {
    format!("{GROUP_PREFIX}{gid}/#")
}

/// `chat/p/{user}`, retained presence.
pub fn presence_topic(user: &str) -> String {
    format!("{PRESENCE_PREFIX}{user}")
}

/// Which part of the chat namespace a topic name or subscription filter belongs to.
///
/// Built for access control, so it errs towards "chat": any filter that could match a topic
/// under `chat/` without being one of the recognised shapes is [`ChatTopic::OtherChat`]. That
/// includes `#`, `+/…` and `chat/+/…`, which would otherwise let an `[[acl]]` rule for
/// non-chat topics leak everyone's messages. A shared subscription (`$share/{name}/{filter}`)
/// is classified by its inner filter for the same reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatTopic<'a> {
    /// `chat/u/{user}/in`, optionally followed by more levels or wildcards.
    UserIn { user: &'a str },
    /// Exactly `chat/u/{user}/out/{send|receipt|typing|rpc}`.
    UserOut { user: &'a str, kind: OutKind },
    /// `chat/g/{gid}`, optionally followed by more levels or wildcards.
    Group { gid: &'a str },
    /// Exactly `chat/p/{user}` (no wildcards).
    Presence { user: &'a str },
    /// Anything else that is or could match a chat topic.
    OtherChat,
    /// Outside the chat namespace.
    NotChat,
}

impl<'a> ChatTopic<'a> {
    pub fn parse(topic: &'a str) -> ChatTopic<'a> {
        if let Some(shared) = topic.strip_prefix("$share/") {
            return match shared.split_once('/') {
                Some((_, filter)) => ChatTopic::parse(filter),
                None => ChatTopic::OtherChat,
            };
        }
        let mut levels = topic.split('/');
        match levels.next() {
            Some(CHAT_ROOT) => {}
            Some("+" | "#") => return ChatTopic::OtherChat,
            _ => return ChatTopic::NotChat,
        }
        match (levels.next(), levels.next()) {
            (Some("u"), Some(user)) if valid_id(user) => match levels.next() {
                Some("in") => ChatTopic::UserIn { user },
                Some("out") => match (levels.next().and_then(OutKind::from_level), levels.next()) {
                    (Some(kind), None) => ChatTopic::UserOut { user, kind },
                    _ => ChatTopic::OtherChat,
                },
                _ => ChatTopic::OtherChat,
            },
            (Some("g"), Some(gid)) if valid_id(gid) => ChatTopic::Group { gid },
            (Some("p"), Some(user)) if valid_id(user) && levels.next().is_none() => {
                ChatTopic::Presence { user }
            }
            _ => ChatTopic::OtherChat,
        }
    }

    pub fn is_chat(&self) -> bool {
        !matches!(self, ChatTopic::NotChat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_topics() {
        assert_eq!(
            parse_out_topic("chat/u/alice/out/send"),
            Some(("alice", OutKind::Send))
        );
        for kind in OutKind::ALL {
            let topic = user_out_topic("a.b-c_9", kind);
            assert_eq!(parse_out_topic(&topic), Some(("a.b-c_9", kind)));
        }
        for bad in [
            "chat/u//out/send",
            "chat/u/+/out/send",
            "chat/u/#/out/send",
            "chat/u/alice/out/send/extra",
            "chat/u/alice/out/",
            "chat/u/alice/out",
            "chat/u/alice/out/#",
            "chat/u/alice/out/+",
            "chat/u/alice/in/send",
            "chat/u/alice/out/SEND",
            "chat/u/al ice/out/send",
            "/chat/u/alice/out/send",
            "chat/u/alice//out/send",
            "chat/g/team/out/send",
            "",
        ] {
            assert_eq!(parse_out_topic(bad), None, "{bad}");
        }
        let long = "x".repeat(65);
        assert_eq!(parse_out_topic(&format!("chat/u/{long}/out/send")), None);
    }

    #[test]
    fn built_topics() {
        assert_eq!(user_in_topic("bob", InKind::Msg), "chat/u/bob/in/msg");
        assert_eq!(user_in_topic("bob", InKind::Event), "chat/u/bob/in/event");
        assert_eq!(user_in_filter("bob"), "chat/u/bob/in/#");
        assert_eq!(
            group_topic("team", GroupKind::Receipt),
            "chat/g/team/receipt"
        );
        assert_eq!(group_filter("team"), "chat/g/team/#");
        assert_eq!(presence_topic("bob"), "chat/p/bob");
        for kind in InKind::ALL {
            assert_eq!(InKind::from_level(kind.as_str()), Some(kind));
        }
        for kind in GroupKind::ALL {
            assert_eq!(GroupKind::from_level(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn classify() {
        use ChatTopic::*;
        let cases: &[(&str, ChatTopic)] = &[
            ("chat/u/bob/in/#", UserIn { user: "bob" }),
            ("chat/u/bob/in/msg", UserIn { user: "bob" }),
            ("chat/u/bob/in/+", UserIn { user: "bob" }),
            ("chat/u/bob/in", UserIn { user: "bob" }),
            (
                "chat/u/bob/out/rpc",
                UserOut {
                    user: "bob",
                    kind: OutKind::Rpc,
                },
            ),
            ("chat/u/bob/out/rpc/x", OtherChat),
            ("chat/u/bob/out/#", OtherChat),
            ("chat/u/bob/out/other", OtherChat),
            ("chat/u/bob/#", OtherChat),
            ("chat/u/bob", OtherChat),
            ("chat/u/+/in/#", OtherChat),
            ("chat/u//in/#", OtherChat),
            ("chat/g/team/#", Group { gid: "team" }),
            ("chat/g/team/msg", Group { gid: "team" }),
            ("chat/g/team", Group { gid: "team" }),
            ("chat/g/+/msg", OtherChat),
            ("chat/g/#", OtherChat),
            ("chat/p/bob", Presence { user: "bob" }),
            ("chat/p/+", OtherChat),
            ("chat/p/bob/x", OtherChat),
            ("chat/p/#", OtherChat),
            ("chat/#", OtherChat),
            ("chat/+/bob/in/#", OtherChat),
            ("chat", OtherChat),
            ("chat/", OtherChat),
            ("chat/x/y", OtherChat),
            ("#", OtherChat),
            ("+/u/bob/in/#", OtherChat),
            ("+", OtherChat),
            ("$share/g1/chat/u/bob/in/#", UserIn { user: "bob" }),
            ("$share/g1/iot/x", NotChat),
            ("$share/g1", OtherChat),
            ("iot/alice/temp", NotChat),
            ("chatroom/x", NotChat),
            ("Chat/u/bob/in/#", NotChat),
            ("$SYS/broker", NotChat),
            ("", NotChat),
            ("/chat/u/bob/in/#", NotChat),
        ];
        for (topic, want) in cases {
            assert_eq!(ChatTopic::parse(topic), *want, "{topic}");
        }
        assert!(ChatTopic::OtherChat.is_chat());
        assert!(!ChatTopic::NotChat.is_chat());
    }
}
