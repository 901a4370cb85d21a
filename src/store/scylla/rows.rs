//! Row ↔ domain conversions, pure.
//!
//! CQL has no unsigned integers: seqs and cursors are stored as `bigint` and must fit in i63
//! (they are counters, so they do); message ids are bit-cast, which is lossless, and keeps
//! their order as long as they are below 2^63 — always true for Snowflake ids, whose top bit
//! is zero.

use crate::store::{
    ConvId, ConversationSummary, Cursors, GroupInfo, Profile, StoreError, StoreErrorKind,
    StoreResult, StoredMessage,
};

/// `SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages`.
pub type MessageRow = (String, i64, i64, String, i64, String, Vec<u8>, Option<i64>);

/// Values of `INSERT_MESSAGE`, borrowed from the message.
pub type MessageValues<'a> = (
    &'a str,
    i64,
    i64,
    i64,
    &'a str,
    i64,
    &'a str,
    &'a [u8],
    Option<i64>,
);

/// `SELECT gid, name, created_by, created_ts, admins FROM groups`.
pub type GroupRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<Vec<String>>,
);

/// `SELECT display_name, avatar_url, status, hide_last_seen FROM profiles`.
pub type ProfileRow = (Option<String>, Option<String>, Option<String>, Option<bool>);

pub fn id_to_db(id: u64) -> i64 {
    id as i64
}

pub fn id_from_db(id: i64) -> u64 {
    id as u64
}

/// Seqs, cursors and counts going in.
pub fn counter_to_db(n: u64) -> StoreResult<i64> {
    i64::try_from(n).map_err(|_| {
        StoreError::new(
            StoreErrorKind::Internal,
            format!("{n} does not fit in a CQL bigint"),
        )
    })
}

/// Seqs, cursors and counts coming out: a negative value is corruption, not data.
pub fn counter_from_db(n: i64) -> StoreResult<u64> {
    u64::try_from(n).map_err(|_| {
        StoreError::new(
            StoreErrorKind::Internal,
            format!("negative counter {n} in the database"),
        )
    })
}

pub fn message_values(m: &StoredMessage, bucket: u64) -> StoreResult<MessageValues<'_>> {
    Ok((
        m.conv.as_str(),
        counter_to_db(bucket)?,
        counter_to_db(m.seq)?,
        id_to_db(m.id),
        &m.from,
        m.ts,
        &m.cid,
        &m.body,
        m.reply_to.map(id_to_db),
    ))
}

pub fn message_from_row(row: MessageRow) -> StoreResult<StoredMessage> {
    let (conv, seq, id, from, ts, cid, body, reply_to) = row;
    Ok(StoredMessage {
        id: id_from_db(id),
        conv: ConvId(conv),
        seq: counter_from_db(seq)?,
        from,
        ts,
        cid,
        body,
        reply_to: reply_to.map(id_from_db),
    })
}

/// `SELECT delivered_up_to, read_up_to FROM cursors`; absent cells are zero.
pub fn cursors_from_row(row: Option<(Option<i64>, Option<i64>)>) -> StoreResult<Cursors> {
    let (d, r) = row.unwrap_or((None, None));
    Ok(Cursors {
        delivered_up_to: counter_from_db(d.unwrap_or(0))?,
        read_up_to: counter_from_db(r.unwrap_or(0))?,
    })
}

pub fn group_from_row(row: GroupRow, member_count: u64) -> GroupInfo {
    let (gid, name, created_by, created_ts, admins) = row;
    let mut admins = admins.unwrap_or_default();
    admins.sort();
    GroupInfo {
        gid,
        name: name.unwrap_or_default(),
        created_by: created_by.unwrap_or_default(),
        created_ts: created_ts.unwrap_or(0),
        admins,
        member_count,
    }
}

pub fn profile_from_row(user: &str, row: Option<ProfileRow>, last_seen: Option<i64>) -> Profile {
    let (display_name, avatar_url, status, hide) = row.unwrap_or((None, None, None, None));
    Profile {
        user: user.to_owned(),
        display_name,
        avatar_url,
        status,
        hide_last_seen: hide.unwrap_or(false),
        last_seen,
    }
}

/// A conversation a user takes part in, before its last message and cursors are fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub conv: ConvId,
    pub last_ts: i64,
    pub last_seq: u64,
    pub name: Option<String>,
}

/// Most recent activity first (ties by conversation id, for a stable order), only those
/// older than `before`, at most `limit`.
pub fn rank_conversations(
    mut all: Vec<Candidate>,
    before: Option<i64>,
    limit: u32,
) -> Vec<Candidate> {
    if let Some(b) = before {
        all.retain(|c| c.last_ts < b);
    }
    all.sort_by(|x, y| y.last_ts.cmp(&x.last_ts).then_with(|| x.conv.cmp(&y.conv)));
    all.truncate(limit as usize);
    all
}

pub fn summary(
    c: Candidate,
    last_message: Option<StoredMessage>,
    cursors: Cursors,
) -> ConversationSummary {
    ConversationSummary {
        conv: c.conv,
        last_ts: c.last_ts,
        last_seq: c.last_seq,
        last_message,
        cursors,
        name: c.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredMessage {
        StoredMessage {
            id: 7_000_000_000_123,
            conv: ConvId::direct("alice", "bob"),
            seq: 1234,
            from: "alice".into(),
            ts: 1_700_000_000_000,
            cid: "c-1".into(),
            body: vec![0x81, 0xa1, b't', 0xa1, b'x'],
            reply_to: Some(42),
        }
    }

    #[test]
    fn message_round_trips_through_a_row() {
        let m = sample();
        let v = message_values(&m, 1).expect("values");
        assert_eq!(v.0, "d:alice:bob");
        assert_eq!(v.1, 1);
        assert_eq!(v.2, 1234);
        let row: MessageRow = (
            v.0.to_owned(),
            v.2,
            v.3,
            v.4.to_owned(),
            v.5,
            v.6.to_owned(),
            v.7.to_vec(),
            v.8,
        );
        assert_eq!(message_from_row(row).expect("row"), m);
        let no_reply = StoredMessage {
            reply_to: None,
            ..sample()
        };
        assert_eq!(message_values(&no_reply, 1).expect("values").8, None);
    }

    #[test]
    fn ids_bit_cast_losslessly() {
        for id in [0, 1, u64::from(u32::MAX), i64::MAX as u64, u64::MAX] {
            assert_eq!(id_from_db(id_to_db(id)), id);
        }
        // Below 2^63, order is preserved (clustering by id in `pending`).
        assert!(id_to_db(5) < id_to_db(i64::MAX as u64));
    }

    #[test]
    fn counters_refuse_what_bigint_cannot_hold() {
        assert_eq!(counter_to_db(5).expect("fits"), 5);
        assert_eq!(
            counter_to_db(u64::MAX).expect_err("too big").kind,
            StoreErrorKind::Internal
        );
        assert_eq!(
            counter_from_db(-1).expect_err("negative").kind,
            StoreErrorKind::Internal
        );
        let mut row: MessageRow = ("g:x".into(), -3, 1, "a".into(), 0, "c".into(), vec![], None);
        assert!(message_from_row(row.clone()).is_err());
        row.1 = 3;
        assert!(message_from_row(row).is_ok());
    }

    #[test]
    fn cursors_default_to_zero() {
        assert_eq!(cursors_from_row(None).expect("ok"), Cursors::default());
        assert_eq!(
            cursors_from_row(Some((Some(5), None))).expect("ok"),
            Cursors {
                delivered_up_to: 5,
                read_up_to: 0
            }
        );
    }

    #[test]
    fn group_and_profile_rows() {
        let g = group_from_row(
            (
                "team".into(),
                Some("Team".into()),
                Some("alice".into()),
                Some(10),
                Some(vec!["zed".into(), "alice".into()]),
            ),
            3,
        );
        assert_eq!(g.admins, vec!["alice".to_owned(), "zed".to_owned()]);
        assert_eq!(g.member_count, 3);
        assert_eq!(g.name, "Team");

        let p = profile_from_row("bob", None, None);
        assert_eq!(
            p,
            Profile {
                user: "bob".into(),
                ..Profile::default()
            }
        );
        let p = profile_from_row(
            "bob",
            Some((Some("Bob".into()), None, Some("hi".into()), Some(true))),
            Some(99),
        );
        assert_eq!(p.display_name.as_deref(), Some("Bob"));
        assert!(p.hide_last_seen);
        assert_eq!(p.last_seen, Some(99));
    }

    fn cand(conv: &str, ts: i64) -> Candidate {
        Candidate {
            conv: ConvId(conv.into()),
            last_ts: ts,
            last_seq: 1,
            name: None,
        }
    }

    #[test]
    fn conversations_rank_by_activity_with_before_and_limit() {
        let all = vec![
            cand("d:a:b", 10),
            cand("g:x", 30),
            cand("d:a:c", 20),
            cand("g:y", 20),
        ];
        let ranked: Vec<_> = rank_conversations(all.clone(), None, 10)
            .into_iter()
            .map(|c| c.conv.0)
            .collect();
        assert_eq!(ranked, vec!["g:x", "d:a:c", "g:y", "d:a:b"]);
        let ranked: Vec<_> = rank_conversations(all.clone(), Some(30), 2)
            .into_iter()
            .map(|c| c.conv.0)
            .collect();
        assert_eq!(ranked, vec!["d:a:c", "g:y"]);
        assert!(rank_conversations(all, Some(10), 5).is_empty());
    }
}
