//! Every host function a plugin can import, registered once on the engine's linker.
//!
//! Each function validates its arguments as Envoy does, bounds-checks every guest pointer, and
//! returns only the statuses the spec allows for it. Functions whose effect is I/O record an
//! [`Effect`](crate::Effect) instead of performing it.

mod buffers;
mod callouts;
mod context;
mod headers;
mod legacy;
mod metrics;
mod properties;
mod redis;
mod shared;

pub(crate) use properties::top_level;

use std::collections::BTreeSet;

use sluice_abi::Status;
use wasmtime::{IntoFunc, Linker, Memory};

use crate::memory::GuestMemory;
use crate::state::HostState;

pub(crate) type Caller<'a> = wasmtime::Caller<'a, HostState>;

/// How a host function ends early: with a status for the guest, or with a trap (the guest's
/// allocator trapped, or `proc_exit`).
pub(crate) enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl From<wasmtime::Error> for Fail {
    fn from(error: wasmtime::Error) -> Self {
        Self::Trap(error)
    }
}

pub(crate) type HostResult = Result<(), Fail>;

/// Turns a host function's outcome into what the guest receives.
pub(crate) fn finish(result: HostResult) -> wasmtime::Result<u32> {
    match result {
        Ok(()) => Ok(Status::Ok as u32),
        Err(Fail::Status(status)) => Ok(status as u32),
        Err(Fail::Trap(error)) => Err(error),
    }
}

fn memory(caller: &mut Caller<'_>) -> Option<Memory> {
    match caller.data().memory {
        Some(memory) => Some(memory),
        // During a start section the instance is not yet known to the host.
        None => caller
            .get_export("memory")
            .and_then(wasmtime::Extern::into_memory),
    }
}

/// Guest memory and host state, borrowed together.
pub(crate) fn parts<'a>(
    caller: &'a mut Caller<'_>,
) -> Result<(GuestMemory<'a>, &'a mut HostState), Status> {
    let memory = memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    let (bytes, state) = memory.data_and_store_mut(caller);
    Ok((GuestMemory::new(bytes), state))
}

/// Copies `len` guest bytes at `ptr`.
pub(crate) fn read(caller: &mut Caller<'_>, ptr: u32, len: u32) -> Result<Vec<u8>, Status> {
    let (memory, _) = parts(caller)?;
    memory.read(ptr, len).map(<[u8]>::to_vec)
}

pub(crate) fn read_string(caller: &mut Caller<'_>, ptr: u32, len: u32) -> Result<String, Status> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::BadArgument)
}

pub(crate) fn write_u32(caller: &mut Caller<'_>, ptr: u32, value: u32) -> Result<(), Status> {
    parts(caller)?.0.write_u32(ptr, value)
}

/// Hands `data` to the guest: allocates it inside the guest (which then owns it), copies it, and
/// writes the address and length into the two return slots. Empty data is returned as (0, 0)
/// without allocating, as proxy-wasm-cpp-host does.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_>,
    data: &[u8],
    ptr_slot: u32,
    len_slot: u32,
) -> HostResult {
    {
        let (memory, _) = parts(caller)?;
        memory.check(ptr_slot, 4)?;
        memory.check(len_slot, 4)?;
    }
    let address = if data.is_empty() {
        0
    } else {
        let allocate = caller
            .data()
            .allocate
            .clone()
            .ok_or(Status::InvalidMemoryAccess)?;
        let address = allocate.call(&mut *caller, data.len() as u32)?;
        if address == 0 {
            return Err(Status::InvalidMemoryAccess.into());
        }
        address
    };
    let (mut memory, _) = parts(caller)?;
    memory.write(address, data)?;
    memory.write_u32(ptr_slot, address)?;
    memory.write_u32(len_slot, data.len() as u32)?;
    Ok(())
}

/// Registers host functions and remembers their names, so a module's missing imports can all be
/// named at once rather than the first one wasmtime stumbles on.
pub(crate) struct Registrar<'a> {
    linker: &'a mut Linker<HostState>,
    pub names: BTreeSet<(String, String)>,
}

impl<'a> Registrar<'a> {
    pub(crate) fn new(linker: &'a mut Linker<HostState>) -> Self {
        Self {
            linker,
            names: BTreeSet::new(),
        }
    }

    pub(crate) fn func<Params, Results>(
        &mut self,
        module: &str,
        name: &str,
        func: impl IntoFunc<HostState, Params, Results>,
    ) {
        // Registration is fixed at build time: a second function of one name is a bug every
        // test would meet at its first engine, not something input can cause.
        #[allow(clippy::panic)]
        self.linker
            .func_wrap(module, name, func)
            .unwrap_or_else(|e| panic!("host function {module}::{name} registered twice: {e}"));
        self.names.insert((module.to_string(), name.to_string()));
    }
}

pub(crate) fn register(registrar: &mut Registrar<'_>) {
    context::register(registrar);
    headers::register(registrar);
    buffers::register(registrar);
    properties::register(registrar);
    callouts::register(registrar);
    redis::register(registrar);
    shared::register(registrar);
    metrics::register(registrar);
    legacy::register(registrar);
    crate::wasi::register(registrar, "wasi_snapshot_preview1");
    crate::wasi::register(registrar, "wasi_unstable");
}
