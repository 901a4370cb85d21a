//! Server → client payloads (`chat/u/{user}/in/…`, `chat/g/{gid}/…`, `chat/p/{user}`) and the
//! results of rpc ops. Built from store types; encoded with [`super::encode`].

use serde::{Deserialize, Serialize};

use super::codec::{encode, Encoding, Id, Rid};
use super::requests::{Body, RpcError, TypingState};
use super::ChatError;
use crate::store::{
    ConvId, ConvKind, ConversationSummary, GroupInfo, HistoryPage, MembershipChange, Profile,
    ReceiptKind, StoredMessage,
};

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

impl SentAck {
    pub fn of(m: &StoredMessage) -> SentAck {
        SentAck {
            cid: m.cid.clone(),
            id: Id(m.id),
            conv: m.conv.clone(),
            seq: m.seq,
            ts: m.ts,
        }
    }
}

/// `in/ack` for a refused send (or any refused `out/…` publish that has no other answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct AckError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    pub error: ChatError,
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
    pub fn from_stored(m: &StoredMessage) -> Result<MessageOut, ChatError> {
        let unreadable =
            || ChatError::internal(format!("stored body of message {} is unreadable", m.id));
        let body = rmpv::decode::read_value(&mut m.body.as_slice()).map_err(|_| unreadable())?;
        // JSON output needs string keys; encode_body never writes anything else.
        let sound = body
            .as_map()
            .is_some_and(|entries| entries.iter().all(|(k, _)| k.is_str()));
        if !sound {
            return Err(unreadable());
        }
        Ok(MessageOut {
            id: Id(m.id),
            conv: m.conv.clone(),
            seq: m.seq,
            from: m.from.clone(),
            ts: m.ts,
            cid: m.cid.clone(),
            body,
            reply_to: m.reply_to.map(Id),
        })
    }

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

impl ConversationOut {
    /// The row `me` sees. The peer's markers are left out; set them when known.
    pub fn from_summary(me: &str, s: &ConversationSummary) -> Result<ConversationOut, ChatError> {
        let (kind, peer, name) = match s.conv.kind() {
            Some(ConvKind::Direct { .. }) => (
                ConvType::Direct,
                s.conv.kind().and_then(|k| k.peer_of(me)).map(str::to_owned),
                None,
            ),
            Some(ConvKind::Group { .. }) => (ConvType::Group, None, s.name.clone()),
            None => {
                return Err(ChatError::internal(format!(
                    "stored conversation id {} is invalid",
                    s.conv
                )))
            }
        };
        let last_message = s
            .last_message
            .as_ref()
            .map(MessageOut::from_stored)
            .transpose()?;
        let mine = s.last_message.as_ref().is_some_and(|m| m.from == me);
        Ok(ConversationOut {
            conv: s.conv.clone(),
            kind,
            peer,
            name,
            last_seq: s.last_seq,
            last_ts: s.last_ts,
            last_message,
            read_up_to: s.cursors.read_up_to,
            delivered_up_to: s.cursors.delivered_up_to,
            unread: if mine {
                0
            } else {
                s.last_seq.saturating_sub(s.cursors.read_up_to)
            },
            peer_delivered_up_to: None,
            peer_read_up_to: None,
        })
    }
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

impl HistoryOut {
    pub fn from_page(conv: &ConvId, page: &HistoryPage) -> Result<HistoryOut, ChatError> {
        Ok(HistoryOut {
            conv: conv.clone(),
            messages: page
                .messages
                .iter()
                .map(MessageOut::from_stored)
                .collect::<Result<_, _>>()?,
            has_more: page.has_more,
            peer_delivered_up_to: None,
            peer_read_up_to: None,
        })
    }
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

impl GroupInfoOut {
    pub fn from_info(info: GroupInfo, members: Option<Vec<String>>) -> GroupInfoOut {
        GroupInfoOut {
            gid: info.gid,
            name: info.name,
            admins: info.admins,
            members,
            member_count: info.member_count,
            created_by: info.created_by,
            created_ts: info.created_ts,
        }
    }
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

impl MembershipOut {
    pub fn of(gid: &str, change: MembershipChange) -> MembershipOut {
        MembershipOut {
            gid: gid.to_owned(),
            changed: change.changed,
            member_count: change.member_count,
        }
    }
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

impl ProfileOut {
    /// Hides `last_seen` from everyone but its owner when the owner chose so.
    pub fn from_profile(p: Profile, viewer: &str) -> ProfileOut {
        let last_seen = if p.hide_last_seen && p.user != viewer {
            None
        } else {
            p.last_seen
        };
        ProfileOut {
            user: p.user,
            display_name: p.display_name,
            avatar_url: p.avatar_url,
            status: p.status,
            hide_last_seen: p.hide_last_seen,
            last_seen,
        }
    }
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
