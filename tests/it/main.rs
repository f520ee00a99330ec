//! TeachBack's integration tests, compiled into one binary.
//!
//! PostgreSQL tests read `TEACHBACK_TEST_POSTGRES_URL`; when it is unset they are skipped and
//! one line on stderr says so. `.ci/run` always sets it.

mod http_catalog;
mod http_users;
mod process;
mod projection_runner;
mod store_contract;
mod support;
