//! How values are stored: seqs, ids and cursors as INTEGER, message rows.

use super::*;

/// Seqs and cursors are dense counters far below 2^63; a larger value can only come from a
/// client, and means "beyond everything".
pub(super) fn seq_to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(super) fn seq_from_sql(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// Ids are opaque u64: stored bit for bit.
pub(super) fn id_to_sql(id: u64) -> i64 {
    id as i64
}

pub(super) fn id_from_sql(id: i64) -> u64 {
    id as u64
}

/// Pending deliveries are walked in id order, so their key must sort like the u64 it came
/// from: flipping the top bit maps u64 order onto i64 order exactly.
pub(super) fn id_order_key(id: u64) -> i64 {
    (id ^ (1 << 63)) as i64
}

pub(super) fn limit_to_sql(limit: u32) -> i64 {
    i64::from(limit)
}

/// Columns `conv, seq, id, sender, ts, cid, body, reply_to` starting at `at`.
pub(super) fn message_at(row: &Row<'_>, at: usize) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        conv: ConvId(row.get(at)?),
        seq: seq_from_sql(row.get(at + 1)?),
        id: id_from_sql(row.get(at + 2)?),
        from: row.get(at + 3)?,
        ts: row.get(at + 4)?,
        cid: row.get(at + 5)?,
        body: row.get(at + 6)?,
        reply_to: row.get::<_, Option<i64>>(at + 7)?.map(id_from_sql),
    })
}

pub(super) fn message_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    message_at(row, 0)
}

/// Keeps the first occurrence of each user, in order.
pub(super) fn distinct(users: &[String]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(users.len());
    users
        .iter()
        .filter(|u| seen.insert(u.as_str()))
        .cloned()
        .collect()
}
