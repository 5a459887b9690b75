//! A real `redis-server` for tests: started on a free loopback port with persistence off,
//! killed on drop, restartable on the same port. Never the machine's own Redis.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether `redis-server` can be run here. Without it a test skips with a printed reason,
/// except under `CI=true`, where a missing tool is a failure.
pub fn available() -> bool {
    tool("redis-server")
}

/// Whether `command --version` runs; if not, a printed skip, or a failure under `CI=true`.
fn tool(command: &str) -> bool {
    let found = Command::new(command)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{command} not found, and CI=true: install it (scripts/test does)");
        }
        eprintln!("skipping: {command} not found");
    }
    found
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> Self {
        RedisServer::start_with(Vec::new()).await
    }

    /// The same with more command-line options (a TLS port, say).
    pub async fn start_with(extra: Vec<String>) -> Self {
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (persistence is off).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..200 {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr()).await {
                let mut buf = [0u8; 16];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && matches!(stream.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {} did not become ready", self.port);
    }

    /// A plain connection for inspecting what the gateway stored.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a Redis Cluster can be built here: `redis-server` and `redis-cli` (which joins
/// the nodes). Skips or fails as [`available`] does.
pub fn cluster_available() -> bool {
    available() && tool("redis-cli")
}

/// A real Redis Cluster of three masters (no replicas) on free loopback ports, persistence
/// off, killed on drop. Each node's cluster state (`nodes-PORT.conf`) survives a restart,
/// so [`RedisCluster::restart`] brings the same, empty cluster back.
pub struct RedisCluster {
    /// (client port, cluster bus port) of each node.
    nodes: Vec<(u16, u16)>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
    tls: Option<ClusterTls>,
}

/// PEM files for a cluster that speaks only TLS, to clients and between nodes.
#[derive(Clone)]
pub struct ClusterTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl RedisCluster {
    pub async fn start() -> Self {
        RedisCluster::start_with(None).await
    }

    /// Only TLS ports, and TLS on the cluster bus: the certificate must name 127.0.0.1.
    pub async fn start_tls(tls: ClusterTls) -> Self {
        RedisCluster::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<ClusterTls>) -> Self {
        let mut cluster = RedisCluster {
            // The bus port is chosen too: the default (port + 10000) may be taken or > 65535.
            nodes: (0..3).map(|_| (free_port(), free_port())).collect(),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            tls,
        };
        cluster.spawn().await;
        let mut create = cluster.cli();
        create.arg("--cluster").arg("create");
        for (port, _) in &cluster.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok().await;
        cluster
    }

    /// `redis+cluster://` (or `rediss+cluster://`) naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}+cluster://{}", nodes.join(","))
    }

    /// `redis-cli`, speaking TLS to a TLS cluster.
    fn cli(&self) -> Command {
        let mut cli = Command::new("redis-cli");
        if let Some(tls) = &self.tls {
            cli.args(["--tls", "--cacert", &tls.ca]);
        }
        cli
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(port, _)| *port).collect()
    }

    /// Kills every node (SIGKILL) and waits until they are gone.
    pub fn kill(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts every node again on its ports; they find each other from their nodes files.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
        self.wait_ok().await;
    }

    /// A cluster connection for inspecting what the gateway stored.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect();
        redis::cluster::ClusterClient::new(nodes)
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }

    /// A plain connection to one node: what that node itself holds.
    pub async fn node(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn spawn(&mut self) {
        let dir = self.dir.path().to_str().unwrap().to_owned();
        for (port, bus) in &self.nodes {
            let mut server = Command::new("redis-server");
            match &self.tls {
                None => server.args(["--port", &port.to_string()]),
                Some(tls) => server
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-auth-clients", "no"])
                    .args(["--tls-cert-file", &tls.cert, "--tls-key-file", &tls.key])
                    .args(["--tls-ca-cert-file", &tls.ca]),
            };
            let child = server
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--dir", &dir])
                .args(["--dbfilename", &format!("dump-{port}.rdb")])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("{dir}/nodes-{port}.conf")])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--logfile", &format!("{dir}/node-{port}.log")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts in cluster mode");
            self.children.push(child);
        }
        for (port, _) in &self.nodes {
            if self.tls.is_none() {
                wait_pong(SocketAddr::from(([127, 0, 0, 1], *port))).await;
            } else {
                self.wait_answer(*port, &["PING"], "PONG").await;
            }
        }
        // A node that could not bind its ports has exited, and what answered was another
        // process (another test's node): better said here than as a puzzling test failure.
        for (child, (port, _)) in self.children.iter_mut().zip(&self.nodes) {
            assert!(
                matches!(child.try_wait(), Ok(None)),
                "redis-server on port {port} exited (a port taken?)"
            );
        }
    }

    /// Until every node says `cluster_state:ok`.
    async fn wait_ok(&self) {
        for port in self.ports() {
            self.wait_answer(port, &["CLUSTER", "INFO"], "cluster_state:ok")
                .await;
        }
    }

    /// Until `redis-cli -p port command…` prints `expected`.
    async fn wait_answer(&self, port: u16, command: &[&str], expected: &str) {
        for _ in 0..400 {
            let out = self
                .cli()
                .args(["-p", &port.to_string()])
                .args(command)
                .stdin(Stdio::null())
                .output()
                .expect("redis-cli runs");
            if String::from_utf8_lossy(&out.stdout).contains(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join(format!("node-{port}.log")));
        panic!(
            "redis-server on port {port} never answered {command:?} with {expected}: {}",
            log.unwrap_or_default()
        );
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_pong(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..200 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            let mut buf = [0u8; 16];
            if stream.write_all(b"PING\r\n").await.is_ok()
                && matches!(stream.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"+PONG"))
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server on {addr} did not become ready");
}
