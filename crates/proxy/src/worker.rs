//! Worker threads: each runs a current-thread runtime with its own listener socket
//! (SO_REUSEPORT), its own plugin VMs and its own upstream connections.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_host::{Clock, Engine};
use tokio::sync::watch;

use crate::accept::{accept, bind};
use crate::admin::Admin;
use crate::generation::Generation;
use crate::logging::PluginLogLevels;
use crate::reload::Reloader;
use crate::runtime::WorkerState;
use crate::stats::Stats;
use crate::timers::timers;
use crate::{ProxyConfig, Source, StartError, client};

/// How long a stopping worker lets in-flight connections finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What every worker gets a handle to.
struct AcrossWorkers {
    stats: Arc<Stats>,
    log_levels: Arc<PluginLogLevels>,
    access_log: Option<Arc<crate::access_log::AccessLog>>,
}

/// Starts the workers and returns once every one of them has its plugins running and its
/// listeners open, or with the first error.
pub fn start(source: Source, engine: Engine) -> Result<RunningProxy, StartError> {
    let config = source.load(&engine).map_err(StartError::Config)?;
    start_loaded(source, config)
}

/// `start` with the config `source` already loaded (by a caller that looked at it first), so
/// that nothing is fetched twice (an `imagePullPolicy: Always` module would be).
pub fn start_loaded(source: Source, config: ProxyConfig) -> Result<RunningProxy, StartError> {
    let engine = config.engine.clone();
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
