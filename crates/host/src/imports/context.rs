//! Logging, time, timers, contexts and stream control.

use sluice_abi::{HeaderMap, LogLevel, Status, StreamType, decode_pairs};

use super::{Caller, HostResult, Registrar, finish, parts, read, return_bytes};
use crate::effects::{Effect, LocalResponse};
use crate::state::Context;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_log",
        |mut c: Caller<'_>, level: u32, ptr: u32, len: u32| finish(log(&mut c, level, ptr, len)),
    );
    r.func(
        "env",
        "proxy_get_log_level",
        |mut c: Caller<'_>, ptr: u32| {
            let level = c
                .data()
                .log_level
                .load(std::sync::atomic::Ordering::Relaxed);
            finish(super::write_u32(&mut c, ptr, level).map_err(Into::into))
        },
    );
    r.func(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_>, ptr: u32| {
            let now = c.data().clock.now_unix_nanos();
            finish(
                parts(&mut c)
                    .and_then(|(mut m, _)| m.write_u64(ptr, now))
                    .map_err(Into::into),
            )
        },
    );
    r.func(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_>, period: u32| {
            let state = c.data_mut();
            let root = state.effective_root();
            if period == 0 {
                state.tick_periods.remove(&root);
            } else {
                let now = state.clock.monotonic_nanos();
                state.tick_periods.insert(root, (period, now));
            }
            finish(Ok(()))
        },
    );
    r.func(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_>, context: u32| {
            let state = c.data_mut();
            if !state.contexts.contains_key(&context) {
                return finish(Err(Status::BadArgument.into()));
            }
            state.effective_context = context;
            finish(Ok(()))
        },
    );
    r.func("env", "proxy_done", |mut c: Caller<'_>| {
        let state = c.data_mut();
        let context = state.effective_context;
        if !state.pending_done.remove(&context) {
            return finish(Err(Status::NotFound.into()));
        }
        state.effects.push(Effect::Done { context });
        finish(Ok(()))
    });
    r.func(
        "env",
        "proxy_continue_stream",
        |mut c: Caller<'_>, stream: u32| finish(stream_control(&mut c, stream, true)),
    );
    r.func(
        "env",
        "proxy_close_stream",
        |mut c: Caller<'_>, stream: u32| finish(stream_control(&mut c, stream, false)),
    );
    r.func(
        "env",
        "proxy_get_status",
        |mut c: Caller<'_>, code_ptr: u32, msg_ptr: u32, msg_len: u32| {
            finish(get_status(&mut c, code_ptr, msg_ptr, msg_len))
        },
    );
    r.func(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_>,
         status: u32,
         dp: u32,
         dl: u32,
         bp: u32,
         bl: u32,
         hp: u32,
         hl: u32,
         grpc: i32| {
            finish(send_local_response(
                &mut c,
                status,
                (dp, dl),
                (bp, bl),
                (hp, hl),
                grpc,
            ))
        },
    );
}

/// Only the first `limits.log_line_bytes` bytes of a line are copied out of the guest (the whole
/// range is still checked).
fn log(c: &mut Caller<'_>, level: u32, ptr: u32, len: u32) -> HostResult {
    let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
    let (memory, state) = super::parts(c)?;
    memory.check(ptr, len)?;
    let most = u32::try_from(state.limits.log_line_bytes).unwrap_or(u32::MAX);
    let kept = len.min(most.saturating_add(1));
    let message = String::from_utf8_lossy(memory.read(ptr, kept)?).into_owned();
    state.log_line(level, message, len as usize);
    Ok(())
}

/// `proxy_continue_stream` / `proxy_close_stream`. On an HTTP stream only its request and
/// response can be acted on: resuming anything else is `UNIMPLEMENTED` (the spec's "not
/// supported"), closing it a bad argument. On a TCP connection, as in Envoy: the downstream can be
/// resumed and either side closed (both close the client connection after flushing), resuming
/// the upstream is `UNIMPLEMENTED`, and the HTTP stream types are accepted and do nothing.
pub(super) fn stream_control(c: &mut Caller<'_>, stream: u32, resume: bool) -> HostResult {
    let stream = StreamType::from_raw(stream).ok_or(Status::BadArgument)?;
    let state = c.data_mut();
    let context = state.effective_context;
    let http = matches!(stream, StreamType::HttpRequest | StreamType::HttpResponse);
    match state.contexts.get(&context) {
        Some(Context::Stream { .. }) if http => {}
        Some(Context::Connection { .. }) => {
            if http {
                return Ok(());
            }
            if resume && stream == StreamType::Upstream {
                return Err(Status::Unimplemented.into());
            }
        }
        _ => {
            return Err(if resume {
                Status::Unimplemented
            } else {
                Status::BadArgument
            }
            .into());
        }
    }
    state.effects.push(if resume {
        Effect::ContinueStream { context, stream }
    } else {
        Effect::CloseStream { context, stream }
    });
    Ok(())
}

/// The status of the last callout or gRPC call delivered (code 0 and no message before any).
fn get_status(c: &mut Caller<'_>, code_ptr: u32, msg_ptr: u32, msg_len: u32) -> HostResult {
    let (code, message) = c.data().last_status.clone();
    parts(c)?.0.check(code_ptr, 4)?;
    return_bytes(c, &message, msg_ptr, msg_len)?;
    super::write_u32(c, code_ptr, code)?;
    Ok(())
}

fn send_local_response(
    c: &mut Caller<'_>,
    status: u32,
    details: (u32, u32),
    body: (u32, u32),
    headers: (u32, u32),
    grpc_status: i32,
) -> HostResult {
    let details = String::from_utf8_lossy(&read(c, details.0, details.1)?).into_owned();
    let body = read(c, body.0, body.1)?;
    let raw_headers = read(c, headers.0, headers.1)?;
    let pairs = decode_pairs(&raw_headers).map_err(|_| Status::BadArgument)?;
    let headers = HeaderMap::from_pairs(pairs);
    let state = c.data_mut();
    let context = state.effective_context;
    match state.contexts.get(&context) {
        Some(Context::Stream { .. }) => {}
        // Envoy answers OK and sends nothing: a TCP connection has no HTTP reply to send.
        Some(Context::Connection { .. }) => return Ok(()),
        _ => return Err(Status::BadArgument.into()),
    }
    let grpc_status = u32::try_from(grpc_status).ok();
    let response = LocalResponse {
        status,
        details,
        body,
        headers,
        grpc_status,
    };
    state
        .effects
        .push(Effect::LocalResponse { context, response });
    Ok(())
}
