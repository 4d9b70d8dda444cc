//! The certificate JSON (lua-resty-auto-ssl's `<name>:latest`, read from a store any seed
//! node may have written): never a panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_certs::StoredCert;

fuzz_target!(|data: &[u8]| {
    if let Ok(stored) = StoredCert::from_json(data) {
        let _ = stored.load();
        let _ = stored.leaf_der();
    }
});
