#!/usr/bin/env python3
"""Higress plugins in sluice: a 6 MB Go 1.24 module next to the Rust header plugin, and the cost
of a Redis call per request.

    python3 bench/higress.py     # needs target/release/sluice, plugins built, wrk, redis-server

Three chains, each alone in front of the echo upstream, on one worker pinned to CPU 1 (wrk, and
Redis, on CPU 0):
  - rust:  plugins/add-header (Rust SDK, ~150 KB) setting one request header;
  - go:    Higress's transformer 2.0.0 (Go 1.24, 6.5 MB, from PyPI gpustack-higress-plugins)
           adding one request header;
  - redis: plugins/redis-limit, one EVAL against a real Redis per request (never over its limit).
For each: the first answer after start with an empty module cache (compile included) and with a
warm one (the compiled module reused), the plugin's instance memory from /plugins, then wrk
(1 thread, 8 connections, DURATION seconds) for requests/s, mean latency and the proxy's CPU
microseconds per request (from /proc). Quote ratios from one run: the machine is shared.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLUICE = os.path.join(ROOT, "target/release/sluice")
PLUGINS = os.path.join(ROOT, "plugins/target/wasm32-wasip1/release")
DURATION = int(os.environ.get("DURATION", "5"))
PORT, ADMIN, REDIS_PORT = 18201, 18202, 18279
PACKAGE = os.path.join(
    ROOT,
    "target/test-packages/gpustack-higress-plugins-0.5.1/gpustack_higress_plugins/plugins",
)


def higress_module(name):
    if not os.path.isdir(PACKAGE):
        sys.exit("run `cargo test -p sluice-proxy --test it higress::` once first: it fetches the package")
    plugin = os.path.join(PACKAGE, name)
    return os.path.join(plugin, os.listdir(plugin)[0], "plugin.wasm")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(url, timeout=1.0):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.status, answer.read()


def start(wasm, config, cache):
    env = dict(os.environ, SLUICE_CACHE_DIR=cache, SLUICE_LOG="warn")
    begin = time.monotonic()
    proxy = subprocess.Popen(
        ["taskset", "-c", "1", SLUICE, "run", "--listen", f"127.0.0.1:{PORT}",
         "--admin", f"127.0.0.1:{ADMIN}", "--workers", "1", "--plugin", wasm,
         "--plugin-config", config],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = begin + 120
    while True:
        try:
            status, _ = get(f"http://127.0.0.1:{PORT}/first")
            if status == 200:
                return proxy, time.monotonic() - begin
        except OSError:
            pass
        if time.monotonic() > deadline or proxy.poll() is not None:
            proxy.kill()
            sys.exit(f"sluice did not serve with {wasm}")
        time.sleep(0.005)


def stop(proxy):
    proxy.terminate()
    proxy.wait(timeout=10)


def load(proxy):
    before = cpu_seconds(proxy.pid)
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c8", f"-d{DURATION}s",
         f"http://127.0.0.1:{PORT}/bench"],
        capture_output=True, text=True, check=True,
    ).stdout
    cpu = cpu_seconds(proxy.pid) - before
    requests = int(out.split(" requests in ")[0].split()[-1])
    latency = out.split("Latency")[1].split()[0]
    non_2xx = "Non-2xx" in out
    return requests, cpu, latency, non_2xx


def main():
    redis = subprocess.Popen(
        ["taskset", "-c", "0", "redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    chains = [
        ("rust", os.path.join(PLUGINS, "add_header.wasm"),
         '{"request": {"set": {"x-bench": "1"}}}'),
        ("go", higress_module("transformer"),
         '{"reqRules": [{"operate": "add", "headers": [{"key": "x-bench", "value": "1"}]}]}'),
        ("redis", os.path.join(PLUGINS, "redis_limit.wasm"),
         json.dumps({"cluster": f"outbound|{REDIS_PORT}||127.0.0.1",
                     "requestsPerWindow": 1 << 60, "windowSeconds": 3600})),
    ]
    results = {}
    try:
        for name, wasm, config in chains:
            cache = tempfile.mkdtemp(prefix="sluice-bench-cache-")
            proxy, cold = start(wasm, config, cache)
            stop(proxy)
            proxy, warm = start(wasm, config, cache)
            _, body = get(f"http://127.0.0.1:{ADMIN}/plugins")
            listed = json.loads(body)
            listed = listed if isinstance(listed, list) else listed.get("plugins", [])
            memory = sum(i.get("memoryBytes", 0) for p in listed for i in p.get("instances", []))
            requests, cpu, latency, non_2xx = load(proxy)
            stop(proxy)
            shutil.rmtree(cache, ignore_errors=True)
            results[name] = dict(
                size=os.path.getsize(wasm), cold=cold, warm=warm, memory=memory,
                rps=requests / DURATION, cpu_us=cpu / requests * 1e6, latency=latency,
                non_2xx=non_2xx,
            )
            r = results[name]
            print(f"{name:5}  module {r['size'] / 1e6:5.2f} MB  first answer: cold {cold * 1000:7.1f} ms,"
                  f" warm {warm * 1000:6.1f} ms  instance memory {memory / 1e6:6.1f} MB"
                  f"  {r['rps']:8.0f} req/s  {r['cpu_us']:6.1f} µs CPU/req  latency {latency}"
                  f"{'  (non-2xx answers!)' if non_2xx else ''}")
    finally:
        redis.kill()
    rust, go, red = results["rust"], results["go"], results["redis"]
    print(f"go / rust:    first answer cold {go['cold'] / rust['cold']:.1f}x, warm {go['warm'] / rust['warm']:.1f}x;"
          f" CPU per request {go['cpu_us'] / rust['cpu_us']:.2f}x")
    print(f"redis - rust: {red['cpu_us'] - rust['cpu_us']:.1f} µs CPU per request for one Redis call"
          f" ({red['cpu_us'] / rust['cpu_us']:.2f}x); requests/s {red['rps'] / rust['rps']:.2f}x")


if __name__ == "__main__":
    main()
