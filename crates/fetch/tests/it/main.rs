//! The supply chain against real peers on 127.0.0.1: Debian's `docker-registry`, `skopeo`, and a
//! plain HTTP server.

// Test code: a failure is a failed test, so helpers unwrap and panic as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_fetch::{FetchError, Fetcher, Format, Options, PullPolicy, Request, sha256_hex};
use sluice_test_support::Registry;

fn module() -> Vec<u8> {
    sluice_test_support::wat(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
}

fn fetcher(dir: &Path, registry: &Registry) -> Fetcher {
    Fetcher::new(Options {
        insecure_registries: vec![registry.address.clone()],
        docker_config: None,
        retries: 1,
        ..Options::new(dir.join("cache"))
    })
}

fn oci(
    fetcher: &Fetcher,
    url: &str,
    sha256: Option<&str>,
    policy: Option<PullPolicy>,
) -> Result<sluice_fetch::Fetched, FetchError> {
    fetcher.fetch(&Request {
        url,
        base_dir: Path::new("."),
        sha256,
        pull_policy: policy,
        pull_secret: None,
    })
}

#[test]
fn push_then_pull_round_trips_in_every_format() {
    if !sluice_test_support::has_tools(sluice_test_support::REGISTRY_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    let fetcher = fetcher(dir.path(), &registry);
    let wasm = module();
    for (name, format) in [
        ("compat", Format::Compat),
        ("wasm-layer", Format::WasmLayer),
        ("artifact", Format::Artifact),
    ] {
        let reference = format!("{}/plugins/{name}:v1", registry.address);
        let pushed = fetcher.push(&wasm, &reference, format).unwrap();
        assert!(pushed.digest.starts_with("sha256:"), "{pushed:?}");
        assert_eq!(pushed.module_sha256, sha256_hex(&wasm));
        let pulled = fetcher.pull(&reference, None).unwrap();
        assert_eq!(std::fs::read(&pulled.path).unwrap(), wasm, "{name}");
        assert_eq!(
            pulled.image_digest.as_deref(),
            Some(pushed.digest.as_str()),
            "{name}"
        );
        assert!(pulled.downloaded);
    }
}

#[test]
fn skopeo_reads_what_sluice_pushes_and_sluice_runs_what_standard_tools_build() {
    if !sluice_test_support::has_tools(sluice_test_support::REGISTRY_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    let fetcher = fetcher(dir.path(), &registry);
    let wasm = module();

    // sluice push → skopeo inspect.
    let reference = format!("{}/plugins/inspected:v1", registry.address);
    let pushed = fetcher.push(&wasm, &reference, Format::Compat).unwrap();
    let output = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .output()
        .expect("skopeo is installed (apt-get install skopeo)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(inspected["Digest"], pushed.digest.as_str(), "{inspected}");

    // An image assembled by standard tools (tar, gzip, skopeo copy from an OCI layout).
    let copied = registry.copy_compat_image(dir.path(), &wasm, "standard/compat:v1");
    let pulled = fetcher.pull(&copied, None).unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), wasm);
}

#[test]
fn a_wrong_digest_or_a_missing_tag_is_refused_with_a_clear_error() {
    if !sluice_test_support::has_tools(sluice_test_support::REGISTRY_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    let fetcher = fetcher(dir.path(), &registry);
    let reference = format!("{}/plugins/pinned:v1", registry.address);
    let pushed = fetcher.push(&module(), &reference, Format::Compat).unwrap();
    let url = format!("oci://{reference}");
    let wrong = "0".repeat(64);
    let error = oci(&fetcher, &url, Some(&wrong), None)
        .unwrap_err()
        .to_string();
    let actual = pushed.digest.trim_start_matches("sha256:");
    assert!(
        error.contains("sha256 mismatch")
            && error.contains(&wrong)
            && error.contains(actual)
            && error.contains("not the module's sha256, which `sluice inspect` prints"),
        "{error}"
    );
    assert!(oci(&fetcher, &url, Some(actual), None).is_ok());

    let missing = format!("oci://{}/plugins/pinned:v2", registry.address);
    let error = oci(&fetcher, &missing, None, None).unwrap_err().to_string();
    assert!(
        error.contains(&missing)
            && error.contains(&format!(
                "{}/plugins/pinned has no tag `v2`; its tags: v1",
                registry.address
            )),
        "{error}"
    );
    let nowhere = format!("oci://{}/plugins/nowhere:v1", registry.address);
    let error = oci(&fetcher, &nowhere, None, None).unwrap_err().to_string();
    assert!(error.contains("has no tag `v1`"), "{error}");
}

#[test]
fn if_not_present_is_served_from_the_cache_without_a_registry_and_always_pulls() {
    if !sluice_test_support::has_tools(sluice_test_support::REGISTRY_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(dir.path());
    let fetcher = fetcher(dir.path(), &registry);
    let reference = format!("{}/plugins/cached:v1", registry.address);
    fetcher
        .push(&module(), &reference, Format::WasmLayer)
        .unwrap();
    let url = format!("oci://{reference}");
    let first = oci(&fetcher, &url, None, None).unwrap();
    assert!(first.downloaded);
    registry.stop();
    let second = oci(&fetcher, &url, None, None).unwrap();
    assert!(!second.downloaded);
    assert_eq!(second.path, first.path);
    let error = oci(&fetcher, &url, None, Some(PullPolicy::Always)).unwrap_err();
    assert!(matches!(error, FetchError::Remote { .. }), "{error}");
    // A `latest` tag is pulled every time by default, as in Istio.
    let latest = format!("oci://{}/plugins/cached:latest", registry.address);
    assert!(oci(&fetcher, &latest, None, None).is_err());
}

/// A plain HTTP server answering `/ok` with `body`, `/missing` with 404 and `/flaky` with 503
/// once, then `body`; counts requests.
fn http_server(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        let mut flaky_seen = 0;
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 2048];
            let n = stream.read(&mut request).unwrap_or(0);
            let line = String::from_utf8_lossy(&request[..n]).to_string();
            counter.fetch_add(1, Ordering::SeqCst);
            let flaky = line.starts_with("GET /flaky");
            if flaky {
                flaky_seen += 1;
            }
            let (status, payload): (&str, &[u8]) =
                if line.starts_with("GET /ok") || (flaky && flaky_seen > 1) {
                    ("200 OK", &body)
                } else if flaky {
                    ("503 Service Unavailable", b"busy")
                } else {
                    ("404 Not Found", b"no")
                };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(payload);
        }
    });
    (address, count)
}

#[test]
fn http_downloads_are_checked_retried_and_cached_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = module();
    let (address, count) = http_server(wasm.clone());
    let fetcher = Fetcher::new(Options {
        retries: 2,
        ..Options::new(dir.path().join("cache"))
    });
    let get = |path: &str, sha256: Option<&str>| {
        fetcher.fetch(&Request {
            url: &format!("http://{address}{path}"),
            base_dir: Path::new("."),
            sha256,
            pull_policy: None,
            pull_secret: None,
        })
    };
    let digest = sha256_hex(&wasm);
    let fetched = get("/ok", Some(&digest)).unwrap();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), wasm);
    let before = count.load(Ordering::SeqCst);
    assert!(
        !get("/ok", Some(&digest)).unwrap().downloaded,
        "a pinned url is served from the cache"
    );
    assert_eq!(count.load(Ordering::SeqCst), before);

    let wrong = "f".repeat(64);
    let error = get("/ok", Some(&wrong)).unwrap_err().to_string();
    assert!(error.contains(&wrong) && error.contains(&digest), "{error}");

    let error = get("/missing", None).unwrap_err().to_string();
    assert!(error.contains("404"), "{error}");
    let before = count.load(Ordering::SeqCst);
    assert!(get("/flaky", None).unwrap().downloaded);
    assert_eq!(
        count.load(Ordering::SeqCst) - before,
        2,
        "the 503 was retried once"
    );

    let local = dir.path().join("local.wasm");
    std::fs::write(&local, &wasm).unwrap();
    let error = fetcher
        .fetch(&Request {
            url: local.to_str().unwrap(),
            base_dir: Path::new("."),
            sha256: Some(&wrong),
            pull_policy: None,
            pull_secret: None,
        })
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sha256 mismatch") && error.contains(&digest),
        "{error}"
    );
}
