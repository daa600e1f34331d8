//! Command line: clap types and the subcommands. The only module that prints to stdout.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::call::{CallEvent, Protocol};
use crate::calllog;
use crate::config::{Config, ConfigError, Overrides};
use crate::engine;
use crate::rules::{self, CallFacts, Entry, ListKind, RulePattern, Snapshot, Tenant};
use crate::store::{
    EntryJson, EntryMeta, Layout, Store, StoreError, current_actor, format_time, new_entry,
    parse_time,
};

/// callguard: call screening for Asterisk and FreeSWITCH.
#[derive(Debug, Parser)]
#[command(name = "callguard", version, about)]
pub struct Cli {
    /// Config file (TOML). Default: /etc/callguard/callguard.toml when it exists.
    #[arg(long, global = true, value_name = "FILE", env = "CALLGUARD_CONFIG")]
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
    /// Add numbers or rules (masks, prefixes, ranges, `anonymous`, `invalid`) to the block list.
    Block(AddArgs),
    /// Remove numbers or rules from the block list.
    Unblock(RemoveArgs),
    /// Add numbers or rules to the allow list.
    Allow(AddArgs),
    /// Remove numbers or rules from the allow list.
    Unallow(RemoveArgs),
    /// Show the rules.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this tenant's rules (`global` for the global list).
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
    },
    /// Show the verdict for a call and the rule that decided it.
    Check(CheckArgs),
    /// Show the call log (blocked and tagged calls; every call with call_log.all_calls).
    Log(LogArgs),
    /// Add every number or rule in a file (CSV, one per line, `export` output, an Asterisk
    /// AstDB `database show blacklist` dump, a FreePBX blacklist CSV): all or nothing unless
    /// --partial; every rejected line is reported with its number and why.
    Import(ImportArgs),
    /// Write the lists (live rules) as CSV or JSON, in the form `import` reads back.
    Export(ExportArgs),
    /// Play Asterisk (--agi) or FreeSWITCH (--esl) against a running server: new connection
    /// per call, mixed caller-ID formats, a share of numbers it blocked itself; checks every
    /// verdict. `loadgen baseline` runs the bare servers callguard is compared with.
    Loadgen(LoadgenArgs),
    /// Measure how long an edit (`callguard block` and plain `redis-cli SET`) takes to reach a
    /// running server's decisions: blocks fresh numbers in --store, calls until blocked.
    EditLatency(EditLatencyArgs),
    /// Make a new admin API token: prints the token (give it to the API client; it is not
    /// stored anywhere) and the `[[api.tokens]]` entry with its SHA-256 for callguard.toml.
    ApiToken {
        /// The token sees and edits only this tenant's rules.
        #[arg(
            long,
            value_name = "TENANT",
            required_unless_present = "global",
            conflicts_with = "global"
        )]
        tenant: Option<String>,
        /// The token sees and edits every tenant's rules and the global lists.
        #[arg(long)]
        global: bool,
        /// A label for logs and `added_by` (default: the tenant, or `admin`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Health check for containers and scripts: GET an http:// URL (e.g.
    /// http://127.0.0.1:9573/readyz); print the body and exit 0 on 200, else the reason and 1.
    Probe {
        /// `http://HOST:PORT/PATH`.
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// `import` arguments.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file (`-` for standard input).
    pub file: PathBuf,
    /// Its format (`auto` tells JSON, AstDB dumps and CSV apart).
    #[arg(long, value_enum, default_value = "auto")]
    pub format: crate::listfile::Format,
    /// List of rows that name none.
    #[arg(long, default_value = "block", value_parser = parse_list)]
    pub list: ListKind,
    /// Tenant of rows that name none (default: the global list).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// Reason of rows without one.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Action of block rows without one (default: rules.default_action).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Expire imported rows without their own expiry after this long.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// Import the valid rows even when some are rejected.
    #[arg(long)]
    pub partial: bool,
    /// Check the file and report, without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Redis only: `keys` (one key per rule, editable with `redis-cli SET`/`DEL`), `bulk`
    /// (many rules per hash: big lists load ~4x faster, with a fifteenth of Redis's CPU and a
    /// sixth of its memory)
    /// or `auto` (bulk from 10,000 rules).
    #[arg(long, value_enum, default_value = "auto")]
    pub layout: LayoutArg,
}

/// `import --layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutArg {
    /// Bulk from [`BULK_IMPORT_MIN`] rules, keys below.
    Auto,
    /// One key per rule.
    Keys,
    /// Many rules per hash.
    Bulk,
}

/// `import --layout auto` writes files of at least this many rules in the bulk layout: lists
/// that size are not edited number by number with `redis-cli`.
pub const BULK_IMPORT_MIN: usize = 10_000;

/// `export` arguments.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// `csv` (with a header row) or `json`.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,
    /// Only this list.
    #[arg(long, value_parser = parse_list)]
    pub list: Option<ListKind>,
    /// Only this tenant's rules (`global` for the global list).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// Write here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// CSV with a header row.
    Csv,
    /// A JSON array (the shape of `list --json`).
    Json,
}

fn parse_list(text: &str) -> Result<ListKind, String> {
    ListKind::ALL
        .into_iter()
        .find(|l| l.as_str().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| format!("{text:?} is neither block nor allow"))
}

/// `edit-latency` arguments.
#[derive(Debug, Args)]
pub struct EditLatencyArgs {
    /// The server's FastAGI address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4573")]
    pub agi: std::net::SocketAddr,
    /// Edits to make (the numbers stay blocked afterwards; they are +73000000000 and up).
    #[arg(long, default_value_t = 200)]
    pub edits: u64,
    /// Give up on one edit after this long.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
}

/// `loadgen` arguments.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadgenArgs {
    /// `baseline`: serve instead of generating.
    #[command(subcommand)]
    pub command: Option<LoadgenCommand>,
    /// Play Asterisk against this FastAGI address (the default: 127.0.0.1:4573).
    #[arg(long, value_name = "ADDR", conflicts_with = "esl")]
    pub agi: Option<std::net::SocketAddr>,
    /// Play FreeSWITCH's `socket` application (outbound Event Socket) against this address.
    #[arg(long, value_name = "ADDR")]
    pub esl: Option<std::net::SocketAddr>,
    /// Only count calls the server answered, without checking verdicts or writing a list
    /// (for `loadgen baseline`).
    #[arg(long)]
    pub count_only: bool,
    /// The server's metrics address: scrape `callguard_verdict_seconds` before and after the
    /// run and print its in-server quantiles.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Calls to place (default 10,000; with --duration, no limit but the time).
    #[arg(long)]
    pub calls: Option<u64>,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Calls per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Share of calls from blocked numbers.
    #[arg(long, default_value_t = 0.3)]
    pub blocked_share: f64,
    /// Blocked numbers written to --store before the run (0: none, every call expects allow).
    #[arg(long, default_value_t = 1000)]
    pub blocked_numbers: u64,
    /// The list of an earlier run with the same --blocked-numbers is in place: do not write
    /// it again (a rewrite makes the server recompile its snapshot during the run).
    #[arg(long)]
    pub keep_list: bool,
    /// How long to wait for the server to pick up the generated list.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    pub ready_timeout: Duration,
    /// Place calls for this long (e.g. 30m; with --rate, a fixed-rate soak; with --calls, at
    /// most that many).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Print an `interval ...` line (calls, calls/s, latency quantiles, verdicts, calls without
    /// verdict, with --metrics the server's p99) for every stretch this long.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub report_every: Option<Duration>,
    /// Instead of generated calls, one call from each caller in FILE (lines `NUMBER
    /// block|allow`), each checked against its verdict; writes no list.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["count_only", "duration", "keep_list"])]
    pub expect: Option<PathBuf>,
}

/// `loadgen` subcommands.
#[derive(Debug, Subcommand)]
pub enum LoadgenCommand {
    /// Run the bare servers callguard is measured against: FastAGI (read the environment,
    /// write `HANGUP`, close) and Event Socket (`connect`, read the channel data, one `sendmsg`
    /// hang-up, close). Prints `baseline agi=ADDR esl=ADDR` and serves until killed.
    Baseline {
        /// FastAGI listen address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        agi_listen: String,
        /// Event Socket listen address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        esl_listen: String,
    },
}

/// `log` arguments.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only calls from the last DURATION (e.g. 15m, 1h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1h")]
    pub since: Duration,
    /// Keep printing new calls as they are logged.
    #[arg(long)]
    pub follow: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// FastAGI listen address (default 127.0.0.1:4573).
    #[arg(long, value_name = "ADDR")]
    pub agi_listen: Option<String>,
    /// FreeSWITCH Event Socket (outbound mode) listen address (default 127.0.0.1:8084; `off`).
    #[arg(long, value_name = "ADDR")]
    pub esl_listen: Option<String>,
    /// Prometheus /metrics, /healthz, /readyz listen address (default 127.0.0.1:9573; `off`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Print the effective configuration (Redis passwords as `***`) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Check the configuration (file, environment, flags) and exit: 0 and a summary when it
    /// is valid, 2 and the first error when it is not. Nothing is started or bound.
    #[arg(long, conflicts_with = "print_config")]
    pub check_config: bool,
}

/// `block` / `allow` arguments.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Numbers or rules in any format: `8 (495) 123-45-67`, `+7495123*`, `_7495123XXXX`,
    /// `+74951230000-+74951239999`, `anonymous`, `invalid`.
    #[arg(required = true, value_name = "RULE")]
    pub rules: Vec<String>,
    /// Why (stored with the rule, set as CALLGUARD_REASON).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Expire after this long (e.g. 90m, 12h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// Put the rule on this tenant's list instead of the global one.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// Only for calls to this called number (repeatable).
    #[arg(long = "did", value_name = "DID")]
    pub dids: Vec<String>,
    /// What a block does: `hangup [CAUSE]`, `busy`, `congestion`, `playback SOUND`,
    /// `redirect CONTEXT,EXTEN,PRIORITY`, `tag` (default: rules.default_action).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Apply only in these weekly windows, e.g. "mon-fri 09:00-18:00; sat 10:00-14:00".
    #[arg(long, value_name = "WINDOWS")]
    pub schedule: Option<String>,
    /// Time zone of --schedule (default: rules.time_zone).
    #[arg(long, value_name = "ZONE", requires = "schedule")]
    pub time_zone: Option<String>,
}

/// `unblock` / `unallow` arguments.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Numbers or rules in any format.
    #[arg(required = true, value_name = "RULE")]
    pub rules: Vec<String>,
    /// From this tenant's list instead of the global one.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
}

/// `check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Caller number in any format.
    pub number: String,
    /// The call's tenant (default: from the DID map).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// The called number (DID).
    #[arg(long, value_name = "DID")]
    pub did: Option<String>,
    /// Also list every other rule that matched, and why it lost.
    #[arg(long)]
    pub explain: bool,
    /// Decide as of this time (RFC 3339) instead of now, e.g. to test a schedule.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
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
    /// The server's /metrics could not be read.
    #[error(transparent)]
    Scrape(#[from] crate::loadgen::scrape::ScrapeError),
}

impl Cli {
    /// Loads the configuration this invocation asks for.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), std::env::vars(), &self.overrides())
    }

    /// The flags that override config keys.
    fn overrides(&self) -> Overrides {
        let mut overrides = Overrides {
            store: self.store.clone(),
            ..Overrides::default()
        };
        match &self.command {
            Command::Serve(args) => {
                overrides.agi_listen = args.agi_listen.clone();
                overrides.esl_listen = args.esl_listen.clone();
                overrides.metrics_listen = args.metrics_listen.clone();
            }
            Command::Normalize { country, .. } => overrides.default_country = country.clone(),
            _ => {}
        }
        overrides
    }
}

/// Applies a new log filter (`log_level`) to the running process.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Runs the subcommand with an already loaded config; `set_log_level` serves config reloads.
pub async fn run(
    cli: Cli,
    config: Config,
    set_log_level: SetLogLevel,
) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    let config_file = cli.config.clone();
    let overrides = cli.overrides();
    match cli.command {
        Command::Serve(args) => {
            if args.print_config {
                // Shown on terminals and in tickets: no Redis password.
                let mut shown = config.clone();
                shown.store = crate::store::redacted(&shown.store);
                if !shown.redis.sentinel_password.is_empty() {
                    shown.redis.sentinel_password = "***".into();
                }
                write!(out, "{}", shown.to_toml())?;
                return Ok(ExitCode::SUCCESS);
            }
            if args.check_config {
                config.check_store()?;
                write!(out, "{}", config_summary(&config, config_file.as_deref()))?;
                return Ok(ExitCode::SUCCESS);
            }
            drop(out);
            let reloader = crate::server::Reloader {
                load: Box::new(move || {
                    Config::load(config_file.as_deref(), std::env::vars(), &overrides)
                }),
                set_log_level,
            };
            crate::server::serve_with_reload(config, CancellationToken::new(), Some(reloader))
                .await?;
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
        Command::List { json, tenant } => {
            let only: Option<Option<Tenant>> = match tenant.as_deref() {
                None => None,
                Some("global") => Some(None),
                Some(name) => Some(Some(parse_tenant(name)?)),
            };
            let snapshot = load_snapshot(&config).await?;
            let now = SystemTime::now();
            let entries: Vec<std::borrow::Cow<'_, Entry>> = snapshot
                .live_entries(now)
                .into_iter()
                .filter(|e| only.as_ref().is_none_or(|t| e.tenant == *t))
                .collect();
            if json {
                let rows: Vec<EntryJson> = entries.iter().map(|e| EntryJson::of(e)).collect();
                serde_json::to_writer_pretty(&mut out, &rows).map_err(std::io::Error::other)?;
                writeln!(out)?;
            } else {
                for e in &entries {
                    writeln!(out, "{}", describe_row(e))?;
                }
            }
        }
        Command::Check(args) => check(&config, args, &mut out).await?,
        Command::Import(args) => return import(&config, args, &mut out).await,
        Command::Export(args) => export(&config, args, &mut out).await?,
        Command::Log(args) => show_log(&config, args, &mut out).await?,
        Command::Loadgen(args) => return loadgen(&config, args, &mut out).await,
        Command::ApiToken {
            tenant,
            global: _,
            name,
        } => {
            let tenant = tenant.as_deref().map(parse_tenant).transpose()?;
            let (token, hash) = crate::api::auth::mint()
                .map_err(|_| CliError::Usage("the system random source failed".into()))?;
            let name = name.unwrap_or_else(|| {
                tenant
                    .as_ref()
                    .map_or_else(|| "admin".to_owned(), ToString::to_string)
            });
            let scope = match &tenant {
                Some(t) => format!("tenant = {:?}", t.as_str()),
                None => "scope = \"global\"".to_owned(),
            };
            writeln!(out, "token: {token}")?;
            writeln!(
                out,
                "\n# Add to callguard.toml (only the hash is stored), then reload (SIGHUP):\n\
                 [[api.tokens]]\nname = {name:?}\ntoken_sha256 = \"{hash}\"\n{scope}"
            )?;
        }
        Command::Probe { url, timeout } => match crate::http::probe(&url, timeout).await {
            Ok(body) => write!(out, "{body}")?,
            Err(e) => {
                eprintln!("callguard: probe: {e}");
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::EditLatency(args) => {
            let store = open_store(&config).await?;
            let report = crate::editbench::run(&store, args.agi, args.edits, args.timeout).await?;
            writeln!(out, "{}", report.summary())?;
            if report.lost > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `callguard import`: read, report, then write all (or, with --partial, the valid rows) in
/// one store operation.
async fn import(
    config: &Config,
    args: ImportArgs,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    use crate::listfile::{self, ImportDefaults};
    let name = args.file.display().to_string();
    let bytes = if name == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buf)?;
        buf
    } else {
        std::fs::read(&args.file).map_err(|e| CliError::Usage(format!("{name}: {e}")))?
    };
    // Spreadsheet exports are not always UTF-8: a bad byte costs a reason's letter, not the row.
    let text = String::from_utf8_lossy(&bytes);
    let now = SystemTime::now();
    let defaults = ImportDefaults {
        list: args.list,
        tenant: args.tenant.as_deref().map(parse_tenant).transpose()?,
        reason: args.reason.clone(),
        action: args.action.clone(),
        expires_at: args.ttl.map(|ttl| now + ttl),
        added_by: Some(current_actor()),
        added_at: now,
    };
    let read = listfile::read(&text, args.format, &defaults, &config.normalizer()?);
    let mut err = std::io::stderr().lock();
    for r in &read.rejected {
        writeln!(err, "{name}:{}: rejected {:?}: {}", r.line, r.text, r.why)?;
    }
    for d in &read.duplicates {
        writeln!(
            err,
            "{name}:{}: duplicate of line {} ({}), skipped",
            d.line, d.first_line, d.rule
        )?;
    }
    let valid = read.entries.len();
    writeln!(
        out,
        "{name}: {} rules, {} duplicates skipped, {} lines rejected",
        valid,
        read.duplicates.len(),
        read.rejected.len()
    )?;
    if !read.rejected.is_empty() && !args.partial {
        writeln!(
            out,
            "nothing imported: fix the rejected lines, or import the {valid} valid rules with --partial"
        )?;
        return Ok(ExitCode::FAILURE);
    }
    if args.dry_run {
        writeln!(out, "dry run: nothing written")?;
        return Ok(ExitCode::SUCCESS);
    }
    let entries: Vec<Entry> = read.entries.into_iter().map(|(_, e)| e).collect();
    let layout = match args.layout {
        LayoutArg::Keys => Layout::Keys,
        LayoutArg::Bulk => Layout::Bulk,
        LayoutArg::Auto if entries.len() >= BULK_IMPORT_MIN => Layout::Bulk,
        LayoutArg::Auto => Layout::Keys,
    };
    open_store(config).await?.put_all(&entries, layout).await?;
    let mut by_list = [0usize; 2];
    for e in &entries {
        by_list[e.list as usize] += 1;
    }
    writeln!(
        out,
        "imported {valid} rules ({} block, {} allow)",
        by_list[ListKind::Block as usize],
        by_list[ListKind::Allow as usize]
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `callguard export`: the live rules, sorted, as CSV or JSON.
async fn export(config: &Config, args: ExportArgs, out: &mut impl Write) -> Result<(), CliError> {
    let only: Option<Option<Tenant>> = match args.tenant.as_deref() {
        None => None,
        Some("global") => Some(None),
        Some(name) => Some(Some(parse_tenant(name)?)),
    };
    let now = SystemTime::now();
    let mut entries: Vec<Entry> = open_store(config)
        .await?
        .load()
        .await?
        .into_iter()
        .filter(|e| e.expires_at.is_none_or(|at| at > now))
        .filter(|e| args.list.is_none_or(|l| e.list == l))
        .filter(|e| only.as_ref().is_none_or(|t| e.tenant == *t))
        .collect();
    entries.sort_by_cached_key(|e| {
        (
            e.list as u8,
            e.tenant.as_ref().map(ToString::to_string),
            e.pattern.to_string(),
        )
    });
    let mut file;
    let sink: &mut dyn Write = match &args.output {
        Some(path) => {
            file = std::fs::File::create(path)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            &mut file
        }
        None => out,
    };
    let mut sink = std::io::BufWriter::new(sink);
    match args.format {
        ExportFormat::Csv => crate::listfile::write_csv(&entries, &mut sink)?,
        ExportFormat::Json => crate::listfile::write_json(&entries, &mut sink)?,
    }
    sink.flush()?;
    Ok(())
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
    Ok(Snapshot::compile_in(
        store.load().await?,
        0,
        &config.time_zone()?,
    ))
}

fn parse_tenant(name: &str) -> Result<Tenant, CliError> {
    Tenant::new(name).map_err(|e| CliError::Usage(e.to_string()))
}

fn parse_rules(config: &Config, texts: &[String]) -> Result<Vec<RulePattern>, CliError> {
    let normalizer = config.normalizer()?;
    texts
        .iter()
        .map(|t| {
            if t.trim().is_empty() {
                return Err(CliError::Usage(
                    "empty number; to block withheld numbers write `anonymous`".into(),
                ));
            }
            RulePattern::parse(t, &normalizer).map_err(|e| CliError::Usage(e.to_string()))
        })
        .collect()
}

async fn add(
    config: &Config,
    list: ListKind,
    args: AddArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let patterns = parse_rules(config, &args.rules)?;
    let normalizer = config.normalizer()?;
    let tenant = args.tenant.as_deref().map(parse_tenant).transpose()?;
    let now = SystemTime::now();
    let actor = current_actor();
    let meta = EntryMeta {
        reason: args.reason.clone(),
        added_by: Some(actor),
        added_at: Some(format_time(now)),
        action: args.action.clone(),
        dids: args.dids.clone(),
        schedule: args.schedule.clone(),
        time_zone: args.time_zone.clone(),
    };
    let mut entries = Vec::with_capacity(patterns.len());
    for pattern in &patterns {
        let entry = new_entry(
            &normalizer,
            tenant.clone(),
            list,
            &pattern.to_string(),
            meta.clone(),
            args.ttl.map(|ttl| now + ttl),
            now,
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
        entries.push(entry);
    }
    open_store(config).await?.put(&entries).await?;
    let scope = tenant.map_or_else(String::new, |t| format!(" for tenant {t}"));
    for (entry, text) in entries.iter().zip(&args.rules) {
        writeln!(
            out,
            "{list}ed {} {}{scope} (from {text:?})",
            entry.pattern.kind(),
            entry.pattern
        )?;
    }
    Ok(())
}

async fn remove(
    config: &Config,
    list: ListKind,
    args: RemoveArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let patterns = parse_rules(config, &args.rules)?;
    let tenant = args.tenant.as_deref().map(parse_tenant).transpose()?;
    let store = open_store(config).await?;
    let scope = match &tenant {
        Some(t) => format!("tenant {t}'s"),
        None => "the".to_owned(),
    };
    for pattern in &patterns {
        let removed = store
            .remove(tenant.as_ref(), list, std::slice::from_ref(pattern))
            .await?;
        let what = if removed > 0 {
            "removed from"
        } else {
            "was not on"
        };
        writeln!(out, "{pattern} {what} {scope} {list} list")?;
    }
    Ok(())
}

async fn check(config: &Config, args: CheckArgs, out: &mut impl Write) -> Result<(), CliError> {
    let now = match args.at.as_deref() {
        None => SystemTime::now(),
        Some(text) => parse_time(text)
            .ok_or_else(|| CliError::Usage(format!("--at {text:?} is not an RFC 3339 time")))?,
    };
    if let Some(t) = &args.tenant {
        parse_tenant(t)?;
    }
    let normalizer = config.normalizer()?;
    let store = open_store(config).await?;
    let snapshot = Snapshot::compile_in(store.load().await?, 0, &config.time_zone()?);
    let settings = config.engine_settings()?;
    let call = CallEvent {
        protocol: Some(Protocol::Cli),
        caller_id: args.number.clone(),
        called: args.did.clone(),
        tenant: args.tenant.clone(),
        ..CallEvent::default()
    };
    let decision = engine::decide(&call, &normalizer, &snapshot, &settings, now);
    let mut line = format!("{} {}", decision.verdict, decision.number);
    if let Some(t) = &decision.tenant {
        line.push_str(&format!(" tenant {t}"));
    }
    let did = args.did.as_deref().map(|d| normalizer.normalize(d));
    let facts = CallFacts {
        number: &decision.number,
        tenant: decision.tenant.as_ref(),
        did: did.as_ref(),
    };
    let matches = rules::explain(facts, &snapshot, now);
    let winner = matches.iter().find(|m| m.winner);
    match winner {
        Some(m) => {
            line.push_str(&format!(" by {}", describe_match(m)));
            // The action carried out, last on the line for scripts; marked when the rule has
            // none of its own.
            if let Some(action) = &decision.action {
                let default = if m.entry.action.is_none() {
                    " (rules.default_action)"
                } else {
                    ""
                };
                line.push_str(&format!(" action: {action}{default}"));
            }
        }
        None => line.push_str(" no matching rule"),
    }
    writeln!(out, "{line}")?;
    if args.explain {
        for m in matches.iter().filter(|m| !m.winner) {
            let why = m.why_lost(winner);
            writeln!(out, "  also matched: {} - {why}", describe_match(m))?;
        }
        if matches.is_empty() {
            writeln!(out, "  no rule matches {}", decision.number)?;
        }
    }
    Ok(())
}

async fn loadgen(
    config: &Config,
    args: LoadgenArgs,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    use crate::loadgen::{self, LoadSettings, Target, baseline, scrape};
    if let Some(LoadgenCommand::Baseline {
        agi_listen,
        esl_listen,
    }) = args.command
    {
        let bind = |addr: String| async move {
            baseline::bind(&addr)
                .await
                .map_err(|e| CliError::Usage(format!("cannot listen on {addr}: {e}")))
        };
        let (agi, agi_local) = bind(agi_listen).await?;
        let (esl, esl_local) = bind(esl_listen).await?;
        writeln!(out, "baseline agi={agi_local} esl={esl_local}")?;
        out.flush()?;
        tokio::select! {
            () = baseline::serve(agi, baseline::Flavor::Agi) => {}
            () = baseline::serve(esl, baseline::Flavor::Esl) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(ExitCode::SUCCESS);
    }
    let target = match (args.esl, args.agi) {
        (Some(esl), _) => Target::Esl(esl),
        (None, Some(agi)) => Target::Agi(agi),
        (None, None) => Target::Agi(std::net::SocketAddr::from(([127, 0, 0, 1], 4573))),
    };
    if args.report_every.is_some_and(|d| d.is_zero()) {
        return Err(CliError::Usage(
            "--report-every must be longer than 0".into(),
        ));
    }
    let expected = match &args.expect {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            let list =
                loadgen::parse_expected(&text).map_err(|e| CliError::Usage(e.to_string()))?;
            Some(std::sync::Arc::from(list))
        }
        None => None,
    };
    let blocked_numbers = if args.count_only || expected.is_some() {
        0
    } else {
        args.blocked_numbers
    };
    let settings = LoadSettings {
        target,
        calls: loadgen::call_budget(args.calls, args.duration),
        concurrency: args.concurrency,
        rate: args.rate,
        blocked_share: if blocked_numbers == 0 {
            0.0
        } else {
            args.blocked_share
        },
        blocked_numbers,
        count_only: args.count_only,
        duration: args.duration,
        expected,
    };
    if settings.blocked_numbers > 0 {
        if !args.keep_list {
            let store = open_store(config).await?;
            loadgen::prepare(&store, &settings).await?;
        }
        // Wait until the server sees the list: a short probe run must block its blocked call.
        let probe = LoadSettings {
            calls: 1,
            concurrency: 1,
            rate: None,
            blocked_share: 1.0,
            ..settings.clone()
        };
        let deadline = std::time::Instant::now() + args.ready_timeout;
        while loadgen::run(&probe).await.blocked == 0 {
            if std::time::Instant::now() > deadline {
                return Err(CliError::Usage(format!(
                    "the server did not pick up the generated block list within {} (same --store?)",
                    humantime::format_duration(args.ready_timeout)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let before = match args.metrics {
        Some(addr) => Some(scrape::fetch(addr).await?),
        None => None,
    };
    let mut printed = Ok(());
    let report = loadgen::run_reporting(&settings, args.report_every, args.metrics, |interval| {
        if printed.is_ok() {
            printed = writeln!(out, "{}", interval.line()).and_then(|()| out.flush());
        }
    })
    .await;
    printed?;
    writeln!(out, "{}", report.summary())?;
    if let (Some(addr), Some(before)) = (args.metrics, before) {
        let protocol = target.protocol();
        let after = scrape::fetch(addr).await?;
        let run = scrape::Buckets::parse(&after, protocol)
            .since(&scrape::Buckets::parse(&before, protocol));
        writeln!(out, "{}", run.summary(protocol))?;
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn show_log(config: &Config, args: LogArgs, out: &mut impl Write) -> Result<(), CliError> {
    let since = calllog::since(args.since);
    let print = |out: &mut dyn Write, records: &[calllog::CallRecord]| -> std::io::Result<()> {
        for r in records {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())?;
            } else {
                writeln!(out, "{}", r.line())?;
            }
        }
        out.flush()
    };
    let store = open_store(config).await?;
    match config.call_log_sink(&store) {
        calllog::Sink::Redis(Store::Redis(redis)) => {
            let since_ms = since
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let since_ms = u64::try_from(since_ms).unwrap_or(u64::MAX);
            let (records, mut last) = redis.read_calls(since_ms, None, None).await?;
            print(out, &records)?;
            if !args.follow {
                return Ok(());
            }
            loop {
                let after = last.clone().unwrap_or_else(|| "$".to_owned());
                let (records, newest) = redis.read_calls(0, Some(&after), Some(1000)).await?;
                print(out, &records)?;
                if newest.is_some() {
                    last = newest;
                }
            }
        }
        calllog::Sink::Redis(Store::Local(_)) => {}
        calllog::Sink::File(path) => {
            let keep = config.call_log.keep_files;
            let mut seen = calllog::read_file(&path, since, keep);
            print(out, &seen)?;
            if !args.follow {
                return Ok(());
            }
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                // Rotation can move lines between files; compare by content, print the new tail.
                let now = calllog::read_file(&path, since, keep);
                let fresh: Vec<calllog::CallRecord> =
                    now.iter().filter(|r| !seen.contains(r)).cloned().collect();
                print(out, &fresh)?;
                seen = now;
            }
        }
    }
    Ok(())
}

fn describe_match(m: &rules::Match<'_>) -> String {
    let e = m.entry.as_ref();
    format!(
        "{} {} {} [{}] {}",
        e.list,
        e.pattern.kind(),
        e.pattern,
        m.level.as_str(),
        describe_entry(e)
    )
}

fn describe_entry(e: &Entry) -> String {
    let mut s = if e.reason.is_empty() {
        "(no reason)".to_owned()
    } else {
        format!("{:?}", e.reason)
    };
    if let Some(action) = &e.action {
        s.push_str(&format!(" action {action}"));
    }
    if !e.dids.is_empty() {
        let dids: Vec<String> = e.dids.iter().map(ToString::to_string).collect();
        s.push_str(&format!(" for calls to {}", dids.join(",")));
    }
    if let Some(schedule) = &e.schedule {
        s.push_str(&format!(" during \"{schedule}\""));
        if let Some(zone) = &e.time_zone {
            s.push_str(&format!(" {zone}"));
        }
    }
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
    let scope = e.tenant.as_ref().map_or("global", Tenant::as_str);
    format!(
        "{}\t{}\t{}\t{}\t{}",
        scope,
        e.list,
        e.pattern.kind(),
        e.pattern,
        describe_entry(e)
    )
}

/// What `serve --check-config` prints for a valid configuration.
fn config_summary(config: &Config, file: Option<&std::path::Path>) -> String {
    let source = match file {
        Some(path) => path.display().to_string(),
        None if std::path::Path::new(crate::config::DEFAULT_CONFIG_FILE).exists() => {
            crate::config::DEFAULT_CONFIG_FILE.to_owned()
        }
        None => "built-in defaults".to_owned(),
    };
    let off = |addr: Option<&str>| addr.unwrap_or("off").to_owned();
    format!(
        "configuration OK ({source})\n\
         store:    {}\n\
         agi:      {} (allow_from: {})\n\
         esl:      {} (allow_from: {})\n\
         metrics:  {} (allow_from: {})\n\
         api:      {} (allow_from: {}, {} tokens)\n\
         fail:     {} after {} ms without a list\n",
        crate::store::redacted(&config.store),
        config.agi.listen,
        config.agi.allow_from.join(", "),
        off(config.esl.listen_addr()),
        config.esl.allow_from.join(", "),
        off(config.metrics.listen_addr()),
        config.metrics.allow_from.join(", "),
        off(config.api.listen_addr()),
        config.api.allow_from.join(", "),
        config.api.tokens.len(),
        config.fail_policy.as_str(),
        config.decision_budget_ms,
    )
}
