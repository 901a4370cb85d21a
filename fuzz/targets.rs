//! The fuzz targets' bodies, shared by the libFuzzer binaries in `fuzz_targets/` and by the
//! corpus replay in `tests/fuzz_corpus.rs`. Each panics on a finding: a codec panic, caught
//! or not, counts as one.

use bytes::BytesMut;
use chatmq::acl::{Access, Acl, AclRule, Permission, PublishRoute, Who};
use chatmq::broker::codec::{Codec, CodecError, Frame, Version};
use chatmq::protocol::{decode_receipt, decode_rpc, decode_send, decode_typing, Limits};
use chatmq::topic;
use rumqttd::protocol::Packet;

fn acl() -> Acl {
    let rule = |t: &str| AclRule {
        topic: t.to_owned(),
        access: Access::ReadWrite,
        permission: Permission::Allow,
        users: None,
    };
    Acl::new(vec![rule("iot/%u/#"), rule("public/#"), rule("+/x/#")])
}

const WHO: Who<'static> = Who {
    user: Some("alice"),
    client_id: "phone",
};

/// Bytes a connected client sends after CONNECT (the first byte picks 3.1.1 or 5.0): every
/// packet is read by our codec, its topics go through validation and the ACL, and it is
/// written back through the codec of the same version.
pub fn packets(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let version = if first & 1 == 0 {
        Version::V4
    } else {
        Version::V5
    };
    let mut codec = Codec::new(version, 64 * 1024);
    let mut buf = BytesMut::from(rest);
    let acl = acl();
    loop {
        match codec.read(&mut buf) {
            Ok(Frame::Incomplete) => return,
            Ok(Frame::Packet(packet, _)) => {
                match &packet {
                    Packet::Publish(p, _) => {
                        let t = std::str::from_utf8(&p.topic).unwrap_or("");
                        let _ = acl.publish(&WHO, t);
                    }
                    Packet::Subscribe(s, _) => {
                        for f in &s.filters {
                            let _ = acl.subscribe(&WHO, &f.path);
                        }
                    }
                    _ => {}
                }
                let mut out = BytesMut::new();
                if let Err(CodecError::Panicked) = codec.write(packet, &mut out) {
                    panic!("codec write panicked");
                }
            }
            Err(CodecError::Panicked) => panic!("codec read panicked on client input"),
            Err(_) => return,
        }
    }
}

/// Any string as a topic name and as a filter, matched against each other and through the
/// ACL: no panic, and a name the ACL routes to the engine is one the engine can take.
pub fn topics(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let (a, b) = s.split_at(
        s.char_indices()
            .nth(s.chars().count() / 2)
            .map_or(0, |(i, _)| i),
    );
    let _ = topic::valid_name(a);
    let _ = topic::valid_filter(a);
    let _ = topic::matches(a, b);
    let _ = topic::matches(b, a);
    let acl = acl();
    if acl.publish(&WHO, &s) == PublishRoute::General {
        assert!(
            topic::engine_safe(&s) && topic::valid_name(&s).is_ok(),
            "{s:?}"
        );
    }
    let _ = acl.subscribe(&WHO, &s);
}

/// Any bytes as each kind of chat payload (MessagePack or JSON).
pub fn payloads(data: &[u8]) {
    let limits = Limits {
        max_payload: 65_536,
        max_text: 16_384,
        max_cid: 64,
    };
    let _ = decode_send(data, &limits);
    let _ = decode_receipt(data, &limits);
    let _ = decode_typing(data, &limits);
    let _ = decode_rpc(data, &limits);
}
