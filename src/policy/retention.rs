//! Running retention policies: a plan says, for every tag of every governed repository,
//! keep or delete and the rule that decided, plus the bytes that deleting would free;
//! applying a plan deletes exactly what it showed, or nothing if anything changed since.
//!
//! "Bytes freed" counts only blobs that no surviving manifest in any repository uses: it is
//! computed by simulating, on a rolled-back transaction on a copy of the database (so that
//! writers go on meanwhile), the deletions and then every collection they lead to, and
//! subtracting what collection would free without them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rules::{Evaluation, TagFacts};
use super::{Policies, RetentionPolicy, Untagged};
use crate::gc::{self, Collector};
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
        "the registry changed since plan {id} was made; nothing was deleted. Make a new plan. Changes: {changes:?}"
    )]
    Changed { id: i64, changes: Vec<String> },
    #[error("{0}")]
    Invalid(String),
    /// Garbage collection is paused, and with it every deletion a policy would make.
    #[error(
        "garbage collection is paused ({0}), and retention deletes nothing meanwhile (bosun gc --resume); a plan still reports"
    )]
    Paused(crate::metadata::gc_pause::Pause),
}

pub type Result<T> = std::result::Result<T, RetentionError>;

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
                Some(id) => Target { digest: d.to_string(), present: true, parent: manifests::parent_of(c, id)? },
                None => Target { digest: d.to_string(), present: false, parent: None },
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
            let Some(Target { digest: t, present, parent }) = target else {
                return (row, own_decisions[row.name.as_str()].clone());
            };
            let decision = match policies.immutable_rule(name, &row.name) {
                Some(rule) => (true, format!("{rule}")),
                None if kept.contains(t.as_str()) => (true, format!("attached to {t}, which a kept tag points at")),
                // A platform manifest signed on its own stays while its index does.
                None if let Some(index) = parent => (true, format!("attached to {t}, which index {index} lists")),
                None if tagged.contains(t.as_str()) => (false, format!("attached to {t}, whose every tag goes")),
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

/// Why an attachment (a signature by tag) that a plan deletes with its image would be kept
/// now, if it would: a tag the plan leaves points at the image, an index lists it, or the
/// image, absent at the plan, is there untagged.
fn attachment_kept_now(
    c: &rusqlite::Connection,
    repo: RepoId,
    tags_of: &HashMap<&str, Vec<&str>>,
    deleted: &HashSet<&str>,
    image: &Digest,
) -> std::result::Result<Option<String>, MetadataError> {
    let tags = tags_of.get(image.to_string().as_str()).map_or(&[][..], Vec::as_slice);
    if let Some(kept) = tags.iter().find(|t| !deleted.contains(*t)) {
        return Ok(Some(format!("its image {image} is now tagged {kept}")));
    }
    let Some(id) = manifests::id_of(c, repo, image)? else { return Ok(None) };
    if let Some(index) = manifests::parent_of(c, id)? {
        return Ok(Some(format!("its image {image} is now listed by index {index}")));
    }
    if tags.is_empty() {
        return Ok(Some(format!("its image {image} is in the repository now")));
    }
    Ok(None)
}

/// Makes the deletions of `plan` on `c`: tags (recorded with the rule that decided, and
/// restorable) and untagged manifests. First verifies that nothing the decisions rested
/// on has changed: every tag of the plan, kept or not, still exists (a kept tag gone would
/// leave fewer than "newest N"); a tag to delete still points where the plan saw it, was
/// not pushed again or pulled since, and has not become immutable; a manifest to delete
/// is still untagged and untouched. If anything changed, deletes nothing and returns the
/// differences.
fn delete_planned(
    c: &rusqlite::Connection,
    policies: &Policies,
    plan: &Plan,
    now: i64,
    restore_since: i64,
) -> std::result::Result<Vec<String>, MetadataError> {
    let mut changes = Vec::new();
    let mut work = Vec::new();
    let repo_ids: HashMap<String, RepoId> = q::repositories(c)?.into_iter().map(|(id, n)| (n, id)).collect();
    for rp in &plan.repositories {
        let Some(&repo) = repo_ids.get(&rp.repository) else {
            if rp.tags.iter().any(|t| !t.keep) || rp.untagged.iter().any(|u| !u.keep) {
                changes.push(format!("repository {} is gone", rp.repository));
            }
            continue;
        };
        let now_tags: HashMap<String, q::TagRow> = q::tags(c, repo)?.into_iter().map(|t| (t.name.clone(), t)).collect();
        // Each manifest's tags, looked up once per attachment (a scan of every tag for each
        // one made plans and applies quadratic in signed images).
        let mut tags_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for t in now_tags.values() {
            tags_of.entry(t.digest.as_str()).or_default().push(t.name.as_str());
        }
        let deleted: HashSet<&str> = rp.tags.iter().filter(|t| !t.keep).map(|t| t.tag.as_str()).collect();
        for t in &rp.tags {
            let at = format!("{}:{}", rp.repository, t.tag);
            match now_tags.get(&t.tag) {
                None => changes.push(format!("{at} no longer exists")),
                // A kept tag that moved or was pushed again can only make the plan delete
                // less than it would now; only its disappearance changes the counts.
                Some(_) if t.keep => {}
                Some(row) if row.digest != t.digest => changes.push(format!("{at} now points at {}", row.digest)),
                Some(row) if row.pushed_at != t.pushed_at => changes.push(format!("{at} was pushed again")),
                Some(row) if row.pulled_at != t.pulled_at => changes.push(format!("{at} was pulled since")),
                // A restore puts the tag back as it was; the operator's wish to keep it is
                // the change.
                Some(_) if q::restored_since(c, &rp.repository, &t.tag, plan.created_at)? => {
                    changes.push(format!("{at} was restored since"))
                }
                // A signature goes with its image's last tag, or because the image is not
                // there: an image that gained a tag (a promotion by digest) or arrived since
                // keeps it now.
                Some(_)
                    if let Some(image) = attachment_target(&t.tag)
                        && let Some(change) = attachment_kept_now(c, repo, &tags_of, &deleted, &image)? =>
                {
                    changes.push(format!("{at}: {change}"))
                }
                Some(row) => {
                    if let Some(rule) = policies.immutable_rule(&rp.repository, &t.tag) {
                        changes.push(format!("{at} is now immutable ({rule})"));
                    }
                    work.push((repo, rp, Some(t), row.manifest_id, row.digest.clone()));
                }
            }
        }
        let untagged: HashMap<String, (i64, i64)> =
            q::untagged(c, repo, restore_since)?.into_iter().map(|(d, id, touched)| (d, (id, touched))).collect();
        for u in rp.untagged.iter().filter(|u| !u.keep) {
            match untagged.get(&u.digest) {
                Some(&(id, touched_at)) if touched_at == u.touched_at => {
                    work.push((repo, rp, None, id, u.digest.clone()))
                }
                Some(_) => changes.push(format!("{}@{} was pushed or probed since", rp.repository, u.digest)),
                None => changes.push(format!("{}@{} is gone or referenced again", rp.repository, u.digest)),
            }
        }
    }
    if !changes.is_empty() {
        return Ok(changes);
    }
    for (repo, rp, tag, id, digest) in work {
        match tag {
            Some(t) => {
                let name: Tag = t.tag.parse().map_err(|e| MetadataError::Corrupt(format!("plan tag: {e}")))?;
                let reason = format!("retention policy {:?}: {}", rp.policy, t.reason);
                q::record_deletion(
                    c,
                    &q::TagDeletion {
                        repository: &rp.repository,
                        tag: &t.tag,
                        digest: &digest,
                        manifest_id: id,
                        at: now,
                        actor: "retention",
                        reason: &reason,
                        restorable: true,
                    },
                )?;
                tags::delete(c, repo, &name, now)?;
            }
            None => {
                manifests::delete(c, id, Some(now))?;
            }
        }
    }
    Ok(changes)
}

/// Plans and applies retention.
pub struct Retention {
    collector: Arc<Collector>,
}

impl Retention {
    pub fn new(collector: Arc<Collector>) -> Retention {
        Retention { collector }
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
            .simulate_on_copy(move |s| {
                // What collection frees anyway, without the plan: a run of its own (see
                // `Simulation` for why not a savepoint).
                let (mut plan, baseline) = s.run(|c| {
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
                    let plan = Plan {
                        id: 0,
                        created_at: now,
                        tags_deleted: repositories.iter().flat_map(|r| &r.tags).filter(|t| !t.keep).count(),
                        manifests_deleted: repositories.iter().flat_map(|r| &r.untagged).filter(|u| !u.keep).count(),
                        repositories,
                        blobs_freed: 0,
                        bytes_freed: 0,
                        applied_at: None,
                    };
                    let baseline: HashSet<String> =
                        gc::blobs_freed_eventually(c, &ctx)?.into_iter().map(|(d, _)| d).collect();
                    Ok::<_, MetadataError>((plan, baseline))
                })?;
                s.run(|c| {
                    delete_planned(c, &policies, &plan, now, restore_since)?;
                    for (digest, size) in gc::blobs_freed_eventually(c, &ctx)? {
                        if !baseline.contains(&digest) {
                            plan.blobs_freed += 1;
                            plan.bytes_freed += size;
                        }
                    }
                    Ok::<_, MetadataError>(())
                })?;
                Ok::<_, MetadataError>(plan)
            })
            .await?;
        let json = serde_json::to_string(&plan).expect("plans serialize");
        plan.id = registry.meta.write(move |c| q::save_plan(c, &json, now)).await?;
        Ok(plan)
    }

    /// Applies a saved plan: deletes exactly what it showed, or nothing if anything it
    /// would delete changed since.
    pub async fn apply(&self, id: i64) -> Result<Plan> {
        let registry = self.collector.registry();
        // The pulls of the last seconds, so that "pulled since the plan" sees them.
        registry.pulls.flush(&registry.meta).await?;
        let policies = registry.policies();
        let options = registry.options().clone();
        registry
            .meta
            .write(move |c| {
                // Checked in the deleting transaction: no apply after a pause deletes.
                let now = now_ms();
                if let Some(pause) = crate::metadata::gc_pause::get(c, now)? {
                    return Err(RetentionError::Paused(pause));
                }
                let (json, applied) = q::load_plan(c, id, now)?.ok_or(RetentionError::PlanUnknown(id))?;
                if applied.is_some() {
                    return Err(RetentionError::AlreadyApplied(id));
                }
                let mut plan: Plan = serde_json::from_str(&json)
                    .map_err(|e| RetentionError::Invalid(format!("stored plan {id}: {e}")))?;
                plan.id = id;
                let changes = delete_planned(c, &policies, &plan, now, options.restore_since(now))?;
                if !changes.is_empty() {
                    return Err(RetentionError::Changed { id, changes });
                }
                q::mark_applied(c, id, now)?;
                plan.applied_at = Some(now);
                Ok(plan)
            })
            .await
            .inspect(|plan| {
                let m = &registry.metrics;
                Metrics::add(&m.retention_applied, 1);
                Metrics::add(&m.retention_tags_deleted, plan.tags_deleted as u64);
                Metrics::add(&m.retention_manifests_deleted, plan.manifests_deleted as u64);
                // Each deletion by name, as collection logs what it removes: the log answers
                // "where did my image go?" (tags are in the audit too, restorable).
                for rp in &plan.repositories {
                    for t in rp.tags.iter().filter(|t| !t.keep) {
                        tracing::info!(
                            repository = rp.repository,
                            tag = t.tag,
                            digest = t.digest,
                            policy = rp.policy,
                            reason = t.reason,
                            plan = id,
                            "retention deleted a tag"
                        );
                    }
                    for u in rp.untagged.iter().filter(|u| !u.keep) {
                        tracing::info!(
                            repository = rp.repository,
                            digest = u.digest,
                            policy = rp.policy,
                            reason = u.reason,
                            plan = id,
                            "retention deleted an untagged manifest"
                        );
                    }
                }
            })
    }

    /// Plans and applies at once (a scheduled run, or `run` on demand).
    pub async fn run(&self, policy: Option<String>) -> Result<Plan> {
        let plan = self.plan(None, policy).await?;
        self.collector.registry().failpoints.hit(crate::failpoints::RETENTION_BEFORE_APPLY).await;
        self.apply(plan.id).await
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
