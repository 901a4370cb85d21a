//! The steps of `append_message`, `set_cursor` and friends: seq seeding, dedup lookup,
//! bookkeeping side effects, pending deliveries.

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
}
