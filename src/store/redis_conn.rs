//! One Redis deployment behind one handle: a single server, the master that Sentinel names, or
//! a Cluster. Owns the store URL's syntax, TLS material, master discovery, reconnects and how a
//! batch of commands is sent to each kind; the store above never asks which kind it talks to.
//! Knows nothing of key layout or entries.
//!
//! URLs (credentials `user:pass@` are for the data nodes; the sentinels' own are config keys):
//! - `redis://[user:pass@]host:port[/db]`, `rediss://...` (TLS), `unix://`, `redis+unix://`
//! - `redis+sentinel://[user:pass@]host1:26379,host2:26379[,...]/<master-name>[/db]`,
//!   `rediss+sentinel://...` (TLS to sentinels and master alike)
//! - `redis+cluster://[user:pass@]host1:7000,host2:7001[,...]` (seed nodes; db 0 only),
//!   `rediss+cluster://...`

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisFuture, RedisResult, Value};
use tokio::time::timeout;

use super::StoreError;
use crate::config::RedisSettings;

/// Which kind of deployment a store URL names, with what is needed to reach its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Deployment {
    /// One server (`redis://`, `rediss://`, unix sockets): the URL as given.
    Single(String),
    /// Master found through Sentinel.
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
        /// Template for the master's URL: `{}` stands for its `host:port`.
        node_url: NodeUrl,
    },
    /// Cluster: seed nodes.
    Cluster {
        /// `host:port` of each seed.
        seeds: Vec<String>,
        /// Template for a node's URL.
        node_url: NodeUrl,
    },
}

/// What a node's URL is made of besides its address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeUrl {
    tls: bool,
    /// `user:pass` as written in the URL (still percent-encoded), if any.
    userinfo: Option<String>,
    db: i64,
}

impl NodeUrl {
    fn for_node(&self, host_port: &str) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.userinfo {
            Some(u) => format!("{scheme}://{u}@{host_port}/{}", self.db),
            None => format!("{scheme}://{host_port}/{}", self.db),
        }
    }
}

impl Deployment {
    fn parse(url: &str) -> Result<Deployment, StoreError> {
        let bad = |message: &str| StoreError::BadUrl(message.to_owned());
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("not a URL"));
        };
        let (tls, kind) = match scheme {
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            _ => return Ok(Deployment::Single(url.to_owned())),
        };
        if rest.contains(['?', '#']) {
            return Err(bad(
                "query parameters are not supported here; use [redis] keys",
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()).filter(|u| !u.is_empty()), h),
            None => (None, authority),
        };
        let default_port = if kind == "sentinel" { 26379 } else { 6379 };
        let hosts = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| with_port(h, default_port))
            .collect::<Vec<_>>();
        if hosts.is_empty() {
            return Err(bad("no host"));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        if kind == "cluster" {
            if parts.next().is_some_and(|db| db != "0") {
                return Err(bad("a cluster has database 0 only"));
            }
            return Ok(Deployment::Cluster {
                seeds: hosts,
                node_url: NodeUrl {
                    tls,
                    userinfo,
                    db: 0,
                },
            });
        }
        let Some(master) = parts.next() else {
            return Err(bad(
                "the master name is missing (redis+sentinel://hosts/<name>)",
            ));
        };
        let db = match parts.next() {
            Some(db) => db
                .parse()
                .map_err(|_| bad("the database is not a number"))?,
            None => 0,
        };
        Ok(Deployment::Sentinel {
            sentinels: hosts,
            master: master.to_owned(),
            node_url: NodeUrl { tls, userinfo, db },
        })
    }
}

/// `host` with `:port` added when it has none (`[::1]` style hosts included).
fn with_port(host: &str, port: u16) -> String {
    let has_port = match host.rsplit_once(':') {
        Some((h, p)) => !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok(),
        None => false,
    };
    if has_port && !(host.starts_with('[') && host.ends_with(']')) {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

/// A connection to send commands on, whichever kind of deployment; cheap to clone.
#[derive(Clone)]
pub enum Conn {
    /// Single server or Sentinel master: reconnects by itself.
    Manager(ConnectionManager),
    /// One cluster node, for commands that run on each node (SCAN, INFO, CONFIG).
    Node(MultiplexedConnection),
    /// A cluster: routes each command to the node owning its keys.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Commands sent together: one pipeline (a transaction when atomic) to a single server; to a
/// cluster, each command on its own to the node owning its key, all of one stage at once.
#[derive(Default)]
pub struct Batch {
    /// Each command, whether its reply is kept, and its stage.
    cmds: Vec<(Cmd, bool, usize)>,
    stage: usize,
    atomic: bool,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Runs as a MULTI/EXEC transaction on a single server (a cluster cannot: keys of one
    /// batch live on several nodes).
    pub fn atomic(&mut self) -> &mut Batch {
        self.atomic = true;
        self
    }

    /// Adds a command whose reply is returned.
    pub fn add(&mut self, cmd: Cmd) -> &mut Batch {
        self.cmds.push((cmd, true, self.stage));
        self
    }

    /// Adds a command whose reply is dropped (errors still fail the batch).
    pub fn add_ignored(&mut self, cmd: Cmd) -> &mut Batch {
        self.cmds.push((cmd, false, self.stage));
        self
    }

    /// Commands added after this one start only once every earlier one has been answered
    /// (a cluster sends one stage at a time; a pipeline is in order anyway).
    pub fn then(&mut self) -> &mut Batch {
        self.stage += 1;
        self
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Sends the batch on `conn`; the kept replies, in order, as `T`.
    pub async fn query<T: FromRedisValue>(self, conn: &mut Conn) -> RedisResult<T> {
        if let Conn::Cluster(cluster) = conn {
            let mut kept = Vec::new();
            for stage in 0..=self.stage {
                let replies =
                    futures_util::future::join_all(self.cmds.iter().filter(|c| c.2 == stage).map(
                        |(cmd, keep, _)| {
                            let mut c = cluster.clone();
                            async move { (cmd.query_async::<Value>(&mut c).await, *keep) }
                        },
                    ))
                    .await;
                for (reply, keep) in replies {
                    let reply = reply?;
                    if keep {
                        kept.push(reply);
                    }
                }
            }
            return Ok(T::from_redis_value(Value::Array(kept))?);
        }
        let mut pipe = redis::pipe();
        if self.atomic {
            pipe.atomic();
        }
        for (cmd, keep, _) in self.cmds {
            pipe.add_command(cmd);
            if !keep {
                pipe.ignore();
            }
        }
        pipe.query_async(conn).await
    }
}

/// Messages from the pub/sub connections of a [`RedisConn::subscribe`]; `None` once any of
/// them has closed.
pub struct Subscription {
    messages: Pin<Box<dyn Stream<Item = Option<redis::Msg>> + Send>>,
    /// The masters subscribed to, as [`RedisConn::masters`] names them.
    pub masters: Vec<String>,
}

impl Subscription {
    /// The next message; `None` when a connection closed (resubscribe).
    pub async fn next(&mut self) -> Option<redis::Msg> {
        self.messages.next().await.flatten()
    }

    /// The messages already received, without waiting for more (at most a million, so a
    /// steady stream cannot hold the caller); an error when a connection closed.
    pub fn take_ready(&mut self) -> Result<Vec<redis::Msg>, StoreError> {
        let mut ready = Vec::new();
        while ready.len() < 1_000_000 {
            match self.messages.next().now_or_never() {
                None => break,
                Some(Some(Some(msg))) => ready.push(msg),
                Some(Some(None) | None) => {
                    return Err(StoreError::Redis(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "pub/sub connection closed",
                    ))));
                }
            }
        }
        Ok(ready)
    }
}

/// Handle to a Redis deployment; cheap to clone.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
}

struct Inner {
    deployment: Deployment,
    /// Single server: its client and self-reconnecting connection.
    single: Option<(Client, ConnectionManager)>,
    certs: Option<redis::TlsCertificates>,
    connect_timeout: Duration,
    op_timeout: Duration,
    sentinel_username: String,
    sentinel_password: String,
    /// The command connection (Sentinel, Cluster) with what it is connected to; `None` until
    /// first used.
    /// A tokio mutex: finding a master awaits sentinels while holding it, so that concurrent
    /// callers wait for one lookup instead of each starting their own.
    current: tokio::sync::Mutex<Option<(String, Conn)>>,
    /// Sentinel: the master failed a command; ask the sentinels again before the next one.
    stale: AtomicBool,
    /// Sentinel: one connection per sentinel, kept for the sync's periodic question. A std
    /// mutex: only taken to clone or replace an entry, never across an await.
    sentinel_conns: std::sync::Mutex<std::collections::HashMap<String, MultiplexedConnection>>,
}

impl RedisConn {
    /// Prepares a handle for `url`; nothing is connected until first use, so a server can
    /// start while Redis is down.
    pub fn new(url: &str, settings: &RedisSettings) -> Result<RedisConn, StoreError> {
        install_crypto_provider();
        let deployment = Deployment::parse(url)?;
        let certs = tls_certificates(settings)?;
        let single = match &deployment {
            Deployment::Single(url) => {
                let client = client_for(url, certs.as_ref())?;
                // Lazy: the first command connects; a dead server is an error per command.
                let manager = ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    manager_config(settings),
                )?;
                Some((client, manager))
            }
            _ => None,
        };
        let inner = Inner {
            deployment,
            single,
            certs,
            connect_timeout: settings.connect_timeout(),
            op_timeout: settings.op_timeout(),
            sentinel_username: settings.sentinel_username.clone(),
            sentinel_password: settings.sentinel_password.clone(),
            current: tokio::sync::Mutex::new(None),
            stale: AtomicBool::new(false),
            sentinel_conns: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        Ok(RedisConn {
            inner: Arc::new(inner),
        })
    }

    fn node_config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect_timeout))
            .set_response_timeout(Some(self.inner.op_timeout))
    }

    /// True for a Cluster: one keyspace per master, multi-key commands within one slot only.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.deployment, Deployment::Cluster { .. })
    }

    /// True for Sentinel and Cluster, whose masters can change (failover).
    pub fn is_replicated(&self) -> bool {
        !matches!(self.inner.deployment, Deployment::Single(_))
    }

    /// Database number the data lives in (for keyspace channel names).
    pub fn db(&self) -> i64 {
        match &self.inner.deployment {
            Deployment::Single(_) => self
                .inner
                .single
                .as_ref()
                .map_or(0, |(c, _)| c.get_connection_info().redis_settings().db()),
            Deployment::Sentinel { node_url, .. } | Deployment::Cluster { node_url, .. } => {
                node_url.db
            }
        }
    }

    /// Names the deployment without credentials: the server, the sentinels and master name,
    /// or the cluster seeds.
    pub fn identity(&self) -> String {
        match &self.inner.deployment {
            Deployment::Single(_) => self
                .inner
                .single
                .as_ref()
                .map_or_else(String::new, |(c, _)| {
                    format!("{:?}", c.get_connection_info().addr())
                }),
            Deployment::Sentinel {
                sentinels, master, ..
            } => format!("sentinel {} {master}", sentinels.join(",")),
            Deployment::Cluster { seeds, .. } => format!("cluster {}", seeds.join(",")),
        }
    }

    /// The connection for commands: to the server, the current master, or the cluster.
    pub async fn get(&self) -> Result<Conn, StoreError> {
        if let Some((_, manager)) = &self.inner.single {
            return Ok(Conn::Manager(manager.clone()));
        }
        let budget = self.inner.connect_timeout + self.inner.op_timeout;
        match timeout(budget, self.get_inner()).await {
            Ok(conn) => conn,
            Err(_elapsed) => Err(StoreError::Timeout(budget)),
        }
    }

    async fn get_inner(&self) -> Result<Conn, StoreError> {
        let mut current = self.inner.current.lock().await;
        if let Some((_, conn)) = current.as_ref()
            && !self.inner.stale.load(Ordering::Acquire)
        {
            return Ok(conn.clone());
        }
        let (name, conn) = match &self.inner.deployment {
            Deployment::Single(_) => match &self.inner.single {
                Some((_, manager)) => (self.identity(), Conn::Manager(manager.clone())),
                None => return Err(StoreError::NoMaster(self.identity())),
            },
            Deployment::Sentinel { .. } => {
                let (addr, client) = self.find_master().await?;
                let manager = ConnectionManager::new_lazy_with_config(
                    client,
                    manager_config_of(self.inner.connect_timeout, self.inner.op_timeout),
                )?;
                (addr, Conn::Manager(manager))
            }
            Deployment::Cluster { seeds, node_url } => {
                let urls: Vec<String> = seeds.iter().map(|s| node_url.for_node(s)).collect();
                let mut builder = redis::cluster::ClusterClient::builder(urls)
                    .connection_timeout(self.inner.connect_timeout)
                    .response_timeout(self.inner.op_timeout)
                    .retries(2)
                    .max_retry_wait(500);
                if let Some(certs) = &self.inner.certs {
                    builder = builder.certs(certs.clone());
                }
                let cluster = builder.build()?.get_async_connection().await?;
                (self.identity(), Conn::Cluster(cluster))
            }
        };
        *current = Some((name, conn.clone()));
        self.inner.stale.store(false, Ordering::Release);
        Ok(conn)
    }

    /// A connection of its own whose replies may take up to `response_timeout`, for one
    /// long operation (a transaction of a whole import) that the shared connection's budget
    /// would cut short while Redis still applies it. A cluster routes each command by itself,
    /// with its usual budget per command.
    pub async fn long_conn(&self, response_timeout: Duration) -> Result<Conn, StoreError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        let client = match &self.inner.deployment {
            Deployment::Cluster { .. } => return self.get().await,
            Deployment::Single(_) => match &self.inner.single {
                Some((client, _)) => client.clone(),
                None => return Err(StoreError::NoMaster(self.identity())),
            },
            Deployment::Sentinel { .. } => {
                let budget = self.inner.connect_timeout + self.inner.op_timeout;
                match timeout(budget, self.find_master()).await {
                    Ok(found) => found?.1,
                    Err(_elapsed) => return Err(StoreError::Timeout(budget)),
                }
            }
        };
        let budget = self.inner.connect_timeout;
        match timeout(
            budget,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(conn) => Ok(Conn::Node(conn?)),
            Err(_elapsed) => Err(StoreError::Timeout(budget)),
        }
    }

    /// Notes that a command failed: with Sentinel, the master may have moved, so the next
    /// command asks the sentinels again.
    pub fn failed(&self) {
        if matches!(self.inner.deployment, Deployment::Sentinel { .. }) {
            self.inner.stale.store(true, Ordering::Release);
        }
    }

    /// Asks the sentinels, in order, for the master and checks that it says it is one
    /// (a sentinel that has not seen a failover yet names the old one); its address and client.
    async fn find_master(&self) -> Result<(String, Client), StoreError> {
        let Deployment::Sentinel {
            sentinels,
            master,
            node_url,
        } = &self.inner.deployment
        else {
            return Err(StoreError::BadUrl("not a sentinel URL".to_owned()));
        };
        let mut last = StoreError::NoMaster(master.clone());
        for sentinel in sentinels {
            let found = async {
                let addr = self.ask_sentinel(sentinel, master).await?;
                let client = client_for(&node_url.for_node(&addr), self.inner.certs.as_ref())?;
                let mut conn = self.connect(&client).await?;
                let role: Vec<Value> = self.run(redis::cmd("ROLE").query_async(&mut conn)).await?;
                match role.first() {
                    Some(Value::BulkString(r)) if r == b"master" => Ok((addr, client)),
                    _ => Err(StoreError::NoMaster(master.clone())),
                }
            }
            .await;
            match found {
                Ok(found) => return Ok(found),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel: `host:port`.
    async fn ask_sentinel(&self, sentinel: &str, master: &str) -> Result<String, StoreError> {
        let scheme = match &self.inner.deployment {
            Deployment::Sentinel { node_url, .. } if node_url.tls => "rediss",
            _ => "redis",
        };
        let mut info = format!("{scheme}://{sentinel}").into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if !self.inner.sentinel_username.is_empty() {
            settings = settings.set_username(&self.inner.sentinel_username);
        }
        if !self.inner.sentinel_password.is_empty() {
            settings = settings.set_password(&self.inner.sentinel_password);
        }
        info = info.set_redis_settings(settings);
        let cached = self
            .inner
            .sentinel_conns
            .lock()
            .ok()
            .and_then(|conns| conns.get(sentinel).cloned());
        let mut conn = match cached {
            Some(conn) => conn,
            None => {
                let client = match &self.inner.certs {
                    Some(certs) if scheme == "rediss" => {
                        Client::build_with_tls(info, certs.clone())?
                    }
                    _ => Client::open(info)?,
                };
                let conn = self.connect(&client).await?;
                if let Ok(mut conns) = self.inner.sentinel_conns.lock() {
                    conns.insert(sentinel.to_owned(), conn.clone());
                }
                conn
            }
        };
        let reply: Result<Option<(String, u16)>, StoreError> = self
            .run(
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async(&mut conn),
            )
            .await;
        if reply.is_err()
            && let Ok(mut conns) = self.inner.sentinel_conns.lock()
        {
            // Reconnect next time (the sentinel may have restarted).
            conns.remove(sentinel);
        }
        match reply? {
            Some((host, port)) if host.contains(':') => Ok(format!("[{host}]:{port}")),
            Some((host, port)) => Ok(format!("{host}:{port}")),
            None => Err(StoreError::NoMaster(master.to_owned())),
        }
    }

    async fn connect(&self, client: &Client) -> Result<MultiplexedConnection, StoreError> {
        let budget = self.inner.connect_timeout + self.inner.op_timeout;
        match timeout(
            budget,
            client.get_multiplexed_async_connection_with_config(&self.node_config()),
        )
        .await
        {
            Ok(conn) => Ok(conn?),
            Err(_elapsed) => Err(StoreError::Timeout(budget)),
        }
    }

    async fn run<T>(
        &self,
        what: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match timeout(self.inner.op_timeout, what).await {
            Ok(result) => Ok(result?),
            Err(_elapsed) => Err(StoreError::Timeout(self.inner.op_timeout)),
        }
    }

    /// The masters holding data now, as `host:port`, sorted: the server itself, the master
    /// the sentinels name, or the cluster's masters that own slots. A change means a failover.
    pub async fn masters(&self) -> Result<Vec<String>, StoreError> {
        // Every sentinel may be tried: bounded as a whole, the sync waits on this.
        let budget = self.inner.connect_timeout + self.inner.op_timeout;
        match timeout(budget, self.masters_inner()).await {
            Ok(masters) => masters,
            Err(_elapsed) => Err(StoreError::Timeout(budget)),
        }
    }

    async fn masters_inner(&self) -> Result<Vec<String>, StoreError> {
        match &self.inner.deployment {
            Deployment::Single(_) => Ok(vec![self.identity()]),
            Deployment::Sentinel {
                sentinels, master, ..
            } => {
                let mut last = StoreError::NoMaster(master.clone());
                for sentinel in sentinels {
                    match self.ask_sentinel(sentinel, master).await {
                        Ok(addr) => return Ok(vec![addr]),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Deployment::Cluster { .. } => {
                let mut conn = self.get().await?;
                let nodes: String = self
                    .run(redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn))
                    .await?;
                cluster_masters(&nodes).ok_or_else(|| {
                    StoreError::NoMaster("some cluster slots (failover in progress)".to_owned())
                })
            }
        }
    }

    /// Sentinel and Cluster, after writes: on each master that has a replica connected, waits
    /// (`WAIT 1`, up to `wait`) until one has this handle's writes. Returns the masters where
    /// none did in time. A single server, or a master without replicas, is not waited on.
    pub async fn wait_for_replicas(&self, wait: Duration) -> Result<Vec<String>, StoreError> {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let wait_cmd = || redis::cmd("WAIT").arg(1).arg(ms).to_owned();
        let budget = wait + self.inner.op_timeout;
        let mut lagging = Vec::new();
        match &self.inner.deployment {
            Deployment::Single(_) => {}
            Deployment::Sentinel { .. } => {
                let mut conn = self.get().await?;
                let role: Value = self.run(redis::cmd("ROLE").query_async(&mut conn)).await?;
                if replica_count(&role) > 0 {
                    let acked: u64 = timed(budget, wait_cmd().query_async(&mut conn)).await?;
                    if acked == 0 {
                        lagging.push(self.identity());
                    }
                }
            }
            Deployment::Cluster { .. } => {
                let Conn::Cluster(mut cluster) = self.get().await? else {
                    return Ok(lagging);
                };
                for addr in self.masters().await? {
                    let Some((host, port)) = addr.rsplit_once(':') else {
                        continue;
                    };
                    let Ok(port) = port.parse::<u16>() else {
                        continue;
                    };
                    // The same per-node connection the writes went over: WAIT counts its writes.
                    let route = || {
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.trim_matches(['[', ']']).to_owned(),
                            port,
                        })
                    };
                    let role = self
                        .run(cluster.route_command(redis::cmd("ROLE"), route()))
                        .await?;
                    if replica_count(&role) == 0 {
                        continue;
                    }
                    let acked = timed(budget, cluster.route_command(wait_cmd(), route())).await?;
                    if matches!(acked, Value::Int(0)) {
                        lagging.push(addr);
                    }
                }
            }
        }
        Ok(lagging)
    }

    /// One connection per master, for commands that act on one node's keyspace (SCAN, INFO,
    /// CONFIG): the command connection itself unless this is a cluster.
    pub async fn nodes(&self) -> Result<Vec<Conn>, StoreError> {
        let Deployment::Cluster { node_url, .. } = &self.inner.deployment else {
            return Ok(vec![self.get().await?]);
        };
        let mut out = Vec::new();
        for addr in self.masters().await? {
            let client = client_for(&node_url.for_node(&addr), self.inner.certs.as_ref())?;
            out.push(Conn::Node(self.connect(&client).await?));
        }
        Ok(out)
    }

    /// A pub/sub connection to one node: the server, the current master, or a cluster master
    /// (a cluster delivers PUBLISH to every node).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let (_, client) = self.pubsub_clients().await?.swap_remove(0);
        self.open_pubsub(&client).await
    }

    async fn open_pubsub(&self, client: &Client) -> Result<redis::aio::PubSub, StoreError> {
        let budget = self.inner.connect_timeout + self.inner.op_timeout;
        match timeout(budget, client.get_async_pubsub()).await {
            Ok(pubsub) => Ok(pubsub?),
            Err(_elapsed) => Err(StoreError::Timeout(budget)),
        }
    }

    /// Address and client of every node a subscription listens on (never empty).
    async fn pubsub_clients(&self) -> Result<Vec<(String, Client)>, StoreError> {
        match &self.inner.deployment {
            Deployment::Single(_) => match &self.inner.single {
                Some((client, _)) => Ok(vec![(self.identity(), client.clone())]),
                None => Err(StoreError::NoMaster(self.identity())),
            },
            Deployment::Sentinel { node_url, .. } => {
                // The master the commands go to, asked anew: a subscription on one node and
                // reads from another would miss writes made between the two lookups.
                self.inner.stale.store(true, Ordering::Release);
                self.get().await?;
                let current = self.inner.current.lock().await;
                let Some((addr, _)) = current.as_ref() else {
                    return Err(StoreError::NoMaster("sentinel".to_owned()));
                };
                let client = client_for(&node_url.for_node(addr), self.inner.certs.as_ref())?;
                Ok(vec![(addr.clone(), client)])
            }
            Deployment::Cluster { node_url, .. } => {
                let masters = self.masters().await?;
                if masters.is_empty() {
                    return Err(StoreError::NoMaster("cluster".to_owned()));
                }
                masters
                    .into_iter()
                    .map(|addr| {
                        let client =
                            client_for(&node_url.for_node(&addr), self.inner.certs.as_ref())?;
                        Ok((addr, client))
                    })
                    .collect()
            }
        }
    }

    /// Subscribes to `channel` (on one node: PUBLISH reaches them all) and to `pattern` on
    /// every master (keyspace notifications stay on the node that holds the key).
    pub async fn subscribe(
        &self,
        channel: &str,
        pattern: Option<&str>,
    ) -> Result<Subscription, StoreError> {
        let clients = self.pubsub_clients().await?;
        let mut masters = Vec::new();
        let mut streams = Vec::new();
        for (i, (addr, client)) in clients.into_iter().enumerate() {
            let mut pubsub = self.open_pubsub(&client).await?;
            if i == 0 {
                self.run(pubsub.subscribe(channel)).await?;
            }
            if let Some(p) = pattern {
                self.run(pubsub.psubscribe(p)).await?;
            }
            masters.push(addr);
            streams.push(
                pubsub
                    .into_on_message()
                    .map(Some)
                    .chain(futures_util::stream::once(async { None }))
                    .boxed(),
            );
        }
        masters.sort();
        let messages = futures_util::stream::select_all(streams).boxed();
        Ok(Subscription { messages, masters })
    }
}

/// Settings of a self-reconnecting command connection.
fn manager_config(settings: &RedisSettings) -> redis::aio::ConnectionManagerConfig {
    manager_config_of(settings.connect_timeout(), settings.op_timeout())
}

fn manager_config_of(connect: Duration, op: Duration) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(op))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// How many replicas a `ROLE` reply of a master lists.
fn replica_count(role: &Value) -> usize {
    match role {
        Value::Array(parts) => match parts.as_slice() {
            [Value::BulkString(kind), _, Value::Array(replicas), ..] if kind == b"master" => {
                replicas.len()
            }
            _ => 0,
        },
        _ => 0,
    }
}

/// `what` within `budget`.
async fn timed<T>(
    budget: Duration,
    what: impl std::future::Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    match timeout(budget, what).await {
        Ok(result) => Ok(result?),
        Err(_elapsed) => Err(StoreError::Timeout(budget)),
    }
}

/// Slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// The masters that own slots in a `CLUSTER NODES` reply, as `host:port`, sorted; `None`
/// unless together they own every slot (mid-failover a failed master's slots have no owner
/// yet, and a load from the others would miss their keys).
fn cluster_masters(nodes: &str) -> Option<Vec<String>> {
    let mut owned = vec![false; SLOTS];
    let mut out = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.contains(&"fail") || flags.contains(&"noaddr") {
            continue;
        }
        // Fields 8.. are slots and ranges (`0-5460`, `5461`; `[...]` = migrating, skipped).
        let mut any = false;
        for range in fields.iter().skip(8).filter(|f| !f.starts_with('[')) {
            let (from, to) = range.split_once('-').unwrap_or((range, range));
            let (Ok(from), Ok(to)) = (from.parse::<usize>(), to.parse::<usize>()) else {
                continue;
            };
            for slot in owned
                .iter_mut()
                .take(to.saturating_add(1).min(SLOTS))
                .skip(from)
            {
                *slot = true;
                any = true;
            }
        }
        // `ip:port@cport[,hostname]`; a master without slots holds no data.
        if any && let Some(host_port) = addr.split(['@', ',']).next() {
            out.push(host_port.to_owned());
        }
    }
    out.sort();
    owned.iter().all(|&o| o).then_some(out)
}

/// A client for one node's URL, with the configured TLS material for `rediss://`.
fn client_for(url: &str, certs: Option<&redis::TlsCertificates>) -> Result<Client, StoreError> {
    Ok(match certs {
        Some(certs) if url.starts_with("rediss://") => Client::build_with_tls(url, certs.clone())?,
        _ => Client::open(url)?,
    })
}

/// The CA and client certificate files named in the config, read; `None` when none is.
fn tls_certificates(
    settings: &RedisSettings,
) -> Result<Option<redis::TlsCertificates>, StoreError> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| StoreError::Io {
            path: path.into(),
            source,
        })
    };
    let root_cert = match settings.tls_ca_file.as_str() {
        "" => None,
        path => Some(read(path)?),
    };
    let client_tls = match (
        settings.tls_cert_file.as_str(),
        settings.tls_key_file.as_str(),
    ) {
        ("", "") => None,
        ("", _) | (_, "") => {
            return Err(StoreError::BadUrl(
                "redis.tls_cert_file and redis.tls_key_file go together".to_owned(),
            ));
        }
        (cert, key) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// rustls needs one process-wide crypto provider; callguard builds only `ring`.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when another provider is already installed, which then serves as well.
        let _already = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Deployment::parse("redis://h:1/2").ok(),
            Some(Deployment::Single("redis://h:1/2".into()))
        );
        let Ok(Deployment::Sentinel {
            sentinels,
            master,
            node_url,
        }) = Deployment::parse("redis+sentinel://cg:pw@s1,s2:26380,[::1]:5/mymaster/3")
        else {
            panic!("sentinel URL not parsed");
        };
        assert_eq!(sentinels, ["s1:26379", "s2:26380", "[::1]:5"]);
        assert_eq!(master, "mymaster");
        assert_eq!(
            node_url.for_node("10.0.0.5:6379"),
            "redis://cg:pw@10.0.0.5:6379/3"
        );
        let Ok(Deployment::Cluster { seeds, node_url }) =
            Deployment::parse("rediss+cluster://a:7000,b:7001,c")
        else {
            panic!("cluster URL not parsed");
        };
        assert_eq!(seeds, ["a:7000", "b:7001", "c:6379"]);
        assert_eq!(node_url.for_node("a:7000"), "rediss://a:7000/0");
        assert!(Deployment::parse("redis+sentinel://s1:26379").is_err());
        assert!(Deployment::parse("redis+sentinel://s1/m/x").is_err());
        assert!(Deployment::parse("redis+cluster://a:1/2").is_err());
        assert!(Deployment::parse("redis+cluster:///").is_err());
    }

    #[test]
    fn masters_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 master,fail - 0 0 3 connected 10923-16383
d4 127.0.0.1:7004@17004,node4 slave b2 0 0 2 connected
e5 127.0.0.1:7005@17005 master - 0 0 4 connected 10923-16383
";
        assert_eq!(
            cluster_masters(nodes).unwrap_or_default(),
            ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7005"]
        );
        // The failed master's slots not yet taken over: no complete set of masters.
        let midway = nodes.replace(
            "e5 127.0.0.1:7005@17005 master",
            "e5 127.0.0.1:7005@17005 slave",
        );
        assert_eq!(cluster_masters(&midway), None);
    }
}
