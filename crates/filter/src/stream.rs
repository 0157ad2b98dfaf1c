//! One HTTP stream through a chain: Envoy's filter-manager semantics for Proxy-Wasm plugins,
//! without I/O. The embedder feeds request and response events in and executes the [`Step`]s that
//! come out (forward upstream, answer downstream, make callouts).
//!
//! Rules, as in Envoy:
//! - Requests run through the plugins in order, responses in reverse order.
//! - A paused headers callback stops everything: that plugin and the ones after it see no body or
//!   trailers until it continues; data arriving meanwhile waits in front of it, bounded. With
//!   Envoy's `allow_on_headers_stop_iteration` (and for Higress's ABI) it holds the headers only:
//!   the plugin still gets the body, and a body callback that returns Continue lets both go on.
//! - A paused body callback buffers: the plugin is called again with the growing buffer for each
//!   chunk, and nothing passes it until it continues (or returns Continue on a later chunk).
//!   Over the buffer bound, requests get 413 and responses 500 (or a reset once the response began).
//! - A plugin's context is created on the plugin's first callback for the stream, as Envoy does.
//! - A local reply sent before the response began replaces the upstream. Before any response
//!   head exists it runs through the response callbacks of the plugins the request reached (the
//!   replying plugin's included), whether a plugin or the proxy sent it; once one exists it
//!   replaces it directly, and once the response began the stream is reset instead.
//! - At the end: `proxy_on_log` for every plugin, then `proxy_on_done` and `proxy_on_delete`.
//! - A failing plugin is skipped under FAIL_OPEN; otherwise the stream gets 503 (FAIL_RELOAD also
//!   gives the next stream a fresh instance).

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use sluice_abi::{Action, HeaderMap, StreamType};
use sluice_config::FailStrategy;
use sluice_host::{
    CallAnswer, CallOp, Effect, HttpStream, LocalResponse, PluginFailure, SharedStream,
};

use crate::chain::{Chain, Inbox, inbox_ready};

/// What the embedder must do next for this stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the request head upstream; route on these headers (plugins may have rewritten them).
    RequestHeaders {
        headers: HeaderMap,
        end_of_stream: bool,
    },
    RequestData {
        data: Bytes,
        end_of_stream: bool,
    },
    RequestTrailers {
        trailers: HeaderMap,
    },
    /// Send the response head downstream.
    ResponseHeaders {
        headers: HeaderMap,
        end_of_stream: bool,
    },
    ResponseData {
        data: Bytes,
        end_of_stream: bool,
    },
    ResponseTrailers {
        trailers: HeaderMap,
    },
    /// Start or act on an outbound call of `plugin`; answer an HTTP callout with
    /// [`Stream::http_call_response`] and a gRPC call's events with [`Stream::grpc_event`].
    Call {
        plugin: usize,
        token: u32,
        op: CallOp,
    },
    /// Abandon the upstream request: a local reply answered the client instead.
    ResetUpstream,
    /// Reset the client's stream: something failed after the response head was sent.
    ResetDownstream {
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

#[derive(Clone, Debug)]
enum Event {
    Headers { end_of_stream: bool },
    Data { data: Bytes, end_of_stream: bool },
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocked {
    /// Envoy's `StopAllIterationAndWatermark`: nothing reaches the plugin or passes it.
    Headers {
        end_of_stream: bool,
    },
    /// Envoy's `StopIteration` (a plugin with `headers_stop_iteration`): the headers wait at the
    /// plugin, which is still called with the body and trailers. A body or trailers callback
    /// that returns Continue lets the headers go on, then what it held; Pause holds that too
    /// (`body_ended`: the whole body is held; `trailers`: the trailers are).
    HeadersOnly {
        end_of_stream: bool,
        body_ended: bool,
        trailers: bool,
    },
    BodyEnd,
    Trailers,
}

/// Per-direction iteration state: position `p` is the p-th plugin in this direction's order;
/// `queues[n]` is what leaves the chain.
#[derive(Default)]
struct Flow {
    queues: Vec<VecDeque<Event>>,
    blocked: Vec<Option<Blocked>>,
    buffers: Vec<Vec<u8>>,
    closed: bool,
}

/// A buffer a reused flow keeps; a larger one (a body a plugin held) goes back to the allocator.
const KEPT_BUFFER_BYTES: usize = 64 << 10;

impl Flow {
    fn new(plugins: usize) -> Self {
        let mut flow = Self::default();
        flow.reset(plugins);
        flow
    }

    /// Empties the flow for a stream through `plugins` plugins, keeping what it has allocated.
    fn reset(&mut self, plugins: usize) {
        self.queues.resize_with(plugins + 1, VecDeque::new);
        self.queues.iter_mut().for_each(VecDeque::clear);
        self.blocked.clear();
        self.blocked.resize(plugins, None);
        self.buffers.resize_with(plugins, Vec::new);
        for buffer in &mut self.buffers {
            if buffer.capacity() > KEPT_BUFFER_BYTES {
                *buffer = Vec::new();
            } else {
                buffer.clear();
            }
        }
        self.closed = false;
    }

    /// Queues an event at a position, merging consecutive data so a plugin that resumes gets the
    /// data that waited for it in one callback, as Envoy does.
    fn push(&mut self, position: usize, event: Event) {
        let queue = &mut self.queues[position];
        if let (
            Event::Data {
                data,
                end_of_stream,
            },
            Some(Event::Data {
                data: last,
                end_of_stream: last_end,
            }),
        ) = (&event, queue.back_mut())
        {
            // The waiting data is usually this queue's own (unshared) buffer: it grows in place.
            let mut merged = Vec::from(std::mem::take(last));
            merged.extend_from_slice(data);
            *last = merged.into();
            *last_end |= *end_of_stream;
            return;
        }
        queue.push_back(event);
    }

    fn waiting_bytes(&self, position: usize) -> usize {
        let queued: usize = self.queues[position]
            .iter()
            .map(|e| {
                if let Event::Data { data, .. } = e {
                    data.len()
                } else {
                    0
                }
            })
            .sum();
        queued + self.buffers.get(position).map_or(0, Vec::len)
    }
}

#[derive(Clone, Copy)]
struct Ctx {
    context: u32,
    generation: u64,
}

/// A plugin's part in a stream. As in Envoy, a plugin's stream context is created when the
/// plugin is first called for the stream, not when the stream begins: a plugin that a local
/// reply kept from ever seeing the request gets its context only to log the stream.
#[derive(Clone, Copy, Default)]
enum Slot {
    #[default]
    NotCreated,
    Live(Ctx),
    /// The plugin's instance was down (failed, or waiting for its reload backoff) when the
    /// stream began: the stream fails when the request reaches the plugin, unless FAIL_OPEN.
    Unavailable,
    /// Failed or finished: the plugin is out of this stream.
    Gone,
}

/// A stream's per-plugin slots and queues. A finished stream hands them back to its chain, and
/// the next stream on the worker takes them instead of allocating its own.
pub(crate) struct Scratch {
    contexts: Vec<Slot>,
    request: Flow,
    response: Flow,
    steps: VecDeque<Step>,
}

impl Scratch {
    pub(crate) fn new(plugins: usize) -> Self {
        Self {
            contexts: vec![Slot::NotCreated; plugins],
            request: Flow::new(plugins),
            response: Flow::new(plugins),
            steps: VecDeque::new(),
        }
    }

    pub(crate) fn clear(&mut self) {
        let plugins = self.contexts.len();
        self.contexts.fill(Slot::NotCreated);
        self.request.reset(plugins);
        self.response.reset(plugins);
        self.steps.clear();
    }
}

/// One request/response exchange running through a [`Chain`].
pub struct Stream {
    chain: Rc<Chain>,
    data: SharedStream,
    contexts: Vec<Slot>,
    request: Flow,
    response: Flow,
    steps: VecDeque<Step>,
    upstream_started: bool,
    response_started: bool,
    response_complete: bool,
    finished: bool,
    failures: Vec<PluginFailure>,
    /// The plugin whose local reply answered the client, if one did.
    local_reply_by: Option<usize>,
    /// Where effects on this stream from outside it arrive once a plugin paused it.
    inbox: Option<Rc<Inbox>>,
    /// Plugins that paused the stream, registered with the pool for those effects.
    parked: Vec<usize>,
}

/// What the plugins did to one stream, for access logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Envoy's `response.code_details`: `via_upstream`, or why sluice or a plugin answered.
    pub details: String,
    /// The plugin that answered with a local reply.
    pub local_reply_by: Option<String>,
    /// Plugins that failed (trap, deadline, memory) during the stream.
    pub failed: Vec<String>,
}

/// The plugins these failures came from, in order, each once in a row (what an access-log line
/// reports of a request or a connection).
pub fn failed_plugins(failures: &[PluginFailure]) -> Vec<String> {
    let mut failed: Vec<String> = failures.iter().map(|f| f.plugin.clone()).collect();
    failed.dedup();
    failed
}

impl Stream {
    /// Starts a stream. `info` carries the properties the embedder knows (addresses, route, ...).
    /// A FAIL_RELOAD plugin whose instance failed gets a fresh one now if its backoff allows; a
    /// plugin still down fails the stream (or, under FAIL_OPEN, sits it out), as when Envoy
    /// creates the filter. Plugin contexts are created later, on first use.
    pub fn new(chain: Rc<Chain>, info: HttpStream) -> Self {
        let data = info.shared();
        let n = chain.len();
        let Scratch {
            contexts,
            request,
            response,
            steps,
        } = chain.take_scratch();
        let mut stream = Self {
            chain: chain.clone(),
            data: data.clone(),
            contexts,
            request,
            response,
            steps,
            upstream_started: false,
            response_started: false,
            response_complete: false,
            finished: false,
            failures: Vec::new(),
            local_reply_by: None,
            inbox: None,
            parked: Vec::new(),
        };
        for index in 0..n {
            if !chain.prepare_plugin(index) {
                stream.contexts[index] = Slot::Unavailable;
            }
        }
        stream
    }

    /// The plugin's context, created now if this is the plugin's first call for the stream;
    /// `None` if the plugin is out of the stream (its creation may just have failed).
    fn enter(&mut self, index: usize) -> Option<u32> {
        if let Slot::Unavailable = self.contexts[index] {
            self.contexts[index] = Slot::Gone;
            self.fail_unavailable(index);
            return None;
        }
        if let Slot::NotCreated = self.contexts[index] {
            let plugin = &self.chain.plugins[index];
            let result = {
                let mut vm = plugin.vm.borrow_mut();
                let root = vm.root_context(plugin.root);
                let generation = vm.generation;
                let created = vm
                    .vm()
                    .create_stream(root, self.data.clone())
                    .map(|context| Ctx {
                        context,
                        generation,
                    });
                drop(vm.vm().take_effects());
                created
            };
            match result {
                Ok(ctx) => self.contexts[index] = Slot::Live(ctx),
                Err(failure) => {
                    self.plugin_failed(index, failure);
                    return None;
                }
            }
        }
        self.live_context(index)
    }

    /// The request reached a plugin whose VM was down when the stream began.
    fn fail_unavailable(&mut self, index: usize) {
        if self.chain.plugins[index].fail_strategy != FailStrategy::FailOpen {
            let name = self.chain.plugins[index].name.clone();
            self.fail_stream(&name);
        }
    }

    /// Takes the steps produced so far, in order.
    pub fn take_steps(&mut self) -> Vec<Step> {
        self.steps.drain(..).collect()
    }

    /// Resolves when effects from outside the stream (a root context resuming it, from a tick or
    /// a callout answer) are waiting; [`Stream::apply_root_effects`] applies them. Never
    /// resolves while no plugin has paused the stream.
    pub fn root_effects(&self) -> impl std::future::Future<Output = ()> + 'static {
        inbox_ready(self.inbox.clone())
    }

    /// Applies the effects [`Stream::root_effects`] announced.
    pub fn apply_root_effects(&mut self) {
        let Some(inbox) = self.inbox.clone() else {
            return;
        };
        let effects = std::mem::take(&mut *inbox.effects.borrow_mut());
        for (index, effect) in effects {
            // They were meant for this stream: one it no longer owns is dropped, not forwarded.
            self.apply_effects(index, vec![effect], false);
        }
    }

    /// Registers plugin `index`, which just paused the stream, so a root callback can resume it.
    fn park(&mut self, index: usize) {
        if self.live_context(index).is_none() || self.parked.contains(&index) {
            return;
        }
        let Slot::Live(ctx) = self.contexts[index] else {
            return;
        };
        let inbox = self.inbox.get_or_insert_with(Rc::default).clone();
        self.chain.pool.park(
            &self.chain.plugins[index].vm,
            ctx.generation,
            ctx.context,
            &inbox,
            index,
        );
        self.parked.push(index);
    }

    /// Plugin failures this stream ran into.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.failures
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The route the request takes after the plugins, as `xds.*` properties show it (Envoy
    /// routes again once a plugin changed the request headers or cleared the route cache).
    pub fn set_route(&self, virtual_host: &str, route: &str, cluster: &str) {
        self.data
            .borrow_mut()
            .set_route(virtual_host, route, cluster);
    }

    pub fn outcome(&self) -> Outcome {
        let details = match self.data.borrow().properties.get("response.code_details") {
            Some(sluice_abi::PropertyValue::String(details)) => details.clone(),
            _ => "via_upstream".to_string(),
        };
        Outcome {
            details,
            local_reply_by: self
                .local_reply_by
                .map(|index| self.chain.plugin_name(index).to_string()),
            failed: failed_plugins(&self.failures),
        }
    }

    /// True once the response has been fully sent downstream (or reset).
    pub fn is_complete(&self) -> bool {
        self.response_complete
    }

    pub fn request_headers(&mut self, headers: HeaderMap, end_of_stream: bool) {
        self.data.borrow_mut().request_headers = headers;
        self.feed(Direction::Request, Event::Headers { end_of_stream });
    }

    pub fn request_data(&mut self, data: impl Into<Bytes>, end_of_stream: bool) {
        self.feed(
            Direction::Request,
            Event::Data {
                data: data.into(),
                end_of_stream,
            },
        );
    }

    pub fn request_trailers(&mut self, trailers: HeaderMap) {
        self.data.borrow_mut().request_trailers = trailers;
        self.feed(Direction::Request, Event::Trailers);
    }

    pub fn response_headers(&mut self, headers: HeaderMap, end_of_stream: bool) {
        if self.response.closed {
            return;
        }
        self.data.borrow_mut().response_headers = headers;
        self.feed(Direction::Response, Event::Headers { end_of_stream });
    }

    pub fn response_data(&mut self, data: impl Into<Bytes>, end_of_stream: bool) {
        self.feed(
            Direction::Response,
            Event::Data {
                data: data.into(),
                end_of_stream,
            },
        );
    }

    pub fn response_trailers(&mut self, trailers: HeaderMap) {
        if self.response.closed {
            return;
        }
        self.data.borrow_mut().response_trailers = trailers;
        self.feed(Direction::Response, Event::Trailers);
    }

    /// Delivers what came back from a call (`Step::Call`) to the plugin that made it.
    pub fn call_answer(&mut self, plugin: usize, token: u32, answer: CallAnswer) {
        self.root_callback(plugin, |vm, root| vm.call_answer(root, token, answer));
    }

    /// Answers the client on the proxy's own behalf (upstream unreachable, upstream reset before
    /// its response head), as Envoy's router does: through the response callbacks of the plugins
    /// the request reached when no response head exists, a reset of the client's stream once the
    /// response began.
    pub fn local_reply_from_proxy(&mut self, status: u32, details: &str, body: &str) {
        let direct = self.on_response_path();
        self.local_reply(own_reply(status, details, body, None), direct);
    }

    /// Resets the client's stream (the upstream failed after the response began).
    pub fn reset_downstream(&mut self, reason: &str) {
        self.reset(reason);
    }

    /// Ends the stream (response done, client gone or upstream failed), once, in Envoy's order:
    /// `proxy_on_log` for every plugin in chain order (creating the context of a plugin the
    /// stream never reached, as Envoy's access logging does), then `proxy_on_done` and
    /// `proxy_on_delete` for each. A stream context's `proxy_on_done` answer is not waited for:
    /// Envoy deletes it at once (only root contexts wait for `proxy_done`).
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        for index in 0..self.contexts.len() {
            // A plugin down since the stream began, or whose VM failed during it, is not called
            // (nor is its context created) to log.
            let failed = self.chain.plugins[index]
                .vm
                .borrow_mut()
                .vm()
                .failure()
                .is_some();
            if matches!(self.contexts[index], Slot::Unavailable) || failed {
                continue;
            }
            let Some(context) = self.enter(index) else {
                continue;
            };
            if let Err(failure) = self.chain.pool.log(&self.chain.plugins[index].vm, context) {
                self.failures.push(failure);
            }
        }
        for index in std::mem::take(&mut self.parked) {
            if let Slot::Live(ctx) = self.contexts[index] {
                self.chain
                    .pool
                    .unpark(&self.chain.plugins[index].vm, ctx.generation, ctx.context);
            }
        }
        for index in 0..self.contexts.len() {
            let Some(context) = self.live_context(index) else {
                continue;
            };
            self.contexts[index] = Slot::Gone;
            if let Err(failure) = self.chain.pool.end(&self.chain.plugins[index].vm, context) {
                self.failures.push(failure);
            }
        }
    }

    fn flow(&mut self, direction: Direction) -> &mut Flow {
        match direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }

    /// The plugin at `position` in `direction`'s order.
    fn plugin_at(&self, direction: Direction, position: usize) -> usize {
        match direction {
            Direction::Request => position,
            Direction::Response => self.contexts.len() - 1 - position,
        }
    }

    fn position_of(&self, direction: Direction, plugin: usize) -> usize {
        self.plugin_at(direction, plugin)
    }

    /// The plugin's context, if the plugin still takes part in this stream.
    fn live_context(&self, index: usize) -> Option<u32> {
        let Slot::Live(ctx) = self.contexts[index] else {
            return None;
        };
        let vm = self.chain.plugins[index].vm.borrow();
        (vm.generation == ctx.generation).then_some(ctx.context)
    }

    fn feed(&mut self, direction: Direction, event: Event) {
        if self.flow(direction).closed {
            return;
        }
        self.flow(direction).push(0, event);
        self.pump(direction);
    }

    /// Moves events through the plugins until every queue is empty or blocked. Each event goes
    /// as far as it can before the next one moves, as Envoy iterates a message's headers
    /// through every filter before its body: the furthest event that can move goes first, which
    /// also keeps each position's events in order.
    fn pump(&mut self, direction: Direction) {
        let n = self.contexts.len();
        let limit = self.chain.buffer_limit;
        loop {
            let flow = self.flow(direction);
            if flow.closed {
                return;
            }
            let mut next = None;
            let mut overflow = false;
            for position in (0..=n).rev() {
                if flow.queues[position].is_empty() {
                    continue;
                }
                let stopped = flow.blocked.get(position).copied().flatten();
                if stopped.is_some_and(|b| !matches!(b, Blocked::HeadersOnly { .. })) {
                    // Data waits in front of a stopped plugin; the wait is bounded like a buffer.
                    overflow |= flow.waiting_bytes(position) > limit;
                    continue;
                }
                next = Some(position);
                break;
            }
            if overflow {
                self.buffer_overflow(direction);
                continue;
            }
            let Some(position) = next else {
                return;
            };
            let Some(event) = self.flow(direction).queues[position].pop_front() else {
                return;
            };
            if position == n {
                self.emit(direction, event);
            } else {
                self.run_event(direction, position, event);
            }
        }
    }

    fn run_event(&mut self, direction: Direction, position: usize, event: Event) {
        let index = self.plugin_at(direction, position);
        // The request creates a plugin's context on its way; a response (a local reply) only
        // reaches the plugins the request reached.
        let context = match direction {
            Direction::Request => self.enter(index),
            Direction::Response => self.live_context(index),
        };
        let Some(context) = context else {
            // Out of the stream (failed under FAIL_OPEN, say): it holds nothing back any more.
            self.let_through(direction, position, event);
            return;
        };
        let request = direction == Direction::Request;
        match event {
            Event::Headers { end_of_stream } => {
                let count = {
                    let data = self.data.borrow();
                    if request {
                        data.request_headers.len()
                    } else {
                        data.response_headers.len()
                    }
                } as u32;
                let result = self.call(index, |vm| {
                    if request {
                        vm.request_headers(context, count, end_of_stream)
                    } else {
                        vm.response_headers(context, count, end_of_stream)
                    }
                });
                match result {
                    Some(Action::Pause) => {
                        self.flow(direction).blocked[position] =
                            Some(if self.chain.plugins[index].headers_stop_iteration {
                                Blocked::HeadersOnly {
                                    end_of_stream,
                                    body_ended: false,
                                    trailers: false,
                                }
                            } else {
                                Blocked::Headers { end_of_stream }
                            });
                        self.park(index);
                    }
                    Some(Action::Continue) => self
                        .flow(direction)
                        .push(position + 1, Event::Headers { end_of_stream }),
                    None => {
                        self.after_failure(direction, position, Event::Headers { end_of_stream });
                    }
                }
            }
            Event::Data {
                data,
                end_of_stream,
            } => {
                // The usual chunk meets an empty buffer: it becomes the buffer, uncopied.
                let held = std::mem::take(&mut self.flow(direction).buffers[position]);
                let buffer = if held.is_empty() {
                    data
                } else {
                    let mut held = held;
                    held.extend_from_slice(&data);
                    Bytes::from(held)
                };
                let size = buffer.len() as u32;
                self.set_body(request, buffer);
                let result = self.call(index, |vm| {
                    if request {
                        vm.request_body(context, size, end_of_stream)
                    } else {
                        vm.response_body(context, size, end_of_stream)
                    }
                });
                let buffer = self.take_body(request);
                match result {
                    Some(Action::Continue) => self.let_through(
                        direction,
                        position,
                        Event::Data {
                            data: buffer,
                            end_of_stream,
                        },
                    ),
                    Some(Action::Pause) => {
                        self.park(index);
                        let limit = self.chain.buffer_limit;
                        let flow = self.flow(direction);
                        // Held, it grows: copied out of the codec's buffer only now.
                        flow.buffers[position] = Vec::from(buffer);
                        if let Some(Blocked::HeadersOnly { body_ended, .. }) =
                            &mut flow.blocked[position]
                        {
                            *body_ended |= end_of_stream;
                        } else if end_of_stream {
                            flow.blocked[position] = Some(Blocked::BodyEnd);
                        }
                        if !end_of_stream && flow.buffers[position].len() > limit {
                            self.buffer_overflow(direction);
                        }
                    }
                    None => self.after_failure(
                        direction,
                        position,
                        Event::Data {
                            data: buffer,
                            end_of_stream,
                        },
                    ),
                }
            }
            Event::Trailers => {
                let count = {
                    let data = self.data.borrow();
                    if request {
                        data.request_trailers.len()
                    } else {
                        data.response_trailers.len()
                    }
                } as u32;
                let result = self.call(index, |vm| {
                    if request {
                        vm.request_trailers(context, count)
                    } else {
                        vm.response_trailers(context, count)
                    }
                });
                match result {
                    Some(Action::Pause) => {
                        let blocked = &mut self.flow(direction).blocked[position];
                        match blocked {
                            Some(Blocked::HeadersOnly { trailers, .. }) => *trailers = true,
                            _ => *blocked = Some(Blocked::Trailers),
                        }
                        self.park(index);
                    }
                    Some(Action::Continue) => {
                        self.let_through(direction, position, Event::Trailers);
                    }
                    None => self.after_failure(direction, position, Event::Trailers),
                }
            }
        }
    }

    /// Trailers leave a plugin after whatever body it still held.
    fn pass_trailers(&mut self, direction: Direction, position: usize) {
        let flow = self.flow(direction);
        let held = std::mem::take(&mut flow.buffers[position]);
        if !held.is_empty() {
            flow.push(
                position + 1,
                Event::Data {
                    data: Bytes::from(held),
                    end_of_stream: false,
                },
            );
        }
        flow.push(position + 1, Event::Trailers);
    }

    fn set_body(&mut self, request: bool, body: Bytes) {
        let mut data = self.data.borrow_mut();
        if request {
            data.request_body = body;
        } else {
            data.response_body = body;
        }
    }

    fn take_body(&mut self, request: bool) -> Bytes {
        let mut data = self.data.borrow_mut();
        std::mem::take(if request {
            &mut data.request_body
        } else {
            &mut data.response_body
        })
    }

    /// Calls into plugin `index`'s VM, then applies the effects it recorded. `None` when the
    /// plugin failed (the failure has been handled).
    fn call<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut sluice_host::Vm) -> Result<R, PluginFailure>,
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

    /// A callback on `index`'s root context (a callout answer) that may act on this stream: the
    /// body the plugin holds is in place for it to read or rewrite, as while it is paused.
    fn root_callback(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut sluice_host::Vm, u32) -> Result<(), PluginFailure>,
    ) {
        if self.live_context(index).is_none() {
            return;
        }
        let (request_at, response_at) = (
            self.position_of(Direction::Request, index),
            self.position_of(Direction::Response, index),
        );
        let held_request = std::mem::take(&mut self.request.buffers[request_at]);
        let held_response = std::mem::take(&mut self.response.buffers[response_at]);
        // Moved in and out whole: no copy unless the plugin changes them.
        self.set_body(true, held_request.into());
        self.set_body(false, held_response.into());
        let root = self.chain.root_context(index);
        let (result, effects) = self.chain.call_plugin(index, |vm| f(vm, root));
        self.request.buffers[request_at] = Vec::from(self.take_body(true));
        self.response.buffers[response_at] = Vec::from(self.take_body(false));
        match result {
            Ok(()) => {
                self.apply_effects(index, effects, true);
                self.pump(Direction::Request);
                self.pump(Direction::Response);
            }
            Err(failure) => self.plugin_failed(index, failure),
        }
    }

    /// Applies effects of a call into plugin `index`'s VM. Effects name contexts; the ones that
    /// belong to this stream act on it, callouts become steps, anything else is the chain's.
    /// With `forward`, an effect on another stream of the VM (chosen with
    /// `proxy_set_effective_context`) goes to that stream if a plugin paused it.
    fn apply_effects(&mut self, index: usize, effects: Vec<Effect>, forward: bool) {
        let vm = self.chain.plugins[index].vm.clone();
        let owner = |stream: &Self, context: u32| {
            (0..stream.contexts.len()).find(|&i| {
                Rc::ptr_eq(&stream.chain.plugins[i].vm, &vm)
                    && stream.live_context(i) == Some(context)
            })
        };
        for effect in effects {
            match effect {
                Effect::ContinueStream { context, stream } => {
                    if let Some(plugin) = owner(self, context) {
                        let direction = if stream == StreamType::HttpResponse {
                            Direction::Response
                        } else {
                            Direction::Request
                        };
                        self.resume(direction, plugin);
                    } else if forward {
                        // Another stream of this VM, chosen with `proxy_set_effective_context`.
                        self.chain.pool.absorb(&vm, vec![effect]);
                    }
                }
                Effect::CloseStream { context, .. } => {
                    if owner(self, context).is_some() {
                        self.reset("a plugin closed the stream");
                    } else if forward {
                        self.chain.pool.absorb(&vm, vec![effect]);
                    }
                }
                Effect::LocalResponse { context, response } => {
                    if let Some(sender) = owner(self, context) {
                        self.local_reply_by = Some(sender);
                        // As in Envoy: before any response head exists, the reply runs through
                        // the response callbacks of the plugins the request reached (the
                        // sender's included); after, it replaces that head directly.
                        let direct = self.on_response_path();
                        self.local_reply(response, direct);
                    } else if forward {
                        let effect = Effect::LocalResponse { context, response };
                        self.chain.pool.absorb(&vm, vec![effect]);
                    }
                }
                Effect::Call {
                    context, token, op, ..
                } => {
                    // A call is keyed by the plugin that started it; acting on one comes from the
                    // plugin's own VM.
                    let plugin = if op.starts() {
                        owner(self, context).unwrap_or(index)
                    } else {
                        index
                    };
                    self.steps.push_back(Step::Call { plugin, token, op });
                }
                // Only a root context waits for `proxy_done`: the pool's business.
                done @ Effect::Done { .. } => self.chain.pool.absorb(&vm, vec![done]),
                Effect::ClearRouteCache { .. } => {}
            }
        }
    }

    /// `proxy_continue_stream` from `plugin`: whatever it held moves on.
    fn resume(&mut self, direction: Direction, plugin: usize) {
        let position = self.position_of(direction, plugin);
        if self.flow(direction).closed {
            return;
        }
        self.release(direction, position);
        self.pump(direction);
    }

    /// Lets go on what the plugin at `position` holds, in order: held headers, the body it
    /// buffered (with the end of stream, when it came), held trailers.
    fn release(&mut self, direction: Direction, position: usize) {
        let flow = self.flow(direction);
        match flow.blocked[position].take() {
            Some(Blocked::Headers { end_of_stream }) => {
                flow.queues[position + 1].push_front(Event::Headers { end_of_stream });
            }
            Some(Blocked::BodyEnd) => {
                let data = Bytes::from(std::mem::take(&mut flow.buffers[position]));
                flow.push(
                    position + 1,
                    Event::Data {
                        data,
                        end_of_stream: true,
                    },
                );
            }
            Some(Blocked::Trailers) => self.pass_trailers(direction, position),
            Some(Blocked::HeadersOnly {
                end_of_stream,
                body_ended,
                trailers,
            }) => {
                flow.queues[position + 1].push_front(Event::Headers { end_of_stream });
                let data = std::mem::take(&mut flow.buffers[position]);
                if !data.is_empty() || body_ended {
                    flow.push(
                        position + 1,
                        Event::Data {
                            data: data.into(),
                            end_of_stream: body_ended,
                        },
                    );
                }
                if trailers {
                    flow.push(position + 1, Event::Trailers);
                }
            }
            None => {
                let data = std::mem::take(&mut flow.buffers[position]);
                if !data.is_empty() {
                    flow.push(
                        position + 1,
                        Event::Data {
                            data: data.into(),
                            end_of_stream: false,
                        },
                    );
                }
            }
        }
    }

    /// What leaves the chain becomes a step.
    fn emit(&mut self, direction: Direction, event: Event) {
        let step = match (direction, event) {
            (Direction::Request, Event::Headers { end_of_stream }) => {
                self.upstream_started = true;
                Step::RequestHeaders {
                    headers: self.data.borrow().request_headers.clone(),
                    end_of_stream,
                }
            }
            (
                Direction::Request,
                Event::Data {
                    data,
                    end_of_stream,
                },
            ) => {
                // Trailers a plugin added in the last body callback follow the body.
                let added = end_of_stream && !self.data.borrow().request_trailers.is_empty();
                self.steps.push_back(Step::RequestData {
                    data,
                    end_of_stream: end_of_stream && !added,
                });
                if added {
                    Step::RequestTrailers {
                        trailers: self.data.borrow().request_trailers.clone(),
                    }
                } else {
                    return;
                }
            }
            (Direction::Request, Event::Trailers) => Step::RequestTrailers {
                trailers: self.data.borrow().request_trailers.clone(),
            },
            (Direction::Response, Event::Headers { end_of_stream }) => {
                self.response_started = true;
                self.response_complete = end_of_stream;
                Step::ResponseHeaders {
                    headers: self.data.borrow().response_headers.clone(),
                    end_of_stream,
                }
            }
            (
                Direction::Response,
                Event::Data {
                    data,
                    end_of_stream,
                },
            ) => {
                let added = end_of_stream && !self.data.borrow().response_trailers.is_empty();
                self.steps.push_back(Step::ResponseData {
                    data,
                    end_of_stream: end_of_stream && !added,
                });
                self.response_complete |= end_of_stream;
                if added {
                    Step::ResponseTrailers {
                        trailers: self.data.borrow().response_trailers.clone(),
                    }
                } else {
                    return;
                }
            }
            (Direction::Response, Event::Trailers) => {
                self.response_complete = true;
                Step::ResponseTrailers {
                    trailers: self.data.borrow().response_trailers.clone(),
                }
            }
        };
        self.steps.push_back(step);
    }

    /// Answers the client instead of (or instead of the rest of) the upstream response: `direct`ly,
    /// or through the response callbacks of the plugins whose context exists.
    fn local_reply(&mut self, reply: LocalResponse, direct: bool) {
        if self.response_started {
            self.reset("local reply after the response began");
            return;
        }
        self.request.closed = true;
        if self.upstream_started {
            self.steps.push_back(Step::ResetUpstream);
        }
        let mut headers = HeaderMap::new();
        headers.add(":status", reply.status.to_string());
        let grpc = self
            .data
            .borrow()
            .request_headers
            .get("content-type")
            .is_some_and(|t| t.starts_with(b"application/grpc"));
        let mut body = reply.body;
        let trailers_only = grpc && reply.grpc_status.is_some();
        if let (true, Some(status)) = (grpc, reply.grpc_status) {
            // A gRPC client gets a trailers-only response carrying the status, as Envoy sends it.
            headers = HeaderMap::new();
            headers.add(":status", "200");
            headers.add("content-type", "application/grpc");
            headers.add("grpc-status", status.to_string());
            if !body.is_empty() {
                headers.add("grpc-message", String::from_utf8_lossy(&body).as_ref());
            }
            body = Vec::new();
        }
        for (name, value) in reply.headers.iter() {
            headers.add(name, value);
        }
        // Envoy's order: the plugin's headers, then the length and type of a non-empty body. A
        // reply without a body has neither, whatever the plugin gave.
        if body.is_empty() {
            if !trailers_only {
                headers.remove("content-length");
                headers.remove("content-type");
            }
        } else {
            headers.replace("content-length", body.len().to_string());
            if headers.get("content-type").is_none() {
                headers.add("content-type", "text/plain");
            }
        }
        {
            let mut data = self.data.borrow_mut();
            data.response_headers = headers;
            data.response_trailers = HeaderMap::new();
            data.properties
                .insert("response.code_details".into(), reply.details.clone().into());
        }
        let n = self.contexts.len();
        self.response.reset(n);
        let end_of_stream = body.is_empty();
        if direct {
            self.response.closed = true;
            self.emit(Direction::Response, Event::Headers { end_of_stream });
            if !end_of_stream {
                self.emit(
                    Direction::Response,
                    Event::Data {
                        data: body.into(),
                        end_of_stream: true,
                    },
                );
            }
        } else {
            self.response.push(0, Event::Headers { end_of_stream });
            if !end_of_stream {
                self.response.push(
                    0,
                    Event::Data {
                        data: body.into(),
                        end_of_stream: true,
                    },
                );
            }
            self.pump(Direction::Response);
            // Nothing from the upstream may follow the local reply.
            self.response.closed = true;
            let leftover: Vec<Event> = self.response.queues[n].drain(..).collect();
            for event in leftover {
                self.emit(Direction::Response, event);
            }
        }
    }

    fn reset(&mut self, reason: &str) {
        self.request.closed = true;
        self.response.closed = true;
        if self.upstream_started {
            self.steps.push_back(Step::ResetUpstream);
        }
        self.steps.push_back(Step::ResetDownstream {
            reason: reason.to_string(),
        });
        self.response_complete = true;
    }

    fn buffer_overflow(&mut self, direction: Direction) {
        let (status, details, body) = match direction {
            Direction::Request => (413, "request_payload_too_large", "Payload Too Large"),
            Direction::Response => (500, "response_payload_too_large", "Internal Server Error"),
        };
        self.local_reply(
            own_reply(status, details, body, None),
            direction == Direction::Response,
        );
    }

    /// The stream's reaction to a plugin failure, by its failStrategy.
    fn plugin_failed(&mut self, index: usize, failure: PluginFailure) {
        tracing::warn!(plugin = %failure.plugin, "{failure}");
        // Counted once, by whoever serves the stream (its `failures()`); the pool's own list is
        // for failures outside any stream (ticks, root callbacks).
        self.failures.push(failure);
        self.contexts[index] = Slot::Gone;
        if self.chain.plugins[index].fail_strategy != FailStrategy::FailOpen {
            let name = self.chain.plugins[index].name.clone();
            self.fail_stream(&name);
        }
    }

    /// After a failed callback: a FAIL_OPEN plugin is skipped, so what it held moves on (headers it
    /// held while its body callback failed go first), then its event.
    fn after_failure(&mut self, direction: Direction, position: usize, event: Event) {
        if !self.flow(direction).closed {
            self.let_through(direction, position, event);
        }
    }

    /// The plugin at `position` lets `event` go on, after whatever it still held (headers held
    /// under `StopIteration` first): a callback returned Continue, or the plugin is out.
    fn let_through(&mut self, direction: Direction, position: usize, event: Event) {
        self.release(direction, position);
        self.flow(direction).push(position + 1, event);
    }

    /// 503 for the client (Envoy's `wasm_fail_stream`, with no body unless the chain describes
    /// failures), or a reset once the response began. Sent like a plugin's own local reply:
    /// through the response callbacks of the plugins the request reached (the failed one is out).
    fn fail_stream(&mut self, plugin: &str) {
        let body = match self.chain.failure_body {
            sluice_config::FailureBody::Empty => String::new(),
            sluice_config::FailureBody::Descriptive => format!("plugin '{plugin}' failed\n"),
        };
        let direct = self.on_response_path();
        self.local_reply(own_reply(503, "wasm_fail_stream", &body, Some(14)), direct);
    }

    /// Whether a response head exists (from the upstream or a local reply): a reply from the proxy
    /// now replaces it directly instead of running through the response callbacks.
    fn on_response_path(&self) -> bool {
        self.data.borrow().response_headers.get(":status").is_some()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.finish();
        self.chain.keep_scratch(Scratch {
            contexts: std::mem::take(&mut self.contexts),
            request: std::mem::take(&mut self.request),
            response: std::mem::take(&mut self.response),
            steps: std::mem::take(&mut self.steps),
        });
    }
}

/// A reply sluice itself sends (buffer overflow, plugin failure, upstream failure).
fn own_reply(status: u32, details: &str, body: &str, grpc_status: Option<u32>) -> LocalResponse {
    LocalResponse {
        status,
        details: details.to_string(),
        body: body.as_bytes().to_vec(),
        headers: HeaderMap::new(),
        grpc_status,
    }
}
