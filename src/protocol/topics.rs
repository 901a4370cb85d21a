//! Chat topic names (SPEC §2). Which client may use which topic is decided in `crate::acl`.

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
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Msg => "msg",
            GroupKind::Receipt => "receipt",
            GroupKind::Typing => "typing",
            GroupKind::Event => "event",
        }
    }
}

/// `chat/u/{user}/in/`, what every topic addressed to `user` starts with.
pub fn user_in_prefix(user: &str) -> String {
    format!("{USER_PREFIX}{user}/in/")
}

/// `chat/u/{user}/in/{kind}`.
pub fn user_in_topic(user: &str, kind: InKind) -> String {
    format!("{USER_PREFIX}{user}/in/{}", kind.as_str())
}

/// `chat/g/{gid}/{kind}`.
pub fn group_topic(gid: &str, kind: GroupKind) -> String {
    format!("{GROUP_PREFIX}{gid}/{}", kind.as_str())
}

/// `chat/p/{user}`, retained presence.
pub fn presence_topic(user: &str) -> String {
    format!("{PRESENCE_PREFIX}{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_kinds() {
        for kind in OutKind::ALL {
            assert_eq!(OutKind::from_level(kind.as_str()), Some(kind));
        }
        assert_eq!(OutKind::from_level("SEND"), None);
        assert_eq!(OutKind::from_level(""), None);
    }

    #[test]
    fn built_topics() {
        assert_eq!(user_in_topic("bob", InKind::Msg), "chat/u/bob/in/msg");
        assert_eq!(user_in_topic("bob", InKind::Event), "chat/u/bob/in/event");
        assert_eq!(
            group_topic("team", GroupKind::Receipt),
            "chat/g/team/receipt"
        );
        assert_eq!(presence_topic("bob"), "chat/p/bob");
        assert_eq!(user_in_prefix("bob"), "chat/u/bob/in/");
    }
}
