//! The seed's records beyond hosts: the bookkeeping fields every record carries, and users
//! with their roles. Plain data; the caller supplies the clock.

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
