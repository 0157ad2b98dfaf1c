//! Body, callout, gRPC and configuration buffers.

use sluice_abi::{BufferType, Status};

use super::{Caller, HostResult, Registrar, finish, parts, read, return_bytes};
use crate::state::HostState;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_>, kind: u32, start: u32, max: u32, ptr: u32, len: u32| {
            finish(get_bytes(&mut c, kind, start, max, ptr, len))
        },
    );
    r.func(
        "env",
        "proxy_get_buffer_status",
        |mut c: Caller<'_>, kind: u32, len_ptr: u32, flags_ptr: u32| {
            finish(get_status(&mut c, kind, len_ptr, flags_ptr))
        },
    );
    r.func(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_>, kind: u32, start: u32, size: u32, ptr: u32, len: u32| {
            finish(set_bytes(&mut c, kind, start, size, ptr, len))
        },
    );
}

/// Runs `f` on the buffer `raw` names, if it exists for the effective context right now.
fn with_buffer<R>(
    state: &mut HostState,
    raw: u32,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, Status> {
    let kind = BufferType::from_raw(raw).ok_or(Status::BadArgument)?;
    let scoped = match kind {
        BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
            return with_body(state, kind, |body| f(body));
        }
        BufferType::DownstreamData | BufferType::UpstreamData => {
            return with_network_data(state, kind, |data| f(data.as_deref().unwrap_or_default()));
        }
        BufferType::HttpCallResponseBody => &state.scope_mut().call_body,
        BufferType::GrpcCallMessage => &state.scope_mut().grpc_message,
        BufferType::RedisCallResponse => &state.scope_mut().redis_reply,
        BufferType::VmConfiguration => &state.scope_mut().vm_configuration,
        BufferType::PluginConfiguration => &state.scope_mut().plugin_configuration,
        // Foreign functions get their arguments as parameters: nothing is ever in scope.
        BufferType::ForeignFunctionArguments => return Err(Status::NotFound),
    };
    scoped.as_deref().map(f).ok_or(Status::NotFound)
}

/// Runs `f` on the stream's request or response body (`kind` is one of the two). A TCP
/// connection has none.
fn with_body<R>(
    state: &mut HostState,
    kind: BufferType,
    f: impl FnOnce(&mut bytes::Bytes) -> R,
) -> Result<R, Status> {
    let stream = state.effective_http_stream().ok_or(Status::NotFound)?;
    // The embedder never holds the stream across a guest call; if it did, fail the call rather
    // than the process.
    let mut stream = stream.try_borrow_mut().map_err(|_| Status::NotFound)?;
    Ok(f(if kind == BufferType::HttpRequestBody {
        &mut stream.request_body
    } else {
        &mut stream.response_body
    }))
}

/// Runs `f` on a TCP connection's downstream or upstream data (`kind` is one of the two). As in
/// Envoy, these buffers exist for every context: outside a connection's data callback (or an
/// HTTP stream's) they are empty, never NOT_FOUND.
fn with_network_data<R>(
    state: &mut HostState,
    kind: BufferType,
    f: impl FnOnce(&mut Option<Vec<u8>>) -> R,
) -> Result<R, Status> {
    let Some(stream) = state.effective_connection() else {
        return Ok(f(&mut None));
    };
    let mut stream = stream.try_borrow_mut().map_err(|_| Status::NotFound)?;
    Ok(f(if kind == BufferType::DownstreamData {
        &mut stream.downstream_data
    } else {
        &mut stream.upstream_data
    }))
}

fn get_bytes(
    c: &mut Caller<'_>,
    kind: u32,
    start: u32,
    max: u32,
    ptr: u32,
    len: u32,
) -> HostResult {
    // `start + max` cannot overflow here: both are 32-bit and the sum is computed in `usize`
    // (the SDKs pass `max = u32::MAX` to mean "everything").
    let slice = with_buffer(c.data_mut(), kind, |buffer| {
        let start = (start as usize).min(buffer.len());
        let end = start.saturating_add(max as usize).min(buffer.len());
        buffer[start..end].to_vec()
    })?;
    if slice.is_empty() {
        // As proxy-wasm-cpp-host: nothing to return leaves the return slots untouched, which the
        // SDKs read as "no data".
        let (memory, _) = parts(c)?;
        memory.check(ptr, 4)?;
        memory.check(len, 4)?;
        return Ok(());
    }
    return_bytes(c, &slice, ptr, len)
}

fn get_status(c: &mut Caller<'_>, kind: u32, len_ptr: u32, flags_ptr: u32) -> HostResult {
    let size = with_buffer(c.data_mut(), kind, |buffer| buffer.len())?;
    let (mut memory, _) = parts(c)?;
    memory.check(flags_ptr, 4)?;
    memory.write_u32(len_ptr, size as u32)?;
    memory.write_u32(flags_ptr, 0)?;
    Ok(())
}

/// Envoy's `Buffer::copyFrom`: `start == 0` replaces the first `size` bytes (prepends when 0),
/// `start >= len` appends, anything else is a bad argument.
fn set_bytes(
    c: &mut Caller<'_>,
    kind: u32,
    start: u32,
    size: u32,
    ptr: u32,
    len: u32,
) -> HostResult {
    let data = read(c, ptr, len)?;
    let kind = BufferType::from_raw(kind).ok_or(Status::BadArgument)?;
    match kind {
        BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
            with_body(c.data_mut(), kind, |body| {
                // The body's bytes become the plugin's to change: copied only if still shared.
                let mut buffer = Vec::from(std::mem::take(body));
                let result = copy_from(&mut buffer, start, size, &data);
                *body = buffer.into();
                result
            })??;
        }
        // Envoy's wrapper of an absent buffer refuses to be set ("Setting a string buffer not
        // supported").
        BufferType::DownstreamData | BufferType::UpstreamData => {
            with_network_data(c.data_mut(), kind, |buffer| match buffer {
                Some(buffer) => copy_from(buffer, start, size, &data),
                None => Err(Status::BadArgument),
            })??;
        }
        _ => return Err(Status::NotFound.into()),
    }
    Ok(())
}

/// Envoy's `Buffer::copyFrom` on a live buffer.
fn copy_from(buffer: &mut Vec<u8>, start: u32, size: u32, data: &[u8]) -> Result<(), Status> {
    let (start, size) = (start as usize, size as usize);
    if start == 0 {
        buffer.splice(..size.min(buffer.len()), data.iter().copied());
    } else if start >= buffer.len() {
        buffer.extend_from_slice(data);
    } else {
        return Err(Status::BadArgument);
    }
    Ok(())
}
