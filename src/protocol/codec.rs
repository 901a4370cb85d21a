//! MessagePack/JSON codec and the wire types whose representation depends on the encoding.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How the server publishes (`[chat] encoding`). Clients may send either.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    MsgPack,
    Json,
}

/// Why a payload could not be decoded. The text is meant for the client: it names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("empty payload")]
    Empty,
    #[error("payload must be a map (a MessagePack map or a JSON object)")]
    NotAMap,
    #[error("{0}")]
    Invalid(String),
    #[error("unexpected bytes after the payload's map")]
    Trailing,
}

/// Nesting any of our payloads needs is 4 levels; the limit only has to stop a hostile
/// payload from recursing deep enough to exhaust a 2 MiB worker stack.
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    MsgPack,
}

fn sniff(payload: &[u8]) -> Result<Format, PayloadError> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(PayloadError::Empty),
        Some(b'{') => Ok(Format::Json),
        // fixmap, map 16, map 32. MessagePack has no leading whitespace, so the first byte
        // itself must be the marker.
        Some(_) => match payload.first() {
            Some(0x80..=0x8f | 0xde | 0xdf) => Ok(Format::MsgPack),
            _ => Err(PayloadError::NotAMap),
        },
    }
}

fn invalid<E: fmt::Display>(err: serde_path_to_error::Error<E>) -> PayloadError {
    let path = err.path().to_string();
    if path == "." || path.is_empty() {
        PayloadError::Invalid(err.inner().to_string())
    } else {
        PayloadError::Invalid(format!("{path}: {}", err.inner()))
    }
}

/// Decodes a client payload: JSON when the first non-whitespace byte is `{`, otherwise
/// MessagePack with named fields. Anything but a map at the top level is refused.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, PayloadError> {
    match sniff(payload)? {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(payload);
            let value = serde_path_to_error::deserialize(&mut de).map_err(invalid)?;
            de.end().map_err(|_| PayloadError::Trailing)?;
            Ok(value)
        }
        Format::MsgPack => {
            // The reader-based deserializer (not `from_slice`) so that what is left over can
            // be checked; it reads only the bytes that exist, so a length prefix claiming
            // gigabytes cannot make it allocate them.
            let mut rest = payload;
            let mut de = rmp_serde::Deserializer::new(&mut rest);
            de.set_max_depth(MAX_DEPTH);
            let value = serde_path_to_error::deserialize(&mut de).map_err(invalid)?;
            drop(de);
            if !rest.is_empty() {
                return Err(PayloadError::Trailing);
            }
            Ok(value)
        }
    }
}

/// Encodes a server payload: MessagePack as a map with field names, or JSON.
fn try_encode<T: Serialize + ?Sized>(enc: Encoding, value: &T) -> Result<Vec<u8>, PayloadError> {
    match enc {
        Encoding::MsgPack => {
            rmp_serde::to_vec_named(value).map_err(|e| PayloadError::Invalid(e.to_string()))
        }
        Encoding::Json => {
            serde_json::to_vec(value).map_err(|e| PayloadError::Invalid(e.to_string()))
        }
    }
}

/// [`try_encode`] for the payload types of this module, which always encode. Should one ever
/// fail, the receiver gets an `internal` error object instead of a silent gap.
pub fn encode<T: Serialize + ?Sized>(enc: Encoding, value: &T) -> Vec<u8> {
    match try_encode(enc, value) {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::error!(%err, ?enc, "payload could not be encoded");
            let fallback =
                super::error::ChatError::internal("the server could not encode this payload");
            try_encode(enc, &fallback).unwrap_or_default()
        }
    }
}

/// A message id. Ids are 64-bit and exceed JavaScript's 2^53, so JSON carries them as decimal
/// strings; MessagePack as integers. Both forms are accepted on input in either encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u64);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Id {
    fn from(v: u64) -> Id {
        Id(v)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&self.0)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a message id (unsigned 64-bit integer, as a number or a decimal string)",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                // `u64::from_str` accepts a leading `+`; ids are plain digits.
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::invalid_value(de::Unexpected::Str(short(v)), &self));
                }
                v.parse()
                    .map(Id)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(short(v)), &self))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

/// A request id: whatever the client put in `rid` (a string or an integer), echoed back
/// unchanged so the client can match the answer to its request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rid {
    Str(String),
    U64(u64),
    I64(i64),
}

impl Rid {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Rid::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Rid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rid::Str(s) => f.write_str(s),
            Rid::U64(v) => v.fmt(f),
            Rid::I64(v) => v.fmt(f),
        }
    }
}

impl Serialize for Rid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rid::Str(v) => s.serialize_str(v),
            Rid::U64(v) => s.serialize_u64(*v),
            Rid::I64(v) => s.serialize_i64(*v),
        }
    }
}

struct RidVisitor;

impl Visitor<'_> for RidVisitor {
    type Value = Rid;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an integer")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Rid, E> {
        Ok(Rid::U64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Rid, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => Rid::U64(u),
            Err(_) => Rid::I64(v),
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Rid, E> {
        Ok(Rid::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Rid, E> {
        Ok(Rid::Str(v))
    }
}

impl<'de> Deserialize<'de> for Rid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rid, D::Error> {
        d.deserialize_any(RidVisitor)
    }
}

/// At most 64 characters of client input, for error messages.
pub(crate) fn short(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Best effort: the value of top-level `key` if it is a string or an integer, read before
/// whatever makes the payload invalid. Lets an error answer carry the client's `cid`/`rid`
/// even when the rest of the payload is garbage.
pub(crate) fn probe(payload: &[u8], key: &'static str) -> Option<Rid> {
    let mut found = None;
    let seed = Probe {
        key,
        found: &mut found,
    };
    // Errors are expected here (that is why we probe); only `found` matters.
    let _ = match sniff(payload) {
        Ok(Format::Json) => seed
            .deserialize(&mut serde_json::Deserializer::from_slice(payload))
            .map_err(drop),
        Ok(Format::MsgPack) => {
            let mut rest = payload;
            let mut de = rmp_serde::Deserializer::new(&mut rest);
            de.set_max_depth(MAX_DEPTH);
            seed.deserialize(&mut de).map_err(drop)
        }
        Err(_) => Err(()),
    };
    found
}

struct Probe<'a> {
    key: &'static str,
    found: &'a mut Option<Rid>,
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(is_key) = map.next_key_seed(KeyIs(self.key))? {
            if is_key {
                *self.found = Some(map.next_value_seed(RidSeed)?);
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct RidSeed;

impl<'de> DeserializeSeed<'de> for RidSeed {
    type Value = Rid;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Rid, D::Error> {
        d.deserialize_any(RidVisitor)
    }
}

/// Deserializes a map key of any type to "is it the string `self.0`".
struct KeyIs(&'static str);

impl<'de> DeserializeSeed<'de> for KeyIs {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyIs {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<bool, E> {
        Ok(v == self.0.as_bytes())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        id: Id,
        seq: u64,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Id>,
    }

    fn sample() -> Sample {
        Sample {
            id: Id(u64::MAX - 7),
            seq: 3,
            name: "x".into(),
            reply_to: Some(Id(1 << 60)),
        }
    }

    #[test]
    fn round_trips_both_encodings() {
        for enc in [Encoding::MsgPack, Encoding::Json] {
            let bytes = encode(enc, &sample());
            let back: Sample = decode(&bytes).unwrap();
            assert_eq!(back, sample(), "{enc:?}");
        }
    }

    #[test]
    fn json_ids_are_strings_msgpack_ids_are_integers() {
        let json = String::from_utf8(encode(Encoding::Json, &sample())).unwrap();
        assert_eq!(
            json,
            r#"{"id":"18446744073709551608","seq":3,"name":"x","reply_to":"1152921504606846976"}"#
        );
        let value =
            rmpv::decode::read_value(&mut &encode(Encoding::MsgPack, &sample())[..]).unwrap();
        let map = value.as_map().unwrap();
        assert_eq!(map[0].0.as_str(), Some("id"));
        assert_eq!(map[0].1.as_u64(), Some(u64::MAX - 7));
    }

    #[test]
    fn ids_accepted_as_number_or_string_in_both_encodings() {
        let a: Sample = decode(br#"{"id": 5, "seq": 1, "name": ""}"#).unwrap();
        let b: Sample = decode(br#" {"id": "5", "seq": 1, "name": ""}"#).unwrap();
        assert_eq!(a.id, Id(5));
        assert_eq!(b.id, Id(5));
        #[derive(Serialize)]
        struct StrId<'a> {
            id: &'a str,
            seq: u64,
            name: &'a str,
        }
        let bytes = rmp_serde::to_vec_named(&StrId {
            id: "18446744073709551615",
            seq: 1,
            name: "",
        })
        .unwrap();
        let c: Sample = decode(&bytes).unwrap();
        assert_eq!(c.id, Id(u64::MAX));
        for bad in [
            r#""-1""#,
            r#""+1""#,
            r#""1e3""#,
            r#""""#,
            "-1",
            "1.5",
            r#""18446744073709551616""#,
        ] {
            let payload = format!(r#"{{"id": {bad}, "seq": 1, "name": ""}}"#);
            let err = decode::<Sample>(payload.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("id: "), "{bad}: {err}");
        }
    }

    #[test]
    fn non_maps_are_refused() {
        assert_eq!(decode::<Sample>(b""), Err(PayloadError::Empty));
        assert_eq!(decode::<Sample>(b"  \n"), Err(PayloadError::Empty));
        assert_eq!(decode::<Sample>(b"[1,2]"), Err(PayloadError::NotAMap));
        assert_eq!(decode::<Sample>(b"\"x\""), Err(PayloadError::NotAMap));
        let array = rmp_serde::to_vec(&(Id(1), 2u64, "x")).unwrap();
        assert_eq!(decode::<Sample>(&array), Err(PayloadError::NotAMap));
        // A whitespace byte in front of a MessagePack map is not MessagePack.
        let mut spaced = vec![b' '];
        spaced.extend(encode(Encoding::MsgPack, &sample()));
        assert_eq!(decode::<Sample>(&spaced), Err(PayloadError::NotAMap));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(Encoding::MsgPack, &sample());
        bytes.push(0xc0);
        assert_eq!(decode::<Sample>(&bytes), Err(PayloadError::Trailing));
        let mut json = encode(Encoding::Json, &sample());
        json.extend(b" {}");
        assert_eq!(decode::<Sample>(&json), Err(PayloadError::Trailing));
        json.truncate(json.len() - 3);
        json.extend(b" \n");
        assert!(decode::<Sample>(&json).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let err = decode::<Sample>(br#"{"id": 1, "seq": "x", "name": ""}"#).unwrap_err();
        assert!(err.to_string().starts_with("seq: invalid type"), "{err}");
        let err = decode::<Sample>(br#"{"id": 1, "name": ""}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `seq`"), "{err}");
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // map 1, str32 claiming 4 GiB
        let payload = [0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b'a'];
        assert!(decode::<Sample>(&payload).is_err());
        // map32 claiming 4 billion entries
        let payload = [0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'a'];
        assert!(decode::<Sample>(&payload).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let mut json = String::from(r#"{"id":1,"seq":1,"name":"","x":"#);
        json.push_str(&"[".repeat(100_000));
        assert!(decode::<Sample>(json.as_bytes()).is_err());
        let mut mp = vec![0x84];
        mp.extend(rmp_serde::to_vec("x").unwrap());
        mp.extend(std::iter::repeat_n(0x91, 100_000));
        assert!(decode::<Sample>(&mp).is_err());
        assert_eq!(probe(&mp, "rid"), None);
    }

    #[test]
    fn probe_finds_keys_before_the_damage() {
        assert_eq!(
            probe(br#"{"cid": "c1", "to": 12, "body": garbage"#, "cid"),
            Some(Rid::Str("c1".into()))
        );
        assert_eq!(
            probe(br#"{"x": [1, {"a": 2}], "rid": 7, "op""#, "rid"),
            Some(Rid::U64(7))
        );
        assert_eq!(probe(br#"{"rid": -3}"#, "rid"), Some(Rid::I64(-3)));
        assert_eq!(probe(br#"{"rid": {"a": 1}}"#, "rid"), None);
        assert_eq!(probe(br#"{"op": "x"}"#, "rid"), None);
        assert_eq!(probe(b"[1]", "rid"), None);
        // MessagePack, with an integer key first and the payload cut short after `cid`.
        let mut mp = vec![0x83, 0x01, 0x02];
        mp.extend(rmp_serde::to_vec("cid").unwrap());
        mp.extend(rmp_serde::to_vec("abc").unwrap());
        mp.push(0xa5);
        assert_eq!(probe(&mp, "cid"), Some(Rid::Str("abc".into())));
    }

    #[test]
    fn encoding_config_names() {
        #[derive(Deserialize)]
        struct C {
            encoding: Encoding,
        }
        let c: C = toml::from_str(r#"encoding = "msgpack""#).unwrap();
        assert_eq!(c.encoding, Encoding::MsgPack);
        let c: C = toml::from_str(r#"encoding = "json""#).unwrap();
        assert_eq!(c.encoding, Encoding::Json);
        assert!(toml::from_str::<C>(r#"encoding = "xml""#).is_err());
        assert_eq!(Encoding::default(), Encoding::MsgPack);
    }

    #[test]
    fn short_truncates_on_char_boundaries() {
        let s = "é".repeat(100);
        assert_eq!(short(&s).chars().count(), 64);
        assert_eq!(short("abc"), "abc");
    }
}
