use crate::cli::DmArgs;
pub async fn run(_args: DmArgs) -> anyhow::Result<i32> {
    anyhow::bail!("todo")
}
