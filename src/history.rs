//! The dashboards' charts over time: a bounded history of samples, one a second, and its
//! JSON form (`/api/job/history`).
//!
//! Guarantees:
//! - Memory is fixed by the capacity ([`HISTORY_POINTS`], 15 minutes at one point a
//!   second): a ring buffer that drops its oldest point when full.
//! - The JSON is column-oriented, as charting libraries take it: one array of times
//!   (`t_ms`, milliseconds since the epoch) and, per series, one array of the same length,
//!   with `null` where a value was unknown at that second (a gap, not a zero).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Points kept: 15 minutes at one a second.
pub const HISTORY_POINTS: usize = 900;

/// One sample: when, and the value of each named series then.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Point {
    /// Milliseconds since the epoch.
    pub t_ms: u64,
    /// Series name and value (`None`: unknown then).
    pub values: Vec<(&'static str, Option<f64>)>,
    /// Per-partition series (the lag of each input partition), by partition.
    pub partitions: Vec<(i32, Option<f64>)>,
}

/// The last [`HISTORY_POINTS`] points (or another capacity), oldest first.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    points: Mutex<VecDeque<Point>>,
}

impl Default for History {
    fn default() -> Self {
        History::new(HISTORY_POINTS)
    }
}

impl History {
    pub fn new(capacity: usize) -> Self {
        History {
            capacity: capacity.max(1),
            points: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
        }
    }

    /// Adds a point, dropping the oldest one when full.
    pub fn push(&self, point: Point) {
        if let Ok(mut points) = self.points.lock() {
            if points.len() == self.capacity {
                points.pop_front();
            }
            points.push_back(point);
        }
    }

    /// How many points are kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.lock().map_or(0, |p| p.len())
    }

    /// The history as columns (see the module doc).
    pub fn columns(&self) -> Columns {
        let points: Vec<Point> = self
            .points
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        let mut series: BTreeMap<&'static str, Vec<Option<f64>>> = BTreeMap::new();
        let mut partitions: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
        for (i, point) in points.iter().enumerate() {
            for &(name, value) in &point.values {
                series
                    .entry(name)
                    .or_insert_with(|| vec![None; i])
                    .push(value);
            }
            for &(partition, value) in &point.partitions {
                partitions
                    .entry(partition.to_string())
                    .or_insert_with(|| vec![None; i])
                    .push(value);
            }
            // A series missing from this point (a partition no longer owned) gets a gap.
            for column in series.values_mut().chain(partitions.values_mut()) {
                column.resize(i + 1, None);
            }
        }
        Columns {
            interval_seconds: 1,
            capacity: self.capacity,
            t_ms: points.iter().map(|p| p.t_ms).collect(),
            series,
            partition_lag: partitions,
        }
    }
}

/// `/api/job/history`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Columns {
    pub interval_seconds: u32,
    /// Most points kept.
    pub capacity: usize,
    pub t_ms: Vec<u64>,
    pub series: BTreeMap<&'static str, Vec<Option<f64>>>,
    /// The lag of each input partition (pipeline only; empty otherwise).
    pub partition_lag: BTreeMap<String, Vec<Option<f64>>>,
}

/// A rate from two samples of a counter `seconds` apart.
pub fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    now.saturating_sub(before) as f64 / seconds.max(1e-3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_ms: u64, value: f64, partitions: &[(i32, f64)]) -> Point {
        Point {
            t_ms,
            values: vec![("records_in_per_second", Some(value))],
            partitions: partitions.iter().map(|&(p, v)| (p, Some(v))).collect(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_points_up_to_its_capacity() {
        let history = History::new(3);
        for i in 0..5u64 {
            history.push(point(i * 1000, i as f64, &[]));
        }
        assert_eq!(history.len(), 3);
        let columns = history.columns();
        assert_eq!(columns.t_ms, [2000, 3000, 4000]);
        assert_eq!(
            columns.series["records_in_per_second"],
            [Some(2.0), Some(3.0), Some(4.0)]
        );
    }

    #[test]
    fn series_that_come_and_go_have_gaps_and_every_column_has_the_times_length() {
        let history = History::default();
        history.push(point(1000, 1.0, &[(0, 5.0)]));
        history.push(point(2000, 2.0, &[(0, 4.0), (1, 9.0)]));
        history.push(point(3000, 3.0, &[(1, 8.0)]));
        let columns = history.columns();
        assert_eq!(columns.partition_lag["0"], [Some(5.0), Some(4.0), None]);
        assert_eq!(columns.partition_lag["1"], [None, Some(9.0), Some(8.0)]);
        let json = serde_json::to_value(&columns).unwrap();
        assert_eq!(json["t_ms"].as_array().unwrap().len(), 3);
        assert_eq!(json["partition_lag"]["0"][2], serde_json::Value::Null);
        assert_eq!(json["capacity"], HISTORY_POINTS);
    }

    #[test]
    fn a_rate_never_goes_negative_or_divides_by_zero() {
        assert_eq!(rate(150, 100, 0.5), 100.0);
        assert_eq!(rate(100, 150, 1.0), 0.0);
        assert!(rate(1, 0, 0.0).is_finite());
    }
}
