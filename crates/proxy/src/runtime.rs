//! What the connections of one worker thread share: the current generation, the counters, the
//! plugin log levels, the access log and the upstream connection pool.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::client;
use crate::generation::Generation;
use crate::logging::PluginLogLevels;
use crate::stats::Stats;

/// What every connection of a worker shares.
pub(crate) struct WorkerState {
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    pub log_levels: Arc<PluginLogLevels>,
    pub generation: RefCell<Rc<Generation>>,
    pub stats: Arc<Stats>,
    /// Idle keep-alive connections to upstream endpoints; they outlive config generations.
    pub upstreams: Rc<client::Pool>,
}
