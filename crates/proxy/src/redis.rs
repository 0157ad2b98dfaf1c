//! Redis calls (Higress's `proxy_redis_call`): a plugin's RESP query goes to its cluster's next
//! endpoint over one of the worker's pooled connections, authenticated and on the database its
//! `proxy_redis_init` chose, and the one RESP reply comes back exactly as Redis sent it.
//!
//! A connection carries one query at a time; an idle one is reused only while Redis has not
//! closed it, and a worker keeps a bounded number idle. A connection whose state a command
//! changed (`SELECT`, `MULTI`, `SUBSCRIBE`, ...) is closed after its call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use sluice_abi::resp;
use sluice_host::{RedisCallRequest, RedisSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{self, ClientError};
use crate::{Clusters, Target};

/// Most idle connections a worker keeps to one Redis endpoint with one set of credentials.
const MAX_IDLE_PER_ENDPOINT: usize = 16;

/// The read buffer an idle connection may keep.
const KEPT_BUFFER_BYTES: usize = 64 << 10;

/// Commands after which a connection is not the one its key describes any more (another
/// database or user, a transaction or a subscription under way, replies switched off): it
/// serves the call that sent one, then is closed rather than pooled.
const STATEFUL_COMMANDS: &[&str] = &[
    "SELECT",
    "AUTH",
    "HELLO",
    "MULTI",
    "WATCH",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "MONITOR",
    "CLIENT",
    "READONLY",
    "READWRITE",
    "RESET",
    "QUIT",
];

/// The largest reply a call takes; a bigger one fails the call (and its connection is closed).
pub const MAX_REPLY_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error("cluster `{0}` is sluice's echo upstream, not a Redis server")]
    NotRedis(String),
    #[error("talking to {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
    #[error("{target} closed the connection before its reply was complete")]
    Closed { target: String },
    #[error("{target} sent a reply that is not RESP: {source}")]
    Protocol {
        target: String,
        source: resp::RespError,
    },
    #[error("{target} sent a reply over {MAX_REPLY_BYTES} bytes")]
    TooLarge { target: String },
    #[error("{target} refused `{command}`: {reply}")]
    Refused {
        target: String,
        command: &'static str,
        reply: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Who a pooled connection was set up for: an endpoint, and how it was authenticated and which
/// database it selected.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    address: SocketAddr,
    username: String,
    password: String,
    database: u32,
}

struct Connection {
    stream: TcpStream,
    /// What Redis sent and the current reply has not taken yet.
    buffer: Vec<u8>,
    target: String,
}

/// A worker's idle Redis connections.
#[derive(Default)]
pub struct RedisPool {
    idle: RefCell<HashMap<Key, Vec<Connection>>>,
}

impl RedisPool {
    /// A pooled connection that Redis has not closed meanwhile.
    fn take(&self, key: &Key) -> Option<Connection> {
        let mut idle = self.idle.borrow_mut();
        let connections = idle.get_mut(key)?;
        while let Some(connection) = connections.pop() {
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            // Asked of the socket itself (a peek, the socket being non-blocking), not of the
            // runtime's cached readiness, which may not have seen Redis's FIN yet. Nothing to
            // read and no end of stream: still open. Anything else (the close Redis sends when
            // it restarts or times an idle client out) discards it.
            let peeked = socket2::SockRef::from(&connection.stream).peek(&mut probe);
            if matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                return Some(connection);
            }
        }
        None
    }

    fn put_back(&self, key: Key, mut connection: Connection) {
        // An idle connection keeps no memory of a large reply.
        if connection.buffer.capacity() > KEPT_BUFFER_BYTES {
            connection.buffer = Vec::new();
        }
        let mut idle = self.idle.borrow_mut();
        let connections = idle.entry(key).or_default();
        if connections.len() < MAX_IDLE_PER_ENDPOINT {
            connections.push(connection);
        }
    }
}

/// Carries out one `proxy_redis_call`: the reply's RESP bytes, or why there is none. The call
/// is bounded by the timeout its `proxy_redis_init` gave (the cluster's when that was 0).
pub async fn call(
    clusters: &Clusters,
    pool: &RedisPool,
    request: RedisCallRequest,
) -> Result<Vec<u8>, RedisError> {
    let picked = match clusters.pick(&request.cluster) {
        None => return Err(ClientError::UnknownCluster(request.cluster).into()),
        Some(Target::Echo) => return Err(RedisError::NotRedis(request.cluster)),
        Some(Target::Endpoint(picked)) => picked,
    };
    let timeout = client::call_timeout(request.settings.timeout, picked.timeout);
    let exchange = async {
        let endpoint = picked.endpoint().await?;
        let key = Key {
            address: endpoint.address,
            username: request.settings.username.clone(),
            password: request.settings.password.clone(),
            database: request.settings.database,
        };
        let mut connection = match pool.take(&key) {
            Some(pooled) => pooled,
            None => {
                let stream = endpoint.connect(picked.connect_timeout).await?;
                Connection::open(stream, &endpoint.host, &request.settings).await?
            }
        };
        let reply = connection.exchange(&request.query).await?;
        // Bytes past the one reply would answer the next query: such a connection is not reused,
        // nor one whose state the command changed.
        let command = resp::command_args(&request.query)
            .and_then(|args| args.first().copied())
            .unwrap_or_default();
        let stateful = STATEFUL_COMMANDS
            .iter()
            .any(|name| name.as_bytes().eq_ignore_ascii_case(command));
        if connection.buffer.is_empty() && !stateful {
            pool.put_back(key, connection);
        }
        Ok(reply)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| RedisError::Timeout(timeout))?
}

impl Connection {
    /// Sets a new connection up: `AUTH` when there is a password (with the username, when there
    /// is one), then `SELECT` of a database other than 0.
    async fn open(
        stream: TcpStream,
        host: &str,
        settings: &RedisSettings,
    ) -> Result<Self, RedisError> {
        let mut connection = Connection {
            stream,
            buffer: Vec::new(),
            target: host.to_string(),
        };
        if !settings.password.is_empty() {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            if !settings.username.is_empty() {
                auth.push(settings.username.as_bytes());
            }
            auth.push(settings.password.as_bytes());
            connection.setup("AUTH", &resp::command(&auth)).await?;
        }
        if settings.database != 0 {
            let database = settings.database.to_string();
            let select = resp::command(&[b"SELECT", database.as_bytes()]);
            connection.setup("SELECT", &select).await?;
        }
        Ok(connection)
    }

    /// One setup command, which Redis must answer with a simple string (`+OK`).
    async fn setup(&mut self, command: &'static str, query: &[u8]) -> Result<(), RedisError> {
        let reply = self.exchange(query).await?;
        if reply.first() == Some(&b'+') {
            return Ok(());
        }
        Err(RedisError::Refused {
            target: self.target.clone(),
            command,
            reply: String::from_utf8_lossy(reply.get(1..).unwrap_or_default())
                .trim_end()
                .to_string(),
        })
    }

    /// Writes a query and reads its one reply.
    async fn exchange(&mut self, query: &[u8]) -> Result<Vec<u8>, RedisError> {
        let io = |target: &str| {
            let target = target.to_string();
            move |source| RedisError::Io { target, source }
        };
        self.stream
            .write_all(query)
            .await
            .map_err(io(&self.target))?;
        let mut scanner = resp::Scanner::default();
        loop {
            match scanner.scan(&self.buffer) {
                Ok(Some(len)) if len == self.buffer.len() => {
                    return Ok(std::mem::take(&mut self.buffer));
                }
                Ok(Some(len)) => return Ok(self.buffer.drain(..len).collect()),
                Ok(None) if self.buffer.len() >= MAX_REPLY_BYTES => {
                    return Err(RedisError::TooLarge {
                        target: self.target.clone(),
                    });
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(RedisError::Protocol {
                        target: self.target.clone(),
                        source,
                    });
                }
            }
            self.buffer.reserve(self.buffer.len().clamp(4096, 1 << 20));
            let read = self
                .stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(io(&self.target))?;
            if read == 0 {
                return Err(RedisError::Closed {
                    target: self.target.clone(),
                });
            }
        }
    }
}
