//! The steps of `append_message`, `set_cursor` and friends: seq seeding, dedup lookup,
//! bookkeeping side effects, pending deliveries; listing conversations.

use super::*;

impl ScyllaStore {
    /// Reads a conversation's highest stored seq (see `seq` for why this is exact).
    pub(super) async fn seed_last_seq(&self, conv: &ConvId) -> StoreResult<u64> {
        let hint: Option<(Option<i64>, Option<i64>)> = self
            .maybe_row(
                &self.st.SELECT_CONV_META,
                (conv.as_str(),),
                "seed seq: conv_meta",
            )
            .await?;
        let hint = counter_from_db(hint.and_then(|(s, _)| s).unwrap_or(0))?;
        let mut walk = plan::SeedWalk::new(hint, self.bucket_size);
        loop {
            let max: Option<(i64,)> = self
                .maybe_row(
                    &self.st.SELECT_MAX_SEQ_IN_BUCKET,
                    (conv.as_str(), counter_to_db(walk.bucket())?),
                    "seed seq: probe bucket",
                )
                .await?;
            let max = max.map(|(s,)| counter_from_db(s)).transpose()?;
            if let Some(last) = walk.feed(max) {
                return Ok(last);
            }
        }
    }

    /// The conversation's highest seq, from the allocator (seeding it if needed).
    pub(super) async fn current_last_seq(&self, conv: &ConvId) -> StoreResult<u64> {
        let slot = self.seqs.slot(conv);
        let mut alloc = slot.lock().await;
        match alloc.last {
            Some(last) => Ok(last),
            None => {
                let last = self.seed_last_seq(conv).await?;
                alloc.last = Some(last);
                Ok(last)
            }
        }
    }

    /// The original message of `(sender, cid)`, if its dedup row is live and still points at
    /// it (a seq re-used after a failed write leaves a stale dedup row: see `seq`).
    pub(super) async fn find_duplicate(
        &self,
        sender: &str,
        cid: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        let hit: Option<(String, i64)> = self
            .maybe_row(&self.st.SELECT_DEDUP, (sender, cid), "dedup lookup")
            .await?;
        let Some((conv, seq)) = hit else {
            return Ok(None);
        };
        let original = self.message(&ConvId(conv), counter_from_db(seq)?).await?;
        Ok(original.filter(|m| m.from == sender && m.cid == cid))
    }

    /// Everything an append records besides the message and dedup rows. Idempotent: the
    /// duplicate path replays it (`replay`) to finish an append whose bookkeeping failed.
    pub(super) async fn record_side_effects(
        &self,
        m: &StoredMessage,
        replay: bool,
    ) -> StoreResult<()> {
        let seq = counter_to_db(m.seq)?;
        let conv = m.conv.as_str();
        let mut writes: Vec<BoxFuture<'_, StoreResult<()>>> = vec![Box::pin(self.write(
            &self.st.UPSERT_CONV_META,
            (seq, seq, id_to_db(m.id), m.ts, conv),
            "append_message: conv_meta",
        ))];
        if let Some(kind @ ConvKind::Direct { a, b }) = m.conv.kind() {
            for user in [a, b] {
                writes.push(Box::pin(self.write(
                    &self.st.UPSERT_USER_CONV,
                    (seq, seq, m.ts, user, conv),
                    "append_message: user_convs",
                )));
            }
            if let Some(recipient) = kind.peer_of(&m.from) {
                writes.push(Box::pin(self.add_pending(recipient, m, replay)));
            }
        }
        try_join_all(writes).await.map(drop)
    }

    pub(super) async fn add_pending(
        &self,
        recipient: &str,
        m: &StoredMessage,
        replay: bool,
    ) -> StoreResult<()> {
        if replay {
            // Do not queue again what the recipient already acknowledged.
            let cursors = self.cursors(recipient, &m.conv).await?;
            if cursors.delivered_up_to >= m.seq {
                return Ok(());
            }
        }
        let seq = counter_to_db(m.seq)?;
        let id = id_to_db(m.id);
        let conv = m.conv.as_str();
        try_join(
            self.write(
                &self.st.INSERT_PENDING,
                (recipient, id, conv, seq),
                "append_message: pending",
            ),
            self.write(
                &self.st.INSERT_PENDING_BY_CONV,
                (recipient, conv, seq, id),
                "append_message: pending_by_conv",
            ),
        )
        .await
        .map(drop)
    }

    /// Removes `user`'s pending deliveries in `conv` with seq ≤ `up_to`.
    pub(super) async fn clear_pending(
        &self,
        user: &str,
        conv: &ConvId,
        up_to: i64,
    ) -> StoreResult<()> {
        let covered: Vec<(i64, i64)> = self
            .all_rows(
                &self.st.SELECT_PENDING_BY_CONV,
                (user, conv.as_str(), up_to),
                "set_cursor: covered pending",
            )
            .await?;
        if covered.is_empty() {
            return Ok(());
        }
        let deletes: Vec<(&str, i64)> = covered.iter().map(|&(_, id)| (user, id)).collect();
        // All in the partition of `user` in `pending`.
        self.batch_in_partition(
            &self.st.DELETE_PENDING,
            &deletes,
            "set_cursor: clear pending",
        )
        .await?;
        // Pending rows go first: if this range delete fails, a retry still finds them.
        self.write(
            &self.st.DELETE_PENDING_BY_CONV_UP_TO,
            (user, conv.as_str(), up_to),
            "set_cursor: clear pending_by_conv",
        )
        .await
    }

    /// DMs from the user's own partition merged with their groups' activity, ranked.
    pub(super) async fn list_conversations(
        &self,
        user: &str,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationSummary>> {
        // A user's DMs come from their own partition; groups keep their activity in
        // conv_meta (fanning every group message out to 50,000 member indexes would not
        // scale), so they are merged in here. Listing is rare next to sending.
        let dms: Vec<(String, Option<i64>, Option<i64>)> = self
            .all_rows(&self.st.SELECT_USER_CONVS, (user,), "conversations: dms")
            .await?;
        let mut candidates = Vec::with_capacity(dms.len());
        for (conv, last_seq, last_ts) in dms {
            candidates.push(Candidate {
                conv: ConvId(conv),
                last_ts: last_ts.unwrap_or(0),
                last_seq: counter_from_db(last_seq.unwrap_or(0))?,
                name: None,
            });
        }
        let gids = self.groups_of(user).await?;
        let groups = try_join_all(gids.iter().map(|gid| async move {
            let conv = ConvId::group(gid);
            let (meta, group) = try_join(
                self.maybe_row::<(Option<i64>, Option<i64>)>(
                    &self.st.SELECT_CONV_META,
                    (conv.as_str(),),
                    "conversations: group activity",
                ),
                self.group_row(gid),
            )
            .await?;
            let Some((_, name, _, created_ts, _)) = group else {
                return Ok(None);
            };
            let (last_seq, last_ts) = meta.unwrap_or((None, None));
            Ok::<_, StoreError>(Some(Candidate {
                conv,
                // An empty group's activity is its creation.
                last_ts: last_ts.or(created_ts).unwrap_or(0),
                last_seq: counter_from_db(last_seq.unwrap_or(0))?,
                name,
            }))
        }))
        .await?;
        candidates.extend(groups.into_iter().flatten());

        let ranked = rows::rank_conversations(candidates, before, limit);
        try_join_all(ranked.into_iter().map(|c| async move {
            let (last_message, cursors) = try_join(
                self.message(&c.conv, c.last_seq),
                self.cursors(user, &c.conv),
            )
            .await?;
            Ok::<_, StoreError>(rows::summary(c, last_message, cursors))
        }))
        .await
    }
}
