//! A managed certificate's state, kept in the store (`Kind::Cert`, keyed by name) so that
//! every node sees the same backoff and the API can show it.

use portico_store::Fields;

/// What Portico knows about one name's certificate. Times are seconds since the epoch; 0 is
/// "never".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertState {
    /// The issuer of the current certificate (`acme`, `internal`), if there is one.
    pub issuer: String,
    /// Who issued it ([`crate::Issuer::id`]: the ACME directory URL, or `internal`); its
    /// renewal asks that one first.
    pub ca: String,
    /// The current certificate's notAfter.
    pub not_after: i64,
    /// When the current certificate was issued (0: unknown, as for certificates from before
    /// this field).
    pub issued: i64,
    /// The last issuance or renewal attempt.
    pub last_attempt: i64,
    /// When the next attempt is due (renewal time, or the end of a failure backoff).
    pub next_attempt: i64,
    /// Consecutive failures (0 after a success).
    pub failures: u32,
    /// The last failure's ACME problem type, if the CA sent one.
    pub last_error_type: String,
    /// The last failure, empty after a success.
    pub last_error: String,
    /// When the CA's renewal information (ARI) was last asked for.
    pub ari_checked: i64,
    /// Where the issuance under way is (`planned`, `records published`, `waiting for DNS`,
    /// `validating`, …), `issued` after a success, `failed` after a failure; empty before
    /// the first attempt.
    pub step: String,
    /// After a failure, the step it failed at.
    pub failed_step: String,
    /// Whether the operator was told that its renewal is failing (and not yet that it is
    /// over): see [`CertState::renewal_failing`].
    pub alerted: bool,
    /// What happened to the certificate, oldest first, the last [`HISTORY_KEPT`]: issued,
    /// renewed, the first failure of a run of them, uploaded, taken on, an expiry alert.
    pub history: Vec<CertEvent>,
}

/// Certificates that live this long or less (seconds) are short-lived, as Let's Encrypt's
/// six-day ones: renewed at half their life at the latest, retried sooner after a failure,
/// and alerted on at half their life.
pub const SHORT_LIVED: i64 = 10 * 86400;

/// How many events a certificate's history keeps.
pub const HISTORY_KEPT: usize = 20;

/// One event of a certificate's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertEvent {
    /// When, seconds since the epoch.
    pub at: i64,
    /// What, in a few words: `issued by acme`, `renewed by internal`, `failed: …`.
    pub what: String,
}

impl CertState {
    /// Reads a stored record (missing or malformed fields read as 0 or empty).
    pub fn from_fields(fields: &Fields) -> Self {
        let number = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
        Self {
            issuer: text("issuer"),
            ca: text("ca"),
            not_after: number("not_after"),
            issued: number("issued"),
            last_attempt: number("last_attempt"),
            next_attempt: number("next_attempt"),
            failures: fields.get("failures").and_then(|v| v.parse().ok()).unwrap_or(0),
            last_error_type: text("last_error_type"),
            last_error: text("last_error"),
            ari_checked: number("ari_checked"),
            step: text("step"),
            alerted: fields.get("alerted").is_some_and(|v| v == "1"),
            failed_step: text("failed_step"),
            history: fields.get("history").and_then(|h| serde_json::from_str(h).ok()).unwrap_or_default(),
        }
    }

    /// Adds `what` at `at` to the history, dropping the oldest beyond [`HISTORY_KEPT`].
    pub fn note(&mut self, at: i64, what: impl Into<String>) {
        self.history.push(CertEvent { at, what: what.into() });
        let extra = self.history.len().saturating_sub(HISTORY_KEPT);
        self.history.drain(..extra);
    }

    /// The record to store.
    pub fn to_fields(&self) -> Fields {
        [
            ("issuer", self.issuer.clone()),
            ("ca", self.ca.clone()),
            ("not_after", self.not_after.to_string()),
            ("issued", self.issued.to_string()),
            ("last_attempt", self.last_attempt.to_string()),
            ("next_attempt", self.next_attempt.to_string()),
            ("failures", self.failures.to_string()),
            ("last_error_type", self.last_error_type.clone()),
            ("last_error", self.last_error.clone()),
            ("ari_checked", self.ari_checked.to_string()),
            ("step", self.step.clone()),
            ("alerted", if self.alerted { "1" } else { "0" }.to_owned()),
            ("failed_step", self.failed_step.clone()),
            ("history", serde_json::to_string(&self.history).unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Whether, at `now`, the certificate has a third of its life left or less (half, for a
    /// [short-lived](SHORT_LIVED) one) and is not being renewed: its renewals keep failing,
    /// or it was uploaded (Portico never renews those).
    pub fn renewal_failing(&self, now: i64) -> bool {
        let lifetime = (self.not_after - self.issued).max(0);
        let alert_from = self.not_after - if lifetime <= SHORT_LIVED { lifetime / 2 } else { lifetime / 3 };
        self.not_after > 0 && now >= alert_from && (self.failures > 0 || self.issuer == crate::upload::UPLOADED)
    }

    /// Whether a failure backoff is running at `now`.
    pub fn backing_off(&self, now: i64) -> bool {
        self.failures > 0 && now < self.next_attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_garbage_as_defaults() {
        let state = CertState {
            issuer: "acme".into(),
            ca: "https://acme.example/dir".into(),
            not_after: 10,
            issued: 4,
            last_attempt: 5,
            next_attempt: 7,
            failures: 2,
            last_error_type: "urn:ietf:params:acme:error:connection".into(),
            last_error: "refused".into(),
            ari_checked: 3,
            step: "failed".into(),
            failed_step: "validating".into(),
            alerted: true,
            history: vec![CertEvent { at: 4, what: "issued by acme".into() }],
        };
        assert_eq!(CertState::from_fields(&state.to_fields()), state);
        let mut noted = state.clone();
        for at in 0..30 {
            noted.note(at, format!("event {at}"));
        }
        assert_eq!(noted.history.len(), HISTORY_KEPT, "the oldest go");
        assert_eq!(noted.history[HISTORY_KEPT - 1], CertEvent { at: 29, what: "event 29".into() });
        assert!(state.backing_off(6));
        assert!(!state.backing_off(7));
        // A 90-day certificate: a third of its life is left from day 60.
        const DAY: i64 = 86400;
        let long = CertState { issued: 0, not_after: 90 * DAY, ..state.clone() };
        assert!(!long.renewal_failing(60 * DAY - 1) && long.renewal_failing(60 * DAY));
        let renewing = CertState { failures: 0, ..long.clone() };
        assert!(!renewing.renewal_failing(89 * DAY), "not failing while renewals work");
        let uploaded = CertState { issuer: crate::upload::UPLOADED.into(), ..renewing.clone() };
        assert!(!uploaded.renewal_failing(60 * DAY - 1) && uploaded.renewal_failing(60 * DAY), "never renewed");
        // A six-day certificate: from half its life.
        let short = CertState { issued: 0, not_after: 6 * DAY, ..state.clone() };
        assert!(!short.renewal_failing(3 * DAY - 1) && short.renewal_failing(3 * DAY));
        let garbage: Fields = [("not_after".to_owned(), "soon".to_owned())].into_iter().collect();
        assert_eq!(CertState::from_fields(&garbage), CertState::default());
    }
}
