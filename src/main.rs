//! The `switchboard` binary: parse arguments, load config, bind, serve, drain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use switchboard::config::{self, Config, LogFormat, Sources};
use switchboard::node::Node;
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

/// Says at start who may connect without a token, and warns where that is
/// everyone or no one.
fn log_admission(node: &Node) {
    use switchboard::config::AnonymousMode as M;
    let listen = &node.cfg.server.listen;
    match node.anonymous_mode() {
        M::TokenRequired => tracing::info!("auth: every peer needs a token (auth.jwt)"),
        M::LoopbackOnly => tracing::info!(
            %listen,
            "auth: anonymous peers allowed because listening on loopback (no auth.jwt key; auth.anonymous = \"loopback\")"
        ),
        M::Allowed => tracing::warn!(
            %listen,
            "auth: anonymous peers allowed by auth.anonymous=allow (no auth.jwt key): any client may take any peer id that is free"
        ),
        M::RefusedNotLoopback => tracing::warn!(
            %listen,
            "auth: anonymous peers refused: every peer needs a token, and no auth.jwt key is configured, so every hello will be refused (not listening on loopback; set auth.jwt, or auth.anonymous = \"allow\" on a trusted network)"
        ),
        M::Refused => tracing::warn!(
            "auth: anonymous peers refused by auth.anonymous=deny: every peer needs a token, and no auth.jwt key is configured, so every hello will be refused"
        ),
    }
    if node.cfg.http.admin_token.is_empty() {
        tracing::info!("admin endpoints answer plain loopback requests only (no http.admin_token)");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut cfg = match config::load(&Sources {
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
    let effective = serde_json::to_string(&cfg.redacted()).expect("config serializes");
    if cli.check_config {
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
        // Before the node is built: it sizes its connection limit from this.
        let open_files = switchboard::server::raise_open_files_limit();
        let fds = match switchboard::server::plan_fds(open_files, &cfg.server) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("switchboard: invalid configuration:\n  {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if fds.max_connections < cfg.server.max_connections {
            // A warning when the operator asked for more than fits; the
            // built-in default (sized for a large host) is fitted quietly.
            let asked = cfg.server.max_connections
                != switchboard::config::ServerConfig::default().max_connections;
            let (configured, effective, limit) =
                (cfg.server.max_connections, fds.max_connections, fds.limit);
            let (pending, reserved) = (cfg.server.max_pending, cfg.server.reserved_fds);
            if asked {
                tracing::warn!(configured, effective, open_files_limit = limit, max_pending = pending, reserved_fds = reserved,
                    "server.max_connections lowered to fit the open-file limit");
            } else {
                tracing::info!(default = configured, effective, open_files_limit = limit, max_pending = pending, reserved_fds = reserved,
                    "server.max_connections fitted to the open-file limit");
            }
            cfg.server.max_connections = fds.max_connections;
        }
        let node = match Node::build(cfg).await {
            Ok(n) => n,
            Err(errs) => {
                eprintln!("switchboard: invalid configuration:");
                for line in &errs {
                    eprintln!("  {line}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let (bus, store) = node.backend_names();
        tracing::info!(node = %node.id, bus, store, config = %effective, "starting switchboard {}", env!("CARGO_PKG_VERSION"));
        log_admission(&node);
        // Before binding: a SIGTERM once the port is open must drain, not kill.
        let shutdown = switchboard::shutdown_signal();
        let listener = match switchboard::bind_listener(node.cfg.listen_addr()) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %node.cfg.server.listen, error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        // The STUN responder binds before the node announces itself: a port
        // that is taken stops the start, naming the key.
        let stun = match switchboard::rendezvous::bind_stun(&node.cfg.stun).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the STUN responder");
                eprintln!("switchboard: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The recorder first: the STUN responder counts from its first datagram.
        let handle = switchboard::metrics::install();
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        metrics::gauge!(switchboard::metrics::WORKER_THREADS).set(workers as f64);
        metrics::gauge!(switchboard::metrics::OPEN_FILES_LIMIT).set(fds.limit as f64);
        metrics::gauge!(switchboard::metrics::MAX_CONNECTIONS)
            .set(node.cfg.server.max_connections as f64);
        metrics::gauge!(switchboard::metrics::HTTP_MAX_PENDING)
            .set(node.cfg.server.max_pending as f64);
        node.start_stun(stun);
        let addr = listener.local_addr().expect("bound address");
        tracing::info!(
            worker_threads = workers,
            open_files_limit = fds.limit,
            max_connections = node.cfg.server.max_connections,
            max_pending = node.cfg.server.max_pending,
            "listening on {addr}"
        );
        match switchboard::run(listener, node, handle, shutdown).await {
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
