//! The `partlens` binary: a shell around the library. It parses the command line (`cli/`),
//! sets up logging, calls the library and prints.

mod cli;

use std::io::IsTerminal;

use clap::Parser;
use cli::{run, Cli};

fn main() {
    // Like other command-line tools, stop quietly when the reader of our output goes away
    // (`partlens info … | head`) instead of panicking on a broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARTLENS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("partlens={level},warn")));
    // Colour only on a terminal, and never when NO_COLOR is set: escape codes in a log file
    // or a pipe are noise.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .without_time()
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
