//! The `switchboard` binary: parse arguments, load config, bind, serve, drain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use switchboard::config::{self, Config, LogFormat, Sources};
use tracing_subscriber::EnvFilter;

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

/// Switchboard: signaling, rendezvous and relay broker for WebRTC and P2P systems.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file layered over config/default.toml (environment variables
    /// SWITCHBOARD_<SECTION>__<KEY> override both).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective settings (secrets redacted) and exit.
    #[arg(long)]
    check_config: bool,
}

fn init_tracing(cfg: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stdout);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match config::load(&Sources {
        file: cli.config.clone(),
        ..Sources::default()
    }) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("switchboard: invalid configuration:");
            for line in &errs.0 {
                eprintln!("  {line}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        let effective = serde_json::to_string(&cfg.redacted()).expect("config serializes");
        println!("{effective}");
        return ExitCode::SUCCESS;
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if cfg.server.worker_threads > 0 {
        rt.worker_threads(cfg.server.worker_threads);
    }
    let rt = rt.build().expect("tokio runtime");
    rt.block_on(async move {
        init_tracing(&cfg);
        // Before binding: a SIGTERM once the port is open must drain, not kill.
        let shutdown = switchboard::shutdown_signal();
        let started = match switchboard::start(cfg).await {
            Ok(s) => s,
            Err(switchboard::StartError::Config(errs)) => {
                eprintln!("switchboard: invalid configuration:");
                for line in &errs {
                    eprintln!("  {line}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(switchboard::StartError::Io(e)) => {
                eprintln!("switchboard: {e}");
                return ExitCode::FAILURE;
            }
        };
        match started.serve(shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
