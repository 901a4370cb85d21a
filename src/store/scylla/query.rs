//! The statement helpers every request goes through (closed check, paging, batches).

use super::*;

impl ScyllaStore {
    pub(super) fn check_open(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the store is closed (shutting down)",
            ));
        }
        Ok(())
    }

    pub(super) async fn exec(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> StoreResult<QueryResult> {
        self.session.execute_unpaged(st, values).await.ctx(what)
    }

    pub(super) async fn write(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> StoreResult<()> {
        self.exec(st, values, what).await.map(drop)
    }

    /// The rows a read returned, not yet typed.
    async fn rows_result(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> StoreResult<scylla::response::query_result::QueryRowsResult> {
        self.exec(st, values, what)
            .await?
            .into_rows_result()
            .ctx(what)
    }

    pub(super) async fn maybe_row<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> StoreResult<Option<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let rows = self.rows_result(st, values, what).await?;
        rows.maybe_first_row::<R>().ctx(what)
    }

    /// All rows of a bounded read (a page, an IN list, a LIMIT).
    pub(super) async fn rows<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let rows = self.rows_result(st, values, what).await?;
        rows.rows::<R>()
            .ctx(what)?
            .collect::<Result<Vec<R>, _>>()
            .ctx(what)
    }

    /// All rows of a partition that may be large (members, a user's conversations), paged by
    /// the driver.
    pub(super) async fn all_rows<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.session
            .execute_iter(st.clone(), values)
            .await
            .ctx(what)?
            .rows_stream::<R>()
            .ctx(what)?
            .try_collect::<Vec<R>>()
            .await
            .ctx(what)
    }

    /// Runs `st` once per value set, in unlogged batches. Every value set must address the
    /// same partition: that is what makes the batch cheap, atomic and isolated.
    pub(super) async fn batch_in_partition<V: SerializeRow>(
        &self,
        st: &PreparedStatement,
        values: &[V],
        what: &str,
    ) -> StoreResult<()> {
        for chunk in values.chunks(BATCH_ROWS) {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in chunk {
                batch.append_statement(st.clone());
            }
            batch.set_is_idempotent(st.get_is_idempotent());
            self.session.batch(&batch, chunk).await.ctx(what)?;
        }
        Ok(())
    }
}
