//! An ordered chain of plugins on one worker, the VMs behind it, and what happens outside any
//! stream: ticks, queue notifications, root-context callouts and FAIL_RELOAD.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use sluice_config::FailStrategy;
use sluice_host::{
    CallResponse, Clock, Effect, Engine, GrpcCallRequest, GrpcEvent, HttpCallRequest, LoadError,
    PluginCode, PluginFailure, Vm, VmConfig,
};

/// One plugin of a chain, as configured.
#[derive(Clone)]
pub struct PluginSpec {
    pub name: String,
    pub root_id: String,
    pub code: PluginCode,
    pub plugin_configuration: Vec<u8>,
    pub vm: VmConfig,
    pub fail_strategy: FailStrategy,
}

#[derive(Debug, thiserror::Error)]
#[error("plugin '{plugin}': {source}")]
pub struct ChainError {
    pub plugin: String,
    #[source]
    pub source: LoadError,
    /// What the plugin logged before it failed to start (why `proxy_on_configure` said no).
    pub logs: Vec<sluice_host::LogRecord>,
}

/// First delay before a FAIL_RELOAD plugin gets a fresh instance (Envoy's default base interval).
pub const RELOAD_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between reload attempts of a plugin that keeps failing.
pub const RELOAD_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A reloaded instance that survives this long resets the backoff.
pub const RELOAD_STABLE_AFTER: Duration = Duration::from_secs(60);

struct Root {
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
    fn start(engine: &Engine, code: &PluginCode, config: &VmConfig) -> Result<Vm, LoadError> {
        Vm::new(engine, code, config.clone())
    }

    pub(crate) fn vm(&mut self) -> &mut Vm {
        &mut self.vm
    }

    pub(crate) fn root_context(&self, root: usize) -> u32 {
        self.roots[root].context
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
        let result = Self::start(&self.engine, &self.code, &self.config).and_then(|mut vm| {
            let contexts = self
                .roots
                .iter()
                .map(|root| vm.start_root(&root.root_id, &root.configuration))
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
}

/// A callout made outside any stream (from `proxy_on_tick`, `proxy_on_queue_ready`, or a root
/// context's own callout callback), for the embedder to execute and answer through
/// [`Chain::http_call_response`] or [`Chain::grpc_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCall {
    Http {
        plugin: usize,
        token: u32,
        request: HttpCallRequest,
    },
    Grpc {
        plugin: usize,
        token: u32,
        request: GrpcCallRequest,
    },
    GrpcSend {
        plugin: usize,
        token: u32,
        message: Vec<u8>,
        end_of_stream: bool,
    },
    GrpcCancel {
        plugin: usize,
        token: u32,
    },
    GrpcClose {
        plugin: usize,
        token: u32,
    },
}

/// The ordered plugins of one route on one worker.
pub struct Chain {
    pub(crate) plugins: Vec<ChainPlugin>,
    pub(crate) buffer_limit: usize,
    pub(crate) clock: Clock,
    root_calls: RefCell<Vec<RootCall>>,
    failures: RefCell<Vec<PluginFailure>>,
}

/// Default bound on the body data buffered per direction of a stream (Envoy's default
/// per-connection buffer limit).
pub const DEFAULT_BUFFER_LIMIT: usize = 1 << 20;

impl Chain {
    /// Instantiates the plugins. Plugins with the same code, vm_id and VM configuration share one
    /// VM, each with its own root context, as in Envoy.
    pub fn build(
        engine: &Engine,
        specs: Vec<PluginSpec>,
        buffer_limit: usize,
        clock: Clock,
    ) -> Result<Self, ChainError> {
        let mut vms: Vec<SharedVm> = Vec::new();
        let mut plugins = Vec::new();
        let now = clock.monotonic_nanos();
        for spec in specs {
            let fail = |source| ChainError {
                plugin: spec.name.clone(),
                source,
                logs: Vec::new(),
            };
            let shared = vms.iter().find(|vm| {
                let vm = vm.borrow();
                vm.code.info.sha256 == spec.code.info.sha256
                    && vm.config.vm_id == spec.vm.vm_id
                    && vm.config.vm_configuration == spec.vm.vm_configuration
                    && vm.config.env == spec.vm.env
            });
            let vm = match shared {
                Some(vm) => vm.clone(),
                None => {
                    let vm = PluginVm::start(engine, &spec.code, &spec.vm).map_err(fail)?;
                    let vm = Rc::new(RefCell::new(PluginVm {
                        engine: engine.clone(),
                        code: spec.code.clone(),
                        config: spec.vm.clone(),
                        vm,
                        roots: Vec::new(),
                        generation: 0,
                        reloads: 0,
                        next_reload_nanos: 0,
                        started_nanos: now,
                    }));
                    vms.push(vm.clone());
                    vm
                }
            };
            let root = {
                let mut plugin_vm = vm.borrow_mut();
                let context = match plugin_vm
                    .vm
                    .start_root(&spec.root_id, &spec.plugin_configuration)
                {
                    Ok(context) => context,
                    Err(source) => {
                        return Err(ChainError {
                            plugin: spec.name,
                            source,
                            logs: plugin_vm.vm.take_logs(),
                        });
                    }
                };
                plugin_vm.roots.push(Root {
                    root_id: spec.root_id.clone(),
                    configuration: spec.plugin_configuration.clone(),
                    context,
                    next_tick: None,
                });
                plugin_vm.roots.len() - 1
            };
            plugins.push(ChainPlugin {
                name: spec.name,
                vm,
                root,
                fail_strategy: spec.fail_strategy,
            });
        }
        let chain = Self {
            plugins,
            buffer_limit,
            clock,
            root_calls: RefCell::default(),
            failures: RefCell::default(),
        };
        chain.absorb_root_effects();
        Ok(chain)
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn plugin_name(&self, index: usize) -> &str {
        &self.plugins[index].name
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Makes sure a FAIL_RELOAD plugin whose VM failed gets a fresh one when its backoff allows;
    /// called before each new stream.
    pub(crate) fn prepare_plugin(&self, index: usize) -> bool {
        let plugin = &self.plugins[index];
        let now = self.clock.monotonic_nanos();
        let mut vm = plugin.vm.borrow_mut();
        if plugin.fail_strategy == FailStrategy::FailReload {
            vm.reload_if_due(now)
        } else {
            vm.vm.failure().is_none()
        }
    }

    pub(crate) fn record_failure(&self, failure: PluginFailure) {
        self.failures.borrow_mut().push(failure);
    }

    /// Plugin failures (traps, deadlines, memory limits) since the last call.
    pub fn take_failures(&self) -> Vec<PluginFailure> {
        std::mem::take(&mut self.failures.borrow_mut())
    }

    /// Captured plugin logs of every VM since the last call.
    pub fn take_logs(&self) -> Vec<sluice_host::LogRecord> {
        let mut logs = Vec::new();
        for vm in self.distinct_vms() {
            logs.extend(vm.borrow_mut().vm.take_logs());
        }
        logs
    }

    fn distinct_vms(&self) -> Vec<SharedVm> {
        let mut vms: Vec<SharedVm> = Vec::new();
        for plugin in &self.plugins {
            if !vms.iter().any(|vm| Rc::ptr_eq(vm, &plugin.vm)) {
                vms.push(plugin.vm.clone());
            }
        }
        vms
    }

    /// The plugin whose root context `root_context` is in `vm`, so answers to a root-level callout go
    /// back to the configuration that made it; the VM's first plugin when no root matches.
    fn plugin_of(&self, vm: &SharedVm, root_context: Option<u32>) -> usize {
        let in_vm = |p: &&ChainPlugin| Rc::ptr_eq(&p.vm, vm);
        let matching = root_context.and_then(|root| {
            let plugin_vm = vm.borrow();
            self.plugins
                .iter()
                .position(|p| Rc::ptr_eq(&p.vm, vm) && plugin_vm.roots[p.root].context == root)
        });
        matching
            .or_else(|| self.plugins.iter().position(|p| in_vm(&p)))
            .unwrap_or(0)
    }

    /// Collects effects of start-up calls.
    pub(crate) fn absorb_root_effects(&self) {
        for vm in self.distinct_vms() {
            let effects = vm.borrow_mut().vm.take_effects();
            self.absorb(&vm, effects);
        }
    }

    /// Handles effects recorded outside any stream: callouts become [`RootCall`]s, `proxy_done`
    /// finishes a deferred context; stream effects cannot arise here (no stream context is
    /// effective) and are dropped with a log line.
    pub(crate) fn absorb(&self, vm: &SharedVm, effects: Vec<Effect>) {
        for effect in effects {
            let call = match effect {
                Effect::HttpCall {
                    token,
                    request,
                    root_context,
                    ..
                } => RootCall::Http {
                    plugin: self.plugin_of(vm, Some(root_context)),
                    token,
                    request,
                },
                Effect::GrpcCall {
                    token,
                    request,
                    root_context,
                    ..
                } => RootCall::Grpc {
                    plugin: self.plugin_of(vm, Some(root_context)),
                    token,
                    request,
                },
                Effect::GrpcSend {
                    token,
                    message,
                    end_of_stream,
                } => RootCall::GrpcSend {
                    plugin: self.plugin_of(vm, None),
                    token,
                    message,
                    end_of_stream,
                },
                Effect::GrpcCancel { token } => RootCall::GrpcCancel {
                    plugin: self.plugin_of(vm, None),
                    token,
                },
                Effect::GrpcClose { token } => RootCall::GrpcClose {
                    plugin: self.plugin_of(vm, None),
                    token,
                },
                Effect::Done { context } => {
                    self.finalize(vm, context);
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

    /// `proxy_on_log` and `proxy_on_delete` for a stream context whose `proxy_on_done` returned
    /// false, once the plugin called `proxy_done`.
    pub(crate) fn finalize(&self, vm: &SharedVm, context: u32) {
        let result = {
            let mut plugin_vm = vm.borrow_mut();
            let result = plugin_vm.vm.log(context);
            let deleted = plugin_vm.vm.delete(context);
            // A finished context can no longer act on its stream.
            drop(plugin_vm.vm.take_effects());
            result.and(deleted)
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
        let (result, effects) = {
            let mut plugin_vm = vm.borrow_mut();
            let result = f(&mut plugin_vm);
            (result, plugin_vm.vm.take_effects())
        };
        self.absorb(vm, effects);
        result.map_err(|failure| self.record_failure(failure)).ok()
    }

    /// Delivers the answer to a root-level HTTP callout.
    pub fn http_call_response(&self, plugin: usize, token: u32, response: Option<CallResponse>) {
        let entry = &self.plugins[plugin];
        self.run_root(&entry.vm, |vm| {
            let root = vm.roots[entry.root].context;
            vm.vm.http_call_response(root, token, response)
        });
    }

    /// Delivers an event of a root-level gRPC call.
    pub fn grpc_event(&self, plugin: usize, token: u32, event: GrpcEvent) {
        let entry = &self.plugins[plugin];
        self.run_root(&entry.vm, |vm| {
            let root = vm.roots[entry.root].context;
            vm.vm.grpc_event(root, token, event)
        });
    }

    /// Fires every tick that is due at the clock's current time; returns how many fired.
    pub fn fire_due_ticks(&self) -> usize {
        let now = self.clock.monotonic_nanos();
        let mut fired = 0;
        for vm in self.distinct_vms() {
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
        self.distinct_vms()
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
        for vm in self.distinct_vms() {
            let events = vm.borrow().vm.queue_inbox().take();
            for (root, queue) in events {
                delivered += 1;
                self.run_root(&vm, |plugin_vm| plugin_vm.vm.queue_ready(root, queue));
            }
        }
        delivered
    }
}
