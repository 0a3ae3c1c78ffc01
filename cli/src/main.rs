//! `shoal`: one binary for the store, the control plane and the client.
//!
//! `main` only parses arguments, sets up logging and maps errors to an exit
//! code; each subcommand lives in [`commands`].

mod args;
mod commands;
mod duration_arg;
mod kinds;
mod logging;
mod output;
mod store_flags;

use clap::Parser;

use args::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints an error for a person: stack-file diagnostics one per line,
/// anything else as `error: …` with its causes.
fn report(err: &anyhow::Error) {
    if let Some(diagnostics) = err.downcast_ref::<shoal_crd::Diagnostics>() {
        eprintln!("{diagnostics}");
        return;
    }
    let message = err.to_string();
    eprintln!("error: {message}");
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            eprintln!("  caused by: {cause}");
        }
    }
}
