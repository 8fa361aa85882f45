//! `arcbox-agent-sim`: serve the simulated agent, or run the demo.

use std::process::ExitCode;

use arcbox_agent_wire::transport::Address;

use arcbox_agent_core::transport::AnyListener;
use arcbox_agent_sim::{Scenario, SimAgent, demo};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The arcbox-agent simulator: the agent core on fakes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the simulated agent until a Shutdown RPC or Ctrl-C.
    Serve {
        /// Where to listen: unix:/path or tcp:HOST:PORT.
        #[arg(long, default_value = "unix:/tmp/arcbox-agent-sim.sock")]
        listen: String,
        /// How the simulated guest behaves.
        #[arg(long, value_enum, default_value_t = Scenario::Healthy)]
        scenario: Scenario,
    },
    /// Start a simulator and walk a client through every RPC.
    Demo {
        /// How the simulated guest behaves.
        #[arg(long, value_enum, default_value_t = Scenario::Healthy)]
        scenario: Scenario,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let executor = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("arcbox-agent-sim: cannot start the async runtime: {err}");
            return ExitCode::from(70);
        }
    };
    executor.block_on(async {
        match args.command {
            Command::Serve { listen, scenario } => serve(&listen, scenario).await,
            Command::Demo { scenario } => match demo::run(scenario, &mut std::io::stdout()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("demo failed: {err}");
                    ExitCode::from(1)
                }
            },
        }
    })
}

async fn serve(listen: &str, scenario: Scenario) -> ExitCode {
    let address = match Address::parse(listen) {
        Ok(a) => a,
        Err(err) => {
            eprintln!("arcbox-agent-sim: {err}");
            return ExitCode::from(64);
        }
    };
    let listener = match AnyListener::bind(&address).await {
        Ok(l) => l,
        Err(err) => {
            eprintln!("arcbox-agent-sim: cannot listen on {address}: {err}");
            return ExitCode::from(71);
        }
    };
    eprintln!(
        "arcbox-agent-sim: serving scenario {scenario:?} on {address} (Ctrl-C or a Shutdown RPC stops it)"
    );
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        }
    });
    SimAgent::new(scenario).await.serve(listener, stop).await;
    if let Address::Unix(path) = &address {
        let _ = std::fs::remove_file(path);
    }
    eprintln!("arcbox-agent-sim: stopped");
    ExitCode::SUCCESS
}
