//! Host patterns: parsing never panics, a parsed pattern parses to itself, and a pattern
//! alone in a table matches exactly the names it says it matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_model::{HostPattern, HostTable, Hostname};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, name) = text.split_once('\n').unwrap_or((text, "a.example"));
    let Ok(pattern) = HostPattern::parse(pattern) else { return };
    assert_eq!(HostPattern::parse(pattern.as_str()).expect("parses again"), pattern);
    let Ok(name) = Hostname::parse(name) else { return };
    let table: HostTable<()> = [(pattern.clone(), ())].into_iter().collect();
    assert_eq!(table.lookup(name.as_str()).is_some(), pattern.matches(&name), "{pattern} vs {name}");
});
