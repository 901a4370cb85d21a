//! Conversation and user ids as the protocol spells them (SPEC §2); the store keys its rows
//! by the same strings.

use serde::{Deserialize, Serialize};

/// A conversation id: `d:{a}:{b}` (a < b) for a DM, `g:{gid}` for a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConvId(pub String);

impl ConvId {
    /// The DM conversation between two users, independent of who sends.
    pub fn direct(a: &str, b: &str) -> ConvId {
        if a <= b {
            ConvId(format!("d:{a}:{b}"))
        } else {
            ConvId(format!("d:{b}:{a}"))
        }
    }

    pub fn group(gid: &str) -> ConvId {
        ConvId(format!("g:{gid}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses and validates a conversation id as a client may send it.
    pub fn parse(s: &str) -> Option<ConvId> {
        let kind = ConvKind::of(s)?;
        match kind {
            ConvKind::Direct { a, b } if a < b => Some(ConvId(s.to_owned())),
            ConvKind::Group { .. } => Some(ConvId(s.to_owned())),
            _ => None,
        }
    }

    pub fn kind(&self) -> Option<ConvKind<'_>> {
        ConvKind::of(&self.0)
    }
}

impl std::fmt::Display for ConvId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two halves of a conversation id, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind<'a> {
    Direct { a: &'a str, b: &'a str },
    Group { gid: &'a str },
}

impl<'a> ConvKind<'a> {
    pub fn of(s: &'a str) -> Option<ConvKind<'a>> {
        if let Some(rest) = s.strip_prefix("d:") {
            let (a, b) = rest.split_once(':')?;
            (valid_id(a) && valid_id(b)).then_some(ConvKind::Direct { a, b })
        } else if let Some(gid) = s.strip_prefix("g:") {
            valid_id(gid).then_some(ConvKind::Group { gid })
        } else {
            None
        }
    }

    /// For a DM, the participant that is not `me`; `None` when `me` is not a participant.
    pub fn peer_of(&self, me: &str) -> Option<&'a str> {
        match *self {
            ConvKind::Direct { a, b } if a == me => Some(b),
            ConvKind::Direct { a, b } if b == me => Some(a),
            _ => None,
        }
    }
}

/// User ids and group ids: `[A-Za-z0-9_.-]{1,64}`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conv_is_order_independent() {
        assert_eq!(
            ConvId::direct("bob", "alice"),
            ConvId::direct("alice", "bob")
        );
        assert_eq!(ConvId::direct("alice", "bob").as_str(), "d:alice:bob");
    }

    #[test]
    fn parse_rejects_unsorted_and_bad_ids() {
        assert!(ConvId::parse("d:alice:bob").is_some());
        assert!(ConvId::parse("d:bob:alice").is_none());
        assert!(ConvId::parse("d:alice:alice").is_none());
        assert!(ConvId::parse("g:team-1").is_some());
        assert!(ConvId::parse("g:").is_none());
        assert!(ConvId::parse("g:a/b").is_none());
        assert!(ConvId::parse("x:y").is_none());
    }

    #[test]
    fn peer_of() {
        let c = ConvId::direct("alice", "bob");
        assert_eq!(c.kind().and_then(|k| k.peer_of("alice")), Some("bob"));
        assert_eq!(c.kind().and_then(|k| k.peer_of("carol")), None);
    }
}
