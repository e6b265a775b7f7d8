//! The `meshlens` binary: parse the command line, start logging, run the command.

use clap::Parser;
use meshlens::cli::{Cli, Command, PolicyCommand};
use meshlens::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: spans are decoded on one thread and freed on another
/// (the writer, the graph), which glibc's arenas handle with locks and consolidation.
/// Counted, for the memory limiter (`[memory]`), which refuses exports on the heap in use.
#[global_allocator]
static ALLOCATOR: meshlens_collector::memory::Counting<mimalloc::MiMalloc> =
    meshlens_collector::memory::Counting(mimalloc::MiMalloc);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ALLOCATOR.enable();
    let cli = Cli::parse();
    let config = match cli.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshlens: {e:#}");
            std::process::exit(2);
        }
    };
    init_tracing(&config);
    match cli.command() {
        Command::Serve => serve(&config, None).await,
        Command::Demo { rate } => serve(&config, Some(rate)).await,
        Command::Migrate => {
            let store = meshlens_storage::Store::connect(&meshlens::store_config(&config)).await?;
            store.migrate().await?;
            store.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Config => {
            print!("{}", toml::to_string(&config)?);
            Ok(())
        }
        Command::Policy {
            action: PolicyCommand::Validate { paths },
        } => match meshlens::validate_policies(&paths) {
            Ok(said) => {
                for line in said {
                    println!("{line}");
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("meshlens: {e}");
                std::process::exit(1);
            }
        },
    }
}

/// Serves until a signal; with `demo`, also sends the demo mesh's spans at that many requests a
/// second to this meshlens.
async fn serve(config: &Config, demo: Option<u32>) -> anyhow::Result<()> {
    let mut running = meshlens::start(config).await?;
    if let Some(rate) = demo {
        running.spawn_demo(f64::from(rate));
    }
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("signal received; draining");
            running.shutdown().await
        }
        e = running.failed() => {
            tracing::error!(error = %e, "a listener failed");
            let _ = running.shutdown().await;
            Err(e)
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
