-- chatmq embedded store (SQLite). Applied at every startup, so every statement is idempotent;
-- the schema version lives in `PRAGMA user_version` (set by sqlite.rs, not here).
--
-- Tables are keyed the way ScyllaDB partitions them (see src/store/mod.rs): every query the
-- store runs is a primary-key or index range lookup, never a scan of `messages`.
-- Unsigned 64-bit values (message ids, reply_to) are stored as INTEGER, bit-cast to i64.

-- One row per conversation that has messages. `last_seq` allocates the dense per-conversation
-- seq inside the writer's transaction.
CREATE TABLE IF NOT EXISTS conversations (
    conv     TEXT    NOT NULL PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

-- Bodies can be tens of KiB, so this stays a rowid table (rows appended in insert order)
-- with the (conv, seq) key as its index, rather than a WITHOUT ROWID b-tree of large rows.
CREATE TABLE IF NOT EXISTS messages (
    conv     TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    id       INTEGER NOT NULL,
    sender   TEXT    NOT NULL,
    ts       INTEGER NOT NULL,
    cid      TEXT    NOT NULL,
    body     BLOB    NOT NULL,
    reply_to INTEGER,
    PRIMARY KEY (conv, seq)
);

-- A resend of the same client id answers with the original message.
CREATE TABLE IF NOT EXISTS dedup (
    sender TEXT    NOT NULL,
    cid    TEXT    NOT NULL,
    conv   TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (sender, cid)
) WITHOUT ROWID;

-- Receipt markers per (user, conversation); only ever move forward.
CREATE TABLE IF NOT EXISTS cursors (
    user            TEXT    NOT NULL,
    conv            TEXT    NOT NULL,
    delivered_up_to INTEGER NOT NULL DEFAULT 0,
    read_up_to      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, conv)
) WITHOUT ROWID;

-- Per-user index of DM conversations. Groups are not listed here: a group message would
-- otherwise touch one row per member (50,000); a group keeps its own `last_ts` instead.
CREATE TABLE IF NOT EXISTS dm_index (
    user    TEXT    NOT NULL,
    conv    TEXT    NOT NULL,
    last_ts INTEGER NOT NULL,
    PRIMARY KEY (user, conv)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dm_index_by_activity ON dm_index (user, last_ts);

-- DMs not yet delivered to their recipient, walked oldest first by message id.
CREATE TABLE IF NOT EXISTS pending (
    recipient TEXT    NOT NULL,
    msg_id    INTEGER NOT NULL,
    conv      TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (recipient, msg_id)
) WITHOUT ROWID;
-- A delivered cursor clears a range of one conversation.
CREATE INDEX IF NOT EXISTS pending_by_conv ON pending (recipient, conv, seq);

-- `groups` is an SQL keyword (window frames), hence the prefix.
CREATE TABLE IF NOT EXISTS chat_groups (
    gid          TEXT    NOT NULL PRIMARY KEY,
    name         TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    created_ts   INTEGER NOT NULL,
    last_ts      INTEGER NOT NULL,
    member_count INTEGER NOT NULL
) WITHOUT ROWID;

-- Members by group (primary key) and groups by member (index).
CREATE TABLE IF NOT EXISTS group_members (
    gid       TEXT    NOT NULL,
    user      TEXT    NOT NULL,
    joined_ts INTEGER NOT NULL,
    PRIMARY KEY (gid, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_by_user ON group_members (user, gid);

-- Kept apart from members so reading a group's admins never walks 50,000 member rows.
CREATE TABLE IF NOT EXISTS group_admins (
    gid  TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (gid, user)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS profiles (
    user           TEXT    NOT NULL PRIMARY KEY,
    display_name   TEXT,
    avatar_url     TEXT,
    status         TEXT,
    hide_last_seen INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Written on almost every user action, so it is its own small row, not part of the profile.
CREATE TABLE IF NOT EXISTS last_seen (
    user TEXT    NOT NULL PRIMARY KEY,
    ts   INTEGER NOT NULL
) WITHOUT ROWID;

-- One row, rewritten by the health probe while the store is failing (/readyz).
CREATE TABLE IF NOT EXISTS health_probe (
    id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    ts INTEGER NOT NULL
);
