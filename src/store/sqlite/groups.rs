//! Requests on groups and their members.

use super::*;

pub(super) fn group_exists(conn: &Connection, gid: &str) -> DbResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM chat_groups WHERE gid = ?1")?
        .exists([gid])?)
}

pub(super) fn member_count(conn: &Connection, gid: &str) -> DbResult<u64> {
    conn.prepare_cached("SELECT member_count FROM chat_groups WHERE gid = ?1")?
        .query_row([gid], |row| row.get::<_, i64>(0))
        .optional()?
        .map(seq_from_sql)
        .ok_or_else(|| unknown_group(gid))
}

pub(super) fn unknown_group(gid: &str) -> Fail {
    fail(StoreErrorKind::NotFound, format!("no group {gid}"))
}

pub(super) fn is_member(conn: &Connection, gid: &str, user: &str) -> DbResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM group_members WHERE gid = ?1 AND user = ?2")?
        .exists([gid, user])?)
}

pub(super) fn insert_member(conn: &Connection, gid: &str, user: &str, ts: i64) -> DbResult<()> {
    conn.prepare_cached("INSERT INTO group_members (gid, user, joined_ts) VALUES (?1, ?2, ?3)")?
        .execute(params![gid, user, ts])?;
    Ok(())
}

pub(super) fn set_member_count(conn: &Connection, gid: &str, count: u64) -> DbResult<()> {
    conn.prepare_cached("UPDATE chat_groups SET member_count = ?2 WHERE gid = ?1")?
        .execute(params![gid, seq_to_sql(count)])?;
    Ok(())
}

pub(super) fn too_many(gid: &str, count: usize, max: u64) -> Fail {
    fail(
        StoreErrorKind::LimitExceeded,
        format!("group {gid} would have {count} members, more than {max}"),
    )
}

pub(super) fn create_group(
    conn: &Connection,
    gid: &str,
    name: &str,
    creator: &str,
    members: &[String],
    ts: i64,
    max_members: u64,
) -> DbResult<GroupInfo> {
    if group_exists(conn, gid)? {
        return Err(fail(
            StoreErrorKind::Conflict,
            format!("group {gid} exists"),
        ));
    }
    let mut all = Vec::with_capacity(members.len() + 1);
    all.push(creator.to_owned());
    all.extend_from_slice(members);
    let all = distinct(&all);
    if all.len() as u64 > max_members {
        return Err(too_many(gid, all.len(), max_members));
    }
    let count = all.len() as u64;
    conn.prepare_cached(
        "INSERT INTO chat_groups (gid, name, created_by, created_ts, last_ts, member_count)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
    )?
    .execute(params![gid, name, creator, ts, seq_to_sql(count)])?;
    for user in &all {
        insert_member(conn, gid, user, ts)?;
    }
    conn.prepare_cached("INSERT INTO group_admins (gid, user) VALUES (?1, ?2)")?
        .execute([gid, creator])?;
    Ok(GroupInfo {
        gid: gid.to_owned(),
        name: name.to_owned(),
        created_by: creator.to_owned(),
        created_ts: ts,
        admins: vec![creator.to_owned()],
        member_count: count,
    })
}

pub(super) fn group(conn: &Connection, gid: &str) -> DbResult<Option<GroupInfo>> {
    // Two statements: read them from one snapshot.
    let tx = conn.unchecked_transaction()?;
    let row = tx
        .prepare_cached(
            "SELECT name, created_by, created_ts, member_count FROM chat_groups WHERE gid = ?1",
        )?
        .query_row([gid], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    let Some((name, created_by, created_ts, member_count)) = row else {
        return Ok(None);
    };
    let admins = tx
        .prepare_cached("SELECT user FROM group_admins WHERE gid = ?1 ORDER BY user")?
        .query_map([gid], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some(GroupInfo {
        gid: gid.to_owned(),
        name,
        created_by,
        created_ts,
        admins,
        member_count: seq_from_sql(member_count),
    }))
}

pub(super) fn add_members(
    conn: &Connection,
    gid: &str,
    users: &[String],
    ts: i64,
    max_members: u64,
) -> DbResult<MembershipChange> {
    let count = member_count(conn, gid)?;
    let mut added = Vec::new();
    for user in distinct(users) {
        if !is_member(conn, gid, &user)? {
            added.push(user);
        }
    }
    if added.is_empty() {
        return Ok(MembershipChange {
            changed: added,
            member_count: count,
        });
    }
    let new_count = count + added.len() as u64;
    if new_count > max_members {
        return Err(too_many(gid, new_count as usize, max_members));
    }
    for user in &added {
        insert_member(conn, gid, user, ts)?;
    }
    set_member_count(conn, gid, new_count)?;
    Ok(MembershipChange {
        changed: added,
        member_count: new_count,
    })
}

pub(super) fn remove_members(
    conn: &Connection,
    gid: &str,
    users: &[String],
) -> DbResult<MembershipChange> {
    let count = member_count(conn, gid)?;
    let mut removed = Vec::new();
    for user in distinct(users) {
        let n = conn
            .prepare_cached("DELETE FROM group_members WHERE gid = ?1 AND user = ?2")?
            .execute([gid, user.as_str()])?;
        conn.prepare_cached("DELETE FROM group_admins WHERE gid = ?1 AND user = ?2")?
            .execute([gid, user.as_str()])?;
        if n > 0 {
            removed.push(user);
        }
    }
    let new_count = count.saturating_sub(removed.len() as u64);
    if !removed.is_empty() {
        set_member_count(conn, gid, new_count)?;
    }
    Ok(MembershipChange {
        changed: removed,
        member_count: new_count,
    })
}

pub(super) fn set_admin(conn: &Connection, gid: &str, user: &str, admin: bool) -> DbResult<()> {
    if !group_exists(conn, gid)? {
        return Err(unknown_group(gid));
    }
    if !is_member(conn, gid, user)? {
        return Err(fail(
            StoreErrorKind::NotFound,
            format!("{user} is not a member of group {gid}"),
        ));
    }
    if admin {
        conn.prepare_cached("INSERT OR IGNORE INTO group_admins (gid, user) VALUES (?1, ?2)")?
            .execute([gid, user])?;
    } else {
        conn.prepare_cached("DELETE FROM group_admins WHERE gid = ?1 AND user = ?2")?
            .execute([gid, user])?;
    }
    Ok(())
}

pub(super) fn members(conn: &Connection, gid: &str) -> DbResult<Vec<String>> {
    // One statement (one snapshot): no row at all means no group; a NULL user means a group
    // with nobody left in it.
    let rows = conn
        .prepare_cached(
            "SELECT gm.user FROM chat_groups g LEFT JOIN group_members gm ON gm.gid = g.gid
             WHERE g.gid = ?1",
        )?
        .query_map([gid], |row| row.get::<_, Option<String>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Err(unknown_group(gid));
    }
    Ok(rows.into_iter().flatten().collect())
}

pub(super) fn groups_of(conn: &Connection, user: &str) -> DbResult<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT gid FROM group_members WHERE user = ?1 ORDER BY gid")?
        .query_map([user], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?)
}
