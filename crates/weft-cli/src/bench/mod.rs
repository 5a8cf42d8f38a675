//! `weft bench`: the load generator behind every benchmark weft publishes.

mod connections;
mod echo;
mod report;

use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Echo load: request-response (default) or pipelined (`--in-flight N`); msg/s, RTT
    /// percentiles and, with `--server-pid`, server CPU per message.
    Echo(echo::EchoArgs),
    /// Connection capacity: open N idle connections, hold them with pings, report the connect
    /// rate and (with `--server-pid`) server RSS per connection.
    Connections(connections::ConnArgs),
    /// Pub/sub fan-out through the engine (`weft serve`): deliveries/s, end-to-end latency,
    /// gaps and duplicates per subscriber.
    Fanout(FanoutArgs),
}

/// The flag surface of the fan-out scenario, fixed now so scripts can be written against it.
#[derive(Args, Debug)]
struct FanoutArgs {
    /// Engine URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Topic name.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Publish rate (messages/s); as fast as possible if absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Payload size in bytes (includes the send timestamp).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Server process to measure.
    #[arg(long)]
    server_pid: Option<u32>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: BenchArgs) -> ExitCode {
    let result = match args.scenario {
        Scenario::Echo(a) => {
            let json = a.json;
            echo::run(a).map(|r| {
                if json {
                    println!("{}", serde_json::to_string(&r).expect("serialisable"));
                } else {
                    r.print();
                }
                r.connected > 0 && r.messages > 0
            })
        }
        Scenario::Connections(a) => {
            let json = a.json;
            connections::run(a).map(|r| {
                let r = connections::finish(r);
                if json {
                    println!("{}", serde_json::to_string(&r).expect("serialisable"));
                } else {
                    r.print();
                }
                r.opened > 0
            })
        }
        Scenario::Fanout(a) => Err(anyhow::anyhow!(
            "fanout needs the real-time engine (`weft serve`), which is not built yet; \
             flags accepted: --url {} --subscribers {} --topic {} --rate {:?} --size {} --duration {} --server-pid {:?} --json {}",
            a.url,
            a.subscribers,
            a.topic,
            a.rate,
            a.size,
            a.duration,
            a.server_pid,
            a.json
        )),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("weft bench: no successful connection or message");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("weft bench: {e}");
            ExitCode::FAILURE
        }
    }
}
