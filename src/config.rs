//! Configuration: one documented struct with its defaults in code. Values come from, in
//! increasing precedence: the defaults, a TOML file, `BOSUN_*` environment variables, and
//! command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::registry::RegistryOptions;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the API listens on. Env: `BOSUN_LISTEN`.
    pub listen: SocketAddr,
    /// Directory holding everything: `blobs/`, `uploads/` and `metadata.sqlite`.
    /// Env: `BOSUN_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Whether DELETE of manifests, tags and blobs is allowed. Env: `BOSUN_DELETE_ENABLED`.
    pub delete_enabled: bool,
    /// Mount a blob the registry already has when a client asks to upload it into another
    /// repository (no bytes are sent twice). Env: `BOSUN_AUTO_MOUNT`.
    pub auto_mount: bool,
    /// Largest manifest accepted, in bytes. Env: `BOSUN_MAX_MANIFEST_BYTES`.
    pub max_manifest_bytes: u64,
    /// Log filter, in `tracing` syntax (`info`, `bosun=debug`). Env: `BOSUN_LOG`.
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".parse().expect("valid default address"),
            data_dir: PathBuf::from("bosun-data"),
            delete_enabled: true,
            auto_mount: true,
            max_manifest_bytes: 4 * 1024 * 1024,
            log: "info".to_owned(),
        }
    }
}

fn parse_bool(key: &str, raw: &str) -> anyhow::Result<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{key}={raw:?} is not a boolean (true or false)"),
    }
}

impl Config {
    /// The defaults, overridden by the TOML file at `path` if given.
    pub fn from_file(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Applies `BOSUN_*` variables, read through `var` (the process environment in
    /// production, a map in tests).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = var("BOSUN_LISTEN") {
            self.listen = v.parse().with_context(|| format!("BOSUN_LISTEN={v:?}"))?;
        }
        if let Some(v) = var("BOSUN_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("BOSUN_DELETE_ENABLED") {
            self.delete_enabled = parse_bool("BOSUN_DELETE_ENABLED", &v)?;
        }
        if let Some(v) = var("BOSUN_AUTO_MOUNT") {
            self.auto_mount = parse_bool("BOSUN_AUTO_MOUNT", &v)?;
        }
        if let Some(v) = var("BOSUN_MAX_MANIFEST_BYTES") {
            self.max_manifest_bytes = v.parse().with_context(|| format!("BOSUN_MAX_MANIFEST_BYTES={v:?}"))?;
        }
        if let Some(v) = var("BOSUN_LOG") {
            self.log = v;
        }
        Ok(())
    }

    pub fn registry_options(&self) -> RegistryOptions {
        RegistryOptions {
            delete_enabled: self.delete_enabled,
            auto_mount: self.auto_mount,
            max_manifest_bytes: self.max_manifest_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bosun.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:6000\"\ndelete_enabled = false\n").unwrap();
        let mut config = Config::from_file(Some(&path)).unwrap();
        assert_eq!(config.listen.port(), 6000);
        assert!(!config.delete_enabled);
        config.apply_env(|k| (k == "BOSUN_DELETE_ENABLED").then(|| "true".to_owned())).unwrap();
        assert!(config.delete_enabled);
        assert_eq!(config.max_manifest_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn errors_name_the_culprit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bosun.toml");
        std::fs::write(&path, "delete_enable = false\n").unwrap();
        let err = format!("{:#}", Config::from_file(Some(&path)).unwrap_err());
        assert!(err.contains("delete_enable"), "{err}");
        let err = Config::default().apply_env(|k| (k == "BOSUN_AUTO_MOUNT").then(|| "maybe".to_owned())).unwrap_err();
        assert!(err.to_string().contains("BOSUN_AUTO_MOUNT"));
    }
}
