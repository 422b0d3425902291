//! Operator policies: retention (what to keep), immutable tags, and quotas. Declared in
//! the configuration (and, for retention, also through the admin API), validated at load
//! with errors that name the offending rule, and compiled here.

pub mod cron;
pub mod pattern;
pub mod retention;
pub mod rules;

pub use retention::Retention;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use cron::Schedule;
use pattern::Pattern;
use rules::{Rule, RuleSpec};

/// `[[retention]]`: which tags of the matching repositories to keep.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    pub name: String,
    /// Repository glob (`team/*`, `team/**`, `**`); the most specific matching policy wins.
    pub repositories: String,
    /// The tags to keep; every other tag of the repository is deleted by the policy.
    pub keep: RuleSpec,
    /// Untagged manifests: `"keep"` (never removed), or an age after which they are
    /// removed (`"7d"`). Absent: garbage collection's own rule (`gc.untagged`). Children of
    /// a live index and referrers of a present subject are never untagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged: Option<String>,
    /// When the policy runs by itself: an interval (`6h`) or a cron expression
    /// (`0 3 * * *`, UTC). Absent: only on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// `[[immutable]]`: tags that no push, delete or policy may change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImmutableSpec {
    pub repositories: String,
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default)]
    pub tags_regex: Option<String>,
}

/// `[[quota]]`: the most blob bytes the matching repositories may hold, each blob counted
/// once; per repository, or for all of them together (`total = true`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    pub repositories: String,
    pub max_bytes: u64,
    #[serde(default)]
    pub total: bool,
}

/// What a policy does with untagged manifests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Untagged {
    /// As garbage collection decides (`gc.untagged`, after the grace period).
    Gc,
    Keep,
    RemoveAfter(Duration),
}

#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub spec: RetentionSpec,
    /// Where it was declared: `config` or `api`.
    pub source: &'static str,
    pub repositories: Pattern,
    pub keep: Rule,
    pub untagged: Untagged,
    pub schedule: Option<Schedule>,
}

#[derive(Debug, Clone)]
pub struct ImmutableRule {
    pub index: usize,
    pub repositories: Pattern,
    pub tags: Pattern,
}

#[derive(Debug, Clone)]
pub struct Quota {
    pub index: usize,
    pub spec: QuotaSpec,
    pub repositories: Pattern,
}

/// Every policy, compiled.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub retention: Vec<RetentionPolicy>,
    /// Policies stored through the admin API that are not in force: unreadable or invalid
    /// under this version's rules, or a policy of the configuration file has their name or
    /// selects the same repositories (the file wins: moving a policy from the API into the
    /// file must not stop the next start), or another stored policy selects them already.
    /// Listed and logged, never a reason to refuse the start: a stored policy can only be
    /// removed through a running server.
    pub inactive: Vec<Inactive>,
    pub immutable: Vec<ImmutableRule>,
    pub quotas: Vec<Quota>,
}

/// A stored policy that is not in force, and why.
#[derive(Debug, Clone)]
pub struct Inactive {
    pub name: String,
    /// As stored (JSON, or the text itself if it is not JSON).
    pub spec: serde_json::Value,
    pub why: String,
}

/// A retention policy as stored through the admin API: its name and its JSON.
pub type StoredPolicy = (String, String);

impl RetentionSpec {
    /// Validates the policy; `at` names it in errors (`retention[2] "team"`).
    pub fn compile(&self, at: &str, source: &'static str) -> Result<RetentionPolicy, String> {
        let at = format!("{at} {:?}", self.name);
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(format!("{at}: name must be letters, digits, '-', '_' or '.'"));
        }
        let repositories =
            Pattern::repository_glob(&self.repositories).map_err(|e| format!("{at}.repositories: {e}"))?;
        let keep = self.keep.compile("keep").map_err(|e| format!("{at}: {e}"))?;
        let untagged = match self.untagged.as_deref() {
            None => Untagged::Gc,
            Some("keep") => Untagged::Keep,
            Some(d) => Untagged::RemoveAfter(
                crate::config::parse_duration(d).map_err(|e| format!("{at}.untagged: {e:#} (or \"keep\")"))?,
            ),
        };
        let schedule =
            self.schedule.as_deref().map(Schedule::parse).transpose().map_err(|e| format!("{at}.schedule: {e}"))?;
        Ok(RetentionPolicy { spec: self.clone(), source, repositories, keep, untagged, schedule })
    }
}

impl Policies {
    /// Compiles the configuration's policies and the retention policies stored through the
    /// admin API (those not in force go to `inactive`; an error is the file's).
    pub fn compile(
        retention: &[RetentionSpec],
        stored: &[StoredPolicy],
        immutable: &[ImmutableSpec],
        quotas: &[QuotaSpec],
    ) -> Result<Policies, String> {
        let mut out = Policies::default();
        for (i, spec) in retention.iter().enumerate() {
            out.retention.push(spec.compile(&format!("retention[{i}]"), "config")?);
        }
        for (name, json) in stored {
            let compiled =
                serde_json::from_str::<RetentionSpec>(json).map_err(|e| format!("unreadable: {e}")).and_then(|spec| {
                    let taken =
                        |p: &RetentionPolicy| p.spec.name == spec.name || p.spec.repositories == spec.repositories;
                    match out.retention.iter().find(|p| taken(p)) {
                        Some(p) if p.source == "config" => Err(format!(
                            "the configuration file's policy {:?} has its name or selects the same repositories",
                            p.spec.name
                        )),
                        Some(p) => Err(format!("the stored policy {:?} selects the same repositories", p.spec.name)),
                        None => spec.compile("retention (admin API)", "api"),
                    }
                });
            match compiled {
                Ok(policy) => out.retention.push(policy),
                Err(why) => {
                    let spec = serde_json::from_str(json).unwrap_or_else(|_| serde_json::Value::String(json.clone()));
                    out.inactive.push(Inactive { name: name.clone(), spec, why });
                }
            }
        }
        for (i, a) in out.retention.iter().enumerate() {
            for b in &out.retention[i + 1..] {
                if a.spec.name == b.spec.name {
                    return Err(format!("two retention policies are named {:?}", a.spec.name));
                }
                if a.spec.repositories == b.spec.repositories {
                    return Err(format!(
                        "retention policies {:?} and {:?} select the same repositories {:?}: merge them",
                        a.spec.name, b.spec.name, a.spec.repositories
                    ));
                }
            }
        }
        for (i, spec) in immutable.iter().enumerate() {
            let at = format!("immutable[{i}]");
            let repositories =
                Pattern::repository_glob(&spec.repositories).map_err(|e| format!("{at}.repositories: {e}"))?;
            let tags = match (&spec.tags, &spec.tags_regex) {
                (Some(g), None) => Pattern::tag_glob(g).map_err(|e| format!("{at}.tags: {e}"))?,
                (None, Some(r)) => Pattern::regex(r).map_err(|e| format!("{at}.tags_regex: {e}"))?,
                _ => return Err(format!("{at}: give exactly one of tags or tags_regex")),
            };
            out.immutable.push(ImmutableRule { index: i, repositories, tags });
        }
        for (i, spec) in quotas.iter().enumerate() {
            let repositories =
                Pattern::repository_glob(&spec.repositories).map_err(|e| format!("quota[{i}].repositories: {e}"))?;
            out.quotas.push(Quota { index: i, spec: spec.clone(), repositories });
        }
        Ok(out)
    }

    /// Every retention policy matching `repo`, most specific first (the first one governs;
    /// among equally specific patterns the one declared first wins).
    pub fn retention_candidates(&self, repo: &str) -> Vec<&RetentionPolicy> {
        let mut matching: Vec<(usize, &RetentionPolicy)> =
            self.retention.iter().enumerate().filter(|(_, p)| p.repositories.matches(repo)).collect();
        matching.sort_by(|(ia, a), (ib, b)| {
            b.repositories.specificity().cmp(&a.repositories.specificity()).then(ia.cmp(ib))
        });
        matching.into_iter().map(|(_, p)| p).collect()
    }

    pub fn retention_for(&self, repo: &str) -> Option<&RetentionPolicy> {
        self.retention_candidates(repo).into_iter().next()
    }

    /// The immutability rule that protects `repo:tag`, if any.
    pub fn immutable_rule(&self, repo: &str, tag: &str) -> Option<&ImmutableRule> {
        self.immutable.iter().find(|r| r.repositories.matches(repo) && r.tags.matches(tag))
    }

    /// The quotas that apply to `repo`.
    pub fn quotas_for(&self, repo: &str) -> Vec<&Quota> {
        self.quotas.iter().filter(|q| q.repositories.matches(repo)).collect()
    }
}

impl std::fmt::Display for ImmutableRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "immutable[{}]: repositories {} × tags {}", self.index, self.repositories, self.tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, repos: &str) -> RetentionSpec {
        RetentionSpec {
            name: name.into(),
            repositories: repos.into(),
            keep: RuleSpec::Always(true),
            untagged: None,
            schedule: None,
        }
    }

    #[test]
    fn most_specific_policy_wins() {
        let p = Policies::compile(&[spec("all", "**"), spec("team", "team/*"), spec("web", "team/web")], &[], &[], &[])
            .unwrap();
        assert_eq!(p.retention_for("team/web").unwrap().spec.name, "web");
        assert_eq!(p.retention_for("team/api").unwrap().spec.name, "team");
        assert_eq!(p.retention_for("team/api/x").unwrap().spec.name, "all");
        assert_eq!(p.retention_candidates("team/web").len(), 3);
    }

    #[test]
    fn load_errors_name_the_policy_and_rule() {
        let mut bad = spec("team", "team/*");
        bad.keep = RuleSpec::Any(vec![RuleSpec::Always(true), RuleSpec::MatchingRegex("[".into())]);
        let err = Policies::compile(&[spec("ok", "**"), bad], &[], &[], &[]).unwrap_err();
        assert!(err.starts_with("retention[1] \"team\": keep.any[1].matching_regex"), "{err}");
        let err = Policies::compile(&[spec("a", "x/*"), spec("a", "y/*")], &[], &[], &[]).unwrap_err();
        assert!(err.contains("two retention policies are named"), "{err}");
        let mut bad = spec("s", "**");
        bad.schedule = Some("0 99 * * *".into());
        assert!(Policies::compile(&[bad], &[], &[], &[]).unwrap_err().contains(".schedule"));
        let imm = ImmutableSpec { repositories: "prod/**".into(), tags: None, tags_regex: None };
        assert!(Policies::compile(&[], &[], &[imm], &[]).unwrap_err().contains("immutable[0]"));
    }

    /// A pattern that no repository name (or tag) can match is refused where it is read,
    /// with the reason: it would govern nothing.
    #[test]
    fn patterns_that_match_nothing_are_refused() {
        for repositories in [
            "Prod/**",
            "team//*",
            "/team/*",
            "team/web/",
            "a b/*",
            "[",
            "team/-web",
            "team/web-",
            "a..b/*",
            "a___b",
            "*./x",
        ] {
            let err = Policies::compile(&[spec("p", repositories)], &[], &[], &[]).unwrap_err();
            assert!(err.contains(".repositories") && err.contains("matches nothing"), "{repositories}: {err}");
            let imm = ImmutableSpec { repositories: repositories.into(), tags: Some("v*".into()), tags_regex: None };
            assert!(
                Policies::compile(&[], &[], &[imm], &[]).unwrap_err().contains("matches nothing"),
                "{repositories}"
            );
        }
        let imm = ImmutableSpec { repositories: "prod/**".into(), tags: Some("v1 *".into()), tags_regex: None };
        assert!(Policies::compile(&[], &[], &[imm], &[]).unwrap_err().contains("immutable[0].tags"));
        let mut tags = spec("t", "**");
        tags.keep = RuleSpec::Matching("release/*".into());
        assert!(Policies::compile(&[tags], &[], &[], &[]).unwrap_err().contains("matches nothing"));
        let imm = ImmutableSpec { repositories: "prod/**".into(), tags: Some("-rc*".into()), tags_regex: None };
        assert!(Policies::compile(&[], &[], &[imm], &[]).unwrap_err().contains("immutable[0].tags"));
        for fine in ["**", "team/*", "team/web-?", "a.b_c/**/x", "a__b--c/*-*", "**/x", "*", "?", "a/**", "*_*/?.?"] {
            Policies::compile(&[spec("p", fine)], &[], &[], &[]).unwrap();
        }
    }

    /// A policy of the configuration file wins over a stored one (of the admin API) with
    /// its name or its repositories, the first of two stored ones with the same repositories
    /// wins, and a stored one unreadable or invalid under today's rules is out of force
    /// too: none of these is a reason to refuse the start.
    #[test]
    fn stored_policies_out_of_force_do_not_stop_the_start() {
        let stored = |specs: &[RetentionSpec]| -> Vec<StoredPolicy> {
            specs.iter().map(|s| (s.name.clone(), serde_json::to_string(s).unwrap())).collect()
        };
        let p = Policies::compile(
            &[spec("zz", "x/*")],
            &stored(&[spec("zz", "y/*"), spec("other", "x/*"), spec("ok", "z/*"), spec("again", "z/*")]),
            &[],
            &[],
        )
        .unwrap();
        let inactive: Vec<(&str, &str)> = p.inactive.iter().map(|s| (s.name.as_str(), s.why.as_str())).collect();
        let file = "the configuration file's policy \"zz\" has its name or selects the same repositories";
        assert_eq!(
            inactive,
            [("zz", file), ("other", file), ("again", "the stored policy \"ok\" selects the same repositories")]
        );
        let names: Vec<&str> = p.retention.iter().map(|r| r.spec.name.as_str()).collect();
        assert_eq!(names, ["zz", "ok"]);
        assert_eq!(p.retention_for("y/a").map(|r| r.spec.name.as_str()), None);
        let mut unreadable = stored(&[spec("Typo", "Team/*")]);
        unreadable
            .push(("old".into(), r#"{"name": "old", "repositories": "**", "keep": {"newest": 1}, "gone": 1}"#.into()));
        let p = Policies::compile(&[], &unreadable, &[], &[]).unwrap();
        assert!(p.retention.is_empty(), "{:?}", p.inactive);
        assert!(p.inactive[0].why.contains("matches nothing"), "{:?}", p.inactive);
        assert!(p.inactive[1].why.starts_with("unreadable: unknown field `gone`"), "{:?}", p.inactive);
    }

    #[test]
    fn immutability_rules() {
        let imm = ImmutableSpec {
            repositories: "prod/**".into(),
            tags: None,
            tags_regex: Some("v[0-9]+(\\.[0-9]+)*".into()),
        };
        let p = Policies::compile(&[], &[], &[imm], &[]).unwrap();
        assert!(p.immutable_rule("prod/app", "v1.2").is_some());
        assert!(p.immutable_rule("prod/app", "v1.2-rc").is_none());
        assert!(p.immutable_rule("dev/app", "v1.2").is_none());
    }
}
