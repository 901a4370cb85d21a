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
    use super::super::requests::Media;
    use super::*;
    use crate::store::Cursors;

    fn stored(body: &Body) -> StoredMessage {
        StoredMessage {
            id: 7_312_345_678_901_234_567,
            conv: ConvId::direct("alice", "bob"),
            seq: 42,
            from: "alice".into(),
            ts: 1_700_000_000_123,
            cid: "c-1".into(),
            body: encode_body(body),
            reply_to: Some(7_312_345_678_901_230_000),
        }
    }

    fn text(t: &str) -> Body {
        Body::Text { text: t.into() }
    }

    #[test]
    fn message_out_json_shape() {
        let m = MessageOut::from_stored(&stored(&text("hi"))).unwrap();
        let json = String::from_utf8(encode(Encoding::Json, &m)).unwrap();
        assert_eq!(
            json,
            r#"{"id":"7312345678901234567","conv":"d:alice:bob","seq":42,"from":"alice","ts":1700000000123,"cid":"c-1","body":{"type":"text","text":"hi"},"reply_to":"7312345678901230000"}"#
        );
    }

    #[test]
    fn message_out_round_trips_in_both_encodings() {
        let media = Body::Media(Media {
            url: "https://cdn.example.com/a.ogg".into(),
            mime: "audio/ogg".into(),
            size: 9000,
            sha256: "f".repeat(64),
            duration: Some(7000),
            ..Default::default()
        });
        for body in [text("hi"), media] {
            let m = MessageOut::from_stored(&stored(&body)).unwrap();
            assert_eq!(m.typed_body(), Some(body.clone()));
            for enc in [Encoding::MsgPack, Encoding::Json] {
                let back: MessageOut = decode(&encode(enc, &m)).unwrap();
                assert_eq!(back.id, m.id, "{enc:?}");
                assert_eq!(back.reply_to, m.reply_to);
                assert_eq!(back.typed_body(), Some(body.clone()), "{enc:?}");
            }
        }
        // MessagePack keeps ids as integers.
        let m = MessageOut::from_stored(&stored(&text("hi"))).unwrap();
        let v = rmpv::decode::read_value(&mut &encode(Encoding::MsgPack, &m)[..]).unwrap();
        assert_eq!(v["id"].as_u64(), Some(7_312_345_678_901_234_567));
        assert_eq!(v["body"]["text"].as_str(), Some("hi"));
    }

    #[test]
    fn stored_body_is_a_named_map() {
        let v = rmpv::decode::read_value(&mut &encode_body(&text("hi"))[..]).unwrap();
        assert_eq!(v["type"].as_str(), Some("text"));
        assert_eq!(v["text"].as_str(), Some("hi"));
    }

    #[test]
    fn unreadable_stored_bodies_are_internal_errors() {
        let mut m = stored(&text("hi"));
        for body in [vec![], vec![0xc1], vec![0x92, 1, 2], vec![0x81, 1, 2]] {
            m.body = body;
            let err = MessageOut::from_stored(&m).unwrap_err();
            assert_eq!(err.code, super::super::ErrorCode::Internal);
        }
    }

    #[test]
    fn acks() {
        let m = stored(&text("hi"));
        let ack = SentAck::of(&m);
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &ack)).unwrap(),
            r#"{"cid":"c-1","id":"7312345678901234567","conv":"d:alice:bob","seq":42,"ts":1700000000123}"#
        );
        let err = AckError {
            cid: Some("c-2".into()),
            error: ChatError::forbidden("not a member of g:team"),
        };
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &err)).unwrap(),
            r#"{"cid":"c-2","error":{"code":"forbidden","message":"not a member of g:team"}}"#
        );
        for enc in [Encoding::MsgPack, Encoding::Json] {
            assert_eq!(
                decode::<AckOut>(&encode(enc, &ack)),
                Ok(AckOut::Sent(ack.clone()))
            );
            assert_eq!(
                decode::<AckOut>(&encode(enc, &err)),
                Ok(AckOut::Error(err.clone()))
            );
        }
    }

    #[test]
    fn rpc_responses() {
        let ok: RpcResponse = RpcResponse::ok(
            Rid::Str("r1".into()),
            RpcResult::Membership(MembershipOut {
                gid: "team".into(),
                changed: vec!["carol".into()],
                member_count: 3,
            }),
        );
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &ok)).unwrap(),
            r#"{"rid":"r1","ok":true,"result":{"gid":"team","changed":["carol"],"member_count":3}}"#
        );
        let err: RpcResponse = RpcError {
            rid: Some(Rid::U64(9)),
            error: ChatError::not_found("no group \"x\""),
        }
        .into();
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &err)).unwrap(),
            r#"{"rid":9,"ok":false,"error":{"code":"not_found","message":"no group \"x\""}}"#
        );
        // Ids inside an rpc result stay integers in MessagePack and strings in JSON, through
        // the untagged result enum.
        let history = HistoryOut::from_page(
            &ConvId::direct("alice", "bob"),
            &HistoryPage {
                messages: vec![stored(&text("a"))],
                has_more: true,
            },
        )
        .unwrap();
        let resp: RpcResponse = RpcResponse::ok(Rid::U64(1), RpcResult::History(history.clone()));
        let v = rmpv::decode::read_value(&mut &encode(Encoding::MsgPack, &resp)[..]).unwrap();
        assert_eq!(
            v["result"]["messages"][0]["id"].as_u64(),
            Some(7_312_345_678_901_234_567)
        );
        let json = String::from_utf8(encode(Encoding::Json, &resp)).unwrap();
        assert!(json.contains(r#""id":"7312345678901234567""#), "{json}");
        for enc in [Encoding::MsgPack, Encoding::Json] {
            let back: RpcResponse<HistoryOut> = decode(&encode(enc, &resp)).unwrap();
            assert_eq!(back.rid, Some(Rid::U64(1)));
            assert_eq!(back.result, Some(history.clone()));
        }
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

    #[test]
    fn conversation_rows() {
        let summary = |from: &str| ConversationSummary {
            conv: ConvId::direct("alice", "bob"),
            last_ts: 10,
            last_seq: 42,
            last_message: Some(StoredMessage {
                from: from.into(),
                ..stored(&text("x"))
            }),
            cursors: Cursors {
                delivered_up_to: 40,
                read_up_to: 38,
            },
            name: None,
        };
        let row = ConversationOut::from_summary("alice", &summary("bob")).unwrap();
        assert_eq!(row.kind, ConvType::Direct);
        assert_eq!(row.peer.as_deref(), Some("bob"));
        assert_eq!(row.unread, 4);
        let row = ConversationOut::from_summary("alice", &summary("alice")).unwrap();
        assert_eq!(row.unread, 0);
        let group = ConversationSummary {
            conv: ConvId::group("team"),
            last_ts: 3,
            last_seq: 0,
            last_message: None,
            cursors: Cursors::default(),
            name: Some("Team".into()),
        };
        let row = ConversationOut::from_summary("alice", &group).unwrap();
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &row)).unwrap(),
            r#"{"conv":"g:team","kind":"group","name":"Team","last_seq":0,"last_ts":3,"read_up_to":0,"delivered_up_to":0,"unread":0}"#
        );
        let broken = ConversationSummary {
            conv: ConvId("nonsense".into()),
            ..group
        };
        assert!(ConversationOut::from_summary("alice", &broken).is_err());
    }

    #[test]
    fn profiles_hide_last_seen_from_others() {
        let p = Profile {
            user: "bob".into(),
            display_name: Some("Bob".into()),
            hide_last_seen: true,
            last_seen: Some(99),
            ..Default::default()
        };
        assert_eq!(ProfileOut::from_profile(p.clone(), "alice").last_seen, None);
        assert_eq!(
            ProfileOut::from_profile(p.clone(), "bob").last_seen,
            Some(99)
        );
        let shown = Profile {
            hide_last_seen: false,
            ..p
        };
        assert_eq!(ProfileOut::from_profile(shown, "alice").last_seen, Some(99));
    }

    #[test]
    fn group_info() {
        let info = GroupInfo {
            gid: "team".into(),
            name: "Team".into(),
            created_by: "alice".into(),
            created_ts: 1,
            admins: vec!["alice".into()],
            member_count: 2,
        };
        let out = GroupInfoOut::from_info(info, Some(vec!["alice".into(), "bob".into()]));
        assert_eq!(
            String::from_utf8(encode(Encoding::Json, &out)).unwrap(),
            r#"{"gid":"team","name":"Team","admins":["alice"],"members":["alice","bob"],"member_count":2,"created_by":"alice","created_ts":1}"#
        );
    }
}
