//! Parsing pushed manifests into what the registry needs to know about them: their kind,
//! the blobs and child manifests they reference, their subject and artifact type.
//!
//! The bytes themselves are never re-serialized: the registry stores and serves exactly
//! what the client pushed; this module only reads them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Digest;
use super::media_type::*;

/// A content descriptor as it appears in a manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Required by the image spec only since 2023 (it was optional before, and the
    /// reference registry never checked it), so manifests written earlier may lack it.
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2): a config and layers.
    Image,
    /// An index (OCI image index or Docker manifest list): child manifests.
    Index,
}

/// What the registry keeps about a manifest besides its bytes.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub kind: ManifestKind,
    pub media_type: String,
    /// Blobs that must exist in the repository: the config and the distributable layers.
    pub blobs: Vec<Descriptor>,
    /// Non-distributable layers: their bytes live elsewhere (`urls`), so they need not be
    /// in the repository; but one that is there (a client that pushes them anyway, as
    /// Docker with `allow-nondistributable-artifacts` does) is referenced like any layer.
    pub foreign: Vec<Descriptor>,
    /// Manifests that must exist in the repository: the entries of an index.
    pub children: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// The `artifactType` the referrers API reports: the manifest's own, else its config's
    /// media type (image manifests only).
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error(
        "Docker schema 1 manifests are not supported (deprecated since 2019); push the image again with a current client, which writes schema 2 or OCI"
    )]
    Schema1,
    #[error("manifest media type {0:?} is not one this registry stores")]
    UnknownMediaType(String),
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { content_type: String, body: String },
    #[error("manifest is invalid: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // Schema 1 has these instead of layers.
    fs_layers: Option<serde_json::Value>,
}

impl ParsedManifest {
    /// Parses a pushed manifest. `content_type` is the request's Content-Type, if any.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
        // Media types compare without case (RFC 9110); the body's `mediaType` is JSON, exact.
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty());
        let content_type = content_type.as_deref();
        if matches!(content_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)) {
            return Err(ManifestError::Schema1);
        }
        check_shape(body)?;
        let mut raw: RawManifest = serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
        // An empty artifactType is a missing one (the referrers API then gives an image's
        // config type, and nothing for an index).
        raw.artifact_type = raw.artifact_type.filter(|t| !t.is_empty());
        if raw.schema_version == Some(1) || raw.fs_layers.is_some() {
            return Err(ManifestError::Schema1);
        }
        match raw.schema_version {
            Some(2) => {}
            Some(v) => return Err(ManifestError::Invalid(format!("schemaVersion {v} is not 2"))),
            None => return Err(ManifestError::Invalid("schemaVersion is missing (it must be 2)".into())),
        }
        if let (Some(ct), Some(body_type)) = (content_type, raw.media_type.as_deref())
            && !ct.eq_ignore_ascii_case(body_type)
        {
            return Err(ManifestError::MediaTypeMismatch { content_type: ct.to_owned(), body: body_type.to_owned() });
        }
        // Docker's schema 2 formats require their mediaType, and the reference registry
        // refuses them without it. Bytes without one are OCI, so that one digest has one
        // media type whatever Content-Type each push of it came with.
        if let (None, Some(ct @ (DOCKER_MANIFEST | DOCKER_MANIFEST_LIST))) = (&raw.media_type, content_type) {
            return Err(ManifestError::Invalid(format!(
                "a {ct} manifest must carry its mediaType (Docker's schema 2 requires it; without one, push it as OCI)"
            )));
        }
        let media_type = match raw.media_type.as_deref().or(content_type) {
            Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED) => return Err(ManifestError::Schema1),
            Some(t) => t.to_owned(),
            // The OCI image spec lets mediaType be omitted; the shape tells the kind.
            None if raw.manifests.is_some() => OCI_INDEX.to_owned(),
            None => OCI_MANIFEST.to_owned(),
        };
        let kind = match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
            OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
            other => return Err(ManifestError::UnknownMediaType(other.to_owned())),
        };
        let descriptors = raw.config.iter().chain(raw.layers.iter().flatten()).chain(raw.manifests.iter().flatten());
        for d in descriptors.chain(raw.subject.iter()) {
            if d.size < 0 {
                return Err(ManifestError::Invalid(format!("descriptor {} has a negative size", d.digest)));
            }
        }
        let parsed = match kind {
            ManifestKind::Image => {
                let config =
                    raw.config.ok_or_else(|| ManifestError::Invalid("an image manifest needs a config".into()))?;
                let layers = raw
                    .layers
                    .ok_or_else(|| ManifestError::Invalid("an image manifest needs a layers array".into()))?;
                if raw.manifests.is_some() {
                    return Err(ManifestError::Invalid("an image manifest cannot have manifests".into()));
                }
                let config_type = Some(config.media_type.clone()).filter(|t| !t.is_empty());
                let artifact_type = raw.artifact_type.clone().or(config_type);
                let (foreign, layers): (Vec<_>, Vec<_>) =
                    layers.into_iter().partition(|l| is_non_distributable(&l.media_type));
                let mut blobs = vec![config];
                blobs.extend(layers);
                ParsedManifest {
                    kind,
                    media_type,
                    blobs,
                    foreign,
                    children: Vec::new(),
                    subject: raw.subject,
                    artifact_type,
                    annotations: raw.annotations,
                }
            }
            ManifestKind::Index => {
                let children =
                    raw.manifests.ok_or_else(|| ManifestError::Invalid("an index needs a manifests array".into()))?;
                if raw.layers.is_some() || raw.config.is_some() {
                    return Err(ManifestError::Invalid("an index cannot have a config or layers".into()));
                }
                ParsedManifest {
                    kind,
                    media_type,
                    blobs: Vec::new(),
                    foreign: Vec::new(),
                    children,
                    subject: raw.subject,
                    artifact_type: raw.artifact_type,
                    annotations: raw.annotations,
                }
            }
        };
        Ok(parsed)
    }
}

/// Refuses a manifest, or a descriptor in it, that is not a JSON object. The typed parse
/// alone would take an array for either (serde reads a struct's fields by position from
/// one), and store as an image manifest something no client can read.
fn check_shape(body: &[u8]) -> Result<(), ManifestError> {
    use serde_json::Value;
    let top: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let object = |key: &str, v: &Value| match v {
        Value::Object(_) => Ok(()),
        _ => Err(ManifestError::Invalid(format!("{key} must be a JSON object (a descriptor)"))),
    };
    for key in ["config", "subject"] {
        match top.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => object(key, v)?,
        }
    }
    for key in ["layers", "manifests"] {
        match top.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => items.iter().try_for_each(|v| object(&format!("each of {key}"), v))?,
            Some(_) => return Err(ManifestError::Invalid(format!("{key} must be an array of descriptors"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]{extra}}}"#
        )
    }

    #[test]
    fn image_manifest_references_config_and_layers() {
        let m = ParsedManifest::parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        let digests: Vec<String> = m.blobs.iter().map(|d| d.digest.to_string()).collect();
        assert_eq!(digests, [D1, D2]);
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":9}}"#
        );
        let m = ParsedManifest::parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sig"));
        assert_eq!(m.subject.unwrap().digest.to_string(), D1);
        // Empty is missing: an image's config type, an index's nothing.
        let m = ParsedManifest::parse(image(r#","artifactType":"""#).as_bytes(), None).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
        let index = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","artifactType":"","manifests":[]}}"#);
        assert_eq!(ParsedManifest::parse(index.as_bytes(), None).unwrap().artifact_type, None);
    }

    /// Content-Type compares without case and without its parameters (RFC 9110).
    #[test]
    fn content_type_without_case() {
        let shouted = "Application/VND.OCI.Image.Manifest.v1+JSON; charset=utf-8";
        assert_eq!(ParsedManifest::parse(image("").as_bytes(), Some(shouted)).unwrap().media_type, OCI_MANIFEST);
        let untyped = image("").replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
        assert_eq!(ParsedManifest::parse(untyped.as_bytes(), Some(shouted)).unwrap().media_type, OCI_MANIFEST);
    }

    /// Bytes without a mediaType are OCI only: pushed once as Docker's schema 2 and once
    /// as OCI, one digest would otherwise be served with whichever type came first.
    #[test]
    fn a_docker_type_needs_its_media_type_in_the_body() {
        let untyped = image("").replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
        let list = r#"{"schemaVersion":2,"manifests":[]}"#;
        for (body, ct) in [(untyped.as_str(), DOCKER_MANIFEST), (list, DOCKER_MANIFEST_LIST)] {
            let e = ParsedManifest::parse(body.as_bytes(), Some(ct)).unwrap_err();
            assert!(matches!(&e, ManifestError::Invalid(m) if m.contains("mediaType")), "{e}");
        }
        let typed = untyped.replacen('{', &format!(r#"{{"mediaType":"{DOCKER_MANIFEST}","#), 1);
        assert_eq!(ParsedManifest::parse(typed.as_bytes(), Some(DOCKER_MANIFEST)).unwrap().media_type, DOCKER_MANIFEST);
    }

    #[test]
    fn index_children() {
        let body =
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":5}}]}}"#);
        let m = ParsedManifest::parse(body.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.children.len(), 1);
        assert!(m.blobs.is_empty());
    }

    #[test]
    fn refusals() {
        assert_eq!(
            ParsedManifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err(),
            ManifestError::Schema1
        );
        assert_eq!(ParsedManifest::parse(b"{}", Some(DOCKER_SCHEMA1_SIGNED)).unwrap_err(), ManifestError::Schema1);
        assert!(matches!(ParsedManifest::parse(b"not json", None), Err(ManifestError::Json(_))));
        assert!(matches!(
            ParsedManifest::parse(image("").as_bytes(), Some(OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        let bad_digest = image("").replace(D2, "sha256:nothex");
        assert!(matches!(ParsedManifest::parse(bad_digest.as_bytes(), None), Err(ManifestError::Json(_))));
    }

    /// Shapes the image spec does not allow, which a lenient parse would store.
    #[test]
    fn malformed_shapes_are_refused() {
        let config =
            r#"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"D1","size":2}"#.replace("D1", D1);
        let cases = [
            // The whole manifest as an array, fields by position.
            format!(
                r#"[2,"{OCI_MANIFEST}",null,["application/vnd.oci.image.config.v1+json","{D1}",2],[],null,null,null,null]"#
            ),
            // A descriptor as an array.
            image("").replace(&config, &format!(r#"["application/vnd.oci.image.config.v1+json","{D1}",2]"#)),
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"layers":{{}}}}"#),
            // No schemaVersion.
            image("").replace(r#""schemaVersion":2,"#, ""),
            // A subject of negative size.
            image(&format!(r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":-5}}"#)),
            // An image with children, an index with a config or layers: what they list
            // there would be neither checked nor counted.
            image(&format!(r#","manifests":[{config}]"#)),
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[],"layers":[{config}]}}"#),
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[],"config":{config}}}"#),
        ];
        for body in cases {
            assert!(ParsedManifest::parse(body.as_bytes(), None).is_err(), "accepted: {body}");
        }
        // A descriptor without its mediaType is older than the rule that requires it.
        let old = image("").replace(r#""mediaType":"application/vnd.oci.image.config.v1+json","#, "");
        assert_eq!(ParsedManifest::parse(old.as_bytes(), None).unwrap().artifact_type, None);
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = image("").replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        );
        let m = ParsedManifest::parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.blobs.len(), 1);
    }
}
