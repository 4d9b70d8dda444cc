//! The configuration file, environment and flags: never a panic, and every refusal that is
//! about a key names it.
#![no_main]
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/portico/src/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first line may be one `--set key=value`; the rest is the file.
    let (first, file) = text.split_once('\n').unwrap_or(("", text));
    let overrides: Vec<(String, String)> = first
        .strip_prefix("--set ")
        .and_then(|kv| kv.split_once('='))
        .map(|(k, v)| vec![(k.to_owned(), v.to_owned())])
        .unwrap_or_default();
    match config::Config::from_text(file, "fuzz.toml", std::iter::empty(), &overrides) {
        Ok(_) => {}
        Err(config::ConfigError::Key { message }) => {
            assert!(message.starts_with("unknown key ") || message.contains(':'), "{message}");
        }
        Err(config::ConfigError::Value { key, .. }) => assert!(!key.is_empty()),
        Err(_) => {}
    }
});
