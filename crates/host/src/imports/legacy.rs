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
}

/// 0.1.0's single configuration call: the VM configuration in `proxy_on_vm_start`, the plugin
/// configuration in `proxy_on_configure`.
fn get_configuration(c: &mut Caller<'_>, ptr: u32, len: u32) -> HostResult {
    let scope = &c.data().scope;
    let configuration = scope
        .plugin_configuration
        .clone()
        .or_else(|| scope.vm_configuration.clone())
        .ok_or(Status::NotFound)?;
    return_bytes(c, &configuration, ptr, len)
}

fn resume(c: &mut Caller<'_>, stream: StreamType) -> HostResult {
    super::context::stream_control(c, stream as u32, true)
}
