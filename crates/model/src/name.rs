//! Host names and host patterns, and the one normalisation both go through.
//!
//! A name is normalised before anything else looks at it: ASCII lower case, one trailing dot
//! removed, international labels converted to A-labels (IDNA, UTS #46). After that every label
//! must be 1–63 octets of letters, digits, `-` and `_`, and the whole name at most 253 octets.
//! Patterns follow the same rules, except that a label may also be `*` or `**`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest name DNS allows, in octets, without the trailing dot.
pub const MAX_NAME_LEN: usize = 253;
/// The longest label DNS allows, in octets.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a host name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Nothing was given.
    #[error("host name is empty")]
    Empty,
    /// The name is longer than 253 octets once normalised.
    #[error("host name is longer than {MAX_NAME_LEN} octets")]
    TooLong,
    /// Two dots in a row, or a dot at the start.
    #[error("host name has an empty label")]
    EmptyLabel,
    /// One label is longer than 63 octets once normalised.
    #[error("host name has a label longer than {MAX_LABEL_LEN} octets")]
    LabelTooLong,
    /// A character outside letters, digits, `-` and `_`.
    #[error("host name contains {0:?}, which is not allowed")]
    InvalidChar(char),
    /// A `*` that is not a whole label (`a*.example.com`), or a wildcard in a plain name.
    #[error("a wildcard must be a whole label, `*` or `**`")]
    PartialWildcard,
    /// The port after the name is not a number from 0 to 65535.
    #[error("port is not a number from 0 to 65535")]
    InvalidPort,
    /// An international name that IDNA cannot convert to A-labels.
    #[error("international host name cannot be converted to ASCII")]
    Idna,
}

/// A normalised host name: what the proxy routes on and certificates are issued for.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(Box<str>);

impl Hostname {
    /// Normalises and validates a bare host name (no port).
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let text = normalise(input)?;
        for label in text.split('.') {
            if label.contains('*') {
                return Err(NameError::PartialWildcard);
            }
            check_label(label)?;
        }
        Ok(Self(text.into_boxed_str()))
    }

    /// Parses the host part of an HTTP authority (`Host` header or `:authority`), dropping the
    /// port. A bracketed IPv6 literal is refused: no host pattern can name one.
    pub fn from_authority(authority: &str) -> Result<Self, NameError> {
        if authority.starts_with('[') {
            return Err(NameError::InvalidChar('['));
        }
        let host = match authority.rsplit_once(':') {
            Some((host, port)) => {
                if port.is_empty() || port.len() > 5 || port.parse::<u16>().is_err() {
                    return Err(NameError::InvalidPort);
                }
                host
            }
            None => authority,
        };
        Self::parse(host)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for Hostname {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One label of a [`HostPattern`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternLabel<'a> {
    /// Matches exactly this label.
    Literal(&'a str),
    /// `*`: matches exactly one label.
    One,
    /// `**`: matches one or more labels.
    Many,
}

impl<'a> PatternLabel<'a> {
    fn from_text(label: &'a str) -> Self {
        match label {
            "*" => Self::One,
            "**" => Self::Many,
            literal => Self::Literal(literal),
        }
    }
}

/// A normalised host pattern such as `example.com`, `*.example.com`, `**.example.com`,
/// `api.*.example.com`, `payments.**` or `**`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern(std::sync::Arc<str>);

impl HostPattern {
    /// Normalises and validates a pattern.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let text = normalise(input)?;
        for label in text.split('.') {
            match label {
                "*" | "**" => {}
                _ if label.contains('*') => return Err(NameError::PartialWildcard),
                _ => check_label(label)?,
            }
        }
        Ok(Self(text.into()))
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pattern as shared text: a reference, not a copy (the proxy labels every request's
    /// metrics with it).
    pub fn shared(&self) -> std::sync::Arc<str> {
        self.0.clone()
    }

    /// The labels from left to right.
    pub fn labels(&self) -> impl DoubleEndedIterator<Item = PatternLabel<'_>> {
        self.0.split('.').map(PatternLabel::from_text)
    }

    /// Whether `name` matches this pattern on its own, regardless of other patterns.
    pub fn matches(&self, name: &Hostname) -> bool {
        let pattern: Vec<PatternLabel<'_>> = self.labels().collect();
        let labels: Vec<&str> = name.as_str().split('.').collect();
        matches_from(&pattern, &labels)
    }
}

/// Matching from the right, each `**` taking one or more labels.
fn matches_from(pattern: &[PatternLabel<'_>], labels: &[&str]) -> bool {
    match (pattern.split_last(), labels.split_last()) {
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((p, prest)), Some((l, lrest))) => match p {
            PatternLabel::Literal(text) => text == l && matches_from(prest, lrest),
            PatternLabel::One => matches_from(prest, lrest),
            PatternLabel::Many => (0..labels.len()).any(|keep| matches_from(prest, &labels[..keep])),
        },
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for HostPattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for HostPattern {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<HostPattern> for String {
    fn from(p: HostPattern) -> Self {
        p.0.as_ref().to_owned()
    }
}

impl From<Hostname> for HostPattern {
    fn from(name: Hostname) -> Self {
        Self(name.0.into())
    }
}

/// Lower case, one trailing dot removed, A-labels; checks the overall length.
fn normalise(input: &str) -> Result<String, NameError> {
    let mut text = if input.is_ascii() {
        input.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(input).map_err(|_| NameError::Idna)?
    };
    if text.ends_with('.') {
        text.pop();
    }
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    Ok(text)
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong);
    }
    match label.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')) {
        Some(c) => Err(NameError::InvalidChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        let cases = [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example.", "xn--bcher-kva.example"),
            ("under_score.example", "under_score.example"),
            ("localhost", "localhost"),
        ];
        for (input, want) in cases {
            assert_eq!(Hostname::parse(input).unwrap().as_str(), want, "{input}");
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        let cases = [
            ("", NameError::Empty),
            (".", NameError::Empty),
            ("a..b", NameError::EmptyLabel),
            (".a", NameError::EmptyLabel),
            ("a.b..", NameError::EmptyLabel),
            (long_label.as_str(), NameError::LabelTooLong),
            (long_name.as_str(), NameError::TooLong),
            ("exa mple.com", NameError::InvalidChar(' ')),
            ("a/b.com", NameError::InvalidChar('/')),
            ("*.example.com", NameError::PartialWildcard),
        ];
        for (input, want) in cases {
            assert_eq!(Hostname::parse(input).unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn label_and_name_limits_are_inclusive() {
        let label = "a".repeat(63);
        assert!(Hostname::parse(&label).is_ok());
        let name = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(name.len(), 253);
        assert!(Hostname::parse(&name).is_ok());
        assert!(Hostname::parse(&format!("{name}.")).is_ok());
    }

    #[test]
    fn authority_port_is_dropped() {
        assert_eq!(Hostname::from_authority("App.Example.Test:8080").unwrap().as_str(), "app.example.test");
        assert_eq!(Hostname::from_authority("example.test").unwrap().as_str(), "example.test");
        assert_eq!(Hostname::from_authority("example.test:").unwrap_err(), NameError::InvalidPort);
        assert_eq!(Hostname::from_authority("example.test:99999").unwrap_err(), NameError::InvalidPort);
        assert_eq!(Hostname::from_authority("example.test:x").unwrap_err(), NameError::InvalidPort);
        assert!(Hostname::from_authority("[::1]:80").is_err());
    }

    #[test]
    fn patterns_parse_in_any_position() {
        for p in ["example.com", "*.example.com", "**.example.com", "api.*.example.com", "payments.**", "**", "*"] {
            assert_eq!(HostPattern::parse(p).unwrap().as_str(), p);
        }
        assert_eq!(HostPattern::parse("*.BÜCHER.example.").unwrap().as_str(), "*.xn--bcher-kva.example");
        assert_eq!(HostPattern::parse("a*.example.com").unwrap_err(), NameError::PartialWildcard);
        assert_eq!(HostPattern::parse("***.example.com").unwrap_err(), NameError::PartialWildcard);
        assert_eq!(HostPattern::parse("*..com").unwrap_err(), NameError::EmptyLabel);
    }

    #[test]
    fn single_pattern_matching() {
        let m = |p: &str, n: &str| HostPattern::parse(p).unwrap().matches(&Hostname::parse(n).unwrap());
        assert!(m("*.example.com", "a.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(!m("*.example.com", "a.b.example.com"));
        assert!(m("**.example.com", "a.b.example.com"));
        assert!(!m("**.example.com", "example.com"));
        assert!(m("api.*.example.com", "api.v1.example.com"));
        assert!(m("payments.**", "payments.a.b"));
        assert!(!m("payments.**", "payments"));
        assert!(m("**", "localhost"));
    }
}
