//! TeachBack's integration tests, compiled into one binary.
//!
//! PostgreSQL tests read `TEACHBACK_TEST_POSTGRES_URL`; when it is unset they are skipped and
//! one line on stderr says so. `.ci/run` always sets it.
//!
//! The S3 blob store test (cargo feature `s3`) reads `TEACHBACK_TEST_S3_ENDPOINT` the same way;
//! `.ci/run` starts moto's S3 server and sets it too.
//!
//! The store contract runs against KurrentDB (cargo feature `kurrentdb`) when
//! `TEACHBACK_TEST_KURRENTDB_URL` names a server (`kurrentdb://127.0.0.1:2113?tls=false`);
//! otherwise one line on stderr says why it is skipped.

mod archive;
mod audit;
mod authz;
#[cfg(feature = "s3")]
mod blob_s3;
mod chain;
mod crash;
mod erasure;
mod error_reporting;
mod http_admin;
mod http_catalog;
mod http_users;
mod instances;
mod limits;
mod live;
mod live_support;
mod notify;
mod openapi;
mod pages;
mod pipeline;
mod process;
mod projection_runner;
mod replay;
mod rubric_eval;
mod store_contract;
mod support;
mod web;
