//! The chat protocol on the wire: topic names, payload types and the MessagePack/JSON codec.
//!
//! Pure: nothing here touches a socket or the store. PROTOCOL.md at the repo root is the
//! user-facing description of the same contract; keep them in step.
//!
//! - `topics`: chat topic names (access control is `crate::acl`).
//! - `codec`: [`Encoding`], [`decode`]/[`encode`], the [`Id`] and [`Rid`] wire types.
//! - `requests`: client → server payloads, decoded and validated against [`Limits`].
//! - `responses`: server → client payloads and rpc results.

mod codec;
mod requests;
mod responses;
mod topics;

pub use codec::{decode, encode, Encoding, Id, PayloadError, Rid};
pub use requests::{
    decode_receipt, decode_rpc, decode_send, decode_typing, Body, Limits, Media, ReceiptRequest,
    RpcError, RpcOp, RpcRequest, SendRequest, Target, TypingRequest, TypingState,
    DEFAULT_PAGE_LIMIT, MAX_AVATAR_URL, MAX_DISPLAY_NAME, MAX_GROUP_NAME, MAX_MEDIA_NAME, MAX_MIME,
    MAX_PAGE_LIMIT, MAX_STATUS, MAX_THUMB, MAX_URL, MAX_USERS_PER_CALL,
};
pub use responses::{
    encode_body, AckError, AckOut, ConvType, ConversationOut, ConversationsOut, EventKind,
    EventOut, GroupInfoOut, GroupListOut, HistoryOut, MembershipOut, MessageOut, PresenceEntry,
    PresenceListOut, PresenceOut, PresenceState, ProfileOut, ProfilesOut, ReceiptOut, RpcResponse,
    RpcResult, SentAck, TypingOut, GROUP_INFO_MEMBERS_MAX,
};
pub use topics::{
    group_topic, presence_topic, user_in_prefix, user_in_topic, GroupKind, InKind, OutKind,
    CHAT_PREFIX,
};

use serde::{Deserialize, Serialize};

use crate::store::StoreErrorKind;

/// What went wrong, as a client sees it (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// `{code, message}`: the error object of an `in/ack` or `in/rpc` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ChatError {
        ChatError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::BadRequest, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::NotFound, message)
    }

    pub fn too_large(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::TooLarge, message)
    }

    pub fn rate_limited(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::RateLimited, message)
    }

    pub fn internal(message: impl Into<String>) -> ChatError {
        ChatError::new(ErrorCode::Internal, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_snake_case() {
        let all = [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ];
        for code in all {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
        let e = ChatError::too_large("text is 20000 bytes; the limit is 16384");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"too_large","message":"text is 20000 bytes; the limit is 16384"}"#
        );
        assert_eq!(
            e.to_string(),
            "too_large: text is 20000 bytes; the limit is 16384"
        );
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
}
