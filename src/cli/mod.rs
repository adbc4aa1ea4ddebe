//! The `eddy` command line: `serve`, `demo`, the operator commands (`dlq`, `requests`)
//! that talk to a running server, and `cluster check`, which looks at the NATS side of a
//! cluster. Parses arguments, sets up logging and the runtime, and hands over to
//! [`crate::server`], [`crate::demo`], [`remote`] or `cluster`.

mod cluster;
pub mod remote;
mod table;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::config::Options;
use crate::server::Server;

#[derive(Parser)]
#[command(
    name = "eddy",
    version,
    about = "A single-binary engine for event-driven AI"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded store under ./data by default)
    Serve(Box<Options>),
    /// Run the whole three-step flow on this machine, offline, and print each step
    Demo,
    /// Inspect and re-drive the dead-letter queue of a running server
    Dlq {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: remote::DlqCommand,
    },
    /// List requests and show their timelines on a running server
    Requests {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: remote::RequestsCommand,
    },
    /// Check the NATS side of a cluster of eddy nodes
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

/// Logs go to stderr (stdout carries only the `listening on` line): human-readable by
/// default, JSON with `--log-format json`. `RUST_LOG` overrides the level.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("eddy=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::egress::install_crypto();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eddy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(options) => runtime.block_on(serve(*options)),
        Command::Demo => runtime.block_on(crate::demo::run()),
        Command::Dlq { remote, command } => runtime.block_on(remote::dlq(remote, command)),
        Command::Requests { remote, command } => {
            runtime.block_on(remote::requests(remote, command))
        }
        Command::Cluster { command } => runtime.block_on(cluster::run(command)),
    }
}

async fn serve(options: Options) -> ExitCode {
    let config = match options.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("eddy: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_json);
    let listen = config.listen;
    let data = config.data.clone();
    let metrics = match config.metrics_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!("eddy: cannot listen on {addr} for /metrics: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let server = match Server::open(config.clone()).await {
        Ok(s) => s,
        Err(e) => {
            match &config.cluster {
                Some(urls) => eprintln!("eddy: cannot start a cluster node on {urls}: {e}"),
                None => eprintln!("eddy: cannot open the store at {}: {e}", data.display()),
            }
            return ExitCode::FAILURE;
        }
    };
    if let Some(key) = server.new_key() {
        eprintln!("created an API key for project \"default\" (shown only once): {key}");
    }
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("eddy: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => {
            if let Some(warning) = config.public_url_warning(addr) {
                tracing::warn!("{warning}");
            }
            println!("listening on http://{addr}");
            let _ = std::io::stdout().flush();
        }
        Err(e) => {
            eprintln!("eddy: {e}");
            return ExitCode::FAILURE;
        }
    }
    let server = match metrics {
        Some(listener) => {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("serving /metrics on http://{addr}/metrics");
            }
            server.with_metrics_listener(listener)
        }
        None => server,
    };
    match server.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eddy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}
