//! The plugin VMs of one worker ([`VmPool`]), the ordered chains of plugins built on them (one per
//! route), and what happens outside any stream: ticks, queue notifications, root-context callouts
//! and FAIL_RELOAD.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::Duration;

use sluice_config::FailStrategy;
use sluice_host::{
    CallAnswer, CallOp, Clock, Effect, Engine, LoadError, PluginCode, PluginFailure, Vm, VmConfig,
};

use crate::stream::Scratch;

/// One plugin instance (VM) of a worker, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceReport {
    pub plugin: String,
    pub memory_bytes: usize,
    /// Why the instance failed, if it did (it is not re-entered until a reload replaces it).
    pub failure: Option<String>,
}

/// One plugin of a chain, as configured.
#[derive(Clone)]
pub struct PluginSpec {
    pub name: String,
    pub root_id: String,
    pub code: PluginCode,
    pub plugin_configuration: Vec<u8>,
    pub vm: VmConfig,
    pub fail_strategy: FailStrategy,
    /// Envoy's `allow_on_headers_stop_iteration` (always on for Higress's ABI): Pause from a
    /// headers callback holds the headers only, and the body still reaches the plugin.
    pub headers_stop_iteration: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("plugin '{plugin}': {source}")]
pub struct ChainError {
    pub plugin: String,
    #[source]
    pub source: LoadError,
    /// What the plugin logged before it failed to start (why `proxy_on_configure` said no).
    pub logs: Vec<sluice_host::LogRecord>,
    /// The configuration it was given: where a line and column in its complaint point.
    pub configuration: Vec<u8>,
}

/// First delay before a FAIL_RELOAD plugin gets a fresh instance (Envoy's default base interval).
pub const RELOAD_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between reload attempts of a plugin that keeps failing.
pub const RELOAD_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A reloaded instance that survives this long resets the backoff.
pub const RELOAD_STABLE_AFTER: Duration = Duration::from_secs(60);

struct Root {
    plugin_name: String,
    root_id: String,
    configuration: Vec<u8>,
    context: u32,
    /// When the next tick is due, for the tick period set at the time in `.1`.
    next_tick: Option<(u64, u64)>,
}

impl Root {
    /// The next tick time under `period` (set at `since`): whole periods after `since`.
    fn next_tick(&self, period: Option<(Duration, u64)>) -> Option<u64> {
        let (period, since) = period?;
        match self.next_tick {
            Some((due, anchor)) if anchor == since => Some(due),
            _ => Some(since + period.as_nanos() as u64),
        }
    }
}

/// One VM and the root contexts (plugin configurations) running in it.
pub(crate) struct PluginVm {
    engine: Engine,
    code: PluginCode,
    config: VmConfig,
    vm: Vm,
    roots: Vec<Root>,
    /// Bumped on every reload: contexts of an older generation are gone.
    pub(crate) generation: u64,
    reloads: u32,
    next_reload_nanos: u64,
    started_nanos: u64,
}

impl PluginVm {
    pub(crate) fn vm(&mut self) -> &mut Vm {
        &mut self.vm
    }

    pub(crate) fn root_context(&self, root: usize) -> u32 {
        self.roots[root].context
    }

    /// The VM's root context for a configuration, started on first use.
    fn root(
        &mut self,
        plugin_name: &str,
        root_id: &str,
        configuration: &[u8],
    ) -> Result<usize, LoadError> {
        if let Some(index) = self.roots.iter().position(|r| {
            r.plugin_name == plugin_name && r.root_id == root_id && r.configuration == configuration
        }) {
            return Ok(index);
        }
        let context = self.vm.start_root(plugin_name, root_id, configuration)?;
        self.roots.push(Root {
            plugin_name: plugin_name.to_string(),
            root_id: root_id.to_string(),
            configuration: configuration.to_vec(),
            context,
            next_tick: None,
        });
        Ok(self.roots.len() - 1)
    }

    /// Replaces a failed VM with a fresh instance once its backoff has passed. Returns whether
    /// the VM is usable.
    fn reload_if_due(&mut self, now: u64) -> bool {
        if self.vm.failure().is_none() {
            if now.saturating_sub(self.started_nanos) > RELOAD_STABLE_AFTER.as_nanos() as u64 {
                self.reloads = 0;
            }
            return true;
        }
        if now < self.next_reload_nanos {
            return false;
        }
        let backoff = RELOAD_BACKOFF_BASE
            .saturating_mul(1 << self.reloads.min(6))
            .min(RELOAD_BACKOFF_MAX);
        self.next_reload_nanos = now + backoff.as_nanos() as u64;
        self.reloads += 1;
        let result = Vm::new(&self.engine, &self.code, self.config.clone()).and_then(|mut vm| {
            let contexts = self
                .roots
                .iter()
                .map(|root| vm.start_root(&root.plugin_name, &root.root_id, &root.configuration))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((vm, contexts))
        });
        match result {
            Ok((vm, contexts)) => {
                tracing::info!(plugin = %self.config.plugin_name, attempt = self.reloads, "plugin reloaded after failure");
                self.vm = vm;
                for (root, context) in self.roots.iter_mut().zip(contexts) {
                    root.context = context;
                    root.next_tick = None;
                }
                self.generation += 1;
                self.started_nanos = now;
                true
            }
            Err(error) => {
                tracing::error!(plugin = %self.config.plugin_name, "plugin reload failed: {error}");
                false
            }
        }
    }
}

pub(crate) type SharedVm = Rc<RefCell<PluginVm>>;

pub(crate) struct ChainPlugin {
    pub name: String,
    pub vm: SharedVm,
    pub root: usize,
    pub fail_strategy: FailStrategy,
    /// See [`PluginSpec::headers_stop_iteration`]; resolved with the module's ABI.
    pub headers_stop_iteration: bool,
}

/// A callout made outside any stream (from `proxy_on_tick`, `proxy_on_queue_ready`, or a root
/// context's own callout callback), for the embedder to execute and answer through
/// [`VmPool::http_call_response`] or [`VmPool::grpc_event`] with the same `vm` and `root_context`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootCall {
    pub vm: usize,
    pub root_context: u32,
    pub token: u32,
    pub op: CallOp,
}

/// The plugin VMs of one worker, shared by every chain built from it. A plugin with the same code,
/// vm_id, VM configuration and environment runs in one VM however many routes use it; each
/// distinct plugin configuration (a per-route override) is one more root context in that VM, as
/// in Envoy.
pub struct VmPool {
    engine: Engine,
    clock: Clock,
    vms: RefCell<Vec<SharedVm>>,
    root_calls: RefCell<Vec<RootCall>>,
    failures: RefCell<Vec<PluginFailure>>,
    /// Streams a plugin paused, by the plugin's VM, the VM's generation (a FAIL_RELOAD instance
    /// numbers its contexts afresh) and stream context: where effects on them from outside the
    /// stream (a tick, a root callout answer, a queue) go.
    parked: RefCell<HashMap<(usize, u64, u32), (Weak<Inbox>, usize)>>,
    /// Set by [`VmPool::tear_down`]: no root context is called again.
    torn_down: Cell<bool>,
}

/// Effects on a paused stream that came from outside it, with the index of the plugin whose
/// context they name, waiting for the stream's embedder (woken through the waker).
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) effects: RefCell<Vec<(usize, Effect)>>,
    pub(crate) waker: Cell<Option<Waker>>,
}

/// Resolves when `inbox` holds effects; never without an inbox (nothing was paused).
pub(crate) fn inbox_ready(
    inbox: Option<Rc<Inbox>>,
) -> impl std::future::Future<Output = ()> + 'static {
    std::future::poll_fn(move |cx| match &inbox {
        Some(inbox) if !inbox.effects.borrow().is_empty() => std::task::Poll::Ready(()),
        Some(inbox) => {
            inbox.waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        }
        None => std::task::Poll::Pending,
    })
}

/// A VM's identity in the parked-stream table.
fn vm_key(vm: &SharedVm) -> usize {
    Rc::as_ptr(vm) as *const () as usize
}

/// The ordered plugins of one route on one worker.
pub struct Chain {
    pub(crate) pool: Rc<VmPool>,
    pub(crate) plugins: Vec<ChainPlugin>,
    pub(crate) buffer_limit: usize,
    pub(crate) failure_body: sluice_config::FailureBody,
    /// What finished streams left for the next ones (at most [`SPARE_SCRATCH`]).
    spare: RefCell<Vec<Scratch>>,
}

/// Finished streams' scratch a chain keeps: enough for the streams a worker usually has in flight.
const SPARE_SCRATCH: usize = 64;

/// Default bound on the body data buffered per direction of a stream (Envoy's default
/// per-connection buffer limit).
pub const DEFAULT_BUFFER_LIMIT: usize = 1 << 20;

impl VmPool {
    pub fn new(engine: &Engine, clock: Clock) -> Rc<Self> {
        Rc::new(Self {
            engine: engine.clone(),
            clock,
            vms: RefCell::default(),
            root_calls: RefCell::default(),
            failures: RefCell::default(),
            parked: RefCell::default(),
            torn_down: Cell::new(false),
        })
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Each VM's plugin, linear-memory size and failure, for the admin API.
    pub fn instances(&self) -> Vec<InstanceReport> {
        self.vms
            .borrow()
            .iter()
            .map(|vm| {
                let vm = vm.borrow();
                InstanceReport {
                    plugin: vm.config.plugin_name.clone(),
                    memory_bytes: vm.vm.memory_bytes(),
                    failure: vm.vm.failure().map(ToString::to_string),
                }
            })
            .collect()
    }

    /// How many VMs the pool runs.
    pub fn vm_count(&self) -> usize {
        self.vms.borrow().len()
    }

    /// How many root contexts (distinct plugin configurations) the pool runs.
    pub fn root_count(&self) -> usize {
        self.vms
            .borrow()
            .iter()
            .map(|vm| vm.borrow().roots.len())
            .sum()
    }

    /// Builds a chain, starting whatever VMs and root contexts it needs that the pool lacks.
    pub fn chain(
        self: &Rc<Self>,
        specs: Vec<PluginSpec>,
        buffer_limit: usize,
    ) -> Result<Chain, ChainError> {
        let mut plugins = Vec::new();
        for spec in specs {
            let error = |source, logs| ChainError {
                plugin: spec.name.clone(),
                source,
                logs,
                configuration: spec.plugin_configuration.clone(),
            };
            let vm = self
                .vm_for(&spec)
                .map_err(|source| error(source, Vec::new()))?;
            let root = {
                let mut plugin_vm = vm.borrow_mut();
                match plugin_vm.root(&spec.name, &spec.root_id, &spec.plugin_configuration) {
                    Ok(root) => root,
                    Err(source) => {
                        let logs = plugin_vm.vm.take_logs();
                        let unused = plugin_vm.roots.is_empty();
                        drop(plugin_vm);
                        if unused {
                            // A VM started for this chain alone must not outlive the failed build.
                            self.vms.borrow_mut().retain(|v| !Rc::ptr_eq(v, &vm));
                        }
                        return Err(error(source, logs));
                    }
                }
            };
            let effects = vm.borrow_mut().vm.take_effects();
            self.absorb(&vm, effects);
            plugins.push(ChainPlugin {
                name: spec.name,
                vm,
                root,
                fail_strategy: spec.fail_strategy,
                headers_stop_iteration: spec.headers_stop_iteration
                    || spec.code.info.abi == Ok(sluice_abi::AbiVersion::V0_2_100),
            });
        }
        Ok(Chain {
            pool: self.clone(),
            plugins,
            buffer_limit,
            failure_body: sluice_config::FailureBody::Empty,
            spare: RefCell::default(),
        })
    }

    fn vm_for(&self, spec: &PluginSpec) -> Result<SharedVm, LoadError> {
        let existing = self
            .vms
            .borrow()
            .iter()
            .find(|vm| {
                let vm = vm.borrow();
                vm.code.info.sha256 == spec.code.info.sha256
                    && vm.code.allowed == spec.code.allowed
                    && vm.config.vm_id == spec.vm.vm_id
                    && vm.config.vm_configuration == spec.vm.vm_configuration
                    && vm.config.env == spec.vm.env
                    // Plugins with their own limits get instances of their own.
                    && vm.config.limits == spec.vm.limits
            })
            .cloned();
        if let Some(vm) = existing {
            return Ok(vm);
        }
        let vm = Rc::new(RefCell::new(PluginVm {
            engine: self.engine.clone(),
            code: spec.code.clone(),
            config: spec.vm.clone(),
            vm: Vm::new(&self.engine, &spec.code, spec.vm.clone())?,
            roots: Vec::new(),
            generation: 0,
            reloads: 0,
            next_reload_nanos: 0,
            started_nanos: self.clock.monotonic_nanos(),
        }));
        self.vms.borrow_mut().push(vm.clone());
        Ok(vm)
    }

    /// Records a plugin failure for the metrics and the admin API. A call into a VM that had
    /// failed already is no new failure (a failed VM's ticks would count one each).
    pub(crate) fn record_failure(&self, failure: PluginFailure) {
        if failure.kind != sluice_host::FailureKind::AlreadyFailed {
            self.failures.borrow_mut().push(failure);
        }
    }

    /// Plugin failures (traps, deadlines, memory limits) since the last call.
    pub fn take_failures(&self) -> Vec<PluginFailure> {
        std::mem::take(&mut self.failures.borrow_mut())
    }

    /// Captured plugin logs of every VM since the last call.
    pub fn take_logs(&self) -> Vec<sluice_host::LogRecord> {
        self.vms
            .borrow()
            .iter()
            .flat_map(|vm| vm.borrow_mut().vm.take_logs())
            .collect()
    }

    fn index_of(&self, vm: &SharedVm) -> usize {
        self.vms
            .borrow()
            .iter()
            .position(|v| Rc::ptr_eq(v, vm))
            .unwrap_or(usize::MAX)
    }

    /// Handles effects recorded outside any stream: callouts become [`RootCall`]s, `proxy_done`
    /// finishes a deferred context; stream effects cannot arise here (no stream context is
    /// effective) and are dropped with a log line.
    pub(crate) fn absorb(&self, vm: &SharedVm, effects: Vec<Effect>) {
        let index = self.index_of(vm);
        for effect in effects {
            let call = match effect {
                Effect::Call {
                    root_context,
                    token,
                    op,
                    ..
                } => RootCall {
                    vm: index,
                    root_context,
                    token,
                    op,
                },
                Effect::Done { context } => {
                    self.delete_root(vm, context);
                    continue;
                }
                Effect::ContinueStream { context, .. }
                | Effect::CloseStream { context, .. }
                | Effect::LocalResponse { context, .. } => {
                    self.to_parked(vm, context, effect);
                    continue;
                }
                other => {
                    tracing::debug!(?other, "effect outside a live stream ignored");
                    continue;
                }
            };
            self.root_calls.borrow_mut().push(call);
        }
    }

    /// Ends every root context, as Envoy does when a configuration goes away (a reload retired
    /// it, or the proxy stops): `proxy_on_done`, then `proxy_on_delete` when it returned true.
    /// A root that answers false would wait for `proxy_done`, but the VM goes now, as Envoy
    /// frees a VM no configuration uses: it gets no `proxy_on_delete`. Failed VMs are not
    /// called. Afterwards no root callback runs: ticks, queue notifications and the answers to
    /// root callouts still in flight are dropped (Envoy cancels those callouts).
    pub fn tear_down(&self) {
        if self.torn_down.replace(true) {
            return;
        }
        let vms: Vec<SharedVm> = self.vms.borrow().clone();
        for vm in vms {
            let mut plugin_vm = vm.borrow_mut();
            let roots: Vec<u32> = plugin_vm.roots.drain(..).map(|r| r.context).collect();
            if plugin_vm.vm.failure().is_some() {
                continue;
            }
            for root in roots {
                let result = match plugin_vm.vm.done(root) {
                    Ok(true) => plugin_vm.vm.delete(root),
                    Ok(false) => Ok(()),
                    Err(failure) => Err(failure),
                };
                drop(plugin_vm.vm.take_effects());
                if let Err(failure) = result {
                    tracing::warn!(plugin = %failure.plugin, "while ending the plugin: {failure}");
                    self.record_failure(failure);
                    break;
                }
            }
        }
    }

    /// Registers a stream that plugin `index` (context `context` of `vm`) paused, so that a root
    /// callback can resume it (`proxy_set_effective_context`, then `proxy_continue_stream`).
    pub(crate) fn park(
        &self,
        vm: &SharedVm,
        generation: u64,
        context: u32,
        inbox: &Rc<Inbox>,
        index: usize,
    ) {
        self.parked.borrow_mut().insert(
            (vm_key(vm), generation, context),
            (Rc::downgrade(inbox), index),
        );
    }

    pub(crate) fn unpark(&self, vm: &SharedVm, generation: u64, context: u32) {
        self.parked
            .borrow_mut()
            .remove(&(vm_key(vm), generation, context));
    }

    /// Hands an effect that names a stream context to that stream, if a plugin paused it.
    fn to_parked(&self, vm: &SharedVm, context: u32, effect: Effect) {
        let Ok(generation) = vm.try_borrow().map(|v| v.generation) else {
            tracing::debug!(?effect, "effect on a stream while its VM is busy ignored");
            return;
        };
        let parked = self
            .parked
            .borrow()
            .get(&(vm_key(vm), generation, context))
            .cloned();
        match parked.and_then(|(inbox, index)| Some((inbox.upgrade()?, index))) {
            Some((inbox, index)) => {
                inbox.effects.borrow_mut().push((index, effect));
                if let Some(waker) = inbox.waker.take() {
                    waker.wake();
                }
            }
            None => tracing::debug!(?effect, "effect on a stream that is not paused ignored"),
        }
    }

    /// `proxy_on_log` for a stream context that is finishing. A failed VM is not called. A
    /// failure here, as in [`VmPool::end`] and [`VmPool::end_connection`], is the caller's to
    /// count: the pool's own list is for failures outside streams.
    pub(crate) fn log(&self, vm: &SharedVm, context: u32) -> Result<(), PluginFailure> {
        let mut plugin_vm = vm.borrow_mut();
        if plugin_vm.vm.failure().is_some() {
            return Ok(());
        }
        let result = plugin_vm.vm.log(context);
        // A finishing context can no longer act on its stream.
        drop(plugin_vm.vm.take_effects());
        drop(plugin_vm);
        result
    }

    /// `proxy_on_done` then `proxy_on_delete` for a finished stream context, as Envoy ends a
    /// filter: the answer of `proxy_on_done` is not waited for. A failed VM only forgets it.
    pub(crate) fn end(&self, vm: &SharedVm, context: u32) -> Result<(), PluginFailure> {
        let mut plugin_vm = vm.borrow_mut();
        let done = match plugin_vm.vm.failure() {
            None => plugin_vm.vm.done(context).map(drop),
            Some(_) => Ok(()),
        };
        let deleted = plugin_vm.vm.delete(context);
        drop(plugin_vm.vm.take_effects());
        drop(plugin_vm);
        done.and(deleted)
    }

    /// Ends a network plugin's context on a closed connection, as Envoy's `onCloseTCP`:
    /// `proxy_on_downstream_connection_close`, then `proxy_on_done`, `proxy_on_log` and
    /// `proxy_on_delete`. A failed VM only forgets it.
    pub(crate) fn end_connection(
        &self,
        vm: &SharedVm,
        context: u32,
        peer: sluice_abi::PeerType,
    ) -> Result<(), PluginFailure> {
        let mut plugin_vm = vm.borrow_mut();
        let vm_ = plugin_vm.vm();
        let mut result = Ok(());
        if vm_.failure().is_none() {
            result = vm_
                .downstream_close(context, peer)
                .and_then(|()| vm_.done(context).map(drop))
                .and_then(|()| vm_.log(context));
        }
        let deleted = vm_.delete(context);
        drop(vm_.take_effects());
        drop(plugin_vm);
        result.and(deleted)
    }

    /// `proxy_on_delete` for a root context that answered `proxy_on_done` with false and has
    /// now called `proxy_done`.
    fn delete_root(&self, vm: &SharedVm, context: u32) {
        let result = {
            let mut plugin_vm = vm.borrow_mut();
            let result = plugin_vm.vm.delete(context);
            drop(plugin_vm.vm.take_effects());
            result
        };
        if let Err(failure) = result {
            self.record_failure(failure);
        }
    }

    /// Callouts made outside streams since the last call.
    pub fn take_root_calls(&self) -> Vec<RootCall> {
        std::mem::take(&mut self.root_calls.borrow_mut())
    }

    /// Calls into a VM outside any stream and handles what the call recorded.
    fn run_root<R>(
        &self,
        vm: &SharedVm,
        f: impl FnOnce(&mut PluginVm) -> Result<R, PluginFailure>,
    ) -> Option<R> {
        // After `tear_down`, root contexts are gone: ticks, queue notifications and the answers
        // to root callouts still in flight go nowhere.
        if self.torn_down.get() {
            return None;
        }
        let (result, effects) = {
            let mut plugin_vm = vm.borrow_mut();
            let result = f(&mut plugin_vm);
            (result, plugin_vm.vm.take_effects())
        };
        self.absorb(vm, effects);
        result.map_err(|failure| self.record_failure(failure)).ok()
    }

    fn vm_at(&self, index: usize) -> Option<SharedVm> {
        self.vms.borrow().get(index).cloned()
    }

    /// Delivers what came back from a call made outside any stream (a [`RootCall`]).
    pub fn call_answer(&self, vm: usize, root_context: u32, token: u32, answer: CallAnswer) {
        if let Some(vm) = self.vm_at(vm) {
            self.run_root(&vm, |plugin_vm| {
                plugin_vm.vm.call_answer(root_context, token, answer)
            });
        }
    }

    /// Fires every tick that is due at the clock's current time; returns how many fired.
    pub fn fire_due_ticks(&self) -> usize {
        let now = self.clock.monotonic_nanos();
        let mut fired = 0;
        let vms: Vec<SharedVm> = self.vms.borrow().clone();
        for vm in vms {
            let due: Vec<u32> = {
                let mut plugin_vm = vm.borrow_mut();
                let periods: Vec<_> = plugin_vm
                    .roots
                    .iter()
                    .map(|r| plugin_vm.vm.tick_period(r.context))
                    .collect();
                let mut due = Vec::new();
                for (root, period) in plugin_vm.roots.iter_mut().zip(periods) {
                    let (Some(next), Some((length, since))) = (root.next_tick(period), period)
                    else {
                        root.next_tick = None;
                        continue;
                    };
                    if now >= next {
                        due.push(root.context);
                        // Missed ticks are not replayed: the next one is a whole period later.
                        let length = length.as_nanos().max(1) as u64;
                        let skipped = (now - next) / length;
                        root.next_tick = Some((next + (skipped + 1) * length, since));
                    } else {
                        root.next_tick = Some((next, since));
                    }
                }
                due
            };
            for root in due {
                fired += 1;
                self.run_root(&vm, |plugin_vm| plugin_vm.vm.tick(root));
            }
        }
        fired
    }

    /// The earliest time (monotonic nanoseconds) a tick is due, if any root asked for ticks.
    pub fn next_tick_nanos(&self) -> Option<u64> {
        self.vms
            .borrow()
            .iter()
            .flat_map(|vm| {
                let vm = vm.borrow();
                vm.roots
                    .iter()
                    .filter_map(|r| r.next_tick(vm.vm.tick_period(r.context)))
                    .collect::<Vec<_>>()
            })
            .min()
    }

    /// Delivers pending `proxy_on_queue_ready` notifications to the VMs that registered the
    /// queues; returns how many were delivered.
    pub fn deliver_queue_events(&self) -> usize {
        let mut delivered = 0;
        let vms: Vec<SharedVm> = self.vms.borrow().clone();
        for vm in vms {
            let events = vm.borrow().vm.queue_inbox().take();
            for (root, queue) in events {
                delivered += 1;
                self.run_root(&vm, |plugin_vm| plugin_vm.vm.queue_ready(root, queue));
            }
        }
        delivered
    }
}

impl Chain {
    /// The body of the 503 a failing plugin's stream gets (Envoy's, empty, by default).
    pub fn with_failure_body(mut self, body: sluice_config::FailureBody) -> Self {
        self.failure_body = body;
        self
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub(crate) fn take_scratch(&self) -> Scratch {
        self.spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Scratch::new(self.len()))
    }

    /// Takes back a finished stream's scratch and empties it, unless enough are kept already.
    pub(crate) fn keep_scratch(&self, mut scratch: Scratch) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_SCRATCH {
            scratch.clear();
            spare.push(scratch);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn plugin_name(&self, index: usize) -> &str {
        &self.plugins[index].name
    }

    pub fn pool(&self) -> &Rc<VmPool> {
        &self.pool
    }

    /// Plugin `index`'s root context (its configuration's, in its VM).
    pub(crate) fn root_context(&self, index: usize) -> u32 {
        let plugin = &self.plugins[index];
        plugin.vm.borrow().root_context(plugin.root)
    }

    /// Calls into plugin `index`'s VM and takes the effects the call recorded, for a stream or a
    /// connection to apply.
    pub(crate) fn call_plugin<R>(
        &self,
        index: usize,
        f: impl FnOnce(&mut Vm) -> Result<R, PluginFailure>,
    ) -> (Result<R, PluginFailure>, Vec<Effect>) {
        let mut vm = self.plugins[index].vm.borrow_mut();
        let result = f(vm.vm());
        (result, vm.vm().take_effects())
    }

    /// Makes sure a FAIL_RELOAD plugin whose VM failed gets a fresh one when its backoff allows;
    /// called before each new stream. Returns whether the plugin is usable.
    pub(crate) fn prepare_plugin(&self, index: usize) -> bool {
        let plugin = &self.plugins[index];
        let mut vm = plugin.vm.borrow_mut();
        if plugin.fail_strategy == FailStrategy::FailReload {
            vm.reload_if_due(self.pool.clock.monotonic_nanos())
        } else {
            vm.vm.failure().is_none()
        }
    }
}
