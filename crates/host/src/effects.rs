//! What host calls ask the embedder to do. Host functions never perform I/O: they validate their
//! arguments as Envoy does and record an [`Effect`]; the caller executes it after the guest returns.

use std::time::Duration;

use sluice_abi::{HeaderMap, StreamType};

/// A local reply requested with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: HeaderMap,
    /// `None` when the plugin passed -1 (no gRPC status).
    pub grpc_status: Option<u32>,
}

/// An outgoing HTTP callout (`proxy_http_call`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCallRequest {
    pub upstream: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    pub timeout: Duration,
}

/// An outgoing gRPC call or stream (`proxy_grpc_call`, `proxy_grpc_stream`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCallRequest {
    pub upstream: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: HeaderMap,
    /// The request message for a unary call; `None` for a stream.
    pub message: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// How a root context reaches one Redis cluster, from its `proxy_redis_init` (Higress's ABI):
/// the credentials to `AUTH` with, the database to `SELECT` and each call's timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RedisSettings {
    pub username: String,
    pub password: String,
    pub database: u32,
    pub timeout: Duration,
}

/// A Redis command (`proxy_redis_call`): the plugin's RESP-encoded query for the cluster, sent
/// as it is; its answer is the one RESP reply Redis sends back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisCallRequest {
    pub cluster: String,
    pub settings: RedisSettings,
    pub query: Vec<u8>,
}

/// What a plugin asks of an outbound call: start an HTTP callout or a gRPC call or stream, or
/// act on a gRPC one it started. The one type a call is, from the host function to whatever
/// carries it out (the proxy, the scenario runner), whoever made it (a stream's plugin or a root
/// context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOp {
    Http(HttpCallRequest),
    Grpc(GrpcCallRequest),
    Redis(RedisCallRequest),
    GrpcSend {
        message: Vec<u8>,
        end_of_stream: bool,
    },
    /// Half-close: no more messages from the plugin.
    GrpcClose,
    /// Abandon the call: the plugin hears nothing more about it.
    GrpcCancel,
}

/// What comes back from a call, for the plugin that made it: an HTTP callout's answer (`None`:
/// it failed or timed out), one event of a gRPC call or stream, or a Redis call's reply (`None`:
/// no reply, because the connection failed or the call timed out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallAnswer {
    Http(Option<crate::CallResponse>),
    Grpc(crate::GrpcEvent),
    Redis(Option<Vec<u8>>),
}

impl CallOp {
    /// Whether this starts a call (rather than acting on one).
    pub fn starts(&self) -> bool {
        matches!(self, Self::Http(_) | Self::Grpc(_) | Self::Redis(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `context` is the effective context when the call was made.
    LocalResponse {
        context: u32,
        response: LocalResponse,
    },
    ContinueStream {
        context: u32,
        stream: StreamType,
    },
    CloseStream {
        context: u32,
        stream: StreamType,
    },
    /// An outbound call, started or acted on. Answers go to `root_context` with `token`;
    /// `context` is the context that was effective at dispatch (the stream to resume, or the
    /// root itself).
    Call {
        context: u32,
        root_context: u32,
        token: u32,
        op: CallOp,
    },
    /// `proxy_done` for a context whose `proxy_on_done` returned false.
    Done {
        context: u32,
    },
    /// ABI 0.1.0 `proxy_clear_route_cache`: routing must be recomputed from the current headers.
    ClearRouteCache {
        context: u32,
    },
}
