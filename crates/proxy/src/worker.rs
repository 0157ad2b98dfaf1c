//! Worker threads: each runs a current-thread runtime with its own listener socket
//! (SO_REUSEPORT), its own plugin VMs and its own upstream connections.

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use sluice_filter::{RootCall, VmPool};
use sluice_host::{Clock, VmConfig};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Notify;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::admin::Admin;
use crate::driver::{WorkerContext, handle};
use crate::stats::Stats;
use crate::{ProxyConfig, StartError, client, resolve_cluster};

/// How long a stopping worker lets in-flight connections finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A started proxy: where it listens, and how to stop it.
pub struct RunningProxy {
    pub address: SocketAddr,
    /// Where the admin API listens, if enabled.
    pub admin_address: Option<SocketAddr>,
    stop: Arc<Notify>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl RunningProxy {
    /// Stops accepting, lets in-flight requests finish (bounded by [`DRAIN_TIMEOUT`]), and waits
    /// for the workers to exit.
    pub fn stop(self) {
        self.stop.notify_waiters();
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn listener(address: SocketAddr) -> std::io::Result<TcpListener> {
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

/// Starts `config.workers` workers and returns once every one of them has its plugins running
/// and its listener open, or with the first error.
pub fn start(config: ProxyConfig) -> Result<RunningProxy, StartError> {
    let first = listener(config.listen).map_err(|source| StartError::Listen {
        address: config.listen,
        source,
    })?;
    let address = first.local_addr().map_err(|source| StartError::Listen {
        address: config.listen,
        source,
    })?;
    let stop = Arc::new(Notify::new());
    let stats = Arc::new(Stats::default());
    let ready = Arc::new(AtomicBool::new(false));
    let admin = match config.admin {
        Some(admin_address) => {
            let admin = Admin::new(&config, stats.clone(), ready.clone());
            Some(crate::admin::start(admin_address, admin, stop.clone())?)
        }
        None => None,
    };
    let config = Arc::new(config);
    let mut workers = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut first = Some(first);
    for index in 0..config.workers.max(1) {
        let socket = match first.take() {
            Some(socket) => socket,
            None => listener(address).map_err(|source| StartError::Listen { address, source })?,
        };
        let (config, stop, ready, stats) = (
            config.clone(),
            stop.clone(),
            ready_tx.clone(),
            stats.clone(),
        );
        let worker = std::thread::Builder::new()
            .name(format!("sluice-worker-{index}"))
            .spawn(move || run_worker(index, socket, &config, &stop, &ready, stats))
            .map_err(|e| StartError::Worker {
                worker: index,
                message: e.to_string(),
            })?;
        workers.push(worker);
    }
    drop(ready_tx);
    for _ in 0..workers.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                stop.notify_waiters();
                return Err(error);
            }
            Err(_) => {
                return Err(StartError::Worker {
                    worker: 0,
                    message: "a worker exited during start-up".into(),
                });
            }
        }
    }
    ready.store(true, Ordering::Relaxed);
    let admin_address = admin.map(|(admin_address, thread)| {
        workers.push(thread);
        admin_address
    });
    Ok(RunningProxy {
        address,
        admin_address,
        stop,
        workers,
    })
}

#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

fn run_worker(
    index: usize,
    socket: TcpListener,
    config: &ProxyConfig,
    stop: &Notify,
    ready: &std::sync::mpsc::Sender<Result<(), StartError>>,
    stats: Arc<Stats>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(StartError::Worker {
                worker: index,
                message: e.to_string(),
            }));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let fail = |message: String| StartError::Worker {
            worker: index,
            message,
        };
        let clock = Clock::system();
        let clusters: crate::Clusters = Arc::new(config.clusters.clone());
        let specs = config
            .plugins
            .iter()
            .map(|plugin| {
                let check = clusters.clone();
                sluice_filter::PluginSpec {
                    name: plugin.name.clone(),
                    root_id: plugin.root_id.clone(),
                    code: plugin.code.clone(),
                    plugin_configuration: plugin.configuration.clone(),
                    vm: VmConfig {
                        vm_id: plugin.vm_id.clone(),
                        env: plugin.env.clone(),
                        limits: plugin.limits.clone(),
                        clock: clock.clone(),
                        clusters: Arc::new(move |name| resolve_cluster(&check, name).is_some()),
                        ..VmConfig::new(plugin.name.clone())
                    },
                    fail_strategy: plugin.fail_strategy,
                }
            })
            .collect();
        let pool = VmPool::new(&config.engine, clock);
        let chain = match pool.chain(specs, config.buffer_limit) {
            Ok(chain) => Rc::new(chain),
            Err(error) => {
                let _ = ready.send(Err(fail(error.to_string())));
                return;
            }
        };
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(fail(e.to_string())));
                return;
            }
        };
        let local_address = listener.local_addr().unwrap_or(config.listen);
        let context = Rc::new(WorkerContext {
            chain,
            pool: Rc::default(),
            stats: stats.clone(),
            upstream: config.upstream.clone(),
            clusters: clusters.clone(),
            local: local_address,
        });
        tokio::task::spawn_local(timers(pool, clusters, stats));
        let _ = ready.send(Ok(()));
        let active = Rc::new(Cell::new(0usize));
        let stopping = stop.notified();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        socket.set_nodelay(true).ok();
                        let (context, active) = (context.clone(), active.clone());
                        active.set(active.get() + 1);
                        tokio::task::spawn_local(async move {
                            serve(socket, peer, context).await;
                            active.set(active.get() - 1);
                        });
                    }
                    Err(error) => tracing::warn!(worker = index, "accept failed: {error}"),
                },
                () = &mut stopping => break,
            }
        }
        drop(listener);
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while active.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

async fn serve(socket: tokio::net::TcpStream, peer: SocketAddr, context: Rc<WorkerContext>) {
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let protocol = match request.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            };
            handle(request, context.clone(), peer, protocol)
        });
    let builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    if let Err(error) = builder
        .serve_connection(TokioIo::new(socket), service)
        .await
    {
        tracing::debug!(%peer, "connection ended: {error}");
    }
}

/// Ticks, queue notifications and callouts made outside any stream, for this worker's VMs.
async fn timers(pool: Rc<VmPool>, clusters: crate::Clusters, stats: Arc<Stats>) {
    const IDLE_POLL: Duration = Duration::from_millis(20);
    loop {
        let now = pool.clock().monotonic_nanos();
        let wait = pool.next_tick_nanos().map_or(IDLE_POLL, |due| {
            Duration::from_nanos(due.saturating_sub(now)).min(IDLE_POLL)
        });
        tokio::time::sleep(wait).await;
        pool.fire_due_ticks();
        pool.deliver_queue_events();
        stats.plugin_failures(pool.take_failures().len());
        for call in pool.take_root_calls() {
            if let RootCall::Http {
                vm,
                root_context,
                token,
                request,
            } = call
            {
                let (pool, clusters) = (pool.clone(), clusters.clone());
                tokio::task::spawn_local(async move {
                    let response = client::callout(clusters, request).await.ok();
                    pool.http_call_response(vm, root_context, token, response);
                });
            }
        }
    }
}
