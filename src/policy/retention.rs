//! Running retention policies: a plan says, for every tag of every governed repository,
//! keep or delete and the rule that decided, plus the bytes that deleting would free;
//! applying a plan deletes exactly what it showed, or nothing if anything changed since
//! (except what changes while it applies, which is kept: see [`Retention::apply`]).
//!
//! "Bytes freed" counts only blobs that no surviving manifest in any repository uses: it is
//! computed by simulating, on a rolled-back transaction on a copy of the database (so that
//! writers go on meanwhile), every collection that would happen anyway, then the
//! deletions, and the collections they lead to.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rules::{Evaluation, TagFacts};
use super::{Policies, RetentionPolicy, Untagged};
use crate::gc::{self, Collector};
use crate::metadata::manifests::ManifestId;
use crate::metadata::repositories::RepoId;
use crate::metadata::{MetadataError, manifests, now_ms, retention as q, tags};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName, Tag};
use crate::registry::RegistryOptions;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagDecision {
    pub tag: String,
    pub digest: String,
    pub keep: bool,
    pub reason: String,
    /// The facts the decision rested on, which apply checks again (a plan saved before
    /// they were recorded reads 0 and so is refused as changed).
    #[serde(default)]
    pub pushed_at: i64,
    #[serde(default)]
    pub pulled_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UntaggedDecision {
    pub digest: String,
    pub keep: bool,
    pub reason: String,
    /// When it was last pushed, probed or untagged, which apply checks again.
    #[serde(default)]
    pub touched_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoPlan {
    pub repository: String,
    pub policy: String,
    pub tags: Vec<TagDecision>,
    pub untagged: Vec<UntaggedDecision>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub id: i64,
    pub created_at: i64,
    pub repositories: Vec<RepoPlan>,
    pub tags_deleted: usize,
    pub manifests_deleted: usize,
    /// Blobs, and their bytes, that no surviving manifest would use once the deletions
    /// are made and collected.
    pub blobs_freed: usize,
    pub bytes_freed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("no retention plan {0} (plans are kept for {days} days)", days = q::PLAN_KEPT_MS / 86_400_000)]
    PlanUnknown(i64),
    #[error("retention plan {0} was applied already")]
    AlreadyApplied(i64),
    #[error(
        "the registry changed since plan {id} was made; nothing was deleted. Make a new plan. Changes: {}",
        first_of(changes)
    )]
    Changed { id: i64, changes: Vec<String> },
    /// An apply that had claimed its plan stopped part-way: what it deleted stays deleted.
    #[error(
        "plan {id} stopped part-way: {cause}. Before that it deleted {tags_deleted} tags (restorable) and {manifests_deleted} untagged manifests; the plan cannot be applied again, a new plan deletes the rest"
    )]
    Stopped { id: i64, tags_deleted: usize, manifests_deleted: usize, cause: Box<RetentionError> },
    #[error("{0}")]
    Invalid(String),
    /// Garbage collection is paused, and with it every deletion a policy would make.
    #[error(
        "garbage collection is paused ({0}), and retention deletes nothing meanwhile (bosun gc --resume); a plan still reports"
    )]
    Paused(crate::metadata::gc_pause::Pause),
}

pub type Result<T> = std::result::Result<T, RetentionError>;

/// The first few of `changes`, and how many more: a plan of 20,000 deletions made stale
/// by another apply would otherwise answer with all of them (700 KB).
fn first_of(changes: &[String]) -> String {
    const SHOWN: usize = 10;
    let shown = format!("{:?}", &changes[..changes.len().min(SHOWN)]);
    match changes.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("{shown} and {more} more"),
        _ => shown,
    }
}

fn tag_facts(rows: &[&q::TagRow]) -> Vec<TagFacts> {
    rows.iter().map(|t| TagFacts { name: t.name.clone(), pushed_at: t.pushed_at, pulled_at: t.pulled_at }).collect()
}

/// The manifest a tag is attached to, for the tags cosign and similar tools write next to
/// an image (`sha256-<hex>.sig`, `.att`, `.sbom`): `sha256:<hex>`.
fn attachment_target(tag: &str) -> Option<Digest> {
    let (base, suffix) = tag.rsplit_once('.')?;
    if !matches!(suffix, "sig" | "att" | "sbom") {
        return None;
    }
    format!("sha256:{}", base.strip_prefix("sha256-")?).parse().ok()
}

/// The manifest an attachment tag names, as the repository has it.
struct Target {
    digest: String,
    present: bool,
    parent: Option<String>,
    /// Untagged by retention, inside the restore window (see [`q::untagged_by_retention`]).
    untagged_by_retention: bool,
}

/// Decides every tag and untagged manifest of one repository under `policy`.
///
/// A tag attached to a manifest (a signature, attestation or SBOM by tag, see
/// [`attachment_target`]) goes with that manifest: kept while a kept (or immutable) tag
/// points at it or an index lists it, deleted with its last tag, kept while the manifest
/// is there untagged
/// (its own rules decide), and deleted once the manifest is gone (restorable, like every
/// tag deletion, should the manifest arrive after all). It takes no place among the tags
/// the rules rank, so that signing an image does not push it out of "the newest N".
fn evaluate(
    c: &rusqlite::Connection,
    policies: &Policies,
    policy: &RetentionPolicy,
    (repo, name): (RepoId, &str),
    options: &RegistryOptions,
    now: i64,
) -> std::result::Result<RepoPlan, MetadataError> {
    let restore_since = options.restore_since(now);
    let rows = q::tags(c, repo)?;
    // Each attachment's target: whether the repository has that manifest, and an index
    // that lists it (which keeps it whatever happens to its own tags).
    let mut targets: Vec<Option<Target>> = Vec::with_capacity(rows.len());
    for row in &rows {
        targets.push(match attachment_target(&row.name) {
            Some(d) => Some(match manifests::id_of(c, repo, &d)? {
                Some(id) => Target {
                    digest: d.to_string(),
                    present: true,
                    parent: manifests::parent_of(c, id)?,
                    untagged_by_retention: q::untagged_by_retention(c, id, restore_since)?,
                },
                None => Target { digest: d.to_string(), present: false, parent: None, untagged_by_retention: false },
            }),
            None => None,
        });
    }
    let own: Vec<&q::TagRow> = rows.iter().zip(&targets).filter(|(_, t)| t.is_none()).map(|(r, _)| r).collect();
    let facts = tag_facts(&own);
    let eval = Evaluation::new(&policy.keep, &facts, now);
    let own_decisions: HashMap<&str, (bool, String)> = own
        .iter()
        .zip(&facts)
        .map(|(row, fact)| {
            let decision = match policies.immutable_rule(name, &row.name) {
                Some(rule) => (true, format!("{rule}")),
                None => eval.keeps(&policy.keep, "keep", fact),
            };
            (row.name.as_str(), decision)
        })
        .collect();
    let kept: HashSet<&str> =
        own.iter().filter(|r| own_decisions[r.name.as_str()].0).map(|r| r.digest.as_str()).collect();
    let tagged: HashSet<&str> = own.iter().map(|r| r.digest.as_str()).collect();
    let tags = rows
        .iter()
        .zip(&targets)
        .map(|(row, target)| {
            let Some(Target { digest: t, present, parent, untagged_by_retention }) = target else {
                return (row, own_decisions[row.name.as_str()].clone());
            };
            let decision = match policies.immutable_rule(name, &row.name) {
                Some(rule) => (true, format!("{rule}")),
                None if kept.contains(t.as_str()) => (true, format!("attached to {t}, which a kept tag points at")),
                // A platform manifest signed on its own stays while its index does.
                None if let Some(index) = parent => (true, format!("attached to {t}, which index {index} lists")),
                None if tagged.contains(t.as_str()) => (false, format!("attached to {t}, whose every tag goes")),
                // An apply that deleted the image's tags and stopped before this tag: the
                // rest of its work.
                None if *untagged_by_retention => (false, format!("attached to {t}, whose tags retention deleted")),
                None if *present => (true, format!("attached to {t}, which no tag points at")),
                None => (false, format!("attached to {t}, which is not in the repository")),
            };
            (row, decision)
        })
        .map(|(row, (keep, reason))| TagDecision {
            tag: row.name.clone(),
            digest: row.digest.clone(),
            keep,
            reason,
            pushed_at: row.pushed_at,
            pulled_at: row.pulled_at,
        })
        .collect();
    let untagged = match policy.untagged {
        Untagged::Gc => Vec::new(),
        Untagged::Keep => q::untagged(c, repo, restore_since)?
            .into_iter()
            .map(|(digest, _, touched_at)| UntaggedDecision {
                digest,
                keep: true,
                reason: "untagged = \"keep\"".into(),
                touched_at,
            })
            .collect(),
        Untagged::RemoveAfter(age) => q::untagged(c, repo, restore_since)?
            .into_iter()
            .map(|(digest, _, touched_at)| {
                let unused_for = std::time::Duration::from_millis((now - touched_at).max(0) as u64);
                let mut reason = format!(
                    "untagged = \"{}\": untagged for {}",
                    super::rules::fmt_duration(age),
                    super::rules::fmt_duration(unused_for)
                );
                // Never sooner than collection would: the children of an index being pushed
                // are untagged until the index arrives, and a client that just probed a
                // manifest may be about to list it in one.
                let within_grace = unused_for < options.grace_period;
                if unused_for >= age && within_grace {
                    reason +=
                        &format!(", within the grace period ({})", super::rules::fmt_duration(options.grace_period));
                }
                UntaggedDecision { digest, keep: unused_for < age || within_grace, reason, touched_at }
            })
            .collect(),
    };
    Ok(RepoPlan { repository: name.to_owned(), policy: policy.spec.name.clone(), tags, untagged })
}

/// What the deletion of an attachment (a signature by tag) rests on besides its own tag.
struct Attachment {
    image: Digest,
    /// Every tag of the repository that the plan deletes: before the deletions, those of
    /// the image's tags do not keep the attachment.
    deleted: Arc<HashSet<String>>,
}

/// When a deletion is checked: on the state the plan was made on (apply's check of the
/// whole plan), or in the transaction that makes it, after the deletions before it (an
/// attachment's after its image's tags: see [`deletions`]).
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Check,
    Delete,
}

/// Why an attachment that a plan deletes with its image would be kept now, if it would: a
/// tag that the plan does not delete (or did not, because it changed) points at the image,
/// an index lists it, or the image was pushed since the plan (`planned_at`).
fn attachment_kept_now(
    c: &rusqlite::Connection,
    repo: RepoId,
    a: &Attachment,
    phase: Phase,
    planned_at: i64,
) -> std::result::Result<Option<String>, MetadataError> {
    let image = &a.image;
    let tags = q::tags_at(c, repo, &image.to_string())?;
    if let Some(kept) = tags.iter().find(|t| phase == Phase::Delete || !a.deleted.contains(*t)) {
        return Ok(Some(format!("its image {image} is now tagged {kept}")));
    }
    let Some((id, pushed_at)) = q::pushed(c, repo, &image.to_string())? else { return Ok(None) };
    if let Some(index) = manifests::parent_of(c, id)? {
        return Ok(Some(format!("its image {image} is now listed by index {index}")));
    }
    // Pushed in the plan's millisecond, it may have come after the plan: kept.
    if pushed_at >= planned_at {
        return Ok(Some(format!("its image {image} is in the repository now")));
    }
    Ok(None)
}

/// Where a deletion's decision sits in its plan: the repository's index, then the tag's or
/// the untagged manifest's.
#[derive(Debug, Clone, Copy)]
enum Position {
    Tag(usize, usize),
    Untagged(usize, usize),
}

/// One deletion a plan makes, with the facts its decision rested on ([`recheck`]).
struct Deletion {
    at: Position,
    repo: RepoId,
    repository: String,
    policy: String,
    what: Deleted,
}

enum Deleted {
    Tag(TagDecision, Option<Attachment>),
    Untagged(UntaggedDecision),
}

/// Why a deletion is not made.
enum Stale {
    /// What it rested on changed: it is kept.
    Changed(String),
    /// What it would delete is gone already.
    Gone(String),
}

impl Stale {
    fn describe(self) -> String {
        match self {
            Stale::Changed(what) | Stale::Gone(what) => what,
        }
    }
}

/// The deletions `plan` makes, in the order they are made: each repository's tags, its
/// attachments after the tags of their images, then its untagged manifests. And what
/// changed since the plan was made in what it keeps: every tag of the plan, kept or not,
/// must still exist (a kept tag gone would leave fewer than "newest N"), and so must each
/// repository it deletes in.
fn deletions(
    c: &rusqlite::Connection,
    plan: &Plan,
) -> std::result::Result<(Vec<Deletion>, Vec<String>), MetadataError> {
    let mut changes = Vec::new();
    let mut out = Vec::new();
    let repo_ids: HashMap<String, RepoId> = q::repositories(c)?.into_iter().map(|(id, n)| (n, id)).collect();
    for (r, rp) in plan.repositories.iter().enumerate() {
        let Some(&repo) = repo_ids.get(&rp.repository) else {
            if rp.tags.iter().any(|t| !t.keep) || rp.untagged.iter().any(|u| !u.keep) {
                changes.push(format!("repository {} is gone", rp.repository));
            }
            continue;
        };
        let deleted: Arc<HashSet<String>> =
            Arc::new(rp.tags.iter().filter(|t| !t.keep).map(|t| t.tag.clone()).collect());
        let deletion =
            |at, what| Deletion { at, repo, repository: rp.repository.clone(), policy: rp.policy.clone(), what };
        let mut attachments = Vec::new();
        for (i, t) in rp.tags.iter().enumerate() {
            if t.keep {
                // A kept tag that moved or was pushed again can only make the plan delete
                // less than it would now; only its disappearance changes the counts.
                if q::tag(c, repo, &t.tag)?.is_none() {
                    changes.push(format!("{}:{} no longer exists", rp.repository, t.tag));
                }
                continue;
            }
            let attachment = attachment_target(&t.tag).map(|image| Attachment { image, deleted: deleted.clone() });
            let d = deletion(Position::Tag(r, i), Deleted::Tag(t.clone(), attachment));
            match d.what {
                Deleted::Tag(_, Some(_)) => attachments.push(d),
                _ => out.push(d),
            }
        }
        out.extend(attachments);
        for (i, u) in rp.untagged.iter().enumerate().filter(|(_, u)| !u.keep) {
            out.push(deletion(Position::Untagged(r, i), Deleted::Untagged(u.clone())));
        }
    }
    Ok((out, changes))
}

/// The manifest `d` deletes (or untags), or why it may not be made now: a tag to delete
/// must still point where the plan saw it, not have been pushed again, pulled or restored
/// since, nor have become immutable (and an attachment's image must not have gained a
/// reason to keep it); an untagged manifest must still be untagged and untouched.
fn recheck(
    c: &rusqlite::Connection,
    policies: &Policies,
    d: &Deletion,
    phase: Phase,
    planned_at: i64,
    restore_since: i64,
) -> std::result::Result<std::result::Result<ManifestId, Stale>, MetadataError> {
    let (t, attachment) = match &d.what {
        Deleted::Untagged(u) => {
            let at = format!("{}@{}", d.repository, u.digest);
            return Ok(match q::untagged_one(c, d.repo, restore_since, &u.digest)? {
                Some((id, touched_at)) if touched_at == u.touched_at => Ok(id),
                Some(_) => Err(Stale::Changed(format!("{at} was pushed or probed since"))),
                None if manifests::id_of(c, d.repo, &parse_digest(&u.digest)?)?.is_some() => {
                    Err(Stale::Changed(format!("{at} is referenced again")))
                }
                None => Err(Stale::Gone(format!("{at} is gone"))),
            });
        }
        Deleted::Tag(t, attachment) => (t, attachment),
    };
    let at = format!("{}:{}", d.repository, t.tag);
    let changed = |what: String| Ok(Err(Stale::Changed(what)));
    let Some(row) = q::tag(c, d.repo, &t.tag)? else { return Ok(Err(Stale::Gone(format!("{at} no longer exists")))) };
    if row.digest != t.digest {
        return changed(format!("{at} now points at {}", row.digest));
    }
    if row.pushed_at != t.pushed_at {
        return changed(format!("{at} was pushed again"));
    }
    if row.pulled_at != t.pulled_at {
        return changed(format!("{at} was pulled since"));
    }
    // A restore puts the tag back as it was; the operator's wish to keep it is the change.
    if q::restored_since(c, &d.repository, &t.tag, planned_at)? {
        return changed(format!("{at} was restored since"));
    }
    // A signature goes with its image's last tag, or because the image is not there: an
    // image that kept or gained a tag (a promotion by digest) or arrived since keeps it.
    if let Some(a) = attachment
        && let Some(change) = attachment_kept_now(c, d.repo, a, phase, planned_at)?
    {
        return changed(format!("{at}: {change}"));
    }
    if let Some(rule) = policies.immutable_rule(&d.repository, &t.tag) {
        return changed(format!("{at} is now immutable ({rule})"));
    }
    Ok(Ok(row.manifest_id))
}

/// A digest the plan holds (which it got from the database).
fn parse_digest(digest: &str) -> std::result::Result<Digest, MetadataError> {
    digest.parse().map_err(|e| MetadataError::Corrupt(format!("plan digest {digest:?}: {e}")))
}

/// Makes one deletion: a tag (recorded with the rule that decided, and restorable) or an
/// untagged manifest.
fn delete(
    c: &rusqlite::Connection,
    d: &Deletion,
    manifest: ManifestId,
    now: i64,
) -> std::result::Result<(), MetadataError> {
    match &d.what {
        Deleted::Tag(t, _) => {
            let name: Tag = t.tag.parse().map_err(|e| MetadataError::Corrupt(format!("plan tag: {e}")))?;
            let reason = format!("retention policy {:?}: {}", d.policy, t.reason);
            q::record_deletion(
                c,
                &q::TagDeletion {
                    repository: &d.repository,
                    tag: &t.tag,
                    digest: &t.digest,
                    manifest_id: manifest,
                    at: now,
                    actor: "retention",
                    reason: &reason,
                    restorable: true,
                },
            )?;
            tags::delete(c, d.repo, &name, now)?;
        }
        Deleted::Untagged(_) => {
            manifests::delete(c, manifest, Some(now))?;
        }
    }
    Ok(())
}

/// Refuses a deletion while collection is paused, which stops every deletion a policy
/// would make.
fn refuse_if_paused(c: &rusqlite::Connection, now: i64) -> Result<()> {
    match crate::metadata::gc_pause::get(c, now)? {
        Some(pause) => Err(RetentionError::Paused(pause)),
        None => Ok(()),
    }
}

/// What a deletion of an apply did.
enum Done {
    Deleted,
    /// Not deleted: what it rested on changed, or it went, while the plan was applied.
    NotMade(Stale),
}

/// Plans and applies retention.
pub struct Retention {
    collector: Arc<Collector>,
    /// Held by an apply from its check to its last deletion. Two applies at once would each
    /// check against a registry the other is changing: two plans that each keep one of a
    /// repository's tags could together delete them all.
    applying: tokio::sync::Mutex<()>,
}

impl Retention {
    pub fn new(collector: Arc<Collector>) -> Retention {
        Retention { collector, applying: tokio::sync::Mutex::new(()) }
    }

    /// Plans retention for every governed repository (or one repository, or one policy's
    /// repositories), and saves the plan so that it can be applied as shown.
    pub async fn plan(&self, repository: Option<RepoName>, policy: Option<String>) -> Result<Plan> {
        let registry = self.collector.registry();
        registry.pulls.flush(&registry.meta).await?;
        let policies = registry.policies();
        if let Some(p) = &policy
            && !policies.retention.iter().any(|r| r.spec.name == *p)
        {
            return Err(RetentionError::Invalid(format!("no retention policy named {p:?}")));
        }
        let ctx = self.collector.ctx();
        let now = now_ms();
        let options = registry.options().clone();
        let restore_since = options.restore_since(now);
        let mut plan = registry
            .meta
            .simulate_on_copy(move |c| {
                let mut repositories = Vec::new();
                for (id, name) in q::repositories(c)? {
                    if repository.as_ref().is_some_and(|r| r.as_str() != name) {
                        continue;
                    }
                    let Some(governing) = policies.retention_for(&name) else { continue };
                    if policy.as_ref().is_some_and(|p| *p != governing.spec.name) {
                        continue;
                    }
                    repositories.push(evaluate(c, &policies, governing, (id, &name), &options, now)?);
                }
                let mut plan = Plan {
                    id: 0,
                    created_at: now,
                    tags_deleted: repositories.iter().flat_map(|r| &r.tags).filter(|t| !t.keep).count(),
                    manifests_deleted: repositories.iter().flat_map(|r| &r.untagged).filter(|u| !u.keep).count(),
                    repositories,
                    blobs_freed: 0,
                    bytes_freed: 0,
                    applied_at: None,
                };
                // What collection frees anyway goes first; the collection after the plan's
                // deletions then frees exactly what the plan adds (collection removes what
                // its roots no longer reach, and the plan only removes roots). An untagged
                // manifest the plan deletes that collection took first is skipped as gone.
                gc::blobs_freed_eventually(c, &ctx)?;
                for d in deletions(c, &plan)?.0 {
                    if let Ok(manifest) = recheck(c, &policies, &d, Phase::Delete, now, restore_since)? {
                        delete(c, &d, manifest, now)?;
                    }
                }
                for (_, size) in gc::blobs_freed_eventually(c, &ctx)? {
                    plan.blobs_freed += 1;
                    plan.bytes_freed += size;
                }
                Ok::<_, MetadataError>(plan)
            })
            .await?;
        let json = serde_json::to_string(&plan).expect("plans serialize");
        plan.id = registry.meta.write(move |c| q::save_plan(c, &json, now)).await?;
        Ok(plan)
    }

    /// Applies a saved plan: deletes what it showed, or nothing if anything it rested on
    /// changed since it was made.
    ///
    /// The whole plan is checked on a read snapshot first; then the deletions are made in
    /// write transactions that end whenever another writer waits
    /// ([`Metadata::write_each_unflushed`]), so that pushes go on during an apply of tens
    /// of thousands of deletions instead of waiting seconds for one transaction. Each
    /// deletion is checked again in the transaction that makes it ([`recheck`]), and so is
    /// the pause: one that changed in between (a push to the tag, mid-apply) is kept, and
    /// shown as kept in the answer, with what changed.
    pub async fn apply(&self, id: i64) -> Result<Plan> {
        let one_at_a_time = self.applying.lock().await;
        self.apply_alone(id, &one_at_a_time).await
    }

    /// [`Retention::apply`], with `applying` held by the caller.
    async fn apply_alone(&self, id: i64, _applying: &tokio::sync::MutexGuard<'_, ()>) -> Result<Plan> {
        let registry = self.collector.registry();
        // The pulls of the last seconds, so that "pulled since the plan" sees them.
        registry.pulls.flush(&registry.meta).await?;
        let policies = registry.policies();
        let options = registry.options().clone();
        let (checking, checking_options) = (policies.clone(), options.clone());
        let (mut plan, deletions) = registry
            .meta
            .read(move |c| {
                let now = now_ms();
                let (json, applied) = match q::load_plan(c, id, now)? {
                    Some(found) => found,
                    None => return Ok(Err(RetentionError::PlanUnknown(id))),
                };
                if applied.is_some() {
                    return Ok(Err(RetentionError::AlreadyApplied(id)));
                }
                if let Some(pause) = crate::metadata::gc_pause::get(c, now)? {
                    return Ok(Err(RetentionError::Paused(pause)));
                }
                let mut plan: Plan = match serde_json::from_str(&json) {
                    Ok(plan) => plan,
                    Err(e) => return Ok(Err(RetentionError::Invalid(format!("stored plan {id}: {e}")))),
                };
                plan.id = id;
                let restore_since = checking_options.restore_since(now);
                let (deletions, mut changes) = deletions(c, &plan)?;
                for d in &deletions {
                    if let Err(stale) = recheck(c, &checking, d, Phase::Check, plan.created_at, restore_since)? {
                        changes.push(stale.describe());
                    }
                }
                if !changes.is_empty() {
                    return Ok(Err(RetentionError::Changed { id, changes }));
                }
                Ok(Ok((plan, deletions)))
            })
            .await??;
        registry.failpoints.hit(crate::failpoints::RETENTION_CHECKED).await;
        // Claimed in a transaction of its own: from its commit on, the plan is used up,
        // whatever stops the deletions after it.
        let applied_at = registry
            .meta
            .write_unflushed(move |c| {
                let now = now_ms();
                refuse_if_paused(c, now)?;
                // Another apply of the plan may have claimed it since the check.
                if q::load_plan(c, id, now)?.is_none_or(|(_, applied)| applied.is_some()) {
                    return Err(RetentionError::AlreadyApplied(id));
                }
                q::mark_applied(c, id, now)?;
                Ok(now)
            })
            .await?;
        registry.failpoints.hit(crate::failpoints::RETENTION_CLAIMED).await;
        let positions: Vec<Position> = deletions.iter().map(|d| d.at).collect();
        let created_at = plan.created_at;
        let (done, ended) = registry
            .meta
            .write_each_unflushed(deletions, move |c, d| {
                let now = now_ms();
                // Checked in each deleting transaction: no deletion after a pause.
                refuse_if_paused(c, now)?;
                match recheck(c, &policies, d, Phase::Delete, created_at, options.restore_since(now))? {
                    Ok(manifest) => delete(c, d, manifest, now).map(|()| Done::Deleted).map_err(Into::into),
                    Err(stale) => Ok(Done::NotMade(stale)),
                }
            })
            .await;
        // Durable before the answer, as any write is (the runs above are not flushed).
        let flushed = registry.meta.flush().await;
        let (mut tags_deleted, mut manifests_deleted) = (0, 0);
        for (at, done) in positions.iter().zip(&done) {
            let (repository, policy) = match at {
                Position::Tag(r, _) | Position::Untagged(r, _) => {
                    let rp = &plan.repositories[*r];
                    (rp.repository.clone(), rp.policy.clone())
                }
            };
            // Each deletion by name, as collection logs what it removes: the log answers
            // "where did my image go?" (tags are in the audit too, restorable).
            let (keep, reason, digest, tag) = match *at {
                Position::Tag(r, i) => {
                    let t = &mut plan.repositories[r].tags[i];
                    (&mut t.keep, &mut t.reason, t.digest.clone(), Some(t.tag.clone()))
                }
                Position::Untagged(r, i) => {
                    let u = &mut plan.repositories[r].untagged[i];
                    (&mut u.keep, &mut u.reason, u.digest.clone(), None)
                }
            };
            match (done, tag) {
                (Done::NotMade(Stale::Changed(change)), _) => {
                    tracing::info!(
                        repository,
                        digest,
                        policy,
                        change,
                        plan = id,
                        "retention kept what changed while its plan was applied"
                    );
                    *keep = true;
                    *reason = format!("kept: {change} while the plan was applied");
                }
                (Done::NotMade(Stale::Gone(gone)), _) => {
                    *reason = format!("{gone}: deleted by another while the plan was applied");
                }
                (_, Some(tag)) => {
                    tags_deleted += 1;
                    tracing::info!(
                        repository,
                        tag,
                        digest,
                        policy,
                        reason = *reason,
                        plan = id,
                        "retention deleted a tag"
                    );
                }
                (_, None) => {
                    manifests_deleted += 1;
                    tracing::info!(
                        repository,
                        digest,
                        policy,
                        reason = *reason,
                        plan = id,
                        "retention deleted an untagged manifest"
                    );
                }
            }
        }
        let m = &registry.metrics;
        Metrics::add(&m.retention_tags_deleted, tags_deleted as u64);
        Metrics::add(&m.retention_manifests_deleted, manifests_deleted as u64);
        if let Err(e) = ended {
            // Claimed, the plan cannot be applied again: the next plan deletes the rest.
            let stopped = RetentionError::Stopped { id, tags_deleted, manifests_deleted, cause: Box::new(e) };
            tracing::warn!(error = %stopped, "retention apply stopped part-way");
            return Err(stopped);
        }
        flushed?;
        Metrics::add(&m.retention_applied, 1);
        (plan.tags_deleted, plan.manifests_deleted) = (tags_deleted, manifests_deleted);
        plan.applied_at = Some(applied_at);
        Ok(plan)
    }

    /// Plans and applies at once (a scheduled run, or `run` on demand).
    pub async fn run(&self, policy: Option<String>) -> Result<Plan> {
        // Planned once no other apply runs: a plan made beside one is stale at once.
        let one_at_a_time = self.applying.lock().await;
        let plan = self.plan(None, policy).await?;
        self.collector.registry().failpoints.hit(crate::failpoints::RETENTION_BEFORE_APPLY).await;
        self.apply_alone(plan.id, &one_at_a_time).await
    }

    /// Runs every scheduled policy that is due; called periodically. When each last ran is
    /// kept in metadata: a time that came while Bosun was down is caught up (once) at the
    /// first check, and a policy first seen (new in the config, or added through the API)
    /// runs at its next time, not at once. While collection is paused, none is due (each
    /// runs at the first check after the resume).
    pub async fn run_due(&self) {
        // Paused, no policy runs; but a policy seen for the first time is recorded even
        // then, so that a time of it that comes during the pause is run after it, as for
        // any other policy (it was first seen after the resume, and that time skipped).
        let paused = match self.collector.paused().await {
            Ok(pause) => pause.is_some(),
            Err(e) => {
                tracing::error!(error = %e, "reading whether collection is paused failed; no retention policy runs");
                return;
            }
        };
        let registry = self.collector.registry();
        let policies = registry.policies();
        let now = now_ms();
        let recorded = match registry.meta.read(|c| q::schedules(c)).await {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::error!(error = %e, "reading when retention policies last ran failed; none runs");
                return;
            }
        };
        let record = |name: &str, at: Option<i64>| {
            let name = name.to_owned();
            async move {
                let written = match at {
                    Some(at) => registry.meta.write(move |c| q::set_schedule_last_run(c, &name, at)).await,
                    None => registry.meta.write(move |c| q::forget_schedule(c, &name)).await,
                };
                written.inspect_err(|e| tracing::error!(error = %e, "recording a retention policy's schedule failed"))
            }
        };
        // A policy removed, or no longer scheduled, is forgotten: added again, it waits for
        // its next time like any new one.
        for gone in
            recorded.keys().filter(|n| !policies.retention.iter().any(|p| p.schedule.is_some() && p.spec.name == **n))
        {
            let _ = record(gone, None).await;
        }
        for p in &policies.retention {
            let (Some(schedule), name) = (&p.schedule, &p.spec.name) else { continue };
            let Some(&last) = recorded.get(name) else {
                let _ = record(name, Some(now)).await;
                continue;
            };
            if paused || !schedule.due(last, now) {
                continue;
            }
            match self.run(Some(name.clone())).await {
                Ok(plan) => {
                    // Recorded once applied: a run cut off by a crash is due again at the
                    // first check after the start, not a whole period later. (A crash
                    // between the apply and this record runs it again, which plans from
                    // what is there and so deletes only what is due anyway.)
                    let _ = record(name, Some(now)).await;
                    tracing::info!(
                        policy = %name,
                        tags_deleted = plan.tags_deleted,
                        manifests_deleted = plan.manifests_deleted,
                        bytes_freed = plan.bytes_freed,
                        "retention policy ran"
                    )
                }
                Err(e) => {
                    // Due again at the next check rather than a whole period later: paused
                    // after the check above, the registry changed between plan and apply, or
                    // a failure that may pass.
                    if !matches!(e, RetentionError::Paused(_)) {
                        Metrics::add(&registry.metrics.retention_failures, 1);
                        tracing::error!(policy = %name, error = %e, "retention policy failed; retried at the next check");
                    }
                }
            }
        }
    }

    /// Which policies match `repository`, which one governs, and what it decides now.
    pub async fn explain(&self, repository: RepoName) -> Result<serde_json::Value> {
        let repository = repository.as_str().to_owned();
        let registry = self.collector.registry();
        registry.pulls.flush(&registry.meta).await?;
        let policies = registry.policies();
        let now = now_ms();
        let options = registry.options().clone();
        registry
            .meta
            .read(move |c| {
                let candidates: Vec<serde_json::Value> = policies
                    .retention_candidates(&repository)
                    .iter()
                    .map(|p| {
                        serde_json::json!({"name": p.spec.name, "repositories": p.spec.repositories, "source": p.source,
                        "schedule": p.schedule.as_ref().map(|s| s.describe())})
                    })
                    .collect();
                let repo = q::repositories(c)?.into_iter().find(|(_, n)| *n == repository).map(|(id, _)| id);
                let decisions = match (policies.retention_for(&repository), repo) {
                    (Some(p), Some(id)) => Some(evaluate(c, &policies, p, (id, &repository), &options, now)?),
                    _ => None,
                };
                Ok(serde_json::json!({
                    "repository": repository,
                    "matching_policies": candidates,
                    "governed_by": policies.retention_for(&repository).map(|p| p.spec.name.clone()),
                    "decisions": decisions,
                }))
            })
            .await
            .map_err(RetentionError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal lists the first changes and counts the rest; a short list is whole.
    #[test]
    fn a_refusal_names_the_first_changes_only() {
        let changes: Vec<String> = (0..20_000).map(|i| format!("r:t{i} no longer exists")).collect();
        let refused = RetentionError::Changed { id: 7, changes: changes.clone() }.to_string();
        assert!(refused.contains("r:t9 no longer exists") && !refused.contains("r:t10 "), "{refused}");
        assert!(refused.ends_with("and 19990 more"), "{refused}");
        let few = RetentionError::Changed { id: 7, changes: changes[..2].to_vec() }.to_string();
        assert!(few.ends_with(r#"["r:t0 no longer exists", "r:t1 no longer exists"]"#), "{few}");
    }
}
