#![warn(missing_docs)]
//! streamkit: develop, test and load-test streaming pipelines on Kafka.
//!
//! A Rust take on the website-visit pipeline of "Apache Beam Local Development with
//! Python – Part 3 Flink Runner". The crate ships two programs, `datagen` and `pipeline`
//! (see the README), and a small library for writing jobs of your own:
//! - [`pipeline::job`]: the [`Job`](pipeline::job::Job) trait a job implements (one
//!   record in; outputs, a drop or a dead letter out; event time and saved state), and
//!   [`WindowedJob`](pipeline::job::WindowedJob) for event-time windows;
//! - [`pipeline::main_with`] and [`pipeline::Program`]: a job's `main`, with every
//!   `pipeline` flag (Kafka or files, both guarantees, groups, the dashboard and
//!   `/metrics`, `-X`);
//! - [`testing::TestDriver`]: a job in memory, with no broker, deterministic;
//! - [`schema`]: the [`EventLog`] record every tool shares, and its exact wire format;
//! - [`pipeline::dead_letter`]: the dead letters' header names.
//!
//! Everything else is the programs' own, and private.

#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
pub(crate) mod browse;
pub(crate) mod cli;
pub mod datagen;
pub(crate) mod error;
pub(crate) mod generator;
pub(crate) mod geo;
pub(crate) mod history;
pub(crate) mod kafka;
pub(crate) mod latency;
pub(crate) mod logging;
pub(crate) mod pacing;
pub(crate) mod paths;
pub mod pipeline;
pub(crate) mod progress;
pub mod schema;
pub(crate) mod shutdown;
pub mod testing;
pub(crate) mod transform;
pub(crate) mod web;
pub(crate) mod windows;

pub use schema::EventLog;
