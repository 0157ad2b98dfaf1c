//! What a generation's root contexts do outside any request: ticks, queue notifications, and the
//! calls they make, woken by whichever comes first.

use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use sluice_host::{CallAnswer, GrpcEvent};

use crate::calls::Calls;
use crate::client;
use crate::generation::Generation;
use crate::stats::Stats;

/// Ticks, queue notifications and callouts made outside any stream, for one generation's VMs.
/// It ends when the generation is gone (replaced, and its last request finished), and the root
/// contexts' calls still running end with it.
pub(crate) async fn timers(
    generation: Weak<Generation>,
    stats: Arc<Stats>,
    upstreams: Rc<client::Pool>,
) {
    const IDLE_POLL: Duration = Duration::from_millis(20);
    let mut calls: Calls<(usize, u32)> = Calls::new();
    // The root context each running call answers to, by VM and token.
    let mut roots: HashMap<(usize, u32), u32> = HashMap::new();
    loop {
        let Some(generation) = generation.upgrade() else {
            return;
        };
        let pool = generation.pool.clone();
        pool.fire_due_ticks();
        pool.deliver_queue_events();
        stats.plugin_failures(&pool.take_failures());
        for call in pool.take_root_calls() {
            let key = (call.vm, call.token);
            if call.op.starts() {
                roots.insert(key, call.root_context);
            }
            calls.act(key, call.op, &generation.clusters, &upstreams);
        }
        let now = pool.clock().monotonic_nanos();
        let wait = pool.next_tick_nanos().map_or(IDLE_POLL, |due| {
            Duration::from_nanos(due.saturating_sub(now)).min(IDLE_POLL)
        });
        drop(generation);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            ((vm, token), answer) = calls.answer(), if calls.waiting() => {
                let over = matches!(
                    answer,
                    CallAnswer::Http(_) | CallAnswer::Grpc(GrpcEvent::Close { .. })
                );
                let root = if over {
                    roots.remove(&(vm, token))
                } else {
                    roots.get(&(vm, token)).copied()
                };
                if let Some(root_context) = root {
                    pool.call_answer(vm, root_context, token, answer);
                }
            }
        }
    }
}
