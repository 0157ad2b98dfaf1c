//! Outgoing HTTP/1.1: upstream requests and plugin callouts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sluice_host::{CallResponse, HttpCallRequest};

use crate::body::ChannelBody;
use crate::headers::{fields_map, response_map, to_fields};
use crate::{ClusterTarget, Clusters};

/// An upstream or callout failure, described for logs and `response.code_details`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("HTTP error talking to {target}: {source}")]
    Http {
        target: String,
        source: hyper::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("unknown cluster `{0}`")]
    UnknownCluster(String),
    #[error("bad request for {target}: {message}")]
    Request { target: String, message: String },
}

async fn connect(target: &ClusterTarget) -> Result<tokio::net::TcpStream, ClientError> {
    let connect = match target.address {
        Some(address) => tokio::net::TcpStream::connect(address).await,
        None => tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await,
    };
    let stream = connect.map_err(|source| ClientError::Connect {
        target: target.host.clone(),
        source,
    })?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}

/// Opens an HTTP/1.1 connection; the connection itself is driven by a local task.
async fn handshake<B>(
    target: &ClusterTarget,
) -> Result<hyper::client::conn::http1::SendRequest<B>, ClientError>
where
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(connect(target).await?);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|source| ClientError::Http {
                target: target.host.clone(),
                source,
            })?;
    tokio::task::spawn_local(async move {
        if let Err(error) = connection.await {
            tracing::debug!("upstream connection ended: {error}");
        }
    });
    Ok(sender)
}

/// Sends one request on a fresh HTTP/1.1 connection (callouts).
pub async fn send<B>(
    target: &ClusterTarget,
    request: http::Request<B>,
) -> Result<http::Response<hyper::body::Incoming>, ClientError>
where
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = handshake(target).await?;
    sender
        .send_request(request)
        .await
        .map_err(|source| ClientError::Http {
            target: target.host.clone(),
            source,
        })
}

type Sender = hyper::client::conn::http1::SendRequest<ChannelBody>;

/// Most idle upstream connections one worker keeps.
pub const MAX_IDLE_CONNECTIONS: usize = 128;

/// A worker's idle keep-alive connections to its upstream.
#[derive(Default)]
pub struct Pool {
    idle: std::cell::RefCell<Vec<Sender>>,
}

impl Pool {
    fn idle_sender(&self) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Sends a request on an idle connection, or a new one. A request the reused connection never
    /// began to send (the upstream closed it meanwhile) is sent again on a new connection.
    pub async fn send(
        &self,
        target: &ClusterTarget,
        request: http::Request<ChannelBody>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Sender), ClientError> {
        let http = |source| ClientError::Http {
            target: target.host.clone(),
            source,
        };
        let mut request = request;
        if let Some(mut sender) = self.idle_sender() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(http(error.into_error())),
                },
            }
        }
        let mut sender = handshake(target).await?;
        let response = sender.send_request(request).await.map_err(http)?;
        Ok((response, sender))
    }

    /// Returns a connection whose exchange finished, for the next request.
    pub fn put_back(&self, sender: Sender) {
        let mut idle = self.idle.borrow_mut();
        if !sender.is_closed() && idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(sender);
        }
    }
}

/// Builds the upstream request from the head the plugins left.
pub fn upstream_request(
    head: &sluice_abi::HeaderMap,
    authority: &str,
    body: ChannelBody,
) -> Result<http::Request<ChannelBody>, String> {
    let method = head.get(":method").unwrap_or(b"GET");
    let path = head.get_str(":path").unwrap_or_else(|| "/".into());
    let mut request = http::Request::builder()
        .method(http::Method::from_bytes(method).map_err(|e| format!(":method: {e}"))?)
        .uri(path)
        .body(body)
        .map_err(|e| e.to_string())?;
    *request.headers_mut() = to_fields(head);
    let host = head
        .get_str(":authority")
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| authority.to_string());
    request.headers_mut().insert(
        http::header::HOST,
        host.parse()
            .map_err(|_| format!("bad :authority {host:?}"))?,
    );
    Ok(request)
}

/// Executes a plugin's `proxy_http_call`: the whole answer, or `None` on failure or timeout.
pub async fn callout(
    clusters: Clusters,
    request: HttpCallRequest,
) -> Result<CallResponse, ClientError> {
    let target = crate::resolve_cluster(&clusters, &request.upstream)
        .ok_or_else(|| ClientError::UnknownCluster(request.upstream.clone()))?;
    let timeout = request.timeout;
    let exchange = async {
        let mut http = upstream_request(&request.headers, &target.host, crate::body::empty())
            .map_err(|message| ClientError::Request {
                target: target.host.clone(),
                message,
            })?
            .map(|_| Full::new(Bytes::from(request.body.clone())));
        http.headers_mut()
            .insert(http::header::CONTENT_LENGTH, request.body.len().into());
        let response = send(&target, http).await?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|source| ClientError::Http {
            target: target.host.clone(),
            source,
        })?;
        let trailers = collected.trailers().map(fields_map).unwrap_or_default();
        Ok(CallResponse {
            headers: response_map(&parts),
            body: collected.to_bytes().to_vec(),
            trailers,
        })
    };
    if timeout.is_zero() {
        return exchange.await;
    }
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

pub fn target_for(address: SocketAddr, authority: &str) -> ClusterTarget {
    ClusterTarget {
        host: authority.to_string(),
        port: address.port(),
        address: Some(address),
    }
}
