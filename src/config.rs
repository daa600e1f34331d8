//! Typed, closed configuration: TOML file, then `CALLGUARD_*` environment, then flags.
//! Load -> validate -> immutable [`Config`]. Unknown keys are errors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::AllowList;
use crate::number::{CallerNumber, Normalizer, NumberingPlans};
use crate::rules::{RuleAction, Tenant, TimeZone};
use crate::store::StoreLocation;

/// Config file read when `--config` is not given (only if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/callguard/callguard.toml";
/// Embedded store used when no `store` is configured.
pub const DEFAULT_STORE: &str = "/var/lib/callguard/lists.toml";

/// Errors while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or environment could not be read or has unknown/ill-typed keys.
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("config: {key}: {message}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the lists live: a `redis://` URL, or a path for the embedded store.
    pub store: String,
    /// Country whose numbering plan reads numbers without `+` (ISO code, e.g. `RU`, `GB`, `US`).
    pub default_country: String,
    /// Extra numbering-plan TOML merged over the built-in table (adds or overrides countries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numbering_plans: Option<PathBuf>,
    /// Log filter (`error`, `warn`, `info`, `debug`, or a tracing filter); `RUST_LOG` wins.
    pub log_level: String,
    /// What a call gets when no list has been loaded within `decision_budget_ms` (only a
    /// process that has never loaded one: afterwards decisions come from the last snapshot).
    pub fail_policy: FailPolicy,
    /// Longest a call waits for the first list load before the fail policy decides it, in ms.
    pub decision_budget_ms: u64,
    /// Rule defaults.
    pub rules: RulesSettings,
    /// Called numbers (DIDs, any format) -> tenant: calls to them use that tenant's rules.
    pub dids: std::collections::BTreeMap<String, String>,
    /// FastAGI server.
    pub agi: AgiSettings,
    /// FreeSWITCH Event Socket (outbound mode) server.
    pub esl: EslSettings,
    /// FreeSWITCH Event Socket client (inbound mode: callguard connects to FreeSWITCH).
    pub esl_inbound: EslInboundSettings,
    /// The call log.
    pub call_log: CallLogConfig,
    /// Prometheus metrics and health endpoints.
    pub metrics: MetricsConfig,
    /// The admin HTTP API (off by default).
    pub api: ApiConfig,
    /// Flood detection and automatic bans.
    pub flood: FloodConfig,
    /// Redis store.
    pub redis: RedisSettings,
    /// Embedded store.
    pub local: LocalSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: DEFAULT_STORE.into(),
            default_country: "RU".into(),
            numbering_plans: None,
            log_level: "info".into(),
            fail_policy: FailPolicy::FailOpen,
            decision_budget_ms: 20,
            rules: RulesSettings::default(),
            dids: std::collections::BTreeMap::new(),
            agi: AgiSettings::default(),
            esl: EslSettings::default(),
            esl_inbound: EslInboundSettings::default(),
            call_log: CallLogConfig::default(),
            metrics: MetricsConfig::default(),
            api: ApiConfig::default(),
            flood: FloodConfig::default(),
            redis: RedisSettings::default(),
            local: LocalSettings::default(),
        }
    }
}

/// `[rules]`: defaults for rules that do not say.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesSettings {
    /// Action of block rules without their own: `hangup [CAUSE]`, `busy`, `congestion`,
    /// `playback SOUND`, `redirect CONTEXT,EXTEN,PRIORITY` or `tag`.
    pub default_action: String,
    /// Time zone of rule schedules that name none: an IANA name, `UTC`, an offset, or `local`
    /// (the machine's zone).
    pub time_zone: String,
}

impl Default for RulesSettings {
    fn default() -> Self {
        RulesSettings {
            default_action: "hangup 21".into(),
            time_zone: "local".into(),
        }
    }
}

/// What a call gets when no decision can be made in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailPolicy {
    /// Let the call through (`CALLGUARD_VERDICT=allow`): a screening outage never costs a
    /// customer's call.
    FailOpen,
    /// Refuse it with the default action: nothing unscreened gets through.
    FailClosed,
}

impl FailPolicy {
    /// The config spelling, also the metric label and the `CALLGUARD_RULE` value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailPolicy::FailOpen => "fail_open",
            FailPolicy::FailClosed => "fail_closed",
        }
    }
}

/// What the sidecar does on a block verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBlock {
    /// Set the variables, then carry out the rule's action (hang up, busy, redirect...).
    Hangup,
    /// Only set the variables; the dialplan branches on `CALLGUARD_VERDICT`.
    Dialplan,
}

/// `[agi]`: the FastAGI server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgiSettings {
    /// Listen address.
    pub listen: String,
    /// `hangup` (sidecar carries out the rule's action) or `dialplan` (only sets variables).
    pub on_block: OnBlock,
    /// Longest wait for Asterisk's environment block, in ms.
    pub read_timeout_ms: u64,
    /// Longest wait for Asterisk's reply to one command, in ms.
    pub reply_timeout_ms: u64,
    /// Most simultaneous AGI sessions; one more is refused (closed at once, Asterisk goes on
    /// with the call).
    pub max_connections: usize,
    /// Longest accepted line from Asterisk, in bytes.
    pub max_line_bytes: usize,
    /// Largest accepted environment block, in bytes.
    pub max_env_bytes: usize,
    /// Source addresses (CIDR or single addresses) allowed to connect; others are refused.
    pub allow_from: Vec<String>,
}

impl Default for AgiSettings {
    fn default() -> Self {
        AgiSettings {
            listen: "127.0.0.1:4573".into(),
            on_block: OnBlock::Hangup,
            read_timeout_ms: 2_000,
            reply_timeout_ms: 2_000,
            max_connections: 4_096,
            max_line_bytes: 8_192,
            max_env_bytes: 64 * 1024,
            allow_from: crate::access::default_allow_from(),
        }
    }
}

/// `[esl]`: the FreeSWITCH Event Socket server for the dialplan `socket` application.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EslSettings {
    /// Listen address, or `off` to run without it.
    pub listen: String,
    /// `hangup` (carry out the rule's action) or `dialplan` (only set variables, then resume).
    pub on_block: OnBlock,
    /// Longest wait for FreeSWITCH's reply to `connect` (the channel data), in ms.
    pub read_timeout_ms: u64,
    /// Longest wait for the reply to one command, in ms.
    pub reply_timeout_ms: u64,
    /// Longest wait for an executed application (`set`, `transfer`) to complete, in ms.
    pub execute_timeout_ms: u64,
    /// Longest wait for a `playback` action to finish before hanging up, in ms.
    pub playback_timeout_ms: u64,
    /// Most simultaneous sessions; one more is refused (closed at once, the `socket`
    /// application returns and the dialplan goes on).
    pub max_connections: usize,
    /// Largest accepted header block (the channel data is one), in bytes.
    pub max_header_bytes: usize,
    /// Largest accepted message body (`Content-Length`), in bytes.
    pub max_body_bytes: usize,
    /// Source addresses (CIDR or single addresses) allowed to connect; others are refused.
    pub allow_from: Vec<String>,
}

impl Default for EslSettings {
    fn default() -> Self {
        EslSettings {
            listen: "127.0.0.1:8084".into(),
            on_block: OnBlock::Hangup,
            read_timeout_ms: 2_000,
            reply_timeout_ms: 2_000,
            execute_timeout_ms: 2_000,
            playback_timeout_ms: 60_000,
            max_connections: 4_096,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            allow_from: crate::access::default_allow_from(),
        }
    }
}

impl EslSettings {
    /// The codec's size caps.
    pub fn limits(&self) -> crate::esl::codec::Limits {
        crate::esl::codec::Limits {
            max_header_block: self.max_header_bytes,
            max_body: self.max_body_bytes,
            ..crate::esl::codec::Limits::default()
        }
    }

    /// The address to listen on, `None` when `listen = "off"`.
    pub fn listen_addr(&self) -> Option<&str> {
        (!self.listen.trim().eq_ignore_ascii_case("off")).then_some(self.listen.trim())
    }
}

/// `[esl_inbound]`: callguard connects to FreeSWITCH's Event Socket (port 8021) and screens
/// the calls a one-line dialplan parks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EslInboundSettings {
    /// FreeSWITCH's Event Socket address, or `off`.
    pub connect: String,
    /// Its password (event_socket.conf.xml `password`).
    pub password: String,
    /// Event that hands a call to callguard.
    pub event: String,
    /// Where allowed and tagged calls go next: `uuid_transfer <uuid> <destination> XML <this>`;
    /// empty leaves them where they are.
    pub continue_context: String,
    /// `hangup` (carry out the rule's action) or `dialplan` (only set variables, then continue).
    pub on_block: OnBlock,
    /// Longest wait for one reply, in ms.
    pub reply_timeout_ms: u64,
    /// Longest wait between reconnect attempts, in ms.
    pub max_backoff_ms: u64,
}

impl Default for EslInboundSettings {
    fn default() -> Self {
        EslInboundSettings {
            connect: "off".into(),
            password: "ClueCon".into(),
            event: "CHANNEL_PARK".into(),
            continue_context: String::new(),
            on_block: OnBlock::Hangup,
            reply_timeout_ms: 2_000,
            max_backoff_ms: 5_000,
        }
    }
}

impl EslInboundSettings {
    /// The address to connect to, `None` when `connect = "off"`.
    pub fn connect_addr(&self) -> Option<&str> {
        (!self.connect.trim().eq_ignore_ascii_case("off")).then_some(self.connect.trim())
    }
}

/// `[flood]`: detectors and the bans they write (ordinary expiring block rules).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodConfig {
    /// Run the detectors.
    pub enabled: bool,
    /// Keys each detector tracks at most (memory bound).
    pub max_tracked: usize,
    /// With Redis: share call counts with the other callguard nodes, so a flood spread over
    /// several PBX nodes is still seen.
    pub shared: bool,
    /// One caller calling too often.
    pub per_caller: FloodRate,
    /// Many numbers sharing all but their last `suffix_digits` digits.
    pub ranges: Vec<FloodRange>,
    /// One caller ringing many different DIDs or tenants.
    pub fan_out: FloodFanOut,
    /// A DID or tenant receiving too many calls: the "under attack" state and its policy.
    pub target: FloodTarget,
}

/// What changes for a DID or tenant under attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackPolicy {
    /// Only report it (logs, metrics).
    None,
    /// Also refuse anonymous callers and caller IDs that are not valid numbers.
    BlockAnonymousInvalid,
    /// Admit only allow-listed callers.
    AllowListedOnly,
}

/// `[flood.target]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodTarget {
    /// On or off (off by default: the right rate depends on the installation).
    pub enabled: bool,
    /// Window the rate is measured over, in seconds.
    pub window_s: u64,
    /// More calls per second than this to one DID or tenant start the attack state.
    pub calls_per_second: f64,
    /// The state ends once the rate has stayed at or below the limit this long, in seconds.
    pub hold_down_s: u64,
    /// What changes meanwhile.
    pub policy: AttackPolicy,
}

impl Default for FloodTarget {
    fn default() -> Self {
        FloodTarget {
            enabled: false,
            window_s: 10,
            calls_per_second: 20.0,
            hold_down_s: 60,
            policy: AttackPolicy::BlockAnonymousInvalid,
        }
    }
}

/// `[flood.per_caller]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodRate {
    /// On or off.
    pub enabled: bool,
    /// Window, in seconds.
    pub window_s: u64,
    /// More calls than this within the window trip it.
    pub threshold: u32,
    /// Ban length, in seconds.
    pub ban_s: u64,
}

impl Default for FloodRate {
    fn default() -> Self {
        FloodRate {
            enabled: true,
            window_s: 60,
            threshold: 10,
            ban_s: 3600,
        }
    }
}

/// `[[flood.ranges]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodRange {
    /// K: the numbers share all but their last K digits.
    pub suffix_digits: u8,
    /// Window, in seconds.
    pub window_s: u64,
    /// More calls than this from the range within the window trip it.
    pub threshold: u32,
    /// Ban length, in seconds.
    pub ban_s: u64,
}

/// `[flood.fan_out]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodFanOut {
    /// On or off.
    pub enabled: bool,
    /// Window, in seconds.
    pub window_s: u64,
    /// More distinct DIDs/tenants than this within the window trip it.
    pub distinct_targets: u32,
    /// Ban length, in seconds.
    pub ban_s: u64,
}

impl Default for FloodFanOut {
    fn default() -> Self {
        FloodFanOut {
            enabled: true,
            window_s: 300,
            distinct_targets: 10,
            ban_s: 3600,
        }
    }
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            enabled: true,
            max_tracked: 100_000,
            shared: true,
            per_caller: FloodRate::default(),
            ranges: vec![
                FloodRange {
                    suffix_digits: 2,
                    window_s: 60,
                    threshold: 30,
                    ban_s: 3600,
                },
                FloodRange {
                    suffix_digits: 4,
                    window_s: 60,
                    threshold: 100,
                    ban_s: 3600,
                },
            ],
            fan_out: FloodFanOut::default(),
            target: FloodTarget::default(),
        }
    }
}

impl FloodConfig {
    /// The detectors' settings, checked.
    pub fn settings(&self) -> Result<crate::flood::FloodSettings, ConfigError> {
        use crate::flood::{FanOutLimit, FloodSettings, RangeLimit, RateLimit, TargetLimit};
        let secs = Duration::from_secs;
        let settings = FloodSettings {
            per_caller: self.per_caller.enabled.then(|| RateLimit {
                window: secs(self.per_caller.window_s),
                threshold: self.per_caller.threshold,
                ban: secs(self.per_caller.ban_s),
            }),
            ranges: self
                .ranges
                .iter()
                .map(|r| RangeLimit {
                    suffix_digits: r.suffix_digits,
                    window: secs(r.window_s),
                    threshold: r.threshold,
                    ban: secs(r.ban_s),
                })
                .collect(),
            fan_out: self.fan_out.enabled.then(|| FanOutLimit {
                window: secs(self.fan_out.window_s),
                distinct_targets: self.fan_out.distinct_targets,
                ban: secs(self.fan_out.ban_s),
                range_suffix_digits: None,
            }),
            target: self.target.enabled.then(|| TargetLimit {
                window: secs(self.target.window_s),
                calls_per_second: self.target.calls_per_second,
                hold_down: secs(self.target.hold_down_s),
            }),
            max_tracked: self.max_tracked,
        };
        settings.validate().map_err(|e| ConfigError::Invalid {
            key: "flood",
            message: e.to_string(),
        })?;
        Ok(settings)
    }
}

/// `[metrics]`: `/metrics`, `/healthz` and `/readyz` on their own listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address, or `off`.
    pub listen: String,
    /// Most tenants shown by name in metric labels; the rest are `other`.
    pub tenant_cap: usize,
    /// Source addresses (CIDR or single addresses) allowed to connect (Prometheus, probes).
    pub allow_from: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9573".into(),
            tenant_cap: 50,
            allow_from: crate::access::default_allow_from(),
        }
    }
}

impl MetricsConfig {
    /// The address to listen on, `None` when `listen = "off"`.
    pub fn listen_addr(&self) -> Option<&str> {
        (!self.listen.trim().eq_ignore_ascii_case("off")).then_some(self.listen.trim())
    }
}

/// `[api]`: the admin HTTP API (JSON) on its own listener; off unless `listen` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address (e.g. `127.0.0.1:9574`), or `off`.
    pub listen: String,
    /// Source addresses (CIDR or single addresses) allowed to connect.
    pub allow_from: Vec<String>,
    /// Most requests served at once; more are refused (closed).
    pub max_connections: usize,
    /// Largest request body accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// Bearer tokens, stored as SHA-256 hashes (`callguard api-token` makes them).
    pub tokens: Vec<ApiTokenConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "off".into(),
            allow_from: crate::access::default_allow_from(),
            max_connections: 16,
            max_body_bytes: 64 * 1024,
            tokens: Vec::new(),
        }
    }
}

impl ApiConfig {
    /// The address to listen on, `None` when `listen = "off"`.
    pub fn listen_addr(&self) -> Option<&str> {
        (!self.listen.trim().eq_ignore_ascii_case("off")).then_some(self.listen.trim())
    }
}

/// One `[[api.tokens]]` entry: the hash of a bearer token and what it may touch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    /// A label for logs and `added_by` (`api:NAME`), e.g. who holds the token.
    #[serde(default)]
    pub name: String,
    /// Lowercase hex SHA-256 of the token text; the token itself is never stored.
    pub token_sha256: String,
    /// The one tenant this token sees and edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `global`: every tenant and the global lists. Exactly one of `tenant` and `scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// `[call_log]`: a record of screened calls (`callguard log`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallLogConfig {
    /// Keep a call log.
    pub enabled: bool,
    /// Record allowed calls too (default: blocked and tagged calls only).
    pub all_calls: bool,
    /// Redis: the stream `<prefix>:calls` keeps about this many records.
    pub max_entries: u64,
    /// Embedded store: the log file; empty = `calls.log` next to the list file.
    pub file: String,
    /// Embedded store: rotate the file at this size, in bytes.
    pub max_file_bytes: u64,
    /// Embedded store: rotated files kept.
    pub keep_files: u32,
}

impl Default for CallLogConfig {
    fn default() -> Self {
        CallLogConfig {
            enabled: true,
            all_calls: false,
            max_entries: 100_000,
            file: String::new(),
            max_file_bytes: 10 * 1024 * 1024,
            keep_files: 3,
        }
    }
}

impl CallLogConfig {
    /// The writer's settings.
    pub fn settings(&self) -> crate::calllog::CallLogSettings {
        crate::calllog::CallLogSettings {
            all_calls: self.all_calls,
            max_entries: self.max_entries,
            max_file_bytes: self.max_file_bytes,
            keep_files: self.keep_files,
        }
    }
}

/// `[redis]`: the Redis store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Key prefix: keys are `<prefix>:block:<number>` and `<prefix>:allow:<number>`.
    pub key_prefix: String,
    /// Connect timeout, in ms.
    pub connect_timeout_ms: u64,
    /// Timeout for one Redis operation, in ms.
    pub op_timeout_ms: u64,
    /// Turn on keyspace notifications (`CONFIG SET notify-keyspace-events`) if the server allows.
    pub configure_notifications: bool,
    /// Without notifications: full reload interval, in ms (cost grows with list size).
    pub poll_interval_ms: u64,
    /// With notifications: safety-net full reload interval, in ms (a 10-million-entry list
    /// takes tens of seconds of Redis work to reload).
    pub full_resync_interval_ms: u64,
    /// Longest wait between reconnect attempts, in ms.
    pub max_backoff_ms: u64,
    /// `block`/`unblock` also SCAN for hand-typed spellings of a number while the database
    /// holds at most this many keys; above it they rely on the alias sets servers keep.
    pub spelling_scan_max_keys: u64,
    /// Snapshot file: the last list loaded from Redis, kept on disk so a restart decides
    /// from it at once instead of from an empty list; empty = off.
    pub snapshot_file: String,
    /// Shortest time between two writes of the snapshot file, in ms.
    pub snapshot_file_interval_ms: u64,
    /// `rediss://`: CA certificate(s) (PEM) the server's certificate must chain to, instead of
    /// the system's; empty = system roots.
    pub tls_ca_file: String,
    /// `rediss://` with client certificates (mutual TLS): certificate chain (PEM); empty = none.
    pub tls_cert_file: String,
    /// The client certificate's private key (PEM); set with `tls_cert_file`.
    pub tls_key_file: String,
    /// `redis+sentinel://`: user for the sentinels themselves (the URL's is the master's).
    pub sentinel_username: String,
    /// `redis+sentinel://`: password for the sentinels; empty = none.
    pub sentinel_password: String,
    /// Sentinel and Cluster: how often the sync asks which nodes are masters, in ms; a change
    /// (failover) makes it reconnect, resubscribe and reload.
    pub topology_check_interval_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            key_prefix: "callguard".into(),
            connect_timeout_ms: 1_000,
            op_timeout_ms: 2_000,
            configure_notifications: true,
            poll_interval_ms: 500,
            full_resync_interval_ms: 3_600_000,
            max_backoff_ms: 5_000,
            spelling_scan_max_keys: 200_000,
            snapshot_file: String::new(),
            snapshot_file_interval_ms: 300_000,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            sentinel_username: String::new(),
            sentinel_password: String::new(),
            topology_check_interval_ms: 1_000,
        }
    }
}

impl RedisSettings {
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Per-operation timeout.
    pub fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }
    /// How often Sentinel/Cluster masters are checked.
    pub fn topology_check_interval(&self) -> Duration {
        Duration::from_millis(self.topology_check_interval_ms.max(100))
    }
}

/// `[local]`: the embedded store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalSettings {
    /// How often the server checks the list file for edits, in ms.
    pub poll_interval_ms: u64,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            poll_interval_ms: 200,
        }
    }
}

/// Values given as command-line flags; they win over file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--store`.
    pub store: Option<String>,
    /// `--agi-listen`.
    pub agi_listen: Option<String>,
    /// `--esl-listen`.
    pub esl_listen: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// `--country` (where a subcommand takes it).
    pub default_country: Option<String>,
}

impl Config {
    /// Loads `file` (or [`DEFAULT_CONFIG_FILE`] if it exists), then `CALLGUARD_*` variables from
    /// `env` (nested keys with `__`, e.g. `CALLGUARD_AGI__LISTEN`), then `overrides`; validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                builder = builder.add_source(
                    config::File::from(path)
                        .format(config::FileFormat::Toml)
                        .required(true),
                );
            }
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                builder = builder.add_source(
                    config::File::with_name(DEFAULT_CONFIG_FILE).format(config::FileFormat::Toml),
                );
            }
            None => {}
        }
        // CALLGUARD_CONFIG names the file itself; it is not a key.
        let vars: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CALLGUARD_") && k != "CALLGUARD_CONFIG")
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("CALLGUARD")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        builder = builder
            .set_override_option("store", overrides.store.clone())?
            .set_override_option("agi.listen", overrides.agi_listen.clone())?
            .set_override_option("esl.listen", overrides.esl_listen.clone())?
            .set_override_option("metrics.listen", overrides.metrics_listen.clone())?
            .set_override_option("default_country", overrides.default_country.clone())?;
        let config: Config = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML text alone (no environment), validated; used for shipped examples.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.store.trim().is_empty() {
            return invalid("store", "must not be empty".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return invalid("log_level", format!("{:?}: {e}", self.log_level));
        }
        self.normalizer()?;
        if let Err(e) = self.agi.listen.parse::<SocketAddr>() {
            return invalid(
                "agi.listen",
                format!("{:?} is not an address:port ({e})", self.agi.listen),
            );
        }
        self.default_action()?;
        self.flood.settings()?;
        self.time_zone()?;
        self.did_tenants()?;
        if let Some(addr) = self.esl.listen_addr()
            && let Err(e) = addr.parse::<SocketAddr>()
        {
            return invalid(
                "esl.listen",
                format!("{addr:?} is not an address:port or \"off\" ({e})"),
            );
        }
        if self.esl_inbound.event.is_empty()
            || !self
                .esl_inbound
                .event
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_')
        {
            return invalid(
                "esl_inbound.event",
                "must be an event name such as CHANNEL_PARK".into(),
            );
        }
        if self.call_log.max_entries == 0 || self.call_log.max_file_bytes < 1024 {
            return invalid(
                "call_log",
                "max_entries must be > 0 and max_file_bytes at least 1024".into(),
            );
        }
        if let Some(addr) = self.metrics.listen_addr()
            && let Err(e) = addr.parse::<SocketAddr>()
        {
            return invalid(
                "metrics.listen",
                format!("{addr:?} is not an address:port or \"off\" ({e})"),
            );
        }
        if self.esl.max_connections == 0 {
            return invalid("esl.max_connections", "must be at least 1".into());
        }
        if self.agi.max_connections == 0 {
            return invalid("agi.max_connections", "must be at least 1".into());
        }
        if self.agi.max_line_bytes < 1024 {
            return invalid("agi.max_line_bytes", "must be at least 1024".into());
        }
        if self.agi.max_env_bytes < self.agi.max_line_bytes {
            return invalid(
                "agi.max_env_bytes",
                "must be at least agi.max_line_bytes".into(),
            );
        }
        if self.esl.max_header_bytes < 4096 || self.esl.max_body_bytes < 4096 {
            return invalid(
                "esl.max_header_bytes",
                "esl.max_header_bytes and esl.max_body_bytes must be at least 4096".into(),
            );
        }
        if !(1..=10_000).contains(&self.decision_budget_ms) {
            return invalid(
                "decision_budget_ms",
                "must be between 1 and 10000 (Asterisk waits for callguard without a timeout)"
                    .into(),
            );
        }
        self.agi_allow()?;
        self.esl_allow()?;
        self.metrics_allow()?;
        self.api_allow()?;
        self.api_tokens()?;
        if let Some(addr) = self.api.listen_addr()
            && let Err(e) = addr.parse::<SocketAddr>()
        {
            return invalid(
                "api.listen",
                format!("{addr:?} is not an address:port or \"off\" ({e})"),
            );
        }
        if self.api.max_connections == 0 {
            return invalid("api.max_connections", "must be at least 1".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.api.max_body_bytes) {
            return invalid(
                "api.max_body_bytes",
                "must be between 1024 and 16777216".into(),
            );
        }
        let positive = [
            ("agi.read_timeout_ms", self.agi.read_timeout_ms),
            ("agi.reply_timeout_ms", self.agi.reply_timeout_ms),
            ("esl.read_timeout_ms", self.esl.read_timeout_ms),
            ("esl.reply_timeout_ms", self.esl.reply_timeout_ms),
            ("esl.execute_timeout_ms", self.esl.execute_timeout_ms),
            ("esl.playback_timeout_ms", self.esl.playback_timeout_ms),
            (
                "esl_inbound.reply_timeout_ms",
                self.esl_inbound.reply_timeout_ms,
            ),
            (
                "esl_inbound.max_backoff_ms",
                self.esl_inbound.max_backoff_ms,
            ),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.op_timeout_ms", self.redis.op_timeout_ms),
            ("redis.poll_interval_ms", self.redis.poll_interval_ms),
            (
                "redis.full_resync_interval_ms",
                self.redis.full_resync_interval_ms,
            ),
            ("redis.max_backoff_ms", self.redis.max_backoff_ms),
            (
                "redis.snapshot_file_interval_ms",
                self.redis.snapshot_file_interval_ms,
            ),
            ("local.poll_interval_ms", self.local.poll_interval_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            return invalid(
                "redis.key_prefix",
                "must be non-empty, without spaces".into(),
            );
        }
        Ok(())
    }

    /// The decision settings.
    pub fn engine_settings(&self) -> Result<crate::engine::EngineSettings, ConfigError> {
        Ok(crate::engine::EngineSettings {
            default_action: self.default_action()?,
            did_tenants: std::sync::Arc::new(self.did_tenants()?),
            attack_policy: self.flood.target.policy,
            fail_policy: self.fail_policy,
            decision_budget: Duration::from_millis(self.decision_budget_ms),
        })
    }

    /// `agi.allow_from`, parsed.
    pub fn agi_allow(&self) -> Result<AllowList, ConfigError> {
        allow_list("agi.allow_from", &self.agi.allow_from)
    }

    /// `esl.allow_from`, parsed.
    pub fn esl_allow(&self) -> Result<AllowList, ConfigError> {
        allow_list("esl.allow_from", &self.esl.allow_from)
    }

    /// `metrics.allow_from`, parsed.
    pub fn metrics_allow(&self) -> Result<AllowList, ConfigError> {
        allow_list("metrics.allow_from", &self.metrics.allow_from)
    }

    /// `api.allow_from`, parsed.
    pub fn api_allow(&self) -> Result<AllowList, ConfigError> {
        allow_list("api.allow_from", &self.api.allow_from)
    }

    /// `[[api.tokens]]`, checked: hashes and scopes.
    pub fn api_tokens(&self) -> Result<crate::api::auth::Tokens, ConfigError> {
        crate::api::auth::Tokens::from_config(&self.api.tokens).map_err(|e| ConfigError::Invalid {
            key: "api.tokens",
            message: e.to_string(),
        })
    }

    /// The normalizer for `default_country` with the built-in plans plus `numbering_plans`.
    pub fn normalizer(&self) -> Result<Normalizer, ConfigError> {
        let plans = match &self.numbering_plans {
            None => NumberingPlans::builtin().clone(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    key: "numbering_plans",
                    message: format!("{}: {e}", path.display()),
                })?;
                let extra = NumberingPlans::from_toml(&text).map_err(|e| ConfigError::Invalid {
                    key: "numbering_plans",
                    message: format!("{}: {e}", path.display()),
                })?;
                NumberingPlans::builtin().merged_with(extra)
            }
        };
        Normalizer::new(&plans, &self.default_country).map_err(|e| ConfigError::Invalid {
            key: "default_country",
            message: e.to_string(),
        })
    }

    /// `rules.default_action`, parsed.
    pub fn default_action(&self) -> Result<RuleAction, ConfigError> {
        self.rules
            .default_action
            .parse()
            .map_err(
                |e: crate::rules::action::ActionError| ConfigError::Invalid {
                    key: "rules.default_action",
                    message: e.to_string(),
                },
            )
    }

    /// `rules.time_zone`, resolved (`local` = the machine's zone).
    pub fn time_zone(&self) -> Result<TimeZone, ConfigError> {
        TimeZone::parse(&self.rules.time_zone).map_err(|e| ConfigError::Invalid {
            key: "rules.time_zone",
            message: e.to_string(),
        })
    }

    /// `[dids]` with canonical numbers and checked tenant names.
    pub fn did_tenants(&self) -> Result<HashMap<CallerNumber, Tenant>, ConfigError> {
        let normalizer = self.normalizer()?;
        let mut out = HashMap::new();
        for (did, tenant) in &self.dids {
            let invalid = |message: String| ConfigError::Invalid {
                key: "dids",
                message,
            };
            let number = match normalizer.normalize(did) {
                n @ (CallerNumber::E164(_) | CallerNumber::Local(_)) => n,
                other => return Err(invalid(format!("{did:?} is not a number ({other})"))),
            };
            let tenant = Tenant::new(tenant).map_err(|e| invalid(e.to_string()))?;
            if let Some(previous) = out.insert(number.clone(), tenant.clone())
                && previous != tenant
            {
                return Err(invalid(format!(
                    "{number} is mapped to both {previous} and {tenant}"
                )));
            }
        }
        Ok(out)
    }

    /// Where the call log goes for the configured store.
    pub fn call_log_sink(&self, store: &crate::store::Store) -> crate::calllog::Sink {
        match (self.store_location(), self.call_log.file.trim()) {
            (StoreLocation::Redis(_), _) => crate::calllog::Sink::Redis(store.clone()),
            (StoreLocation::Local(path), "") => {
                crate::calllog::Sink::File(crate::calllog::file_for_store(&path))
            }
            (StoreLocation::Local(_), file) => crate::calllog::Sink::File(PathBuf::from(file)),
        }
    }

    /// The configured store location.
    pub fn store_location(&self) -> StoreLocation {
        StoreLocation::parse(&self.store)
    }

    /// Checks what `serve --check-config` can without connecting: a Redis URL parses, an
    /// embedded store's directory exists.
    pub fn check_store(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "store",
            message,
        };
        match self.store_location() {
            StoreLocation::Redis(url) => {
                // Parses the URL, the TLS files and the deployment kind; connects to nothing.
                crate::store::redis_conn::RedisConn::new(&url, &self.redis)
                    .map_err(|e| invalid(format!("not a usable Redis store: {e}")))?;
            }
            StoreLocation::Local(path) => {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !dir.is_dir() {
                    return Err(invalid(format!(
                        "directory {} of the embedded store does not exist",
                        dir.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The effective config as TOML (for `serve --print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

fn allow_list(key: &'static str, entries: &[String]) -> Result<AllowList, ConfigError> {
    AllowList::parse(entries).map_err(|e| ConfigError::Invalid {
        key,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../deploy/callguard.toml");
        let config = Config::from_toml(text).expect("deploy/callguard.toml must parse");
        assert_eq!(config.agi.listen, "127.0.0.1:4573");
        assert_eq!(config.api.listen_addr(), None, "the API ships off");
        assert!(config.api.tokens.is_empty());
    }

    #[test]
    fn api_tokens_are_checked_at_load() {
        let hash = "a".repeat(64);
        let ok = format!(
            "[api]\nlisten = \"127.0.0.1:9574\"\n[[api.tokens]]\ntoken_sha256 = \"{hash}\"\nscope = \"global\"\n"
        );
        let config = Config::from_toml(&ok).expect("valid api config");
        assert_eq!(config.api.listen_addr(), Some("127.0.0.1:9574"));
        assert!(config.api_tokens().is_ok_and(|t| !t.is_empty()));
        for bad in [
            "[api]\nlisten = \"nowhere\"\n".to_owned(),
            "[api]\nmax_connections = 0\n".to_owned(),
            "[api]\nmax_body_bytes = 10\n".to_owned(),
            "[api]\nallow_from = [\"10.0.0.0/33\"]\n".to_owned(),
            "[[api.tokens]]\ntoken_sha256 = \"abc\"\nscope = \"global\"\n".to_owned(),
            format!("[[api.tokens]]\ntoken_sha256 = \"{hash}\"\n"),
            format!(
                "[[api.tokens]]\ntoken = \"cg_x\"\ntoken_sha256 = \"{hash}\"\nscope = \"global\"\n"
            ),
        ] {
            assert!(Config::from_toml(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layering_file_env_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "store = \"/tmp/a.toml\"\n[rules]\ndefault_action = \"busy\"\n[agi]\nlisten = \"127.0.0.1:1\"\n",
        )
        .expect("write");
        let env = vec![
            ("CALLGUARD_AGI__LISTEN".to_owned(), "127.0.0.1:2".to_owned()),
            ("CALLGUARD_CONFIG".to_owned(), "ignored".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let config = Config::load(Some(&path), env.clone(), &Overrides::default()).expect("load");
        assert_eq!(config.agi.listen, "127.0.0.1:2");
        assert_eq!(config.default_action().ok(), Some(RuleAction::Busy));
        assert_eq!(config.store, "/tmp/a.toml");
        let flags = Overrides {
            agi_listen: Some("127.0.0.1:3".into()),
            esl_listen: None,
            metrics_listen: None,
            store: Some("redis://127.0.0.1:7777/0".into()),
            default_country: None,
        };
        let config = Config::load(Some(&path), env, &flags).expect("load");
        assert_eq!(config.agi.listen, "127.0.0.1:3");
        assert_eq!(config.store, "redis://127.0.0.1:7777/0");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::from_toml("stor = \"x\"\n").is_err());
        assert!(Config::from_toml("[agi]\nlisten = \"nowhere\"\n").is_err());
        assert!(Config::from_toml("default_country = \"ZZ\"\n").is_err());
        assert!(Config::from_toml("[agi]\nhangup_cause = 21\n").is_err());
        assert!(Config::from_toml("[rules]\ndefault_action = \"hangup 0\"\n").is_err());
        assert!(Config::from_toml("[rules]\ntime_zone = \"Mars/Olympus\"\n").is_err());
        assert!(Config::from_toml("[dids]\n\"+74951112233\" = \"a b\"\n").is_err());
        assert!(
            Config::from_toml("[dids]\n\"+74951112233\" = \"a\"\n\"84951112233\" = \"b\"\n")
                .is_err()
        );
        let env = vec![("CALLGUARD_NOPE".to_owned(), "1".to_owned())];
        assert!(Config::load(None, env, &Overrides::default()).is_err());
        assert!(Config::load(None, no_env(), &Overrides::default()).is_ok());
    }

    #[test]
    fn did_map_normalizes_numbers() {
        let config = Config::from_toml(
            "[dids]\n\"+74951112233\" = \"Acme\"\n\"8 (495) 111-22-44\" = \"globex\"\n",
        )
        .expect("dids parse");
        let map = config.did_tenants().expect("map");
        let n = config.normalizer().expect("normalizer");
        assert_eq!(
            map.get(&n.normalize("84951112233")).map(Tenant::as_str),
            Some("acme")
        );
        assert_eq!(
            map.get(&n.normalize("+74951112244")).map(Tenant::as_str),
            Some("globex")
        );
    }

    #[test]
    fn print_config_roundtrips() {
        let config = Config::default();
        let again = Config::from_toml(&config.to_toml()).expect("printed config parses");
        assert_eq!(again.agi.listen, config.agi.listen);
    }
}
