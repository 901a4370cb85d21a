use crate::cli::OfflineArgs;
pub async fn run(_args: OfflineArgs) -> anyhow::Result<i32> {
    anyhow::bail!("todo")
}
