//! Users: who may use the API, with a role and a password hash, in the seed's record layout
//! (`username`, `password`, the bookkeeping stamps) plus `role`. The rules for a new user and a
//! new password live here, for the API and the command line alike; hashing is the caller's
//! to run where blocking is fine ([`crate::record::hash_password`]).

use crate::Fields;
use crate::body::{Body, FieldError, required, string};
use crate::record::{Stamps, other_fields, stored_fields};

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

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name, also the record's key.
    pub username: String,
    /// The password's hash (Argon2id, or a seed's bcrypt until its next login).
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
    /// Who made and last changed the record, and when.
    pub stamps: Stamps,
    /// Fields this version does not know, kept as they are.
    pub extra: Fields,
}

const USER_FIELDS: [&str; 3] = ["username", "password", "role"];

impl User {
    /// A new user, made by `created_by` at `now_ms`, whose password hashes to `password_hash`.
    pub fn new(new: NewUser, password_hash: String, created_by: &str, now_ms: i64) -> Self {
        Self {
            username: new.username,
            password_hash,
            role: new.role,
            stamps: Stamps::new(created_by, now_ms),
            extra: Fields::new(),
        }
    }

    /// A stored user record, keyed `key` (a seed's record may lack its own `username`).
    pub fn from_fields(key: &str, fields: &Fields) -> Self {
        Self {
            username: fields.get("username").cloned().unwrap_or_else(|| key.to_owned()),
            password_hash: fields.get("password").cloned().unwrap_or_default(),
            role: Role::of(fields),
            stamps: Stamps::read(fields),
            extra: other_fields(fields, &USER_FIELDS),
        }
    }

    /// The stored record.
    pub fn to_fields(&self) -> Fields {
        let known = [
            ("username", self.username.clone()),
            ("password", self.password_hash.clone()),
            ("role", self.role.as_str().to_owned()),
        ];
        stored_fields(&self.extra, known, &self.stamps)
    }

    /// Sets a new password (already hashed), changed by `by` at `now_ms`.
    pub fn set_password(&mut self, password_hash: String, by: &str, now_ms: i64) {
        self.password_hash = password_hash;
        self.stamps.touch(by, now_ms);
    }
}

/// A user to be made: checked, its password not hashed yet.
#[derive(Debug)]
pub struct NewUser {
    /// The name: 3 to 64 letters, digits, `.`, `_`, `-` or `@`.
    pub username: String,
    /// The password in clear (see [`password_problem`]).
    pub password: String,
    /// What the user may do.
    pub role: Role,
}

impl NewUser {
    /// A new user from its parts; each refused part is one error.
    pub fn new(username: String, password: String, role: Role) -> Result<Self, Vec<FieldError>> {
        let errors: Vec<FieldError> =
            [username_problem(&username), password_problem("password", &password)].into_iter().flatten().collect();
        if errors.is_empty() { Ok(Self { username, password, role }) } else { Err(errors) }
    }

    /// A new user from the API's `{username, password, role?}` (`role` is `user` unless
    /// `admin`); every bad field is reported.
    pub fn from_json(body: &Body) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let username = required(body, "username", &mut errors);
        let password = required(body, "password", &mut errors);
        let role = match string(body, "role", &mut errors).as_deref() {
            None | Some("user") => Role::User,
            Some("admin") => Role::Admin,
            Some(_) => {
                errors.push(FieldError::refused("role", "role must be \"admin\" or \"user\""));
                Role::User
            }
        };
        let (Some(username), Some(password)) = (username, password) else { return Err(errors) };
        match Self::new(username, password, role) {
            Ok(user) if errors.is_empty() => Ok(user),
            Ok(_) => Err(errors),
            Err(more) => Err(errors.into_iter().chain(more).collect()),
        }
    }
}

/// A password change from the API: `password`, and `current_password` when `current` (a
/// change of one's own password names the current one; `currentPassword`, the name earlier
/// versions documented, is read too).
#[derive(Debug)]
pub struct PasswordChange {
    /// The current password, as given (checked against the stored hash by the caller).
    pub current: Option<String>,
    /// The field the current password came in (what an error about it names).
    pub current_field: &'static str,
    /// The new password in clear.
    pub password: String,
}

impl PasswordChange {
    /// The change from the API's `{current_password?, password}`.
    pub fn from_json(body: &Body, current: bool) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let current_field = if body.contains_key("currentPassword") && !body.contains_key("current_password") {
            "currentPassword"
        } else {
            "current_password"
        };
        let given = current.then(|| required(body, current_field, &mut errors)).flatten();
        let password = required(body, "password", &mut errors);
        if let Some(problem) = password.as_deref().and_then(|p| password_problem("password", p)) {
            errors.push(problem);
        }
        match password {
            Some(password) if errors.is_empty() => Ok(Self { current: given, current_field, password }),
            _ => Err(errors),
        }
    }
}

/// Why a user name is refused, if it is.
fn username_problem(name: &str) -> Option<FieldError> {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    (!(3..=64).contains(&name.len()) || !valid_chars)
        .then(|| FieldError::refused("username", "username must be 3 to 64 letters, digits, '.', '_', '-' or '@'"))
}

/// Why a new password given as `field` is refused, if it is: under 8 characters or over
/// 1,024 bytes.
pub fn password_problem(field: &'static str, password: &str) -> Option<FieldError> {
    if password.chars().count() < 8 {
        return Some(FieldError::refused(field, "password is too short, min 8"));
    }
    if password.len() > 1024 {
        return Some(FieldError::refused(field, "password is too long, max 1024"));
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn body(value: Value) -> Body {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_new_user_reports_every_bad_field() {
        let errors =
            NewUser::from_json(&body(json!({"username": "a b", "password": "short", "role": "root"}))).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
        assert_eq!(fields, ["role", "username", "password"]);
        let errors = NewUser::from_json(&body(json!({"password": 5}))).unwrap_err();
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["username is required", "password is not string type"]
        );
        let ok = NewUser::from_json(&body(json!({"username": "ann@example", "password": "long enough"}))).unwrap();
        assert_eq!((ok.username.as_str(), ok.role), ("ann@example", Role::User));
    }

    #[test]
    fn a_user_round_trips_and_keeps_unknown_fields() {
        let new = NewUser::new("alice".into(), "long enough".into(), Role::User).unwrap();
        let mut user = User::new(new, "$argon2id$x".into(), "admin", 1000);
        user.extra.insert("theme".into(), "dark".into());
        let fields = user.to_fields();
        assert_eq!((fields["created_by"].as_str(), fields["updated_by"].as_str()), ("admin", "__NONE__"));
        assert_eq!(User::from_fields("alice", &fields), user);
        user.set_password("$argon2id$y".into(), "bob", 2000);
        assert_eq!((user.stamps.updated_by.as_str(), user.stamps.updated_on), ("bob", 2000));
        // A seed's user: no role (an admin), no username field.
        let seed: Fields = [("password", "$2b$10$x")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
        let seed = User::from_fields("root", &seed);
        assert_eq!((seed.username.as_str(), seed.role), ("root", Role::Admin));
    }

    #[test]
    fn a_password_change_names_the_current_one_when_asked() {
        let own = PasswordChange::from_json(&body(json!({"password": "new password"})), true).unwrap_err();
        assert_eq!(own.iter().map(FieldError::field).collect::<Vec<_>>(), ["current_password"]);
        let admin = PasswordChange::from_json(&body(json!({"password": "new password"})), false).unwrap();
        assert_eq!((admin.current, admin.password.as_str()), (None, "new password"));
        let short = PasswordChange::from_json(&body(json!({"password": "x"})), false).unwrap_err();
        assert_eq!(short[0].to_string(), "password is too short, min 8");
    }
}
