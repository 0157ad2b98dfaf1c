//! Plugin-defined metrics.

use sluice_abi::{MetricType, Status};

use super::{Caller, HostResult, Registrar, finish, parts, read};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_>, kind: u32, np: u32, nl: u32, id_ptr: u32| {
            finish(define(&mut c, kind, (np, nl), id_ptr))
        },
    );
    r.func(
        "env",
        "proxy_increment_metric",
        |c: Caller<'_>, id: u32, delta: i64| {
            finish(c.data().metric_ids.increment(id, delta).map_err(Into::into))
        },
    );
    r.func(
        "env",
        "proxy_record_metric",
        |c: Caller<'_>, id: u32, value: u64| {
            finish(c.data().metric_ids.record(id, value).map_err(Into::into))
        },
    );
    r.func(
        "env",
        "proxy_get_metric",
        |mut c: Caller<'_>, id: u32, ptr: u32| finish(get(&mut c, id, ptr)),
    );
}

fn define(c: &mut Caller<'_>, kind: u32, name: (u32, u32), id_ptr: u32) -> HostResult {
    let name = read(c, name.0, name.1)?;
    parts(c)?.0.check(id_ptr, 4)?;
    let kind = MetricType::from_raw(kind).ok_or(Status::BadArgument)?;
    let name = String::from_utf8(name).map_err(|_| Status::BadArgument)?;
    let state = c.data_mut();
    let id = match state.metric_ids.define(&state.shared.metrics, kind, &name) {
        Ok(id) => id,
        Err(status) => {
            state.warn_once(
                "metrics full",
                format_args!(
                    "proxy_define_metric({:?}...): the process holds {} metrics (or {} bytes of \
                     names) already",
                    name.chars().take(64).collect::<String>(),
                    state.shared.metrics.limit(),
                    crate::metrics::MAX_METRIC_NAME_BYTES
                ),
            );
            return Err(status.into());
        }
    };
    super::write_u32(c, id_ptr, id)?;
    Ok(())
}

fn get(c: &mut Caller<'_>, id: u32, ptr: u32) -> HostResult {
    parts(c)?.0.check(ptr, 8)?;
    let value = c.data().metric_ids.read(id)?;
    parts(c)?.0.write_u64(ptr, value)?;
    Ok(())
}
