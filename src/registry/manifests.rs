//! Pushing, pulling and deleting manifests.

use bytes::Bytes;

use super::{Condition, Error, Registry, Result};
use crate::metadata::repositories::RepoId;
use crate::metadata::{blobs, manifests, now_ms, repositories, retention, tags};
use crate::oci::{Digest, ManifestError, ParsedManifest, Reference, RepoName, Tag};

/// A manifest as served: its bytes exactly as pushed.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub payload: Bytes,
    /// What `note_pull` records, once the handler knows the manifest is served.
    pull: PullNote,
}

#[derive(Debug, Clone)]
struct PullNote {
    manifest: manifests::ManifestId,
    repo: repositories::RepoId,
    tag: Option<String>,
}

/// The outcome of a manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

impl Registry {
    /// A manifest by tag or digest. A manifest that collection could
    /// take (no tag, no parent) is marked as used before it is answered, as a blob probe
    /// is: the client may be about to list it in an index, and one reported present here
    /// is not collected before it can.
    pub async fn get_manifest(&self, name: &RepoName, reference: &Reference) -> Result<StoredManifest> {
        let (n, r) = (name.clone(), reference.clone());
        let (repo, found) = self
            .meta
            .read(move |c| {
                let Some(repo) = repositories::find(c, &n)? else {
                    return Ok(Err(Error::NameUnknown(n)));
                };
                let row = match &r {
                    Reference::Tag(t) => manifests::by_tag(c, repo, t)?,
                    Reference::Digest(d) => manifests::by_digest(c, repo, d)?,
                };
                Ok(row.map(|row| (repo, row)).ok_or_else(|| Error::ManifestUnknown(r.to_string())))
            })
            .await??;
        let digest: Digest = found.digest.parse().map_err(|e| Error::Internal(format!("stored digest: {e}")))?;
        // At most one write per refresh interval, as for blobs.
        let fresh_after = now_ms() - self.options.probe_refresh_interval().as_millis() as i64;
        if found.collectable && (found.touched_at < fresh_after || self.options.grace_period.is_zero()) {
            let d = digest.clone();
            let present =
                self.write_in_repository(name, move |c, repo| manifests::probe(c, repo, &d, now_ms())).await?;
            if present != Some(true) {
                return Err(Error::ManifestUnknown(reference.to_string()));
            }
        }
        let tag = match reference {
            Reference::Tag(t) => Some(t.to_string()),
            Reference::Digest(_) => None,
        };
        let pull = PullNote { manifest: found.id, repo, tag };
        Ok(StoredManifest { digest, media_type: found.media_type, payload: Bytes::from(found.payload), pull })
    }

    /// Notes that `manifest` was served to a GET (not a HEAD, nor a GET refused by its
    /// Accept header), for retention's "pulled within" rules, in memory (see `pulls`).
    pub fn note_pull(&self, manifest: &StoredManifest) {
        let PullNote { manifest: id, repo, tag } = manifest.pull.clone();
        self.pulls.note(id, repo, manifest.digest.to_string(), tag, now_ms());
    }

    /// Stores a manifest under `reference` (a tag, or the digest it must have), and points
    /// `also_tag` at it too (the `?tag=` parameters of a push by digest), all in one
    /// transaction: an immutable tag among them refuses the whole push. Every blob and child
    /// manifest it references must already be in the repository; its subject need not be
    /// (the spec lets referrers arrive before their subject).
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        also_tag: &[Tag],
        content_type: Option<&str>,
        payload: Bytes,
        condition: &Condition,
    ) -> Result<PushedManifest> {
        self.check_room_to_add()?;
        let limit = self.options.max_manifest_bytes;
        if payload.len() as u64 > limit {
            return Err(Error::ManifestTooLarge { size: Some(payload.len() as u64), limit });
        }
        let digest = match reference {
            Reference::Digest(d) if d.matches(&payload) => d.clone(),
            Reference::Digest(d) => {
                return Err(Error::DigestInvalid(format!(
                    "manifest body does not have the digest {d} it was pushed under"
                )));
            }
            Reference::Tag(_) => Digest::sha256_of(&payload),
        };
        let mut parsed = ParsedManifest::parse(&payload, content_type).map_err(|e| match e {
            ManifestError::Json(_)
            | ManifestError::Schema1
            | ManifestError::UnknownMediaType(_)
            | ManifestError::MediaTypeMismatch { .. }
            | ManifestError::Invalid(_) => Error::ManifestInvalid(e.to_string()),
        })?;
        let pushed =
            PushedManifest { digest: digest.clone(), subject: parsed.subject.as_ref().map(|s| s.digest.clone()) };
        let n = name.clone();
        let policies = self.policies();
        // Each tag to set, with the immutability rule that covers it, if any.
        let tagged: Vec<(Tag, Option<String>)> = match reference {
            Reference::Tag(t) => std::slice::from_ref(t),
            Reference::Digest(_) => also_tag,
        }
        .iter()
        .map(|t| (t.clone(), policies.immutable_rule(name.as_str(), t.as_str()).map(|r| r.to_string())))
        .collect();
        // A condition is about what the URL names; the tags of `?tag=` would move unchecked.
        if !condition.is_empty() && matches!(reference, Reference::Digest(_)) && !also_tag.is_empty() {
            return Err(Error::Unsupported(
                "If-Match and If-None-Match apply to what the URL names, not to ?tag= tags: push each tag \
                 conditionally by its own URL"
                    .into(),
            ));
        }
        let (r, condition) = (reference.clone(), condition.clone());
        self.meta
            .write(move |c| {
                let now = now_ms();
                let repo = repositories::ensure(c, &n, now)?;
                if !condition.is_empty() {
                    condition.write(&format!("{n}:{r}"), current(c, repo, &r)?.as_deref())?;
                }
                for (tag, rule) in &tagged {
                    if let Some(rule) = rule
                        && let Some((_, current)) = retention::tag_target(c, repo, tag.as_str())?
                        && current != digest.to_string()
                    {
                        return Err(Error::Denied(format!(
                            "tag {n}:{tag} is immutable ({rule}); it points at {current} and cannot be moved"
                        )));
                    }
                }
                // A non-distributable layer the repository holds is referenced, so that
                // collection keeps it; one it does not hold is fetched from elsewhere.
                for layer in std::mem::take(&mut parsed.foreign) {
                    if blobs::linked_size(c, repo, &layer.digest)?.is_some() {
                        parsed.blobs.push(layer);
                    }
                }
                for blob in &parsed.blobs {
                    match blobs::linked_size(c, repo, &blob.digest)? {
                        None => return Err(Error::ManifestBlobUnknown(blob.digest.clone())),
                        Some(size) if size != blob.size as u64 => {
                            return Err(Error::ManifestInvalid(format!(
                                "descriptor of {} says {} bytes, the blob has {size}",
                                blob.digest, blob.size
                            )));
                        }
                        Some(_) => {}
                    }
                }
                let mut children = Vec::with_capacity(parsed.children.len());
                for child in &parsed.children {
                    let (id, size) = manifests::id_and_size(c, repo, &child.digest)?
                        .ok_or_else(|| Error::ManifestBlobUnknown(child.digest.clone()))?;
                    if size != child.size as u64 {
                        return Err(Error::ManifestInvalid(format!(
                            "descriptor of {} says {} bytes, the manifest has {size}",
                            child.digest, child.size
                        )));
                    }
                    children.push(id);
                }
                let id = manifests::insert(c, repo, &digest, &parsed, &children, &payload, now)?;
                for (tag, _) in &tagged {
                    tags::set(c, repo, tag, id, now)?;
                }
                Ok(())
            })
            .await?;
        Ok(pushed)
    }

    /// Deletes a tag (the manifest stays), or a manifest by digest with every tag that
    /// points at it. A manifest that an index of the repository lists is refused: deleting
    /// it would break the index.
    pub async fn delete_manifest(&self, name: &RepoName, reference: &Reference, condition: &Condition) -> Result<()> {
        self.check_delete_enabled()?;
        let (n, r, condition) = (name.clone(), reference.clone(), condition.clone());
        let policies = self.policies();
        self.meta
            .write(move |c| {
                let now = now_ms();
                let repo = repositories::find(c, &n)?.ok_or_else(|| Error::NameUnknown(n.clone()))?;
                let check_mutable = |tag: &str| match policies.immutable_rule(n.as_str(), tag) {
                    Some(rule) => {
                        Err(Error::Denied(format!("tag {n}:{tag} is immutable ({rule}) and cannot be deleted")))
                    }
                    None => Ok(()),
                };
                // Preconditions are judged last: a request refused without them (404, 403
                // for an immutable tag, 405 for an index child) is refused the same with them.
                let what = format!("{n}:{r}");
                match &r {
                    Reference::Tag(t) => {
                        check_mutable(t.as_str())?;
                        let (id, digest) = retention::tag_target(c, repo, t.as_str())?
                            .ok_or_else(|| Error::ManifestUnknown(t.to_string()))?;
                        condition.write(&what, Some(&digest))?;
                        retention::record_deletion(c, &api_deletion(n.as_str(), t.as_str(), &digest, id, now, true))?;
                        tags::delete(c, repo, t, now)?;
                    }
                    Reference::Digest(d) => {
                        let id = manifests::id_of(c, repo, d)?.ok_or_else(|| Error::ManifestUnknown(d.to_string()))?;
                        if let Some(parent) = manifests::parent_of(c, id)? {
                            return Err(Error::ManifestReferenced { digest: d.clone(), parent });
                        }
                        let digest = d.to_string();
                        let tags = tags::names_of(c, id)?;
                        tags.iter().try_for_each(|tag| check_mutable(tag))?;
                        condition.write(&what, Some(&digest))?;
                        for tag in &tags {
                            retention::record_deletion(c, &api_deletion(n.as_str(), tag, &digest, id, now, false))?;
                        }
                        retention::close_restores(c, id)?;
                        manifests::delete(c, id, Some(now))?;
                    }
                }
                Ok(())
            })
            .await
    }
}

/// The digest of the manifest `reference` names in `repo` now, if any (what a condition of
/// the request is about).
fn current(c: &rusqlite::Connection, repo: RepoId, reference: &Reference) -> Result<Option<String>> {
    Ok(match reference {
        Reference::Tag(t) => retention::tag_target(c, repo, t.as_str())?.map(|(_, digest)| digest),
        Reference::Digest(d) => manifests::id_of(c, repo, d)?.map(|_| d.to_string()),
    })
}

/// The audit record of a tag deleted through the API (`restorable` unless the manifest
/// itself is deleted).
fn api_deletion<'a>(
    repository: &'a str,
    tag: &'a str,
    digest: &'a str,
    manifest_id: manifests::ManifestId,
    at: i64,
    restorable: bool,
) -> retention::TagDeletion<'a> {
    retention::TagDeletion {
        repository,
        tag,
        digest,
        manifest_id,
        at,
        actor: "api",
        reason: if restorable { "tag deleted through the API" } else { "manifest deleted through the API" },
        restorable,
    }
}
