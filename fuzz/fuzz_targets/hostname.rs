//! Host names from anywhere (a `Host` header, an SNI, the API): normalising never panics, and
//! what comes out is a valid name that normalises to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_model::Hostname;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Hostname::from_authority(text);
    if let Ok(name) = Hostname::parse(text) {
        let again = Hostname::parse(name.as_str()).expect("a normalised name parses");
        assert_eq!(again, name, "normalising is idempotent");
        assert!(name.as_str().len() <= 253, "{name:?}");
        assert!(name.as_str().split('.').all(|l| !l.is_empty() && l.len() <= 63), "{name:?}");
        assert!(
            name.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
            "{name:?}"
        );
    }
});
