//! A worker's instance of one config: its plugin VMs, clusters, and what each route runs. In-flight
//! requests keep the generation they started on; new ones take the newest.

use std::rc::Rc;
use std::sync::Arc;

use sluice_config::{Listener, Route};
use sluice_filter::{Chain, ChainError, PluginSpec, VmPool};
use sluice_host::{Clock, VmConfig};

use crate::logging::PluginLogLevels;
use crate::stats::{Stats, Traffic};
use crate::{Clusters, ProxyConfig, cluster_exists};

/// A worker's plugins and routes for one config: in-flight requests keep the generation they
/// started on, new ones take the newest.
pub(crate) struct Generation {
    pub config: Arc<ProxyConfig>,
    pub pool: Rc<VmPool>,
    pub clusters: Rc<Clusters>,
    /// Per listener, what its routes run.
    pub listeners: Vec<ListenerPlan>,
}

/// What one listener's requests run: per route, and for requests no route takes.
pub(crate) struct ListenerPlan {
    pub routes: Vec<RoutePlan>,
    /// On a TCP listener, the plan of every connection.
    pub unrouted: RoutePlan,
    /// Where a TCP listener's connections are counted.
    pub tcp: Arc<crate::stats::TcpTraffic>,
}

impl ListenerPlan {
    /// The plan of route `index`, or of requests no route takes.
    pub fn route(&self, index: Option<usize>) -> &RoutePlan {
        index
            .and_then(|index| self.routes.get(index))
            .unwrap_or(&self.unrouted)
    }
}

/// What the requests of one route run and where they are counted.
pub(crate) struct RoutePlan {
    pub chain: Rc<Chain>,
    /// A plugin of the chain that is unavailable and not FAIL_OPEN: the route's requests are
    /// refused with 503 while it is.
    pub blocked_by: Option<Rc<str>>,
    pub traffic: Arc<Traffic>,
    /// The route's cluster; none for requests no route takes.
    pub cluster: Option<Arc<Traffic>>,
}

/// A generation ends when it is replaced and its last request finished, or when the worker
/// stops: its plugins' root contexts are torn down then, as Envoy does when a configuration
/// goes away.
impl Drop for Generation {
    fn drop(&mut self) {
        self.pool.tear_down();
    }
}

impl Generation {
    /// Starts the plugins of `config` (one VM per plugin code and VM config, one root context per
    /// configuration) and builds every route's chain. A `canary` keeps what plugins log (for its
    /// error messages) and gets its own shared data and queues, so a refused config leaves no
    /// trace in the running VMs.
    pub fn build(
        config: Arc<ProxyConfig>,
        clock: Clock,
        canary: bool,
        log_levels: &PluginLogLevels,
        stats: Option<&Stats>,
    ) -> Result<Self, ChainError> {
        let pool = VmPool::new(&config.engine, clock.clone());
        let node = sluice_filter::node_attribute(&config.config.node);
        let chain_for = |listener: &Listener, route: Option<&Route>| {
            let specs = config
                .config
                .chain(listener, route)
                .into_iter()
                .map(|entry| {
                    let (plugin, loaded) = (entry.plugin, &config.plugins[entry.index]);
                    let check = config.clone();
                    let allowed = plugin.capabilities.clusters.clone();
                    let name = plugin.name.clone();
                    let callable: sluice_host::ClusterCheck = Arc::new(move |cluster: &str| {
                        let permitted = allowed.as_ref().is_none_or(|set| set.contains(cluster));
                        if !permitted {
                            tracing::warn!(plugin = %name, "call to cluster `{cluster}` denied: not in the plugin's allowed clusters");
                        }
                        permitted && cluster_exists(&check.config, cluster)
                    });
                    PluginSpec {
                        name: plugin.name.clone(),
                        root_id: plugin.root_id.clone(),
                        code: loaded.code.clone(),
                        plugin_configuration: sluice_config::plugin_configuration_bytes(
                            entry.configuration,
                        ),
                        vm: VmConfig {
                            env: loaded.env.clone(),
                            limits: loaded.limits.clone(),
                            clock: clock.clone(),
                            clusters: callable,
                            capture_logs: canary,
                            isolated: canary,
                            callback_time: stats.map(|s| s.callback_time(&plugin.name)),
                            log_level: log_levels.of(&plugin.name),
                            node: node.clone(),
                            ..VmConfig::new(plugin.name.clone())
                        },
                        fail_strategy: plugin.fail_strategy,
                        headers_stop_iteration: plugin.capabilities.headers_stop_iteration,
                    }
                })
                .collect();
            pool.chain(specs, config.buffer_limit)
                .map(|chain| Rc::new(chain.with_failure_body(config.config.failure_body)))
        };
        let blocked_for = |listener: &Listener, route: Option<&Route>| -> Option<Rc<str>> {
            config
                .unavailable
                .iter()
                .find(|u| u.blocks() && u.plugin.runs_on(listener, route))
                .map(|u| u.plugin.name.as_str().into())
        };
        // A canary's requests are never counted.
        let counted = |count: &dyn Fn(&Stats) -> Arc<Traffic>| stats.map(count).unwrap_or_default();
        let mut listeners = Vec::new();
        for listener in &config.config.listeners {
            let mut routes = Vec::new();
            for route in &listener.routes {
                routes.push(RoutePlan {
                    chain: chain_for(listener, Some(route))?,
                    blocked_by: blocked_for(listener, Some(route)),
                    traffic: counted(&|s| s.route(&listener.name, &route.name)),
                    cluster: Some(counted(&|s| s.cluster(&route.cluster))),
                });
            }
            let unrouted = RoutePlan {
                chain: chain_for(listener, None)?,
                blocked_by: blocked_for(listener, None),
                traffic: counted(&|s| s.route(&listener.name, crate::stats::NO_ROUTE)),
                cluster: None,
            };
            let tcp = stats.map(|s| s.tcp(&listener.name)).unwrap_or_default();
            listeners.push(ListenerPlan {
                routes,
                unrouted,
                tcp,
            });
        }
        Ok(Self {
            clusters: Rc::new(Clusters::new(&config)),
            config,
            pool,
            listeners,
        })
    }
}
