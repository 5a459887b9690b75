//! How the Redis store reaches its primary: at one address (`redis://`, `rediss://`), through
//! a connection manager that reconnects with backoff; or through Redis Sentinel
//! (`redis+sentinel://`), asking the sentinels for the primary of a named set and asking
//! again whenever a command fails, so a failover is followed without a restart. During the
//! switch commands fail within the store timeout (a 503 for protected requests), never hang.

use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
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
}

/// The way to the primary.
pub enum Link {
    Direct(ConnectionManager),
    /// Boxed: the sentinel client is large, and one link is held per store.
    Sentinel(Box<SentinelLink>),
}

/// One connection of either kind, for one command.
#[derive(Clone)]
pub enum Conn {
    Managed(ConnectionManager),
    Plain(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
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
        }
    }

    /// A command failed: through Sentinel, the next one asks who the primary is.
    pub fn failed(&self) {
        if let Link::Sentinel(sentinel) = self {
            sentinel.forget();
        }
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
