//! Every outbound call a plugin makes (HTTP callouts, gRPC calls and streams, Redis calls), whoever made it: a
//! stream's plugin or a root context. One `Calls` per origin starts, feeds and cancels them, and
//! hands their answers back through one path; a call never outlives its origin, because dropping
//! the `Calls` (the stream's `Driver`, a generation's root loop) aborts whatever still runs.

use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

use sluice_host::{CallAnswer, CallOp, GrpcEvent};
use tokio::sync::mpsc;

use crate::Clusters;
use crate::client::{self, Pool};
use crate::grpc;

type Answers<K> = (
    mpsc::UnboundedSender<(K, CallAnswer)>,
    mpsc::UnboundedReceiver<(K, CallAnswer)>,
);

/// The running calls of one origin, by key: `(plugin, token)` for a stream's, `(vm, token)` for
/// a generation's root contexts'.
pub(crate) struct Calls<K> {
    running: HashMap<K, Running>,
    /// Made with the first call: most requests make none.
    answers: Option<Answers<K>>,
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    /// A gRPC call's send and close.
    commands: Option<mpsc::UnboundedSender<grpc::Command>>,
}

impl<K: Copy + Eq + Hash + 'static> Calls<K> {
    pub fn new() -> Self {
        Self {
            running: HashMap::new(),
            answers: None,
        }
    }

    /// Whether an answer may still come.
    pub fn waiting(&self) -> bool {
        !self.running.is_empty()
    }

    /// Carries out what a plugin asked of a call: start it on the worker's runtime, or act on one
    /// it started.
    pub fn act(&mut self, key: K, op: CallOp, clusters: &Rc<Clusters>, upstreams: &Rc<Pool>) {
        match op {
            CallOp::Http(request) => {
                let answers = self.sender();
                let (clusters, upstreams) = (clusters.clone(), upstreams.clone());
                let task = tokio::task::spawn_local(async move {
                    let upstream = request.upstream.clone();
                    let response = match client::callout(&clusters, &upstreams, request).await {
                        Ok(response) => Some(response),
                        Err(error) => {
                            tracing::warn!(cluster = %upstream, "callout failed: {error}");
                            None
                        }
                    };
                    let _ = answers.send((key, CallAnswer::Http(response)));
                });
                self.start(key, task, None);
            }
            CallOp::Redis(request) => {
                let answers = self.sender();
                let (clusters, upstreams) = (clusters.clone(), upstreams.clone());
                let task = tokio::task::spawn_local(async move {
                    let cluster = request.cluster.clone();
                    let reply = match crate::redis::call(&clusters, &upstreams.redis, request).await
                    {
                        Ok(reply) => Some(reply),
                        Err(error) => {
                            tracing::warn!(%cluster, "redis call failed: {error}");
                            None
                        }
                    };
                    let _ = answers.send((key, CallAnswer::Redis(reply)));
                });
                self.start(key, task, None);
            }
            CallOp::Grpc(request) => {
                let answers = self.sender();
                let (commands, receiver) = mpsc::unbounded_channel();
                let (clusters, upstreams) = (clusters.clone(), upstreams.clone());
                let task = tokio::task::spawn_local(async move {
                    grpc::call(&clusters, &upstreams, request, receiver, |event| {
                        let _ = answers.send((key, CallAnswer::Grpc(event)));
                    })
                    .await;
                });
                self.start(key, task, Some(commands));
            }
            CallOp::GrpcSend {
                message,
                end_of_stream,
            } => self.command(
                key,
                grpc::Command::Send {
                    message,
                    end_of_stream,
                },
            ),
            CallOp::GrpcClose => self.command(key, grpc::Command::Close),
            // Abandoned: the plugin hears nothing more about it, and its HTTP/2 stream is reset.
            CallOp::GrpcCancel => {
                if let Some(call) = self.running.remove(&key) {
                    call.task.abort();
                }
            }
        }
    }

    /// The next answer for the origin's plugins; never, while no call runs. A call is over with
    /// its HTTP answer or its gRPC close; what a cancelled call had queued is dropped.
    pub async fn answer(&mut self) -> (K, CallAnswer) {
        loop {
            let Some((_, receiver)) = &mut self.answers else {
                return std::future::pending().await;
            };
            // The sender beside it keeps the channel open.
            let Some((key, answer)) = receiver.recv().await else {
                return std::future::pending().await;
            };
            if !self.running.contains_key(&key) {
                continue;
            }
            if matches!(
                answer,
                CallAnswer::Http(_)
                    | CallAnswer::Redis(_)
                    | CallAnswer::Grpc(GrpcEvent::Close { .. })
            ) {
                self.running.remove(&key);
            }
            return (key, answer);
        }
    }

    fn sender(&mut self) -> mpsc::UnboundedSender<(K, CallAnswer)> {
        self.answers
            .get_or_insert_with(mpsc::unbounded_channel)
            .0
            .clone()
    }

    fn start(
        &mut self,
        key: K,
        task: tokio::task::JoinHandle<()>,
        commands: Option<mpsc::UnboundedSender<grpc::Command>>,
    ) {
        if let Some(replaced) = self.running.insert(key, Running { task, commands }) {
            replaced.task.abort();
        }
    }

    fn command(&self, key: K, command: grpc::Command) {
        if let Some(commands) = self.running.get(&key).and_then(|c| c.commands.as_ref()) {
            let _ = commands.send(command);
        }
    }
}

/// What made the calls is gone: so are they.
impl<K> Drop for Calls<K> {
    fn drop(&mut self) {
        for call in self.running.values() {
            call.task.abort();
        }
    }
}
