//! One TCP connection through a chain of network (L4) plugins: Envoy's network filter manager and
//! tcp_proxy semantics for Proxy-Wasm plugins, without I/O. The embedder feeds the connection's
//! events in and executes the [`ConnectionStep`]s that come out (connect upstream, write bytes to
//! either side, close).
//!
//! Rules, as in Envoy 1.40 (design/network-plugins-in-envoy.md has the sources):
//! - At accept each plugin, in order, gets its context and `proxy_on_new_connection`; when every
//!   one let the connection through, the upstream is connected ([`ConnectionStep::Connect`]). A
//!   plugin that pauses there holds the connection until it calls `proxy_continue_stream`.
//! - The client is not read until the upstream is connected.
//! - Client bytes run through the plugins in order, upstream bytes in reverse order. A callback's
//!   size is every byte the connection holds for that direction, not the newest read: after a
//!   pause the plugins are called again, from the first, with the grown buffer. The end of stream
//!   comes once per direction, with data or alone (size 0).
//! - A pause on client bytes ends when the plugin calls `proxy_continue_stream(DOWNSTREAM)`; the
//!   plugins after it then get the bytes. Upstream bytes cannot be resumed (Envoy answers
//!   `UNIMPLEMENTED`): they wait for the next upstream read.
//! - After each plugin's callback with the upstream's end of stream, that plugin gets
//!   `proxy_on_upstream_connection_close(UNKNOWN)`; no upstream socket event calls it.
//! - When the client connection closes, each plugin in order gets
//!   `proxy_on_downstream_connection_close` (LOCAL when the proxy closed it, REMOTE when the
//!   client did), then `proxy_on_done`, `proxy_on_log` and `proxy_on_delete`.
//! - `proxy_close_stream` (either side) closes the client connection after what was written to
//!   it is flushed, and the upstream at once.
//! - A failing plugin is skipped under FAIL_OPEN; otherwise its connection is closed and it gets
//!   no further callback. A plugin whose instance is down when the connection arrives is left out
//!   under FAIL_OPEN and closes the connection otherwise.

use std::rc::Rc;

use bytes::Bytes;
use sluice_abi::{Action, PeerType, StreamType};
use sluice_config::FailStrategy;
use sluice_host::{CallAnswer, CallOp, Effect, HttpStream, PluginFailure, SharedStream, Vm};

use crate::chain::{Chain, Inbox, inbox_ready};

/// What the embedder must do next for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionStep {
    /// Connect to the upstream; then call [`Connection::upstream_connected`] (or
    /// [`Connection::downstream_closed`] with LOCAL if that fails).
    Connect,
    /// Write to the upstream; with `end_of_stream`, then half-close it.
    ToUpstream { data: Bytes, end_of_stream: bool },
    /// Write to the client; with `end_of_stream`, then half-close it.
    ToDownstream { data: Bytes, end_of_stream: bool },
    /// Close the client connection once what was written to it is flushed, and the upstream at
    /// once; then call [`Connection::downstream_closed`] with LOCAL.
    Close { reason: String },
    /// Start or act on an outbound call of `plugin`; answer with [`Connection::call_answer`].
    Call {
        plugin: usize,
        token: u32,
        op: CallOp,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Not yet given `proxy_on_new_connection` (a plugin before it paused).
    Waiting,
    Live {
        context: u32,
        generation: u64,
    },
    /// Left out: down at accept under FAIL_OPEN, failed, or finished.
    Out,
}

/// One TCP connection running through a [`Chain`] of network plugins.
pub struct Connection {
    chain: Rc<Chain>,
    data: SharedStream,
    slots: Vec<Slot>,
    /// The first plugin that was down at accept and is not FAIL_OPEN: the connection closes
    /// when it gets there.
    unavailable_at: Option<usize>,
    steps: Vec<ConnectionStep>,
    /// tcp_proxy's part: whether the upstream was asked for, and whether it is connected.
    connect_asked: bool,
    upstream_connected: bool,
    /// The client's end of stream has been read (delivered with every later pass).
    downstream_end: bool,
    upstream_end: bool,
    /// The client's end of stream passed every plugin and went upstream.
    downstream_end_sent: bool,
    upstream_end_sent: bool,
    closing: bool,
    finished: bool,
    failures: Vec<PluginFailure>,
    inbox: Option<Rc<Inbox>>,
    parked: Vec<usize>,
}

impl Connection {
    /// Accepts a connection: `info` carries its properties (addresses, TLS facts). Each plugin in
    /// order gets its context and `proxy_on_new_connection`, as Envoy's filter chain does at
    /// accept.
    pub fn new(chain: Rc<Chain>, info: HttpStream) -> Self {
        let n = chain.len();
        let mut connection = Self {
            data: info.shared(),
            slots: vec![Slot::Waiting; n],
            unavailable_at: None,
            steps: Vec::new(),
            connect_asked: false,
            upstream_connected: false,
            downstream_end: false,
            upstream_end: false,
            downstream_end_sent: false,
            upstream_end_sent: false,
            closing: false,
            finished: false,
            failures: Vec::new(),
            inbox: None,
            parked: Vec::new(),
            chain,
        };
        for index in 0..n {
            if !connection.chain.prepare_plugin(index) {
                connection.slots[index] = Slot::Out;
                // Envoy's empty context: unless FAIL_OPEN, the plugin closes the connection when
                // its turn comes, and is never called.
                if connection.chain.plugins[index].fail_strategy != FailStrategy::FailOpen
                    && connection.unavailable_at.is_none()
                {
                    connection.unavailable_at = Some(index);
                }
            }
        }
        connection.read_pass(0);
        connection
    }

    /// Takes the steps produced so far, in order.
    pub fn take_steps(&mut self) -> Vec<ConnectionStep> {
        std::mem::take(&mut self.steps)
    }

    /// Whether the embedder should read the client now: the upstream is connected, the client's
    /// end has not been read, and the bytes held for the plugins are under the buffer bound.
    pub fn wants_downstream_bytes(&self) -> bool {
        self.upstream_connected
            && !self.downstream_end
            && !self.closing
            && self.held(|d| &d.downstream_data) < self.chain.buffer_limit
    }

    /// Whether the embedder should read the upstream now.
    pub fn wants_upstream_bytes(&self) -> bool {
        self.upstream_connected
            && !self.upstream_end
            && !self.closing
            && self.held(|d| &d.upstream_data) < self.chain.buffer_limit
    }

    /// The cluster a plugin chose for this connection (the filter state
    /// `envoy.tcp_proxy.cluster`, as Envoy's tcp_proxy reads it when it connects).
    pub fn chosen_cluster(&self) -> Option<String> {
        match &self
            .data
            .borrow()
            .filter_state
            .get(sluice_host::TCP_PROXY_CLUSTER)?
            .value
        {
            sluice_abi::Attribute::String(cluster) => Some(cluster.clone()),
            _ => None,
        }
    }

    /// Whether a step asked to close the connection.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether both ends of stream have passed the plugins (the embedder closes the connection
    /// once the client has been sent everything).
    pub fn both_ends_sent(&self) -> bool {
        self.downstream_end_sent && self.upstream_end_sent
    }

    /// Plugin failures this connection ran into.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.failures
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The upstream connection is up: the client is read from now on.
    pub fn upstream_connected(&mut self) {
        self.upstream_connected = true;
    }

    /// The proxy closes the connection (the upstream failed): as a plugin's close, the client
    /// gets what was written to it, then the plugins hear of the close.
    pub fn close_from_proxy(&mut self, reason: &str) {
        self.close(reason.to_string());
    }

    /// Bytes (and perhaps the end of stream) read from the client.
    pub fn downstream_data(&mut self, data: &[u8], end_of_stream: bool) {
        if self.closing || self.finished || self.downstream_end {
            return;
        }
        self.downstream_end = end_of_stream;
        self.data
            .borrow_mut()
            .downstream_data
            .get_or_insert_with(Vec::new)
            .extend_from_slice(data);
        self.read_pass(0);
    }

    /// Bytes (and perhaps the end of stream) read from the upstream.
    pub fn upstream_data(&mut self, data: &[u8], end_of_stream: bool) {
        if self.closing || self.finished || self.upstream_end {
            return;
        }
        self.upstream_end = end_of_stream;
        self.data
            .borrow_mut()
            .upstream_data
            .get_or_insert_with(Vec::new)
            .extend_from_slice(data);
        self.write_pass();
    }

    /// Answers a call `plugin` started: its root context's callback runs, and what it does to this
    /// connection (resume it, close it) applies.
    pub fn call_answer(&mut self, plugin: usize, token: u32, answer: CallAnswer) {
        if !matches!(self.slots.get(plugin), Some(Slot::Live { .. })) {
            return;
        }
        let root = self.chain.root_context(plugin);
        self.call(plugin, |vm| vm.call_answer(root, token, answer));
    }

    /// Resolves when effects from outside the connection (a root context resuming it) are
    /// waiting; [`Connection::apply_root_effects`] applies them.
    pub fn root_effects(&self) -> impl std::future::Future<Output = ()> + 'static {
        inbox_ready(self.inbox.clone())
    }

    pub fn apply_root_effects(&mut self) {
        let Some(inbox) = self.inbox.clone() else {
            return;
        };
        let effects = std::mem::take(&mut *inbox.effects.borrow_mut());
        for (index, effect) in effects {
            self.apply_effects(index, vec![effect], false);
        }
    }

    /// The client connection closed: `peer` says who closed it (LOCAL: the proxy, REMOTE: the
    /// client). Each plugin in order gets `proxy_on_downstream_connection_close`, then
    /// `proxy_on_done`, `proxy_on_log` and `proxy_on_delete`, as Envoy's `onCloseTCP`. Once.
    pub fn downstream_closed(&mut self, peer: PeerType) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.closing = true;
        for index in std::mem::take(&mut self.parked) {
            if let Slot::Live {
                context,
                generation,
            } = self.slots[index]
            {
                self.chain
                    .pool
                    .unpark(&self.chain.plugins[index].vm, generation, context);
            }
        }
        for index in 0..self.slots.len() {
            let Slot::Live { context, .. } = self.slots[index] else {
                continue;
            };
            self.slots[index] = Slot::Out;
            let vm = &self.chain.plugins[index].vm;
            if let Err(failure) = self.chain.pool.end_connection(vm, context, peer) {
                self.failures.push(failure);
            }
        }
        let mut data = self.data.borrow_mut();
        data.downstream_data = None;
        data.upstream_data = None;
    }

    fn held(&self, buffer: impl Fn(&HttpStream) -> &Option<Vec<u8>>) -> usize {
        buffer(&self.data.borrow()).as_ref().map_or(0, Vec::len)
    }

    /// Envoy's `onContinueReading`: from plugin `from` on, a plugin not yet started gets
    /// `proxy_on_new_connection`, then every plugin the client's bytes (or end) reach gets
    /// `proxy_on_downstream_data`; past the last one they go to tcp_proxy.
    fn read_pass(&mut self, from: usize) {
        for index in from..self.slots.len() {
            if self.closing {
                return;
            }
            if self.unavailable_at == Some(index) {
                let name = self.chain.plugins[index].name.clone();
                self.close(format!("plugin '{name}' is unavailable"));
                return;
            }
            if self.slots[index] == Slot::Waiting {
                match self.start(index) {
                    Some(Action::Continue) | None => {}
                    Some(_) => {
                        self.park(index);
                        return;
                    }
                }
                if self.closing {
                    return;
                }
            }
            let Slot::Live { context, .. } = self.slots[index] else {
                continue;
            };
            let size = self.held(|d| &d.downstream_data);
            if size == 0 && !self.downstream_end {
                continue;
            }
            let end = self.downstream_end;
            let action = self.call(index, |vm| vm.downstream_data(context, size as u32, end));
            if action.is_some_and(|action| action != Action::Continue) {
                self.park(index);
                return;
            }
        }
        if self.closing {
            return;
        }
        // tcp_proxy: the first pass connects; later ones forward (reads wait for the upstream).
        if !self.connect_asked {
            self.connect_asked = true;
            self.steps.push(ConnectionStep::Connect);
            return;
        }
        let data = self.data.borrow_mut().downstream_data.take();
        let end_of_stream = self.downstream_end && !self.downstream_end_sent;
        if data.as_ref().is_some_and(|d| !d.is_empty()) || end_of_stream {
            self.downstream_end_sent |= end_of_stream;
            self.steps.push(ConnectionStep::ToUpstream {
                data: data.unwrap_or_default().into(),
                end_of_stream,
            });
        }
    }

    /// Envoy's write filters: the upstream's bytes run through the plugins in reverse order,
    /// each from the start with everything held; past the first they go to the client.
    fn write_pass(&mut self) {
        for index in (0..self.slots.len()).rev() {
            if self.closing {
                return;
            }
            let Slot::Live { context, .. } = self.slots[index] else {
                continue;
            };
            let size = self.held(|d| &d.upstream_data);
            let end = self.upstream_end;
            let action = self.call(index, |vm| vm.upstream_data(context, size as u32, end));
            if end && matches!(self.slots[index], Slot::Live { .. }) {
                self.call(index, |vm| vm.upstream_close(context, PeerType::Unknown));
            }
            if action.is_some_and(|action| action != Action::Continue) {
                return;
            }
        }
        if self.closing {
            return;
        }
        let data = self.data.borrow_mut().upstream_data.take();
        let end_of_stream = self.upstream_end && !self.upstream_end_sent;
        if data.as_ref().is_some_and(|d| !d.is_empty()) || end_of_stream {
            self.upstream_end_sent |= end_of_stream;
            self.steps.push(ConnectionStep::ToDownstream {
                data: data.unwrap_or_default().into(),
                end_of_stream,
            });
        }
    }

    /// Creates plugin `index`'s context and calls `proxy_on_new_connection`. `None` when the
    /// plugin failed (handled).
    fn start(&mut self, index: usize) -> Option<Action> {
        let plugin = &self.chain.plugins[index];
        let created = {
            let mut vm = plugin.vm.borrow_mut();
            let root = vm.root_context(plugin.root);
            let generation = vm.generation;
            let created = vm
                .vm()
                .create_connection(root, self.data.clone())
                .map(|context| (context, generation));
            drop(vm.vm().take_effects());
            created
        };
        let context = match created {
            Ok((context, generation)) => {
                self.slots[index] = Slot::Live {
                    context,
                    generation,
                };
                context
            }
            Err(failure) => {
                self.plugin_failed(index, failure);
                return None;
            }
        };
        self.call(index, |vm| vm.new_connection(context))
    }

    /// Calls into plugin `index`'s VM, then applies the effects it recorded. `None` when the
    /// plugin failed (the failure has been handled).
    fn call<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Vm) -> Result<R, PluginFailure>,
    ) -> Option<R> {
        let (result, effects) = self.chain.call_plugin(index, f);
        match result {
            Ok(value) => {
                self.apply_effects(index, effects, true);
                Some(value)
            }
            Err(failure) => {
                self.plugin_failed(index, failure);
                None
            }
        }
    }

    /// Applies effects of a call into plugin `index`'s VM: the ones that name this connection's
    /// contexts act on it, calls become steps, anything else is the pool's (`forward`: an effect
    /// on another connection or stream of the VM goes to it if a plugin paused it).
    fn apply_effects(&mut self, index: usize, effects: Vec<Effect>, forward: bool) {
        let vm = self.chain.plugins[index].vm.clone();
        let owner = |connection: &Self, context: u32| {
            (0..connection.slots.len()).find(|&i| {
                Rc::ptr_eq(&connection.chain.plugins[i].vm, &vm)
                    && matches!(connection.slots[i], Slot::Live { context: c, .. } if c == context)
            })
        };
        for effect in effects {
            match effect {
                Effect::ContinueStream { context, stream } => match owner(self, context) {
                    // Only the client's direction can be resumed (the host refuses the other).
                    Some(plugin) if stream == StreamType::Downstream => {
                        self.unpark(plugin);
                        self.read_pass(plugin + 1);
                    }
                    Some(_) => {}
                    None if forward => self.chain.pool.absorb(&vm, vec![effect]),
                    None => {}
                },
                Effect::CloseStream { context, .. } => {
                    if let Some(plugin) = owner(self, context) {
                        let name = self.chain.plugins[plugin].name.clone();
                        self.close(format!("plugin '{name}' closed the connection"));
                    } else if forward {
                        self.chain.pool.absorb(&vm, vec![effect]);
                    }
                }
                Effect::Call {
                    context, token, op, ..
                } => {
                    let plugin = if op.starts() {
                        owner(self, context).unwrap_or(index)
                    } else {
                        index
                    };
                    self.steps.push(ConnectionStep::Call { plugin, token, op });
                }
                done @ Effect::Done { .. } => self.chain.pool.absorb(&vm, vec![done]),
                effect @ Effect::LocalResponse { .. } if forward => {
                    self.chain.pool.absorb(&vm, vec![effect]);
                }
                Effect::LocalResponse { .. } | Effect::ClearRouteCache { .. } => {}
            }
        }
    }

    /// Registers plugin `index`, which just paused the connection, so a root callback can
    /// resume it.
    fn park(&mut self, index: usize) {
        let Slot::Live {
            context,
            generation,
        } = self.slots[index]
        else {
            return;
        };
        if self.parked.contains(&index) {
            return;
        }
        let inbox = self.inbox.get_or_insert_with(Rc::default).clone();
        self.chain.pool.park(
            &self.chain.plugins[index].vm,
            generation,
            context,
            &inbox,
            index,
        );
        self.parked.push(index);
    }

    fn unpark(&mut self, index: usize) {
        let Some(at) = self.parked.iter().position(|&i| i == index) else {
            return;
        };
        self.parked.swap_remove(at);
        if let Slot::Live {
            context,
            generation,
        } = self.slots[index]
        {
            self.chain
                .pool
                .unpark(&self.chain.plugins[index].vm, generation, context);
        }
    }

    fn close(&mut self, reason: String) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.steps.push(ConnectionStep::Close { reason });
    }

    /// A failing plugin is out of the connection; unless FAIL_OPEN, the connection closes.
    fn plugin_failed(&mut self, index: usize, failure: PluginFailure) {
        tracing::warn!(plugin = %failure.plugin, "{failure}");
        // Counted once, by whoever serves the stream (its `failures()`); the pool's own list is
        // for failures outside any stream (ticks, root callbacks).
        self.failures.push(failure);
        self.unpark(index);
        self.slots[index] = Slot::Out;
        if self.chain.plugins[index].fail_strategy != FailStrategy::FailOpen {
            let name = self.chain.plugins[index].name.clone();
            self.close(format!("plugin '{name}' failed"));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.downstream_closed(PeerType::Local);
    }
}
