//! The steps of the group requests: membership reads and writes, the group-creation LWT.

use super::*;

impl ScyllaStore {
    /// The first steps of a membership change: the group's lock (held until the returned
    /// guard drops), the group checked, the requested users deduplicated, and which of them
    /// are members now.
    pub(super) async fn membership_request(
        &self,
        gid: &str,
        users: &[String],
    ) -> StoreResult<(
        tokio::sync::OwnedMutexGuard<()>,
        Vec<String>,
        HashSet<String>,
    )> {
        let lock = self.group_locks.slot(&gid.to_owned()).lock_owned().await;
        if self.group_row(gid).await?.is_none() {
            return Err(not_found_group(gid));
        }
        let requested = unique(users.iter().map(String::as_str));
        let existing = self.members_among(gid, &requested).await?;
        Ok((lock, requested, existing))
    }

    pub(super) async fn group_row(&self, gid: &str) -> StoreResult<Option<GroupRow>> {
        self.maybe_row(&self.st.SELECT_GROUP, (gid,), "read group")
            .await
    }

    pub(super) async fn member_count(&self, gid: &str) -> StoreResult<u64> {
        let n: Option<(i64,)> = self
            .maybe_row(&self.st.COUNT_MEMBERS, (gid,), "count members")
            .await?;
        counter_from_db(n.map_or(0, |(n,)| n))
    }

    /// Which of `users` are members of `gid`.
    pub(super) async fn members_among(
        &self,
        gid: &str,
        users: &[String],
    ) -> StoreResult<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in users.chunks(IN_LIST_MAX) {
            let rows: Vec<(String,)> = self
                .rows(
                    &self.st.SELECT_MEMBERS_IN,
                    (gid, chunk.to_vec()),
                    "read members",
                )
                .await?;
            found.extend(rows.into_iter().map(|(u,)| u));
        }
        Ok(found)
    }

    /// Writes memberships: `group_members` (the authority) first, then each user's index.
    pub(super) async fn write_members(
        &self,
        gid: &str,
        users: &[String],
        ts: i64,
    ) -> StoreResult<()> {
        let rows: Vec<(&str, &str, i64)> = users.iter().map(|u| (gid, u.as_str(), ts)).collect();
        self.batch_in_partition(&self.st.INSERT_MEMBER, &rows, "write members")
            .await?;
        self.per_user_writes(&self.st.INSERT_USER_GROUP, users, gid, "write user_groups")
            .await
    }

    /// Runs `st` with `(user, gid)` for each user: distinct partitions, so no batch, but a
    /// bounded number in flight.
    pub(super) async fn per_user_writes(
        &self,
        st: &PreparedStatement,
        users: &[String],
        gid: &str,
        what: &str,
    ) -> StoreResult<()> {
        let mut writes = Vec::with_capacity(users.len());
        for user in users {
            writes.push(self.write(st, (user.as_str(), gid), what));
        }
        futures_util::stream::iter(writes)
            .buffer_unordered(FANOUT_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    pub(super) async fn lwt_insert_group(
        &self,
        gid: &str,
        name: &str,
        creator: &str,
        ts: i64,
    ) -> StoreResult<bool> {
        let what = "create group";
        let rows = self
            .exec(
                &self.st.INSERT_GROUP_IF_NOT_EXISTS,
                (gid, name, creator, ts, vec![creator]),
                what,
            )
            .await?
            .into_rows_result()
            .ctx(what)?;
        // The first column of an LWT result is `[applied]`.
        let row: Row = rows.first_row().ctx(what)?;
        match row.columns.first() {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(StoreError::new(
                StoreErrorKind::Internal,
                format!("create group: unexpected LWT result {other:?}"),
            )),
        }
    }
}

pub(super) fn not_found_group(gid: &str) -> StoreError {
    StoreError::new(StoreErrorKind::NotFound, format!("no group {gid}"))
}

/// Distinct values, first occurrence order kept.
pub(super) fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    items
        .filter(|u| seen.insert(*u))
        .map(str::to_owned)
        .collect()
}
