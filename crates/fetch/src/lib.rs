//! Sluice's plugin supply chain: gets a module from where a plugin `url` points (a path, `file://`,
//! `http(s)://`, `oci://`) into a content-addressed cache on disk, checks it against its sha256,
//! and pushes modules to OCI registries in the layouts Istio reads. It never compiles or runs what
//! it fetches: the host does, from the cached file.

#![forbid(unsafe_code)]

mod cache;
mod http;
mod oci;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cache::Cache;
pub use oci::{Format, Pushed};

use sha2::{Digest, Sha256};

/// Why a module could not be fetched or pushed; the message names the url and the cause.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{url}`: {message}")]
    Url { url: String, message: String },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{url}`: {message}")]
    Remote { url: String, message: String },
    #[error(
        "`{url}`: sha256 mismatch: the config expects {expected}, the {what} has {actual}; refusing it{}",
        digest_hint(what)
    )]
    Digest {
        url: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("`{url}`: {message}")]
    NotWasm { url: String, message: String },
    #[error("cache {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
    /// Work on this machine that failed for a reason of its own (starting the fetch runtime,
    /// packing a layer).
    #[error("cannot {what}: {source}")]
    Local {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Which digest a pin means, said where people mix them up.
fn digest_hint(what: &str) -> &'static str {
    if what == "image" {
        " (for an oci:// url, sha256 pins the image's manifest digest, which `sluice push` and `sluice pull` print, as Istio checks it; not the module's sha256, which `sluice inspect` prints)"
    } else {
        " (the sha256 of the .wasm module itself, as `sluice inspect` prints it)"
    }
}

/// When a remote module is downloaded again, as Istio's `imagePullPolicy` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Use the cached module for this url if there is one (Istio's default, except for `latest`).
    #[default]
    IfNotPresent,
    /// Download on every load (Istio's default for an OCI `latest` tag).
    Always,
}

/// What to fetch.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub url: &'a str,
    /// Where relative paths are taken from.
    pub base_dir: &'a Path,
    /// Lowercase hex. For files and http(s), the module's digest; for OCI, the image's (manifest)
    /// digest, as Istio checks it.
    pub sha256: Option<&'a str>,
    /// `None`: Istio's default for the url.
    pub pull_policy: Option<PullPolicy>,
    /// A docker config JSON file (what a Kubernetes `dockerconfigjson` pull secret holds).
    pub pull_secret: Option<&'a Path>,
}

/// A module on disk, ready to be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    /// The module, as read and checked: compile these rather than reading `path` again.
    pub bytes: Vec<u8>,
    /// The module's sha256 (lowercase hex).
    pub sha256: String,
    /// The OCI image's manifest digest (`sha256:…`), for `oci://` urls.
    pub image_digest: Option<String>,
    /// Whether it came over the network on this call (rather than from disk or the cache).
    pub downloaded: bool,
}

/// How remote fetches behave.
#[derive(Clone, Debug)]
pub struct Options {
    pub cache_dir: PathBuf,
    /// Registries (host or host:port) spoken to over plain HTTP; `*` means every one.
    pub insecure_registries: Vec<String>,
    /// Per HTTP request.
    pub timeout: Duration,
    /// Further attempts after a failed download (connection errors and 5xx only).
    pub retries: u32,
    /// The docker config file used when a request names no pull secret.
    pub docker_config: Option<PathBuf>,
}

impl Options {
    /// Istio's agent defaults (15 s per request, retries) with the cache under `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Options {
        Options {
            cache_dir,
            insecure_registries: Vec::new(),
            timeout: Duration::from_secs(15),
            retries: 4,
            docker_config: default_docker_config(),
        }
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, if it exists.
fn default_docker_config() -> Option<PathBuf> {
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(|dir| PathBuf::from(dir).join("config.json"))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
        })?;
    path.is_file().then_some(path)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fetches modules into its cache.
pub struct Fetcher {
    options: Options,
    cache: Cache,
}

impl Fetcher {
    pub fn new(options: Options) -> Fetcher {
        Fetcher {
            cache: Cache::new(options.cache_dir.clone()),
            options,
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Gets the module `request` names. Blocking: remote fetches run on a runtime of their own,
    /// so this may be called from anywhere, inside an async runtime too.
    ///
    /// # Errors
    /// A [`FetchError`] naming the url and what went wrong (unreachable, refused, a digest
    /// mismatch with both digests, not a Wasm module).
    pub fn fetch(&self, request: &Request<'_>) -> Result<Fetched, FetchError> {
        let url = request.url;
        if let Some(rest) = url.strip_prefix("oci://") {
            if let Some(hit) = self.cached(request, oci::default_policy(rest)) {
                return Ok(hit);
            }
            return self.block_on(oci::pull(self, rest, request));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            // Istio: http(s) urls are fetched every time unless a checksum pins them.
            let default = if request.sha256.is_some() {
                PullPolicy::IfNotPresent
            } else {
                PullPolicy::Always
            };
            if let Some(hit) = self.cached(request, default) {
                return Ok(hit);
            }
            let bytes = self.block_on(http::download(&self.options, url))?;
            return self.store(url, &bytes, request.sha256, None);
        }
        if is_remote(url) {
            return Err(FetchError::Url {
                url: url.into(),
                message: "unknown scheme: expected a path, file://, http://, https:// or oci://"
                    .into(),
            });
        }
        let path = local_path(url, request.base_dir);
        let bytes = std::fs::read(&path).map_err(|source| FetchError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let sha256 = sha256_hex(&bytes);
        check_digest(url, "module", request.sha256, &sha256)?;
        Ok(Fetched {
            path,
            bytes,
            sha256,
            image_digest: None,
            downloaded: false,
        })
    }

    /// The cached module for a remote request, when its pull policy (or `default`) lets the
    /// cache answer.
    fn cached(&self, request: &Request<'_>, default: PullPolicy) -> Option<Fetched> {
        if request.pull_policy.unwrap_or(default) == PullPolicy::Always {
            return None;
        }
        self.cache.lookup(request.url, request.sha256)
    }

    /// Checks downloaded module bytes and stores them in the cache under `url`.
    fn store(
        &self,
        url: &str,
        bytes: &[u8],
        expected_module: Option<&str>,
        image_digest: Option<String>,
    ) -> Result<Fetched, FetchError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(FetchError::NotWasm {
                url: url.into(),
                message: format!(
                    "the download ({} bytes) is not a WebAssembly module (no \\0asm header)",
                    bytes.len()
                ),
            });
        }
        let sha256 = sha256_hex(bytes);
        check_digest(url, "module", expected_module, &sha256)?;
        let path = self
            .cache
            .store(url, bytes, &sha256, image_digest.as_deref())?;
        Ok(Fetched {
            path,
            bytes: bytes.to_vec(),
            sha256,
            image_digest,
            downloaded: true,
        })
    }

    /// Pushes a module to `reference` (`host[:port]/repo:tag`, with or without `oci://`).
    ///
    /// # Errors
    /// When the module is not Wasm or the registry refuses it.
    pub fn push(&self, wasm: &[u8], reference: &str, format: Format) -> Result<Pushed, FetchError> {
        self.block_on(oci::push(self, wasm, reference, format))
    }

    /// Pulls `reference` into the cache, always from the registry.
    ///
    /// # Errors
    /// As [`Fetcher::fetch`].
    pub fn pull(&self, reference: &str, sha256: Option<&str>) -> Result<Fetched, FetchError> {
        let url = if reference.starts_with("oci://") {
            reference.to_string()
        } else {
            format!("oci://{reference}")
        };
        self.fetch(&Request {
            url: &url,
            base_dir: Path::new("."),
            sha256,
            pull_policy: Some(PullPolicy::Always),
            pull_secret: None,
        })
    }

    fn block_on<T: Send>(
        &self,
        future: impl std::future::Future<Output = Result<T, FetchError>> + Send,
    ) -> Result<T, FetchError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| FetchError::Local {
                            what: "start the fetch runtime",
                            source,
                        })?
                        .block_on(future)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

fn check_digest(
    url: &str,
    what: &'static str,
    expected: Option<&str>,
    actual: &str,
) -> Result<(), FetchError> {
    match expected {
        Some(expected) if !expected.eq_ignore_ascii_case(actual) => Err(FetchError::Digest {
            url: url.into(),
            what,
            expected: expected.to_ascii_lowercase(),
            actual: actual.into(),
        }),
        _ => Ok(()),
    }
}

/// A plain path or `file://` url as a path, relative ones taken from `base_dir`.
/// Absolute (without `.` components), so that messages name the file that was looked for.
pub fn local_path(url: &str, base_dir: &Path) -> PathBuf {
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

/// Whether `url` names something that has to be downloaded.
pub fn is_remote(url: &str) -> bool {
    url.contains("://") && !url.starts_with("file://")
}
