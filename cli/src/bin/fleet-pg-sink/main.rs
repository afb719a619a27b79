//! `fleet-pg-sink`, also run as `fleet pg-sink`: the optional PostgreSQL table of every job. A program of its own
//! so that its database client costs the fleet's gateways and workers nothing (not even mapped pages).

mod sink;
mod status;

use anyhow::Result;
use clap::Parser;
use fleet_cli::{args, failure, telemetry};

#[derive(Parser)]
#[command(
    name = "fleet pg-sink",
    bin_name = "fleet pg-sink",
    version,
    about = "Keep a PostgreSQL table of every job in step with the fleet's jobs bucket"
)]
struct Cli {
    #[command(flatten)]
    sink: sink::PgSinkArgs,
}

fn main() {
    let code = match run(Cli::parse()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}", failure::line(&e));
            1
        }
    };
    std::process::exit(code)
}

fn run(cli: Cli) -> Result<()> {
    let telemetry = match cli.sink.status {
        true => {
            telemetry::init_quiet();
            None
        }
        false => Some(telemetry::init_service(
            "fleet-pg-sink",
            cli.sink.log.format(),
        )?),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ran = runtime.block_on(sink::run(cli.sink));
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    ran
}
