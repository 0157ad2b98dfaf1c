//! Properties (Envoy attributes) and foreign functions.

use sluice_abi::{Attribute, PropertyPath, Status};

use super::{Caller, HostResult, Registrar, finish, read, return_bytes};
use crate::state::HostState;
use crate::stream::{FilterStateEntry, WASM_STATE_PREFIX, WRAPPERS};

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
/// among them, and its filter state). Envoy cannot serialize `request`, `xds` and the other
/// [`WRAPPERS`] as a whole.
pub(crate) fn resolve(state: &HostState, path: &[String]) -> Result<Attribute, Status> {
    let stream = state.effective_stream();
    match path {
        [whole] if whole == "xds" || (WRAPPERS.contains(&whole.as_str()) && stream.is_some()) => {
            Err(Status::SerializationFailure)
        }
        [xds, node, rest @ ..] if xds == "xds" && node == "node" => state.node.at(rest).cloned(),
        [one] => top_level(state, one).ok_or(Status::NotFound),
        _ => stream
            .ok_or(Status::NotFound)?
            .try_borrow()
            .map_err(|_| Status::NotFound)?
            .attribute(path)
            .ok_or(Status::NotFound),
    }
}

/// A top-level name as a whole, as a CEL expression reads it (`request`, `xds`, `plugin_name`,
/// a plugin's own property, ...). Stream attributes exist only for a stream context.
pub(crate) fn top_level(state: &HostState, name: &str) -> Option<Attribute> {
    let identity = match name {
        "plugin_name" => Some(state.plugin_name_of(state.effective_root()).to_string()),
        "plugin_root_id" => Some(state.root_id(state.effective_root()).to_string()),
        "plugin_vm_id" => Some(state.vm_id.clone()),
        _ => None,
    };
    if let Some(value) = identity {
        return Some(Attribute::String(value));
    }
    let stream = state.effective_stream()?.try_borrow().ok()?;
    // Higress's host still answers the top-level `route_name` and `cluster_name` that Envoy 1.40
    // dropped for `xds.*`; its SDK matches `_match_route_` and `_match_service_` rules on them.
    if state.abi == sluice_abi::AbiVersion::V0_2_100
        && let Some(xds) = ["route_name", "cluster_name"]
            .into_iter()
            .find(|n| *n == name)
    {
        return stream.attribute(&["xds".to_string(), xds.to_string()]);
    }
    let value = stream.top_level(name);
    if name == "xds" {
        let Some(Attribute::Map(mut entries)) = value else {
            return None;
        };
        entries.push((Attribute::String("node".into()), (*state.node).clone()));
        return Some(Attribute::Map(entries));
    }
    value
}

fn get_property(c: &mut Caller<'_>, path: (u32, u32), ptr: u32, len: u32) -> HostResult {
    let path = PropertyPath::from_wire(&read(c, path.0, path.1)?);
    let value = resolve(c.data(), path.segments())?.serialize()?;
    return_bytes(c, &value, ptr, len)
}

/// Envoy keeps a plugin's property in the stream's filter state (`wasm.PATH`), typed as the root
/// context declared it (`declare_property`), else as bytes; a read-only one is set once. There is
/// no filter state outside a stream: NOT_FOUND.
/// The filter-state entries one stream may hold.
const MAX_FILTER_STATE_ENTRIES: usize = 1024;

fn set_property(c: &mut Caller<'_>, path: (u32, u32), value: (u32, u32)) -> HostResult {
    let path = String::from_utf8_lossy(&read(c, path.0, path.1)?).into_owned();
    let value = read(c, value.0, value.1)?;
    let state = c.data();
    let stream = state.effective_stream().ok_or(Status::NotFound)?;
    let declared = state
        .declared
        .get(&state.effective_root())
        .and_then(|d| d.get(&path));
    let mut stream = stream.try_borrow_mut().map_err(|_| Status::NotFound)?;
    let key = format!("{WASM_STATE_PREFIX}{path}");
    let full = stream.filter_state.len() >= MAX_FILTER_STATE_ENTRIES;
    match stream.filter_state.get_mut(&key) {
        Some(entry) if entry.readonly => return Err(Status::BadArgument.into()),
        Some(entry) => {
            let string = matches!(entry.value, Attribute::String(_));
            entry.value = crate::foreign::typed(value, string);
        }
        // Envoy has no bound; a plugin setting new paths in a loop would grow the stream until
        // its CPU deadline.
        None if full => {
            return Err(Status::InternalFailure.into());
        }
        None => {
            let string = declared.is_some_and(|d| d.string);
            let entry = FilterStateEntry {
                value: crate::foreign::typed(value, string),
                readonly: declared.is_some_and(|d| d.readonly),
            };
            stream.filter_state.insert(key, entry);
        }
    }
    Ok(())
}

/// Envoy's foreign functions (`crate::foreign`): an unknown name is NOT_FOUND and writes
/// nothing; a known one always writes its result (empty when it has none), whatever its status.
fn call_foreign_function(
    c: &mut Caller<'_>,
    name: (u32, u32),
    args: (u32, u32),
    ptr: u32,
    len: u32,
) -> HostResult {
    let name = read(c, name.0, name.1)?;
    let arguments = read(c, args.0, args.1)?;
    let (memory, _) = super::parts(c)?;
    memory.check(ptr, 4)?;
    memory.check(len, 4)?;
    let Some(function) = crate::foreign::Function::named(&name) else {
        tracing::debug!(function = %String::from_utf8_lossy(&name), "unknown foreign function");
        return Err(Status::NotFound.into());
    };
    let (status, result) = match function.call(c.data_mut(), &arguments) {
        Ok(result) => (Status::Ok, result),
        Err(status) => (status, Vec::new()),
    };
    return_bytes(c, &result, ptr, len)?;
    if status == Status::Ok {
        Ok(())
    } else {
        Err(status.into())
    }
}
