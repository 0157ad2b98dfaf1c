//! TCP listeners: one client connection proxied to an endpoint of the listener's cluster, through
//! the listener's network plugins (Envoy's wasm network filters in front of tcp_proxy). The
//! plugins' semantics are `sluice_filter::Connection`'s; this module moves the bytes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use sluice_abi::PeerType;
use sluice_filter::{Connection, ConnectionStep};
use sluice_host::HttpStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::Target;
use crate::calls::Calls;
use crate::runtime::WorkerState;

/// The most bytes read at once from either side.
const READ_CHUNK: usize = 64 << 10;
/// The most bytes one read event gathers (Envoy reads until the socket would block).
const MAX_GATHERED: usize = 4 * READ_CHUNK;
/// The most bytes waiting to be written to one side before that side's peer is no longer read.
const MAX_QUEUED: usize = 1 << 20;
/// How long a connection being closed may take to flush what was written to the client (Envoy's
/// default `delayed_close_timeout`).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes waiting to be written to one side, and whether that side is to be half-closed after.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<Bytes>,
    bytes: usize,
    end: bool,
    /// The side has been half-closed (our FIN sent).
    shut: bool,
}

impl Outbox {
    fn push(&mut self, data: Bytes, end_of_stream: bool) {
        if !data.is_empty() {
            self.bytes += data.len();
            self.queue.push_back(data);
        }
        self.end |= end_of_stream;
    }

    /// Whether a write (or the half-close) is due.
    fn has_work(&self) -> bool {
        !self.queue.is_empty() || (self.end && !self.shut)
    }

    /// Writes some of the queue, or half-closes once it is empty; how many bytes it wrote.
    async fn flush_some<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<usize> {
        match self.queue.front_mut() {
            Some(front) => {
                let written = writer.write(front).await?;
                if written == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                self.bytes -= written;
                let _ = front.split_to(written);
                if front.is_empty() {
                    self.queue.pop_front();
                }
                Ok(written)
            }
            None => {
                writer.shutdown().await?;
                self.shut = true;
                Ok(0)
            }
        }
    }
}

/// What ended a connection, and so which peer type the plugins hear.
enum Ending {
    /// The proxy closed it (a plugin, the upstream, a timeout, or its own write completing the
    /// double half-close): LOCAL.
    Local,
    /// The client reset it or sent the last FIN: REMOTE.
    Remote,
}

/// What the access log says of a connection as it goes.
struct Logged {
    began: std::time::SystemTime,
    started: Instant,
    upstream: Option<SocketAddr>,
    bytes_received: u64,
    bytes_sent: u64,
    /// Why the connection ended, in the access log's `details`.
    details: String,
}

/// Serves one connection of TCP listener `listener` until it closes.
pub(crate) async fn serve<I>(
    io: I,
    state: Rc<WorkerState>,
    listener: usize,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<crate::tls::TlsInfo>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let generation = state.generation.borrow().clone();
    let Some(tcp) = generation.config.config.listeners[listener].tcp.clone() else {
        return;
    };
    let traffic = generation.listeners[listener].tcp.clone();
    traffic.connected();
    let mut logged = Logged {
        began: std::time::SystemTime::now(),
        started: Instant::now(),
        upstream: None,
        bytes_received: 0,
        bytes_sent: 0,
        details: String::new(),
    };
    let listener_name = &generation.config.config.listeners[listener].name;
    let plan = generation.listeners[listener].route(None);
    if let Some(plugin) = &plan.blocked_by {
        tracing::debug!(%peer, "connection closed: plugin '{plugin}' is unavailable");
        if let Some(log) = &state.access_log {
            logged.details = format!("plugin '{plugin}' is unavailable");
            log.write(&logged.record(listener_name, peer, tls.is_some(), &plan.chain, &[]));
        }
        return;
    }
    let info = HttpStream {
        connection: crate::driver::connection_properties(peer, local, tls.as_ref()),
        ..HttpStream::default()
    };
    let mut connection = Connection::new(plan.chain.clone(), info);
    let (mut client_read, mut client_write) = tokio::io::split(io);
    let mut upstream: Option<(
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
    )> = None;
    let mut connecting: Option<std::pin::Pin<Box<dyn std::future::Future<Output = _>>>> = None;
    let (mut to_client, mut to_upstream) = (Outbox::default(), Outbox::default());
    let mut calls: Calls<(usize, u32)> = Calls::new();
    let (mut client_buffer, mut upstream_buffer) = (vec![0; MAX_GATHERED], vec![0; MAX_GATHERED]);
    let idle_timeout = tcp.idle_timeout;
    let mut idle_deadline = idle_timeout.map(|t| Instant::now() + t);
    // Whether the last thing that happened was reading the client's FIN (REMOTE if that
    // completes the close) rather than writing ours (LOCAL).
    let mut last_was_client_fin = false;
    let ending = loop {
        for step in connection.take_steps() {
            match step {
                ConnectionStep::Connect => {
                    let cluster = connection.chosen_cluster().unwrap_or(tcp.cluster.clone());
                    connecting = Some(Box::pin(connect(
                        generation.clusters.pick(&cluster),
                        cluster,
                    )));
                }
                ConnectionStep::ToUpstream {
                    data,
                    end_of_stream,
                } => to_upstream.push(data, end_of_stream),
                ConnectionStep::ToDownstream {
                    data,
                    end_of_stream,
                } => to_client.push(data, end_of_stream),
                ConnectionStep::Close { reason } => {
                    tracing::debug!(%peer, "closing the connection: {reason}");
                    logged.details = reason;
                }
                ConnectionStep::Call { plugin, token, op } => {
                    calls.act((plugin, token), op, &generation.clusters, &state.upstreams);
                }
            }
        }
        if connection.is_closing() {
            // Flush what the client was sent (bounded), then close; the upstream is dropped.
            let flush = async {
                while !to_client.queue.is_empty() {
                    match to_client.flush_some(&mut client_write).await {
                        Ok(bytes) => {
                            traffic.sent(bytes);
                            logged.bytes_sent += bytes as u64;
                        }
                        Err(_) => break,
                    }
                }
            };
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
            break Ending::Local;
        }
        if connection.both_ends_sent() && to_client.shut && !to_upstream.has_work() {
            break if last_was_client_fin {
                Ending::Remote
            } else {
                Ending::Local
            };
        }
        let read_client = connection.wants_downstream_bytes() && to_upstream.bytes < MAX_QUEUED;
        let has_upstream = upstream.is_some();
        let read_upstream =
            has_upstream && connection.wants_upstream_bytes() && to_client.bytes < MAX_QUEUED;
        let idle = async {
            match idle_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let (upstream_read, upstream_write) = match &mut upstream {
            Some((read, write)) => (Some(read), Some(write)),
            None => (None, None),
        };
        tokio::select! {
            connected = async {
                match connecting.as_mut() {
                    Some(connect) => connect.as_mut().await,
                    None => std::future::pending().await,
                }
            }, if connecting.is_some() => {
                connecting = None;
                match connected {
                    Ok(stream) => {
                        logged.upstream = stream.peer_addr().ok();
                        upstream = Some(stream.into_split());
                        connection.upstream_connected();
                    }
                    Err(error) => {
                        traffic.connect_failed();
                        tracing::debug!(%peer, cluster = %tcp.cluster, "upstream connection failed: {error}");
                        logged.details = format!("upstream connection failed: {error}");
                        break Ending::Local;
                    }
                }
            }
            read = client_read.read(&mut client_buffer[..READ_CHUNK]), if read_client => match read {
                Ok(n) => {
                    let (data, end) = gather(&mut client_read, &mut client_buffer, n);
                    traffic.received(data.len());
                    logged.bytes_received += data.len() as u64;
                    last_was_client_fin = end;
                    if n > 0 {
                        idle_deadline = idle_timeout.map(|t| Instant::now() + t);
                    }
                    connection.downstream_data(data, end);
                }
                Err(_) => {
                    logged.details = "the client reset the connection".into();
                    break Ending::Remote;
                }
            },
            read = read_from(upstream_read, &mut upstream_buffer[..READ_CHUNK]), if read_upstream => match read {
                Ok(n) => {
                    let (data, end) = match upstream.as_mut() {
                        Some((reader, _)) => gather(reader, &mut upstream_buffer, n),
                        None => (&upstream_buffer[..n], n == 0),
                    };
                    if n > 0 {
                        idle_deadline = idle_timeout.map(|t| Instant::now() + t);
                    }
                    connection.upstream_data(data, end);
                }
                // The upstream reset: the client connection is closed (Envoy's FlushWrite).
                Err(_) => {
                    connection.close_from_proxy("the upstream connection was reset");
                }
            },
            written = to_client.flush_some(&mut client_write), if to_client.has_work() => {
                match written {
                    Ok(bytes) => {
                        traffic.sent(bytes);
                        logged.bytes_sent += bytes as u64;
                    }
                    Err(_) => {
                        logged.details = "writing to the client failed".into();
                        break Ending::Remote;
                    }
                }
                last_was_client_fin = false;
            }
            written = flush_to(&mut to_upstream, upstream_write), if to_upstream.has_work() && has_upstream => {
                if written.is_err() {
                    connection.close_from_proxy("writing to the upstream failed");
                }
            }
            (key, answer) = calls.answer() => connection.call_answer(key.0, key.1, answer),
            () = connection.root_effects() => connection.apply_root_effects(),
            () = idle => {
                tracing::debug!(%peer, "closing a TCP connection idle for {idle_timeout:?}");
                logged.details = "idle_timeout".into();
                break Ending::Local;
            }
        }
    };
    drop(upstream);
    // Envoy closes the socket without a half-close first, so a client whose bytes were never
    // read gets a reset, as from Envoy. TLS still ends with its close_notify, as Envoy's does.
    if tls.is_some() {
        let _ = client_write.shutdown().await;
    }
    drop((client_read, client_write));
    connection.downstream_closed(match ending {
        Ending::Local => PeerType::Local,
        Ending::Remote => PeerType::Remote,
    });
    state.stats.plugin_failures(connection.failures());
    if let Some(log) = &state.access_log {
        if logged.details.is_empty() {
            logged.details = "ended".into();
        }
        let record = logged.record(
            listener_name,
            peer,
            tls.is_some(),
            connection.chain(),
            connection.failures(),
        );
        log.write(&record);
    }
}

impl Logged {
    fn record<'a>(
        &'a self,
        listener: &'a str,
        peer: SocketAddr,
        tls: bool,
        chain: &'a sluice_filter::Chain,
        failures: &[sluice_host::PluginFailure],
    ) -> crate::access_log::Record<'a> {
        crate::access_log::Record {
            time: crate::access_log::timestamp(self.began),
            listener,
            peer: peer.to_string(),
            protocol: if tls { "TLS" } else { "TCP" },
            method: None,
            authority: None,
            path: None,
            request_id: None,
            status: None,
            details: self.details.clone(),
            route: None,
            upstream: self.upstream.map(|address| address.to_string()),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration_ms: self.started.elapsed().as_micros() as f64 / 1000.0,
            plugins: crate::access_log::PluginsRecord {
                chain: (0..chain.len()).map(|i| chain.plugin_name(i)).collect(),
                local_reply_by: None,
                failed: sluice_filter::failed_plugins(failures),
            },
        }
    }
}

/// What one read event gives, as Envoy reads a socket until it would block: the `first` bytes
/// already at the start of `buffer`, whatever else is ready now (read in place after them, up to
/// the buffer's end), and whether the peer's FIN came with them (then Envoy calls the plugins
/// once, with the data and the end of stream together).
fn gather<'b, R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &'b mut [u8],
    first: usize,
) -> (&'b [u8], bool) {
    if first == 0 {
        return (&[], true);
    }
    let mut filled = first;
    while filled < buffer.len() {
        match ready_now(reader.read(&mut buffer[filled..])) {
            Some(Ok(0)) => return (&buffer[..filled], true),
            Some(Ok(n)) => filled += n,
            // An error shows on the next read; nothing more is ready now.
            Some(Err(_)) | None => break,
        }
    }
    (&buffer[..filled], false)
}

/// The output of a future that is ready at its first poll; a read is cancel-safe, so one that is
/// not ready is dropped without loss.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

async fn read_from(
    reader: Option<&mut tokio::net::tcp::OwnedReadHalf>,
    buffer: &mut [u8],
) -> std::io::Result<usize> {
    match reader {
        Some(reader) => reader.read(buffer).await,
        None => std::future::pending().await,
    }
}

async fn flush_to(
    outbox: &mut Outbox,
    writer: Option<&mut tokio::net::tcp::OwnedWriteHalf>,
) -> std::io::Result<usize> {
    match writer {
        Some(writer) => outbox.flush_some(writer).await,
        None => std::future::pending().await,
    }
}

/// Connects to the cluster's next endpoint within its connect timeout.
async fn connect(target: Option<Target>, cluster: String) -> Result<tokio::net::TcpStream, String> {
    match target {
        Some(Target::Endpoint(picked)) => match picked.endpoint().await {
            Ok(endpoint) => endpoint.connect(picked.connect_timeout).await,
            Err(error) => Err(error),
        }
        .map_err(|error| error.to_string()),
        _ => Err(format!("cluster `{cluster}` has no endpoint")),
    }
}
