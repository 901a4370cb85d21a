//! `out/rpc`: the request, its ops (SPEC §5), decoding and validation, and the rpc error.

use serde::{Deserialize, Deserializer};

use super::codec::{decode, probe, short, Rid};
use super::error::ChatError;
use super::ids::{valid_id, ConvId};
use super::requests::{
    check_http_url, check_label, check_text_field, malformed, oversized, Limits,
    DEFAULT_PAGE_LIMIT, MAX_AVATAR_URL, MAX_DISPLAY_NAME, MAX_GROUP_NAME, MAX_PAGE_LIMIT,
    MAX_STATUS, MAX_USERS_PER_CALL,
};

/// Which page of `history`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryAnchor {
    /// The newest `limit` messages with `seq < before` (`None`: the newest page).
    Before(Option<u64>),
    /// The oldest `limit` messages with `seq > after`.
    After(u64),
}

/// `profile.set`: `None` leaves a field as it is; `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileChange {
    pub display_name: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub status: Option<Option<String>>,
    pub hide_last_seen: Option<bool>,
}

/// `out/rpc`, decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcRequest {
    pub rid: Rid,
    pub op: RpcOp,
}

/// The operations of SPEC §5. User lists are deduplicated (first occurrence kept) and hold
/// 1 to [`MAX_USERS_PER_CALL`] valid ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcOp {
    /// `limit` 1..=100 (default 50); `before`: only conversations with last activity earlier
    /// than this ts (ms).
    Conversations {
        limit: u32,
        before: Option<i64>,
    },
    /// `limit` 1..=100 (default 50). No anchor = the newest page.
    History {
        conv: ConvId,
        dir: HistoryAnchor,
        limit: u32,
    },
    /// `members` may be empty; it never contains duplicates but may contain the creator.
    GroupCreate {
        name: String,
        members: Vec<String>,
    },
    GroupAdd {
        gid: String,
        users: Vec<String>,
    },
    GroupRemove {
        gid: String,
        users: Vec<String>,
    },
    GroupLeave {
        gid: String,
    },
    GroupInfo {
        gid: String,
    },
    GroupList,
    ProfileSet(ProfileChange),
    ProfileGet {
        users: Vec<String>,
    },
    PresenceGet {
        users: Vec<String>,
    },
}

impl RpcOp {
    /// The `op` string on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            RpcOp::Conversations { .. } => "conversations",
            RpcOp::History { .. } => "history",
            RpcOp::GroupCreate { .. } => "group.create",
            RpcOp::GroupAdd { .. } => "group.add",
            RpcOp::GroupRemove { .. } => "group.remove",
            RpcOp::GroupLeave { .. } => "group.leave",
            RpcOp::GroupInfo { .. } => "group.info",
            RpcOp::GroupList => "group.list",
            RpcOp::ProfileSet(_) => "profile.set",
            RpcOp::ProfileGet { .. } => "profile.get",
            RpcOp::PresenceGet { .. } => "presence.get",
        }
    }
}

/// An rpc that could not be decoded, with the `rid` when one could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct RpcError {
    pub rid: Option<Rid>,
    pub error: ChatError,
}

fn probe_rid(payload: &[u8], limits: &Limits) -> Option<Rid> {
    probe(payload, "rid").filter(|rid| check_rid(rid, limits).is_ok())
}

/// Decodes and validates `out/rpc`.
pub fn decode_rpc(payload: &[u8], limits: &Limits) -> Result<RpcRequest, RpcError> {
    let fail = |error| RpcError {
        rid: probe_rid(payload, limits),
        error,
    };
    if let Some(error) = oversized(payload, limits) {
        return Err(fail(error));
    }
    let wire: RpcWire = decode(payload).map_err(|e| fail(malformed(e)))?;
    let Some(rid) = wire.rid.clone() else {
        return Err(fail(ChatError::bad_request("missing field `rid`")));
    };
    check_rid(&rid, limits).map_err(fail)?;
    let op = wire.into_op().map_err(|error| RpcError {
        rid: Some(rid.clone()),
        error,
    })?;
    Ok(RpcRequest { rid, op })
}

fn check_rid(rid: &Rid, limits: &Limits) -> Result<(), ChatError> {
    match rid {
        Rid::Str(s) => check_label("rid", s, limits.max_cid),
        Rid::U64(_) | Rid::I64(_) => Ok(()),
    }
}

/// `{rid, op, ...args}` as it arrives: every argument of every op, all optional, so that a
/// missing or misplaced argument can be reported by name for the op at hand.
#[derive(Deserialize)]
struct RpcWire {
    rid: Option<Rid>,
    op: Option<String>,
    limit: Option<u32>,
    before: Option<u64>,
    after: Option<u64>,
    conv: Option<String>,
    name: Option<String>,
    members: Option<Vec<String>>,
    gid: Option<String>,
    users: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    status: Option<Option<String>>,
    hide_last_seen: Option<bool>,
}

/// Tells an absent field (`None`, via `default`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn required<T>(op: &str, field: &str, v: Option<T>) -> Result<T, ChatError> {
    v.ok_or_else(|| ChatError::bad_request(format!("{op}: missing `{field}`")))
}

fn check_gid(op: &str, gid: &str) -> Result<(), ChatError> {
    if valid_id(gid) {
        Ok(())
    } else {
        Err(ChatError::bad_request(format!(
            "{op}: gid \"{}\" is not 1-64 characters [A-Za-z0-9_.-]",
            short(gid)
        )))
    }
}

/// Validates and deduplicates a user list, keeping the first occurrence of each id.
fn check_users(
    op: &str,
    field: &str,
    users: Vec<String>,
    allow_empty: bool,
) -> Result<Vec<String>, ChatError> {
    if users.is_empty() && !allow_empty {
        return Err(ChatError::bad_request(format!(
            "{op}: `{field}` must not be empty"
        )));
    }
    if users.len() > MAX_USERS_PER_CALL {
        return Err(ChatError::too_large(format!(
            "{op}: `{field}` has {} users; the limit is {MAX_USERS_PER_CALL} per request",
            users.len()
        )));
    }
    if let Some(bad) = users.iter().find(|u| !valid_id(u)) {
        return Err(ChatError::bad_request(format!(
            "{op}: `{field}` contains \"{}\", which is not a user id (1-64 characters [A-Za-z0-9_.-])",
            short(bad)
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    Ok(users
        .into_iter()
        .filter(|u| seen.insert(u.clone()))
        .collect())
}

fn page_limit(op: &str, limit: Option<u32>) -> Result<u32, ChatError> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(l @ 1..=MAX_PAGE_LIMIT) => Ok(l),
        Some(l) => Err(ChatError::bad_request(format!(
            "{op}: limit {l} is out of range 1..={MAX_PAGE_LIMIT}"
        ))),
    }
}

/// A profile string: `null` or `""` clears it.
fn profile_field(
    v: Option<Option<String>>,
    check: impl Fn(&str) -> Result<(), ChatError>,
) -> Result<Option<Option<String>>, ChatError> {
    match v {
        Some(Some(s)) if s.is_empty() => Ok(Some(None)),
        Some(Some(s)) => {
            check(&s).map_err(|e| ChatError::new(e.code, format!("profile.set: {}", e.message)))?;
            Ok(Some(Some(s)))
        }
        other => Ok(other),
    }
}

impl RpcWire {
    /// `history`: a conversation and one anchor, before or after.
    fn history_op(self) -> Result<RpcOp, ChatError> {
        const NAME: &str = "history";
        let conv = required(NAME, "conv", self.conv)?;
        let conv = ConvId::parse(&conv).ok_or_else(|| {
            ChatError::bad_request(format!(
                "history: conv \"{}\" is not a conversation id",
                short(&conv)
            ))
        })?;
        let dir = match (self.before, self.after) {
            (Some(_), Some(_)) => {
                return Err(ChatError::bad_request(
                    "history: give `before` or `after`, not both",
                ))
            }
            (None, Some(after)) => HistoryAnchor::After(after),
            (before, None) => HistoryAnchor::Before(before),
        };
        Ok(RpcOp::History {
            conv,
            dir,
            limit: page_limit(NAME, self.limit)?,
        })
    }

    /// `group.create`: a non-empty name and the first members.
    fn group_create_op(self) -> Result<RpcOp, ChatError> {
        const NAME: &str = "group.create";
        let group_name = required(NAME, "name", self.name)?;
        if group_name.trim().is_empty() {
            return Err(ChatError::bad_request(
                "group.create: `name` must not be empty",
            ));
        }
        check_text_field("group.create: name", &group_name, MAX_GROUP_NAME, false)?;
        Ok(RpcOp::GroupCreate {
            name: group_name,
            members: check_users(NAME, "members", self.members.unwrap_or_default(), true)?,
        })
    }

    /// `profile.set`: at least one field; an empty string clears it.
    fn profile_set_op(self) -> Result<RpcOp, ChatError> {
        let update = ProfileChange {
            display_name: profile_field(self.display_name, |s| {
                check_text_field("display_name", s, MAX_DISPLAY_NAME, false)
            })?,
            avatar_url: profile_field(self.avatar_url, |s| {
                check_http_url("avatar_url", s, MAX_AVATAR_URL)
            })?,
            status: profile_field(self.status, |s| {
                check_text_field("status", s, MAX_STATUS, false)
            })?,
            hide_last_seen: self.hide_last_seen,
        };
        if update == ProfileChange::default() {
            return Err(ChatError::bad_request(
                "profile.set: give at least one of display_name, avatar_url, status, hide_last_seen",
            ));
        }
        Ok(RpcOp::ProfileSet(update))
    }

    fn into_op(mut self) -> Result<RpcOp, ChatError> {
        let op = required("rpc", "op", self.op.take())?;
        let name = op.as_str();
        Ok(match name {
            "conversations" => RpcOp::Conversations {
                limit: page_limit(name, self.limit)?,
                before: match self.before {
                    None => None,
                    Some(b) => Some(i64::try_from(b).map_err(|_| {
                        ChatError::bad_request("conversations: `before` is a timestamp in ms")
                    })?),
                },
            },
            "history" => self.history_op()?,
            "group.create" => self.group_create_op()?,
            "group.add" | "group.remove" => {
                let gid = required(name, "gid", self.gid)?;
                check_gid(name, &gid)?;
                let users =
                    check_users(name, "users", required(name, "users", self.users)?, false)?;
                if name == "group.add" {
                    RpcOp::GroupAdd { gid, users }
                } else {
                    RpcOp::GroupRemove { gid, users }
                }
            }
            "group.leave" | "group.info" => {
                let gid = required(name, "gid", self.gid)?;
                check_gid(name, &gid)?;
                if name == "group.leave" {
                    RpcOp::GroupLeave { gid }
                } else {
                    RpcOp::GroupInfo { gid }
                }
            }
            "group.list" => RpcOp::GroupList,
            "profile.set" => self.profile_set_op()?,
            "profile.get" | "presence.get" => {
                let users =
                    check_users(name, "users", required(name, "users", self.users)?, false)?;
                if name == "profile.get" {
                    RpcOp::ProfileGet { users }
                } else {
                    RpcOp::PresenceGet { users }
                }
            }
            other => {
                return Err(ChatError::bad_request(format!(
                    "unknown op \"{}\"; expected one of conversations, history, group.create, \
                     group.add, group.remove, group.leave, group.info, group.list, profile.set, \
                     profile.get, presence.get",
                    short(other)
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{encode, Encoding};
    use super::super::error::ErrorCode;
    use super::*;
    use serde::Serialize;

    fn limits() -> Limits {
        Limits::default()
    }

    fn rpc(json: &str) -> Result<RpcRequest, RpcError> {
        decode_rpc(json.as_bytes(), &limits())
    }

    #[test]
    fn rpc_ops_decode() {
        let users = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: Vec<(&str, RpcOp)> = vec![
            (
                r#"{"rid":1,"op":"conversations"}"#,
                RpcOp::Conversations {
                    limit: 50,
                    before: None,
                },
            ),
            (
                r#"{"rid":1,"op":"conversations","limit":10,"before":1700000000000}"#,
                RpcOp::Conversations {
                    limit: 10,
                    before: Some(1_700_000_000_000),
                },
            ),
            (
                r#"{"rid":1,"op":"history","conv":"g:t"}"#,
                RpcOp::History {
                    conv: ConvId::group("t"),
                    dir: HistoryAnchor::Before(None),
                    limit: 50,
                },
            ),
            (
                r#"{"rid":1,"op":"history","conv":"g:t","before":40,"limit":100}"#,
                RpcOp::History {
                    conv: ConvId::group("t"),
                    dir: HistoryAnchor::Before(Some(40)),
                    limit: 100,
                },
            ),
            (
                r#"{"rid":1,"op":"history","conv":"d:a:b","after":0,"limit":1}"#,
                RpcOp::History {
                    conv: ConvId::direct("a", "b"),
                    dir: HistoryAnchor::After(0),
                    limit: 1,
                },
            ),
            (
                r#"{"rid":1,"op":"group.create","name":"Team"}"#,
                RpcOp::GroupCreate {
                    name: "Team".into(),
                    members: vec![],
                },
            ),
            (
                r#"{"rid":1,"op":"group.create","name":"Team","members":["b","c","b"]}"#,
                RpcOp::GroupCreate {
                    name: "Team".into(),
                    members: users(&["b", "c"]),
                },
            ),
            (
                r#"{"rid":1,"op":"group.add","gid":"t","users":["x"]}"#,
                RpcOp::GroupAdd {
                    gid: "t".into(),
                    users: users(&["x"]),
                },
            ),
            (
                r#"{"rid":1,"op":"group.remove","gid":"t","users":["x"]}"#,
                RpcOp::GroupRemove {
                    gid: "t".into(),
                    users: users(&["x"]),
                },
            ),
            (
                r#"{"rid":1,"op":"group.leave","gid":"t"}"#,
                RpcOp::GroupLeave { gid: "t".into() },
            ),
            (
                r#"{"rid":1,"op":"group.info","gid":"t"}"#,
                RpcOp::GroupInfo { gid: "t".into() },
            ),
            (r#"{"rid":1,"op":"group.list"}"#, RpcOp::GroupList),
            (
                r#"{"rid":1,"op":"profile.set","display_name":"Bob","status":null,"avatar_url":""}"#,
                RpcOp::ProfileSet(ProfileChange {
                    display_name: Some(Some("Bob".into())),
                    avatar_url: Some(None),
                    status: Some(None),
                    hide_last_seen: None,
                }),
            ),
            (
                r#"{"rid":1,"op":"profile.set","hide_last_seen":true}"#,
                RpcOp::ProfileSet(ProfileChange {
                    hide_last_seen: Some(true),
                    ..Default::default()
                }),
            ),
            (
                r#"{"rid":1,"op":"profile.get","users":["a","b"]}"#,
                RpcOp::ProfileGet {
                    users: users(&["a", "b"]),
                },
            ),
            (
                r#"{"rid":1,"op":"presence.get","users":["a"]}"#,
                RpcOp::PresenceGet {
                    users: users(&["a"]),
                },
            ),
        ];
        for (payload, op) in cases {
            let req = rpc(payload).unwrap_or_else(|e| panic!("{payload}: {e}"));
            assert_eq!(req.op, op, "{payload}");
            assert_eq!(req.rid, Rid::U64(1));
            assert!(payload.contains(&format!("\"{}\"", req.op.name())));
        }
    }

    #[test]
    fn rpc_in_msgpack_and_rid_forms() {
        #[derive(Serialize)]
        struct Req<'a> {
            rid: &'a str,
            op: &'a str,
            gid: &'a str,
        }
        let bytes = encode(
            Encoding::MsgPack,
            &Req {
                rid: "r-1",
                op: "group.info",
                gid: "t",
            },
        );
        let req = decode_rpc(&bytes, &limits()).unwrap();
        assert_eq!(req.rid, Rid::Str("r-1".into()));
        assert_eq!(req.op, RpcOp::GroupInfo { gid: "t".into() });
        assert_eq!(
            rpc(r#"{"rid":-5,"op":"group.list"}"#).unwrap().rid,
            Rid::I64(-5)
        );
    }

    #[test]
    fn rpc_failures() {
        let many = format!(
            "[{}]",
            (0..=MAX_USERS_PER_CALL)
                .map(|i| format!("\"u{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let cases: Vec<(String, Option<Rid>, ErrorCode, &str)> = vec![
            (
                r#"{"op":"group.list"}"#.into(),
                None,
                ErrorCode::BadRequest,
                "missing field `rid`",
            ),
            (
                r#"{"rid":1.5,"op":"group.list"}"#.into(),
                None,
                ErrorCode::BadRequest,
                "rid: invalid type",
            ),
            (
                r#"{"rid":""}"#.into(),
                None,
                ErrorCode::BadRequest,
                "rid: must not be empty",
            ),
            (
                r#"{"rid":"r"}"#.into(),
                Some(Rid::Str("r".into())),
                ErrorCode::BadRequest,
                "rpc: missing `op`",
            ),
            (
                r#"{"rid":"r","op":"nuke"}"#.into(),
                Some(Rid::Str("r".into())),
                ErrorCode::BadRequest,
                "unknown op \"nuke\"",
            ),
            (
                r#"{"rid":2,"op":"history"}"#.into(),
                Some(Rid::U64(2)),
                ErrorCode::BadRequest,
                "history: missing `conv`",
            ),
            (
                r#"{"rid":2,"op":"history","conv":"x"}"#.into(),
                Some(Rid::U64(2)),
                ErrorCode::BadRequest,
                "history: conv \"x\" is not",
            ),
            (
                r#"{"rid":2,"op":"history","conv":"g:t","before":3,"after":1}"#.into(),
                Some(Rid::U64(2)),
                ErrorCode::BadRequest,
                "not both",
            ),
            (
                r#"{"rid":2,"op":"history","conv":"g:t","limit":101}"#.into(),
                Some(Rid::U64(2)),
                ErrorCode::BadRequest,
                "limit 101 is out of range 1..=100",
            ),
            (
                r#"{"rid":2,"op":"history","conv":"g:t","limit":0}"#.into(),
                Some(Rid::U64(2)),
                ErrorCode::BadRequest,
                "limit 0",
            ),
            (
                r#"{"rid":2,"op":"history","conv":"g:t","limit":"5"}"#.into(),
                Some(Rid::U64(2)),
                ErrorCode::BadRequest,
                "limit: invalid type",
            ),
            (
                r#"{"rid":2,"op":"conversations","before":18446744073709551615}"#.into(),
                Some(Rid::U64(2)),
                ErrorCode::BadRequest,
                "`before` is a timestamp",
            ),
            (
                r#"{"rid":3,"op":"group.create"}"#.into(),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "group.create: missing `name`",
            ),
            (
                r#"{"rid":3,"op":"group.create","name":" "}"#.into(),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "`name` must not be empty",
            ),
            (
                format!(
                    r#"{{"rid":3,"op":"group.create","name":"{}"}}"#,
                    "n".repeat(101)
                ),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "name: 101 characters; the limit is 100",
            ),
            (
                r#"{"rid":3,"op":"group.create","name":"x","members":["ok","no way"]}"#.into(),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "contains \"no way\"",
            ),
            (
                format!(r#"{{"rid":3,"op":"group.add","gid":"t","users":{many}}}"#),
                Some(Rid::U64(3)),
                ErrorCode::TooLarge,
                "has 1001 users; the limit is 1000",
            ),
            (
                r#"{"rid":3,"op":"group.add","gid":"t"}"#.into(),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "group.add: missing `users`",
            ),
            (
                r#"{"rid":3,"op":"group.add","gid":"t","users":[]}"#.into(),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "`users` must not be empty",
            ),
            (
                r#"{"rid":3,"op":"group.add","gid":"t","users":"bob"}"#.into(),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "users: invalid type",
            ),
            (
                r#"{"rid":3,"op":"group.remove","gid":"a/b","users":["x"]}"#.into(),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "gid \"a/b\"",
            ),
            (
                r#"{"rid":3,"op":"group.leave"}"#.into(),
                Some(Rid::U64(3)),
                ErrorCode::BadRequest,
                "group.leave: missing `gid`",
            ),
            (
                r#"{"rid":4,"op":"profile.set"}"#.into(),
                Some(Rid::U64(4)),
                ErrorCode::BadRequest,
                "give at least one",
            ),
            (
                r#"{"rid":4,"op":"profile.set","avatar_url":"javascript:x"}"#.into(),
                Some(Rid::U64(4)),
                ErrorCode::BadRequest,
                "avatar_url: must be an http",
            ),
            (
                format!(
                    r#"{{"rid":4,"op":"profile.set","status":"{}"}}"#,
                    "s".repeat(141)
                ),
                Some(Rid::U64(4)),
                ErrorCode::BadRequest,
                "status: 141 characters",
            ),
            (
                r#"{"rid":4,"op":"profile.set","display_name":"a\u0000b"}"#.into(),
                Some(Rid::U64(4)),
                ErrorCode::BadRequest,
                "display_name: must not contain control",
            ),
            (
                r#"{"rid":4,"op":"profile.set","hide_last_seen":"yes"}"#.into(),
                Some(Rid::U64(4)),
                ErrorCode::BadRequest,
                "hide_last_seen: invalid type",
            ),
            (
                r#"{"rid":5,"op":"presence.get","users":["a"],"#.into(),
                Some(Rid::U64(5)),
                ErrorCode::BadRequest,
                "EOF",
            ),
        ];
        for (payload, rid, code, needle) in cases {
            let err = rpc(&payload).unwrap_err();
            assert_eq!(err.rid, rid, "{payload}");
            assert_eq!(err.error.code, code, "{payload}: {}", err.error);
            assert!(
                err.error.message.contains(needle),
                "{payload}: {}",
                err.error
            );
        }
    }
}
