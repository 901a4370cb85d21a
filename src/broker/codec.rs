//! MQTT framing on rumqttd's codecs, made safe to face the network.
//!
//! rumqttd 0.20's `V4`/`V5` parsers can panic on hostile input (`unreachable!` on
//! server-only packet types, slicing in some readers) and `V4::write` panics on a packet
//! carrying properties. Every call is therefore made under `catch_unwind` and packets are
//! normalized for the connection's protocol version before writing: a panic becomes a
//! protocol error that closes that one connection.

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{
    self, v4::V4, v5::V5, ConnectReturnCode, Packet, Protocol, Publish, PublishProperties, QoS,
    SubscribeReasonCode,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

/// Panics caught in rumqttd's codec since start. Our own checks run first so this should stay
/// 0; the fuzz targets and the random-bytes test hold it there.
static CAUGHT_PANICS: AtomicU64 = AtomicU64::new(0);

pub fn caught_panics() -> u64 {
    CAUGHT_PANICS.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed packet: {0}")]
    Malformed(protocol::Error),
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    TooLarge(usize),
    #[error("codec panicked on malformed input")]
    Panicked,
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// Facts about a complete PUBLISH frame that rumqttd keeps crate-private (`qos`, `pkid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishHeader {
    pub qos: u8,
    pub pkid: u16,
}

pub struct Codec {
    pub version: Version,
    v4: V4,
    v5: V5,
    max_packet: usize,
}

/// Result of trying to take one packet off the read buffer. Transient (never stored), so
/// the size of `Packet` does not matter here.
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// A packet, with the QoS/packet id when it is a PUBLISH.
    Packet(Packet, Option<PublishHeader>),
}

impl Codec {
    pub fn new(version: Version, max_packet: usize) -> Codec {
        Codec {
            version,
            v4: V4,
            v5: V5,
            max_packet,
        }
    }

    /// Looks at the first CONNECT in `buf` and tells which protocol it speaks.
    /// `Ok(None)` means more bytes are needed.
    pub fn detect(buf: &[u8], max_packet: usize) -> Result<Option<Version>, CodecError> {
        let header = match protocol::v4::check(buf.iter(), max_packet) {
            Ok(h) => h,
            Err(protocol::Error::InsufficientBytes(_)) => return Ok(None),
            Err(protocol::Error::PayloadSizeLimitExceeded(n)) => {
                return Err(CodecError::TooLarge(n))
            }
            Err(e) => return Err(CodecError::Malformed(e)),
        };
        if header.byte1 >> 4 != 1 {
            return Err(CodecError::Malformed(protocol::Error::InvalidPacketType(
                header.byte1 >> 4,
            )));
        }
        // Variable header: protocol name (u16 length + bytes), then the level byte.
        let vh = &buf[header.fixed_header_len..header.frame_length()];
        if vh.len() < 2 {
            return Err(CodecError::Malformed(protocol::Error::MalformedPacket));
        }
        let name_len = usize::from(u16::from_be_bytes([vh[0], vh[1]]));
        let level = *vh
            .get(2 + name_len)
            .ok_or(CodecError::Malformed(protocol::Error::MalformedPacket))?;
        match level {
            4 => Ok(Some(Version::V4)),
            5 => Ok(Some(Version::V5)),
            other => Err(CodecError::UnsupportedLevel(other)),
        }
    }

    pub fn read(&mut self, buf: &mut BytesMut) -> Result<Frame, CodecError> {
        let header = match protocol::v4::check(buf.iter(), self.max_packet) {
            Ok(h) => h,
            Err(protocol::Error::InsufficientBytes(_)) => return Ok(Frame::Incomplete),
            Err(protocol::Error::PayloadSizeLimitExceeded(n)) => {
                return Err(CodecError::TooLarge(n))
            }
            Err(e) => return Err(CodecError::Malformed(e)),
        };
        if !client_may_send(self.version, header.byte1) {
            return Err(CodecError::Malformed(protocol::Error::InvalidPacketType(
                header.byte1 >> 4,
            )));
        }
        let publish = if header.byte1 >> 4 == 3 {
            Some(publish_header(
                &buf[..header.frame_length()],
                header.fixed_header_len,
            )?)
        } else {
            None
        };
        let max = self.max_packet;
        let result = match self.version {
            Version::V4 => catch_unwind(AssertUnwindSafe(|| self.v4.read_mut(buf, max))),
            Version::V5 => catch_unwind(AssertUnwindSafe(|| self.v5.read_mut(buf, max))),
        };
        match result {
            Ok(Ok(packet)) => Ok(Frame::Packet(packet, publish)),
            Ok(Err(protocol::Error::InsufficientBytes(_))) => Ok(Frame::Incomplete),
            Ok(Err(e)) => Err(CodecError::Malformed(e)),
            Err(_) => {
                CAUGHT_PANICS.fetch_add(1, Ordering::Relaxed);
                Err(CodecError::Panicked)
            }
        }
    }

    /// Appends `packet` to `out`, adapted to this connection's protocol version.
    pub fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<(), CodecError> {
        let result = match self.version {
            Version::V4 => {
                let packet = for_v4(packet);
                catch_unwind(AssertUnwindSafe(|| self.v4.write(packet, out)))
            }
            Version::V5 => catch_unwind(AssertUnwindSafe(|| self.v5.write(packet, out))),
        };
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CodecError::Malformed(e)),
            Err(_) => {
                CAUGHT_PANICS.fetch_add(1, Ordering::Relaxed);
                Err(CodecError::Panicked)
            }
        }
    }
}

/// Whether a client may send a packet with this first byte (MQTT 2.1.2/2.1.3): a packet type
/// only servers send, or reserved flags not as the spec fixes them, is malformed. Checked
/// before rumqttd's readers see the packet (they assume a well-formed type).
fn client_may_send(version: Version, byte1: u8) -> bool {
    let flags = byte1 & 0x0F;
    match byte1 >> 4 {
        // CONNECT (a second one is refused by the connection), PUBACK, PUBREC, PUBCOMP,
        // PINGREQ, DISCONNECT.
        1 | 4 | 5 | 7 | 12 | 14 => flags == 0,
        3 => true,
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE.
        6 | 8 | 10 => flags == 0b0010,
        // AUTH exists in 5.0 only.
        15 => version == Version::V5 && flags == 0,
        // 0 is reserved; CONNACK, SUBACK, UNSUBACK, PINGRESP are server → client.
        _ => false,
    }
}

/// QoS and packet id of a complete PUBLISH frame (`frame` = fixed header + rest).
fn publish_header(frame: &[u8], fixed_len: usize) -> Result<PublishHeader, CodecError> {
    let qos = (frame[0] >> 1) & 0b11;
    if qos == 3 {
        return Err(CodecError::Malformed(protocol::Error::InvalidQoS(3)));
    }
    if qos == 0 {
        return Ok(PublishHeader { qos, pkid: 0 });
    }
    let rest = &frame[fixed_len..];
    let malformed = || CodecError::Malformed(protocol::Error::MalformedPacket);
    let topic_len = usize::from(u16::from_be_bytes([
        *rest.first().ok_or_else(malformed)?,
        *rest.get(1).ok_or_else(malformed)?,
    ]));
    let hi = *rest.get(2 + topic_len).ok_or_else(malformed)?;
    let lo = *rest.get(3 + topic_len).ok_or_else(malformed)?;
    let pkid = u16::from_be_bytes([hi, lo]);
    if pkid == 0 {
        return Err(CodecError::Malformed(protocol::Error::PacketIdZero));
    }
    Ok(PublishHeader { qos, pkid })
}

/// 3.1.1 has no properties and fewer reason codes; rumqttd's V4 writer panics on either.
fn for_v4(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(a, _) => Packet::PubAck(a, None),
        Packet::PubRec(a, _) => Packet::PubRec(a, None),
        Packet::PubRel(a, _) => Packet::PubRel(a, None),
        Packet::PubComp(a, _) => Packet::PubComp(a, None),
        Packet::UnsubAck(a, _) => Packet::UnsubAck(a, None),
        Packet::Disconnect(d, _) => Packet::Disconnect(d, None),
        Packet::SubAck(mut s, _) => {
            for code in &mut s.return_codes {
                *code = match *code {
                    SubscribeReasonCode::Success(q) => SubscribeReasonCode::Success(q),
                    SubscribeReasonCode::QoS0 => SubscribeReasonCode::Success(QoS::AtMostOnce),
                    SubscribeReasonCode::QoS1 => SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::QoS2 => SubscribeReasonCode::Success(QoS::ExactlyOnce),
                    _ => SubscribeReasonCode::Failure,
                };
            }
            Packet::SubAck(s, None)
        }
        Packet::ConnAck(mut a, _) => {
            a.code = match a.code {
                c @ (ConnectReturnCode::Success
                | ConnectReturnCode::RefusedProtocolVersion
                | ConnectReturnCode::ClientIdentifierNotValid
                | ConnectReturnCode::ServiceUnavailable
                | ConnectReturnCode::BadUserNamePassword
                | ConnectReturnCode::NotAuthorized) => c,
                ConnectReturnCode::UnsupportedProtocolVersion => {
                    ConnectReturnCode::RefusedProtocolVersion
                }
                ConnectReturnCode::ServerBusy
                | ConnectReturnCode::ServerUnavailable
                | ConnectReturnCode::QuotaExceeded
                | ConnectReturnCode::ConnectionRateExceeded => {
                    ConnectReturnCode::ServiceUnavailable
                }
                _ => ConnectReturnCode::NotAuthorized,
            };
            Packet::ConnAck(a, None)
        }
        other => other,
    }
}

/// Builds a PUBLISH with a QoS and packet id (rumqttd keeps those fields crate-private, but
/// `Publish::deserialize` takes its own wire layout).
pub fn publish(topic: &[u8], payload: &[u8], qos: u8, pkid: u16, retain: bool) -> Publish {
    let mut b = BytesMut::with_capacity(5 + topic.len() + payload.len());
    b.put_u8(0b0011_0000 | u8::from(retain) | ((qos & 0b11) << 1));
    b.put_u16(pkid);
    // Topics longer than u16::MAX never reach here: they come from validated config/ACL'd
    // client topics, which the codec bounded to u16 lengths.
    b.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    b.extend_from_slice(topic);
    b.extend_from_slice(payload);
    Publish::deserialize(b.freeze())
}

/// The same publish with another QoS/packet id (payload is shared, not copied twice).
pub fn with_qos(p: &Publish, qos: u8, pkid: u16) -> Publish {
    publish(&p.topic, &p.payload, qos, pkid, p.retain)
}

/// Properties a 5.0 request asked the answer to carry.
#[derive(Clone, Debug, Default)]
pub struct ReplyProps {
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
}

impl ReplyProps {
    pub fn from_props(props: Option<&PublishProperties>) -> ReplyProps {
        ReplyProps {
            response_topic: props.and_then(|p| p.response_topic.clone()),
            correlation_data: props.and_then(|p| p.correlation_data.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_only_packets_and_bad_flags_are_malformed() {
        for (bytes, ok) in [
            (&[0xC0u8, 0][..], true),         // PINGREQ
            (&[0xD0, 0][..], false),          // PINGRESP
            (&[0x20, 2, 0, 0][..], false),    // CONNACK
            (&[0x90, 3, 0, 1, 0][..], false), // SUBACK
            (&[0x60, 2, 0, 1][..], false),    // PUBREL without its fixed flags
            (&[0x62, 2, 0, 1][..], true),
            (&[0xC1, 0][..], false), // PINGREQ with a flag
            (&[0x00, 0][..], false),
        ] {
            let mut c = Codec::new(Version::V4, 1024);
            let mut buf = BytesMut::from(bytes);
            let r = c.read(&mut buf);
            assert_eq!(r.is_ok(), ok, "{bytes:x?}");
        }
        let mut c = Codec::new(Version::V4, 1024);
        assert!(c.read(&mut BytesMut::from(&[0xF0u8, 0][..])).is_err());
    }

    fn connect_bytes(level: u8) -> Vec<u8> {
        // CONNECT, protocol "MQTT", level, flags clean, keepalive 10, client id "c"
        let mut v = vec![0x10, 0];
        let body = [&[0, 4][..], b"MQTT", &[level, 0x02, 0, 10]].concat();
        let mut body = body;
        if level == 5 {
            body.push(0); // properties length
        }
        body.extend_from_slice(&[0, 1, b'c']);
        v[1] = body.len() as u8;
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn detects_protocol_level() {
        assert_eq!(
            Codec::detect(&connect_bytes(4), 1024).ok().flatten(),
            Some(Version::V4)
        );
        assert_eq!(
            Codec::detect(&connect_bytes(5), 1024).ok().flatten(),
            Some(Version::V5)
        );
        assert!(matches!(
            Codec::detect(&connect_bytes(4)[..5], 1024),
            Ok(None)
        ));
        assert!(matches!(
            Codec::detect(&connect_bytes(9), 1024),
            Err(CodecError::UnsupportedLevel(9))
        ));
        assert!(Codec::detect(&[0x30, 2, 0, 0], 1024).is_err());
    }

    #[test]
    fn publish_header_and_builder_agree() {
        let p = publish(b"a/b", b"hello", 1, 4242, false);
        let mut out = BytesMut::new();
        let codec = Codec::new(Version::V4, 1024);
        codec
            .write(Packet::Publish(p, None), &mut out)
            .expect("write");
        let mut c = Codec::new(Version::V4, 1024);
        match c.read(&mut out) {
            Ok(Frame::Packet(Packet::Publish(p, _), Some(h))) => {
                assert_eq!(h, PublishHeader { qos: 1, pkid: 4242 });
                assert_eq!(&p.payload[..], b"hello");
            }
            _ => panic!("expected a publish"),
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for version in [Version::V4, Version::V5] {
            for _ in 0..20_000 {
                let len = rng.random_range(0..64);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if let Some(first) = bytes.first_mut() {
                    // bias toward valid packet types and small lengths
                    *first = (*first & 0xF0) | (*first & 0x0F);
                }
                if bytes.len() > 1 {
                    bytes[1] = (bytes.len() - 2).min(127) as u8;
                }
                let mut buf = BytesMut::from(&bytes[..]);
                let mut c = Codec::new(version, 1024);
                for _ in 0..4 {
                    match c.read(&mut buf) {
                        Ok(Frame::Packet(..)) => continue,
                        _ => break,
                    }
                }
            }
        }
    }
}
