use clap::Parser as _;
use tracer::{cli, error};

fn main() {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        cli::Command::Trace(args) => tracer::trace::run(args),
        cli::Command::List(args) => tracer::list::run(args),
        cli::Command::Doctor(args) => tracer::doctor::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("tracer: {}", error::describe(&err));
            std::process::exit(error::exit_code(&err));
        }
    }
}
