//! Quotas: the most blob bytes a repository (or a group of repositories matching a glob)
//! may hold, each blob counted once however many manifests or repositories use it.
//! Checked when a blob is linked into a repository (upload or mount), inside the linking
//! transaction, so a push that would exceed stores nothing.

use rusqlite::Connection;

use super::Error;
use crate::metadata::{self, retention};
use crate::oci::{Digest, RepoName};
use crate::policy::Policies;

/// Refuses linking `digest` (`size` bytes) into `name` if a quota would be exceeded.
pub(super) fn check(
    c: &Connection,
    policies: &Policies,
    name: &RepoName,
    digest: &Digest,
    size: u64,
) -> std::result::Result<(), Error> {
    let quotas = policies.quotas_for(name.as_str());
    if quotas.is_empty() {
        return Ok(());
    }
    // Every repository is listed only when a group quota needs it; a per-repository
    // quota looks up just this one (upload path).
    let all = if quotas.iter().any(|q| q.spec.total) { retention::repositories(c)? } else { Vec::new() };
    let this: Vec<i64> = metadata::repositories::find(c, name)?.into_iter().collect();
    for q in quotas {
        let matching: Vec<i64>;
        let group: &[i64] = if q.spec.total {
            matching = all.iter().filter(|(_, n)| q.repositories.matches(n)).map(|(id, _)| *id).collect();
            &matching
        } else {
            &this
        };
        let Some(used) = metadata::blobs::group_usage(c, group, digest)? else { continue };
        if used + size > q.spec.max_bytes {
            let scope = if q.spec.total {
                format!("the repositories matching {} together", q.repositories)
            } else {
                format!("repository {name}")
            };
            return Err(Error::Denied(format!(
                "quota[{}] exceeded: {scope} hold {used} bytes; this blob of {size} bytes would make {} of the {} allowed",
                q.index,
                used + size,
                q.spec.max_bytes
            )));
        }
    }
    Ok(())
}
