//! Between store rows and wire payloads: the only place that knows both. `protocol` knows
//! nothing of the store, and the store nothing of the wire.

use crate::protocol::{
    ChatError, ConvType, ConversationOut, ErrorCode, GroupInfoOut, HistoryAnchor, HistoryOut, Id,
    MembershipOut, MessageOut, ProfileChange, ProfileOut, ReceiptKind, SentAck,
};
use crate::store;
use crate::store::{
    ConvId, ConvKind, ConversationSummary, GroupInfo, HistoryPage, MembershipChange, PageDir,
    Profile, ProfileUpdate, StoreError, StoreErrorKind, StoredMessage,
};
use tracing::warn;

/// The store's view of a failure, translated for clients. A conflict is the client's doing
/// (e.g. a gid that exists); a store limit is the one on group size.
impl From<StoreErrorKind> for ErrorCode {
    fn from(kind: StoreErrorKind) -> ErrorCode {
        match kind {
            StoreErrorKind::NotFound => ErrorCode::NotFound,
            StoreErrorKind::Conflict => ErrorCode::BadRequest,
            StoreErrorKind::LimitExceeded => ErrorCode::TooLarge,
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout => ErrorCode::Unavailable,
            StoreErrorKind::Internal => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> ChatError {
        let code = ErrorCode::from(e.kind);
        match e.kind {
            StoreErrorKind::Internal | StoreErrorKind::Unavailable | StoreErrorKind::Timeout => {
                warn!(error = %e, "store error");
                ChatError::new(code, "storage is not available right now; retry")
            }
            _ => ChatError::new(code, e.message),
        }
    }
}

/// `owner`'s last seen as `viewer` may see it: hidden from everyone else when `owner` chose so.
pub(super) fn visible_last_seen(
    owner: &str,
    hide: bool,
    last_seen: Option<i64>,
    viewer: &str,
) -> Option<i64> {
    if hide && owner != viewer {
        None
    } else {
        last_seen
    }
}

impl From<ReceiptKind> for store::ReceiptKind {
    fn from(kind: ReceiptKind) -> store::ReceiptKind {
        match kind {
            ReceiptKind::Delivered => store::ReceiptKind::Delivered,
            ReceiptKind::Read => store::ReceiptKind::Read,
        }
    }
}

impl From<HistoryAnchor> for PageDir {
    fn from(anchor: HistoryAnchor) -> PageDir {
        match anchor {
            HistoryAnchor::Before(before) => PageDir::Before(before),
            HistoryAnchor::After(after) => PageDir::After(after),
        }
    }
}

impl From<ProfileChange> for ProfileUpdate {
    fn from(c: ProfileChange) -> ProfileUpdate {
        ProfileUpdate {
            display_name: c.display_name,
            avatar_url: c.avatar_url,
            status: c.status,
            hide_last_seen: c.hide_last_seen,
        }
    }
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

impl MembershipOut {
    pub fn of(gid: &str, change: MembershipChange) -> MembershipOut {
        MembershipOut {
            gid: gid.to_owned(),
            changed: change.changed,
            member_count: change.member_count,
        }
    }
}

impl ProfileOut {
    /// Hides `last_seen` from everyone but its owner when the owner chose so.
    pub fn from_profile(p: Profile, viewer: &str) -> ProfileOut {
        let last_seen = visible_last_seen(&p.user, p.hide_last_seen, p.last_seen, viewer);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        decode, encode, encode_body, AckError, AckOut, Body, ConvType, Encoding, ErrorCode, Media,
        Rid, RpcError, RpcResponse, RpcResult,
    };
    use crate::store::{ConvId, Cursors};

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
    fn store_kinds_map_to_codes() {
        assert_eq!(
            ErrorCode::from(StoreErrorKind::Timeout),
            ErrorCode::Unavailable
        );
        assert_eq!(
            ErrorCode::from(StoreErrorKind::NotFound),
            ErrorCode::NotFound
        );
        assert_eq!(
            ErrorCode::from(StoreErrorKind::LimitExceeded),
            ErrorCode::TooLarge
        );
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
    fn unreadable_stored_bodies_are_internal_errors() {
        let mut m = stored(&text("hi"));
        for body in [vec![], vec![0xc1], vec![0x92, 1, 2], vec![0x81, 1, 2]] {
            m.body = body;
            let err = MessageOut::from_stored(&m).unwrap_err();
            assert_eq!(err.code, ErrorCode::Internal);
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
