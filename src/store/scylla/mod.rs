//! The ScyllaDB backend: the same [`Store`] contract on a distributed database.
//!
//! # Layout
//! - `config`: `[store] backend = "scylla"` settings and their validation.
//! - `statements`: every CQL statement, prepared once; tested against `schema/scylla.cql`.
//! - `plan`: bucket arithmetic, history page plans, the seq seeding walk (pure).
//! - `rows`: row ↔ domain conversions (pure).
//! - `seq`: per-conversation seq allocator and per-group locks; the density argument.
//! - `errors`: driver errors → [`StoreErrorKind`]; driver types stop there.
//! - `connect`: session, keyspace, schema and TLS; `query`: the statement helpers every
//!   request uses; `messages`, `groups` and `profiles`: the multi-statement steps of those
//!   requests. `mod.rs` holds the `Store` impl.
//!
//! # How the contract maps onto a database without transactions
//! - Every statement is prepared (so routing is token-aware) and runs in one execution
//!   profile: the configured consistency (LOCAL_QUORUM by default), LOCAL_SERIAL for the one
//!   LWT, a per-request timeout and the driver's default retry policy, which retries only
//!   statements marked idempotent. Client-side monotonic timestamps order our own writes.
//! - `append_message` awaits, in order: the message row and its dedup row (under the
//!   conversation's allocator lock), then the bookkeeping (conversation activity, the DM
//!   participants' index, the recipient's pending delivery). It returns — and the chat layer
//!   acks — only when all of them are written. If the bookkeeping fails, the client's resend
//!   (same cid) finds the dedup row and the duplicate path replays the bookkeeping, which is
//!   idempotent, so everything converges without a transaction.
//! - "Only moves forward" values (cursors, last seen, last activity) are written with
//!   `USING TIMESTAMP <value>`: the cell with the highest value wins in every replica whatever
//!   order writes arrive in, with no read-before-write and no LWT.
//! - Batches are only used inside one partition (atomic and isolated there, and cheap).

mod config;
mod connect;
mod errors;
mod groups;
mod messages;
mod plan;
mod profiles;
mod query;
mod rows;
mod seq;
mod statements;

use groups::*;

pub use config::{ConsistencyLevel, Replication, ScyllaConfig, ScyllaTls};

use crate::clock::now_ms;
use crate::store::{
    Appended, ConvId, ConvKind, ConversationSummary, CursorMove, Cursors, GroupInfo, HistoryPage,
    MembershipChange, NewMessage, PageDir, Profile, ProfileUpdate, ReceiptKind, Store, StoreError,
    StoreErrorKind, StoreResult, StoredMessage,
};
use async_trait::async_trait;
use errors::Context;
use futures_util::future::{try_join, try_join_all, BoxFuture};
use futures_util::{StreamExt, TryStreamExt};
use rows::{counter_from_db, counter_to_db, id_to_db, Candidate, GroupRow, MessageRow, ProfileRow};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use seq::{ConvSeq, LockMap};
use statements::Prepared;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Rows per single-partition batch: well under ScyllaDB's batch size warning threshold.
const BATCH_ROWS: usize = 100;

/// Values per `IN (...)` list.
const IN_LIST_MAX: usize = 100;

/// Writes to distinct partitions in flight at once (membership fan-out).
const FANOUT_CONCURRENCY: usize = 32;

/// Allocator slots kept for idle conversations before they are dropped (and re-seeded on
/// next use).
const SEQ_SLOTS: usize = 100_000;

/// The ScyllaDB implementation of [`Store`].
pub struct ScyllaStore {
    session: Session,
    st: Prepared,
    bucket_size: u64,
    dedup_ttl: i32,
    seqs: LockMap<ConvId, ConvSeq>,
    /// Serializes membership changes of one group in this process, so the size limit holds.
    group_locks: LockMap<String, ()>,
    /// Set by `flush` (graceful shutdown): later calls are refused as `Unavailable`.
    closed: AtomicBool,
}

impl ScyllaStore {
    // ---- statement helpers -------------------------------------------------------------

    // ---- seq allocation ------------------------------------------------------------------

    // ---- messages --------------------------------------------------------------------------

    // ---- groups ----------------------------------------------------------------------------
}

#[async_trait]
impl Store for ScyllaStore {
    async fn append_message(&self, msg: NewMessage) -> StoreResult<Appended> {
        self.check_open()?;
        let slot = self.seqs.slot(&msg.conv);
        let mut alloc = slot.lock().await;
        // Dedup under the conversation lock: a resend racing its original in the same
        // conversation waits for it and then finds its dedup row.
        if let Some(original) = self.find_duplicate(&msg.from, &msg.cid).await? {
            drop(alloc);
            self.record_side_effects(&original, true).await?;
            return Ok(Appended::Duplicate(original));
        }
        let last = match alloc.last {
            Some(last) => last,
            None => self.seed_last_seq(&msg.conv).await?,
        };
        let seq = last + 1;
        let stored = StoredMessage {
            id: msg.id,
            conv: msg.conv,
            seq,
            from: msg.from,
            ts: msg.ts,
            cid: msg.cid,
            body: msg.body,
            reply_to: msg.reply_to,
        };
        let bucket = plan::bucket_of(seq, self.bucket_size);
        let seq_db = counter_to_db(seq)?;
        let written = try_join(
            self.write(
                &self.st.INSERT_MESSAGE,
                rows::message_values(&stored, bucket)?,
                "append_message: message",
            ),
            self.write(
                &self.st.INSERT_DEDUP,
                (
                    stored.from.as_str(),
                    stored.cid.as_str(),
                    stored.conv.as_str(),
                    seq_db,
                    self.dedup_ttl,
                ),
                "append_message: dedup",
            ),
        )
        .await;
        match written {
            Ok(_) => alloc.last = Some(seq),
            Err(e) => {
                // The row may or may not have landed: forget what we knew, re-seed next time.
                alloc.last = None;
                return Err(e);
            }
        }
        // The seq is taken and durable; the rest need not hold up this conversation.
        drop(alloc);
        self.record_side_effects(&stored, false).await?;
        Ok(Appended::Stored(stored))
    }

    async fn history(&self, conv: &ConvId, dir: PageDir, limit: u32) -> StoreResult<HistoryPage> {
        self.check_open()?;
        let last = self.current_last_seq(conv).await?;
        let plan = plan::plan_page(last, dir, limit, self.bucket_size);
        let mut reads = Vec::with_capacity(plan.ranges.len());
        for r in &plan.ranges {
            let values = (
                conv.as_str(),
                counter_to_db(r.bucket)?,
                counter_to_db(r.lo)?,
                counter_to_db(r.hi)?,
            );
            reads.push(self.rows::<MessageRow>(
                &self.st.SELECT_MESSAGE_RANGE,
                values,
                "history: read bucket",
            ));
        }
        let mut messages = Vec::new();
        for rows in try_join_all(reads).await? {
            for row in rows {
                messages.push(rows::message_from_row(row)?);
            }
        }
        messages.sort_by_key(|m| m.seq);
        Ok(HistoryPage {
            messages,
            has_more: plan.has_more,
        })
    }

    async fn message(&self, conv: &ConvId, seq: u64) -> StoreResult<Option<StoredMessage>> {
        self.check_open()?;
        let Ok(seq_db) = i64::try_from(seq) else {
            return Ok(None);
        };
        if seq == 0 {
            return Ok(None);
        }
        let bucket = counter_to_db(plan::bucket_of(seq, self.bucket_size))?;
        let row: Option<MessageRow> = self
            .maybe_row(
                &self.st.SELECT_MESSAGE,
                (conv.as_str(), bucket, seq_db),
                "read message",
            )
            .await?;
        row.map(rows::message_from_row).transpose()
    }

    async fn pending(&self, user: &str, after: u64, limit: u32) -> StoreResult<Vec<StoredMessage>> {
        self.check_open()?;
        // Ids at or above 2^63 are not Snowflake ids: nothing can follow them.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        // CQL refuses LIMIT 0.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let queued: Vec<(i64, String, i64)> = self
            .rows(&self.st.SELECT_PENDING, (user, after, limit), "pending")
            .await?;
        let mut reads = Vec::with_capacity(queued.len());
        for (_, conv, seq) in queued {
            let seq = counter_from_db(seq)?;
            reads.push(async move { self.message(&ConvId(conv), seq).await });
        }
        // A queue entry whose message is gone (expired by retention) is skipped.
        Ok(try_join_all(reads).await?.into_iter().flatten().collect())
    }

    async fn pending_count(&self, user: &str) -> StoreResult<u64> {
        self.check_open()?;
        let n: Option<(i64,)> = self
            .maybe_row(&self.st.COUNT_PENDING, (user,), "pending count")
            .await?;
        counter_from_db(n.map_or(0, |(n,)| n))
    }

    async fn set_cursor(
        &self,
        user: &str,
        conv: &ConvId,
        kind: ReceiptKind,
        up_to: u64,
    ) -> StoreResult<CursorMove> {
        self.check_open()?;
        // Nothing beyond the last message can be acknowledged: a marker ahead of it would
        // silently mark messages sent later as delivered/read.
        let up_to = up_to.min(self.current_last_seq(conv).await?);
        let current = self.cursors(user, conv).await?;
        let before = match kind {
            ReceiptKind::Delivered => current.delivered_up_to,
            ReceiptKind::Read => current.read_up_to,
        };
        let moved = up_to > before;
        let up_to_db = counter_to_db(up_to)?;
        if moved {
            // The write timestamp is the marker itself: a concurrent smaller marker can never
            // overwrite a larger one, whatever order they land in.
            match kind {
                ReceiptKind::Delivered => {
                    self.write(
                        &self.st.SET_DELIVERED,
                        (up_to_db, up_to_db, user, conv.as_str()),
                        "set_cursor: delivered",
                    )
                    .await?
                }
                ReceiptKind::Read => {
                    self.write(
                        &self.st.SET_READ,
                        (up_to_db, up_to_db, up_to_db, user, conv.as_str()),
                        "set_cursor: read",
                    )
                    .await?
                }
            }
        }
        // Both kinds cover deliveries up to `up_to`. Cleared even when the cursor did not
        // move, so a receipt retried after a failed clear still clears.
        if up_to > 0 {
            self.clear_pending(user, conv, up_to_db).await?;
        }
        Ok(CursorMove {
            moved,
            value: before.max(up_to),
        })
    }

    async fn cursors(&self, user: &str, conv: &ConvId) -> StoreResult<Cursors> {
        self.check_open()?;
        let row: Option<(Option<i64>, Option<i64>)> = self
            .maybe_row(
                &self.st.SELECT_CURSORS,
                (user, conv.as_str()),
                "read cursors",
            )
            .await?;
        rows::cursors_from_row(row)
    }

    async fn last_seq(&self, conv: &ConvId) -> StoreResult<u64> {
        self.check_open()?;
        self.current_last_seq(conv).await
    }

    async fn conversations(
        &self,
        user: &str,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationSummary>> {
        self.check_open()?;
        self.list_conversations(user, before, limit).await
    }

    async fn create_group(
        &self,
        gid: &str,
        name: &str,
        creator: &str,
        members: &[String],
        ts: i64,
        max_members: u64,
    ) -> StoreResult<GroupInfo> {
        self.check_open()?;
        let all = unique(std::iter::once(creator).chain(members.iter().map(String::as_str)));
        if all.len() as u64 > max_members {
            return Err(StoreError::new(
                StoreErrorKind::LimitExceeded,
                format!("a group has at most {max_members} members"),
            ));
        }
        let slot = self.group_locks.slot(&gid.to_owned());
        let _lock = slot.lock().await;
        if !self.lwt_insert_group(gid, name, creator, ts).await? {
            // Either another group, or our own earlier attempt that failed after the LWT
            // (same creator, name and time): finish that one instead of refusing it.
            let ours = self.group_row(gid).await?.is_some_and(|(_, n, by, at, _)| {
                n.as_deref() == Some(name) && by.as_deref() == Some(creator) && at == Some(ts)
            });
            if !ours {
                return Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    format!("group {gid} exists"),
                ));
            }
        }
        self.write_members(gid, &all, ts).await?;
        Ok(GroupInfo {
            gid: gid.to_owned(),
            name: name.to_owned(),
            created_by: creator.to_owned(),
            created_ts: ts,
            admins: vec![creator.to_owned()],
            member_count: all.len() as u64,
        })
    }

    async fn group(&self, gid: &str) -> StoreResult<Option<GroupInfo>> {
        self.check_open()?;
        let Some(row) = self.group_row(gid).await? else {
            return Ok(None);
        };
        let count = self.member_count(gid).await?;
        Ok(Some(rows::group_from_row(row, count)))
    }

    async fn add_members(
        &self,
        gid: &str,
        users: &[String],
        ts: i64,
        max_members: u64,
    ) -> StoreResult<MembershipChange> {
        self.check_open()?;
        let (_lock, requested, existing) = self.membership_request(gid, users).await?;
        let new: Vec<String> = requested
            .iter()
            .filter(|u| !existing.contains(*u))
            .cloned()
            .collect();
        let count = self.member_count(gid).await?;
        let after = count + new.len() as u64;
        if after > max_members {
            return Err(StoreError::new(
                StoreErrorKind::LimitExceeded,
                format!("a group has at most {max_members} members"),
            ));
        }
        let rows: Vec<(&str, &str, i64)> = new.iter().map(|u| (gid, u.as_str(), ts)).collect();
        self.batch_in_partition(&self.st.INSERT_MEMBER, &rows, "add members")
            .await?;
        // Every requested user's index, not only the new ones: re-asserting it repairs an
        // earlier call that failed between the two tables.
        self.per_user_writes(
            &self.st.INSERT_USER_GROUP,
            &requested,
            gid,
            "add members: user_groups",
        )
        .await?;
        Ok(MembershipChange {
            changed: new,
            member_count: after,
        })
    }

    async fn remove_members(&self, gid: &str, users: &[String]) -> StoreResult<MembershipChange> {
        self.check_open()?;
        let (_lock, requested, existing) = self.membership_request(gid, users).await?;
        let removed: Vec<String> = requested
            .iter()
            .filter(|u| existing.contains(*u))
            .cloned()
            .collect();
        let count = self.member_count(gid).await?;
        if !removed.is_empty() {
            // The authority first: once this lands the users are out, whatever fails next.
            let rows: Vec<(&str, &str)> = removed.iter().map(|u| (gid, u.as_str())).collect();
            self.batch_in_partition(&self.st.DELETE_MEMBER, &rows, "remove members")
                .await?;
            self.write(
                &self.st.REMOVE_ADMINS,
                (removed.clone(), gid),
                "remove members: admins",
            )
            .await?;
        }
        // Stale index rows are harmless (reads check membership) but cleaned when seen.
        self.per_user_writes(
            &self.st.DELETE_USER_GROUP,
            &requested,
            gid,
            "remove members: user_groups",
        )
        .await?;
        Ok(MembershipChange {
            member_count: count.saturating_sub(removed.len() as u64),
            changed: removed,
        })
    }

    async fn set_admin(&self, gid: &str, user: &str, admin: bool) -> StoreResult<()> {
        self.check_open()?;
        let slot = self.group_locks.slot(&gid.to_owned());
        let _lock = slot.lock().await;
        if self.group_row(gid).await?.is_none() {
            return Err(not_found_group(gid));
        }
        if !self.is_member(gid, user).await? {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                format!("{user} is not a member of {gid}"),
            ));
        }
        let st = if admin {
            &self.st.ADD_ADMINS
        } else {
            &self.st.REMOVE_ADMINS
        };
        self.write(st, (vec![user], gid), "set admin").await
    }

    async fn is_member(&self, gid: &str, user: &str) -> StoreResult<bool> {
        self.check_open()?;
        let row: Option<(String,)> = self
            .maybe_row(&self.st.SELECT_MEMBER, (gid, user), "is member")
            .await?;
        Ok(row.is_some())
    }

    async fn members(&self, gid: &str) -> StoreResult<Vec<String>> {
        self.check_open()?;
        if self.group_row(gid).await?.is_none() {
            return Err(not_found_group(gid));
        }
        let rows: Vec<(String,)> = self
            .all_rows(&self.st.SELECT_MEMBERS, (gid,), "members")
            .await?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }

    async fn groups_of(&self, user: &str) -> StoreResult<Vec<String>> {
        self.check_open()?;
        let indexed: Vec<(String,)> = self
            .all_rows(&self.st.SELECT_USER_GROUPS, (user,), "groups of user")
            .await?;
        // The per-user index can hold a stale row after an interrupted removal; membership
        // is decided by group_members.
        let checked = try_join_all(indexed.into_iter().map(|(gid,)| async move {
            let member = self.is_member(&gid, user).await?;
            Ok::<_, StoreError>(member.then_some(gid))
        }))
        .await?;
        Ok(checked.into_iter().flatten().collect())
    }

    async fn set_profile(&self, user: &str, update: ProfileUpdate) -> StoreResult<Profile> {
        self.check_open()?;
        self.write_profile(user, update).await?;
        let mut profiles = self.read_profiles(&[user.to_owned()]).await?;
        profiles.pop().ok_or_else(|| {
            StoreError::new(StoreErrorKind::Internal, "set profile: profile vanished")
        })
    }

    async fn profiles(&self, users: &[String]) -> StoreResult<Vec<Profile>> {
        self.check_open()?;
        self.read_profiles(users).await
    }

    async fn touch_last_seen(&self, user: &str, ts: i64) -> StoreResult<()> {
        self.check_open()?;
        // The write timestamp is the activity time: an older touch never wins.
        self.write(
            &self.st.TOUCH_LAST_SEEN,
            (ts.max(0), ts, user),
            "touch last seen",
        )
        .await
    }

    async fn probe(&self) -> StoreResult<()> {
        self.check_open()?;
        // A last-seen row under a key no user can have (`~` is not allowed in user ids):
        // a real replicated write at the configured consistency, with no schema change.
        let ts = now_ms();
        self.write(
            &self.st.TOUCH_LAST_SEEN,
            (ts.max(0), ts, "~health-probe"),
            "health probe",
        )
        .await
    }

    async fn flush(&self) -> StoreResult<()> {
        // Every write was awaited at the configured consistency before its method returned:
        // nothing is buffered, so flushing is closing. Calls already in flight finish; the
        // session's connections close when the store is dropped.
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::connect::driver_consistency;
    use super::*;

    #[test]
    fn unique_keeps_first_occurrence_order() {
        assert_eq!(
            unique(["b", "a", "b", "c", "a"].into_iter()),
            vec!["b".to_owned(), "a".to_owned(), "c".to_owned()]
        );
    }

    #[test]
    fn consistency_maps_one_to_one() {
        assert_eq!(
            driver_consistency(ConsistencyLevel::default()),
            Consistency::LocalQuorum
        );
        assert_eq!(driver_consistency(ConsistencyLevel::One), Consistency::One);
    }
}
