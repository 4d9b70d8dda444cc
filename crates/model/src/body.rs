//! A JSON request body (the API's, and the command line's, which speaks the same fields)
//! and the reading of its fields. Each field at fault is one [`FieldError`] naming it, so a
//! record's constructor can report every fault at once.

use std::fmt;

use serde_json::{Map, Value};

/// A request body: a JSON object.
pub type Body = Map<String, Value>;

/// Why a field of a record was refused; names the field at fault. Its text names the field
/// too and has no final full stop (the API adds one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// A required field is absent.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field is present but its value is not acceptable.
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// The field at fault, with the seed's spelling.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A field is refused, for the reason `message` gives (it names the field).
    #[error("{message}")]
    Refused {
        /// The field at fault, with the seed's spelling.
        field: &'static str,
        /// What is wrong, as a sentence that names the field.
        message: String,
    },
}

impl FieldError {
    /// The field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Missing(field) | Self::Invalid { field, .. } | Self::Refused { field, .. } => field,
        }
    }

    /// `field` is present, but `reason` says what is wrong with its value.
    pub fn invalid(field: &'static str, reason: impl fmt::Display) -> Self {
        Self::Invalid { field, reason: reason.to_string() }
    }

    /// `field` is refused; `message` is a sentence that names it.
    pub fn refused(field: &'static str, message: impl Into<String>) -> Self {
        Self::Refused { field, message: message.into() }
    }
}

/// A string field; `None` if absent or null; an error naming the field if not a string.
pub fn string(body: &Body, key: &'static str, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::refused(key, format!("{key} is not string type")));
            None
        }
    }
}

/// A string field that must be given.
pub fn required(body: &Body, key: &'static str, errors: &mut Vec<FieldError>) -> Option<String> {
    let value = string(body, key, errors);
    if value.is_none() && !errors.iter().any(|e| e.field() == key) {
        errors.push(FieldError::Missing(key));
    }
    value
}

/// A boolean, also as the seed's strings `"true"`/`"false"`.
pub fn flag(body: &Body, key: &'static str, errors: &mut Vec<FieldError>) -> Option<bool> {
    match body.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s == "true" => Some(true),
        Some(Value::String(s)) if s == "false" => Some(false),
        Some(_) => {
            errors.push(FieldError::refused(key, format!("{key} is not boolean type")));
            None
        }
    }
}

/// A whole number in `range`, as a number or a numeric string; `what` ends the refusal
/// ("`key` must be `what`").
pub fn whole_number(
    body: &Body,
    key: &'static str,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
    errors: &mut Vec<FieldError>,
) -> Option<u64> {
    let parsed = match body.get(key) {
        None | Some(Value::Null) => return None,
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match parsed {
        Some(n) if range.contains(&n) => Some(n),
        _ => {
            errors.push(FieldError::refused(key, format!("{key} must be {what}")));
            None
        }
    }
}

/// A port: a number or numeric string, 1–65535.
pub fn port(body: &Body, key: &'static str, errors: &mut Vec<FieldError>) -> Option<u16> {
    whole_number(body, key, 1..=65535, "a whole number from 1 to 65535", errors).map(|p| p as u16)
}
