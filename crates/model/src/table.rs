//! The host lookup table: which pattern serves a name.
//!
//! Patterns are stored in a tree keyed from the right (TLD side). Each node has literal
//! children (one hash map for the whole tree, keyed by parent node and label), one `*` child
//! and one `**` child.
//!
//! **Priority.** Candidate matches are compared label by label from the right; at the first
//! label where they differ, a literal beats `*`, `*` beats the start of a `**`, and the start
//! of a `**` beats a `**` that goes on from the label before (so `**.**.x`, which needs two
//! labels, beats `**.x`). The search tries the options of every label in that order and
//! backtracks when a branch fails deeper, so a literal node that leads nowhere never hides a
//! wildcard that matches: with `*.example.com` and `a.b.example.com`, `b.example.com` finds
//! `*.example.com`. The first complete match found is therefore the best one.
//!
//! Lookups allocate nothing unless a name forces a long backtracking search (many `**`
//! patterns), in which case failed states are remembered so the search stays polynomial.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::name::{HostPattern, PatternLabel};

const NONE: u32 = u32::MAX;
/// Labels in a name of at most 253 octets.
const MAX_LABELS: usize = 127;
/// Search steps after which failed states start to be remembered.
const MEMO_AFTER_STEPS: u32 = 512;

/// Maps host names to the most specific matching [`HostPattern`] and its value.
#[derive(Clone)]
pub struct HostTable<T> {
    entries: Vec<(HostPattern, T)>,
    nodes: Vec<Node>,
    edges: hashbrown::HashMap<Edge, u32>,
}

#[derive(Clone, Copy)]
struct Node {
    one: u32,
    many: u32,
    entry: u32,
}

impl Node {
    const EMPTY: Self = Self { one: NONE, many: NONE, entry: NONE };
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Edge {
    parent: u32,
    label: Box<str>,
}

/// A borrowed [`Edge`], hashed the same way, so lookups need no allocation.
struct EdgeRef<'a> {
    parent: u32,
    label: &'a str,
}

impl Hash for EdgeRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parent.hash(state);
        self.label.hash(state);
    }
}

impl hashbrown::Equivalent<Edge> for EdgeRef<'_> {
    fn equivalent(&self, key: &Edge) -> bool {
        self.parent == key.parent && self.label == &*key.label
    }
}

impl<T> HostTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self { entries: Vec::new(), nodes: vec![Node::EMPTY], edges: hashbrown::HashMap::new() }
    }

    /// Adds a pattern, replacing and returning the value of an equal pattern already present.
    pub fn insert(&mut self, pattern: HostPattern, value: T) -> Option<T> {
        let mut node = 0u32;
        for label in pattern.labels().rev() {
            node = match label {
                PatternLabel::Literal(text) => {
                    let next = self.nodes.len() as u32;
                    let edge = Edge { parent: node, label: text.into() };
                    let child = *self.edges.entry(edge).or_insert(next);
                    if child == next {
                        self.nodes.push(Node::EMPTY);
                    }
                    child
                }
                PatternLabel::One => self.child(node, |n| &mut n.one),
                PatternLabel::Many => self.child(node, |n| &mut n.many),
            };
        }
        let slot = self.nodes[node as usize].entry;
        if slot == NONE {
            self.nodes[node as usize].entry = self.entries.len() as u32;
            self.entries.push((pattern, value));
            None
        } else {
            Some(std::mem::replace(&mut self.entries[slot as usize].1, value))
        }
    }

    /// The best pattern for a normalised name (see [`crate::Hostname`]), with its value.
    pub fn lookup(&self, name: &str) -> Option<(&HostPattern, &T)> {
        let mut labels = [""; MAX_LABELS];
        let mut count = 0;
        for label in name.split('.') {
            if count == MAX_LABELS {
                return None;
            }
            labels[count] = label;
            count += 1;
        }
        let mut search = Search { steps: 0, failed: None };
        let entry = self.walk(0, &labels[..count], false, &mut search)?;
        let (pattern, value) = &self.entries[entry as usize];
        Some((pattern, value))
    }

    /// The value of exactly this pattern, if the table holds it (no matching: `*.a.com`
    /// finds only `*.a.com`).
    pub fn get(&self, pattern: &HostPattern) -> Option<&T> {
        let mut node = 0u32;
        for label in pattern.labels().rev() {
            let n = self.nodes[node as usize];
            node = match label {
                PatternLabel::Literal(text) => *self.edges.get(&EdgeRef { parent: node, label: text })?,
                PatternLabel::One => n.one,
                PatternLabel::Many => n.many,
            };
            if node == NONE {
                return None;
            }
        }
        let entry = self.nodes[node as usize].entry;
        (entry != NONE).then(|| &self.entries[entry as usize].1)
    }

    /// How many patterns the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every pattern and value, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&HostPattern, &T)> {
        self.entries.iter().map(|(p, v)| (p, v))
    }

    fn child(&mut self, node: u32, slot: impl Fn(&mut Node) -> &mut u32) -> u32 {
        let next = self.nodes.len() as u32;
        let current = *slot(&mut self.nodes[node as usize]);
        if current != NONE {
            return current;
        }
        *slot(&mut self.nodes[node as usize]) = next;
        self.nodes.push(Node::EMPTY);
        next
    }

    /// Depth-first search over the labels still to match (`rest`, consumed from the right), in
    /// priority order: literal, `*`, a new `**`, then the `**` we are in taking one more label.
    fn walk(&self, node: u32, rest: &[&str], in_many: bool, search: &mut Search) -> Option<u32> {
        let n = self.nodes[node as usize];
        let Some((label, before)) = rest.split_last() else {
            return (n.entry != NONE).then_some(n.entry);
        };
        let state = (node, rest.len() as u8, in_many);
        if search.known_failure(state) {
            return None;
        }
        let literal = self.edges.get(&EdgeRef { parent: node, label });
        let found = literal
            .and_then(|&child| self.walk(child, before, false, search))
            .or_else(|| (n.one != NONE).then(|| self.walk(n.one, before, false, search)).flatten())
            .or_else(|| (n.many != NONE).then(|| self.walk(n.many, before, true, search)).flatten())
            .or_else(|| in_many.then(|| self.walk(node, before, true, search)).flatten());
        if found.is_none() {
            search.record_failure(state);
        }
        found
    }
}

/// Bookkeeping for one lookup: failed states are remembered once the search gets long.
struct Search {
    steps: u32,
    failed: Option<HashSet<(u32, u8, bool)>>,
}

impl Search {
    fn known_failure(&mut self, state: (u32, u8, bool)) -> bool {
        self.steps += 1;
        if self.steps > MEMO_AFTER_STEPS && self.failed.is_none() {
            self.failed = Some(HashSet::new());
        }
        self.failed.as_ref().is_some_and(|f| f.contains(&state))
    }

    fn record_failure(&mut self, state: (u32, u8, bool)) {
        if let Some(failed) = &mut self.failed {
            failed.insert(state);
        }
    }
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> FromIterator<(HostPattern, T)> for HostTable<T> {
    fn from_iter<I: IntoIterator<Item = (HostPattern, T)>>(iter: I) -> Self {
        let mut table = Self::new();
        for (pattern, value) in iter {
            table.insert(pattern, value);
        }
        table
    }
}

impl<T> fmt::Debug for HostTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostTable").field("patterns", &self.entries.len()).field("nodes", &self.nodes.len()).finish()
    }
}

/// A brute-force matcher that enumerates every way each pattern can match a name: slow,
/// obviously right, and the yardstick the lookup tree is tested (and fuzzed) against.
#[cfg(any(test, feature = "reference-matcher"))]
pub mod reference {
    use crate::{HostPattern, PatternLabel};

    /// Per label of the name, from the right: 0 literal, 1 `*`, 2 a `**` starts, 3 a `**` goes
    /// on. The best match is the smallest sequence.
    fn sequences(pattern: &[PatternLabel<'_>], labels: &[&str], out: &mut Vec<Vec<u8>>, acc: &mut Vec<u8>) {
        match (pattern.split_last(), labels.split_last()) {
            (None, None) => out.push(acc.clone()),
            (None, Some(_)) | (Some(_), None) => {}
            (Some((p, prest)), Some((l, lrest))) => match p {
                PatternLabel::Literal(t) => {
                    if t == l {
                        acc.push(0);
                        sequences(prest, lrest, out, acc);
                        acc.pop();
                    }
                }
                PatternLabel::One => {
                    acc.push(1);
                    sequences(prest, lrest, out, acc);
                    acc.pop();
                }
                PatternLabel::Many => {
                    for take in 1..=labels.len() {
                        let before = acc.len();
                        acc.push(2);
                        acc.extend(std::iter::repeat_n(3, take - 1));
                        sequences(prest, &labels[..labels.len() - take], out, acc);
                        acc.truncate(before);
                    }
                }
            },
        }
    }

    /// The pattern that should win for `name` (normalised), by the priority rule.
    pub fn best_match(patterns: &[HostPattern], name: &str) -> Option<String> {
        let labels: Vec<&str> = name.split('.').collect();
        patterns
            .iter()
            .filter_map(|p| {
                let pl: Vec<PatternLabel<'_>> = p.labels().collect();
                let mut all = Vec::new();
                sequences(&pl, &labels, &mut all, &mut Vec::new());
                all.into_iter().min().map(|best| (best, p.to_string()))
            })
            .min()
            .map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hostname;
    use proptest::prelude::*;

    fn table(patterns: &[&str]) -> HostTable<()> {
        patterns.iter().map(|p| (HostPattern::parse(p).unwrap(), ())).collect()
    }

    fn find(table: &HostTable<()>, name: &str) -> Option<String> {
        let name = Hostname::parse(name).ok()?;
        table.lookup(name.as_str()).map(|(p, _)| p.to_string())
    }

    #[test]
    fn get_finds_exactly_the_pattern_given() {
        let t = table(&["*.a.com", "portico-probe--.a.com", "x.*.b.com", "**.c.com"]);
        let get = |p: &str| t.get(&HostPattern::parse(p).unwrap()).is_some();
        assert!(get("*.a.com"), "a more specific host beside it does not hide it");
        assert!(get("portico-probe--.a.com") && get("x.*.b.com") && get("**.c.com"));
        for absent in ["a.com", "**.a.com", "*.*.a.com", "y.a.com", "*.b.com", "*.c.com"] {
            assert!(!get(absent), "{absent}");
        }
    }

    /// The seed's own unit-test table (`host_lookup.test.js`), with matching now
    /// case-insensitive.
    #[test]
    fn seed_lookup_table() {
        let t = table(&[
            "payments.718it.biz",
            "payments.**",
            "**.exmaple.com",
            "stan.test.vm42.com",
            "test.vm42.com",
            "*.test.vm42.com",
            "info.*.users.718it.biz",
            "test.*.*.718it.net",
            "test1.exmaple.com",
            "*.exmaple.com",
            "info.**",
            "718it.biz",
        ]);
        let rows: &[(&str, Option<&str>)] = &[
            ("payments.718it.biz", Some("payments.718it.biz")),
            ("sd.blah.test.vm42.com", None),
            ("payments.test.com", Some("payments.**")),
            ("test.sample.other.exmaple.com", Some("**.exmaple.com")),
            ("stan.test.vm42.com", Some("stan.test.vm42.com")),
            ("test.vm42.com", Some("test.vm42.com")),
            ("blah.test.vm42.com", Some("*.test.vm42.com")),
            ("payments.example.com", Some("payments.**")),
            ("info.wma.users.718it.biz", Some("info.*.users.718it.biz")),
            ("infof.users.718it.biz", None),
            ("blah.biz", None),
            ("test.1.2.718it.net", Some("test.*.*.718it.net")),
            ("test1.exmaple.com", Some("test1.exmaple.com")),
            ("other.exmaple.com", Some("*.exmaple.com")),
            ("info.payments.example.com", Some("info.**")),
            ("718it.biz", Some("718it.biz")),
            ("localhost", None),
            ("", None),
            // The seed was case-sensitive and missed this one.
            ("PAYMENTS.718it.biz", Some("payments.718it.biz")),
        ];
        for (name, want) in rows {
            assert_eq!(find(&t, name).as_deref(), *want, "lookup {name:?}");
        }
    }

    /// Every case where the seed's greedy walk let a literal node shadow a wildcard.
    #[test]
    fn literal_nodes_never_shadow_wildcards() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["*.example.com", "a.b.example.com"], "b.example.com", "*.example.com"),
            (&["**.example.com", "deep.x.example.com"], "x.example.com", "**.example.com"),
            (&["api.*.example.com", "v1.example.com"], "api.v1.example.com", "api.*.example.com"),
        ];
        for (patterns, name, want) in cases {
            assert_eq!(find(&table(patterns), name).as_deref(), Some(*want), "{patterns:?} {name}");
        }
    }

    #[test]
    fn seed_priority_cases_hold() {
        let t = table(&["*.example.com", "**.example.com"]);
        assert_eq!(find(&t, "a.example.com").as_deref(), Some("*.example.com"));
        assert_eq!(find(&t, "a.b.example.com").as_deref(), Some("**.example.com"));
        let t = table(&["app.example.com", "**.example.com"]);
        assert_eq!(find(&t, "x.app.example.com").as_deref(), Some("**.example.com"));
        let t = table(&["*.example.com", "app.example.com"]);
        assert_eq!(find(&t, "x.app.example.com"), None);
        assert_eq!(find(&t, "example.com"), None);
        let t = table(&["**"]);
        assert_eq!(find(&t, "anything.at.all").as_deref(), Some("**"));
        assert_eq!(find(&t, "localhost").as_deref(), Some("**"));
    }

    #[test]
    fn more_specific_double_wildcard_wins() {
        let t = table(&["**.x", "**.**.x"]);
        assert_eq!(find(&t, "a.x").as_deref(), Some("**.x"));
        assert_eq!(find(&t, "a.b.x").as_deref(), Some("**.**.x"));
    }

    #[test]
    fn insert_replaces_equal_pattern() {
        let mut t = HostTable::new();
        assert_eq!(t.insert(HostPattern::parse("a.example").unwrap(), 1), None);
        assert_eq!(t.insert(HostPattern::parse("A.example.").unwrap(), 2), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup("a.example").map(|(_, v)| *v), Some(2));
    }

    #[test]
    fn pathological_double_wildcards_finish() {
        let t = table(&["**.**.**.**.**.**.**.**.**.**.nomatch"]);
        let name = vec!["a"; 120].join(".");
        assert_eq!(find(&t, &name), None);
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*", "**"]), 1..5).prop_map(|l| l.join("."))
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 1..7).prop_map(|l| l.join("."))
    }

    use super::reference::best_match as reference;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn table_agrees_with_brute_force(
            patterns in prop::collection::vec(pattern_strategy(), 0..24),
            names in prop::collection::vec(name_strategy(), 1..16),
        ) {
            let patterns: Vec<HostPattern> = patterns.iter().map(|p| HostPattern::parse(p).unwrap()).collect();
            let t: HostTable<()> = patterns.iter().cloned().map(|p| (p, ())).collect();
            for name in &names {
                let want = reference(&patterns, name);
                let got = t.lookup(name).map(|(p, _)| p.to_string());
                prop_assert_eq!(got.as_ref(), want.as_ref(), "name {}", name);
                if let Some(p) = &got {
                    prop_assert!(HostPattern::parse(p).unwrap().matches(&Hostname::parse(name).unwrap()));
                }
            }
        }
    }
}
