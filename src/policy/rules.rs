//! Retention rules: which tags of a repository to keep. A rule is an expression over one
//! tag, composed with `all` (AND), `any` (OR) and `not`; a tag that the policy's `keep`
//! expression does not keep is deleted by the policy.
//!
//! Counting rules (`newest`, `highest_semver`) rank the tags **of one repository**, and
//! each such rule counts on its own: `{ newest = 5, matching = "main-*" }` keeps the five
//! newest `main-*` tags whatever other rules keep, and two counting rules never share a
//! pool.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pattern::Pattern;
use crate::config::parse_duration;

/// A rule as written in the configuration or sent to the admin API.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleSpec {
    /// `{ always = true }`: keep every tag.
    Always(bool),
    /// `{ newest = 10 }` or `{ newest = { count = 10, matching = "main-*" } }`: the N most
    /// recently pushed tags (among those matching, if given).
    Newest(CountSpec),
    /// `{ highest_semver = 3 }`: the N highest semantic versions (`1.2.3` or `v1.2.3`, with
    /// real semver ordering; tags that are not versions are not counted).
    HighestSemver(CountSpec),
    /// `{ matching = "v*" }`: tags matching a glob.
    Matching(String),
    /// `{ matching_regex = "release-[0-9]+" }`: tags matching a regular expression, which
    /// is always anchored to the whole tag.
    MatchingRegex(String),
    /// `{ pushed_within = "30d" }`.
    PushedWithin(String),
    /// `{ pulled_within = "90d" }`: pulled within the duration; a tag pushed within it
    /// counts as used, so a fresh image is never removed for not being pulled yet.
    PulledWithin(String),
    All(Vec<RuleSpec>),
    Any(Vec<RuleSpec>),
    Not(Box<RuleSpec>),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum CountSpec {
    Count(u32),
    Filtered {
        count: u32,
        #[serde(default)]
        matching: Option<String>,
        #[serde(default)]
        matching_regex: Option<String>,
    },
}

/// A validated rule.
#[derive(Debug, Clone)]
pub enum Rule {
    Always,
    Newest { count: usize, among: Option<Pattern> },
    HighestSemver { count: usize, among: Option<Pattern> },
    Matching(Pattern),
    PushedWithin(Duration),
    PulledWithin(Duration),
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
}

fn pattern(glob: Option<&String>, regex: Option<&String>, path: &str) -> Result<Option<Pattern>, String> {
    match (glob, regex) {
        (Some(_), Some(_)) => Err(format!("{path}: give matching or matching_regex, not both")),
        (Some(g), None) => Pattern::tag_glob(g).map(Some).map_err(|e| format!("{path}.matching: {e}")),
        (None, Some(r)) => Pattern::regex(r).map(Some).map_err(|e| format!("{path}.matching_regex: {e}")),
        (None, None) => Ok(None),
    }
}

impl RuleSpec {
    /// Validates and compiles the rule; errors name the offending rule by its path.
    pub fn compile(&self, path: &str) -> Result<Rule, String> {
        let count = |c: &CountSpec, kind: &str| -> Result<(usize, Option<Pattern>), String> {
            let here = format!("{path}.{kind}");
            let (n, among) = match c {
                CountSpec::Count(n) => (*n, None),
                CountSpec::Filtered { count, matching, matching_regex } => {
                    (*count, pattern(matching.as_ref(), matching_regex.as_ref(), &here)?)
                }
            };
            if n == 0 {
                return Err(format!("{here}: a count of 0 keeps nothing; remove the rule instead"));
            }
            Ok((n as usize, among))
        };
        let duration = |raw: &str, kind: &str| parse_duration(raw).map_err(|e| format!("{path}.{kind}: {e}"));
        let list = |rules: &[RuleSpec], kind: &str| -> Result<Vec<Rule>, String> {
            if rules.is_empty() {
                return Err(format!("{path}.{kind}: an empty list"));
            }
            rules.iter().enumerate().map(|(i, r)| r.compile(&format!("{path}.{kind}[{i}]"))).collect()
        };
        Ok(match self {
            RuleSpec::Always(true) => Rule::Always,
            RuleSpec::Always(false) => return Err(format!("{path}.always: only `always = true` means anything")),
            RuleSpec::Newest(c) => {
                let (count, among) = count(c, "newest")?;
                Rule::Newest { count, among }
            }
            RuleSpec::HighestSemver(c) => {
                let (count, among) = count(c, "highest_semver")?;
                Rule::HighestSemver { count, among }
            }
            RuleSpec::Matching(g) => Rule::Matching(Pattern::tag_glob(g).map_err(|e| format!("{path}.matching: {e}"))?),
            RuleSpec::MatchingRegex(r) => {
                Rule::Matching(Pattern::regex(r).map_err(|e| format!("{path}.matching_regex: {e}"))?)
            }
            RuleSpec::PushedWithin(d) => Rule::PushedWithin(duration(d, "pushed_within")?),
            RuleSpec::PulledWithin(d) => Rule::PulledWithin(duration(d, "pulled_within")?),
            RuleSpec::All(rules) => Rule::All(list(rules, "all")?),
            RuleSpec::Any(rules) => Rule::Any(list(rules, "any")?),
            RuleSpec::Not(rule) => Rule::Not(Box::new(rule.compile(&format!("{path}.not"))?)),
        })
    }
}

/// What a rule sees of a tag.
#[derive(Debug, Clone)]
pub struct TagFacts {
    pub name: String,
    /// When the tag was last pointed at its current manifest (ms).
    pub pushed_at: i64,
    /// When the tag was last pulled (ms), if ever.
    pub pulled_at: Option<i64>,
}

/// A semantic version from a tag (`1.2.3`, `v1.2.3`, with pre-release and build parts).
pub fn semver_of(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// The tags of one repository, with each counting rule's ranking computed once.
pub struct Evaluation<'a> {
    tags: &'a [TagFacts],
    now: i64,
    /// Counting rule (by path) → tag → rank (1 = first), for eligible tags.
    ranks: HashMap<String, HashMap<&'a str, usize>>,
}

fn ago(now: i64, then: i64) -> String {
    let secs = ((now - then).max(0) / 1000) as u64;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn within(now: i64, then: i64, d: Duration) -> bool {
    now - then <= d.as_millis() as i64
}

impl<'a> Evaluation<'a> {
    pub fn new(rule: &Rule, tags: &'a [TagFacts], now: i64) -> Evaluation<'a> {
        let mut eval = Evaluation { tags, now, ranks: HashMap::new() };
        eval.rank(rule, "keep");
        eval
    }

    fn rank(&mut self, rule: &Rule, path: &str) {
        match rule {
            Rule::Newest { among, .. } => {
                let mut eligible: Vec<&TagFacts> =
                    self.tags.iter().filter(|t| among.as_ref().is_none_or(|p| p.matches(&t.name))).collect();
                eligible.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then_with(|| b.name.cmp(&a.name)));
                self.ranks.insert(
                    path.to_owned(),
                    eligible.iter().enumerate().map(|(i, t)| (t.name.as_str(), i + 1)).collect(),
                );
            }
            Rule::HighestSemver { among, .. } => {
                let mut eligible: Vec<(semver::Version, &TagFacts)> = self
                    .tags
                    .iter()
                    .filter(|t| among.as_ref().is_none_or(|p| p.matches(&t.name)))
                    .filter_map(|t| semver_of(&t.name).map(|v| (v, t)))
                    .collect();
                eligible.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.name.cmp(&a.1.name)));
                self.ranks.insert(
                    path.to_owned(),
                    eligible.iter().enumerate().map(|(i, (_, t))| (t.name.as_str(), i + 1)).collect(),
                );
            }
            Rule::All(rules) | Rule::Any(rules) => {
                let kind = if matches!(rule, Rule::All(_)) { "all" } else { "any" };
                for (i, r) in rules.iter().enumerate() {
                    self.rank(r, &format!("{path}.{kind}[{i}]"));
                }
            }
            Rule::Not(r) => self.rank(r, &format!("{path}.not")),
            _ => {}
        }
    }

    /// Whether `rule` keeps `tag`, and why (naming the rule by its path).
    pub fn keeps(&self, rule: &Rule, path: &str, tag: &TagFacts) -> (bool, String) {
        match rule {
            Rule::Always => (true, format!("{path}: always")),
            Rule::Newest { count, among } | Rule::HighestSemver { count, among } => {
                let kind = if matches!(rule, Rule::Newest { .. }) { "newest" } else { "highest_semver" };
                let ranks = &self.ranks[path];
                let pool = among.as_ref().map(|p| format!(" matching {p}")).unwrap_or_default();
                match ranks.get(tag.name.as_str()) {
                    Some(&rank) if rank <= *count => {
                        (true, format!("{path}: {kind} {count}{pool}: ranked {rank} of {}", ranks.len()))
                    }
                    Some(&rank) => (false, format!("{path}: {kind} {count}{pool}: ranked {rank}, beyond {count}")),
                    None if kind == "highest_semver" && semver_of(&tag.name).is_none() => {
                        (false, format!("{path}: {kind} {count}: not a semantic version"))
                    }
                    None => (false, format!("{path}: {kind} {count}{pool}: does not match")),
                }
            }
            Rule::Matching(p) => {
                let m = p.matches(&tag.name);
                (m, format!("{path}: {} {p}", if m { "matches" } else { "does not match" }))
            }
            Rule::PushedWithin(d) => {
                let w = within(self.now, tag.pushed_at, *d);
                let verdict = if w { "within" } else { "not within" };
                (w, format!("{path}: pushed {} ago, {verdict} {}", ago(self.now, tag.pushed_at), fmt_duration(*d)))
            }
            Rule::PulledWithin(d) => {
                if within(self.now, tag.pushed_at, *d) {
                    return (
                        true,
                        format!("{path}: pushed {} ago, which counts as used", ago(self.now, tag.pushed_at)),
                    );
                }
                match tag.pulled_at {
                    Some(p) if within(self.now, p, *d) => {
                        (true, format!("{path}: pulled {} ago, within {}", ago(self.now, p), fmt_duration(*d)))
                    }
                    Some(p) => (
                        false,
                        format!("{path}: last pulled {} ago, not within {}", ago(self.now, p), fmt_duration(*d)),
                    ),
                    None => (false, format!("{path}: never pulled, pushed {} ago", ago(self.now, tag.pushed_at))),
                }
            }
            Rule::All(rules) => {
                let mut reasons = Vec::new();
                for (i, r) in rules.iter().enumerate() {
                    let (k, why) = self.keeps(r, &format!("{path}.all[{i}]"), tag);
                    if !k {
                        return (false, why);
                    }
                    reasons.push(why);
                }
                (true, reasons.join("; and "))
            }
            Rule::Any(rules) => {
                let mut reasons = Vec::new();
                for (i, r) in rules.iter().enumerate() {
                    let (k, why) = self.keeps(r, &format!("{path}.any[{i}]"), tag);
                    if k {
                        return (true, why);
                    }
                    reasons.push(why);
                }
                (false, reasons.join("; "))
            }
            Rule::Not(r) => {
                let (k, why) = self.keeps(r, &format!("{path}.not"), tag);
                (!k, format!("not ({why})"))
            }
        }
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_000 * DAY;

    fn tag(name: &str, pushed_days_ago: i64, pulled_days_ago: Option<i64>) -> TagFacts {
        TagFacts {
            name: name.into(),
            pushed_at: NOW - pushed_days_ago * DAY,
            pulled_at: pulled_days_ago.map(|d| NOW - d * DAY),
        }
    }

    fn rule(toml_text: &str) -> Rule {
        #[derive(Deserialize)]
        struct W {
            keep: RuleSpec,
        }
        toml::from_str::<W>(toml_text).unwrap().keep.compile("keep").unwrap()
    }

    fn kept(rule: &Rule, tags: &[TagFacts]) -> Vec<String> {
        let eval = Evaluation::new(rule, tags, NOW);
        tags.iter().filter(|t| eval.keeps(rule, "keep", t).0).map(|t| t.name.clone()).collect()
    }

    #[test]
    fn semver_ordering_beats_lexical_traps() {
        let tags: Vec<TagFacts> = ["v1.9.0", "v1.10.0", "v1.2.0", "v2.0.0-rc.1", "v1.10.0-beta", "latest", "1.11.0"]
            .iter()
            .map(|n| tag(n, 1, None))
            .collect();
        let r = rule("keep = { highest_semver = 3 }");
        let mut k = kept(&r, &tags);
        k.sort();
        assert_eq!(k, ["1.11.0", "v1.10.0", "v2.0.0-rc.1"]);
        let eval = Evaluation::new(&r, &tags, NOW);
        assert!(eval.keeps(&r, "keep", &tags[5]).1.contains("not a semantic version"));
    }

    #[test]
    fn counts_are_per_rule() {
        let tags = vec![
            tag("main-1", 5, None),
            tag("main-2", 4, None),
            tag("main-3", 3, None),
            tag("feat-1", 2, None),
            tag("feat-2", 1, None),
        ];
        // Two newest per pattern: counted separately, not pooled.
        let r = rule(
            r#"keep = { any = [ { newest = { count = 2, matching = "main-*" } }, { newest = { count = 1, matching = "feat-*" } } ] }"#,
        );
        assert_eq!(kept(&r, &tags), ["main-2", "main-3", "feat-2"]);
        // Unfiltered: the newest over all tags.
        assert_eq!(kept(&rule("keep = { newest = 2 }"), &tags), ["feat-1", "feat-2"]);
    }

    #[test]
    fn and_or_not() {
        let tags = vec![tag("a", 40, None), tag("b", 20, None), tag("c", 10, None), tag("d", 1, None)];
        // Keep the last 3, but none older than 30 days.
        let r = rule(r#"keep = { all = [ { newest = 3 }, { pushed_within = "30d" } ] }"#);
        assert_eq!(kept(&r, &tags), ["b", "c", "d"]);
        let r = rule(r#"keep = { all = [ { newest = 2 }, { not = { matching = "d" } } ] }"#);
        assert_eq!(kept(&r, &tags), ["c"]);
        let r = rule(r#"keep = { any = [ { matching_regex = "a|b" }, { pushed_within = "5d" } ] }"#);
        assert_eq!(kept(&r, &tags), ["a", "b", "d"]);
    }

    #[test]
    fn anchored_patterns() {
        let tags = vec![tag("v1", 1, None), tag("v10", 1, None), tag("dev-v1", 1, None)];
        assert_eq!(kept(&rule(r#"keep = { matching_regex = "v1" }"#), &tags), ["v1"]);
        assert_eq!(kept(&rule(r#"keep = { matching = "v1" }"#), &tags), ["v1"]);
        assert_eq!(kept(&rule(r#"keep = { matching = "v1*" }"#), &tags), ["v1", "v10"]);
    }

    #[test]
    fn a_fresh_push_counts_as_used() {
        let tags = vec![
            tag("fresh", 1, None),
            tag("used", 100, Some(3)),
            tag("stale", 100, Some(50)),
            tag("never", 100, None),
        ];
        let r = rule(r#"keep = { pulled_within = "7d" }"#);
        assert_eq!(kept(&r, &tags), ["fresh", "used"]);
        let eval = Evaluation::new(&r, &tags, NOW);
        assert!(eval.keeps(&r, "keep", &tags[0]).1.contains("counts as used"));
        assert!(eval.keeps(&r, "keep", &tags[3]).1.contains("never pulled"));
    }

    #[test]
    fn reasons_name_the_rule() {
        let tags = vec![tag("x", 1, None)];
        let r = rule(r#"keep = { any = [ { matching = "y" }, { newest = 5 } ] }"#);
        let eval = Evaluation::new(&r, &tags, NOW);
        let (k, why) = eval.keeps(&r, "keep", &tags[0]);
        assert!(k);
        assert!(why.starts_with("keep.any[1]: newest 5"), "{why}");
    }

    #[test]
    fn validation_points_at_the_offending_rule() {
        #[derive(Deserialize)]
        struct W {
            keep: RuleSpec,
        }
        let spec =
            toml::from_str::<W>(r#"keep = { any = [ { newest = 3 }, { all = [ { matching_regex = "(" } ] } ] }"#)
                .unwrap()
                .keep;
        let err = spec.compile("keep").unwrap_err();
        assert!(err.starts_with("keep.any[1].all[0].matching_regex: invalid regular expression"), "{err}");
        let spec = toml::from_str::<W>(r#"keep = { newest = 0 }"#).unwrap().keep;
        assert!(spec.compile("keep").unwrap_err().contains("count of 0"));
        let spec = toml::from_str::<W>(r#"keep = { pushed_within = "30" }"#).unwrap().keep;
        assert!(spec.compile("keep").unwrap_err().starts_with("keep.pushed_within"));
        assert!(toml::from_str::<W>(r#"keep = { newset = 3 }"#).is_err());
    }
}
