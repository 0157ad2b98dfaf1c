//! Shared data and shared queues.

use sluice_abi::Status;

use super::{Caller, HostResult, Registrar, finish, parts, read, return_bytes};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| {
            finish(get_shared_data(&mut c, (kp, kl), vp, vl, cas))
        },
    );
    r.func(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| {
            finish(set_shared_data(&mut c, (kp, kl), (vp, vl), cas))
        },
    );
    r.func(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_>, np: u32, nl: u32, id_ptr: u32| {
            finish(register_queue(&mut c, (np, nl), id_ptr))
        },
    );
    r.func(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_>, vp: u32, vl: u32, np: u32, nl: u32, id_ptr: u32| {
            finish(resolve_queue(&mut c, (vp, vl), (np, nl), id_ptr))
        },
    );
    r.func(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_>, id: u32, vp: u32, vl: u32| finish(enqueue(&mut c, id, (vp, vl))),
    );
    r.func(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_>, id: u32, vp: u32, vl: u32| finish(dequeue(&mut c, id, vp, vl)),
    );
}

fn get_shared_data(
    c: &mut Caller<'_>,
    key: (u32, u32),
    ptr: u32,
    len: u32,
    cas_ptr: u32,
) -> HostResult {
    let key = read(c, key.0, key.1)?;
    parts(c)?.0.check(cas_ptr, 4)?;
    let state = c.data();
    let (value, cas) = state
        .shared
        .data
        .get(&state.vm_id, &key)
        .ok_or(Status::NotFound)?;
    return_bytes(c, &value, ptr, len)?;
    super::write_u32(c, cas_ptr, cas)?;
    Ok(())
}

fn set_shared_data(c: &mut Caller<'_>, key: (u32, u32), value: (u32, u32), cas: u32) -> HostResult {
    let key = read(c, key.0, key.1)?;
    let value = read(c, value.0, value.1)?;
    let state = c.data_mut();
    let result = state.shared.data.set(&state.vm_id, &key, &value, cas);
    if result == Err(Status::InternalFailure) {
        let message = format!(
            "proxy_set_shared_data refused: the shared data of vm_id `{}` would pass {} bytes",
            state.vm_id,
            state.shared.data.limit()
        );
        state.warn_once("shared data full", format_args!("{message}"));
    }
    result?;
    Ok(())
}

fn register_queue(c: &mut Caller<'_>, name: (u32, u32), id_ptr: u32) -> HostResult {
    let name = read(c, name.0, name.1)?;
    parts(c)?.0.check(id_ptr, 4)?;
    let state = c.data();
    let id = state.shared.queues.register(
        &state.vm_id,
        &name,
        &state.queue_inbox,
        state.effective_root(),
    )?;
    super::write_u32(c, id_ptr, id)?;
    Ok(())
}

fn resolve_queue(
    c: &mut Caller<'_>,
    vm_id: (u32, u32),
    name: (u32, u32),
    id_ptr: u32,
) -> HostResult {
    let vm_id = String::from_utf8_lossy(&read(c, vm_id.0, vm_id.1)?).into_owned();
    let name = read(c, name.0, name.1)?;
    parts(c)?.0.check(id_ptr, 4)?;
    let id = c
        .data()
        .shared
        .queues
        .resolve(&vm_id, &name)
        .ok_or(Status::NotFound)?;
    super::write_u32(c, id_ptr, id)?;
    Ok(())
}

fn enqueue(c: &mut Caller<'_>, id: u32, value: (u32, u32)) -> HostResult {
    let value = read(c, value.0, value.1)?;
    c.data().shared.queues.enqueue(id, &value)?;
    Ok(())
}

fn dequeue(c: &mut Caller<'_>, id: u32, ptr: u32, len: u32) -> HostResult {
    {
        let (memory, _) = parts(c)?;
        memory.check(ptr, 4)?;
        memory.check(len, 4)?;
    }
    let value = c.data().shared.queues.dequeue(id)?;
    return_bytes(c, &value, ptr, len)
}
