//! The seed's records beyond hosts: the bookkeeping fields every record carries, password
//! hashes (users', basic auth's), and whose an API token is. No I/O: the caller supplies the
//! clock, and runs the (deliberately slow) password functions where blocking is fine.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};

use crate::Fields;

/// The seed's bookkeeping on a record: who made it and when, who changed it last and when
/// (milliseconds since the epoch; `updated_by` is `__NONE__` until someone does). Every
/// record's stamps are made, changed, read and written here; serialized, they are the API's
/// form (times as numbers).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Bookkeeping))]
pub struct Stamps {
    /// Who created the record.
    pub created_by: String,
    /// When it was created.
    pub created_on: i64,
    /// Who last changed it (`__NONE__` if nobody has).
    pub updated_by: String,
    /// When it was last changed.
    pub updated_on: i64,
}

/// The stored field names of [`Stamps`].
pub const STAMP_FIELDS: [&str; 4] = ["created_by", "created_on", "updated_by", "updated_on"];

impl Stamps {
    /// A record made by `by` at `now_ms`.
    pub fn new(by: &str, now_ms: i64) -> Self {
        Self { created_by: by.to_owned(), created_on: now_ms, updated_by: "__NONE__".to_owned(), updated_on: now_ms }
    }

    /// Notes a change by `by` at `now_ms`.
    pub fn touch(&mut self, by: &str, now_ms: i64) {
        self.updated_by = by.to_owned();
        self.updated_on = now_ms;
    }

    /// The stamps a stored record carries (absent ones read as nobody, at 0; a seed's times
    /// may be written as decimals).
    pub fn read(fields: &Fields) -> Self {
        let time = |name: &str| fields.get(name).and_then(|v| v.trim().parse::<f64>().ok()).map_or(0, |v| v as i64);
        Self {
            created_by: fields.get("created_by").cloned().unwrap_or_default(),
            created_on: time("created_on"),
            updated_by: fields.get("updated_by").cloned().unwrap_or_else(|| "__NONE__".to_owned()),
            updated_on: time("updated_on"),
        }
    }

    /// The stored fields.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, String)> + use<> {
        [("created_by", self.created_by.clone()), ("created_on", self.created_on.to_string())]
            .into_iter()
            .chain([("updated_by", self.updated_by.clone()), ("updated_on", self.updated_on.to_string())])
    }
}

/// The fields of a stored record other than `known` ones and the stamps: what a typed
/// record keeps as they are, so a record written by a newer version (or by hand) loses
/// nothing when this one writes it back.
pub fn other_fields(fields: &Fields, known: &[&str]) -> Fields {
    let known = |k: &str| known.contains(&k) || STAMP_FIELDS.contains(&k);
    fields.iter().filter(|(k, _)| !known(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A typed record's stored form: its `other` fields, then its own `known` ones and its
/// stamps over them.
pub fn stored_fields<'a>(
    other: &Fields,
    known: impl IntoIterator<Item = (&'a str, String)>,
    stamps: &Stamps,
) -> Fields {
    let mut fields = other.clone();
    fields.extend(known.into_iter().map(|(k, v)| (k.to_owned(), v)));
    fields.extend(stamps.fields().map(|(k, v)| (k.to_owned(), v)));
    fields
}

/// A new record: `fields` plus the seed's bookkeeping ([`Stamps::new`]).
pub fn new_record<'a>(created_by: &str, now_ms: u64, fields: impl IntoIterator<Item = (&'a str, String)>) -> Fields {
    let stamps = Stamps::new(created_by, now_ms as i64);
    let mut record: Fields = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    record.extend(stamps.fields().map(|(k, v)| (k.to_owned(), v)));
    record
}

/// Hashes a password with Argon2id. Slow on purpose: not on an async task's thread.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string())
}

/// The most memory (KiB) an Argon2 hash Portico verifies may ask for: 64 MiB (Portico's own
/// hashes use 19 MiB).
pub const ARGON2_MAX_MEMORY_KIB: u32 = 64 * 1024;
/// The most passes an Argon2 hash may ask for.
pub const ARGON2_MAX_PASSES: u32 = 10;
/// The most work (memory in KiB × passes) an Argon2 hash may ask for: about three times
/// Portico's own (19 MiB × 2), some tens of milliseconds.
pub const ARGON2_MAX_WORK: u64 = 128 * 1024;
/// The most lanes an Argon2 hash may ask for.
pub const ARGON2_MAX_LANES: u32 = 8;
/// The highest bcrypt cost accepted (the seed's bcryptjs used 10; 12 takes about 0.25 s).
pub const BCRYPT_MAX_COST: u32 = 12;

/// Why a password hash given to Portico (a basic-auth user's, a seed's) is refused: not an
/// Argon2 PHC string or a bcrypt hash, or costlier to check than the bounds above. A hash
/// that costs a gigabyte or seconds to check would let one unauthenticated request do so.
pub fn hash_problem(hash: &str) -> Option<String> {
    if let Some(rest) = ["$2a$", "$2b$", "$2y$"].iter().find_map(|p| hash.strip_prefix(p)) {
        let cost = rest.get(..2).and_then(|c| c.parse::<u32>().ok());
        return match cost {
            Some(cost) if (4..=BCRYPT_MAX_COST).contains(&cost) && rest.as_bytes().get(2) == Some(&b'$') => None,
            Some(cost) if cost > BCRYPT_MAX_COST => Some(format!("bcrypt cost {cost} is over {BCRYPT_MAX_COST}")),
            _ => Some("is not a valid bcrypt hash".to_owned()),
        };
    }
    if !hash.starts_with("$argon2") {
        return Some("is not an Argon2 or bcrypt hash".to_owned());
    }
    let Ok(parsed) = PasswordHash::new(hash) else { return Some("is not a valid Argon2 hash".to_owned()) };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return Some("has invalid Argon2 parameters".to_owned());
    };
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if m > ARGON2_MAX_MEMORY_KIB || t > ARGON2_MAX_PASSES || p > ARGON2_MAX_LANES {
        return Some(format!(
            "Argon2 m={m},t={t},p={p} is over the bounds m={ARGON2_MAX_MEMORY_KIB},t={ARGON2_MAX_PASSES},p={ARGON2_MAX_LANES}"
        ));
    }
    if u64::from(m) * u64::from(t) > ARGON2_MAX_WORK {
        return Some(format!("Argon2 m={m} with t={t} is over the work bound m×t={ARGON2_MAX_WORK}"));
    }
    None
}

/// Whether `password` matches `hash` (an Argon2 PHC string, or a seed bcrypt hash), and
/// whether the hash should be replaced by a fresh Argon2id one (bcrypt: yes). Slow on purpose,
/// within bounds: a hash over them ([`hash_problem`]) never matches and costs nothing.
pub fn verify_password(password: &str, hash: &str) -> (bool, bool) {
    if hash_problem(hash).is_some() {
        return (false, false);
    }
    if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
        let ok = bcrypt::verify(password.as_bytes(), hash).unwrap_or(false);
        return (ok, ok);
    }
    let ok = PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false);
    (ok, false)
}

/// Whether an API token record (sessions too) belongs to `username`.
pub fn token_of(token: &Fields, username: &str) -> bool {
    token.get("created_by").is_some_and(|u| u == username)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_costlier_than_the_bounds_are_refused_and_never_checked() {
        let own = hash_password("right password").unwrap();
        assert_eq!(hash_problem(&own), None, "Portico's own hashes are within bounds");
        let bcrypt10 = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";
        assert_eq!(hash_problem(bcrypt10), None);
        for (hash, what) in [
            ("$argon2id$v=19$m=1048576,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "1 GiB"),
            ("$argon2id$v=19$m=19456,t=300000,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "300,000 passes"),
            ("$argon2id$v=19$m=65536,t=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "64 MiB × 8"),
            ("$2b$16$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", "bcrypt 16"),
            ("plain", "not a hash"),
            ("$2b$xx$abc", "not bcrypt"),
        ] {
            assert!(hash_problem(hash).is_some(), "{what}");
            assert_eq!(verify_password("x", hash), (false, false), "{what}");
        }
        // A cheap hash over one bound is not checked at all: its right password fails too.
        let params = argon2::Params::new(8, ARGON2_MAX_PASSES + 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let over = argon.hash_password(b"right password").unwrap().to_string();
        assert!(hash_problem(&over).is_some());
        assert_eq!(verify_password("right password", &over), (false, false));
    }

    #[test]
    fn a_change_stamps_the_update_and_keeps_the_creation() {
        let seed: Fields = [("created_by", "admin"), ("created_on", "1735689600000.5"), ("name", "x")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let mut stamps = Stamps::read(&seed);
        stamps.touch("bob", 2000);
        assert_eq!(
            (stamps.created_by.as_str(), stamps.created_on, stamps.updated_by.as_str(), stamps.updated_on),
            ("admin", 1_735_689_600_000, "bob", 2000),
            "a seed's decimal time is read"
        );
        let written: Fields = stamps.fields().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!((written["updated_by"].as_str(), written["updated_on"].as_str()), ("bob", "2000"));
        assert_eq!(
            Stamps::read(&Fields::new()),
            Stamps { created_by: String::new(), created_on: 0, updated_by: "__NONE__".into(), updated_on: 0 }
        );
    }
}
