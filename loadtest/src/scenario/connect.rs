use crate::cli::ConnectArgs;
pub async fn run(_args: ConnectArgs) -> anyhow::Result<i32> {
    anyhow::bail!("todo")
}
