//! Profile rows and last seen: the reads and writes behind `set_profile` and `profiles`.

use super::*;

impl ScyllaStore {
    /// The fields `update` names, in one batch on the user's profile row.
    pub(super) async fn write_profile(&self, user: &str, update: ProfileUpdate) -> StoreResult<()> {
        let text = |v: Option<String>| v.map(CqlValue::Text);
        let mut statements: Vec<&PreparedStatement> = Vec::new();
        let mut values: Vec<(Option<CqlValue>, &str)> = Vec::new();
        if let Some(v) = update.display_name {
            statements.push(&self.st.SET_DISPLAY_NAME);
            values.push((text(v), user));
        }
        if let Some(v) = update.avatar_url {
            statements.push(&self.st.SET_AVATAR_URL);
            values.push((text(v), user));
        }
        if let Some(v) = update.status {
            statements.push(&self.st.SET_STATUS);
            values.push((text(v), user));
        }
        if let Some(v) = update.hide_last_seen {
            statements.push(&self.st.SET_HIDE_LAST_SEEN);
            values.push((Some(CqlValue::Boolean(v)), user));
        }
        if !statements.is_empty() {
            // One partition (the user's profile row): applied atomically.
            let mut batch = Batch::new(BatchType::Unlogged);
            for st in statements {
                batch.append_statement(st.clone());
            }
            batch.set_is_idempotent(true);
            self.session
                .batch(&batch, &values)
                .await
                .ctx("set profile")?;
        }
        Ok(())
    }

    /// Each user's profile row with their last seen (defaults for a user with neither).
    pub(super) async fn read_profiles(&self, users: &[String]) -> StoreResult<Vec<Profile>> {
        try_join_all(users.iter().map(|user| async move {
            let (profile, last_seen) = try_join(
                self.maybe_row::<ProfileRow>(&self.st.SELECT_PROFILE, (user,), "read profile"),
                self.maybe_row::<(Option<i64>,)>(
                    &self.st.SELECT_LAST_SEEN,
                    (user,),
                    "read last seen",
                ),
            )
            .await?;
            Ok::<_, StoreError>(rows::profile_from_row(
                user,
                profile,
                last_seen.and_then(|(ts,)| ts),
            ))
        }))
        .await
    }
}
