//! The `chatmq` command: `serve`, `token`, `check-config`.

use anyhow::Context;
use chatmq::config::Config;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "chatmq", version, about = "An MQTT broker with chat built in")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        #[arg(long, env = "CHATMQ_CONFIG", default_value = "broker.toml")]
        config: PathBuf,
        /// MQTT listen address (overrides mqtt.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP listen address for /metrics, /healthz, /readyz (overrides http.listen).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Directory for the embedded store's database (overrides the SQLite path's folder).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Print a JWT for USER (development helper; uses the configured key).
    Token {
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        #[arg(long, env = "CHATMQ_CONFIG", default_value = "broker.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit.
    CheckConfig {
        #[arg(long, env = "CHATMQ_CONFIG", default_value = "broker.toml")]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line, without a backtrace dump.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            http,
            data,
        } => {
            let mut cfg = load(&config)?;
            if let Some(addr) = listen {
                cfg.mqtt.listen = addr;
            }
            if let Some(addr) = http {
                cfg.http.listen = Some(addr);
            }
            if let Some(dir) = data {
                cfg.store.set_data_dir(&dir);
            }
            init_tracing(&cfg);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("chatmq")
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(cfg))
        }
        Command::Token { user, ttl, config } => {
            let cfg = load(&config)?;
            if !chatmq::store::valid_id(&user) {
                anyhow::bail!("user ids are 1-64 characters of [A-Za-z0-9_.-]");
            }
            let token = chatmq::auth::mint(&cfg.auth, &user, Duration::from_secs(ttl))?;
            println!("{token}");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = load(&config)?;
            for w in cfg.store.durability_warnings() {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", config.display());
            Ok(())
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("config {}", path.display()))
}

fn init_tracing(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    // rumqttd logs every connect/disconnect of its links at info: keep it at warn unless
    // RUST_LOG asks for more.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},rumqttd=warn", cfg.log.level)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Listen for signals before the broker reports ready: a SIGTERM right after `chatmq ready`
    // must still shut down gracefully (flushing the store), not kill the process.
    let stop = shutdown_signal()?;
    let server = chatmq::server::Server::start(cfg).await?;
    stop.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C); the handlers are installed when this returns.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
