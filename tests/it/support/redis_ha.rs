//! Harness for Redis deployments: TLS material made at test time (openssl CLI), servers on
//! free loopback ports talked to with `redis-cli`, a master with a replica and 3 sentinels,
//! and a 3-master cluster. Every process is stopped and every temp dir removed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate.
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Makes them with the `openssl` CLI (tests/run.sh installs it).
    pub fn generate() -> TlsFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl must be installed (tests/run.sh installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=callguard test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write ext");
        for name in ["server", "client"] {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            run(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                &crt,
            ]);
        }
        TlsFiles { dir }
    }

    /// Path of `name` (`ca.crt`, `server.key`, `client.crt`...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `redis-server` arguments for TLS only on `port` (plain TCP off).
    pub fn server_args(&self, port: u16, auth_clients: bool) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p("server.crt"),
            "--tls-key-file".into(),
            p("server.key"),
            "--tls-ca-cert-file".into(),
            p("ca.crt"),
            "--tls-auth-clients".into(),
            if auth_clients { "yes" } else { "no" }.into(),
        ]
    }

    /// `redis-cli` arguments to reach a TLS server (with the client certificate).
    pub fn cli_args(&self) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            p("ca.crt"),
            "--cert".into(),
            p("client.crt"),
            "--key".into(),
            p("client.key"),
        ]
    }
}

/// One `redis-server` process (data node or sentinel), stopped on drop.
pub struct Node {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Extra `redis-cli` arguments (TLS, password).
    cli_args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts `redis-server` with `args` (after the common ones) on `port` and waits until
    /// `redis-cli PING` answers.
    pub fn start(port: u16, args: &[String], cli_args: Vec<String>) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (tests/run.sh installs it)");
        Node::wait(child, port, cli_args, dir)
    }

    /// Starts `redis-server <conf> [--sentinel]` with a config file written in a temp dir
    /// (sentinels rewrite theirs, so it must be writable); with `tls`, TLS only (replication
    /// and cluster bus too).
    pub fn start_conf(port: u16, conf: &str, sentinel: bool, tls: Option<&TlsFiles>) -> Node {
        Node::start_conf_auth(port, conf, sentinel, tls, None)
    }

    /// [`Node::start_conf`] with `requirepass` (and `masterauth`) `password`.
    pub fn start_conf_auth(
        port: u16,
        conf: &str,
        sentinel: bool,
        tls: Option<&TlsFiles>,
        password: Option<&str>,
    ) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.conf");
        let listen = match tls {
            None => format!("port {port}\n"),
            Some(t) => {
                let p = |n: &str| t.path(n).display().to_string();
                format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n{}",
                    p("server.crt"),
                    p("server.key"),
                    p("ca.crt"),
                    if conf.contains("cluster-enabled") {
                        "tls-cluster yes\n"
                    } else {
                        ""
                    },
                )
            }
        };
        let auth = password.map_or_else(String::new, |p| {
            if sentinel {
                format!("requirepass {p}\n")
            } else {
                format!("requirepass {p}\nmasterauth {p}\n")
            }
        });
        std::fs::write(
            &path,
            format!(
                "{listen}bind 127.0.0.1\ndir {}\nsave \"\"\nappendonly no\n{auth}{conf}",
                dir.path().display()
            ),
        )
        .expect("write conf");
        let mut cmd = Command::new("redis-server");
        cmd.arg(&path);
        if sentinel {
            cmd.arg("--sentinel");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (tests/run.sh installs it)");
        let mut cli_args = tls.map(TlsFiles::cli_args).unwrap_or_default();
        if let Some(p) = password {
            cli_args.extend(["--no-auth-warning".into(), "-a".into(), p.to_owned()]);
        }
        Node::wait(child, port, cli_args, dir)
    }

    fn wait(child: Child, port: u16, cli_args: Vec<String>, dir: tempfile::TempDir) -> Node {
        let node = Node {
            child: Some(child),
            port,
            cli_args,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.cli(&["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// Runs `redis-cli -p PORT ARGS` and returns its trimmed stdout ("" when unreachable).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cli_args)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the process (a crash, for failover tests).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _waited = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TLS-only server: `rediss://127.0.0.1:PORT/0`.
pub fn start_tls(tls: &TlsFiles, auth_clients: bool) -> Node {
    let port = free_port();
    Node::start(port, &tls.server_args(port, auth_clients), tls.cli_args())
}

/// A master, one replica and 3 sentinels watching it as `mymaster` (quorum 2), with short
/// timeouts so a failover takes a few seconds.
pub struct SentinelSetup {
    /// Data nodes: [0] is the first master, [1] its replica.
    pub nodes: Vec<Node>,
    /// The sentinels.
    pub sentinels: Vec<Node>,
}

/// The name the sentinels monitor.
pub const MASTER_NAME: &str = "mymaster";

impl SentinelSetup {
    /// Starts everything and waits until every sentinel knows the replica and the others.
    pub fn start() -> SentinelSetup {
        SentinelSetup::start_with(None)
    }

    /// [`SentinelSetup::start`], every node and sentinel on TLS only when `tls`.
    pub fn start_with(tls: Option<&TlsFiles>) -> SentinelSetup {
        SentinelSetup::start_full(tls, None)
    }

    /// [`SentinelSetup::start_with`]; with `passwords` = (data nodes', sentinels'), each
    /// requires its password (`requirepass`, `masterauth`, `sentinel auth-pass`,
    /// `sentinel sentinel-pass`).
    pub fn start_full(tls: Option<&TlsFiles>, passwords: Option<(&str, &str)>) -> SentinelSetup {
        let data_pw = passwords.map(|p| p.0);
        let master = Node::start_conf_auth(free_port(), "", false, tls, data_pw);
        let replica = Node::start_conf_auth(
            free_port(),
            &format!("replicaof 127.0.0.1 {}\n", master.port),
            false,
            tls,
            data_pw,
        );
        let mut conf = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            master.port
        );
        if let Some((data, sentinel)) = passwords {
            conf.push_str(&format!(
                "sentinel auth-pass {MASTER_NAME} {data}\nsentinel sentinel-pass {sentinel}\n"
            ));
        }
        let sentinels: Vec<Node> = (0..3)
            .map(|_| Node::start_conf_auth(free_port(), &conf, true, tls, passwords.map(|p| p.1)))
            .collect();
        let setup = SentinelSetup {
            nodes: vec![master, replica],
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = setup.sentinels.iter().all(|s| {
                let info = s.cli(&["SENTINEL", "MASTER", MASTER_NAME]);
                field(&info, "num-slaves") == Some("1")
                    && field(&info, "num-other-sentinels") == Some("2")
            }) && field(
                &setup.nodes[1].cli(&["INFO", "replication"]),
                "master_link_status",
            ) == Some("up");
            if ready {
                return setup;
            }
            assert!(Instant::now() < deadline, "sentinels did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+sentinel://` URL of all three sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(Node::addr).collect();
        format!("redis+sentinel://{}/{MASTER_NAME}/0", hosts.join(","))
    }

    /// `rediss+sentinel://` URL of all three sentinels.
    pub fn tls_url(&self) -> String {
        format!("rediss{}", self.url().trim_start_matches("redis"))
    }

    /// The master's port as the first sentinel reports it.
    pub fn master_port(&self) -> Option<u16> {
        let reply = self.sentinels[0].cli(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
        reply.lines().nth(1)?.trim().parse().ok()
    }

    /// The data node serving as master now (per the sentinels).
    pub fn master(&self) -> &Node {
        let port = self.master_port().expect("sentinels name a master");
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("the master is one of ours")
    }
}

/// A line `name:value` of an INFO reply, or a `name\nvalue` pair of a SENTINEL reply.
pub fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(v) = line.strip_prefix(name).and_then(|r| r.strip_prefix(':')) {
            return Some(v);
        }
        if line == name {
            return lines.next();
        }
    }
    None
}

/// A cluster of 3 masters (slots split evenly by `redis-cli --cluster create`), each with
/// `replicas` replicas.
pub struct Cluster {
    /// Every node; the first three start as masters.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts the nodes, creates the cluster and waits for `cluster_state:ok` everywhere.
    pub fn start(replicas: usize) -> Cluster {
        Cluster::start_with(replicas, None)
    }

    /// [`Cluster::start`], TLS only (clients, replication, cluster bus) when `tls`.
    pub fn start_with(replicas: usize, tls: Option<&TlsFiles>) -> Cluster {
        let nodes: Vec<Node> = (0..3 * (1 + replicas))
            .map(|_| {
                let port = free_port();
                Node::start_conf(
                    port,
                    "cluster-enabled yes\ncluster-config-file nodes.conf\n\
                     cluster-node-timeout 1000\n",
                    false,
                    tls,
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(tls.map(TlsFiles::cli_args).unwrap_or_default());
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.addr());
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.nodes.iter().all(|n| {
            let info = n.cli(&["CLUSTER", "INFO"]);
            // A replica fails over only once it has synced with its master.
            let synced = !n.cli(&["ROLE"]).starts_with("slave")
                || field(&n.cli(&["INFO", "replication"]), "master_link_status") == Some("up");
            field(&info, "cluster_state") == Some("ok")
                && field(&info, "cluster_known_nodes") == Some(&cluster.nodes.len().to_string())
                && synced
        }) {
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `redis+cluster://` URL with every master as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().take(3).map(Node::addr).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `redis-cli -c` (follows MOVED) against the first live node.
    pub fn cli(&self, args: &[&str]) -> String {
        for n in &self.nodes {
            if n.child.is_some() {
                let mut all = vec!["-c"];
                all.extend_from_slice(args);
                return n.cli(&all);
            }
        }
        String::new()
    }
}

/// Runs the CLI against `store` with extra environment variables.
pub fn cli_env(store: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    super::callguard()
        .arg("--store")
        .arg(store)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run callguard")
}

/// [`cli_env`], asserting success; stdout.
pub fn cli_env_ok(store: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = cli_env(store, env, args);
    assert!(
        out.status.success(),
        "callguard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
