//! ABI 0.1.0 host calls, and the two `env` helpers proxy-wasm-cpp-host offers to Emscripten builds.

use sluice_abi::{Status, StreamType};

use super::{Caller, HostResult, Registrar, finish, return_bytes};
use crate::effects::Effect;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_get_configuration",
        |mut c: Caller<'_>, ptr: u32, len: u32| finish(get_configuration(&mut c, ptr, len)),
    );
    r.func("env", "proxy_continue_request", |mut c: Caller<'_>| {
        finish(resume(&mut c, StreamType::HttpRequest))
    });
    r.func("env", "proxy_continue_response", |mut c: Caller<'_>| {
        finish(resume(&mut c, StreamType::HttpResponse))
    });
    r.func("env", "proxy_clear_route_cache", |mut c: Caller<'_>| {
        let state = c.data_mut();
        let context = state.effective_context;
        state.effects.push(Effect::ClearRouteCache { context });
        finish(Ok(()))
    });
    r.func(
        "env",
        "emscripten_notify_memory_growth",
        |_: Caller<'_>, _index: u32| {},
    );
    r.func(
        "env",
        "pthread_equal",
        |_: Caller<'_>, left: u32, right: u32| u32::from(left == right),
    );
    // AssemblyScript's runtime: `abort` ends the call as a trap naming the source position, `seed`
    // seeds Math.random.
    r.func(
        "env",
        "abort",
        |mut c: Caller<'_>,
         message: u32,
         file: u32,
         line: u32,
         column: u32|
         -> wasmtime::Result<()> {
            let message = assemblyscript_string(&mut c, message);
            let file = assemblyscript_string(&mut c, file);
            Err(wasmtime::Error::msg(format!(
                "AssemblyScript abort: {message} at {file}:{line}:{column}"
            )))
        },
    );
    r.func("env", "seed", |_: Caller<'_>| -> f64 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_or(0.0, |()| (u64::from_le_bytes(bytes) >> 11) as f64)
    });
}

/// An AssemblyScript string (UTF-16, its byte length stored just before it), or `?`.
fn assemblyscript_string(c: &mut Caller<'_>, ptr: u32) -> String {
    let Ok((memory, _)) = super::parts(c) else {
        return "?".into();
    };
    let Some(len_at) = ptr.checked_sub(4) else {
        return "?".into();
    };
    match memory
        .read_u32(len_at)
        .and_then(|len| memory.read(ptr, len.min(4096)))
    {
        Ok(bytes) => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        Err(_) => "?".into(),
    }
}

/// 0.1.0's single configuration call: the VM configuration in `proxy_on_vm_start`, the plugin
/// configuration in `proxy_on_configure`.
fn get_configuration(c: &mut Caller<'_>, ptr: u32, len: u32) -> HostResult {
    let configuration = c
        .data()
        .scope
        .as_deref()
        .and_then(|scope| {
            scope
                .plugin_configuration
                .clone()
                .or_else(|| scope.vm_configuration.clone())
        })
        .ok_or(Status::NotFound)?;
    return_bytes(c, &configuration, ptr, len)
}

fn resume(c: &mut Caller<'_>, stream: StreamType) -> HostResult {
    super::context::stream_control(c, stream as u32, true)
}
