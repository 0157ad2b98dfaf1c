//! Process-wide state shared by every VM of an engine: shared data with compare-and-swap and
//! shared queues, both scoped by vm_id as in Envoy.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_abi::Status;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps half-updated (every update is one
    // insert or push), so a poisoned lock is still consistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bounds on the state plugins share through an engine. Envoy has none: a plugin that writes a
/// new key, registers a queue or names a metric per request would grow the proxy without end.
/// The defaults are [`MAX_SHARED_DATA_BYTES`], [`MAX_QUEUES`], [`MAX_QUEUE_ITEMS`],
/// [`MAX_QUEUE_BYTES`] and [`crate::metrics::MAX_METRICS`]; a config may set others, which apply
/// from then on (what is held already stays).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedLimits {
    /// Bytes (keys and values) the shared data of one vm_id may hold.
    pub shared_data_bytes: usize,
    /// Queues one vm_id may register.
    pub queues: usize,
    /// Items one queue holds; an enqueue beyond it drops the oldest.
    pub queue_items: usize,
    /// Bytes the queues of one vm_id hold together, their names included.
    pub queue_bytes: usize,
    /// Distinct metrics (name and type) of the process.
    pub metrics: usize,
}

impl Default for SharedLimits {
    fn default() -> Self {
        Self {
            shared_data_bytes: MAX_SHARED_DATA_BYTES,
            queues: MAX_QUEUES,
            queue_items: MAX_QUEUE_ITEMS,
            queue_bytes: MAX_QUEUE_BYTES,
            metrics: crate::metrics::MAX_METRICS,
        }
    }
}

/// Key-value store with optimistic concurrency: every write gets a fresh CAS token.
#[derive(Default)]
pub struct SharedData {
    inner: Mutex<SharedDataInner>,
}

struct SharedDataInner {
    next_cas: u32,
    entries: HashMap<(String, Vec<u8>), (Vec<u8>, u32)>,
    /// Bytes of keys and values held per vm_id.
    bytes: HashMap<String, usize>,
    /// [`SharedLimits::shared_data_bytes`].
    limit: usize,
}

impl Default for SharedDataInner {
    fn default() -> Self {
        Self {
            next_cas: 0,
            entries: HashMap::new(),
            bytes: HashMap::new(),
            limit: MAX_SHARED_DATA_BYTES,
        }
    }
}

/// The most bytes (keys and values) the shared data of one vm_id may hold by default.
pub const MAX_SHARED_DATA_BYTES: usize = 64 << 20;

impl SharedData {
    /// The bound on one vm_id's bytes, from now on.
    pub fn set_limit(&self, bytes: usize) {
        lock(&self.inner).limit = bytes;
    }

    /// The bound on one vm_id's bytes.
    pub fn limit(&self) -> usize {
        lock(&self.inner).limit
    }

    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        lock(&self.inner)
            .entries
            .get(&(vm_id.to_string(), key.to_vec()))
            .cloned()
    }

    /// Sets `key`; a non-zero `cas` must equal the current token (a missing key accepts any).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut inner = lock(&self.inner);
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        let token = inner.next_cas;
        let slot = (vm_id.to_string(), key.to_vec());
        let old = match inner.entries.get(&slot) {
            Some((_, current)) if cas != 0 && cas != *current => return Err(Status::CasMismatch),
            Some((old, _)) => key.len() + old.len(),
            None => 0,
        };
        let held = inner
            .bytes
            .get(vm_id)
            .copied()
            .unwrap_or(0)
            .saturating_sub(old);
        let new = key.len() + value.len();
        if held + new > inner.limit {
            return Err(Status::InternalFailure);
        }
        inner.bytes.insert(vm_id.to_string(), held + new);
        inner.entries.insert(slot, (value.to_vec(), token));
        Ok(())
    }
}

/// Where `proxy_on_queue_ready` for a queue must be delivered: the VM that registered it last, on
/// its own thread. The engine only records the event; the VM's owner drains it.
#[derive(Clone, Default)]
pub struct QueueInbox {
    events: Arc<Mutex<Vec<(u32, u32)>>>,
    waker: Arc<Mutex<Option<Arc<dyn Fn() + Send + Sync>>>>,
}

impl QueueInbox {
    fn push(&self, root_context: u32, queue_id: u32) {
        {
            let mut events = lock(&self.events);
            // One notification per enqueue, as Envoy posts them, up to as many as a queue holds
            // items: past that the plugin has more to read than notices to get, and a plugin
            // enqueuing in a loop would grow the inbox without end before its owner drains it.
            if events.len() >= MAX_QUEUE_ITEMS {
                return;
            }
            events.push((root_context, queue_id));
        }
        if let Some(wake) = lock(&self.waker).as_ref() {
            wake();
        }
    }

    /// Takes the pending `(root_context, queue_id)` notifications.
    pub fn take(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// Called (from any thread) after each enqueue to a queue owned by this inbox.
    pub fn set_waker(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.waker) = Some(wake);
    }
}

struct Queue {
    vm_id: String,
    items: VecDeque<Vec<u8>>,
    owner: QueueInbox,
    owner_root: u32,
}

/// Shared queues: registered by one VM, enqueued to by any.
#[derive(Default)]
pub struct SharedQueues {
    queues: Mutex<Queues>,
}

struct Queues {
    /// A queue's id is its index plus one.
    list: Vec<Queue>,
    by_name: HashMap<(String, Vec<u8>), usize>,
    /// Queues registered, and bytes their items hold, per vm_id.
    per_vm: HashMap<String, (usize, usize)>,
    limits: QueueLimits,
}

/// The bounds of [`SharedLimits`] on queues.
#[derive(Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Queues per vm_id.
    pub queues: usize,
    /// Items per queue.
    pub items: usize,
    /// Bytes per vm_id.
    pub bytes: usize,
}

impl Default for Queues {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            by_name: HashMap::new(),
            per_vm: HashMap::new(),
            limits: QueueLimits {
                queues: MAX_QUEUES,
                items: MAX_QUEUE_ITEMS,
                bytes: MAX_QUEUE_BYTES,
            },
        }
    }
}

/// Default bound on the items one queue holds: an enqueue beyond it drops the oldest item, so a
/// plugin that never dequeues cannot grow the process without limit.
pub const MAX_QUEUE_ITEMS: usize = 10_000;
/// Default bound on the bytes the queues of one vm_id hold together, their names included: an
/// enqueue beyond it drops the oldest items of its queue, or is refused when that queue has none
/// left to drop; a new queue whose name does not fit is refused.
pub const MAX_QUEUE_BYTES: usize = 64 << 20;
/// Default bound on the queues of one vm_id.
pub const MAX_QUEUES: usize = 1024;

impl SharedQueues {
    /// The bounds of `limits` on queues, from now on.
    pub fn set_limits(&self, limits: &SharedLimits) {
        lock(&self.queues).limits = QueueLimits {
            queues: limits.queues,
            items: limits.queue_items,
            bytes: limits.queue_bytes,
        };
    }

    /// The bounds on queues in force.
    pub(crate) fn limits(&self) -> QueueLimits {
        lock(&self.queues).limits
    }

    /// The queue's id, or INTERNAL_FAILURE when the vm_id has as many queues as it may.
    pub fn register(
        &self,
        vm_id: &str,
        name: &[u8],
        owner: &QueueInbox,
        owner_root: u32,
    ) -> Result<u32, Status> {
        let mut queues = lock(&self.queues);
        let key = (vm_id.to_string(), name.to_vec());
        if let Some(&index) = queues.by_name.get(&key) {
            let queue = &mut queues.list[index];
            queue.owner = owner.clone();
            queue.owner_root = owner_root;
            return Ok(index as u32 + 1);
        }
        let limits = queues.limits;
        let (count, held) = queues.per_vm.entry(key.0.clone()).or_default();
        if *count >= limits.queues || *held + name.len() > limits.bytes {
            return Err(Status::InternalFailure);
        }
        *count += 1;
        *held += name.len();
        let index = queues.list.len();
        queues.list.push(Queue {
            vm_id: key.0.clone(),
            items: VecDeque::new(),
            owner: owner.clone(),
            owner_root,
        });
        queues.by_name.insert(key, index);
        Ok(index as u32 + 1)
    }

    pub fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        lock(&self.queues)
            .by_name
            .get(&(vm_id.to_string(), name.to_vec()))
            .map(|index| *index as u32 + 1)
    }

    pub fn enqueue(&self, id: u32, value: &[u8]) -> Result<(), Status> {
        let mut queues = lock(&self.queues);
        let Queues {
            list,
            per_vm,
            limits,
            ..
        } = &mut *queues;
        let queue = list
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or(Status::NotFound)?;
        let (_, held) = per_vm.entry(queue.vm_id.clone()).or_default();
        while queue.items.len() >= limits.items || *held + value.len() > limits.bytes {
            let Some(oldest) = queue.items.pop_front() else {
                return Err(Status::InternalFailure);
            };
            *held -= oldest.len();
        }
        *held += value.len();
        queue.items.push_back(value.to_vec());
        let (owner, root) = (queue.owner.clone(), queue.owner_root);
        drop(queues);
        owner.push(root, id);
        Ok(())
    }

    pub fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut queues = lock(&self.queues);
        let Queues { list, per_vm, .. } = &mut *queues;
        let queue = list
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or(Status::NotFound)?;
        let item = queue.items.pop_front().ok_or(Status::Empty)?;
        if let Some((_, held)) = per_vm.get_mut(&queue.vm_id) {
            *held -= item.len();
        }
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_of_a_vm_id_is_bounded_and_rewrites_count_once() {
        let data = SharedData::default();
        let big = vec![0u8; MAX_SHARED_DATA_BYTES / 4];
        for key in [b"a", b"b", b"c"] {
            data.set("vm", key, &big, 0).unwrap();
        }
        // Rewriting a key replaces its bytes rather than adding to them.
        for _ in 0..10 {
            data.set("vm", b"a", &big, 0).unwrap();
        }
        assert_eq!(data.set("vm", b"d", &big, 0), Err(Status::InternalFailure));
        assert_eq!(data.get("vm", b"d"), None);
        data.set("other-vm", b"d", &big, 0).unwrap();
        data.set("vm", b"a", b"small", 0).unwrap();
        data.set("vm", b"d", &big, 0).unwrap();
    }

    #[test]
    fn queues_are_bounded_in_number_items_and_bytes() {
        let queues = SharedQueues::default();
        let inbox = QueueInbox::default();
        for i in 0..MAX_QUEUES {
            let name = format!("q{i}");
            assert_eq!(
                queues.register("vm", name.as_bytes(), &inbox, 1),
                Ok(i as u32 + 1)
            );
        }
        assert_eq!(
            queues.register("vm", b"one more", &inbox, 1),
            Err(Status::InternalFailure)
        );
        assert_eq!(
            queues.register("vm", b"q7", &inbox, 1),
            Ok(8),
            "an existing queue"
        );
        assert_eq!(queues.resolve("vm", b"q7"), Some(8));
        assert!(queues.register("other-vm", b"q", &inbox, 1).is_ok());

        // Four fit with the queue names (about 4 KiB) counted.
        let big = vec![0u8; MAX_QUEUE_BYTES / 4 - 2048];
        for _ in 0..10 {
            queues.enqueue(1, &big).unwrap();
        }
        let held = (0..).take_while(|_| queues.dequeue(1).is_ok()).count();
        assert_eq!(held, 4, "the oldest items went to make room");
        assert_eq!(
            queues.enqueue(1, &vec![0u8; MAX_QUEUE_BYTES + 1]),
            Err(Status::InternalFailure)
        );
        // The bound is the vm_id's: a queue with nothing to drop cannot take another's room.
        for _ in 0..4 {
            queues.enqueue(1, &big).unwrap();
        }
        assert_eq!(queues.enqueue(3, &big), Err(Status::InternalFailure));
        queues.dequeue(1).unwrap();
        queues.enqueue(3, &big).unwrap();
        while queues.dequeue(1).is_ok() {}
        while queues.dequeue(3).is_ok() {}
        for _ in 0..MAX_QUEUE_ITEMS + 5 {
            queues.enqueue(2, b"x").unwrap();
        }
        let held = (0..).take_while(|_| queues.dequeue(2).is_ok()).count();
        assert_eq!(held, MAX_QUEUE_ITEMS);
    }

    #[test]
    fn bounds_set_by_a_config_apply_from_then_on() {
        let data = SharedData::default();
        data.set("vm", b"key", b"0123456789", 0).unwrap();
        data.set_limit(8);
        assert_eq!(
            data.set("vm", b"k", b"123456789", 0),
            Err(Status::InternalFailure)
        );
        assert_eq!(
            data.get("vm", b"key").map(|(v, _)| v),
            Some(b"0123456789".to_vec())
        );
        data.set_limit(64);
        data.set("vm", b"k", b"123456789", 0).unwrap();

        let queues = SharedQueues::default();
        let inbox = QueueInbox::default();
        queues.set_limits(&SharedLimits {
            queues: 2,
            queue_items: 3,
            queue_bytes: 1024,
            ..SharedLimits::default()
        });
        assert_eq!(queues.register("vm", b"a", &inbox, 1), Ok(1));
        assert_eq!(queues.register("vm", b"b", &inbox, 1), Ok(2));
        assert_eq!(
            queues.register("vm", b"c", &inbox, 1),
            Err(Status::InternalFailure)
        );
        for item in [b"1", b"2", b"3", b"4"] {
            queues.enqueue(1, item).unwrap();
        }
        assert_eq!(
            queues.dequeue(1),
            Ok(b"2".to_vec()),
            "three kept, the oldest dropped"
        );
        assert_eq!(
            queues.enqueue(2, &[0u8; 1024]),
            Err(Status::InternalFailure),
            "past the vm_id's bytes"
        );
    }
}
