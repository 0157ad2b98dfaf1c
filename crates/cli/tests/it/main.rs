//! Black-box runs of the `sluice` binary: exit codes and what users read.

// Test code: a failure is a failed test, so helpers unwrap and panic as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod docs;
mod replicas;

use std::path::Path;
use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    sluice_test_support::plugins_dir();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(sluice_test_support::repo_root())
        .env("SLUICE_CACHE_DIR", sluice_test_support::cache_dir())
        .env_remove("SLUICE_LOG")
        .output()
        .expect("running sluice")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success, showing both streams otherwise.
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Asserts the exit code and that `text` (stdout or stderr) says `needle`.
fn assert_exit(output: &Output, code: i32, text: String, needle: &str) {
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

/// Starts `sluice run` with `args`, returns it, the address from its `try: curl` line and its
/// stderr.
fn spawn_run(args: &[&str]) -> (std::process::Child, String, Stderr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.arg("run").args(args);
    spawn_serving(command)
}

/// What a running `sluice run` writes to stderr, read as it comes (so that the pipe never fills).
struct Stderr(std::thread::JoinHandle<String>);

impl Stderr {
    /// Everything it wrote, once it has exited.
    fn all(self) -> String {
        self.0.join().unwrap()
    }
}

/// Starts `command` (a `sluice run`), returns it, the address from its `try: curl` line (a log
/// line on stderr) and its stderr.
fn spawn_serving(mut command: Command) -> (std::process::Child, String, Stderr) {
    use std::io::{BufRead, BufReader};

    let mut child = command
        .env("SLUICE_CACHE_DIR", sluice_test_support::cache_dir())
        .env_remove("SLUICE_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting sluice run");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (found, address) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if let Some((_, rest)) = line.split_once("try: curl -i http://") {
                let _ = found.send(rest.split('/').next().unwrap_or_default().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let Ok(address) = address.recv_timeout(std::time::Duration::from_secs(120)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no `try: curl` line; stderr:\n{}", reader.join().unwrap());
    };
    (child, address, Stderr(reader))
}

#[test]
fn test_passes_every_plugin_scenario() {
    let mut args = vec!["test".to_string()];
    args.extend(
        sluice_test_support::plugin_scenarios()
            .iter()
            .map(|p| p.display().to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = sluice(&args);
    assert_success(&output);
    assert!(
        stdout(&output).contains(&format!("scenarios: {} passed, 0 failed", args.len() - 1)),
        "{}",
        stdout(&output)
    );
}

#[test]
fn test_reports_a_wrong_expectation_with_a_diff_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("wrong.yaml");
    let wasm = sluice_test_support::plugin_wasm("auth");
    std::fs::write(
        &scenario,
        format!(
            "plugins:\n  - name: auth\n    wasm: {}\n    pluginConfig: {{tokens: {{t: alice}}}}\nsteps:\n  - name: no token\n    request: {{path: /}}\n    expect:\n      response: {{status: 403}}\n",
            wasm.display()
        ),
    )
    .unwrap();
    let path = scenario.display().to_string();
    let output = sluice(&["test", &path]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(
        text.contains("step 1 \"no token\": expect.response.status"),
        "{text}"
    );
    assert!(
        text.contains("expected: \"403\"") && text.contains("actual:   \"401\""),
        "{text}"
    );

    let output = sluice(&["test", "--json", &path]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["failed"], 1);
    assert_eq!(
        report["reports"][0]["mismatches"][0]["field"],
        "expect.response.status"
    );
}

#[test]
fn test_exits_2_on_a_file_it_cannot_run() {
    let output = sluice(&["test", "no/such/scenario.yaml"]);
    assert_exit(
        &output,
        2,
        stdout(&output),
        "no/such/scenario.yaml: cannot read",
    );
}

#[test]
fn inspect_describes_a_plugin() {
    let wasm = sluice_test_support::plugin_wasm("add_header")
        .display()
        .to_string();
    let output = sluice(&["inspect", &wasm, "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["abi"], "0.2.1");
    assert_eq!(info["loadable"], true);
    assert_eq!(info["allocator"], "proxy_on_memory_allocate");
    assert!(info["sdk"].as_str().unwrap().starts_with("Rust"));
    assert_eq!(info["sha256"].as_str().unwrap().len(), 64);
    assert!(
        info["callbacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "proxy_on_request_headers")
    );

    let text = stdout(&sluice(&["inspect", &wasm]));
    assert!(
        text.contains("abi:          0.2.1") && text.contains("loadable:     yes"),
        "{text}"
    );
}

#[test]
fn inspect_names_what_makes_a_module_unloadable() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("missing_import.wasm");
    std::fs::write(&module, sluice_test_support::wat_fixture("missing_import")).unwrap();
    let output = sluice(&["inspect", &module.display().to_string()]);
    assert_exit(&output, 1, stdout(&output), "env::proxy_does_not_exist");

    let not_wasm = dir.path().join("notes.txt");
    std::fs::write(&not_wasm, "hello").unwrap();
    let output = sluice(&["inspect", &not_wasm.display().to_string()]);
    assert_exit(&output, 2, stderr(&output), "magic bytes");
}

#[test]
fn build_compiles_a_plugin_project_and_inspects_it() {
    let project = sluice_test_support::repo_root().join("plugins/add-header");
    let output = sluice(&["build", &project.display().to_string()]);
    assert_success(&output);
    assert!(
        stdout(&output).contains("add_header.wasm")
            && stdout(&output).contains("loadable:     yes"),
        "{}",
        stdout(&output)
    );

    let output = sluice(&["build", Path::new("crates/cli/tests").to_str().unwrap()]);
    assert_exit(&output, 2, stderr(&output), "no Cargo.toml");
}

#[test]
fn run_serves_a_plugin_in_front_of_the_echo_upstream_until_interrupted() {
    use std::io::{Read, Write};

    let wasm = sluice_test_support::plugin_wasm("add_header")
        .display()
        .to_string();
    let (mut child, address, stderr_log) = spawn_run(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--plugin",
        &wasm,
        "--plugin-config",
        r#"{"response": {"set": {"x-plugin": "add-header"}}}"#,
    ]);
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    socket
        .write_all(b"GET /hello HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-plugin: add-header"), "{answer}");
    assert!(answer.contains("\"path\": \"/hello\""), "{answer}");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "sluice run exits cleanly on SIGINT: {exit:?}"
    );
    let stderr = stderr_log.all();
    assert!(
        stderr.contains("sluice listening on http://") && stderr.contains("admin page on http://"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_the_example_and_names_every_error_with_its_place() {
    let good = sluice(&["check", "examples/gateway.yaml"]);
    assert_success(&good);
    let text = stdout(&good);
    assert!(
        text.contains(
            "ok: 1 listener(s), 2 route(s), 1 cluster(s), 2 plugin(s) in this order: auth (AUTHN"
        ) && text.contains("→ add-header (UNSPECIFIED_PHASE"),
        "{text}"
    );
    assert!(
        text.contains("note: document 2 (WasmPlugin auth) spec.selector: ignored"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let auth = sluice_test_support::plugin_wasm("auth");
    std::fs::write(
        &bad,
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: a}}\nspec: {{url: missing.wasm, phase: EARLY}}\n---\n\
             apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: b}}\nspec: {{url: {}, sha256: {}}}\n",
            auth.display(),
            "0".repeat(64)
        ),
    )
    .unwrap();
    let output = sluice(&["check", bad.to_str().unwrap()]);
    let text = stdout(&output);
    assert_exit(&output, 1, text.clone(), "bad.yaml: 1 error(s)");
    assert!(
        text.contains("document 1 (WasmPlugin a) spec.phase: `EARLY`: expected AUTHN"),
        "{text}"
    );

    std::fs::write(&bad, format!("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: b}}\nspec: {{url: {}, sha256: {}}}\n", auth.display(), "0".repeat(64))).unwrap();
    let output = sluice(&["check", bad.to_str().unwrap()]);
    let text = stdout(&output);
    assert_exit(&output, 1, text.clone(), "(WasmPlugin b) spec.sha256:");
    assert!(
        text.contains("sha256 mismatch") && text.contains(&"0".repeat(64)),
        "{text}"
    );
}

/// One `GET /` to a running `sluice run`: the value of a response header.
fn response_header(address: &str, name: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    let prefix = format!("{name}: ");
    answer
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

#[test]
fn run_with_a_config_file_reloads_when_it_changes_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    let wasm = sluice_test_support::plugin_wasm("add_header");
    let write = |version: u32| {
        std::fs::write(
            &file,
            format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: headers}}\nspec:\n  url: {}\n  pluginConfig: {{response: {{set: {{x-version: \"{version}\"}}}}}}\n",
                wasm.display()
            ),
        )
        .unwrap();
    };
    write(1);
    let (mut child, address, stderr_log) = spawn_run(&[
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
    let version = || response_header(&address, "x-version");
    assert_eq!(version().as_deref(), Some("1"));
    write(2);
    // The watcher settles for 200 ms before reloading; bounded wait for the new chain.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while version().as_deref() != Some("2") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload after the file changed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(version().as_deref(), Some("2"));
    signal("-TERM");
    assert!(child.wait().unwrap().success());
    let stderr = stderr_log.all();
    assert!(
        stderr.contains("a watched file changed: reloading"),
        "{stderr}"
    );
    assert!(
        stderr.contains("SIGHUP: reloading the config") && stderr.contains("config reloaded"),
        "{stderr}"
    );
}

/// What `sluice new` promises: `sluice build`, then `sluice test tests/*.yaml` passes, and
/// `sluice check wasmplugin.yaml` accepts the WasmPlugin.
fn builds_passes_and_checks(project: &Path, sdk: &str) {
    let output = sluice(&["build", project.to_str().unwrap()]);
    assert_success(&output);
    assert!(
        stdout(&output).contains(&format!("sdk:          {sdk}")),
        "{}",
        stdout(&output)
    );
    let headers = project.join("tests/headers.yaml");
    let bad_config = project.join("tests/bad-config.yaml");
    let output = sluice(&[
        "test",
        headers.to_str().unwrap(),
        bad_config.to_str().unwrap(),
    ]);
    assert_exit(&output, 0, stdout(&output), "scenarios: 2 passed, 0 failed");
    let manifest = project.join("wasmplugin.yaml");
    let output = sluice(&["check", manifest.to_str().unwrap()]);
    assert_exit(&output, 0, stdout(&output), "ok");
}

#[test]
fn new_makes_a_project_that_builds_passes_its_scenarios_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("demo");
    let project_arg = project.to_str().unwrap();
    let output = sluice(&["new", project_arg]);
    assert_success(&output);
    assert!(
        stdout(&output).contains("sluice build"),
        "{}",
        stdout(&output)
    );

    let output = sluice(&["new", project_arg]);
    assert_exit(&output, 2, stderr(&output), "already exists");
    let bad = dir.path().join("Bad_Name");
    let output = sluice(&["new", bad.to_str().unwrap()]);
    assert_exit(&output, 2, stderr(&output), "lowercase letters");

    builds_passes_and_checks(&project, "Rust (proxy-wasm-rust-sdk)");
}

#[test]
fn push_pull_and_manifest_work_against_a_registry() {
    if !sluice_test_support::has_tools(sluice_test_support::REGISTRY_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut registry = sluice_test_support::Registry::start(dir.path());
    let address = registry.address.clone();
    let address = address.as_str();
    let reference = format!("{address}/plugins/add-header:v1");
    let wasm = sluice_test_support::plugin_wasm("add_header");
    let output = sluice(&[
        "push",
        wasm.to_str().unwrap(),
        &reference,
        "--insecure-registry",
        address,
    ]);
    assert_success(&output);
    let digest = stdout(&output).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(stderr(&output).contains("as compat"), "{}", stderr(&output));

    let pulled = dir.path().join("pulled.wasm");
    let output = sluice(&[
        "pull",
        &reference,
        "-o",
        pulled.to_str().unwrap(),
        "--insecure-registry",
        address,
    ]);
    assert_success(&output);
    assert_eq!(stdout(&output).trim(), digest);
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(&wasm).unwrap()
    );

    let output = sluice(&[
        "pull",
        &format!("{address}/plugins/add-header:v2"),
        "--insecure-registry",
        address,
    ]);
    assert_exit(
        &output,
        2,
        stderr(&output),
        &format!("{address}/plugins/add-header has no tag `v2`; its tags: v1"),
    );

    // inspect takes the same reference, through the same fetcher and cache.
    let output = sluice(&[
        "inspect",
        &format!("oci://{reference}"),
        "--insecure-registry",
        address,
    ]);
    assert_success(&output);
    assert!(
        stdout(&output).contains("sdk:          Rust (proxy-wasm-rust-sdk)"),
        "{}",
        stdout(&output)
    );

    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"response": {"set": {"x-from": "manifest"}}}"#).unwrap();
    let output = sluice(&[
        "manifest",
        &reference,
        "--config",
        config.to_str().unwrap(),
        "--phase",
        "STATS",
        "--insecure-registry",
        address,
    ]);
    assert_success(&output);
    let yaml = stdout(&output);
    assert!(
        yaml.contains("kind: WasmPlugin")
            && yaml.contains("name: add-header")
            && yaml.contains(&format!("url: oci://{reference}"))
            && yaml.contains(&format!("sha256: {}", digest.trim_start_matches("sha256:")))
            && yaml.contains("phase: STATS")
            && yaml.contains("x-from: manifest"),
        "{yaml}"
    );
    let file = dir.path().join("wasmplugin.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let check = || {
        sluice(&[
            "check",
            file.to_str().unwrap(),
            "--insecure-registry",
            address,
        ])
    };
    let output = check();
    assert_exit(&output, 0, stdout(&output), "ok");

    // A module that cannot be fetched is an error for check, whatever the failStrategy.
    registry.stop();
    std::fs::write(&file, format!("{yaml}  imagePullPolicy: Always\n")).unwrap();
    let output = check();
    assert_exit(&output, 1, stdout(&output), "spec.url: `oci://");
    assert!(
        stdout(&output).contains("would answer 503"),
        "{}",
        stdout(&output)
    );
    // Said once, as the check's error; a check retries nothing in the background.
    assert!(!stderr(&output).contains("retrying"), "{}", stderr(&output));
}

#[test]
fn new_makes_an_assemblyscript_project_that_builds_and_passes_its_scenarios() {
    if !sluice_test_support::has_tools(&[("npm", "apt-get install nodejs npm")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("as-demo");
    let project_arg = project.to_str().unwrap();
    assert_success(&sluice(&["new", project_arg, "--lang", "assemblyscript"]));
    // npm install (AssemblyScript 0.14 and @solo-io/proxy-runtime from the npm registry), asc.
    builds_passes_and_checks(&project, "AssemblyScript (proxy-runtime)");
    // Without pluginName this SDK finds no root context: the error says what to set.
    let manifest = project.join("wasmplugin.yaml");
    let unnamed = project.join("unnamed.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("pluginName:"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&unnamed, text).unwrap();
    let output = sluice(&["check", unnamed.to_str().unwrap()]);
    assert_exit(&output, 1, stdout(&output), "set spec.pluginName");
    let output = sluice(&[
        "new",
        dir.path().join("x").to_str().unwrap(),
        "--lang",
        "cobol",
    ]);
    assert_exit(
        &output,
        2,
        stderr(&output),
        "expected rust or assemblyscript",
    );
}

/// Out of file descriptors, `sluice run` pauses accepting (one warning, not one per attempt)
/// instead of spinning on `EMFILE`, and serves again once connections close.
#[test]
fn run_backs_off_when_out_of_file_descriptors() {
    use std::io::{Read, Write};

    let mut command = Command::new("sh");
    command.args([
        "-c",
        "ulimit -n 64 && exec \"$0\" run --listen 127.0.0.1:0 --admin off --workers 1",
        env!("CARGO_BIN_EXE_sluice"),
    ]);
    let (mut child, address, stderr_log) = spawn_serving(command);
    // More idle clients than the process has descriptors; the kernel queues the rest.
    let idle: Vec<std::net::TcpStream> = (0..120)
        .filter_map(|_| std::net::TcpStream::connect(&address).ok())
        .collect();
    assert!(idle.len() > 64, "only {} connections", idle.len());
    std::thread::sleep(std::time::Duration::from_secs(2));
    drop(idle);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let answer = loop {
        let mut answer = String::new();
        if let Ok(mut socket) = std::net::TcpStream::connect(&address) {
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let sent = socket.write_all(
                b"GET /again HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n",
            );
            if sent.is_ok() && socket.read_to_string(&mut answer).is_ok() && !answer.is_empty() {
                break answer;
            }
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("never served again; its log:\n{}", stderr_log.all());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    child.kill().unwrap();
    child.wait().unwrap();
    let stderr = stderr_log.all();
    let warnings = stderr.matches("pausing accepts").count();
    assert!(
        (1..=5).contains(&warnings) && stderr.len() < 64 * 1024,
        "{warnings} warnings, {} bytes of log:\n{}",
        stderr.len(),
        &stderr[..stderr.len().min(4000)]
    );
}

/// The resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// An HTTP/2 client that opens many streams and never lets the proxy send (its stream window is
/// zero) while the upstream has 64 MiB for each: what the proxy holds for them stays bounded.
#[test]
fn run_holds_little_for_clients_that_never_read() {
    use sluice_test_support::h2_frames;
    use std::io::{Read, Write};

    const STREAMS: u32 = 100;
    let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_address = origin.local_addr().unwrap();
    let sending = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = sending.clone();
    std::thread::spawn(move || {
        for socket in origin.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut socket = socket;
                let mut head = [0u8; 4096];
                let _ = socket.read(&mut head);
                let length = 64u64 << 20;
                let chunk = vec![b'x'; 64 * 1024];
                let _ = write!(
                    socket,
                    "HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n"
                );
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Blocks once the proxy stops reading; ends when it closes the connection.
                for _ in 0..length / chunk.len() as u64 {
                    if socket.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let upstream = format!("http://{origin_address}");
    let (mut child, address, _stderr_log) = spawn_run(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--workers",
        "1",
        "--upstream",
        &upstream,
    ]);
    let before = resident_bytes(child.id());
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    let mut frames = h2_frames::preface(&[(h2_frames::INITIAL_WINDOW_SIZE, 0)]);
    frames.extend(h2_frames::settings_ack());
    for stream in 0..STREAMS {
        frames.extend(h2_frames::get(2 * stream + 1, "example.com", "/large"));
    }
    client.write_all(&frames).unwrap();
    let mut reader = client.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sink = [0u8; 16384];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    // Until the proxy's memory stops growing (it waits on the client), at most 20 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut last = before;
    let mut peak = before;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = resident_bytes(child.id());
        peak = peak.max(now);
        if now == last && now > before || std::time::Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let grown = peak.saturating_sub(before);
    let answered = sending.load(std::sync::atomic::Ordering::SeqCst);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(client);
    eprintln!(
        "{STREAMS} stalled streams: resident memory grew {} MiB",
        grown >> 20
    );
    assert_eq!(answered, STREAMS, "every stream reached the upstream");
    assert!(
        grown < 96 << 20,
        "{STREAMS} stalled streams grew the proxy by {} MiB",
        grown >> 20
    );
}

/// The mistakes of a first hour, each answered with what was wrong, where, and what to do.
#[test]
fn first_hour_mistakes_get_errors_that_say_where_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };

    // An empty file (a `sluice manifest ... > file` that failed) is not an empty, valid config.
    let empty = write("empty.yaml", "");
    let output = sluice(&["check", &empty]);
    assert_exit(&output, 1, stdout(&output), "empty.yaml: no documents");

    // Every wrong field of a document at once, at its line and column, in plain words.
    let wrong = write(
        "wrong.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec:\n  url: a.wasm\n  priority: high\n  colour: blue\n",
    );
    let output = sluice(&["check", &wrong]);
    let text = stdout(&output);
    assert_exit(
        &output,
        1,
        text.clone(),
        "wrong.yaml:6:13: document 1 (WasmPlugin a) spec.priority: invalid type: string \"high\", expected an integer",
    );
    assert!(
        text.contains(
            "wrong.yaml:7:11: document 1 (WasmPlugin a) spec.colour: unknown field `colour`"
        ),
        "{text}"
    );

    // A module that was never built: the resolved path and the command that builds it.
    let unbuilt = write(
        "unbuilt.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec:\n  url: proj/target/wasm32-wasip1/release/a.wasm\n",
    );
    let output = sluice(&["check", &unbuilt]);
    let resolved = dir.path().join("proj/target/wasm32-wasip1/release/a.wasm");
    assert_exit(
        &output,
        1,
        stdout(&output),
        &format!(
            "unbuilt.yaml:5:8: document 1 (WasmPlugin a) spec.url: {}: no such file; build the plugin first: `sluice build {}`",
            resolved.display(),
            dir.path().join("proj").display()
        ),
    );

    // A --plugin is named as the flag, with the path it looked at.
    let output = sluice(&["run", "--plugin", "./nope.wasm", "--admin", "off"]);
    let resolved = sluice_test_support::repo_root().join("nope.wasm");
    assert_exit(
        &output,
        2,
        stderr(&output),
        &format!("--plugin ./nope.wasm: {}: no such file", resolved.display()),
    );

    // A plugin that refuses its configuration: its own words and the JSON it was given.
    let wasm = sluice_test_support::plugins_dir().join("add_header.wasm");
    let output = sluice(&[
        "run",
        "--plugin",
        wasm.to_str().unwrap(),
        "--plugin-config",
        r#"{"bogus":1}"#,
        "--admin",
        "off",
        "--listen",
        "127.0.0.1:0",
    ]);
    let text = stderr(&output);
    assert_exit(&output, 2, text.clone(), "unknown field `bogus`");
    assert!(
        text.contains(r#"the configuration it was given: {"bogus":1}"#),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "no colours in a pipe: {text:?}");

    // A port in use is said once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = sluice(&["run", "--listen", &address, "--admin", "off"]);
    let text = stderr(&output);
    assert_exit(
        &output,
        2,
        text.clone(),
        &format!("cannot listen on {address}"),
    );
    assert_eq!(text.matches("Address already in use").count(), 1, "{text}");

    // A bad --log filter is an error, not silently `warn`.
    let output = sluice(&["--log", "sluice=loud", "check", &empty]);
    assert_exit(&output, 2, stderr(&output), "--log `sluice=loud`");
}

#[test]
fn run_listens_on_a_host_name_and_keeps_stdout_for_data() {
    let (mut child, address, stderr_log) = spawn_run(&[
        "--listen",
        "localhost:0",
        "--admin",
        "off",
        "--workers",
        "1",
    ]);
    assert!(
        address.starts_with("127.0.0.1:") || address.starts_with("[::1]:"),
        "{address}"
    );
    let mut stdout = child.stdout.take().unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut written = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut written).unwrap();
    assert_eq!(
        written, "",
        "stdout carries only data (the access log with `-`)"
    );
    let stderr = stderr_log.all();
    assert!(stderr.contains("INFO"), "{stderr}");
}

#[test]
fn a_reader_that_stops_early_is_not_a_crash() {
    use std::io::Read;

    let wasm = sluice_test_support::plugins_dir().join("add_header.wasm");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["inspect", "--json", wasm.to_str().unwrap()])
        .env("SLUICE_CACHE_DIR", sluice_test_support::cache_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -c 0`: the pipe closes before sluice writes (it reads and inspects the module
    // first), so its first write fails.
    drop(child.stdout.take());
    let exit = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(exit.code(), Some(0), "{stderr}");
}

/// The admin page in a real browser (headless Chromium): it shows the running proxy's
/// readiness, plugins, routes and clusters, and plots from the sampled history.
#[test]
fn the_admin_page_shows_the_running_proxy_in_a_browser() {
    if !sluice_test_support::has_tools(&[("chromium", "apt-get install chromium")]) {
        return;
    }
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = free.local_addr().unwrap().to_string();
    drop(free);
    let wasm = sluice_test_support::plugins_dir().join("add_header.wasm");
    let (mut child, address, _stderr_log) = spawn_run(&[
        "--plugin",
        wasm.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &admin,
        "--workers",
        "1",
    ]);
    let get = |address: &str, path: &str| {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(address).unwrap();
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        answer
    };
    // Traffic over at least three history samples (one a second), so the plots have lines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        for _ in 0..5 {
            assert!(get(&address, "/hello").starts_with("HTTP/1.1 200"));
        }
        let history = get(&admin, "/history");
        if history.matches("\"atMs\"").count() >= 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{history}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--window-size=1280,1000",
            "--virtual-time-budget=5000",
            "--dump-dom",
            &format!("http://{admin}/"),
        ])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("data-refreshes=\""),
        "the page never refreshed:\n{dom}"
    );
    for shown in [
        ">LIVE<",
        ">add-header<",
        ">1 running<",
        ">echo<",
        ">default<",
        "127.0.0.1:",
        "0 reloads done, 0 refused",
    ] {
        assert!(
            dom.contains(shown),
            "the page does not show {shown:?}:\n{dom}"
        );
    }
    let plotted = dom
        .split("<canvas id=\"rate\"")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .and_then(|tag| tag.split("data-points=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(
        plotted >= 4,
        "the request-rate plot has {plotted} points:\n{dom}"
    );
}
