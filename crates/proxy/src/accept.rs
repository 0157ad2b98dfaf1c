//! Taking connections: the listening sockets (SO_REUSEPORT, one per worker), the accept loop with
//! its back-off when descriptors run out, and serving one connection with hyper until it ends,
//! idles out or drains.

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::client::LocalExec;
use crate::client_io::ClientIo;
use crate::driver::{Connection, handle};
use crate::runtime::WorkerState;

/// How long a connection closed for its idle timeout or its age may take to finish what it has
/// in flight: Envoy's `drain_timeout`.
const CONNECTION_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepts connections until the proxy stops.
pub(crate) async fn accept(
    listener: tokio::net::TcpListener,
    listener_index: usize,
    state: Rc<WorkerState>,
    active: Rc<Cell<usize>>,
    mut stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    let mut backoff = AcceptBackoff::default();
    loop {
        let pause = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    backoff.recovered();
                    socket.set_nodelay(true).ok();
                    let local = local.unwrap_or(peer);
                    let state = state.clone();
                    // The generation's TLS settings at accept time: a reload can rotate certificates.
                    let tls = state.generation.borrow().config.tls[listener_index].clone();
                    let active = active.clone();
                    active.set(active.get() + 1);
                    tokio::task::spawn_local(async move {
                        let tcp = state.generation.borrow().config.config.listeners[listener_index].tcp.is_some();
                        match tls {
                            None if tcp => crate::tcp::serve(socket, state, listener_index, peer, local, None).await,
                            None => serve(socket, Rc::new(Connection::new(state, listener_index, peer, local, None))).await,
                            Some(config) => {
                                let handshake = tokio_rustls::TlsAcceptor::from(config).accept(socket);
                                match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, handshake).await {
                                    Ok(Ok(stream)) => {
                                        let tls = crate::tls::info(stream.get_ref().1);
                                        if tcp {
                                            crate::tcp::serve(stream, state, listener_index, peer, local, Some(tls)).await;
                                        } else {
                                            serve(stream, Rc::new(Connection::new(state, listener_index, peer, local, Some(tls)))).await;
                                        }
                                    }
                                    Ok(Err(error)) => tracing::debug!(%peer, "TLS handshake failed: {error}"),
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                        active.set(active.get() - 1);
                    });
                    None
                }
                Err(error) => backoff.failed(&error),
            },
            _ = stop.wait_for(|stopping| *stopping) => return,
        };
        // Out of file descriptors (or memory): the listener stays readable, so accepting again
        // at once would spin. Wait, as nginx does, for connections to close.
        if let Some(pause) = pause {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
        }
    }
}

/// How an accept loop backs off while the process is out of file descriptors: one warning per
/// episode (not one per attempt), pauses doubling from 10 ms to 1 s, and a line when it ends.
#[derive(Default)]
struct AcceptBackoff {
    failures: u64,
    pause: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const LONGEST: Duration = Duration::from_secs(1);

    /// The pause before the next accept, for an error that says the process or system is out of
    /// a resource; `None` for an error of one connection only (it was reset before accept).
    fn failed(&mut self, error: &std::io::Error) -> Option<Duration> {
        let exhausted = matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !exhausted {
            tracing::debug!("accept failed: {error}");
            return None;
        }
        if self.failures == 0 {
            tracing::warn!(
                "accept failed: {error}; pausing accepts until connections close (raise `ulimit -n`?)"
            );
        }
        self.failures += 1;
        self.pause = (self.pause * 2).clamp(Self::FIRST, Self::LONGEST);
        Some(self.pause)
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::warn!(
                failures = self.failures,
                "accepting again after running out of file descriptors"
            );
            *self = Self::default();
        }
    }
}

async fn serve<I>(io: I, connection: Rc<Connection>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = connection.peer;
    // `request_headers_timeout` counts from when the connection opened or the previous exchange
    // ended, so it also closes idle HTTP/1.1 keep-alive connections.
    let (timeout, idle_timeout, max_duration, max_head) = {
        let generation = connection.state.generation.borrow();
        let config = &generation.config.config;
        (
            config.request_headers_timeout,
            config.idle_timeout,
            config.max_connection_duration,
            // The largest request head (`maxRequestHeadersKb`): a larger one is answered 431
            // (HTTP/1.1) or refused by the HTTP/2 codec. hyper's buffer cannot go below 8 KiB.
            (config.max_request_headers_kb as usize * 1024).max(8192),
        )
    };
    let served = connection.clone();
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            handle(request, served.clone())
        });
    let io = ClientIo::new(io, timeout);
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(max_head);
    builder
        .http2()
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(serving);
    // Envoy's idle timeout (no stream for that long) and max connection duration end a
    // connection the graceful way: HTTP/2 says GOAWAY, HTTP/1.1 closes after its exchange.
    let too_old = async {
        match max_duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    let ending = tokio::select! {
        result = serving.as_mut() => Some(result),
        () = connection.idle_for(idle_timeout) => {
            tracing::debug!(%peer, "closing a connection idle for {idle_timeout:?}");
            None
        }
        () = too_old => {
            tracing::debug!(%peer, "closing a connection open for {max_duration:?}");
            None
        }
    };
    let result = match ending {
        Some(result) => result,
        None => {
            serving.as_mut().graceful_shutdown();
            // A client that never answers the GOAWAY's PING (or keeps a stream going) is cut
            // off after Envoy's drain timeout.
            tokio::time::timeout(CONNECTION_DRAIN_TIMEOUT, serving)
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, "connection ended: {error}");
    }
}
