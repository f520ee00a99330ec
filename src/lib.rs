//! TeachBack: learn by teaching. The server and CLI crate.
//!
//! # Layout (in reading order)
//! - [`config`]: typed configuration from flags and `TEACHBACK_*` environment variables.
//! - [`db`]: connecting to SQLite or PostgreSQL, migrations, one query text for both.
//! - [`store`]: the event store: optimistic appends with group commit, reads, subscriptions.
//! - [`projection`]: the checkpointed projection runner and the SQL read models it maintains.
//! - [`auth`]: access tokens (JWT), device tokens, the signing secret.
//! - [`users`]: learners' commands: register a device, rename (with unique names).
//! - [`blob`]: audio blob storage (local filesystem, or S3 with the `s3` feature).
//! - [`catalog`]: the starter catalogue and publishing topics.
//! - [`live`]: live lectures: the actor per lecture, audio WAL, segmenting, the protocol.
//! - [`provider`]: OpenAI-compatible speech-to-text and chat clients (timeouts, retries, circuit
//!   breaker), and a fake server reproducing their wire formats for tests and benchmarks.
//! - [`grade`]: the LLM grader's prompt and output handling, and the built-in rubric grader.
//! - [`pipeline`]: transcription while the learner talks, then grading, streamed to the learner.
//! - [`rankings`]: the in-memory ranking boards, following the learning read model.
//! - [`analytics`]: the team's numbers, from the learning read model.
//! - [`audit`]: audit tools over the log (a learner's trail).
//! - [`replay`]: a lecture's timeline from the log, printed with its timing or served as a watch.
//! - [`lease`]: leadership among instances sharing PostgreSQL (advisory locks).
//! - [`limits`]: rate limits per client address and learner (shared through PostgreSQL).
//! - [`usage`]: daily quotas per learner and the spending guard, from the usage read model.
//! - [`vault`]: per-learner keys sealing personal fields and audio (erasure by destroying them).
//! - [`erasure`]: the right to erasure and audio retention.
//! - [`http`]: the HTTP API: routes, errors, extractors.
//! - [`app`]: wiring it all together, serving until shutdown.
//! - [`cli`]: the `teachback` command line.

pub mod analytics;
pub mod app;
pub mod audit;
pub mod auth;
pub mod blob;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod erasure;
pub mod error_reporting;
pub mod grade;
pub mod http;
pub mod lease;
pub mod limits;
pub mod live;
pub mod loadgen;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod projection;
pub mod provider;
pub mod rankings;
pub mod replay;
pub mod speak;
pub mod store;
pub mod usage;
pub mod users;
pub mod vault;
