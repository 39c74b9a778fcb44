//! The job's ends that are not the Kafka runner: files, and the embedded demo cluster.

pub(super) mod embedded;
pub(super) mod files;
