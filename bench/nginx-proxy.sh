#!/usr/bin/env bash
# Runs nginx as a reverse proxy with bench/nginx-proxy.conf (a candidate of bench/run.sh).
set -euo pipefail
prefix=${TMPDIR:-/tmp}/sluice-nginx-proxy
mkdir -p "$prefix"
exec nginx -p "$prefix/" -c "$(cd "$(dirname "$0")" && pwd)/nginx-proxy.conf" -e "$prefix/error.log"
