//! Entry point: parse flags, load config, start tracing and the runtime, run the subcommand.
//! Errors become one line on stderr and exit code 2.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use callguard::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("callguard: {e}");
            return ExitCode::from(2);
        }
    };
    // RUST_LOG, when set, wins over log_level, also on a config reload.
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Log lines go to stderr from a thread of their own, never from a call's task.
    let (log_writer, log_flush) =
        callguard::logwriter::start(std::io::stderr(), callguard::logwriter::QUEUE_LINES);
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer)
        .with_ansi(false)
        .with_filter_reloading();
    let filter_handle = subscriber.reload_handle();
    subscriber.init();
    let set_log_level: cli::SetLogLevel = Box::new(move |level: &str| {
        if pinned {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| format!("{level:?}: {e}"))?;
        filter_handle.reload(filter).map_err(|e| e.to_string())
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callguard: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(cli::run(cli, config, set_log_level));
    // Every queued log line is written before anything else is said or the process ends.
    drop(runtime);
    drop(log_flush);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("callguard: {e}");
            ExitCode::from(2)
        }
    }
}
