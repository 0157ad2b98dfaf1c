//! Worker threads: each runs a current-thread runtime with its own listener socket
//! (SO_REUSEPORT), its own plugin VMs and its own upstream connections.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use sluice_config::{Listener, Route};
use sluice_filter::{Chain, ChainError, PluginSpec, VmPool};
use sluice_host::{CallAnswer, Clock, Engine, GrpcEvent, VmConfig};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::admin::Admin;
use crate::calls::Calls;
use crate::client_io::ClientIo;
use crate::driver::{Connection, handle};
use crate::logging::PluginLogLevels;
use crate::reload::Reloader;
use crate::stats::{Stats, Traffic};
use crate::{Clusters, ProxyConfig, Source, StartError, client, cluster_exists};

/// How long a stopping worker lets in-flight connections finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection closed for its idle timeout or its age may take to finish what it has
/// in flight: Envoy's `drain_timeout`.
const CONNECTION_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A started proxy: where it listens, how to reload it and how to stop it.
pub struct RunningProxy {
    /// The first listener's address.
    pub address: SocketAddr,
    /// Every listener's address, in config order.
    pub addresses: Vec<SocketAddr>,
    /// Where the admin API listens, if enabled.
    pub admin_address: Option<SocketAddr>,
    reloader: Arc<Reloader>,
    stop: Arc<watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RunningProxy {
    /// Reloads the config from its source (the same path as SIGHUP and `POST /reload`).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Stops accepting, lets in-flight requests finish (bounded by [`DRAIN_TIMEOUT`]), and waits
    /// for the workers to exit.
    pub fn stop(self) {
        self.stop.send_replace(true);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
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

/// While plugins are unavailable, fetches them again with backoff (1 s, doubling to a minute) and
/// swaps in the config once one more is there.
fn retry_unavailable(
    reloader: Arc<Reloader>,
    stop: watch::Receiver<bool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut wait = Duration::from_secs(1);
        loop {
            let deadline = std::time::Instant::now() + wait;
            while std::time::Instant::now() < deadline {
                if *stop.borrow() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if reloader.current().unavailable.is_empty() {
                wait = Duration::from_secs(1);
                continue;
            }
            match reloader.retry_unavailable() {
                Ok(true) => wait = Duration::from_secs(1),
                Ok(false) | Err(_) => wait = (wait * 2).min(Duration::from_secs(60)),
            }
        }
    })
}

/// A worker's plugins and routes for one config: in-flight requests keep the generation they
/// started on, new ones take the newest.
pub(crate) struct Generation {
    pub config: Arc<ProxyConfig>,
    pub pool: Rc<VmPool>,
    pub clusters: Rc<Clusters>,
    /// Per listener, what its routes run.
    pub listeners: Vec<ListenerPlan>,
}

/// What one listener's requests run: per route, and for requests no route takes.
pub(crate) struct ListenerPlan {
    pub routes: Vec<RoutePlan>,
    pub unrouted: RoutePlan,
}

impl ListenerPlan {
    /// The plan of route `index`, or of requests no route takes.
    pub fn route(&self, index: Option<usize>) -> &RoutePlan {
        index
            .and_then(|index| self.routes.get(index))
            .unwrap_or(&self.unrouted)
    }
}

/// What the requests of one route run and where they are counted.
pub(crate) struct RoutePlan {
    pub chain: Rc<Chain>,
    /// A plugin of the chain that is unavailable and not FAIL_OPEN: the route's requests are
    /// refused with 503 while it is.
    pub blocked_by: Option<Rc<str>>,
    pub traffic: Arc<Traffic>,
    /// The route's cluster; none for requests no route takes.
    pub cluster: Option<Arc<Traffic>>,
}

/// A generation ends when it is replaced and its last request finished, or when the worker
/// stops: its plugins' root contexts are torn down then, as Envoy does when a configuration
/// goes away.
impl Drop for Generation {
    fn drop(&mut self) {
        self.pool.tear_down();
    }
}

impl Generation {
    /// Starts the plugins of `config` (one VM per plugin code and VM config, one root context per
    /// configuration) and builds every route's chain. A `canary` keeps what plugins log (for its
    /// error messages) and gets its own shared data and queues, so a refused config leaves no
    /// trace in the running VMs.
    pub fn build(
        config: Arc<ProxyConfig>,
        clock: Clock,
        canary: bool,
        log_levels: &PluginLogLevels,
        stats: Option<&Stats>,
    ) -> Result<Self, ChainError> {
        let pool = VmPool::new(&config.engine, clock.clone());
        let node = sluice_filter::node_attribute(&config.config.node);
        let chain_for = |listener: &Listener, route: Option<&Route>| {
            let specs = config
                .config
                .chain(listener, route)
                .into_iter()
                .map(|entry| {
                    let (plugin, loaded) = (entry.plugin, &config.plugins[entry.index]);
                    let check = config.clone();
                    let allowed = plugin.capabilities.clusters.clone();
                    let name = plugin.name.clone();
                    let callable: sluice_host::ClusterCheck = Arc::new(move |cluster: &str| {
                        let permitted = allowed.as_ref().is_none_or(|set| set.contains(cluster));
                        if !permitted {
                            tracing::warn!(plugin = %name, "call to cluster `{cluster}` denied: not in the plugin's allowed clusters");
                        }
                        permitted && cluster_exists(&check.config, cluster)
                    });
                    PluginSpec {
                        name: plugin.name.clone(),
                        root_id: plugin.root_id.clone(),
                        code: loaded.code.clone(),
                        plugin_configuration: sluice_config::plugin_configuration_bytes(
                            entry.configuration,
                        ),
                        vm: VmConfig {
                            env: loaded.env.clone(),
                            limits: loaded.limits.clone(),
                            clock: clock.clone(),
                            clusters: callable,
                            capture_logs: canary,
                            isolated: canary,
                            callback_time: stats.map(|s| s.callback_time(&plugin.name)),
                            log_level: log_levels.of(&plugin.name),
                            node: node.clone(),
                            ..VmConfig::new(plugin.name.clone())
                        },
                        fail_strategy: plugin.fail_strategy,
                    }
                })
                .collect();
            pool.chain(specs, config.buffer_limit)
                .map(|chain| Rc::new(chain.with_failure_body(config.config.failure_body)))
        };
        let blocked_for = |listener: &Listener, route: Option<&Route>| -> Option<Rc<str>> {
            config
                .unavailable
                .iter()
                .find(|u| u.blocks() && u.plugin.runs_on(listener, route))
                .map(|u| u.plugin.name.as_str().into())
        };
        // A canary's requests are never counted.
        let counted = |count: &dyn Fn(&Stats) -> Arc<Traffic>| stats.map(count).unwrap_or_default();
        let mut listeners = Vec::new();
        for listener in &config.config.listeners {
            let mut routes = Vec::new();
            for route in &listener.routes {
                routes.push(RoutePlan {
                    chain: chain_for(listener, Some(route))?,
                    blocked_by: blocked_for(listener, Some(route)),
                    traffic: counted(&|s| s.route(&listener.name, &route.name)),
                    cluster: Some(counted(&|s| s.cluster(&route.cluster))),
                });
            }
            let unrouted = RoutePlan {
                chain: chain_for(listener, None)?,
                blocked_by: blocked_for(listener, None),
                traffic: counted(&|s| s.route(&listener.name, crate::stats::NO_ROUTE)),
                cluster: None,
            };
            listeners.push(ListenerPlan { routes, unrouted });
        }
        Ok(Self {
            clusters: Rc::new(Clusters::new(&config)),
            config,
            pool,
            listeners,
        })
    }
}

/// What every worker gets a handle to.
struct AcrossWorkers {
    stats: Arc<Stats>,
    log_levels: Arc<PluginLogLevels>,
    access_log: Option<Arc<crate::access_log::AccessLog>>,
}

/// What every connection of a worker shares.
pub(crate) struct WorkerState {
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    pub log_levels: Arc<PluginLogLevels>,
    pub generation: RefCell<Rc<Generation>>,
    pub stats: Arc<Stats>,
    /// Idle keep-alive connections to upstream endpoints; they outlive config generations.
    pub upstreams: Rc<client::Pool>,
}

/// Starts the workers and returns once every one of them has its plugins running and its
/// listeners open, or with the first error.
pub fn start(source: Source, engine: Engine) -> Result<RunningProxy, StartError> {
    let config = source.load(&engine).map_err(StartError::Config)?;
    // Every plugin once on a throwaway instance first, as a reload does: a plugin that refuses
    // to start is reported with what it logged, not as N workers' bare `returned false`.
    crate::reload::canary(&config).map_err(StartError::Plugin)?;
    crate::load::log_unavailable(&config);
    let mut addresses = Vec::new();
    let mut first_sockets = Vec::new();
    for listener in &config.config.listeners {
        let configured = listener.address;
        let socket = bind(configured).map_err(|source| StartError::Listen {
            address: configured,
            source,
        })?;
        let bound = socket.local_addr().map_err(|source| StartError::Listen {
            address: configured,
            source,
        })?;
        addresses.push(bound);
        first_sockets.push(socket);
    }
    let (stop, _) = watch::channel(false);
    let stop = Arc::new(stop);
    let stats = Arc::new(Stats::default());
    let ready = Arc::new(AtomicBool::new(false));
    let workers_count = config.workers().max(1);
    let admin_address = config.config.admin;
    let log_levels = Arc::new(PluginLogLevels::new(source.plugin_log_level));
    let access_log = match &config.config.access_log {
        None => None,
        Some(destination) => Some(Arc::new(
            crate::access_log::AccessLog::open(destination, stats.clone()).map_err(|e| {
                StartError::Config(vec![sluice_config::ConfigError::new(
                    "accessLog",
                    format!("cannot open `{destination}`: {e}"),
                )])
            })?,
        )),
    };
    let (updates, _) = watch::channel(Arc::new(config));
    let reloader = Arc::new(Reloader::new(source, engine, updates, stats.clone()));
    let mut threads = Vec::new();
    let admin = match admin_address {
        Some(address) => {
            let admin = Admin {
                stats: stats.clone(),
                ready: ready.clone(),
                reloader: reloader.clone(),
                log_levels: log_levels.clone(),
                history: std::sync::Mutex::default(),
            };
            let (bound, thread) = crate::admin::start(address, admin, stop.subscribe())?;
            threads.push(thread);
            Some(bound)
        }
        None => None,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut first_sockets = Some(first_sockets);
    for index in 0..workers_count {
        let sockets = match first_sockets.take() {
            Some(sockets) => sockets,
            None => addresses
                .iter()
                .map(|&address| {
                    bind(address).map_err(|source| StartError::Listen { address, source })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let updates = reloader.subscribe();
        let (stop, ready) = (stop.subscribe(), ready_tx.clone());
        let shared = AcrossWorkers {
            stats: stats.clone(),
            log_levels: log_levels.clone(),
            access_log: access_log.clone(),
        };
        let worker = std::thread::Builder::new()
            .name(format!("sluice-worker-{index}"))
            .spawn(move || run_worker(index, sockets, updates, stop, &ready, shared))
            .map_err(|e| StartError::Worker {
                worker: index,
                message: e.to_string(),
            })?;
        threads.push(worker);
    }
    drop(ready_tx);
    threads.push(retry_unavailable(reloader.clone(), stop.subscribe()));
    let running = RunningProxy {
        address: addresses[0],
        addresses,
        admin_address: admin,
        reloader,
        stop,
        threads,
    };
    for _ in 0..workers_count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                running.stop();
                return Err(error);
            }
            Err(_) => {
                running.stop();
                return Err(StartError::Worker {
                    worker: 0,
                    message: "a worker exited during start-up".into(),
                });
            }
        }
    }
    ready.store(true, Ordering::Relaxed);
    Ok(running)
}

/// Runs hyper's connection tasks on the worker's own thread.
#[derive(Clone, Copy)]
pub(crate) struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

fn run_worker(
    index: usize,
    sockets: Vec<TcpListener>,
    mut updates: watch::Receiver<Arc<ProxyConfig>>,
    stop: watch::Receiver<bool>,
    ready: &std::sync::mpsc::Sender<Result<(), StartError>>,
    shared: AcrossWorkers,
) {
    let AcrossWorkers {
        stats,
        log_levels,
        access_log,
    } = shared;
    let fail = |message: String| StartError::Worker {
        worker: index,
        message,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(fail(e.to_string())));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let clock = Clock::system();
        let config = updates.borrow_and_update().clone();
        let generation =
            match Generation::build(config, clock.clone(), false, &log_levels, Some(&stats)) {
                Ok(generation) => Rc::new(generation),
                Err(error) => {
                    let _ = ready.send(Err(fail(error.to_string())));
                    return;
                }
            };
        let mut listeners = Vec::new();
        for socket in sockets {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    let _ = ready.send(Err(fail(e.to_string())));
                    return;
                }
            }
        }
        let upstreams: Rc<client::Pool> = Rc::default();
        tokio::task::spawn_local(timers(
            Rc::downgrade(&generation),
            stats.clone(),
            upstreams.clone(),
        ));
        let state = Rc::new(WorkerState {
            access_log,
            log_levels,
            generation: RefCell::new(generation),
            stats: stats.clone(),
            upstreams,
        });
        tokio::task::spawn_local(follow(updates, state.clone(), clock, index));
        tokio::task::spawn_local(report_instances(state.clone(), index));
        let active = Rc::new(Cell::new(0usize));
        let accepting: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(listener_index, listener)| {
                tokio::task::spawn_local(accept(
                    listener,
                    listener_index,
                    state.clone(),
                    active.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let _ = ready.send(Ok(()));
        for task in accepting {
            let _ = task.await;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while active.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Accepts connections until the proxy stops.
async fn accept(
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
                        let connection = |tls| Rc::new(Connection::new(state, listener_index, peer, local, tls));
                        match tls {
                            None => serve(socket, connection(None)).await,
                            Some(config) => {
                                let handshake = tokio_rustls::TlsAcceptor::from(config).accept(socket);
                                match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, handshake).await {
                                    Ok(Ok(stream)) => {
                                        let tls = crate::tls::info(stream.get_ref().1);
                                        serve(stream, connection(Some(tls))).await;
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

/// Tells the admin API about the worker's plugin instances (memory, failures) once a second,
/// from whichever generation is current.
async fn report_instances(state: Rc<WorkerState>, worker: usize) {
    loop {
        let instances = state.generation.borrow().pool.instances();
        state.stats.report_instances(worker, instances);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Builds a new generation whenever the config changes; a worker that cannot keep the old one.
async fn follow(
    mut updates: watch::Receiver<Arc<ProxyConfig>>,
    state: Rc<WorkerState>,
    clock: Clock,
    index: usize,
) {
    while updates.changed().await.is_ok() {
        let config = updates.borrow_and_update().clone();
        match Generation::build(
            config,
            clock.clone(),
            false,
            &state.log_levels,
            Some(&state.stats),
        ) {
            Ok(generation) => {
                let generation = Rc::new(generation);
                tokio::task::spawn_local(timers(
                    Rc::downgrade(&generation),
                    state.stats.clone(),
                    state.upstreams.clone(),
                ));
                *state.generation.borrow_mut() = generation;
            }
            Err(error) => {
                tracing::error!(
                    worker = index,
                    "the new config does not start here; this worker keeps the previous one: {error}"
                );
                state.stats.reload(false);
            }
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

/// Ticks, queue notifications and callouts made outside any stream, for one generation's VMs.
/// It ends when the generation is gone (replaced, and its last request finished), and the root
/// contexts' calls still running end with it.
async fn timers(generation: Weak<Generation>, stats: Arc<Stats>, upstreams: Rc<client::Pool>) {
    const IDLE_POLL: Duration = Duration::from_millis(20);
    let mut calls: Calls<(usize, u32)> = Calls::new();
    // The root context each running call answers to, by VM and token.
    let mut roots: HashMap<(usize, u32), u32> = HashMap::new();
    loop {
        let Some(generation) = generation.upgrade() else {
            return;
        };
        let pool = generation.pool.clone();
        pool.fire_due_ticks();
        pool.deliver_queue_events();
        stats.plugin_failures(pool.take_failures().len());
        for call in pool.take_root_calls() {
            let key = (call.vm, call.token);
            if call.op.starts() {
                roots.insert(key, call.root_context);
            }
            calls.act(key, call.op, &generation.clusters, &upstreams);
        }
        let now = pool.clock().monotonic_nanos();
        let wait = pool.next_tick_nanos().map_or(IDLE_POLL, |due| {
            Duration::from_nanos(due.saturating_sub(now)).min(IDLE_POLL)
        });
        drop(generation);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            ((vm, token), answer) = calls.answer(), if calls.waiting() => {
                let over = matches!(
                    answer,
                    CallAnswer::Http(_) | CallAnswer::Grpc(GrpcEvent::Close { .. })
                );
                let root = if over {
                    roots.remove(&(vm, token))
                } else {
                    roots.get(&(vm, token)).copied()
                };
                if let Some(root_context) = root {
                    pool.call_answer(vm, root_context, token, answer);
                }
            }
        }
    }
}
