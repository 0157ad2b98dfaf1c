//! Header and metadata maps.

use sluice_abi::{HeaderMap, MapType, Status, decode_pairs};

use super::{Caller, HostResult, Registrar, finish, parts, read, return_bytes};
use crate::state::HostState;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_>, map: u32, ptr: u32, len: u32| finish(get_pairs(&mut c, map, ptr, len)),
    );
    r.func(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_>, map: u32, ptr: u32, len: u32| finish(set_pairs(&mut c, map, ptr, len)),
    );
    r.func(
        "env",
        "proxy_get_header_map_size",
        |mut c: Caller<'_>, map: u32, size_ptr: u32| finish(get_size(&mut c, map, size_ptr)),
    );
    r.func(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
            finish(get_value(&mut c, map, (kp, kl), vp, vl))
        },
    );
    r.func(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
            finish(modify(&mut c, map, (kp, kl), Some((vp, vl)), |m, k, v| {
                m.add(k, v);
            }))
        },
    );
    r.func(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
            finish(modify(&mut c, map, (kp, kl), Some((vp, vl)), |m, k, v| {
                m.replace(k, v);
            }))
        },
    );
    r.func(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_>, map: u32, kp: u32, kl: u32| {
            finish(modify(&mut c, map, (kp, kl), None, |m, k, _| m.remove(k)))
        },
    );
}

/// Runs `f` on the map `raw` names, if it exists for the effective context right now. A map that is
/// not available now is a bad argument, as in Envoy: the spec allows no other status.
pub(crate) fn with_map<R>(
    state: &mut HostState,
    raw: u32,
    f: impl FnOnce(&mut HeaderMap) -> R,
) -> Result<R, Status> {
    let map = MapType::from_raw(raw).ok_or(Status::BadArgument)?;
    let scoped = match map {
        MapType::GrpcCallInitialMetadata => &mut state.scope_mut().grpc_initial_metadata,
        MapType::GrpcCallTrailingMetadata => &mut state.scope_mut().grpc_trailing_metadata,
        MapType::HttpCallResponseHeaders => &mut state.scope_mut().call_headers,
        MapType::HttpCallResponseTrailers => &mut state.scope_mut().call_trailers,
        MapType::HttpRequestHeaders
        | MapType::HttpRequestTrailers
        | MapType::HttpResponseHeaders
        | MapType::HttpResponseTrailers => {
            // Only an HTTP stream has them: on a TCP connection Envoy says "not currently
            // available", as outside a stream.
            let stream = state.effective_http_stream().ok_or(Status::BadArgument)?;
            // The embedder never holds the stream across a guest call; if it did, fail the call
            // rather than the process.
            let mut stream = stream.try_borrow_mut().map_err(|_| Status::BadArgument)?;
            let target = match map {
                MapType::HttpRequestHeaders => &mut stream.request_headers,
                MapType::HttpRequestTrailers => &mut stream.request_trailers,
                MapType::HttpResponseHeaders => &mut stream.response_headers,
                _ => &mut stream.response_trailers,
            };
            return Ok(f(target));
        }
    };
    scoped.as_mut().map(f).ok_or(Status::BadArgument)
}

fn get_pairs(c: &mut Caller<'_>, map: u32, ptr: u32, len: u32) -> HostResult {
    let encoded = match with_map(c.data_mut(), map, |m| m.encode()) {
        Ok(encoded) => encoded,
        // Envoy lists a TCP connection's HTTP maps as empty, with no pairs at all (not a count
        // of 0).
        Err(Status::BadArgument) if map < 4 && c.data().effective_connection().is_some() => {
            Vec::new()
        }
        Err(status) => return Err(status.into()),
    };
    return_bytes(c, &encoded, ptr, len)
}

fn set_pairs(c: &mut Caller<'_>, map: u32, ptr: u32, len: u32) -> HostResult {
    let raw = read(c, ptr, len)?;
    let pairs = decode_pairs(&raw).map_err(|_| Status::BadArgument)?;
    let replacement = HeaderMap::from_pairs(pairs);
    with_map(c.data_mut(), map, |m| *m = replacement)?;
    Ok(())
}

fn get_size(c: &mut Caller<'_>, map: u32, size_ptr: u32) -> HostResult {
    let size = with_map(c.data_mut(), map, |m| m.encoded_len())?;
    super::write_u32(c, size_ptr, size as u32)?;
    Ok(())
}

fn get_value(c: &mut Caller<'_>, map: u32, key: (u32, u32), ptr: u32, len: u32) -> HostResult {
    // The value is copied out: handing it to the guest calls the guest's allocator.
    let value = {
        let (memory, state) = parts(c)?;
        let key = memory.read(key.0, key.1)?;
        with_map(state, map, |m| m.get(key).map(<[u8]>::to_vec))?
    };
    match value {
        Some(value) => return_bytes(c, &value, ptr, len),
        // ABI 0.1.0 reported a missing header as an empty value.
        None if !c.data().abi.missing_header_is_not_found() => return_bytes(c, &[], ptr, len),
        None => Err(Status::NotFound.into()),
    }
}

fn modify(
    c: &mut Caller<'_>,
    map: u32,
    key: (u32, u32),
    value: Option<(u32, u32)>,
    f: impl FnOnce(&mut HeaderMap, &[u8], &[u8]),
) -> HostResult {
    // Key and value are read in place: the map takes its own copies.
    let (memory, state) = parts(c)?;
    let key = memory.read(key.0, key.1)?;
    let value = match value {
        Some((ptr, len)) => memory.read(ptr, len)?,
        None => &[],
    };
    let size = with_map(state, map, |m| {
        f(m, key, value);
        (m.len(), m.encoded_len())
    })?;
    within_limits(&state.limits, size)
}

/// A plugin that grows a header map past the limits fails (its failStrategy applies), with a
/// message that says so, rather than growing the proxy's memory or a request nothing can send.
fn within_limits(limits: &crate::Limits, (entries, bytes): (usize, usize)) -> HostResult {
    let (most_entries, most_bytes) = (limits.header_map_entries, limits.header_map_bytes);
    if entries > most_entries || bytes > most_bytes {
        return Err(wasmtime::Error::msg(format!(
            "a header map grew to {entries} entries and {bytes} bytes, past the limits of \
             {most_entries} entries and {most_bytes} bytes"
        ))
        .into());
    }
    Ok(())
}
