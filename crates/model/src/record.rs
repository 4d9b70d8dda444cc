//! The seed's records beyond hosts: the bookkeeping fields every record carries, users with
//! their roles and passwords, and whose an API token is. No I/O: the caller supplies the
//! clock, and runs the (deliberately slow) password functions where blocking is fine.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};

use crate::Fields;

/// A new record: `fields` plus the seed's bookkeeping (`created_by`, `created_on`,
/// `updated_by = "__NONE__"`, `updated_on`), times in milliseconds since the epoch.
pub fn new_record<'a>(created_by: &str, now_ms: u64, fields: impl IntoIterator<Item = (&'a str, String)>) -> Fields {
    let now = now_ms.to_string();
    let bookkeeping = [
        ("created_by", created_by.to_owned()),
        ("created_on", now.clone()),
        ("updated_by", "__NONE__".to_owned()),
        ("updated_on", now),
    ];
    fields.into_iter().chain(bookkeeping).map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Notes an update of `fields` by `by` at `now_ms`.
pub fn touch(fields: &mut Fields, by: &str, now_ms: u64) {
    fields.insert("updated_by".to_owned(), by.to_owned());
    fields.insert("updated_on".to_owned(), now_ms.to_string());
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Manages everything, users and DNS providers included.
    Admin,
    /// Manages hosts and reads certificates.
    User,
}

impl Role {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    /// The role of a stored user. Seed users have no role field; the seed let every user do
    /// everything, so they stay admins.
    pub fn of(fields: &Fields) -> Self {
        match fields.get("role").map(String::as_str) {
            Some("user") => Role::User,
            _ => Role::Admin,
        }
    }
}

/// A new user record in the seed's layout, plus `role`.
pub fn user_fields(username: &str, password_hash: String, role: Role, created_by: &str, now_ms: u64) -> Fields {
    new_record(
        created_by,
        now_ms,
        [("username", username.to_owned()), ("password", password_hash), ("role", role.as_str().to_owned())],
    )
}

/// Hashes a password with Argon2id. Slow on purpose: not on an async task's thread.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string())
}

/// Whether `password` matches `hash` (an Argon2 PHC string, or a seed bcrypt hash), and
/// whether the hash should be replaced by a fresh Argon2id one (bcrypt: yes). Slow on purpose.
pub fn verify_password(password: &str, hash: &str) -> (bool, bool) {
    if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
        let ok = bcrypt::verify(password.as_bytes(), hash).unwrap_or(false);
        return (ok, ok);
    }
    let ok = PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false);
    (ok, false)
}

/// Why a new password is refused, if it is.
pub fn password_problem(password: &str) -> Option<&'static str> {
    if password.chars().count() < 8 {
        return Some("password is too short, min 8.");
    }
    if password.len() > 1024 {
        return Some("password is too long, max 1024.");
    }
    None
}

/// Whether an API token record (sessions too) belongs to `username`.
pub fn token_of(token: &Fields, username: &str) -> bool {
    token.get("created_by").is_some_and(|u| u == username)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_and_roles() {
        let mut user = user_fields("alice", "$argon2id$x".into(), Role::User, "admin", 1000);
        assert_eq!(user["created_by"], "admin");
        assert_eq!(user["updated_by"], "__NONE__");
        assert_eq!(user["created_on"], "1000");
        assert_eq!(Role::of(&user), Role::User);
        touch(&mut user, "bob", 2000);
        assert_eq!((user["updated_by"].as_str(), user["updated_on"].as_str()), ("bob", "2000"));
        user.remove("role");
        assert_eq!(Role::of(&user), Role::Admin, "seed users are admins");
    }
}
