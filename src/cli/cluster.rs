//! `eddy cluster …`: operator commands about the NATS side of a cluster of eddy nodes.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::cluster::{Settings, check, connect};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Check that the NATS servers are set up for eddy (JetStream, servers and versions,
    /// every bucket, stream and the work consumer) and say what to fix; exit status 1 if
    /// eddy cannot run as set up
    Check(Target),
}

/// Which NATS servers, and which installation on them.
#[derive(Args)]
pub struct Target {
    /// The NATS servers, comma-separated: nats://10.0.0.1:4222,nats://10.0.0.2:4222,…
    #[arg(long = "cluster", env = "EDDY_CLUSTER", value_name = "URLS")]
    servers: String,
    /// The prefix of eddy's buckets, streams and subjects on these servers
    #[arg(
        long = "cluster-prefix",
        env = "EDDY_CLUSTER_PREFIX",
        default_value = "eddy"
    )]
    prefix: String,
    /// Copies of every bucket and stream: 3 for a cluster, 1 for a single server
    #[arg(
        long = "cluster-replicas",
        env = "EDDY_CLUSTER_REPLICAS",
        default_value_t = 3
    )]
    replicas: usize,
}

pub async fn run(command: ClusterCommand) -> ExitCode {
    let ClusterCommand::Check(target) = command;
    let servers = match connect::parse_servers(&target.servers) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("eddy: --cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let mut settings = Settings::new(servers);
    settings.prefix = target.prefix;
    settings.replicas = target.replicas;
    println!(
        "checking {} for eddy (prefix {:?}, {} replica(s))",
        settings.servers.join(","),
        settings.prefix,
        settings.replicas
    );
    let report = check::check(&settings).await;
    print!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
