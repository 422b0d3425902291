//! Listings: the catalog, a repository's tags, and the referrers of a manifest.

use std::collections::BTreeMap;

use super::{Error, Registry, Result};
use crate::metadata::{manifests, repositories, tags};
use crate::oci::{Digest, RepoName};

/// A manifest whose subject is the queried digest, as the referrers API lists it.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Registry {
    /// Up to `n` repository names after `last`, in lexical order.
    pub async fn catalog(&self, last: Option<String>, n: usize) -> Result<Vec<String>> {
        Ok(self.meta.read(move |c| repositories::list(c, last.as_deref(), n)).await?)
    }

    /// Up to `n` tags of `name` after `last`, in lexical order.
    pub async fn tags(&self, name: &RepoName, last: Option<String>, n: usize) -> Result<Vec<String>> {
        let n_ = name.clone();
        self.meta
            .read(move |c| {
                Ok(match repositories::find(c, &n_)? {
                    Some(repo) => Some(tags::list(c, repo, last.as_deref(), n)?),
                    None => None,
                })
            })
            .await?
            .ok_or_else(|| Error::NameUnknown(name.clone()))
    }

    /// The manifests of `name` whose subject is `subject`, optionally of one artifact type.
    /// An unknown repository has no referrers (the API never answers 404).
    pub async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<String>,
        (after, limit, max_bytes): (Option<String>, usize, usize),
    ) -> Result<(Vec<Referrer>, bool)> {
        let (n, s) = (name.clone(), subject.clone());
        let page = self
            .meta
            .read(move |c| match repositories::find(c, &n)? {
                Some(repo) => {
                    manifests::referrers(c, repo, &s, artifact_type.as_deref(), (after.as_deref(), limit, max_bytes))
                }
                None => Ok(manifests::ReferrerPage { rows: Vec::new(), more: false }),
            })
            .await?;
        let referrers = page
            .rows
            .into_iter()
            .map(|r| {
                let annotations = r
                    .annotations
                    .map(|a| serde_json::from_str(&a))
                    .transpose()
                    .map_err(|e| Error::Internal(format!("stored annotations of {}: {e}", r.digest)))?;
                Ok(Referrer {
                    digest: r.digest,
                    media_type: r.media_type,
                    size: r.size,
                    artifact_type: r.artifact_type,
                    annotations,
                })
            })
            .collect::<Result<_>>()?;
        Ok((referrers, page.more))
    }
}
