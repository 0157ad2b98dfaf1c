//! HTTP and gRPC callouts: validated as Envoy does, recorded as effects.

use std::time::Duration;

use sluice_abi::{HeaderMap, Status, decode_pairs};

use super::{Caller, HostResult, Registrar, finish, parts, read, read_string};
use crate::effects::{CallOp, Effect, GrpcCallRequest, HttpCallRequest};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_>,
         up: u32,
         ul: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         tp: u32,
         tl: u32,
         timeout: u32,
         token: u32| {
            finish(http_call(
                &mut c,
                (up, ul),
                (hp, hl),
                (bp, bl),
                (tp, tl),
                timeout,
                token,
            ))
        },
    );
    r.func(
        "env",
        "proxy_grpc_call",
        |mut c: Caller<'_>,
         up: u32,
         ul: u32,
         sp: u32,
         sl: u32,
         mp: u32,
         ml: u32,
         hp: u32,
         hl: u32,
         msg_ptr: u32,
         msg_len: u32,
         timeout: u32,
         token: u32| {
            finish(grpc_open(
                &mut c,
                (up, ul),
                (sp, sl),
                (mp, ml),
                (hp, hl),
                Some((msg_ptr, msg_len)),
                timeout,
                token,
            ))
        },
    );
    r.func(
        "env",
        "proxy_grpc_stream",
        |mut c: Caller<'_>,
         up: u32,
         ul: u32,
         sp: u32,
         sl: u32,
         mp: u32,
         ml: u32,
         hp: u32,
         hl: u32,
         token: u32| {
            finish(grpc_open(
                &mut c,
                (up, ul),
                (sp, sl),
                (mp, ml),
                (hp, hl),
                None,
                0,
                token,
            ))
        },
    );
    r.func(
        "env",
        "proxy_grpc_send",
        |mut c: Caller<'_>, token: u32, ptr: u32, len: u32, end: u32| {
            finish(grpc_send(&mut c, token, (ptr, len), end != 0))
        },
    );
    r.func(
        "env",
        "proxy_grpc_cancel",
        |mut c: Caller<'_>, token: u32| finish(grpc_end(&mut c, token, true)),
    );
    r.func(
        "env",
        "proxy_grpc_close",
        |mut c: Caller<'_>, token: u32| finish(grpc_end(&mut c, token, false)),
    );
}

/// Reads a serialized map; an undecodable one is `malformed` (the status each call's spec allows).
fn read_map(
    c: &mut Caller<'_>,
    ptr: u32,
    len: u32,
    malformed: Status,
) -> Result<HeaderMap, Status> {
    let raw = read(c, ptr, len)?;
    decode_pairs(&raw)
        .map(HeaderMap::from_pairs)
        .map_err(|_| malformed)
}

fn http_call(
    c: &mut Caller<'_>,
    upstream: (u32, u32),
    headers: (u32, u32),
    body: (u32, u32),
    trailers: (u32, u32),
    timeout_ms: u32,
    token_ptr: u32,
) -> HostResult {
    let upstream = read_string(c, upstream.0, upstream.1)?;
    let headers = read_map(c, headers.0, headers.1, Status::BadArgument)?;
    let body = read(c, body.0, body.1)?;
    let trailers = read_map(c, trailers.0, trailers.1, Status::BadArgument)?;
    parts(c)?.0.check(token_ptr, 4)?;
    // Envoy refuses a callout it could not route: unknown cluster, or no :path/:method/:authority
    // (present, even empty, is enough for Envoy).
    let routable = [":path", ":method", ":authority"]
        .iter()
        .all(|h| headers.get(h).is_some());
    if !routable || !(c.data().clusters)(&upstream) {
        return Err(Status::BadArgument.into());
    }
    let state = c.data_mut();
    let token = state.next_token();
    let (context, root_context) = (state.effective_context, state.effective_root());
    let request = HttpCallRequest {
        upstream,
        headers,
        body,
        trailers,
        timeout: Duration::from_millis(timeout_ms.into()),
    };
    state.effects.push(Effect::Call {
        context,
        root_context,
        token,
        op: CallOp::Http(request),
    });
    super::write_u32(c, token_ptr, token)?;
    Ok(())
}

/// The cluster a gRPC `upstream` argument names: either the raw cluster name, or a serialized
/// `envoy.config.core.v3.GrpcService` whose `envoy_grpc.cluster_name` names it (Envoy accepts both).
fn grpc_cluster(raw: &[u8], exists: &dyn Fn(&str) -> bool) -> Option<String> {
    if let Ok(name) = std::str::from_utf8(raw)
        && exists(name)
    {
        return Some(name.to_string());
    }
    let envoy_grpc = protobuf_field(raw, 1)?;
    let name = std::str::from_utf8(protobuf_field(envoy_grpc, 1)?).ok()?;
    exists(name).then(|| name.to_string())
}

/// The first length-delimited field `number` of a protobuf message.
fn protobuf_field(mut message: &[u8], number: u64) -> Option<&[u8]> {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    while !message.is_empty() {
        let key = varint(&mut message)?;
        match key & 7 {
            0 => {
                varint(&mut message)?;
            }
            1 => message = message.get(8..)?,
            5 => message = message.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                let value = message.get(..len)?;
                message = &message[len..];
                if key >> 3 == number {
                    return Some(value);
                }
            }
            _ => return None,
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn grpc_open(
    c: &mut Caller<'_>,
    upstream: (u32, u32),
    service: (u32, u32),
    method: (u32, u32),
    metadata: (u32, u32),
    message: Option<(u32, u32)>,
    timeout_ms: u32,
    token_ptr: u32,
) -> HostResult {
    let upstream = read(c, upstream.0, upstream.1)?;
    let service = read_string(c, service.0, service.1)?;
    let method = read_string(c, method.0, method.1)?;
    let initial_metadata = read_map(c, metadata.0, metadata.1, Status::ParseFailure)?;
    let message = match message {
        Some((ptr, len)) => Some(read(c, ptr, len)?),
        None => None,
    };
    parts(c)?.0.check(token_ptr, 4)?;
    let upstream = grpc_cluster(&upstream, &*c.data().clusters).ok_or(Status::ParseFailure)?;
    let state = c.data_mut();
    let token = state.next_token();
    state.grpc_tokens.insert(token, message.is_some());
    let (context, root_context) = (state.effective_context, state.effective_root());
    let timeout = Duration::from_millis(timeout_ms.into());
    let request = GrpcCallRequest {
        upstream,
        service,
        method,
        initial_metadata,
        message,
        timeout,
    };
    state.effects.push(Effect::Call {
        context,
        root_context,
        token,
        op: CallOp::Grpc(request),
    });
    super::write_u32(c, token_ptr, token)?;
    Ok(())
}

fn grpc_send(
    c: &mut Caller<'_>,
    token: u32,
    message: (u32, u32),
    end_of_stream: bool,
) -> HostResult {
    let message = read(c, message.0, message.1)?;
    let state = c.data_mut();
    if !state.grpc_tokens.contains_key(&token) {
        return Err(Status::NotFound.into());
    }
    let (context, root_context) = (state.effective_context, state.effective_root());
    state.effects.push(Effect::Call {
        context,
        root_context,
        token,
        op: CallOp::GrpcSend {
            message,
            end_of_stream,
        },
    });
    Ok(())
}

fn grpc_end(c: &mut Caller<'_>, token: u32, cancel: bool) -> HostResult {
    let state = c.data_mut();
    if state.grpc_tokens.remove(&token).is_none() {
        return Err(Status::NotFound.into());
    }
    let (context, root_context) = (state.effective_context, state.effective_root());
    state.effects.push(Effect::Call {
        context,
        root_context,
        token,
        op: if cancel {
            CallOp::GrpcCancel
        } else {
            CallOp::GrpcClose
        },
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_upstream_is_a_name_or_a_grpc_service_proto() {
        let exists = |name: &str| name == "backend";
        assert_eq!(
            grpc_cluster(b"backend", &exists).as_deref(),
            Some("backend")
        );
        // GrpcService { envoy_grpc: { cluster_name: "backend" } }
        let proto = [
            0x0a, 0x09, 0x0a, 0x07, b'b', b'a', b'c', b'k', b'e', b'n', b'd',
        ];
        assert_eq!(grpc_cluster(&proto, &exists).as_deref(), Some("backend"));
        assert_eq!(grpc_cluster(b"other", &exists), None);
    }
}
