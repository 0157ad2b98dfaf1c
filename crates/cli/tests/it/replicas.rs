//! Replicas sharing state: two `sluice run` processes and one real Redis (Debian's
//! `redis-server`), with a plugin that keeps its limit in Redis through Higress's Redis calls.

use std::io::{Read, Write};

use sluice_test_support::{REDIS_TOOLS, Redis, has_tools, plugin_wasm};

/// The status line's code of one `GET` with its own connection.
fn status(address: &str, path: &str) -> u16 {
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[test]
fn two_replicas_hold_one_redis_limit_and_ride_out_a_redis_restart() {
    if !has_tools(REDIS_TOOLS) {
        return;
    }
    let mut redis = Redis::start(Some("s3cret"));
    let wasm = plugin_wasm("redis_limit");
    let config = format!(
        r#"{{"cluster": "outbound|{}||127.0.0.1", "password": "s3cret", "database": 4,
            "requestsPerWindow": 7, "windowSeconds": 86400, "prefix": "replicas"}}"#,
        redis.port
    );
    let replica = || {
        crate::spawn_run(&[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--workers",
            "2",
            "--plugin",
            wasm.to_str().unwrap(),
            "--plugin-config",
            &config,
        ])
    };
    let (mut first, first_address, first_log) = replica();
    let (mut second, second_address, second_log) = replica();

    // 20 requests, alternately to each replica: 7 pass in all, whichever replica gets them.
    let codes: Vec<u16> = (0..20)
        .map(|i| {
            let address = if i % 2 == 0 {
                &first_address
            } else {
                &second_address
            };
            status(address, &format!("/r{i}"))
        })
        .collect();
    let passed = codes.iter().filter(|c| **c == 200).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert_eq!((passed, limited), (7, 13), "{codes:?}");
    assert_eq!(&codes[..7], &[200; 7], "the first 7 pass: {codes:?}");
    let keys = redis.cli(&["-n", "4", "KEYS", "redis-limit:replicas:*"]);
    assert_eq!(
        redis.cli(&["-n", "4", "GET", keys.lines().next().unwrap_or_default()]),
        "20",
        "one counter in database 4 counts every request: {keys}"
    );

    // Redis goes away: both replicas refuse (the plugin fails closed) and keep serving.
    redis.stop();
    assert_eq!(status(&first_address, "/down"), 503);
    assert_eq!(status(&second_address, "/down"), 503);
    // Back, empty: a new window's count starts on both, without restarting sluice.
    redis.restart();
    assert_eq!(status(&first_address, "/back"), 200);
    assert_eq!(status(&second_address, "/back"), 200);
    let keys = redis.cli(&["-n", "4", "KEYS", "redis-limit:replicas:*"]);
    assert_eq!(
        redis.cli(&["-n", "4", "GET", keys.lines().next().unwrap_or_default()]),
        "2"
    );

    for child in [&mut first, &mut second] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let logs = first_log.all() + &second_log.all();
    assert!(
        logs.contains("redis call failed: cannot connect to 127.0.0.1"),
        "a failed Redis call is logged with its cause:\n{logs}"
    );
}
