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

/// Writes a ConfigMap volume's next version as the kubelet does: the files in a new directory,
/// a `..data_tmp` symlink to it renamed over `..data` (atomically), the old directory removed.
/// The first version also makes the top-level symlink `sluice.yaml -> ..data/sluice.yaml`.
fn configmap_update(volume: &std::path::Path, version: u32, text: &str) {
    use std::os::unix::fs::symlink;
    let dir = format!("..2026_12_05_v{version}");
    std::fs::create_dir(volume.join(&dir)).unwrap();
    std::fs::write(volume.join(&dir).join("sluice.yaml"), text).unwrap();
    symlink(&dir, volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    if version == 1 {
        symlink("..data/sluice.yaml", volume.join("sluice.yaml")).unwrap();
    } else {
        std::fs::remove_dir_all(volume.join(format!("..2026_12_05_v{}", version - 1))).unwrap();
    }
}

#[test]
fn a_watched_config_follows_each_configmap_update() {
    let volume = tempfile::tempdir().unwrap();
    let wasm = plugin_wasm("add_header");
    let text = |version: u32| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: headers}}\nspec:\n  url: {}\n  pluginConfig: {{response: {{set: {{x-version: \"{version}\"}}}}}}\n",
            wasm.display()
        )
    };
    configmap_update(volume.path(), 1, &text(1));
    let file = volume.path().join("sluice.yaml");
    let (mut child, address, stderr_log) = crate::spawn_run(&[
        "--config",
        file.to_str().unwrap(),
        "--watch",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--workers",
        "1",
    ]);
    let version = || crate::response_header(&address, "x-version");
    assert_eq!(version().as_deref(), Some("1"));
    // Twice: after the first update the file resolves into another directory.
    for next in [2, 3] {
        configmap_update(volume.path(), next, &text(next));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while version() != Some(next.to_string()) {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no reload after ConfigMap update {next}:\n{}",
                    stderr_log.all()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
