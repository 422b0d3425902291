//! Storage accounting: for the registry, each repository and each tag, the bytes it
//! references, the bytes exclusive to it (what deleting it would free now) and the bytes
//! it shares with others. Every blob is counted once, whatever references it.
//!
//! A tag's image is its manifest, the children of an index (recursively) and the referrers
//! of any of those (signatures, SBOMs), since those go when the image goes. A blob is
//! exclusive to a tag when every manifest that references it is reachable from that tag
//! and from no other; a manifest no tag reaches (untagged, awaiting collection) keeps its
//! blobs out of every tag's exclusive bytes.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::metadata::accounting::GraphRows;
use crate::oci::RepoName;
use crate::registry::Registry;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Usage {
    pub referenced_bytes: u64,
    pub exclusive_bytes: u64,
    pub shared_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TagUsage {
    pub tag: String,
    pub digest: String,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RepoUsage {
    pub repository: String,
    #[serde(flatten)]
    pub usage: Usage,
    pub tags: Vec<TagUsage>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Bytes of blobs some manifest references.
    pub referenced_bytes: u64,
    /// Bytes of blobs nothing references (garbage awaiting collection or grace).
    pub unreferenced_bytes: u64,
    pub blobs: usize,
    pub repositories: Vec<RepoUsage>,
}

/// Who reaches a manifest: no tag, exactly one, or several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reach {
    One(usize),
    Many,
}

/// The graph with indexes for walking it.
pub struct Graph {
    rows: GraphRows,
    children: HashMap<i64, Vec<i64>>,
    /// (repository, subject digest) → referrers
    referrers: HashMap<(String, String), Vec<i64>>,
    blobs_of: HashMap<i64, Vec<String>>,
    users_of: HashMap<String, Vec<i64>>,
    size: HashMap<String, u64>,
    manifest: HashMap<i64, usize>,
}

impl Graph {
    pub fn new(rows: GraphRows) -> Graph {
        let mut g = Graph {
            children: HashMap::new(),
            referrers: HashMap::new(),
            blobs_of: HashMap::new(),
            users_of: HashMap::new(),
            size: rows.blobs.iter().cloned().collect(),
            manifest: rows.manifests.iter().enumerate().map(|(i, m)| (m.0, i)).collect(),
            rows,
        };
        for &(p, c) in &g.rows.children {
            g.children.entry(p).or_default().push(c);
        }
        for (id, repo, _, subject) in &g.rows.manifests {
            if let Some(s) = subject {
                g.referrers.entry((repo.clone(), s.clone())).or_default().push(*id);
            }
        }
        for (m, d) in &g.rows.manifest_blobs {
            g.blobs_of.entry(*m).or_default().push(d.clone());
            g.users_of.entry(d.clone()).or_default().push(*m);
        }
        g
    }

    /// The manifests of the image rooted at `root`.
    pub fn closure(&self, root: i64) -> HashSet<i64> {
        let mut seen = HashSet::new();
        let mut stack = vec![root];
        while let Some(m) = stack.pop() {
            if !seen.insert(m) {
                continue;
            }
            stack.extend(self.children.get(&m).into_iter().flatten());
            if let Some(&i) = self.manifest.get(&m) {
                let (_, repo, digest, _) = &self.rows.manifests[i];
                stack.extend(self.referrers.get(&(repo.clone(), digest.clone())).into_iter().flatten());
            }
        }
        seen
    }

    fn bytes(&self, blobs: impl IntoIterator<Item = String>) -> u64 {
        blobs.into_iter().collect::<HashSet<_>>().iter().map(|b| self.size.get(b).copied().unwrap_or(0)).sum()
    }

    fn referenced_by(&self, manifests: &HashSet<i64>) -> HashSet<String> {
        manifests.iter().flat_map(|m| self.blobs_of.get(m).into_iter().flatten().cloned()).collect()
    }

    /// The full report.
    pub fn report(&self) -> Report {
        let tags = &self.rows.tags;
        // Which tags reach each manifest (one, or several).
        let mut reach: HashMap<i64, Reach> = HashMap::new();
        let closures: Vec<HashSet<i64>> = tags.iter().map(|(_, _, m)| self.closure(*m)).collect();
        for (t, closure) in closures.iter().enumerate() {
            for m in closure {
                reach
                    .entry(*m)
                    .and_modify(|r| {
                        if *r != Reach::One(t) {
                            *r = Reach::Many
                        }
                    })
                    .or_insert(Reach::One(t));
            }
        }
        // The one tag (if any) that owns each blob; the one repository likewise.
        let mut tag_owner: HashMap<&str, usize> = HashMap::new();
        let mut repo_owner: HashMap<&str, &str> = HashMap::new();
        for (blob, users) in &self.users_of {
            let owners: HashSet<Option<Reach>> = users.iter().map(|m| reach.get(m).copied()).collect();
            if owners.len() == 1
                && let Some(Some(Reach::One(t))) = owners.into_iter().next()
            {
                tag_owner.insert(blob, t);
            }
            let repos: HashSet<&str> = users.iter().map(|m| self.rows.manifests[self.manifest[m]].1.as_str()).collect();
            if repos.len() == 1 {
                repo_owner.insert(blob, repos.into_iter().next().expect("one repository"));
            }
        }
        let mut repos: BTreeMap<&str, (HashSet<i64>, Vec<TagUsage>)> = BTreeMap::new();
        for (id, repo, _, _) in &self.rows.manifests {
            repos.entry(repo).or_default().0.insert(*id);
        }
        for (t, ((repo, tag, m), closure)) in tags.iter().zip(&closures).enumerate() {
            let referenced = self.referenced_by(closure);
            let exclusive: u64 = referenced
                .iter()
                .filter(|b| tag_owner.get(b.as_str()) == Some(&t))
                .map(|b| self.size.get(b).copied().unwrap_or(0))
                .sum();
            let referenced_bytes = self.bytes(referenced);
            let digest = self.rows.manifests[self.manifest[m]].2.clone();
            repos.entry(repo).or_default().1.push(TagUsage {
                tag: tag.clone(),
                digest,
                usage: Usage {
                    referenced_bytes,
                    exclusive_bytes: exclusive,
                    shared_bytes: referenced_bytes - exclusive,
                },
            });
        }
        let repositories = repos
            .into_iter()
            .map(|(name, (manifests, mut tags))| {
                let referenced = self.referenced_by(&manifests);
                let exclusive: u64 = referenced
                    .iter()
                    .filter(|b| repo_owner.get(b.as_str()) == Some(&name))
                    .map(|b| self.size.get(b).copied().unwrap_or(0))
                    .sum();
                let referenced_bytes = self.bytes(referenced);
                tags.sort_by(|a, b| a.tag.cmp(&b.tag));
                RepoUsage {
                    repository: name.to_owned(),
                    usage: Usage {
                        referenced_bytes,
                        exclusive_bytes: exclusive,
                        shared_bytes: referenced_bytes - exclusive,
                    },
                    tags,
                }
            })
            .collect();
        let referenced: HashSet<&String> = self.users_of.keys().collect();
        Report {
            referenced_bytes: referenced.iter().map(|b| self.size.get(*b).copied().unwrap_or(0)).sum(),
            unreferenced_bytes: self.rows.blobs.iter().filter(|(d, _)| !referenced.contains(d)).map(|(_, s)| s).sum(),
            blobs: self.rows.blobs.len(),
            repositories,
        }
    }
}

/// Accounting for the whole registry (or one repository), from one metadata snapshot.
pub async fn usage(registry: &Registry, repository: Option<RepoName>) -> crate::metadata::Result<Report> {
    let rows = registry.meta.read(|c| crate::metadata::accounting::graph(c)).await?;
    // Linear in the store, and all in memory: not on a thread that serves requests.
    let mut report = tokio::task::spawn_blocking(move || Graph::new(rows).report())
        .await
        .map_err(|e| crate::metadata::MetadataError::Task(e.to_string()))?;
    if let Some(r) = repository {
        report.repositories.retain(|u| u.repository == r.as_str());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A random store: a few repositories of images, indexes over them, referrers, tags,
    /// untagged manifests and shared blobs.
    fn random_graph(seed: u64) -> GraphRows {
        let mut rng = Rng(seed | 1);
        let mut rows = GraphRows::default();
        let blobs: Vec<String> = (0..30).map(|i| format!("b{i}")).collect();
        rows.blobs = blobs.iter().map(|b| (b.clone(), 1 + rng.below(1000))).collect();
        let repos = ["r0", "r1", "r2"];
        for id in 1..=25i64 {
            let repo = repos[rng.below(3) as usize];
            let same_repo: Vec<i64> = rows.manifests.iter().filter(|m| m.1 == repo).map(|m| m.0).collect();
            let kind = rng.below(4);
            let subject = if kind == 3 && !same_repo.is_empty() {
                let s = same_repo[rng.below(same_repo.len() as u64) as usize];
                Some(rows.manifests.iter().find(|m| m.0 == s).unwrap().2.clone())
            } else {
                None
            };
            rows.manifests.push((id, repo.to_owned(), format!("m{id}"), subject));
            if kind == 2 && same_repo.len() >= 2 {
                for _ in 0..2 {
                    let child = same_repo[rng.below(same_repo.len() as u64) as usize];
                    if !rows.children.contains(&(id, child)) {
                        rows.children.push((id, child));
                    }
                }
            } else {
                for _ in 0..1 + rng.below(3) {
                    let b = blobs[rng.below(blobs.len() as u64) as usize].clone();
                    if !rows.manifest_blobs.contains(&(id, b.clone())) {
                        rows.manifest_blobs.push((id, b));
                    }
                }
            }
            if rng.below(3) > 0 {
                rows.tags.push((repo.to_owned(), format!("t{id}"), id));
            }
        }
        rows
    }

    /// The manifests of the image rooted at `root`, found from the rows alone (not from the
    /// indexes the report walks): the root, its children and its referrers, recursively.
    fn image(rows: &GraphRows, root: i64, seen: &mut HashSet<i64>) {
        if !seen.insert(root) {
            return;
        }
        for &(parent, child) in &rows.children {
            if parent == root {
                image(rows, child, seen);
            }
        }
        let (_, repo, digest, _) = rows.manifests.iter().find(|m| m.0 == root).unwrap();
        for (id, r, _, subject) in &rows.manifests {
            if r == repo && subject.as_ref() == Some(digest) {
                image(rows, *id, seen);
            }
        }
    }

    fn image_of(rows: &GraphRows, root: i64) -> HashSet<i64> {
        let mut seen = HashSet::new();
        image(rows, root, &mut seen);
        seen
    }

    /// The blobs some manifest in `manifests` references.
    fn blobs_of(rows: &GraphRows, manifests: impl Fn(i64) -> bool) -> HashSet<&str> {
        rows.manifest_blobs.iter().filter(|(m, _)| manifests(*m)).map(|(_, b)| b.as_str()).collect()
    }

    /// The blobs only manifests in `manifests` reference: what deleting them all would free.
    fn blobs_only_of(rows: &GraphRows, manifests: impl Fn(i64) -> bool) -> HashSet<&str> {
        let elsewhere = blobs_of(rows, |m| !manifests(m));
        blobs_of(rows, manifests).difference(&elsewhere).copied().collect()
    }

    fn bytes(rows: &GraphRows, blobs: &HashSet<&str>) -> u64 {
        rows.blobs.iter().filter(|(b, _)| blobs.contains(b.as_str())).map(|(_, size)| size).sum()
    }

    /// Exclusive bytes of tag `t`, the slow way: remove the tag, see which manifests no
    /// other tag reaches any more, and which blobs only those manifests referenced.
    fn brute_force_exclusive(rows: &GraphRows, t: usize) -> u64 {
        let mine = image_of(rows, rows.tags[t].2);
        let others: HashSet<i64> = rows
            .tags
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != t)
            .flat_map(|(_, (_, _, m))| image_of(rows, *m))
            .collect();
        bytes(rows, &blobs_only_of(rows, |m| mine.contains(&m) && !others.contains(&m)))
    }

    fn in_repository(rows: &GraphRows, repo: &str) -> impl Fn(i64) -> bool {
        let ids: HashSet<i64> = rows.manifests.iter().filter(|m| m.1 == repo).map(|m| m.0).collect();
        move |m| ids.contains(&m)
    }

    #[test]
    fn matches_brute_force_on_random_stores() {
        for seed in 1..200u64 {
            let rows = random_graph(seed);
            let report = Graph::new(rows.clone()).report();
            let mut total_referenced = HashSet::new();
            for repo in &report.repositories {
                let name = &repo.repository;
                let mine = in_repository(&rows, name);
                assert_eq!(repo.usage.referenced_bytes, bytes(&rows, &blobs_of(&rows, &mine)), "seed {seed}, {name}");
                assert_eq!(
                    repo.usage.exclusive_bytes,
                    bytes(&rows, &blobs_only_of(&rows, &mine)),
                    "seed {seed}, {name}"
                );
                assert_eq!(repo.usage.referenced_bytes, repo.usage.exclusive_bytes + repo.usage.shared_bytes);
                for tag in &repo.tags {
                    let t = rows.tags.iter().position(|(r, n, _)| r == name && *n == tag.tag).unwrap();
                    assert_eq!(
                        tag.usage.exclusive_bytes,
                        brute_force_exclusive(&rows, t),
                        "seed {seed}, tag {}",
                        tag.tag
                    );
                    let image = image_of(&rows, rows.tags[t].2);
                    let referenced = blobs_of(&rows, |m| image.contains(&m));
                    assert_eq!(tag.usage.referenced_bytes, bytes(&rows, &referenced), "seed {seed}, tag {}", tag.tag);
                    total_referenced.extend(referenced);
                }
            }
            // What the tags reference and what only manifests no tag reaches hold make up
            // the total, each blob once.
            let reached: HashSet<i64> = rows.tags.iter().flat_map(|(_, _, m)| image_of(&rows, *m)).collect();
            let untagged = blobs_only_of(&rows, |m| !reached.contains(&m));
            assert_eq!(
                report.referenced_bytes,
                bytes(&rows, &total_referenced) + bytes(&rows, &untagged),
                "seed {seed}"
            );
            assert_eq!(
                report.referenced_bytes + report.unreferenced_bytes,
                rows.blobs.iter().map(|b| b.1).sum::<u64>()
            );
        }
    }
}
