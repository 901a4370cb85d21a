use crate::cli::GroupArgs;
pub async fn run(_args: GroupArgs) -> anyhow::Result<i32> {
    anyhow::bail!("todo")
}
