//! Quotas: the most blob bytes a repository (or a group of repositories matching a glob)
//! may hold, each blob counted once however many manifests or repositories use it.
//! Checked when a blob is linked into a repository (upload or mount), inside the linking
//! transaction, so a push that would exceed stores nothing. The bytes are counted per
//! group by the database (`metadata::quota`): a check costs a few row reads, whatever the
//! group's size.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::Error;
use crate::metadata::repositories::RepoId;
use crate::metadata::{self, retention};
use crate::oci::{Digest, RepoName};
use crate::policy::{Policies, Quota};

/// The group a quota counts `repo` in: every repository it matches together (`total`), or
/// the repository alone. `None` for a repository-wide quota on a repository not created
/// yet, which holds nothing.
fn group_key(q: &Quota, repo: Option<RepoId>) -> Option<String> {
    if q.spec.total { Some(format!("total {}", q.repositories)) } else { repo.map(|r| format!("repository {r}")) }
}

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
    let repo = metadata::repositories::find(c, name)?;
    for q in quotas {
        let used = match group_key(q, repo) {
            Some(key) => metadata::quota::usage(c, &key, repo, digest)?,
            None => Some(0),
        };
        let Some(used) = used else { continue };
        // In u128: `size` may be a client's declared length, up to u64::MAX.
        let after = u128::from(used) + u128::from(size);
        if after > u128::from(q.spec.max_bytes) {
            let scope = if q.spec.total {
                format!("the repositories matching {} together", q.repositories)
            } else {
                format!("repository {name}")
            };
            return Err(Error::Denied(format!(
                "quota[{}] exceeded: {scope} hold {used} bytes; this blob of {size} bytes would make {} of the {} allowed",
                q.index, after, q.spec.max_bytes
            )));
        }
    }
    Ok(())
}

/// Links `digest` into `repo` (`name`), the repository first put in the groups of the
/// quotas that govern it: a repository created since the server started is in none yet,
/// and a link its groups did not count would go unseen by every later check. Every link a
/// client makes goes through here.
pub(super) fn link(
    c: &Connection,
    policies: &Policies,
    name: &RepoName,
    repo: RepoId,
    digest: &Digest,
    now: i64,
) -> metadata::Result<()> {
    for q in policies.quotas_for(name.as_str()) {
        if let Some(key) = group_key(q, Some(repo)) {
            metadata::quota::join(c, &key, repo)?;
        }
    }
    metadata::blobs::link(c, repo, digest, now)
}

/// The quota groups `policies` make of the repositories there are: what
/// [`metadata::quota::rebuild`] counts when the server opens the data directory.
pub(crate) fn groups(c: &Connection, policies: &Policies) -> metadata::Result<Vec<(String, Vec<RepoId>)>> {
    if policies.quotas.is_empty() {
        return Ok(Vec::new());
    }
    let mut groups: BTreeMap<String, Vec<RepoId>> = BTreeMap::new();
    for (id, name) in retention::repositories(c)? {
        for q in policies.quotas_for(&name) {
            groups.entry(group_key(q, Some(id)).expect("an existing repository has a group")).or_default().push(id);
        }
    }
    Ok(groups.into_iter().collect())
}
