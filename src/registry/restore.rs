//! The restore window: a tag deleted by hand or by a policy can be put back, pointing at
//! the same manifest, until the window closes (garbage collection keeps the manifest that
//! long).

use super::{Error, Registry, Result};
use crate::metadata::{manifests, now_ms, repositories, retention, tags};
use crate::oci::{RepoName, Tag};

impl Registry {
    /// Restores `name:tag` to the manifest it pointed at when it was deleted; returns that
    /// manifest's digest.
    pub async fn restore_tag(&self, name: &RepoName, tag: &Tag) -> Result<String> {
        self.check_room_to_add()?;
        let (n, t) = (name.clone(), tag.clone());
        let since = self.options.restore_since(now_ms());
        self.meta
            .write(move |c| {
                let now = now_ms();
                let Some(deleted) = retention::restorable(c, n.as_str(), t.as_str(), since)? else {
                    return Err(Error::ManifestUnknown(format!(
                        "to put back as {n}:{t} (the tag has no deletion within the restore window that can be undone: its manifest is gone, or was deleted since)"
                    )));
                };
                let repo = repositories::find(c, &n)?.ok_or_else(|| Error::NameUnknown(n.clone()))?;
                if let Some((_, current)) = retention::tag_target(c, repo, t.as_str())? {
                    return Err(Error::Conflict(format!(
                        "{n}:{t} exists again (it points at {current}); not overwritten"
                    )));
                }
                // As old as it was: a tag restored as just pushed would rank as the newest
                // under `newest = N`.
                tags::restore(c, repo, &t, deleted.manifest, deleted.pushed_at.unwrap_or(now), deleted.pulled_at)?;
                manifests::touch(c, deleted.manifest, now)?;
                retention::mark_restored(c, deleted.row, now)?;
                Ok(deleted.digest)
            })
            .await
    }
}
