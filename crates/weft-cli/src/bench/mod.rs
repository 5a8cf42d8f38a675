//! `weft bench`: the load generator behind every benchmark weft publishes.

mod connections;
mod echo;
mod fanout;
mod receiver;
mod report;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::procfs;

/// CPU sample of the server under test: only with `--server-pid` (never this process's own CPU).
pub(crate) fn server_cpu(pid: Option<u32>) -> Option<procfs::CpuSample> {
    pid.and_then(|p| procfs::cpu(Some(p)))
}

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
    Fanout(fanout::FanoutArgs),
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
                if let (false, Some(e)) = (r.connected > 0 && r.messages > 0, &r.first_error) {
                    eprintln!("weft bench: first error: {e}");
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
        Scenario::Fanout(a) => {
            let json = a.json;
            match fanout::run(a) {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_string(&r).expect("serialisable"));
                    } else {
                        r.print();
                    }
                    let problems = r.problems();
                    if problems.is_empty() {
                        return ExitCode::SUCCESS;
                    }
                    eprintln!("weft bench fanout: FAILED: {}", problems.join("; "));
                    return ExitCode::FAILURE;
                }
                Err(e) => Err(e),
            }
        }
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
