//! Properties (Envoy attributes) and foreign functions.

use sluice_abi::{PropertyPath, PropertyValue, Status};

use super::{Caller, HostResult, Registrar, finish, read, return_bytes};
use crate::state::HostState;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_>, pp: u32, pl: u32, vp: u32, vl: u32| {
            finish(get_property(&mut c, (pp, pl), vp, vl))
        },
    );
    r.func(
        "env",
        "proxy_set_property",
        |mut c: Caller<'_>, pp: u32, pl: u32, vp: u32, vl: u32| {
            finish(set_property(&mut c, (pp, pl), (vp, vl)))
        },
    );
    r.func(
        "env",
        "proxy_call_foreign_function",
        |mut c: Caller<'_>, np: u32, nl: u32, ap: u32, al: u32, rp: u32, rl: u32| {
            finish(call_foreign_function(&mut c, (np, nl), (ap, al), rp, rl))
        },
    );
}

/// Resolves a property for the effective context, as Envoy 1.40 does: the plugin's identity,
/// the node (`xds.node...`, from any context), then the stream's attributes (the other `xds.*`
/// ones among them), then what a root context set. `xds` alone is a map Envoy cannot serialize.
pub(crate) fn resolve(state: &HostState, path: &PropertyPath) -> Result<Vec<u8>, Status> {
    match path.segments() {
        [xds] if xds == "xds" => return Err(Status::SerializationFailure),
        [xds, node, rest @ ..] if xds == "xds" && node == "node" => {
            return state.node.at(rest)?.serialize();
        }
        _ => {}
    }
    let root = state.effective_root();
    let identity = match path.segments() {
        [one] if one == "plugin_name" => Some(state.plugin_name.clone()),
        [one] if one == "plugin_root_id" => Some(state.root_id(root).to_string()),
        [one] if one == "plugin_vm_id" => Some(state.vm_id.clone()),
        _ => None,
    };
    if let Some(value) = identity {
        return Ok(value.into_bytes());
    }
    if let Some(stream) = state.effective_stream()
        && let Some(value) = stream
            .try_borrow()
            .map_err(|_| Status::NotFound)?
            .property(path.segments())
    {
        return Ok(value);
    }
    state
        .properties
        .get(&path.dotted())
        .map(PropertyValue::encode)
        .ok_or(Status::NotFound)
}

fn get_property(c: &mut Caller<'_>, path: (u32, u32), ptr: u32, len: u32) -> HostResult {
    let path = PropertyPath::from_wire(&read(c, path.0, path.1)?);
    let value = resolve(c.data(), &path)?;
    return_bytes(c, &value, ptr, len)
}

fn set_property(c: &mut Caller<'_>, path: (u32, u32), value: (u32, u32)) -> HostResult {
    let path = PropertyPath::from_wire(&read(c, path.0, path.1)?);
    let value = PropertyValue::Bytes(read(c, value.0, value.1)?);
    let state = c.data_mut();
    match state.effective_stream() {
        Some(stream) => {
            stream
                .try_borrow_mut()
                .map_err(|_| Status::NotFound)?
                .properties
                .insert(path.dotted(), value);
        }
        None => {
            state.properties.insert(path.dotted(), value);
        }
    }
    Ok(())
}

/// Sluice offers no foreign functions yet: every name is unknown, which the spec reports as
/// `NOT_FOUND`. The arguments are still bounds-checked.
fn call_foreign_function(
    c: &mut Caller<'_>,
    name: (u32, u32),
    args: (u32, u32),
    ptr: u32,
    len: u32,
) -> HostResult {
    let name = read(c, name.0, name.1)?;
    read(c, args.0, args.1)?;
    let (memory, _) = super::parts(c)?;
    memory.check(ptr, 4)?;
    memory.check(len, 4)?;
    tracing::debug!(function = %String::from_utf8_lossy(&name), "unknown foreign function");
    Err(Status::NotFound.into())
}
