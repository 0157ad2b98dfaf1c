//! What one request costs the chain engine, without sockets: a stream through no plugin and
//! through the add-header plugin (request and response header changes, a response body), timed
//! over many streams. Run with `cargo bench -p sluice-filter`; it prints µs per stream.
//! `CHAIN_BENCH_STREAMS=N` changes the count (e.g. a small one to run it under callgrind).

// Test code: a failure is a failed test, so helpers unwrap and panic as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::rc::Rc;
use std::time::Instant;

use sluice_abi::HeaderMap;
use sluice_filter::{PluginSpec, Stream, VmPool};
use sluice_host::{Clock, Engine, EngineOptions, HttpStream, VmConfig};

fn streams() -> u32 {
    std::env::var("CHAIN_BENCH_STREAMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000)
}

fn request() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (":method", "GET"),
        (":path", "/"),
        (":authority", "127.0.0.1:18001"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("x-request-id", "5e3c40ed-79e8-4e65-9760-2b4830da013e"),
    ] {
        headers.add(name, value);
    }
    headers
}

fn response() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (":status", "200"),
        ("server", "nginx"),
        ("content-type", "text/plain"),
        ("content-length", "3"),
    ] {
        headers.add(name, value);
    }
    headers
}

/// Microseconds per stream through `chain`.
fn measure(chain: &Rc<sluice_filter::Chain>) -> f64 {
    let run = |count: u32| {
        for _ in 0..count {
            let mut stream = Stream::new(chain.clone(), HttpStream::default());
            stream.request_headers(request(), true);
            assert!(!stream.take_steps().is_empty());
            stream.response_headers(response(), false);
            stream.response_data(b"ok\n".to_vec(), true);
            assert!(!stream.take_steps().is_empty());
            stream.finish();
        }
    };
    let streams = streams();
    run(streams / 10);
    let started = Instant::now();
    run(streams);
    started.elapsed().as_secs_f64() * 1e6 / f64::from(streams)
}

fn main() {
    let engine = Engine::new(EngineOptions {
        cache_dir: Some(sluice_test_support::cache_dir()),
    })
    .expect("engine");
    let code = engine
        .load_file(&sluice_test_support::plugin_wasm("add_header"))
        .expect("add-header builds and loads");
    let pool = VmPool::new(&engine, Clock::system());
    let empty = Rc::new(pool.chain(Vec::new(), 1 << 20).expect("empty chain"));
    let spec = PluginSpec {
        name: "add-header".into(),
        root_id: "add-header".into(),
        code,
        plugin_configuration:
            br#"{"request": {"set": {"x-a": "1"}}, "response": {"set": {"x-b": "2"}}}"#.to_vec(),
        vm: VmConfig::new("add-header"),
        fail_strategy: sluice_config::FailStrategy::FailClose,
        headers_stop_iteration: false,
    };
    let one = Rc::new(pool.chain(vec![spec], 1 << 20).expect("add-header starts"));
    let (none, plugin) = (measure(&empty), measure(&one));
    println!("chain, no plugin:        {none:.2} µs/stream");
    println!("chain, add-header:       {plugin:.2} µs/stream");
    println!("the plugin's cost:       {:.2} µs/stream", plugin - none);
}
