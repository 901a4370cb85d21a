use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = chatmq_loadtest::cli::Cli::parse();
    match chatmq_loadtest::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("chatmq-loadtest: {e:#}");
            std::process::exit(2);
        }
    }
}
