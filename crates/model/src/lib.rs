//! Portico's plain types and pure logic. Nothing here does I/O.
//!
//! - [`Hostname`]: a normalised DNS name (lower case, no port, no trailing dot, A-labels).
//! - [`HostPattern`]: a host pattern whose labels are literals, `*` (one label) or `**` (one or
//!   more labels), in any position.
//! - [`HostTable`]: the lookup tree that maps a name to the most specific matching pattern.
//! - [`Host`]: a proxied host as the API and the store see it, with the seed's field names.
//!   [`host_json`]: a new host or an update from the API's JSON, every bad field reported at once.
//! - [`Routes`]: the routing snapshot every part of a node shares.
//! - [`record`]: the seed's record bookkeeping and password hashes.
//! - [`user`]: users, their roles, and the rules for new users and passwords.
//! - [`body`]: reading a JSON request body's fields, each fault one [`FieldError`].
//! - [`behaviour`]: what a host does beside forwarding (redirect, static answer) and how its
//!   answers are dressed (header rules, HSTS, error pages).
//! - [`dns`]: DNS provider types and the zone rule.
//! - [`stream`]: a forwarded TCP port (NPM's streams).

pub mod access;
pub mod behaviour;
pub mod body;
pub mod dns;
mod host;
pub mod host_json;
pub mod host_view;
pub mod limiter;
mod name;
pub mod record;
pub mod report;
mod routes;
pub mod stream;
mod table;
pub mod upstream;
pub mod user;

pub use access::Access;
pub use behaviour::HostKind;
pub use body::FieldError;
pub use host::{Fields, Host, Target, is_secret_field, parse_port};
pub use name::{HostPattern, Hostname, NameError, PatternLabel};
pub use routes::{Rebuilt, Routes, RoutingState};
pub use table::HostTable;
#[cfg(feature = "reference-matcher")]
pub use table::reference;
pub use upstream::{Balance, CheckTiming, HealthCheck, Streak, Upstream};
