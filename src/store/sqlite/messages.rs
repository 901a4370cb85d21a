//! Requests on messages, pending deliveries, cursors and conversations. Each runs on one
//! connection: writes inside the writer's batch transaction.

use super::*;

pub(super) fn append(conn: &Connection, msg: NewMessage) -> DbResult<Appended> {
    let original = conn
        .prepare_cached(
            "SELECT m.conv, m.seq, m.id, m.sender, m.ts, m.cid, m.body, m.reply_to
             FROM dedup d JOIN messages m ON m.conv = d.conv AND m.seq = d.seq
             WHERE d.sender = ?1 AND d.cid = ?2",
        )?
        .query_row(params![msg.from, msg.cid], message_row)
        .optional()?;
    if let Some(original) = original {
        return Ok(Appended::Duplicate(original));
    }

    let kind = msg.conv.kind().ok_or_else(|| {
        fail(
            StoreErrorKind::Internal,
            format!("invalid conversation id {:?}", msg.conv.as_str()),
        )
    })?;
    if let ConvKind::Direct { .. } = kind {
        if kind.peer_of(&msg.from).is_none() {
            return Err(fail(
                StoreErrorKind::Internal,
                format!("{} is not a participant of {}", msg.from, msg.conv),
            ));
        }
    }

    // The seq comes from the conversation row inside this (single-writer) transaction, so it
    // is dense and never reused, whatever the concurrency of callers.
    let seq: i64 = conn
        .prepare_cached(
            "INSERT INTO conversations (conv, last_seq) VALUES (?1, 1)
             ON CONFLICT (conv) DO UPDATE SET last_seq = last_seq + 1
             RETURNING last_seq",
        )?
        .query_row([msg.conv.as_str()], |row| row.get(0))?;
    conn.prepare_cached(
        "INSERT INTO messages (conv, seq, id, sender, ts, cid, body, reply_to)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        msg.conv.as_str(),
        seq,
        id_to_sql(msg.id),
        msg.from,
        msg.ts,
        msg.cid,
        msg.body,
        msg.reply_to.map(id_to_sql),
    ])?;
    conn.prepare_cached("INSERT INTO dedup (sender, cid, conv, seq) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![msg.from, msg.cid, msg.conv.as_str(), seq])?;

    index_and_queue(conn, &kind, &msg, seq)?;

    Ok(Appended::Stored(StoredMessage {
        id: msg.id,
        seq: seq_from_sql(seq),
        conv: msg.conv,
        from: msg.from,
        ts: msg.ts,
        cid: msg.cid,
        body: msg.body,
        reply_to: msg.reply_to,
    }))
}

/// After a message row: the conversation lists of a DM's participants and the recipient's
/// pending delivery, or the group's last activity.
fn index_and_queue(
    conn: &Connection,
    kind: &ConvKind<'_>,
    msg: &NewMessage,
    seq: i64,
) -> DbResult<()> {
    match *kind {
        ConvKind::Direct { a, b } => {
            let mut index = conn.prepare_cached(
                "INSERT INTO dm_index (user, conv, last_ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, conv) DO UPDATE SET last_ts = excluded.last_ts",
            )?;
            index.execute(params![a, msg.conv.as_str(), msg.ts])?;
            if a != b {
                index.execute(params![b, msg.conv.as_str(), msg.ts])?;
            }
            // A note to self has nobody else to deliver to.
            let recipient = if msg.from == a { b } else { a };
            if recipient != msg.from {
                conn.prepare_cached(
                    "INSERT INTO pending (recipient, msg_id, conv, seq) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    recipient,
                    id_order_key(msg.id),
                    msg.conv.as_str(),
                    seq
                ])?;
            }
        }
        ConvKind::Group { gid } => {
            conn.prepare_cached("UPDATE chat_groups SET last_ts = ?2 WHERE gid = ?1")?
                .execute(params![gid, msg.ts])?;
        }
    }
    Ok(())
}

pub(super) fn history(
    conn: &Connection,
    conv: &str,
    dir: PageDir,
    limit: u32,
) -> DbResult<HistoryPage> {
    // One extra row tells whether there is more beyond the page.
    let probe = limit_to_sql(limit) + 1;
    let mut messages = match dir {
        PageDir::Before(before) => {
            let before = before.map_or(i64::MAX, seq_to_sql);
            let mut rows = conn
                .prepare_cached(
                    "SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages
                     WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                )?
                .query_map(params![conv, before, probe], message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            rows
        }
        PageDir::After(after) => conn
            .prepare_cached(
                "SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages
                 WHERE conv = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3",
            )?
            .query_map(params![conv, seq_to_sql(after), probe], message_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = messages.len() > limit;
    if has_more {
        match dir {
            // Walking backwards, the extra row is the oldest one, at the front.
            PageDir::Before(_) => {
                messages.remove(0);
            }
            PageDir::After(_) => messages.truncate(limit),
        }
    }
    Ok(HistoryPage { messages, has_more })
}

pub(super) fn message(conn: &Connection, conv: &str, seq: u64) -> DbResult<Option<StoredMessage>> {
    Ok(conn
        .prepare_cached(
            "SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages
             WHERE conv = ?1 AND seq = ?2",
        )?
        .query_row(params![conv, seq_to_sql(seq)], message_row)
        .optional()?)
}

pub(super) fn pending(
    conn: &Connection,
    user: &str,
    after: u64,
    limit: u32,
) -> DbResult<Vec<StoredMessage>> {
    Ok(conn
        .prepare_cached(
            "SELECT m.conv, m.seq, m.id, m.sender, m.ts, m.cid, m.body, m.reply_to
             FROM pending p JOIN messages m ON m.conv = p.conv AND m.seq = p.seq
             WHERE p.recipient = ?1 AND p.msg_id > ?2
             ORDER BY p.msg_id LIMIT ?3",
        )?
        .query_map(
            params![user, id_order_key(after), limit_to_sql(limit)],
            message_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn pending_count(conn: &Connection, user: &str) -> DbResult<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM pending WHERE recipient = ?1")?
        .query_row([user], |row| row.get(0))?;
    Ok(seq_from_sql(n))
}

pub(super) fn last_seq(conn: &Connection, conv: &str) -> DbResult<i64> {
    Ok(conn
        .prepare_cached("SELECT last_seq FROM conversations WHERE conv = ?1")?
        .query_row([conv], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}

pub(super) fn cursors(conn: &Connection, user: &str, conv: &str) -> DbResult<(i64, i64)> {
    Ok(conn
        .prepare_cached(
            "SELECT delivered_up_to, read_up_to FROM cursors WHERE user = ?1 AND conv = ?2",
        )?
        .query_row([user, conv], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?
        .unwrap_or((0, 0)))
}

pub(super) fn set_cursor(
    conn: &Connection,
    user: &str,
    conv: &str,
    kind: ReceiptKind,
    up_to: u64,
) -> DbResult<CursorMove> {
    // A marker past the last message would pre-acknowledge messages not yet sent.
    let up_to = seq_to_sql(up_to).min(last_seq(conn, conv)?);
    let (delivered, read) = cursors(conn, user, conv)?;
    // Reading a message implies it was delivered.
    let new_delivered = delivered.max(up_to);
    let (new_read, moved, value) = match kind {
        ReceiptKind::Delivered => (read, up_to > delivered, new_delivered),
        ReceiptKind::Read => (read.max(up_to), up_to > read, read.max(up_to)),
    };
    if new_delivered != delivered || new_read != read {
        conn.prepare_cached(
            "INSERT INTO cursors (user, conv, delivered_up_to, read_up_to) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user, conv) DO UPDATE
             SET delivered_up_to = excluded.delivered_up_to, read_up_to = excluded.read_up_to",
        )?
        .execute(params![user, conv, new_delivered, new_read])?;
    }
    if new_delivered > 0 {
        // Run even when the cursor did not move: cheap (an index range), and it leaves no
        // pending row behind a cursor whatever happened before.
        conn.prepare_cached(
            "DELETE FROM pending WHERE recipient = ?1 AND conv = ?2 AND seq <= ?3",
        )?
        .execute(params![user, conv, new_delivered])?;
    }
    Ok(CursorMove {
        moved,
        value: seq_from_sql(value),
    })
}

pub(super) fn conversations(
    conn: &Connection,
    user: &str,
    before: Option<i64>,
    limit: u32,
) -> DbResult<Vec<ConversationSummary>> {
    // DMs come from the user's own index (already in activity order, so only `limit` rows are
    // read); groups from the user's memberships joined to each group's last activity. Both
    // are index lookups; `messages` is only touched by primary key for the last message.
    let mut stmt = conn.prepare_cached(
        "WITH page (conv, last_ts, name) AS (
             SELECT conv, last_ts, name FROM (
                 SELECT conv, last_ts, NULL AS name FROM (
                     SELECT conv, last_ts FROM dm_index
                     WHERE user = ?1 AND last_ts < ?2
                     ORDER BY last_ts DESC LIMIT ?3)
                 UNION ALL
                 SELECT 'g:' || g.gid, g.last_ts, g.name
                 FROM group_members gm JOIN chat_groups g ON g.gid = gm.gid
                 WHERE gm.user = ?1 AND g.last_ts < ?2)
             ORDER BY last_ts DESC, conv LIMIT ?3)
         SELECT p.conv, p.last_ts, p.name, COALESCE(c.last_seq, 0),
                COALESCE(cu.delivered_up_to, 0), COALESCE(cu.read_up_to, 0),
                m.conv, m.seq, m.id, m.sender, m.ts, m.cid, m.body, m.reply_to
         FROM page p
         LEFT JOIN conversations c ON c.conv = p.conv
         LEFT JOIN cursors cu ON cu.user = ?1 AND cu.conv = p.conv
         LEFT JOIN messages m ON m.conv = p.conv AND m.seq = c.last_seq
         ORDER BY p.last_ts DESC, p.conv",
    )?;
    let rows = stmt.query_map(
        params![user, before.unwrap_or(i64::MAX), limit_to_sql(limit)],
        |row| {
            let has_message = row.get::<_, Option<String>>(6)?.is_some();
            Ok(ConversationSummary {
                conv: ConvId(row.get(0)?),
                last_ts: row.get(1)?,
                name: row.get(2)?,
                last_seq: seq_from_sql(row.get(3)?),
                cursors: Cursors {
                    delivered_up_to: seq_from_sql(row.get(4)?),
                    read_up_to: seq_from_sql(row.get(5)?),
                },
                last_message: if has_message {
                    Some(message_at(row, 6)?)
                } else {
                    None
                },
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
