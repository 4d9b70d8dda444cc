//! The lookup tree against the brute-force reference matcher: for any set of patterns and
//! any name, the same pattern wins.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_model::{HostPattern, HostTable, Hostname, reference};

/// Few distinct labels, so patterns and names overlap often.
const PATTERN_LABELS: [&str; 6] = ["a", "b", "c", "*", "**", "xn--bcher-kva"];
const NAME_LABELS: [&str; 5] = ["a", "b", "c", "d", "xn--bcher-kva"];

/// Bytes to labels: each byte picks one; 0xFF ends the item.
fn items<'a>(data: &[u8], alphabet: &[&'a str]) -> Vec<Vec<&'a str>> {
    data.split(|b| *b == 0xFF)
        .filter(|chunk| !chunk.is_empty())
        .map(|chunk| chunk.iter().take(12).map(|b| alphabet[*b as usize % alphabet.len()]).collect())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (patterns, names) = data.split_at(data.len() / 2);
    let patterns: Vec<HostPattern> = items(patterns, &PATTERN_LABELS)
        .iter()
        .take(64)
        .filter_map(|l| HostPattern::parse(&l.join(".")).ok())
        .collect();
    let table: HostTable<()> = patterns.iter().cloned().map(|p| (p, ())).collect();
    let mut unique = patterns.clone();
    unique.sort();
    unique.dedup();
    for labels in items(names, &NAME_LABELS).iter().take(16) {
        let Ok(name) = Hostname::parse(&labels.join(".")) else { continue };
        let got = table.lookup(name.as_str()).map(|(p, _)| p.to_string());
        assert_eq!(got, reference::best_match(&unique, name.as_str()), "name {name}, patterns {unique:?}");
    }
});
