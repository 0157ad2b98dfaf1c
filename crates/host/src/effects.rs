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
    /// The response is delivered to `root_context` with `token`; `context` is the context that was
    /// effective at dispatch (the stream to resume, or the root itself).
    HttpCall {
        context: u32,
        root_context: u32,
        token: u32,
        request: HttpCallRequest,
    },
    GrpcCall {
        context: u32,
        root_context: u32,
        token: u32,
        request: GrpcCallRequest,
    },
    GrpcSend {
        token: u32,
        message: Vec<u8>,
        end_of_stream: bool,
    },
    GrpcCancel {
        token: u32,
    },
    GrpcClose {
        token: u32,
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
