//! Parsing a `/v2/...` request path into a closed set of endpoints.
//!
//! A repository name has any number of `/`-separated components, so the endpoint is
//! recognised from the end of the path (`.../manifests/<ref>`, `.../blobs/uploads/<id>`,
//! ...) and everything before it is the name. The name is a prefix, so the rightmost
//! match is always the endpoint: a repository called `a/manifests` still parses.

use axum::http::Method;

use crate::oci::{Digest, DigestError, Reference, RepoName, RepoNameError, Tag, TagError, UploadId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: RepoName },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: RepoName, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: RepoName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: RepoName, id: UploadId },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: RepoName, digest: Digest },
}

/// Why a path is not an endpoint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error(transparent)]
    Name(#[from] RepoNameError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error("upload id {0:?} is not one this registry issued")]
    UploadId(String),
}

/// Decodes `%XX` escapes of one path segment.
fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Endpoint {
    /// The methods the endpoint takes (`api::route` answers each), for a 405's `Allow`.
    pub fn methods(&self) -> &'static [Method] {
        use Endpoint::*;
        match self {
            Base | Catalog | Tags { .. } | Referrers { .. } => &[Method::GET, Method::HEAD],
            Manifest { .. } => &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE],
            Blob { .. } => &[Method::GET, Method::HEAD, Method::DELETE],
            UploadStart { .. } => &[Method::POST],
            Upload { .. } => &[Method::GET, Method::HEAD, Method::PATCH, Method::PUT, Method::DELETE],
        }
    }

    /// Parses a request path (with its leading `/v2`).
    pub fn parse(path: &str) -> Result<Endpoint, PathError> {
        let not_found = || PathError::NotFound(path.to_owned());
        let rest = match path {
            "/v2" | "/v2/" => return Ok(Endpoint::Base),
            _ => path.strip_prefix("/v2/").ok_or_else(not_found)?,
        };
        if rest == "_catalog" {
            return Ok(Endpoint::Catalog);
        }
        let segments: Vec<String> = rest.split('/').map(percent_decode).collect::<Option<_>>().ok_or_else(not_found)?;
        let n = segments.len();
        let name_of = |len: usize| -> Result<RepoName, PathError> {
            if len == 0 {
                return Err(not_found());
            }
            Ok(segments[..len].join("/").parse()?)
        };
        let last = segments[n - 1].as_str();
        let second = if n >= 2 { segments[n - 2].as_str() } else { "" };
        let third = if n >= 3 { segments[n - 3].as_str() } else { "" };
        if second == "tags" && last == "list" {
            return Ok(Endpoint::Tags { name: name_of(n - 2)? });
        }
        if second == "manifests" {
            let reference = if last.contains(':') {
                Reference::Digest(last.parse()?)
            } else {
                Reference::Tag(last.parse::<Tag>()?)
            };
            return Ok(Endpoint::Manifest { name: name_of(n - 2)?, reference });
        }
        if second == "referrers" {
            return Ok(Endpoint::Referrers { name: name_of(n - 2)?, digest: last.parse()? });
        }
        if third == "blobs" && second == "uploads" {
            let name = name_of(n - 3)?;
            if last.is_empty() {
                return Ok(Endpoint::UploadStart { name });
            }
            let id = last.parse().map_err(|()| PathError::UploadId(last.to_owned()))?;
            return Ok(Endpoint::Upload { name, id });
        }
        if second == "blobs" {
            let name = name_of(n - 2)?;
            if last == "uploads" {
                return Ok(Endpoint::UploadStart { name });
            }
            return Ok(Endpoint::Blob { name, digest: last.parse()? });
        }
        Err(not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn name(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(Endpoint::parse("/v2/"), Ok(Endpoint::Base));
        assert_eq!(Endpoint::parse("/v2/_catalog"), Ok(Endpoint::Catalog));
        assert_eq!(Endpoint::parse("/v2/a/b/tags/list"), Ok(Endpoint::Tags { name: name("a/b") }));
        assert_eq!(
            Endpoint::parse("/v2/a/manifests/latest"),
            Ok(Endpoint::Manifest { name: name("a"), reference: Reference::Tag("latest".parse().unwrap()) })
        );
        assert_eq!(
            Endpoint::parse(&format!("/v2/a/manifests/{}", D.replace(':', "%3A"))),
            Ok(Endpoint::Manifest { name: name("a"), reference: Reference::Digest(D.parse().unwrap()) })
        );
        assert_eq!(
            Endpoint::parse(&format!("/v2/x/y/z/blobs/{D}")),
            Ok(Endpoint::Blob { name: name("x/y/z"), digest: D.parse().unwrap() })
        );
        assert_eq!(Endpoint::parse("/v2/a/blobs/uploads/"), Ok(Endpoint::UploadStart { name: name("a") }));
        assert_eq!(Endpoint::parse("/v2/a/blobs/uploads"), Ok(Endpoint::UploadStart { name: name("a") }));
        let id = UploadId::random();
        assert_eq!(Endpoint::parse(&format!("/v2/a/blobs/uploads/{id}")), Ok(Endpoint::Upload { name: name("a"), id }));
        assert_eq!(
            Endpoint::parse(&format!("/v2/a/referrers/{D}")),
            Ok(Endpoint::Referrers { name: name("a"), digest: D.parse().unwrap() })
        );
    }

    #[test]
    fn names_that_look_like_endpoints() {
        assert_eq!(
            Endpoint::parse("/v2/manifests/blobs/manifests/v1"),
            Ok(Endpoint::Manifest { name: name("manifests/blobs"), reference: Reference::Tag("v1".parse().unwrap()) })
        );
        assert_eq!(Endpoint::parse("/v2/tags/tags/list"), Ok(Endpoint::Tags { name: name("tags") }));
    }

    #[test]
    fn refuses_bad_paths() {
        assert!(matches!(Endpoint::parse("/v2/manifests/latest"), Err(PathError::NotFound(_))));
        assert!(matches!(Endpoint::parse("/v3/a/tags/list"), Err(PathError::NotFound(_))));
        assert!(matches!(Endpoint::parse("/v2/A/tags/list"), Err(PathError::Name(_))));
        assert!(matches!(Endpoint::parse("/v2/../x/tags/list"), Err(PathError::Name(_))));
        assert!(matches!(Endpoint::parse("/v2/a%2F..%2Fb/tags/list"), Err(PathError::Name(_))));
        assert!(matches!(Endpoint::parse("/v2/a/manifests/sha256:totallywrong"), Err(PathError::Digest(_))));
        assert!(matches!(Endpoint::parse("/v2/a/manifests/-bad"), Err(PathError::Tag(_))));
        assert!(matches!(Endpoint::parse("/v2/a/blobs/uploads/../../x"), Err(PathError::NotFound(_))));
        assert!(matches!(Endpoint::parse("/v2/a/blobs/uploads/xyz"), Err(PathError::UploadId(_))));
        assert!(matches!(Endpoint::parse("/v2/a/blobs/%zz"), Err(PathError::NotFound(_))));
    }
}
