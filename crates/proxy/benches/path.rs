//! What one request costs the proxy path, next to `crates/filter/benches/chain.rs` (the chain
//! engine alone): a real `sluice_proxy` with one worker on 127.0.0.1, in front of the built-in
//! echo upstream and of an origin on a real socket (small and 64 KiB answers), with no plugin
//! and with the add-header plugin, driven by keep-alive HTTP/1.1 clients on threads of this
//! process. It prints the request rate and the CPU time of the worker
//! thread per request (from /proc), so the cost of the path around the plugin shows apart from
//! the clients'. Run with `cargo bench -p sluice-proxy`; `PATH_BENCH_REQUESTS=N` changes the count.
//! Use `bench/run.sh` (real Envoy and nginx side by side) for claims; this is for quick A/B work.

// Test code: a failure is a failed test, so helpers unwrap and panic as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Instant;

use sluice_config::{Config, FailStrategy, Plugin};
use sluice_host::{Engine, EngineOptions, Limits};
use sluice_proxy::Source;

fn requests() -> u32 {
    std::env::var("PATH_BENCH_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40_000)
}

/// The CPU time (user + system) of this process's thread named `name`, in clock ticks.
fn thread_ticks(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the `(comm)`: state is the 3rd field; utime and stime the 14th and 15th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    panic!("no thread named {name}");
}

/// Keep-alive connections the requests are spread over, each on a thread of its own.
const CONNECTIONS: u32 = 8;

/// `count` GET requests over one keep-alive connection, each answer read in full.
fn client(address: std::net::SocketAddr, count: u32) {
    let socket = std::net::TcpStream::connect(address).unwrap();
    socket.set_nodelay(true).unwrap();
    let mut writer = socket.try_clone().unwrap();
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    for _ in 0..count {
        writer
            .write_all(b"GET /bench HTTP/1.1\r\nhost: bench\r\nuser-agent: path-bench\r\n\r\n")
            .unwrap();
        let mut length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
    }
}

/// An origin on 127.0.0.1 that answers every request head on a keep-alive connection with
/// `body_bytes` bytes, one thread per connection; returns its `HOST:PORT`.
fn origin(body_bytes: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut answer =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {body_bytes}\r\n\r\n").into_bytes();
    answer.resize(answer.len() + body_bytes, b'x');
    let answer: &'static [u8] = answer.leak();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let socket = socket.unwrap();
            std::thread::spawn(move || {
                socket.set_nodelay(true).unwrap();
                let mut writer = socket.try_clone().unwrap();
                let mut reader = BufReader::new(socket);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            if writer.write_all(answer).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    address
}

fn run(label: &str, upstream: Option<String>, plugins: Vec<Plugin>) {
    let mut config = Config::single_route("127.0.0.1:0".parse().unwrap(), upstream, None);
    config.plugins = plugins;
    config.workers = Some(1);
    let engine = Engine::new(EngineOptions {
        cache_dir: Some(sluice_test_support::cache_dir()),
    })
    .unwrap();
    let proxy = sluice_proxy::start(
        Source {
            file: None,
            base: config,
            limits: Limits::default(),
            buffer_limit: sluice_filter::DEFAULT_BUFFER_LIMIT,
            plugin_log_level: sluice_abi::LogLevel::Warn,
            fetch: sluice_fetch::Options::new(sluice_test_support::cache_dir().join("modules")),
        },
        engine,
    )
    .unwrap();
    let address = proxy.address;
    // Warm up: compiled code, connection pools, allocator.
    client(address, 1000);
    let n = requests();
    let ticks = thread_ticks("sluice-worker-0");
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| std::thread::spawn(move || client(address, n / CONNECTIONS)))
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let wall = started.elapsed();
    let worker_ticks = thread_ticks("sluice-worker-0") - ticks;
    let done = f64::from(n / CONNECTIONS * CONNECTIONS);
    // Clock ticks are 1/100 s on Linux.
    println!(
        "{label:<20} {:>8.0} requests/s over {CONNECTIONS} connections, {:>6.2} µs worker CPU per request ({done} requests)",
        done / wall.as_secs_f64(),
        worker_ticks as f64 * 10_000.0 / done,
    );
    proxy.stop();
}

fn main() {
    let small = origin(17);
    let large = origin(64 << 10);
    run("echo, no plugin", None, Vec::new());
    let wasm = sluice_test_support::plugin_wasm("add_header");
    let configuration = serde_json::json!({
        "request": {"set": {"x-hello": "bench"}},
        "response": {"set": {"x-plugin": "add-header"}}
    });
    let add_header = || {
        vec![Plugin::local(
            "add-header".into(),
            wasm.display().to_string(),
            Some(configuration.clone()),
            FailStrategy::FailClose,
        )]
    };
    run("echo, add-header", None, add_header());
    run("origin, no plugin", Some(small.clone()), Vec::new());
    run("origin, add-header", Some(small), add_header());
    run("origin 64K, no plugin", Some(large.clone()), Vec::new());
    run("origin 64K, add-hdr", Some(large), add_header());
}
