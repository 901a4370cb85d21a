//! Server → client payloads (`chat/u/{user}/in/…`, `chat/g/{gid}/…`, `chat/p/{user}`) and the
//! results of rpc ops; encoded with [`super::encode`]. They are built from store rows by the
//! chat layer (`crate::chat::convert`).

use serde::{Deserialize, Serialize};

use super::codec::{encode, Encoding, Id, Rid};
use super::error::{AckError, ChatError};
use super::ids::ConvId;
use super::requests::{Body, ReceiptKind, TypingState};
use super::rpc::RpcError;

/// `group.info` lists members only up to this group size; bigger groups answer with
/// `member_count` alone, so one answer stays a reasonable MQTT packet.
pub const GROUP_INFO_MEMBERS_MAX: u64 = 1000;

/// The bytes stored as a message body: a MessagePack map with field names.
pub fn encode_body(body: &Body) -> Vec<u8> {
    encode(Encoding::MsgPack, body)
}

/// `in/ack` after the message is durably stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentAck {
    pub cid: String,
    pub id: Id,
    pub conv: ConvId,
    pub seq: u64,
    pub ts: i64,
}

/// Either payload of `in/ack`, for clients and tests that read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AckOut {
    Error(AckError),
    Sent(SentAck),
}

/// A message as delivered (`in/msg`, `chat/g/{gid}/msg`, history pages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageOut {
    pub id: Id,
    pub conv: ConvId,
    pub seq: u64,
    pub from: String,
    pub ts: i64,
    pub cid: String,
    /// Kept as a value rather than a [`Body`] so stored bodies of types this build does not
    /// know are still delivered as they were sent.
    pub body: rmpv::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Id>,
}

impl MessageOut {
    /// The body as a known type, if it is one.
    pub fn typed_body(&self) -> Option<Body> {
        rmpv::ext::from_value(self.body.clone()).ok()
    }
}

/// `in/receipt` (DM) or `chat/g/{gid}/receipt`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptOut {
    pub conv: ConvId,
    pub by: String,
    pub kind: ReceiptKind,
    pub up_to: u64,
    pub ts: i64,
}

/// `in/typing` (DM) or `chat/g/{gid}/typing`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingOut {
    pub conv: ConvId,
    pub from: String,
    pub state: TypingState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    Online,
    Offline,
}

/// Retained on `chat/p/{user}`. `last_seen` is absent when the user hides it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceOut {
    pub state: PresenceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub user: String,
    pub state: PresenceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// `presence.get` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceListOut {
    pub presence: Vec<PresenceEntry>,
}

/// Membership changes, on `in/event` of the users concerned and on `chat/g/{gid}/event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// `users` were made members of a new group by its creator `by`.
    #[serde(rename = "group.created")]
    GroupCreated,
    /// `users` were added by admin `by`.
    #[serde(rename = "group.added")]
    GroupAdded,
    /// `users` were removed by admin `by`.
    #[serde(rename = "group.removed")]
    GroupRemoved,
    /// `by` left; `users` is `[by]`.
    #[serde(rename = "group.left")]
    GroupLeft,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventOut {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub gid: String,
    pub by: String,
    pub users: Vec<String>,
    pub ts: i64,
    /// The group's name, so a client can show a new group without asking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvType {
    Direct,
    Group,
}

/// One row of the `conversations` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationOut {
    pub conv: ConvId,
    pub kind: ConvType,
    /// DMs: the other participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Groups: the group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub last_seq: u64,
    /// Last activity, ms; the `before` of the next page.
    pub last_ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessageOut>,
    pub read_up_to: u64,
    pub delivered_up_to: u64,
    /// Messages after my read marker; 0 when the newest message is my own.
    pub unread: u64,
    /// DMs: the peer's markers, for drawing ticks on my messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_delivered_up_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_read_up_to: Option<u64>,
}

/// `conversations` result, most recent activity first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationsOut {
    pub conversations: Vec<ConversationOut>,
}

/// `history` result: messages in ascending seq order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryOut {
    pub conv: ConvId,
    pub messages: Vec<MessageOut>,
    /// More messages exist beyond this page in the direction asked.
    pub has_more: bool,
    /// DMs: the peer's markers, for drawing ticks on my messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_delivered_up_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_read_up_to: Option<u64>,
}

/// `group.create` and `group.info` result; the rows of `group.list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfoOut {
    pub gid: String,
    pub name: String,
    pub admins: Vec<String>,
    /// Present in `group.create`/`group.info` for groups of at most
    /// [`GROUP_INFO_MEMBERS_MAX`] members; never in `group.list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    pub member_count: u64,
    pub created_by: String,
    pub created_ts: i64,
}

/// `group.list` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupListOut {
    pub groups: Vec<GroupInfoOut>,
}

/// `group.add`, `group.remove` and `group.leave` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipOut {
    pub gid: String,
    /// Users whose membership actually changed (already-members and non-members are skipped).
    pub changed: Vec<String>,
    pub member_count: u64,
}

/// A profile as `viewer` may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileOut {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub hide_last_seen: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// `profile.get` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfilesOut {
    pub profiles: Vec<ProfileOut>,
}

/// The `result` of a successful rpc. Serialize-only: the op of the request says which shape
/// to expect, so clients decode `RpcResponse<HistoryOut>` etc.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RpcResult {
    Conversations(ConversationsOut),
    History(HistoryOut),
    /// `group.create`, `group.info`.
    Group(GroupInfoOut),
    /// `group.list`.
    Groups(GroupListOut),
    /// `group.add`, `group.remove`, `group.leave`.
    Membership(MembershipOut),
    /// `profile.set`: my profile afterwards.
    Profile(ProfileOut),
    Profiles(ProfilesOut),
    Presence(PresenceListOut),
}

/// `in/rpc`: `{rid, ok: true, result}` or `{rid, ok: false, error}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "R: Deserialize<'de>"))]
pub struct RpcResponse<R = RpcResult> {
    /// Absent only when the request's `rid` could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ChatError>,
}

impl<R> RpcResponse<R> {
    pub fn ok(rid: Rid, result: R) -> RpcResponse<R> {
        RpcResponse {
            rid: Some(rid),
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(rid: Option<Rid>, error: ChatError) -> RpcResponse<R> {
        RpcResponse {
            rid,
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

impl<R> From<RpcError> for RpcResponse<R> {
    fn from(e: RpcError) -> RpcResponse<R> {
        RpcResponse::err(e.rid, e.error)
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{decode, encode};
    use super::super::ids::ConvId;
    use super::super::requests::ReceiptKind;
    use super::*;

    fn text(t: &str) -> Body {
        Body::Text { text: t.into() }
    }

    #[test]
    fn stored_body_is_a_named_map() {
        let v = rmpv::decode::read_value(&mut &encode_body(&text("hi"))[..]).unwrap();
        assert_eq!(v["type"].as_str(), Some("text"));
        assert_eq!(v["text"].as_str(), Some("hi"));
    }

    #[test]
    fn events_receipts_typing_presence() {
        let e = EventOut {
            kind: EventKind::GroupAdded,
            gid: "team".into(),
            by: "alice".into(),
            users: vec!["carol".into()],
            ts: 5,
            name: Some("Team".into()),
        };
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &e)).unwrap(),
            r#"{"type":"group.added","gid":"team","by":"alice","users":["carol"],"ts":5,"name":"Team"}"#
        );
        let r = ReceiptOut {
            conv: ConvId::group("team"),
            by: "bob".into(),
            kind: ReceiptKind::Delivered,
            up_to: 3,
            ts: 9,
        };
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &r)).unwrap(),
            r#"{"conv":"g:team","by":"bob","kind":"delivered","up_to":3,"ts":9}"#
        );
        let t = TypingOut {
            conv: ConvId::direct("a", "b"),
            from: "a".into(),
            state: TypingState::Paused,
        };
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &t)).unwrap(),
            r#"{"conv":"d:a:b","from":"a","state":"paused"}"#
        );
        let p = PresenceOut {
            state: PresenceState::Offline,
            last_seen: None,
        };
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &p)).unwrap(),
            r#"{"state":"offline"}"#
        );
        for enc in [Encoding::MsgPack, Encoding::Json] {
            assert_eq!(decode::<EventOut>(&encode(enc, &e)), Ok(e.clone()));
            assert_eq!(decode::<ReceiptOut>(&encode(enc, &r)), Ok(r.clone()));
            assert_eq!(decode::<TypingOut>(&encode(enc, &t)), Ok(t.clone()));
            assert_eq!(decode::<PresenceOut>(&encode(enc, &p)), Ok(p.clone()));
        }
    }
}
