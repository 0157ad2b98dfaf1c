//! The module cache on disk: modules by content (`sha256/<hex>.wasm`), and for each remote url
//! the module it last gave (`urls/<sha256 of the url>.json`), so that `IfNotPresent` can start
//! without the network. Files are written to a temporary name and renamed, so a reader never
//! sees half a module; a module whose bytes no longer match its name is ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{FetchError, Fetched, sha256_hex};

pub struct Cache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UrlEntry {
    url: String,
    sha256: String,
    image_digest: Option<String>,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn module_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(format!("{sha256}.wasm"))
    }

    fn url_path(&self, url: &str) -> PathBuf {
        self.dir
            .join("urls")
            .join(format!("{}.json", sha256_hex(url.as_bytes())))
    }

    /// The module `url` last gave, if it is still in the cache intact and matches `pinned` (a
    /// module sha256, or an image digest in hex).
    pub fn lookup(&self, url: &str, pinned: Option<&str>) -> Option<Fetched> {
        let text = std::fs::read(self.url_path(url)).ok()?;
        let entry: UrlEntry = serde_json::from_slice(&text).ok()?;
        let image_hex = entry
            .image_digest
            .as_deref()
            .map(|d| d.trim_start_matches("sha256:"));
        if let Some(pinned) = pinned
            && !pinned.eq_ignore_ascii_case(&entry.sha256)
            && image_hex.is_none_or(|d| !pinned.eq_ignore_ascii_case(d))
        {
            return None;
        }
        let path = self.module_path(&entry.sha256);
        let bytes = std::fs::read(&path).ok()?;
        if sha256_hex(&bytes) != entry.sha256 {
            tracing::warn!(path = %path.display(), "cached module does not match its digest; ignoring it");
            return None;
        }
        Some(Fetched {
            path,
            bytes,
            sha256: entry.sha256,
            image_digest: entry.image_digest,
            downloaded: false,
        })
    }

    /// Stores a checked module and records it as what `url` gives.
    pub(crate) fn store(
        &self,
        url: &str,
        bytes: &[u8],
        sha256: &str,
        image_digest: Option<&str>,
    ) -> Result<PathBuf, FetchError> {
        let path = self.module_path(sha256);
        if !path.is_file() {
            write_atomically(&path, bytes)?;
        }
        let entry = UrlEntry {
            url: url.into(),
            sha256: sha256.into(),
            image_digest: image_digest.map(String::from),
        };
        let json = serde_json::to_vec_pretty(&entry).unwrap_or_default();
        write_atomically(&self.url_path(url), &json)?;
        Ok(path)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let error = |source| FetchError::Cache {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(error)?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&temporary, bytes).map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}
