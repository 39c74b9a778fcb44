//! streamkit: develop, test and load-test streaming pipelines on Kafka.
//!
//! A Rust take on the website-visit pipeline of "Apache Beam Local Development with
//! Python – Part 3 Flink Runner": [`schema::EventLog`] is the record every tool shares;
//! [`datagen`] generates events into files or Kafka. The binaries in `src/bin` only parse
//! flags, set up logging and signals, and call into these modules.

pub mod browse;
pub mod cli;
pub mod datagen;
pub mod error;
pub mod generator;
pub mod geo;
pub mod history;
pub mod kafka;
pub mod latency;
pub mod logging;
pub mod pacing;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod schema;
pub mod shutdown;
pub mod transform;
pub mod web;
pub mod windows;

pub use error::{Error, Result};
pub use schema::EventLog;
