//! Command line: clap types and the subcommands. The only module that prints to stdout.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Overrides};
use crate::number::CallerNumber;
use crate::rules::{self, Entry, ListKind, Snapshot};
use crate::store::{Store, StoreError, current_actor, format_time};

/// callguard: call screening for Asterisk and FreeSWITCH.
#[derive(Debug, Parser)]
#[command(name = "callguard", version, about)]
pub struct Cli {
    /// Config file (TOML). Default: /etc/callguard/callguard.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Lists store: a redis:// URL or a path for the embedded store.
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the FastAGI server.
    Serve(ServeArgs),
    /// Print the canonical form of numbers (from arguments, or one per line from stdin).
    Normalize {
        /// Default country for numbers without a country code (e.g. RU, GB, US).
        #[arg(long, value_name = "CC")]
        country: Option<String>,
        /// Numbers in any format.
        numbers: Vec<String>,
    },
    /// Add numbers to the block list.
    Block(AddArgs),
    /// Remove numbers from the block list.
    Unblock(RemoveArgs),
    /// Add numbers to the allow list (wins over the block list).
    Allow(AddArgs),
    /// Remove numbers from the allow list.
    Unallow(RemoveArgs),
    /// Show both lists.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the verdict for a number and the entry that decided it.
    Check {
        /// Number in any format.
        number: String,
    },
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// FastAGI listen address (default 127.0.0.1:4573).
    #[arg(long, value_name = "ADDR")]
    pub agi_listen: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// `block` / `allow` arguments.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Numbers in any format.
    #[arg(required = true)]
    pub numbers: Vec<String>,
    /// Why (stored with the entry, set as CALLGUARD_REASON).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Expire after this long (e.g. 90m, 12h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
}

/// `unblock` / `unallow` arguments.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Numbers in any format.
    #[arg(required = true)]
    pub numbers: Vec<String>,
}

/// Errors a subcommand reports (one line, exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Server.
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
    /// Terminal output.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    /// Bad argument.
    #[error("{0}")]
    Usage(String),
}

impl Cli {
    /// Loads the configuration this invocation asks for.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut overrides = Overrides {
            store: self.store.clone(),
            ..Overrides::default()
        };
        match &self.command {
            Command::Serve(args) => overrides.agi_listen = args.agi_listen.clone(),
            Command::Normalize { country, .. } => overrides.default_country = country.clone(),
            _ => {}
        }
        Config::load(self.config.as_deref(), std::env::vars(), &overrides)
    }
}

/// Runs the subcommand with an already loaded config.
pub async fn run(cli: Cli, config: Config) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Serve(args) => {
            if args.print_config {
                write!(out, "{}", config.to_toml())?;
                return Ok(ExitCode::SUCCESS);
            }
            drop(out);
            crate::server::serve(config, CancellationToken::new()).await?;
        }
        Command::Normalize { numbers, .. } => {
            let normalizer = config.normalizer()?;
            if numbers.is_empty() {
                // Bytes, not `lines()`: one line of bad UTF-8 (an exported CSV in cp1251)
                // must print a result for that line, not abort the whole run.
                let mut stdin = std::io::stdin().lock();
                let mut line = Vec::new();
                while stdin.read_until(b'\n', &mut line)? > 0 {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    writeln!(out, "{}", normalizer.normalize(text))?;
                    line.clear();
                }
            } else {
                for n in &numbers {
                    writeln!(out, "{}", normalizer.normalize(n))?;
                }
            }
        }
        Command::Block(args) => add(&config, ListKind::Block, args, &mut out).await?,
        Command::Allow(args) => add(&config, ListKind::Allow, args, &mut out).await?,
        Command::Unblock(args) => remove(&config, ListKind::Block, args, &mut out).await?,
        Command::Unallow(args) => remove(&config, ListKind::Allow, args, &mut out).await?,
        Command::List { json } => {
            let snapshot = load_snapshot(&config).await?;
            let now = SystemTime::now();
            let entries = snapshot.live_entries(now);
            if json {
                let rows: Vec<EntryJson> = entries.iter().map(|e| EntryJson::of(e)).collect();
                serde_json::to_writer_pretty(&mut out, &rows).map_err(std::io::Error::other)?;
                writeln!(out)?;
            } else {
                for e in entries {
                    writeln!(out, "{}", describe_row(e))?;
                }
            }
        }
        Command::Check { number } => {
            let normalizer = config.normalizer()?;
            let canonical = normalizer.normalize(&number);
            let snapshot = load_snapshot(&config).await?;
            let outcome = rules::decide(&canonical, &snapshot, SystemTime::now());
            let verdict = if outcome.is_block() { "block" } else { "allow" };
            let mut line = format!("{verdict} {canonical}");
            match outcome.decided_by {
                Some(e) => line.push_str(&format!(" {} entry: {}", e.list, describe_entry(e))),
                None => line.push_str(" no matching entry"),
            }
            if let Some(lost) = outcome.overridden {
                line.push_str(&format!(
                    " (overrides {} entry: {})",
                    lost.list,
                    describe_entry(lost)
                ));
            }
            writeln!(out, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn open_store(config: &Config) -> Result<Store, CliError> {
    Ok(Store::open(
        &config.store_location(),
        &config.redis,
        config.normalizer()?,
    )
    .await?)
}

async fn load_snapshot(config: &Config) -> Result<Snapshot, CliError> {
    let store = open_store(config).await?;
    Ok(Snapshot::compile(store.load().await?, 0))
}

fn canonical_numbers(config: &Config, texts: &[String]) -> Result<Vec<CallerNumber>, CliError> {
    let normalizer = config.normalizer()?;
    texts
        .iter()
        .map(|t| {
            if t.trim().is_empty() {
                Err(CliError::Usage(
                    "empty number; to block withheld numbers write `anonymous`".into(),
                ))
            } else {
                Ok(normalizer.normalize(t))
            }
        })
        .collect()
}

async fn add(
    config: &Config,
    list: ListKind,
    args: AddArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let numbers = canonical_numbers(config, &args.numbers)?;
    let now = SystemTime::now();
    let actor = current_actor();
    let entries: Vec<Entry> = numbers
        .into_iter()
        .map(|number| Entry {
            list,
            number,
            reason: args.reason.clone(),
            added_by: Some(actor.clone()),
            added_at: Some(now),
            expires_at: args.ttl.map(|ttl| now + ttl),
        })
        .collect();
    open_store(config).await?.put(&entries).await?;
    for (entry, text) in entries.iter().zip(&args.numbers) {
        writeln!(out, "{list}ed {} (from {text:?})", entry.number)?;
    }
    Ok(())
}

async fn remove(
    config: &Config,
    list: ListKind,
    args: RemoveArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let numbers = canonical_numbers(config, &args.numbers)?;
    let store = open_store(config).await?;
    for number in &numbers {
        let removed = store.remove(list, std::slice::from_ref(number)).await?;
        let what = if removed > 0 {
            "removed from"
        } else {
            "was not on"
        };
        writeln!(out, "{number} {what} the {list} list")?;
    }
    Ok(())
}

fn describe_entry(e: &Entry) -> String {
    let mut s = if e.reason.is_empty() {
        "(no reason)".to_owned()
    } else {
        format!("{:?}", e.reason)
    };
    if let Some(by) = &e.added_by {
        s.push_str(&format!(" added by {by}"));
    }
    if let Some(at) = e.added_at {
        s.push_str(&format!(" at {}", format_time(at)));
    }
    if let Some(at) = e.expires_at {
        s.push_str(&format!(", expires {}", format_time(at)));
    }
    s
}

fn describe_row(e: &Entry) -> String {
    format!("{}\t{}\t{}", e.list, e.number, describe_entry(e))
}

#[derive(Serialize)]
struct EntryJson {
    list: ListKind,
    number: String,
    reason: String,
    added_by: Option<String>,
    added_at: Option<String>,
    expires_at: Option<String>,
}

impl EntryJson {
    fn of(e: &Entry) -> EntryJson {
        EntryJson {
            list: e.list,
            number: e.number.to_string(),
            reason: e.reason.clone(),
            added_by: e.added_by.clone(),
            added_at: e.added_at.map(format_time),
            expires_at: e.expires_at.map(format_time),
        }
    }
}
