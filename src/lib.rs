//! streamkit: develop, test and load-test streaming pipelines on Kafka.
//!
//! A Rust take on the website-visit pipeline of "Apache Beam Local Development with
//! Python – Part 3 Flink Runner": [`schema::EventLog`] is the record every tool shares;
//! [`datagen`] generates events into files or Kafka. The binaries in `src/bin` only parse
//! flags, set up logging and signals, and call into these modules.

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
pub(crate) mod transform;
pub(crate) mod web;
pub(crate) mod windows;

pub use schema::EventLog;
