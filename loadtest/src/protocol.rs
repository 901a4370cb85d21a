//! What goes on the wire: the raw scenario's binary header and the chat payloads (SPEC §3–§5).
//!
//! Server payloads are decoded tolerantly: every field has a default, ids may arrive as
//! numbers or strings, and both MessagePack and JSON (first byte `{`) are accepted.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// raw scenario payload

const RAW_MAGIC: &[u8; 4] = b"LT01";
/// Size of the raw header; payloads are at least this long.
pub const RAW_HEADER: usize = 28;

/// The header a raw publisher puts at the front of each payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHeader {
    /// Random per run: messages from another run (retained, queued) are recognised and ignored.
    pub run: u32,
    pub publisher: u32,
    pub seq: u64,
    /// When the message was due, on the run clock (ns).
    pub sent_ns: u64,
}

impl RawHeader {
    /// The payload: header, then zero padding up to `size` bytes.
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(size.max(RAW_HEADER));
        v.extend_from_slice(RAW_MAGIC);
        v.extend_from_slice(&self.run.to_be_bytes());
        v.extend_from_slice(&self.publisher.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.sent_ns.to_be_bytes());
        v.resize(size.max(RAW_HEADER), 0);
        v
    }

    pub fn decode(p: &[u8]) -> Option<RawHeader> {
        if p.len() < RAW_HEADER || &p[..4] != RAW_MAGIC {
            return None;
        }
        let u32_at = |i: usize| p.get(i..i + 4)?.try_into().ok().map(u32::from_be_bytes);
        let u64_at = |i: usize| p.get(i..i + 8)?.try_into().ok().map(u64::from_be_bytes);
        Some(RawHeader {
            run: u32_at(4)?,
            publisher: u32_at(8)?,
            seq: u64_at(12)?,
            sent_ns: u64_at(20)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// chat topics

pub fn inbox_filter(user: &str) -> String {
    format!("chat/u/{user}/in/#")
}
pub fn send_topic(user: &str) -> String {
    format!("chat/u/{user}/out/send")
}
pub fn receipt_topic(user: &str) -> String {
    format!("chat/u/{user}/out/receipt")
}
pub fn rpc_topic(user: &str) -> String {
    format!("chat/u/{user}/out/rpc")
}
pub fn group_filter(gid: &str) -> String {
    format!("chat/g/{gid}/#")
}

/// What a topic a chat client receives on carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundKind {
    Ack,
    Msg,
    Receipt,
    Rpc,
    Other,
}

pub fn classify(topic: &str) -> InboundKind {
    let mut parts = topic.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("chat"), Some("u"), Some(_), Some("in"), Some(kind)) => match kind {
            "ack" => InboundKind::Ack,
            "msg" => InboundKind::Msg,
            "receipt" => InboundKind::Receipt,
            "rpc" => InboundKind::Rpc,
            _ => InboundKind::Other,
        },
        (Some("chat"), Some("g"), Some(_), Some("msg"), None) => InboundKind::Msg,
        (Some("chat"), Some("g"), Some(_), Some("receipt"), None) => InboundKind::Receipt,
        _ => InboundKind::Other,
    }
}

// ---------------------------------------------------------------------------------------------
// chat payloads, client → server

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TextBody {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Send {
    pub cid: String,
    pub to: String,
    pub body: TextBody,
}

impl Send {
    pub fn text(cid: String, to: String, text: String) -> Self {
        Send {
            cid,
            to,
            body: TextBody { kind: "text", text },
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Receipt<'a> {
    pub conv: &'a str,
    pub up_to: u64,
    pub kind: &'a str,
}

/// `{rid, op, ...args}`: `args` must be a JSON object, its fields are flattened in.
pub fn rpc_request(rid: &str, op: &str, args: serde_json::Value) -> anyhow::Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    map.insert("rid".into(), rid.into());
    map.insert("op".into(), op.into());
    if let serde_json::Value::Object(a) = args {
        map.extend(a);
    }
    Ok(rmp_serde::to_vec_named(&serde_json::Value::Object(map))?)
}

/// MessagePack with named fields, as the server expects.
pub fn encode<T: Serialize>(v: &T) -> anyhow::Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(v)?)
}

// ---------------------------------------------------------------------------------------------
// chat payloads, server → client

/// Decodes a server payload: JSON when it starts with `{`, MessagePack otherwise.
pub fn decode<'de, T: Deserialize<'de>>(p: &'de [u8]) -> Option<T> {
    if p.first() == Some(&b'{') {
        serde_json::from_slice(p).ok()
    } else {
        rmp_serde::from_slice(p).ok()
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// `{cid, id, conv, seq, ts}` or `{cid, error}` on `in/ack`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SentAck {
    pub cid: String,
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub conv: String,
    pub seq: u64,
    pub ts: u64,
    pub error: Option<ErrorBody>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct InBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

/// A message as the server delivers it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Delivery {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub conv: String,
    pub seq: u64,
    pub from: String,
    pub ts: u64,
    pub cid: String,
    pub body: InBody,
}

/// A receipt forwarded to the other side: `{conv, by, kind, up_to, ts}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ReceiptIn {
    pub conv: String,
    pub by: String,
    pub kind: String,
    pub up_to: u64,
}

/// `{rid, ok, result | error}` on `in/rpc`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RpcResponse {
    #[serde(deserialize_with = "id_string")]
    pub rid: String,
    pub ok: bool,
    pub result: Option<serde_json::Value>,
    pub error: Option<ErrorBody>,
}

/// Accepts a string, an integer or nil as an id, and keeps it as a string.
fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an id (string or integer)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_unit<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
    }
    d.deserialize_any(V)
}

/// A JSON value that is an id: a string, or a number rendered as a string.
pub fn value_id(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// chat message text carrying the timestamp

/// What the tool writes in a text body: its run, the sender's index, the message number and
/// when the send was due (run clock, ns). The server stores and forwards it untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextStamp {
    pub run: u32,
    pub sender: u32,
    pub n: u64,
    pub due_ns: u64,
}

impl TextStamp {
    /// `lt <run> <sender> <n> <due_ns> ` padded with `x` to `size` bytes.
    pub fn encode(&self, size: usize) -> String {
        let mut s = format!(
            "lt {} {} {} {} ",
            self.run, self.sender, self.n, self.due_ns
        );
        while s.len() < size {
            s.push('x');
        }
        s
    }

    pub fn decode(text: &str) -> Option<TextStamp> {
        let mut it = text.split(' ');
        if it.next()? != "lt" {
            return None;
        }
        Some(TextStamp {
            run: it.next()?.parse().ok()?,
            sender: it.next()?.parse().ok()?,
            n: it.next()?.parse().ok()?,
            due_ns: it.next()?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_round_trips_and_pads() {
        let h = RawHeader {
            run: 7,
            publisher: 3,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let p = h.encode(64);
        assert_eq!(p.len(), 64);
        assert_eq!(RawHeader::decode(&p), Some(h));
        assert_eq!(h.encode(1).len(), RAW_HEADER);
        assert_eq!(RawHeader::decode(&p[..20]), None);
        assert_eq!(RawHeader::decode(b"not ours at all, not ours at all"), None);
    }

    #[test]
    fn send_is_named_msgpack() {
        let p = encode(&Send::text("c1".into(), "u:bob".into(), "hi".into())).expect("encode");
        let v: serde_json::Value = rmp_serde::from_slice(&p).expect("decode");
        assert_eq!(
            v,
            serde_json::json!({"cid": "c1", "to": "u:bob", "body": {"type": "text", "text": "hi"}})
        );
    }

    #[test]
    fn rpc_request_flattens_args() {
        let p = rpc_request(
            "r1",
            "group.create",
            serde_json::json!({"name": "t", "members": ["a", "b"]}),
        )
        .expect("encode");
        let v: serde_json::Value = rmp_serde::from_slice(&p).expect("decode");
        assert_eq!(
            v,
            serde_json::json!({"rid": "r1", "op": "group.create", "name": "t", "members": ["a", "b"]})
        );
    }

    #[derive(Serialize)]
    struct AckOut {
        cid: &'static str,
        id: u64,
        conv: &'static str,
        seq: u64,
        ts: u64,
        extra: bool,
    }

    #[test]
    fn acks_decode_tolerantly() {
        let p = rmp_serde::to_vec_named(&AckOut {
            cid: "c",
            id: u64::MAX,
            conv: "d:a:b",
            seq: 3,
            ts: 9,
            extra: true,
        })
        .expect("encode");
        let a: SentAck = decode(&p).expect("ack");
        assert_eq!(a.id, u64::MAX.to_string());
        assert_eq!(a.seq, 3);
        assert!(a.error.is_none());
        let e: SentAck =
            decode(br#"{"cid":"c","error":{"code":"rate_limited","message":"slow down"}}"#)
                .expect("json error ack");
        assert_eq!(e.error.map(|e| e.code), Some("rate_limited".to_string()));
        let j: SentAck = decode(br#"{"cid":"c","id":"123","seq":1}"#).expect("json string id");
        assert_eq!(j.id, "123");
        assert!(decode::<SentAck>(b"\xc1garbage").is_none());
    }

    #[test]
    fn delivery_and_rpc_decode() {
        let d: Delivery = decode(
            br#"{"id":5,"conv":"g:t","seq":2,"from":"a","ts":1,"cid":"c","body":{"type":"text","text":"lt 1 2 3 4 x"}}"#,
        )
        .expect("delivery");
        assert_eq!(d.id, "5");
        assert_eq!(
            TextStamp::decode(&d.body.text),
            Some(TextStamp {
                run: 1,
                sender: 2,
                n: 3,
                due_ns: 4
            })
        );
        let r: RpcResponse = decode(br#"{"rid":"r1","ok":true,"result":{"gid":42}}"#).expect("rpc");
        assert!(r.ok);
        let gid = r
            .result
            .as_ref()
            .and_then(|v| v.get("gid"))
            .and_then(value_id);
        assert_eq!(gid.as_deref(), Some("42"));
    }

    #[test]
    fn text_stamp_round_trips() {
        let s = TextStamp {
            run: 9,
            sender: 1,
            n: 77,
            due_ns: 1_000_000,
        };
        let t = s.encode(64);
        assert_eq!(t.len(), 64);
        assert_eq!(TextStamp::decode(&t), Some(s));
        assert_eq!(TextStamp::decode(&s.encode(0)), Some(s));
        assert_eq!(TextStamp::decode("hello"), None);
    }

    #[test]
    fn topics_classify() {
        assert_eq!(classify("chat/u/a/in/ack"), InboundKind::Ack);
        assert_eq!(classify("chat/u/a/in/msg"), InboundKind::Msg);
        assert_eq!(classify("chat/g/t/msg"), InboundKind::Msg);
        assert_eq!(classify("chat/g/t/receipt"), InboundKind::Receipt);
        assert_eq!(classify("chat/u/a/in/rpc"), InboundKind::Rpc);
        assert_eq!(classify("chat/u/a/in/typing"), InboundKind::Other);
        assert_eq!(classify("x/y"), InboundKind::Other);
    }
}
