//! `weft autobahn-client`: weft's client against the Autobahn fuzzingserver.

use std::process::ExitCode;

use clap::Args;
use weft::{ClientBuilder, Config, DeflateConfig, Message};

#[derive(Args, Debug)]
pub(crate) struct AutobahnArgs {
    /// The fuzzingserver, e.g. ws://127.0.0.1:9001
    url: String,
    /// Agent name in the report.
    #[arg(long, default_value = "weft")]
    agent: String,
    /// Do not offer permessage-deflate.
    #[arg(long)]
    no_deflate: bool,
    /// Every connection over HTTP/2 (RFC 8441; cleartext prior knowledge for ws://), e.g. to
    /// the suite through the HTTP/2 bridge (crates/weft/examples/h2_bridge.rs).
    #[arg(long)]
    http2: bool,
    /// Every connection over HTTP/3 (RFC 9220, QUIC), e.g. to the suite through the HTTP/3
    /// bridge (crates/weft/examples/h3_bridge.rs); trust its certificate with --ca-file.
    #[arg(long, conflicts_with = "http2")]
    http3: bool,
    /// Trust this PEM certificate as a root (the bridge's test certificate).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
}

pub(crate) fn run(args: AutobahnArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match rt.block_on(dance(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft autobahn-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(deflate: bool) -> Config {
    Config::default()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .max_fragments(1 << 20)
        .deflate(deflate.then(DeflateConfig::default))
}

async fn dance(args: AutobahnArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    let (http2, http3) = (args.http2, args.http3);
    let mut roots = Vec::new();
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
        roots = weft::tls::certs_from_pem(&pem)?;
    }
    if http3 {
        crate::quic::client(ClientBuilder::new(base))?;
    }
    let builder = move |url: String| {
        let mut b = ClientBuilder::new(url);
        for r in &roots {
            b = b.add_root_certificate(r.to_vec());
        }
        if http2 {
            b = b.http2(weft::h2::Http2Config::default());
        }
        if http3 {
            b = crate::quic::client(b).expect("checked above");
        }
        b
    };
    let mut ws = builder(format!("{base}/getCaseCount")).connect().await?;
    let count: usize = match ws.recv().await {
        Some(Ok(Message::Text(t))) => t.trim().parse()?,
        other => anyhow::bail!("getCaseCount: unexpected {other:?}"),
    };
    let _ = ws.close(None).await;
    eprintln!("{count} cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={}", args.agent);
        if let Err(e) = run_case(builder(url), !args.no_deflate).await {
            eprintln!("case {case}: {e}");
        }
    }
    let mut ws = builder(format!("{base}/updateReports?agent={}", args.agent)).connect().await?;
    let _ = ws.close(None).await;
    Ok(())
}

async fn run_case(builder: ClientBuilder, deflate: bool) -> weft::Result<()> {
    let mut ws = builder.config(config(deflate)).connect().await?;
    crate::echo::echo_messages(&mut ws).await
}
