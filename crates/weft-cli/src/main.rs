//! The `weft` command.

mod autobahn;
mod bench;
mod client;
mod echo;
mod echo_loop;
mod procfs;
mod quic;
mod serve;
mod workers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// weft: a WebSocket stack — real-time engine, echo server, interactive client, load generator.
#[derive(Parser, Debug)]
#[command(name = "weft", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the real-time engine: topics pub/sub over WebSockets, HTTP API, metrics, dashboard.
    Serve(Box<serve::ServeArgs>),
    /// Echo every text and binary message back (the server for Autobahn and benchmarks).
    Echo(echo::EchoArgs),
    /// Interactive client: stdin lines are sent as text messages, received messages are printed.
    Client(client::ClientArgs),
    /// Run the Autobahn fuzzingserver's client cases (getCaseCount, runCase, updateReports).
    AutobahnClient(autobahn::AutobahnArgs),
    /// Load generator: echo throughput and latency, connection capacity, fan-out.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::Echo(a) => echo::run(a),
        Command::Client(a) => client::run(a),
        Command::AutobahnClient(a) => autobahn::run(a),
        Command::Bench(a) => bench::run(a),
    }
}
