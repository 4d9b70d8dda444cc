//! Store integration tests: the contract suite every backend passes, and a crash test.
#![allow(clippy::unwrap_used, missing_docs)]

mod contract;
mod crash;
mod embedded;
mod redis;
