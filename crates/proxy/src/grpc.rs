//! Plugin gRPC calls (`proxy_grpc_call` / `proxy_grpc_stream`) over HTTP/2 cleartext to a
//! cluster, framed by hand (no protobuf: messages are the plugin's bytes). Events go back to the
//! plugin as Envoy delivers them: for a unary call only the response message, or only the close;
//! for a stream the initial metadata, each message, the trailing metadata and the close.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use sluice_abi::HeaderMap;
use sluice_host::{GrpcCallRequest, GrpcEvent};
use tokio::sync::mpsc;

use crate::body;
use crate::client::LocalExec;
use crate::headers::{fields_map, response_map, to_fields};
use crate::{Clusters, Target};

/// What a plugin does to a call after starting it.
#[derive(Debug)]
pub enum Command {
    Send {
        message: Vec<u8>,
        end_of_stream: bool,
    },
    /// Half-close: no more messages from the plugin.
    Close,
}

// gRPC status codes used by the host itself.
const UNKNOWN: u32 = 2;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;

/// Envoy's message for a call that ended on something the upstream sent (its response code
/// details), when the upstream gave no message of its own.
const VIA_UPSTREAM: &str = "via_upstream";

/// gRPC's mapping of an HTTP status to a gRPC status (Envoy's `Grpc::Utility::httpToGrpcStatus`).
fn grpc_status_of_http(status: http::StatusCode) -> u32 {
    match status.as_u16() {
        400 => INTERNAL,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// Frames one gRPC message: a zero compression flag, the big-endian length, the bytes.
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Takes every complete message off the front of `buffer`.
fn messages(buffer: &mut BytesMut) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while buffer.len() >= 5 {
        if buffer[0] != 0 {
            return Err("compressed gRPC messages are not supported".into());
        }
        let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
        if buffer.len() < 5 + length {
            break;
        }
        buffer.advance(5);
        out.push(buffer.split_to(length).to_vec());
    }
    Ok(out)
}

/// `grpc-status` and `grpc-message` from trailers (or a trailers-only response head).
fn status_of(map: &HeaderMap) -> Option<(u32, Vec<u8>)> {
    let status = map.get_str("grpc-status")?.trim().parse().ok()?;
    Some((status, map.get("grpc-message").unwrap_or_default().to_vec()))
}

/// Runs one call to its end, reporting events through `deliver`. A unary call (`request.message`
/// is set) sends no more; a closed `commands` channel (the call was cancelled, or its origin is
/// gone) ends it silently.
pub async fn call(
    clusters: &Clusters,
    pool: &crate::client::Pool,
    request: GrpcCallRequest,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut deliver: impl FnMut(GrpcEvent),
) {
    let unary = request.message.is_some();
    let timeout = request.timeout;
    let mut events = Vec::new();
    let mut forward = |event| {
        if unary {
            events.push(event);
        } else {
            deliver(event);
        }
    };
    let exchange = exchange(clusters, pool, request, &mut commands, &mut forward);
    let outcome = if timeout.is_zero() {
        exchange.await
    } else {
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err((UNAVAILABLE, sluice_host::GRPC_TIMEOUT_MESSAGE.to_string()).into())
            })
    };
    let (status, message) = match outcome {
        Ok(closed) | Err(Ended::Failed(closed)) => closed,
        // The plugin cancelled the call: it hears nothing more about it.
        Err(Ended::Cancelled) => return,
    };
    if unary {
        // Envoy gives a unary call either its message (status OK) or its close, never both.
        let reply = events.into_iter().find_map(|e| match e {
            GrpcEvent::Message(message) => Some(message),
            _ => None,
        });
        match reply {
            Some(message) if status == 0 => deliver(GrpcEvent::Message(message)),
            _ => deliver(GrpcEvent::Close {
                status,
                message: message.into_bytes(),
            }),
        }
    } else {
        deliver(GrpcEvent::Close {
            status,
            message: message.into_bytes(),
        });
    }
}

/// Why a call ended other than with the upstream's own status.
enum Ended {
    /// The host's status and message for the plugin (unreachable, timed out, malformed).
    Failed((u32, String)),
    Cancelled,
}

impl From<(u32, String)> for Ended {
    fn from(failure: (u32, String)) -> Self {
        Self::Failed(failure)
    }
}

/// The call itself: `Ok` with the upstream's final status and message.
async fn exchange(
    clusters: &Clusters,
    pool: &crate::client::Pool,
    request: GrpcCallRequest,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    deliver: &mut impl FnMut(GrpcEvent),
) -> Result<(u32, String), Ended> {
    let unavailable = |message: String| Ended::Failed((UNAVAILABLE, message));
    let picked = match clusters.pick(&request.upstream) {
        Some(Target::Endpoint(picked)) => picked,
        Some(Target::Echo) => {
            return Err(unavailable(format!(
                "cluster `{}` is the echo upstream, which does not speak gRPC",
                request.upstream
            )));
        }
        None => {
            return Err(unavailable(format!(
                "unknown cluster `{}`",
                request.upstream
            )));
        }
    };
    let (frames, body) = body::channel();
    let mut head = request.initial_metadata.clone();
    for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
        head.replace(name, value);
    }
    if !request.timeout.is_zero() {
        head.replace(
            "grpc-timeout",
            format!("{}m", request.timeout.as_millis().max(1)),
        );
    }
    let mut http = http::Request::post(format!(
        "http://{}/{}/{}",
        request.upstream.replace('|', "_"),
        request.service,
        request.method
    ))
    .body(body)
    .map_err(|e| (INTERNAL, format!("bad gRPC request: {e}")))?;
    *http.headers_mut() = to_fields(&head);
    let mut sending = Some(frames);
    if let Some(message) = &request.message
        && let Some(frames) = sending.take()
    {
        // A unary call: its one message is the whole request body.
        let _ = frames.send(Ok(Frame::data(frame(message)))).await;
        frames.finish();
    }
    // A failure before the response, as Envoy reports it to the plugin: 14 and `BODY{DETAILS}`.
    let failed = |error: crate::client::ClientError| {
        let reply = error.before_response();
        Ended::Failed((UNAVAILABLE, format!("{}{{{}}}", reply.body, reply.details)))
    };
    let send = async {
        match picked.declared() {
            // A declared cluster, in the protocol it is declared with (Envoy's gRPC client
            // speaks HTTP/1.1 to a cluster that is not HTTP/2): the worker's pool.
            Some(endpoint) => {
                // A gRPC call has a body: never sent twice.
                pool.send(&endpoint, http, picked.connect_timeout, || None)
                    .await
                    .map(|(response, _)| response)
                    .map_err(failed)
            }
            // An `outbound|PORT||HOST` name, resolved per call: an HTTP/2 connection of its own.
            None => {
                let http_error = |source| crate::client::ClientError::Http {
                    target: picked.host.to_string(),
                    source,
                };
                let endpoint = picked.endpoint().await.map_err(failed)?;
                let stream = endpoint
                    .connect(picked.connect_timeout)
                    .await
                    .map_err(failed)?;
                let (mut sender, connection) = hyper::client::conn::http2::handshake(
                    LocalExec,
                    hyper_util::rt::TokioIo::new(stream),
                )
                .await
                .map_err(|e| failed(http_error(e)))?;
                tokio::task::spawn_local(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!("gRPC connection ended: {error}");
                    }
                });
                sender.ready().await.map_err(|e| failed(http_error(e)))?;
                sender
                    .send_request(http)
                    .await
                    .map_err(|e| failed(http_error(e)))
            }
        }
    };
    let response = {
        tokio::pin!(send);
        loop {
            tokio::select! {
                response = &mut send => break response?,
                command = commands.recv() => {
                    if !apply(command, &mut sending).await {
                        return Err(Ended::Cancelled);
                    }
                }
            }
        }
    };
    let (parts, mut body) = response.into_parts();
    let head = response_map(&parts);
    // A trailers-only answer carries the status in its head, whatever the HTTP status.
    if let Some(closed) = status_of(&head) {
        return Ok((closed.0, String::from_utf8_lossy(&closed.1).into_owned()));
    }
    if parts.status != http::StatusCode::OK {
        return Err((grpc_status_of_http(parts.status), VIA_UPSTREAM.to_string()).into());
    }
    deliver(GrpcEvent::InitialMetadata(head));
    let mut buffer = BytesMut::new();
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                // The body ended without trailers: Envoy's UNKNOWN.
                None => return Err((UNKNOWN, VIA_UPSTREAM.to_string()).into()),
                Some(Err(error)) => return Err(unavailable(error.to_string())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        buffer.extend_from_slice(&data);
                        // Bad framing is Envoy's INTERNAL.
                        let framed = messages(&mut buffer).map_err(|e| {
                            tracing::debug!("gRPC answer from {}: {e}", picked.host);
                            (INTERNAL, VIA_UPSTREAM.to_string())
                        })?;
                        for message in framed {
                            deliver(GrpcEvent::Message(message));
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().map(|t| fields_map(&t)).unwrap_or_default();
                        // Trailers without a status: Envoy's UNKNOWN.
                        let closed = status_of(&trailers)
                            .unwrap_or((UNKNOWN, VIA_UPSTREAM.as_bytes().to_vec()));
                        deliver(GrpcEvent::TrailingMetadata(trailers));
                        return Ok((closed.0, String::from_utf8_lossy(&closed.1).into_owned()));
                    }
                },
            },
            command = commands.recv() => {
                if !apply(command, &mut sending).await {
                    return Err(Ended::Cancelled);
                }
            }
        }
    }
}

/// Applies a plugin's command to the request body; `false` when the command channel closed (the
/// call was cancelled, or what made it is gone).
async fn apply(command: Option<Command>, sending: &mut Option<body::BodySender>) -> bool {
    match command {
        None => false,
        Some(Command::Close) => {
            if let Some(frames) = sending.take() {
                frames.finish();
            }
            true
        }
        Some(Command::Send {
            message,
            end_of_stream,
        }) => {
            if let Some(frames) = sending.as_ref() {
                let _ = frames.send(Ok(Frame::data(frame(&message)))).await;
            }
            if end_of_stream && let Some(frames) = sending.take() {
                frames.finish();
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_unframed() {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&frame(b"one"));
        buffer.extend_from_slice(&frame(b""));
        buffer.extend_from_slice(&frame(b"three")[..6]);
        assert_eq!(
            messages(&mut buffer).unwrap(),
            vec![b"one".to_vec(), Vec::new()]
        );
        assert_eq!(buffer.len(), 6, "the partial message waits for the rest");
        buffer.extend_from_slice(b"hree");
        assert_eq!(messages(&mut buffer).unwrap(), vec![b"three".to_vec()]);
        buffer.extend_from_slice(&[1, 0, 0, 0, 0]);
        assert!(messages(&mut buffer).is_err());
    }
}
