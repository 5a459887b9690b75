//! How the Redis store reaches its primary: at one address (`redis://`, `rediss://`), through
//! a connection manager that reconnects with backoff; through Redis Sentinel
//! (`redis+sentinel://`), asking the sentinels for the primary of a named set and asking
//! again whenever a command fails, so a failover is followed without a restart; or through
//! Redis Cluster (`redis+cluster://`, `rediss+cluster://`), sending each command to the
//! master of its key's slot. During a switch commands fail within the store timeout (a 503
//! for protected requests), never hang.

use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, Pipeline, RedisFuture, RedisResult, Value,
};

/// Why a URL does not name a Redis the store can use. Never repeats the URL (a password).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Redis(String),
    #[error(
        "a redis+sentinel:// URL names its sentinels and the primary's set: \
         redis+sentinel://[:password@]host:port[,host:port…]/set-name[/db]"
    )]
    BadSentinelUrl,
    #[error(
        "a redis+cluster:// (or rediss+cluster://) URL names some of the cluster's nodes: \
         redis+cluster://[[user]:password@]host:port[,host:port…]; Redis Cluster has database 0 only"
    )]
    BadClusterUrl,
}

/// The way to the primary.
pub enum Link {
    Direct(ConnectionManager),
    /// Boxed: the sentinel client is large, and one link is held per store.
    Sentinel(Box<SentinelLink>),
    /// Boxed for the same reason.
    Cluster(Box<ClusterLink>),
}

/// One connection of either kind, for one command.
#[derive(Clone)]
pub enum Conn {
    Managed(ConnectionManager),
    Plain(MultiplexedConnection),
    /// Routes each command by its first key's slot, following MOVED/ASK by itself.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Plain(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Link {
    /// The link `url` names; connects lazily (a gateway starts while Redis is down).
    pub fn open(
        url: &str,
        timeout: Duration,
        category: fn(&::redis::RedisError) -> String,
    ) -> Result<Self, LinkError> {
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return SentinelLink::open(rest, timeout).map(|link| Link::Sentinel(Box::new(link)));
        }
        for (scheme, node_scheme) in [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ] {
            if let Some(rest) = url.strip_prefix(scheme) {
                return ClusterLink::open(rest, node_scheme, timeout, category)
                    .map(|link| Link::Cluster(Box::new(link)));
            }
        }
        let client = Client::open(url).map_err(|e| LinkError::Redis(category(&e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(5);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LinkError::Redis(category(&e)))?;
        Ok(Link::Direct(conn))
    }

    /// A connection to the primary now.
    pub async fn conn(&self) -> RedisResult<Conn> {
        match self {
            Link::Direct(manager) => Ok(Conn::Managed(manager.clone())),
            Link::Sentinel(sentinel) => sentinel.conn().await.map(Conn::Plain),
            Link::Cluster(cluster) => cluster.conn().await.map(Conn::Cluster),
        }
    }

    /// A command failed: through Sentinel, the next one asks who the primary is. A cluster
    /// connection finds moved slots and lost nodes by itself, and is kept.
    pub fn failed(&self) {
        if let Link::Sentinel(sentinel) = self {
            sentinel.forget();
        }
    }

    /// Where to look to see every key: the one server, or each master of a cluster. `SCAN`
    /// walks one server's keys only, so on a cluster it must be sent to every master.
    pub async fn primaries(&self) -> RedisResult<Vec<Primary>> {
        match self {
            Link::Direct(_) | Link::Sentinel(_) => Ok(vec![Primary::Only(self.conn().await?)]),
            Link::Cluster(cluster) => {
                let mut conn = cluster.conn().await?;
                let slots = conn
                    .route_command(
                        ::redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                Ok(first_slot_of_each_master(&slots)
                    .into_iter()
                    .map(|slot| Primary::Master(conn.clone(), slot))
                    .collect())
            }
        }
    }
}

/// One server whose keys a `SCAN` walks.
pub enum Primary {
    Only(Conn),
    /// A cluster's master, named by a slot it serves.
    Master(ClusterConnection, u16),
}

impl Primary {
    /// One `SCAN` step on this server: the next cursor and the keys of this step.
    pub async fn scan(
        &mut self,
        cursor: u64,
        pattern: &str,
        batch: usize,
    ) -> RedisResult<(u64, Vec<Vec<u8>>)> {
        let mut scan = ::redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(batch);
        match self {
            Primary::Only(conn) => scan.query_async(conn).await,
            Primary::Master(conn, slot) => {
                let route = Route::new(*slot, SlotAddr::Master);
                let value = conn
                    .route_command(
                        scan,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(::redis::from_redis_value(value)?)
            }
        }
    }
}

/// From a `CLUSTER SLOTS` answer (`[start, end, [ip, port, id…], replicas…]…`), one slot
/// per master: the first of its first range. A master serving several ranges counts once.
fn first_slot_of_each_master(slots: &Value) -> Vec<u16> {
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    let mut seen = Vec::new();
    let mut firsts = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Array(master))) = (fields.first(), fields.get(2))
        else {
            continue;
        };
        // The node's id (third field) names it; its port is the fallback for old servers.
        let Some(name) = master.get(2).or(master.get(1)) else {
            continue;
        };
        let Ok(start) = u16::try_from(*start) else {
            continue;
        };
        if !seen.contains(&name) {
            seen.push(name);
            firsts.push(start);
        }
    }
    firsts
}

pub struct ClusterLink {
    client: ClusterClient,
    /// Held while connecting: the others wait for that connection rather than each open one.
    connecting: tokio::sync::Mutex<()>,
    current: Mutex<Option<ClusterConnection>>,
}

impl ClusterLink {
    /// `[[user]:password@]host:port[,host:port…][/0]`: every node is reached with the same
    /// credentials and scheme (`redis://` or `rediss://`).
    fn open(
        rest: &str,
        node_scheme: &str,
        timeout: Duration,
        category: fn(&::redis::RedisError) -> String,
    ) -> Result<Self, LinkError> {
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        // Cluster nodes have database 0 only; naming another is a mistake worth reporting.
        if !matches!(path.trim_end_matches('/'), "" | "0") || path.contains('?') {
            return Err(LinkError::BadClusterUrl);
        }
        let mut nodes = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let (name, port) = host.rsplit_once(':').ok_or(LinkError::BadClusterUrl)?;
            if name.is_empty() || port.parse::<u16>().is_err() {
                return Err(LinkError::BadClusterUrl);
            }
            let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
            nodes.push(format!("{node_scheme}{auth}{host}"));
        }
        if nodes.is_empty() {
            return Err(LinkError::BadClusterUrl);
        }
        let client = ClusterClientBuilder::new(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // A few quick retries for MOVED and a node being replaced; the store's own
            // timeout bounds the whole command anyway.
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(|e| LinkError::Redis(category(&e)))?;
        Ok(ClusterLink {
            client,
            connecting: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
        })
    }

    /// The cluster connection, opened on first use: a gateway starts while the cluster is
    /// down. Once open it reconnects to lost nodes and refreshes slots by itself.
    async fn conn(&self) -> RedisResult<ClusterConnection> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let conn = self.client.get_async_connection().await?;
        *self.lock() = Some(conn.clone());
        Ok(conn)
    }

    fn cached(&self) -> Option<ClusterConnection> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ClusterConnection>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub struct SentinelLink {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl SentinelLink {
    /// `[:password@]host:port[,host:port…]/set-name[/db]`; the password is the primary's.
    fn open(rest: &str, timeout: Duration) -> Result<Self, LinkError> {
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or(LinkError::BadSentinelUrl)?;
        let mut path = path.split('/').filter(|p| !p.is_empty());
        let set = path.next().ok_or(LinkError::BadSentinelUrl)?;
        let db: Option<i64> = match path.next() {
            Some(db) => Some(db.parse().map_err(|_| LinkError::BadSentinelUrl)?),
            None => None,
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let (name, port) = host.rsplit_once(':').ok_or(LinkError::BadSentinelUrl)?;
            let port: u16 = port.parse().map_err(|_| LinkError::BadSentinelUrl)?;
            let name = name.trim_start_matches('[').trim_end_matches(']');
            sentinels.push(ConnectionAddr::Tcp(name.to_owned(), port));
        }
        if sentinels.is_empty() {
            return Err(LinkError::BadSentinelUrl);
        }
        let mut builder = SentinelClientBuilder::new(sentinels, set, SentinelServerType::Master)
            .map_err(|_| LinkError::BadSentinelUrl)?;
        if let Some(password) = auth
            .and_then(|a| a.rsplit(':').next())
            .filter(|p| !p.is_empty())
        {
            let password = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(db) = db {
            builder = builder.set_client_to_redis_db(db);
        }
        let client = builder.build().map_err(|_| LinkError::BadSentinelUrl)?;
        Ok(SentinelLink {
            client: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            timeout,
        })
    }

    async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        // One lookup at a time: the others wait for it rather than all asking the sentinels.
        let mut client = self.client.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client.get_async_connection_with_config(&config).await?;
        *self.lock() = Some(conn.clone());
        Ok(conn)
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.lock().clone()
    }

    fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str) -> Result<Link, LinkError> {
        Link::open(url, Duration::from_secs(1), |e| format!("{:?}", e.kind()))
    }

    #[test]
    fn cluster_urls_name_nodes_and_only_database_zero() {
        for good in [
            "redis+cluster://127.0.0.1:7000",
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000",
            "redis+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2:7000/",
            "redis+cluster://wxgate:secret@10.0.0.1:7000/0",
            "redis+cluster://[::1]:7000,[::1]:7001",
            "rediss+cluster://redis.example:6380",
        ] {
            assert!(
                matches!(open(good), Ok(Link::Cluster(_))),
                "{good} is refused"
            );
        }
        for bad in [
            "redis+cluster://",
            "redis+cluster:///0",
            "redis+cluster://10.0.0.1",
            "redis+cluster://10.0.0.1:port",
            "redis+cluster://:7000",
            "redis+cluster://10.0.0.1:7000/1",
            "redis+cluster://10.0.0.1:7000/0?protocol=resp3",
        ] {
            assert!(
                matches!(open(bad), Err(LinkError::BadClusterUrl)),
                "{bad} is accepted"
            );
        }
    }

    #[test]
    fn a_bad_cluster_url_error_does_not_repeat_the_password() {
        let Err(e) = open("redis+cluster://:hunter2@10.0.0.1/5") else {
            panic!("accepted");
        };
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    fn node(port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::Int(port),
            Value::BulkString(id.as_bytes().to_vec()),
        ])
    }

    fn range(start: i64, end: i64, master: Value) -> Value {
        Value::Array(vec![Value::Int(start), Value::Int(end), master])
    }

    #[test]
    fn one_slot_per_master_even_when_a_master_serves_several_ranges() {
        let slots = Value::Array(vec![
            range(0, 5460, node(7000, "a")),
            range(5461, 10922, node(7001, "b")),
            range(10923, 16000, node(7002, "c")),
            range(16001, 16383, node(7000, "a")),
        ]);
        assert_eq!(first_slot_of_each_master(&slots), vec![0, 5461, 10923]);
        assert!(first_slot_of_each_master(&Value::Nil).is_empty());
        let odd = Value::Array(vec![Value::Int(1), range(0, 16383, Value::Nil)]);
        assert!(first_slot_of_each_master(&odd).is_empty());
    }
}
