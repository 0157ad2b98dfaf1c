//! Higress's Redis calls (`proxy_redis_init`, `proxy_redis_call`): a root context sets up a
//! cluster once, then sends it RESP queries whose replies come back in
//! `proxy_on_redis_call_response`. Offered to modules of every ABI version, with the statuses of
//! Higress's host (design/higress-abi.md): an unknown cluster or a query that is not one RESP
//! value is `BAD_ARGUMENT`.

use std::time::Duration;

use sluice_abi::Status;

use super::{Caller, HostResult, Registrar, finish, parts, read, read_string};
use crate::effects::{CallOp, Effect, RedisCallRequest, RedisSettings};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.func(
        "env",
        "proxy_redis_init",
        |mut c: Caller<'_>, sp: u32, sl: u32, up: u32, ul: u32, pp: u32, pl: u32, timeout: u32| {
            finish(init(&mut c, (sp, sl), (up, ul), (pp, pl), timeout))
        },
    );
    r.func(
        "env",
        "proxy_redis_call",
        |mut c: Caller<'_>, sp: u32, sl: u32, qp: u32, ql: u32, token: u32| {
            finish(call(&mut c, (sp, sl), (qp, ql), token))
        },
    );
}

/// `service` is a cluster name, optionally followed by `?` and `&`-separated options as the
/// Higress SDK appends them: `db=N` selects a database; the SDK's buffering options
/// (`buffer_flush_timeout`, `max_buffer_size_before_flush`) tune Envoy's request batching, which
/// sluice does not do (each query is written as it comes), so they are accepted and unused.
fn init(
    c: &mut Caller<'_>,
    service: (u32, u32),
    username: (u32, u32),
    password: (u32, u32),
    timeout_ms: u32,
) -> HostResult {
    let service = read_string(c, service.0, service.1)?;
    let username = read_string(c, username.0, username.1)?;
    let password = read_string(c, password.0, password.1)?;
    let (cluster, options) = service.split_once('?').unwrap_or((&service, ""));
    let mut database = 0;
    for option in options.split('&').filter(|o| !o.is_empty()) {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key {
            "db" => database = value.parse().map_err(|_| Status::BadArgument)?,
            "buffer_flush_timeout" | "max_buffer_size_before_flush" => {
                value.parse::<u32>().map_err(|_| Status::BadArgument)?;
            }
            _ => return Err(Status::BadArgument.into()),
        }
    }
    if !(c.data().clusters)(cluster) {
        return Err(Status::BadArgument.into());
    }
    let settings = RedisSettings {
        username,
        password,
        database,
        timeout: Duration::from_millis(timeout_ms.into()),
    };
    let state = c.data_mut();
    let key = (state.effective_root(), cluster.to_string());
    // Envoy has no bound; `outbound|PORT||HOST` names are endless, and a plugin setting up a
    // new one per request would grow its VM for good.
    if !state.redis.contains_key(&key) && state.redis.len() >= MAX_REDIS_CLUSTERS {
        return Err(Status::InternalFailure.into());
    }
    state.redis.insert(key, settings);
    Ok(())
}

/// The Redis clusters one VM's root contexts may set up.
const MAX_REDIS_CLUSTERS: usize = 1024;

/// Higress's operation timeout of a cluster before (or without) `proxy_redis_init`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

fn call(c: &mut Caller<'_>, service: (u32, u32), query: (u32, u32), token_ptr: u32) -> HostResult {
    let cluster = read_string(c, service.0, service.1)?;
    let query = read(c, query.0, query.1)?;
    parts(c)?.0.check(token_ptr, 4)?;
    if !(c.data().clusters)(&cluster) || !sluice_abi::resp::is_one_command(&query) {
        return Err(Status::BadArgument.into());
    }
    let state = c.data_mut();
    // A cluster nobody set up is called as Higress's host does before any init: no AUTH,
    // database 0, a 1 s timeout.
    let key = (state.effective_root(), cluster);
    let settings = state.redis.get(&key).cloned().unwrap_or(RedisSettings {
        timeout: DEFAULT_TIMEOUT,
        ..RedisSettings::default()
    });
    let token = state.next_token();
    let (context, root_context) = (state.effective_context, state.effective_root());
    state.effects.push(Effect::Call {
        context,
        root_context,
        token,
        op: CallOp::Redis(RedisCallRequest {
            cluster: key.1,
            settings,
            query,
        }),
    });
    super::write_u32(c, token_ptr, token)?;
    Ok(())
}
