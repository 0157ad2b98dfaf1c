//! `oci://` modules: pulled in every layout Istio's agent reads, pushed in the one asked for.
//!
//! - **compat**: an ordinary image whose (last) tar+gzip layer holds `plugin.wasm`, with Docker or
//!   OCI media types; what `docker build` of `FROM scratch` + `COPY plugin.wasm` makes.
//! - **wasm-layer** (Solo's "oci" variant): a `application/vnd.module.wasm.content.layer.v1+wasm`
//!   layer holding the raw module.
//! - **artifact** (CNCF Wasm OCI artifact): a single `application/wasm` layer.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::http::describe;
use crate::{FetchError, Fetcher, PullPolicy, Request, sha256_hex};

const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
const ARTIFACT_LAYER: &str = "application/wasm";
const ARTIFACT_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The older wasm-to-oci layer type, read for compatibility.
const WASM_TO_OCI_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
const OCI_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The image layout `sluice push` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// An OCI image with one tar+gzip layer holding `plugin.wasm`: the layout Istio's agent tries
    /// first, that every Istio release reads, and that registries and image tools handle as any
    /// image.
    #[default]
    Compat,
    /// Solo's Wasm image: the raw module as a `vnd.module.wasm.content.layer.v1+wasm` layer.
    WasmLayer,
    /// The CNCF Wasm OCI artifact: the raw module as an `application/wasm` layer.
    Artifact,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Compat, Format::WasmLayer, Format::Artifact];

    pub fn name(self) -> &'static str {
        match self {
            Format::Compat => "compat",
            Format::WasmLayer => "wasm-layer",
            Format::Artifact => "artifact",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// What a push left in the registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// The manifest digest (`sha256:…`): what a WasmPlugin's `sha256` pins.
    pub digest: String,
    /// The module's own sha256.
    pub module_sha256: String,
    pub reference: String,
}

/// Istio: `latest` (or no tag) is pulled every time, anything else once.
pub(crate) fn default_policy(reference: &str) -> PullPolicy {
    let name = reference.rsplit('/').next().unwrap_or(reference);
    if name.contains('@') {
        return PullPolicy::IfNotPresent;
    }
    match name.split_once(':') {
        None | Some((_, "latest")) => PullPolicy::Always,
        Some(_) => PullPolicy::IfNotPresent,
    }
}

fn parse(url: &str, reference: &str) -> Result<Reference, FetchError> {
    Reference::try_from(reference).map_err(|e| FetchError::Url {
        url: url.into(),
        message: format!("not an OCI reference (host[:port]/repository[:tag|@sha256:…]): {e}"),
    })
}

fn client(fetcher: &Fetcher) -> Client {
    let insecure = &fetcher.options.insecure_registries;
    let protocol = if insecure.iter().any(|r| r == "*") {
        ClientProtocol::Http
    } else {
        ClientProtocol::HttpsExcept(insecure.clone())
    };
    Client::new(ClientConfig {
        protocol,
        ..ClientConfig::default()
    })
}

/// Credentials for `registry` from a docker config file: `auths.<registry>.auth` (base64 of
/// `user:password`) or `username`/`password`.
fn credentials(file: Option<&Path>, registry: &str, url: &str) -> Result<RegistryAuth, FetchError> {
    let Some(file) = file else {
        return Ok(RegistryAuth::Anonymous);
    };
    let text = std::fs::read(file).map_err(|source| FetchError::Read {
        path: file.display().to_string(),
        source,
    })?;
    let bad = |message: String| FetchError::Url {
        url: url.into(),
        message: format!("credentials {}: {message}", file.display()),
    };
    let config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(entry) = config.get("auths").and_then(|auths| {
        auths.get(registry).or_else(|| {
            auths
                .as_object()?
                .iter()
                .find(|(key, _)| {
                    key.trim_start_matches("https://")
                        .trim_start_matches("http://")
                        .trim_end_matches('/')
                        == registry
                })
                .map(|(_, v)| v)
        })
    }) else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|e| bad(format!("auths.{registry}.auth is not base64: {e}")))?;
        let text = String::from_utf8_lossy(&decoded);
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| bad(format!("auths.{registry}.auth is not user:password")))?;
        return Ok(RegistryAuth::Basic(user.into(), password.into()));
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(user), Some(password)) => Ok(RegistryAuth::Basic(user.into(), password.into())),
        _ => Ok(RegistryAuth::Anonymous),
    }
}

fn remote(url: &str, what: &str, error: &dyn std::error::Error) -> FetchError {
    let mut message = format!("{what}: {}", describe(error));
    // What rustls says when a plain-HTTP server answers a TLS hello.
    let lower = message.to_ascii_lowercase();
    if message.contains("InvalidContentType") {
        message.push_str(
            " (the registry may speak plain HTTP: allow it with --insecure-registry HOST:PORT or the Proxy document's insecureRegistries)",
        );
    } else if lower.contains("connection refused") {
        message.push_str(" (nothing listens at the registry's address: is the host and port right, and the registry running?)");
    } else if lower.contains("unauthorized") || lower.contains("denied") || lower.contains(" 401") {
        message.push_str(
            " (the registry wants credentials: give the WasmPlugin an imagePullSecret (a docker config JSON file), or put them in $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
        );
    }
    FetchError::Remote {
        url: url.into(),
        message,
    }
}

/// Why a manifest could not be pulled, in words: for a tag or digest the registry does not have,
/// the tags it does have.
async fn manifest_error(
    client: &Client,
    image: &Reference,
    auth: &RegistryAuth,
    url: &str,
    error: &oci_client::errors::OciDistributionError,
) -> FetchError {
    let text = describe(error).to_ascii_lowercase();
    if !(text.contains("manifest unknown")
        || text.contains("name unknown")
        || text.contains("not found"))
    {
        return remote(url, "pulling the manifest", error);
    }
    let wanted = match (image.digest(), image.tag()) {
        (Some(digest), _) => format!("digest {digest}"),
        (None, Some(tag)) => format!("tag `{tag}`"),
        (None, None) => "tag `latest`".to_string(),
    };
    let repository = format!("{}/{}", image.registry(), image.repository());
    const SHOWN: usize = 20;
    let message = match client.list_tags(image, auth, Some(100), None).await {
        Ok(listed) if listed.tags.is_empty() => {
            format!("{repository} has no {wanted}: the repository has no tags")
        }
        Ok(listed) => {
            let more = listed.tags.len().saturating_sub(SHOWN);
            let mut tags = listed.tags[..listed.tags.len().min(SHOWN)].join(", ");
            if more > 0 {
                tags.push_str(&format!(" and {more} more"));
            }
            format!("{repository} has no {wanted}; its tags: {tags}")
        }
        Err(_) => format!(
            "{repository} has no {wanted} (nor could its tags be listed: the repository may not exist)"
        ),
    };
    FetchError::Remote {
        url: url.into(),
        message,
    }
}

/// The layer holding the module, by the order Istio's fetcher tries: a tar+gzip image layer
/// (the last one), else a raw Wasm layer.
fn module_layer(manifest: &OciImageManifest) -> Option<&OciDescriptor> {
    manifest
        .layers
        .iter()
        .rev()
        .find(|l| l.media_type == OCI_TAR_GZIP || l.media_type == DOCKER_TAR_GZIP)
        .or_else(|| {
            manifest.layers.iter().find(|l| {
                [WASM_LAYER, ARTIFACT_LAYER, WASM_TO_OCI_LAYER].contains(&l.media_type.as_str())
            })
        })
}

/// `plugin.wasm` from a gzipped tar layer.
fn from_tar_gz(url: &str, bytes: &[u8]) -> Result<Vec<u8>, FetchError> {
    let bad = |message: String| FetchError::NotWasm {
        url: url.into(),
        message,
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("the image layer is not a tar.gz: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("the image layer is not a tar.gz: {e}")))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.trim_start_matches("./").trim_start_matches('/') == "plugin.wasm" {
            let mut module = Vec::new();
            entry
                .read_to_end(&mut module)
                .map_err(|e| bad(format!("reading plugin.wasm from the layer: {e}")))?;
            return Ok(module);
        }
        names.push(name);
    }
    Err(bad(format!(
        "the image layer holds no plugin.wasm (it holds: {})",
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    )))
}

pub(crate) async fn pull(
    fetcher: &Fetcher,
    reference: &str,
    request: &Request<'_>,
) -> Result<crate::Fetched, FetchError> {
    let url = request.url;
    let image = parse(url, reference)?;
    let secret = request
        .pull_secret
        .or(fetcher.options.docker_config.as_deref());
    let auth = credentials(secret, image.resolve_registry(), url)?;
    let client = client(fetcher);
    let (manifest, digest) = match client.pull_image_manifest(&image, &auth).await {
        Ok(found) => found,
        Err(error) => return Err(manifest_error(&client, &image, &auth, url, &error).await),
    };
    // As Istio: the pinned digest is the image's, checked before any layer is downloaded.
    crate::check_digest(
        url,
        "image",
        request.sha256,
        digest.trim_start_matches("sha256:"),
    )?;
    let layer = module_layer(&manifest).ok_or_else(|| FetchError::NotWasm {
        url: url.into(),
        message: format!(
            "no layer holds a Wasm module (layers: {}); expected a tar+gzip layer with plugin.wasm, \
             {WASM_LAYER} or {ARTIFACT_LAYER}",
            manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    let mut blob = Vec::new();
    client
        .pull_blob(&image, layer, &mut blob)
        .await
        .map_err(|e| remote(url, &format!("pulling layer {}", layer.digest), &e))?;
    let blob_sha256 = sha256_hex(&blob);
    if blob_sha256 != layer.digest.trim_start_matches("sha256:") {
        return Err(FetchError::Digest {
            url: url.into(),
            what: "layer",
            expected: layer.digest.clone(),
            actual: blob_sha256,
        });
    }
    let module = if layer.media_type == OCI_TAR_GZIP || layer.media_type == DOCKER_TAR_GZIP {
        from_tar_gz(url, &blob)?
    } else {
        blob
    };
    fetcher.store(url, &module, None, Some(digest))
}

/// A tar.gz holding `plugin.wasm`, and the sha256 of the uncompressed tar (the image's diff id).
fn tar_gz(wasm: &[u8]) -> Result<(Vec<u8>, String), std::io::Error> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "plugin.wasm", wasm)?;
    let tar = builder.into_inner()?;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &tar)?;
    Ok((encoder.finish()?, sha256_hex(&tar)))
}

pub(crate) async fn push(
    fetcher: &Fetcher,
    wasm: &[u8],
    reference: &str,
    format: Format,
) -> Result<Pushed, FetchError> {
    let reference = reference.trim_start_matches("oci://");
    let url = format!("oci://{reference}");
    if !wasm.starts_with(b"\0asm") {
        return Err(FetchError::NotWasm {
            url,
            message: "not a WebAssembly module (no \\0asm header)".into(),
        });
    }
    let image = parse(&url, reference)?;
    let auth = credentials(
        fetcher.options.docker_config.as_deref(),
        image.resolve_registry(),
        &url,
    )?;
    let title = |name: &str| {
        Some(BTreeMap::from([(
            "org.opencontainers.image.title".to_string(),
            name.to_string(),
        )]))
    };
    let (layer, config, annotations) = match format {
        Format::Compat => {
            let (layer, diff_id) = tar_gz(wasm).map_err(|source| FetchError::Local {
                what: "pack the module into a tar+gzip layer",
                source,
            })?;
            let config = serde_json::json!({
                "architecture": "wasm",
                "os": "wasip1",
                "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
                "config": {},
            });
            (
                ImageLayer::new(layer, OCI_TAR_GZIP.into(), None),
                Config::new(config.to_string().into_bytes(), OCI_IMAGE_CONFIG.into(), None),
                Some(BTreeMap::from([(
                    "module.wasm.image/variant".to_string(),
                    "compat".to_string(),
                )])),
            )
        }
        Format::WasmLayer => (
            ImageLayer::new(wasm.to_vec(), WASM_LAYER.into(), title("filter.wasm")),
            Config::new(
                serde_json::json!({"type": "envoy_proxy", "abiVersions": ["v0-097b7f2e4cc1fb490cc1943d0d633655ac3c522f", "v0.2.1"], "config": {"rootIds": []}})
                    .to_string()
                    .into_bytes(),
                WASM_CONFIG.into(),
                title("runtime-config.json"),
            ),
            None,
        ),
        Format::Artifact => (
            ImageLayer::new(wasm.to_vec(), ARTIFACT_LAYER.into(), title("plugin.wasm")),
            Config::new(
                serde_json::json!({"created": null, "layerDigests": [format!("sha256:{}", sha256_hex(wasm))]})
                    .to_string()
                    .into_bytes(),
                ARTIFACT_CONFIG.into(),
                None,
            ),
            None,
        ),
    };
    let layers = [layer];
    let manifest = OciImageManifest::build(&layers, &config, annotations);
    let client = client(fetcher);
    client
        .push(&image, &layers, config, &auth, Some(manifest))
        .await
        .map_err(|e| remote(&url, "pushing", &e))?;
    // The registry's digest of the manifest as stored, not one computed here from a
    // serialization that might differ.
    let digest = client
        .fetch_manifest_digest(&image, &auth)
        .await
        .map_err(|e| remote(&url, "reading back the pushed digest", &e))?;
    Ok(Pushed {
        digest,
        module_sha256: sha256_hex(wasm),
        reference: reference.to_string(),
    })
}
