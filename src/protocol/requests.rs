//! Client → server payloads (`chat/u/{me}/out/…`): decoding and validation.
//!
//! Every `decode_*` function checks the size limit, decodes, then validates, so that a value
//! it returns can be acted on without further checks on its shape. Permission checks (is this
//! user a member, an admin…) are the chat layer's.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::codec::{decode, probe, short, Id, PayloadError, Rid};
use super::error::{AckError, ChatError};
use super::ids::{valid_id, ConvId};

/// Payload size limits (`[chat]` in broker.toml).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest accepted payload, bytes.
    pub max_payload: usize,
    /// Largest text (message text, media caption), UTF-8 bytes.
    pub max_text: usize,
    /// Longest `cid` (and string `rid`), characters.
    pub max_cid: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_payload: 64 * 1024,
            max_text: 16 * 1024,
            max_cid: 64,
        }
    }
}

/// Bytes a send envelope needs besides its text and cid (keys, `to`, body type, reply_to).
pub const ENVELOPE_OVERHEAD: usize = 256;

impl Limits {
    /// The one rule for these limits (config validation and the chat service both use it):
    /// the key at fault (under `chat.`) and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_text == 0 || self.max_text > self.max_payload {
            return Err(("max_text", "must be between 1 and chat.max_payload".into()));
        }
        if self.max_cid == 0 || self.max_cid > 256 {
            return Err(("max_cid", "must be between 1 and 256".into()));
        }
        if self.max_payload < self.max_text + self.max_cid + ENVELOPE_OVERHEAD {
            return Err((
                "max_payload",
                format!(
                    "must be at least chat.max_text + chat.max_cid + {ENVELOPE_OVERHEAD} \
                     (room for a send envelope around the longest text)"
                ),
            ));
        }
        Ok(())
    }
}

/// Most users in one request (`members`, `users`).
pub const MAX_USERS_PER_CALL: usize = 1000;
/// Largest `limit` of `history` and `conversations`.
pub const MAX_PAGE_LIMIT: u32 = 100;
/// `limit` of `history` and `conversations` when none is given.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
/// Longest group name, characters.
pub const MAX_GROUP_NAME: usize = 100;
/// Longest profile display name, characters.
pub const MAX_DISPLAY_NAME: usize = 64;
/// Longest profile status ("about"), characters.
pub const MAX_STATUS: usize = 140;
/// Longest avatar URL, bytes.
pub const MAX_AVATAR_URL: usize = 2048;
/// Longest media URL, bytes.
pub const MAX_URL: usize = 2048;
/// Longest media MIME type, bytes.
pub const MAX_MIME: usize = 127;
/// Longest media file name, characters.
pub const MAX_MEDIA_NAME: usize = 255;
/// Largest inline thumbnail (base64 text), bytes.
pub const MAX_THUMB: usize = 16 * 1024;
/// Largest media size, width or duration that JavaScript can hold exactly (2^53 − 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Who a message or typing indicator is for: `"u:{user}"` or `"g:{gid}"` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    User(String),
    Group(String),
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        if let Some(user) = s.strip_prefix("u:") {
            valid_id(user).then(|| Target::User(user.to_owned()))
        } else if let Some(gid) = s.strip_prefix("g:") {
            valid_id(gid).then(|| Target::Group(gid.to_owned()))
        } else {
            None
        }
    }

    /// The conversation a message from `me` to this target belongs to. `None` for a DM to
    /// oneself, which has no conversation id (`d:{a}:{b}` needs two distinct users).
    pub fn conv(&self, me: &str) -> Option<ConvId> {
        match self {
            Target::User(user) if user == me => None,
            Target::User(user) => Some(ConvId::direct(me, user)),
            Target::Group(gid) => Some(ConvId::group(gid)),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::User(u) => write!(f, "u:{u}"),
            Target::Group(g) => write!(f, "g:{g}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let s = String::deserialize(d)?;
        Target::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected \"u:{{user}}\" or \"g:{{gid}}\" with an id of 1-64 characters \
                 [A-Za-z0-9_.-], got \"{}\"",
                short(&s)
            ))
        })
    }
}

/// A message body, tagged by `type`. Stored as a MessagePack map ([`super::encode_body`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Body {
    Text { text: String },
    Media(Media),
}

/// A body as it arrives. Deserializing through a flat struct instead of serde's internally
/// tagged enum keeps the field path in errors (`body.size: invalid value…`); the tagged
/// enum buffers the map first and loses it.
#[derive(Deserialize)]
struct BodyWire {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    url: Option<String>,
    mime: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    duration: Option<u64>,
    thumb: Option<String>,
    caption: Option<String>,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Body, D::Error> {
        use serde::de::Error;
        let w = BodyWire::deserialize(d)?;
        let missing = |field: &str| {
            D::Error::custom(format!("missing field `{field}` for type \"{}\"", w.kind))
        };
        match w.kind.as_str() {
            "text" => Ok(Body::Text {
                text: w.text.clone().ok_or_else(|| missing("text"))?,
            }),
            "media" => Ok(Body::Media(Media {
                url: w.url.clone().ok_or_else(|| missing("url"))?,
                mime: w.mime.clone().ok_or_else(|| missing("mime"))?,
                size: w.size.ok_or_else(|| missing("size"))?,
                sha256: w.sha256.clone().ok_or_else(|| missing("sha256"))?,
                name: w.name,
                width: w.width,
                height: w.height,
                duration: w.duration,
                thumb: w.thumb,
                caption: w.caption,
            })),
            other => Err(D::Error::custom(format!(
                "unknown type \"{}\", expected \"text\" or \"media\"",
                short(other)
            ))),
        }
    }
}

/// A media message by reference: the client uploads the file elsewhere (encrypted or not) and
/// sends where it is and how to check it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// `https://` or `http://`.
    pub url: String,
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase or uppercase hex SHA-256 of the file at `url`.
    pub sha256: String,
    /// File name to show for documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Audio/video length, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// Small inline preview image, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb: Option<String>,
    /// Text shown under the media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

/// `out/send`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    pub cid: String,
    pub to: Target,
    pub body: Body,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Id>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// `out/receipt`: everything in `conv` up to seq `up_to` was delivered to / read by me.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRequest {
    pub conv: ConvId,
    pub up_to: u64,
    pub kind: ReceiptKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypingState {
    Typing,
    Paused,
}

/// `out/typing`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingRequest {
    pub to: Target,
    pub state: TypingState,
}

pub(super) fn oversized(payload: &[u8], limits: &Limits) -> Option<ChatError> {
    (payload.len() > limits.max_payload).then(|| {
        ChatError::too_large(format!(
            "payload is {} bytes; the limit is {}",
            payload.len(),
            limits.max_payload
        ))
    })
}

pub(super) fn malformed(err: PayloadError) -> ChatError {
    ChatError::bad_request(err.to_string())
}

/// The client's `cid`, if it can be read and is fit to echo back.
fn probe_cid(payload: &[u8], limits: &Limits) -> Option<String> {
    match probe(payload, "cid")? {
        Rid::Str(cid) if check_cid(&cid, limits).is_ok() => Some(cid),
        _ => None,
    }
}

/// Decodes and validates `out/send`. The error carries the `cid` when it could be read, so
/// it can be answered as `{cid, error}` on `in/ack`.
pub fn decode_send(payload: &[u8], limits: &Limits) -> Result<SendRequest, AckError> {
    let fail = |error| AckError {
        cid: probe_cid(payload, limits),
        error,
    };
    if let Some(error) = oversized(payload, limits) {
        return Err(fail(error));
    }
    let req: SendRequest = decode(payload).map_err(|e| fail(malformed(e)))?;
    req.validate(limits).map_err(fail)?;
    Ok(req)
}

/// Decodes and validates `out/receipt`.
pub fn decode_receipt(payload: &[u8], limits: &Limits) -> Result<ReceiptRequest, ChatError> {
    if let Some(error) = oversized(payload, limits) {
        return Err(error);
    }
    let req: ReceiptRequest = decode(payload).map_err(malformed)?;
    if ConvId::parse(req.conv.as_str()).is_none() {
        return Err(ChatError::bad_request(format!(
            "conv: \"{}\" is not a conversation id (\"d:{{a}}:{{b}}\" with a < b, or \"g:{{gid}}\")",
            short(req.conv.as_str())
        )));
    }
    if req.up_to == 0 {
        return Err(ChatError::bad_request("up_to: seqs start at 1"));
    }
    Ok(req)
}

/// Decodes and validates `out/typing`.
pub fn decode_typing(payload: &[u8], limits: &Limits) -> Result<TypingRequest, ChatError> {
    if let Some(error) = oversized(payload, limits) {
        return Err(error);
    }
    decode(payload).map_err(malformed)
}

fn check_cid(cid: &str, limits: &Limits) -> Result<(), ChatError> {
    check_label("cid", cid, limits.max_cid)
}

/// A client-chosen correlation string: echoed in logs and answers, so no control characters.
pub(super) fn check_label(field: &str, s: &str, max: usize) -> Result<(), ChatError> {
    if s.is_empty() {
        return Err(ChatError::bad_request(format!(
            "{field}: must not be empty"
        )));
    }
    let chars = s.chars().count();
    if chars > max {
        return Err(ChatError::bad_request(format!(
            "{field}: {chars} characters; the limit is {max}"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(ChatError::bad_request(format!(
            "{field}: must not contain control characters"
        )));
    }
    Ok(())
}

/// Free text shown to people (names, statuses, file names): bounded in characters, no
/// control characters other than newlines where `multiline`.
pub(super) fn check_text_field(
    field: &str,
    s: &str,
    max_chars: usize,
    multiline: bool,
) -> Result<(), ChatError> {
    let chars = s.chars().count();
    if chars > max_chars {
        return Err(ChatError::bad_request(format!(
            "{field}: {chars} characters; the limit is {max_chars}"
        )));
    }
    if s.chars()
        .any(|c| c.is_control() && !(multiline && c == '\n'))
    {
        return Err(ChatError::bad_request(format!(
            "{field}: must not contain control characters"
        )));
    }
    Ok(())
}

pub(super) fn check_http_url(field: &str, url: &str, max: usize) -> Result<(), ChatError> {
    if url.len() > max {
        return Err(ChatError::bad_request(format!(
            "{field}: {} bytes; the limit is {max}",
            url.len()
        )));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(ChatError::bad_request(format!(
            "{field}: must be an http:// or https:// URL"
        )));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(ChatError::bad_request(format!("{field}: URL has no host")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ChatError::bad_request(format!(
            "{field}: URL must not contain whitespace"
        )));
    }
    Ok(())
}

impl SendRequest {
    pub fn validate(&self, limits: &Limits) -> Result<(), ChatError> {
        check_cid(&self.cid, limits)?;
        self.body.validate(limits)
    }
}

impl Body {
    pub fn validate(&self, limits: &Limits) -> Result<(), ChatError> {
        match self {
            Body::Text { text } => check_message_text("body.text", text, limits, true),
            Body::Media(media) => media.validate(limits),
        }
    }
}

fn check_message_text(
    field: &str,
    text: &str,
    limits: &Limits,
    required: bool,
) -> Result<(), ChatError> {
    if text.len() > limits.max_text {
        return Err(ChatError::too_large(format!(
            "{field}: {} bytes; the limit is {}",
            text.len(),
            limits.max_text
        )));
    }
    if required && text.trim().is_empty() {
        return Err(ChatError::bad_request(format!(
            "{field}: must not be empty"
        )));
    }
    Ok(())
}

impl Media {
    pub fn validate(&self, limits: &Limits) -> Result<(), ChatError> {
        check_http_url("body.url", &self.url, MAX_URL)?;
        let mime_ok = self.mime.len() <= MAX_MIME
            && matches!(self.mime.split_once('/'), Some((t, s))
                if is_mime_token(t) && is_mime_token(s.split(';').next().unwrap_or("").trim_end()));
        if !mime_ok {
            return Err(ChatError::bad_request(format!(
                "body.mime: \"{}\" is not a MIME type like \"image/jpeg\" (at most {MAX_MIME} bytes)",
                short(&self.mime)
            )));
        }
        if self.size == 0 || self.size > MAX_SAFE_INTEGER {
            return Err(ChatError::bad_request(format!(
                "body.size: must be between 1 and {MAX_SAFE_INTEGER} bytes"
            )));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChatError::bad_request(
                "body.sha256: must be 64 hexadecimal characters",
            ));
        }
        if let Some(name) = &self.name {
            check_text_field("body.name", name, MAX_MEDIA_NAME, false)?;
        }
        for (field, v) in [("body.width", self.width), ("body.height", self.height)] {
            if v == Some(0) {
                return Err(ChatError::bad_request(format!(
                    "{field}: must be at least 1"
                )));
            }
        }
        if self.duration.is_some_and(|d| d > MAX_SAFE_INTEGER) {
            return Err(ChatError::bad_request(format!(
                "body.duration: must be at most {MAX_SAFE_INTEGER} ms"
            )));
        }
        if let Some(thumb) = &self.thumb {
            if thumb.len() > MAX_THUMB {
                return Err(ChatError::too_large(format!(
                    "body.thumb: {} bytes; the limit is {MAX_THUMB}",
                    thumb.len()
                )));
            }
            let base64 = thumb.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
            });
            if thumb.is_empty() || !base64 {
                return Err(ChatError::bad_request(
                    "body.thumb: must be non-empty base64",
                ));
            }
        }
        if let Some(caption) = &self.caption {
            check_message_text("body.caption", caption, limits, false)?;
        }
        Ok(())
    }
}

fn is_mime_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::super::codec::{encode, Encoding};
    use super::super::error::ErrorCode;
    use super::super::rpc::decode_rpc;
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn send(json: &str) -> Result<SendRequest, AckError> {
        decode_send(json.as_bytes(), &limits())
    }

    fn media() -> Media {
        Media {
            url: "https://cdn.example.com/m/1.jpg".into(),
            mime: "image/jpeg".into(),
            size: 52_344,
            sha256: "ab".repeat(32),
            name: Some("beach.jpg".into()),
            width: Some(1280),
            height: Some(960),
            duration: None,
            thumb: Some("/9j/4AAQSkZJRg==".into()),
            caption: Some("us".into()),
        }
    }

    #[test]
    fn send_round_trips_in_both_encodings() {
        let reqs = [
            SendRequest {
                cid: "c-1".into(),
                to: Target::User("bob".into()),
                body: Body::Text {
                    text: "hi 👋".into(),
                },
                reply_to: Some(Id(u64::MAX)),
            },
            SendRequest {
                cid: "c-2".into(),
                to: Target::Group("team".into()),
                body: Body::Media(media()),
                reply_to: None,
            },
        ];
        for req in reqs {
            for enc in [Encoding::MsgPack, Encoding::Json] {
                let bytes = encode(enc, &req);
                assert_eq!(decode_send(&bytes, &limits()), Ok(req.clone()), "{enc:?}");
            }
        }
    }

    #[test]
    fn send_as_documented() {
        let req =
            send(r#"{"cid":"a1","to":"u:bob","body":{"type":"text","text":"hi"},"reply_to":"7"}"#)
                .unwrap();
        assert_eq!(req.to, Target::User("bob".into()));
        assert_eq!(req.reply_to, Some(Id(7)));
        let req = send(r#"{"cid":"a1","to":"g:team","body":{"type":"text","text":"hi"},"reply_to":7,"extra":[1]}"#)
            .unwrap();
        assert_eq!(req.to, Target::Group("team".into()));
        assert_eq!(req.reply_to, Some(Id(7)));
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("u:bob"), Some(Target::User("bob".into())));
        assert_eq!(Target::parse("g:t.1"), Some(Target::Group("t.1".into())));
        for bad in ["bob", "u:", "g:", "x:bob", "u:a/b", "u:+", "U:bob", ""] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
        assert_eq!(Target::User("bob".into()).to_string(), "u:bob");
        assert_eq!(
            Target::User("bob".into()).conv("alice"),
            Some(ConvId::direct("alice", "bob"))
        );
        assert_eq!(Target::User("alice".into()).conv("alice"), None);
        assert_eq!(
            Target::Group("t".into()).conv("alice"),
            Some(ConvId::group("t"))
        );
    }

    /// Each case: payload, expected code, a piece of the message that names the problem.
    #[test]
    fn send_validation_failures() {
        let big_text = "x".repeat(16 * 1024 + 1);
        let long_cid = "c".repeat(65);
        let thumb = "A".repeat(MAX_THUMB + 1);
        let m = |fields: &str| {
            format!(
                r#"{{"cid":"c1","to":"u:bob","body":{{"type":"media","url":"https://x.io/a","mime":"image/png","size":10,"sha256":"{}"{fields}}}}}"#,
                "0".repeat(64)
            )
        };
        let cases: Vec<(String, ErrorCode, &str)> = vec![
            (
                r#"{"to":"u:bob","body":{"type":"text","text":"hi"}}"#.into(),
                ErrorCode::BadRequest,
                "missing field `cid`",
            ),
            (
                r#"{"cid":"c1","body":{"type":"text","text":"hi"}}"#.into(),
                ErrorCode::BadRequest,
                "missing field `to`",
            ),
            (
                r#"{"cid":"c1","to":"u:bob"}"#.into(),
                ErrorCode::BadRequest,
                "missing field `body`",
            ),
            (
                r#"{"cid":"c1","to":"bob","body":{"type":"text","text":"hi"}}"#.into(),
                ErrorCode::BadRequest,
                "to: expected \"u:{user}\"",
            ),
            (
                r#"{"cid":"c1","to":"u:b b","body":{"type":"text","text":"hi"}}"#.into(),
                ErrorCode::BadRequest,
                "to: ",
            ),
            (
                r#"{"cid":"c1","to":"u:bob","body":{"type":"sticker"}}"#.into(),
                ErrorCode::BadRequest,
                "body: unknown type \"sticker\"",
            ),
            (
                r#"{"cid":"c1","to":"u:bob","body":{"text":"hi"}}"#.into(),
                ErrorCode::BadRequest,
                "body: missing field `type`",
            ),
            (
                r#"{"cid":"c1","to":"u:bob","body":{"type":"text"}}"#.into(),
                ErrorCode::BadRequest,
                "body: missing field `text` for type \"text\"",
            ),
            (
                r#"{"cid":"c1","to":"u:bob","body":{"type":"text","text":"  \n"}}"#.into(),
                ErrorCode::BadRequest,
                "body.text: must not be empty",
            ),
            (
                format!(
                    r#"{{"cid":"c1","to":"u:bob","body":{{"type":"text","text":"{big_text}"}}}}"#
                ),
                ErrorCode::TooLarge,
                "body.text: 16385 bytes; the limit is 16384",
            ),
            (
                format!(
                    r#"{{"cid":"{long_cid}","to":"u:bob","body":{{"type":"text","text":"hi"}}}}"#
                ),
                ErrorCode::BadRequest,
                "cid: 65 characters; the limit is 64",
            ),
            (
                r#"{"cid":"","to":"u:bob","body":{"type":"text","text":"hi"}}"#.into(),
                ErrorCode::BadRequest,
                "cid: must not be empty",
            ),
            (
                r#"{"cid":"a\nb","to":"u:bob","body":{"type":"text","text":"hi"}}"#.into(),
                ErrorCode::BadRequest,
                "cid: must not contain control",
            ),
            (
                r#"{"cid":"c1","to":"u:bob","body":{"type":"text","text":"hi"},"reply_to":"x"}"#
                    .into(),
                ErrorCode::BadRequest,
                "reply_to: invalid value",
            ),
            (
                r#"{"cid":"c1","to":"u:bob","body":{"type":"text","text":"hi"}} x"#.into(),
                ErrorCode::BadRequest,
                "unexpected bytes",
            ),
            (
                r#"{"cid":"c1","to":"u:bob","#.into(),
                ErrorCode::BadRequest,
                "EOF",
            ),
            (m(""), ErrorCode::BadRequest, "ok"),
            (
                m(r#","url":"ftp://x/a""#).replacen(r#""url":"https://x.io/a","#, "", 1),
                ErrorCode::BadRequest,
                "body.url: must be an http:// or https:// URL",
            ),
            (
                m("").replace("https://x.io/a", "https:///a"),
                ErrorCode::BadRequest,
                "body.url: URL has no host",
            ),
            (
                m("").replace("https://x.io/a", "https://x.io/a b"),
                ErrorCode::BadRequest,
                "body.url: URL must not contain whitespace",
            ),
            (
                m("").replace("image/png", "png"),
                ErrorCode::BadRequest,
                "body.mime",
            ),
            (
                m("").replace(r#""size":10"#, r#""size":0"#),
                ErrorCode::BadRequest,
                "body.size",
            ),
            (
                m("").replace(r#""size":10"#, r#""size":-1"#),
                ErrorCode::BadRequest,
                "body.size: invalid value",
            ),
            (
                m("").replace(&"0".repeat(64), &"0".repeat(63)),
                ErrorCode::BadRequest,
                "body.sha256: must be 64 hexadecimal characters",
            ),
            (
                m("").replace(&"0".repeat(64), &"g".repeat(64)),
                ErrorCode::BadRequest,
                "body.sha256",
            ),
            (
                m(r#","width":0"#),
                ErrorCode::BadRequest,
                "body.width: must be at least 1",
            ),
            (
                m(r#","width":5000000000"#),
                ErrorCode::BadRequest,
                "body.width: invalid value",
            ),
            (
                m(&format!(r#","thumb":"{thumb}""#)),
                ErrorCode::TooLarge,
                "body.thumb: 16385 bytes",
            ),
            (
                m(r#","thumb":"not base64!""#),
                ErrorCode::BadRequest,
                "body.thumb: must be non-empty base64",
            ),
            (
                m(&format!(r#","name":"{}""#, "n".repeat(256))),
                ErrorCode::BadRequest,
                "body.name: 256 characters; the limit is 255",
            ),
            (
                m(&format!(r#","caption":"{big_text}""#)),
                ErrorCode::TooLarge,
                "body.caption: 16385 bytes",
            ),
            ("[1]".into(), ErrorCode::BadRequest, "payload must be a map"),
            ("".into(), ErrorCode::BadRequest, "empty payload"),
        ];
        for (payload, code, needle) in cases {
            match send(&payload) {
                Ok(_) if needle == "ok" => {}
                Ok(req) => panic!("accepted {payload}: {req:?}"),
                Err(AckError { error, .. }) => {
                    assert_eq!(error.code, code, "{payload}: {error}");
                    assert!(error.message.contains(needle), "{payload}: {error}");
                }
            }
        }
    }

    #[test]
    fn send_errors_carry_the_cid_when_readable() {
        let err =
            send(r#"{"cid":"c9","to":"nobody","body":{"type":"text","text":"hi"}}"#).unwrap_err();
        assert_eq!(err.cid.as_deref(), Some("c9"));
        let err = send(r#"{"cid":"c9","to":"u:bob","body":{"#).unwrap_err();
        assert_eq!(err.cid.as_deref(), Some("c9"));
        // A cid that is itself invalid is not echoed.
        let err = send(&format!(r#"{{"cid":"{}","to":"u:bob"}}"#, "c".repeat(65))).unwrap_err();
        assert_eq!(err.cid, None);
        let err = send(r#"{"cid":7,"to":"u:bob"}"#).unwrap_err();
        assert_eq!(err.cid, None);
        // Oversized: refused before decoding, the cid still found.
        let payload = format!(
            r#"{{"cid":"big","to":"u:bob","body":{{"type":"text","text":"{}"}}}}"#,
            "x".repeat(70_000)
        );
        let err = send(&payload).unwrap_err();
        assert_eq!(err.cid.as_deref(), Some("big"));
        assert_eq!(err.error.code, ErrorCode::TooLarge);
        assert!(
            err.error.message.contains("the limit is 65536"),
            "{}",
            err.error
        );
    }

    #[test]
    fn receipts() {
        let ok = decode_receipt(
            br#"{"conv":"d:alice:bob","up_to":5,"kind":"read"}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(
            ok,
            ReceiptRequest {
                conv: ConvId::direct("alice", "bob"),
                up_to: 5,
                kind: ReceiptKind::Read
            }
        );
        let bytes = encode(Encoding::MsgPack, &ok);
        assert_eq!(decode_receipt(&bytes, &limits()), Ok(ok));
        for (payload, needle) in [
            (
                r#"{"conv":"d:bob:alice","up_to":5,"kind":"read"}"#,
                "conv: \"d:bob:alice\" is not",
            ),
            (r#"{"conv":"g:","up_to":5,"kind":"read"}"#, "conv:"),
            (
                r#"{"conv":"g:t","up_to":0,"kind":"read"}"#,
                "up_to: seqs start at 1",
            ),
            (
                r#"{"conv":"g:t","up_to":-1,"kind":"read"}"#,
                "up_to: invalid value",
            ),
            (
                r#"{"conv":"g:t","up_to":1,"kind":"seen"}"#,
                "kind: unknown variant `seen`",
            ),
            (r#"{"conv":"g:t","kind":"read"}"#, "missing field `up_to`"),
        ] {
            let err = decode_receipt(payload.as_bytes(), &limits()).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{payload}");
            assert!(err.message.contains(needle), "{payload}: {err}");
        }
    }

    #[test]
    fn typing() {
        let t = decode_typing(br#"{"to":"g:team","state":"typing"}"#, &limits()).unwrap();
        assert_eq!(t.state, TypingState::Typing);
        let err = decode_typing(br#"{"to":"g:team","state":"recording"}"#, &limits()).unwrap_err();
        assert!(err.message.contains("state: unknown variant"), "{err}");
        let small = Limits {
            max_payload: 10,
            ..limits()
        };
        let err = decode_typing(br#"{"to":"g:team","state":"typing"}"#, &small).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }

    #[test]
    fn limits_config() {
        let l: Limits = toml::from_str("max_text = 100").unwrap();
        assert_eq!(l.max_text, 100);
        assert_eq!(l.max_payload, 65536);
        assert_eq!(l.max_cid, 64);
        assert!(l.check().is_ok());
        let bad = Limits {
            max_text: 1 << 20,
            ..Limits::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "max_text");
        // No envelope room around the longest text.
        let tight = Limits {
            max_payload: 1000,
            max_text: 900,
            max_cid: 64,
        };
        assert_eq!(tight.check().unwrap_err().0, "max_payload");
        let small = Limits {
            max_payload: 600,
            max_text: 100,
            max_cid: 64,
        };
        assert!(
            small.check().is_ok(),
            "below 1 KiB is fine with room for the envelope"
        );
    }

    /// Whatever arrives, decoding answers and never panics.
    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid: Vec<Vec<u8>> = vec![
            encode(
                Encoding::MsgPack,
                &SendRequest {
                    cid: "c".into(),
                    to: Target::User("bob".into()),
                    body: Body::Media(media()),
                    reply_to: Some(Id(9)),
                },
            ),
            br#"{"cid":"c","to":"u:bob","body":{"type":"text","text":"hi"}}"#.to_vec(),
            br#"{"rid":1,"op":"group.add","gid":"t","users":["a","b"]}"#.to_vec(),
            br#"{"conv":"d:a:b","up_to":5,"kind":"read"}"#.to_vec(),
        ];
        let l = limits();
        for i in 0..20_000 {
            let payload: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 64) as usize;
                let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                // Bias towards map markers so the decoders get past the first byte.
                if let Some(first) = p.first_mut() {
                    *first = [0x81, 0x83, 0xde, 0xdf, b'{', *first][(next() % 6) as usize];
                }
                p
            } else {
                let mut p = valid[(next() % valid.len() as u64) as usize].clone();
                for _ in 0..(1 + next() % 4) {
                    let at = (next() % p.len() as u64) as usize;
                    match next() % 3 {
                        0 => p[at] = next() as u8,
                        1 => p.truncate(at.max(1)),
                        _ => p.insert(at, next() as u8),
                    }
                }
                p
            };
            let _ = decode_send(&payload, &l);
            let _ = decode_rpc(&payload, &l);
            let _ = decode_receipt(&payload, &l);
            let _ = decode_typing(&payload, &l);
        }
        let huge = vec![b'{'; 10 << 20];
        assert_eq!(
            decode_send(&huge, &l).unwrap_err().error.code,
            ErrorCode::TooLarge
        );
    }
}
