//! The chat protocol on the wire: topic names, payload types and the MessagePack/JSON codec.
//!
//! Pure: nothing here touches a socket or the store, and nothing here imports the rest of the
//! crate (the chat layer converts store rows, `crate::chat::convert`). PROTOCOL.md at the repo root is the
//! user-facing description of the same contract; keep them in step.
//!
//! - `topics`: chat topic names (access control is `crate::acl`).
//! - `codec`: [`Encoding`], [`decode`]/[`encode`], the [`Id`] and [`Rid`] wire types.
//! - `requests`: client → server payloads, decoded and validated against [`Limits`].
//! - `rpc`: `out/rpc` requests and their ops.
//! - `responses`: server → client payloads and rpc results.

mod codec;
mod error;
mod ids;
mod requests;
mod responses;
mod rpc;
mod topics;

pub use codec::{decode, encode, Encoding, Id, PayloadError, Rid};
pub use error::{AckError, ChatError, ErrorCode};
pub use ids::{valid_id, ConvId, ConvKind};
pub use requests::{
    decode_receipt, decode_send, decode_typing, Body, Limits, Media, ReceiptKind, ReceiptRequest,
    SendRequest, Target, TypingRequest, TypingState, DEFAULT_PAGE_LIMIT, MAX_AVATAR_URL,
    MAX_DISPLAY_NAME, MAX_GROUP_NAME, MAX_MEDIA_NAME, MAX_MIME, MAX_PAGE_LIMIT, MAX_STATUS,
    MAX_THUMB, MAX_URL, MAX_USERS_PER_CALL,
};
pub use responses::{
    encode_body, AckOut, ConvType, ConversationOut, ConversationsOut, EventKind, EventOut,
    GroupInfoOut, GroupListOut, HistoryOut, MembershipOut, MessageOut, PresenceEntry,
    PresenceListOut, PresenceOut, PresenceState, ProfileOut, ProfilesOut, ReceiptOut, RpcResponse,
    RpcResult, SentAck, TypingOut, GROUP_INFO_MEMBERS_MAX,
};
pub use rpc::{decode_rpc, HistoryAnchor, ProfileChange, RpcError, RpcOp, RpcRequest};
pub use topics::{
    group_topic, presence_topic, user_in_prefix, user_in_topic, GroupKind, InKind, OutKind,
    CHAT_PREFIX,
};
