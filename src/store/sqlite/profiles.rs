//! Requests on profiles and last seen.

use super::*;

pub(super) fn profile(conn: &Connection, user: &str) -> DbResult<Profile> {
    let mut profile = conn
        .prepare_cached(
            "SELECT display_name, avatar_url, status, hide_last_seen FROM profiles
             WHERE user = ?1",
        )?
        .query_row([user], |row| {
            Ok(Profile {
                user: user.to_owned(),
                display_name: row.get(0)?,
                avatar_url: row.get(1)?,
                status: row.get(2)?,
                hide_last_seen: row.get(3)?,
                last_seen: None,
            })
        })
        .optional()?
        .unwrap_or_else(|| Profile {
            user: user.to_owned(),
            ..Profile::default()
        });
    profile.last_seen = conn
        .prepare_cached("SELECT ts FROM last_seen WHERE user = ?1")?
        .query_row([user], |row| row.get(0))
        .optional()?;
    Ok(profile)
}

pub(super) fn set_profile(
    conn: &Connection,
    user: &str,
    update: ProfileUpdate,
) -> DbResult<Profile> {
    let mut p = profile(conn, user)?;
    if let Some(v) = update.display_name {
        p.display_name = v;
    }
    if let Some(v) = update.avatar_url {
        p.avatar_url = v;
    }
    if let Some(v) = update.status {
        p.status = v;
    }
    if let Some(v) = update.hide_last_seen {
        p.hide_last_seen = v;
    }
    conn.prepare_cached(
        "INSERT INTO profiles (user, display_name, avatar_url, status, hide_last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user) DO UPDATE SET display_name = excluded.display_name,
             avatar_url = excluded.avatar_url, status = excluded.status,
             hide_last_seen = excluded.hide_last_seen",
    )?
    .execute(params![
        user,
        p.display_name,
        p.avatar_url,
        p.status,
        p.hide_last_seen
    ])?;
    Ok(p)
}

pub(super) fn profiles(conn: &Connection, users: &[String]) -> DbResult<Vec<Profile>> {
    let tx = conn.unchecked_transaction()?;
    users.iter().map(|user| profile(&tx, user)).collect()
}

pub(super) fn touch_last_seen(conn: &Connection, user: &str, ts: i64) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO last_seen (user, ts) VALUES (?1, ?2)
         ON CONFLICT (user) DO UPDATE SET ts = excluded.ts WHERE excluded.ts > last_seen.ts",
    )?
    .execute(params![user, ts])?;
    Ok(())
}
