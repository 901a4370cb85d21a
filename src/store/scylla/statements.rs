//! Every CQL statement the backend runs on the data path, in one place.
//!
//! Each is prepared once at connect time (so execution is token-aware: the driver routes by
//! the bound partition key) and carries its idempotence, which the retry policy relies on.
//! The tests below check every statement against `schema/scylla.cql`: its table exists, every
//! column it names exists, and it restricts the whole partition key (no scans).

use scylla::client::session::Session;
use scylla::errors::PrepareError;
use scylla::statement::prepared::PreparedStatement;

/// The schema file, applied at startup.
pub const SCHEMA_CQL: &str = include_str!("../../../schema/scylla.cql");

/// The version declared in the schema file's `-- schema_version: N` header (checked by a test).
pub const SCHEMA_VERSION: i32 = 1;

/// Row key of this application in `schema_version`.
pub const SCHEMA_COMPONENT: &str = "chatmq";

macro_rules! statements {
    ($( $(#[$doc:meta])* $name:ident, idempotent: $idem:expr, $cql:expr; )*) => {
        /// `(name, cql, idempotent)` of every statement.
        #[cfg_attr(not(test), allow(dead_code))]
        pub const ALL: &[(&str, &str, bool)] = &[ $( (stringify!($name), $cql, $idem), )* ];

        /// The prepared form of every statement, one field per const (lowercase).
        #[allow(non_snake_case)]
        pub struct Prepared {
            $( $(#[$doc])* pub $name: PreparedStatement, )*
        }

        impl Prepared {
            pub async fn prepare(session: &Session) -> Result<Prepared, PrepareError> {
                Ok(Prepared {
                    $( $name: {
                        let mut p = session.prepare($cql).await?;
                        p.set_is_idempotent($idem);
                        p
                    }, )*
                })
            }
        }
    };
}

statements! {
    // schema_version
    SELECT_SCHEMA_VERSION, idempotent: true,
        "SELECT version, bucket_size FROM schema_version WHERE component = ?";
    INSERT_SCHEMA_VERSION, idempotent: true,
        "INSERT INTO schema_version (component, version, bucket_size, applied_ts) VALUES (?, ?, ?, ?)";

    // messages
    INSERT_MESSAGE, idempotent: true,
        "INSERT INTO messages (conv, bucket, seq, id, sender, ts, cid, body, reply_to) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
    SELECT_MESSAGE, idempotent: true,
        "SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages \
         WHERE conv = ? AND bucket = ? AND seq = ?";
    /// A range inside one bucket; the clustering order is DESC, the caller reverses.
    SELECT_MESSAGE_RANGE, idempotent: true,
        "SELECT conv, seq, id, sender, ts, cid, body, reply_to FROM messages \
         WHERE conv = ? AND bucket = ? AND seq >= ? AND seq <= ?";
    /// Highest seq of one bucket: the first row, thanks to `seq DESC`.
    SELECT_MAX_SEQ_IN_BUCKET, idempotent: true,
        "SELECT seq FROM messages WHERE conv = ? AND bucket = ? LIMIT 1";

    // conv_meta (timestamp = seq: highest seq wins)
    UPSERT_CONV_META, idempotent: true,
        "UPDATE conv_meta USING TIMESTAMP ? SET last_seq = ?, last_id = ?, last_ts = ? WHERE conv = ?";
    SELECT_CONV_META, idempotent: true,
        "SELECT last_seq, last_ts FROM conv_meta WHERE conv = ?";

    // dedup
    INSERT_DEDUP, idempotent: true,
        "INSERT INTO dedup (sender, cid, conv, seq) VALUES (?, ?, ?, ?) USING TTL ?";
    SELECT_DEDUP, idempotent: true,
        "SELECT conv, seq FROM dedup WHERE sender = ? AND cid = ?";

    // cursors (timestamp = up_to: highest marker wins)
    SELECT_CURSORS, idempotent: true,
        "SELECT delivered_up_to, read_up_to FROM cursors WHERE user_id = ? AND conv = ?";
    SET_DELIVERED, idempotent: true,
        "UPDATE cursors USING TIMESTAMP ? SET delivered_up_to = ? WHERE user_id = ? AND conv = ?";
    /// Read implies delivered: both cells at the same timestamp, each wins only if ahead.
    SET_READ, idempotent: true,
        "UPDATE cursors USING TIMESTAMP ? SET read_up_to = ?, delivered_up_to = ? \
         WHERE user_id = ? AND conv = ?";

    // user_convs (timestamp = seq)
    UPSERT_USER_CONV, idempotent: true,
        "UPDATE user_convs USING TIMESTAMP ? SET last_seq = ?, last_ts = ? WHERE user_id = ? AND conv = ?";
    SELECT_USER_CONVS, idempotent: true,
        "SELECT conv, last_seq, last_ts FROM user_convs WHERE user_id = ?";

    // pending offline deliveries
    INSERT_PENDING, idempotent: true,
        "INSERT INTO pending (user_id, id, conv, seq) VALUES (?, ?, ?, ?)";
    INSERT_PENDING_BY_CONV, idempotent: true,
        "INSERT INTO pending_by_conv (user_id, conv, seq, id) VALUES (?, ?, ?, ?)";
    SELECT_PENDING, idempotent: true,
        "SELECT id, conv, seq FROM pending WHERE user_id = ? AND id > ? LIMIT ?";
    COUNT_PENDING, idempotent: true,
        "SELECT COUNT(*) FROM pending WHERE user_id = ?";
    SELECT_PENDING_BY_CONV, idempotent: true,
        "SELECT seq, id FROM pending_by_conv WHERE user_id = ? AND conv = ? AND seq <= ?";
    DELETE_PENDING, idempotent: true,
        "DELETE FROM pending WHERE user_id = ? AND id = ?";
    DELETE_PENDING_BY_CONV_UP_TO, idempotent: true,
        "DELETE FROM pending_by_conv WHERE user_id = ? AND conv = ? AND seq <= ?";

    // groups
    /// LWT: the only conditional write, on a cold path. Not idempotent: a retried LWT can
    /// report "not applied" for its own first attempt.
    INSERT_GROUP_IF_NOT_EXISTS, idempotent: false,
        "INSERT INTO groups (gid, name, created_by, created_ts, admins) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS";
    SELECT_GROUP, idempotent: true,
        "SELECT gid, name, created_by, created_ts, admins FROM groups WHERE gid = ?";
    ADD_ADMINS, idempotent: true,
        "UPDATE groups SET admins = admins + ? WHERE gid = ?";
    REMOVE_ADMINS, idempotent: true,
        "UPDATE groups SET admins = admins - ? WHERE gid = ?";
    INSERT_MEMBER, idempotent: true,
        "INSERT INTO group_members (gid, user_id, joined_ts) VALUES (?, ?, ?)";
    DELETE_MEMBER, idempotent: true,
        "DELETE FROM group_members WHERE gid = ? AND user_id = ?";
    SELECT_MEMBER, idempotent: true,
        "SELECT user_id FROM group_members WHERE gid = ? AND user_id = ?";
    SELECT_MEMBERS_IN, idempotent: true,
        "SELECT user_id FROM group_members WHERE gid = ? AND user_id IN ?";
    SELECT_MEMBERS, idempotent: true,
        "SELECT user_id FROM group_members WHERE gid = ?";
    COUNT_MEMBERS, idempotent: true,
        "SELECT COUNT(*) FROM group_members WHERE gid = ?";
    INSERT_USER_GROUP, idempotent: true,
        "INSERT INTO user_groups (user_id, gid) VALUES (?, ?)";
    DELETE_USER_GROUP, idempotent: true,
        "DELETE FROM user_groups WHERE user_id = ? AND gid = ?";
    SELECT_USER_GROUPS, idempotent: true,
        "SELECT gid FROM user_groups WHERE user_id = ?";

    // profiles: one statement per field, so a partial update touches only what it names.
    SET_DISPLAY_NAME, idempotent: true,
        "UPDATE profiles SET display_name = ? WHERE user_id = ?";
    SET_AVATAR_URL, idempotent: true,
        "UPDATE profiles SET avatar_url = ? WHERE user_id = ?";
    SET_STATUS, idempotent: true,
        "UPDATE profiles SET status = ? WHERE user_id = ?";
    SET_HIDE_LAST_SEEN, idempotent: true,
        "UPDATE profiles SET hide_last_seen = ? WHERE user_id = ?";
    SELECT_PROFILE, idempotent: true,
        "SELECT display_name, avatar_url, status, hide_last_seen FROM profiles WHERE user_id = ?";

    // last_seen (timestamp = ts: only moves forward)
    TOUCH_LAST_SEEN, idempotent: true,
        "UPDATE last_seen USING TIMESTAMP ? SET ts = ? WHERE user_id = ?";
    SELECT_LAST_SEEN, idempotent: true,
        "SELECT ts FROM last_seen WHERE user_id = ?";
}

/// The schema file split into statements, comments stripped.
pub fn schema_statements() -> Vec<String> {
    let without_comments: String = SCHEMA_CQL
        .lines()
        .map(|line| match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A table as declared in the schema file.
    #[derive(Debug)]
    struct Table {
        columns: Vec<String>,
        partition_key: Vec<String>,
    }

    /// Splits on commas that are not nested in `()` or `<>`.
    fn split_top_level(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut depth = 0i32;
        let mut cur = String::new();
        for c in s.chars() {
            match c {
                '(' | '<' => depth += 1,
                ')' | '>' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(cur.trim().to_owned());
                    cur.clear();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        if !cur.trim().is_empty() {
            out.push(cur.trim().to_owned());
        }
        out
    }

    /// A tiny parser for the schema's `CREATE TABLE IF NOT EXISTS` statements.
    fn parse_schema() -> BTreeMap<String, Table> {
        let mut tables = BTreeMap::new();
        for stmt in schema_statements() {
            let rest = stmt
                .strip_prefix("CREATE TABLE IF NOT EXISTS ")
                .unwrap_or_else(|| panic!("only idempotent CREATE TABLE allowed: {stmt}"));
            let open = rest.find('(').expect("column list");
            let name = rest[..open].trim().to_owned();
            // The column list ends at the parenthesis matching `open`.
            let mut depth = 0;
            let mut close = None;
            for (i, c) in rest.char_indices().skip(open) {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(i);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let close = close.expect("balanced parentheses");
            let mut columns = Vec::new();
            let mut partition_key = Vec::new();
            for item in split_top_level(&rest[open + 1..close]) {
                if let Some(pk) = item.strip_prefix("PRIMARY KEY") {
                    let pk = pk.trim();
                    let pk = pk
                        .strip_prefix('(')
                        .and_then(|p| p.strip_suffix(')'))
                        .unwrap_or_else(|| panic!("{name}: PRIMARY KEY (...) expected"));
                    let first = split_top_level(pk)
                        .into_iter()
                        .next()
                        .expect("partition key");
                    partition_key = first
                        .trim_matches(|c| c == '(' || c == ')')
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .collect();
                } else {
                    let mut words = item.split_whitespace();
                    let col = words.next().expect("column name").to_owned();
                    let ty = words.next().expect("column type");
                    assert!(!ty.is_empty());
                    if words.next() == Some("PRIMARY") {
                        partition_key = vec![col.clone()];
                    }
                    columns.push(col);
                }
            }
            assert!(!partition_key.is_empty(), "{name} has no primary key");
            for k in &partition_key {
                assert!(columns.contains(k), "{name}: key {k} is not a column");
            }
            tables.insert(
                name,
                Table {
                    columns,
                    partition_key,
                },
            );
        }
        tables
    }

    const KEYWORDS: &[&str] = &[
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "INSERT",
        "INTO",
        "VALUES",
        "UPDATE",
        "SET",
        "USING",
        "TTL",
        "TIMESTAMP",
        "IF",
        "NOT",
        "EXISTS",
        "DELETE",
        "LIMIT",
        "IN",
        "COUNT",
    ];

    fn words(stmt: &str) -> Vec<&str> {
        stmt.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty() && !w.bytes().all(|b| b.is_ascii_digit()))
            .collect()
    }

    /// The table a statement reads or writes.
    fn table_of(stmt: &str) -> &str {
        let w = words(stmt);
        let after = |kw: &str| {
            w.iter()
                .position(|x| *x == kw)
                .and_then(|i| w.get(i + 1))
                .copied()
        };
        match w.first().copied() {
            Some("SELECT") | Some("DELETE") => after("FROM"),
            Some("INSERT") => after("INTO"),
            Some("UPDATE") => after("UPDATE"),
            _ => None,
        }
        .unwrap_or_else(|| panic!("cannot find the table of {stmt}"))
    }

    #[test]
    fn schema_parses_and_declares_its_version() {
        let tables = parse_schema();
        for t in [
            "schema_version",
            "messages",
            "conv_meta",
            "dedup",
            "cursors",
            "user_convs",
            "pending",
            "pending_by_conv",
            "groups",
            "group_members",
            "user_groups",
            "profiles",
            "last_seen",
        ] {
            assert!(tables.contains_key(t), "missing table {t}");
        }
        assert_eq!(
            tables["messages"].partition_key,
            vec!["conv".to_owned(), "bucket".to_owned()]
        );
        assert_eq!(
            tables["dedup"].partition_key,
            vec!["sender".to_owned(), "cid".to_owned()]
        );
        assert!(SCHEMA_CQL.contains(&format!("-- schema_version: {SCHEMA_VERSION}\n")));
        assert!(SCHEMA_CQL.contains("CLUSTERING ORDER BY (seq DESC)"));
    }

    #[test]
    fn every_statement_matches_the_schema() {
        let tables = parse_schema();
        assert!(ALL.len() > 30);
        for (name, stmt, _) in ALL {
            let table_name = table_of(stmt);
            let table = tables
                .get(table_name)
                .unwrap_or_else(|| panic!("{name}: unknown table {table_name}"));
            for w in words(stmt) {
                if KEYWORDS.contains(&w) || w == table_name {
                    continue;
                }
                assert!(
                    table.columns.iter().any(|c| c == w),
                    "{name}: column {w} is not in table {table_name}"
                );
            }
            assert!(stmt.contains('?'), "{name}: a data statement binds values");
        }
    }

    #[test]
    fn every_statement_names_its_partition() {
        let tables = parse_schema();
        for (name, stmt, _) in ALL {
            assert!(!stmt.contains("ALLOW FILTERING"), "{name}");
            let table = &tables[table_of(stmt)];
            if stmt.starts_with("INSERT") {
                let cols = &stmt[stmt.find('(').expect("cols")..stmt.find(')').expect("cols")];
                for k in &table.partition_key {
                    assert!(words(cols).contains(&k.as_str()), "{name}: no {k}");
                }
                continue;
            }
            let where_clause = &stmt[stmt.find(" WHERE ").unwrap_or_else(|| panic!("{name}"))..];
            for k in &table.partition_key {
                assert!(
                    where_clause.contains(&format!(" {k} = ?"))
                        || where_clause.contains(&format!(" {k} IN ?")),
                    "{name}: partition key {k} not restricted: a scan"
                );
            }
        }
    }

    #[test]
    fn only_conditional_writes_are_non_idempotent() {
        for (name, stmt, idempotent) in ALL {
            assert_eq!(*idempotent, !stmt.contains(" IF "), "{name}");
        }
    }

    #[test]
    fn statement_names_are_unique() {
        let mut names: Vec<_> = ALL.iter().map(|(n, _, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn the_parser_rejects_unknown_columns() {
        // Guards the test itself: a misspelt column must be caught.
        let tables = parse_schema();
        let stmt = "SELECT sequence FROM messages WHERE conv = ? AND bucket = ?";
        let bad: Vec<_> = words(stmt)
            .into_iter()
            .filter(|w| !KEYWORDS.contains(w) && *w != "messages")
            .filter(|w| !tables["messages"].columns.iter().any(|c| c == w))
            .collect();
        assert_eq!(bad, vec!["sequence"]);
    }
}
