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
        cli::Command::Trace(args) => tracer::commands::trace::run(args),
        cli::Command::List(args) => tracer::commands::list::run(args),
        cli::Command::Doctor(args) => tracer::commands::doctor::run(args),
        cli::Command::Watch(args) => tracer::commands::watch::run(args),
        cli::Command::Check(args) => tracer::commands::check::run(args),
        cli::Command::Report(args) => tracer::commands::report::run(&args.file, args.format),
    };
    // Temporary nft trace tables never outlive the run (also after an error).
    tracer::system::firewall::nftrace::cleanup();
    match result {
        Ok(code) => std::process::exit(code),
        // The reader of our output went away (`tracer list --json | head -1`): a normal end.
        Err(err) if tracer::output::is_closed_pipe(&err) => std::process::exit(error::EXIT_OK),
        Err(err) => {
            eprintln!("tracer: {}", tracer::output::escape(&error::describe(&err)));
            std::process::exit(error::exit_code(&err));
        }
    }
}
