//! `--report PATH`: a load test's report, as a self-contained HTML page and, beside it, a
//! JSON file with the same figures (`PATH` with the extension `.json`), for CI.
//!
//! Guarantees:
//! - The page loads nothing: its charts are inline SVG, drawn here, with no script.
//! - One point a second: the target and achieved rates, the delivery latency (p50, p99,
//!   max) and, with `--verify-topic`, the end-to-end latency and the arrivals. Memory stays
//!   bounded: past [`MAX_POINTS`] points, neighbours are merged and the interval doubles.
//! - Text from the run (the destination, the summary) is escaped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Summary;
use super::metrics::LiveCounts;
use super::verify::VerifyLive;
use crate::error::{Error, Result};
use crate::latency::{DeliveryLatency, LatencySummary};
use crate::pacing::Pace;

/// Most points a report keeps.
pub const MAX_POINTS: usize = 4_000;

/// One point of the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Point {
    /// Seconds since the start.
    pub t: f64,
    pub target_rate: Option<f64>,
    pub achieved_rate: f64,
    pub delivery_p50_ms: Option<f64>,
    pub delivery_p99_ms: Option<f64>,
    pub delivery_max_ms: Option<f64>,
    pub end_to_end_p50_ms: Option<f64>,
    pub end_to_end_p99_ms: Option<f64>,
    /// Events seen in the output so far (`--verify-topic`).
    pub arrived: Option<u64>,
    /// Output records of an event already seen, so far.
    pub repeated: Option<u64>,
}

/// Takes the report's points while the run goes.
pub(super) struct Recorder {
    started: Instant,
    interval: Duration,
    last: Instant,
    last_generated: u64,
    points: Vec<Point>,
}

impl Recorder {
    pub(super) fn new(started: Instant) -> Self {
        Recorder {
            started,
            interval: Duration::from_secs(1),
            last: started,
            last_generated: 0,
            points: Vec::new(),
        }
    }

    /// Takes a point if the interval has passed since the last one.
    pub(super) fn sample(
        &mut self,
        now: Instant,
        generated: u64,
        pace: &Pace,
        delivery: Option<&DeliveryLatency>,
        verify: Option<&VerifyLive>,
    ) {
        let span = now.saturating_duration_since(self.last);
        if span < self.interval {
            return;
        }
        let elapsed = now.saturating_duration_since(self.started);
        let delivery = delivery.map(DeliveryLatency::take_tick).unwrap_or_default();
        let end_to_end = verify.map(|v| v.to_arrival.take_tick()).unwrap_or_default();
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        self.points.push(Point {
            t: elapsed.as_secs_f64(),
            // The target in the middle of the span the achieved rate averages over.
            target_rate: target_rate(pace, elapsed.saturating_sub(span / 2)),
            achieved_rate: generated.saturating_sub(self.last_generated) as f64
                / span.as_secs_f64(),
            delivery_p50_ms: delivery.ms(|l| l.p50),
            delivery_p99_ms: delivery.ms(|l| l.p99),
            delivery_max_ms: delivery.ms(|l| l.max),
            end_to_end_p50_ms: end_to_end.ms(|l| l.p50),
            end_to_end_p99_ms: end_to_end.ms(|l| l.p99),
            arrived: verify.map(|v| load(&v.distinct)),
            repeated: verify.map(|v| load(&v.repeated)),
        });
        self.last = now;
        self.last_generated = generated;
        if self.points.len() >= MAX_POINTS {
            self.points = self.points.chunks(2).map(merge).collect();
            self.interval *= 2;
        }
    }

    #[cfg(test)]
    fn points(&self) -> &[Point] {
        &self.points
    }
}

/// A thread that takes the report's points, once a second, until [`Sampler::finish`].
pub(super) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Point>>>,
}

impl Sampler {
    pub(super) fn start(
        started: Instant,
        pace: Pace,
        live: LiveCounts,
        delivery: Option<Arc<DeliveryLatency>>,
        verify: Option<VerifyLive>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("report".into())
                .spawn(move || {
                    let mut recorder = Recorder::new(started);
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        recorder.sample(
                            Instant::now(),
                            live.generated.get(),
                            &pace,
                            delivery.as_deref(),
                            verify.as_ref(),
                        );
                    }
                    recorder.points
                })
                .ok()
        };
        if thread.is_none() {
            log::warn!("cannot start the report's thread: the report will have no points");
        }
        Sampler { stop, thread }
    }

    /// Stops sampling; the points taken.
    pub(super) fn finish(mut self) -> Vec<Point> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}

/// Two neighbouring points as one: rates averaged, latencies their worse, counts the later.
fn merge(pair: &[Point]) -> Point {
    let (a, b) = (pair[0], *pair.last().unwrap_or(&pair[0]));
    let worse = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let mean = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some((x + y) / 2.0),
        (x, y) => x.or(y),
    };
    Point {
        t: b.t,
        target_rate: mean(a.target_rate, b.target_rate),
        achieved_rate: (a.achieved_rate + b.achieved_rate) / 2.0,
        delivery_p50_ms: worse(a.delivery_p50_ms, b.delivery_p50_ms),
        delivery_p99_ms: worse(a.delivery_p99_ms, b.delivery_p99_ms),
        delivery_max_ms: worse(a.delivery_max_ms, b.delivery_max_ms),
        end_to_end_p50_ms: worse(a.end_to_end_p50_ms, b.end_to_end_p50_ms),
        end_to_end_p99_ms: worse(a.end_to_end_p99_ms, b.end_to_end_p99_ms),
        arrived: b.arrived.or(a.arrived),
        repeated: b.repeated.or(a.repeated),
    }
}

/// The rate the pace asks for `elapsed` after the start; `None` when unlimited.
pub(super) fn target_rate(pace: &Pace, elapsed: Duration) -> Option<f64> {
    match pace {
        Pace::Unlimited => None,
        Pace::Rate(rate) => Some(*rate),
        Pace::Schedule(schedule) => Some(schedule.rate_at(elapsed)),
        Pace::Delay(delay) => (!delay.is_zero()).then(|| 1.0 / delay.as_secs_f64()),
    }
}

/// The JSON file beside `html`: the same name, extension `.json`.
pub fn json_path(html: &Path) -> PathBuf {
    html.with_extension("json")
}

/// Writes the page to `path` and the JSON beside it.
pub(super) fn write(path: &Path, summary: &Summary, points: &[Point]) -> Result<()> {
    let latency = |l: Option<LatencySummary>| {
        l.filter(|l| l.count > 0).map(|l| {
            serde_json::json!({
                "count": l.count,
                "mean_ms": l.mean.as_secs_f64() * 1e3,
                "p50_ms": l.p50.as_secs_f64() * 1e3,
                "p95_ms": l.p95.as_secs_f64() * 1e3,
                "p99_ms": l.p99.as_secs_f64() * 1e3,
                "p999_ms": l.p999.as_secs_f64() * 1e3,
                "max_ms": l.max.as_secs_f64() * 1e3,
            })
        })
    };
    let verification = summary.verification.as_ref().map(|v| {
        serde_json::json!({
            "events": v.events,
            "arrived": v.arrived,
            "lost": v.lost,
            "duplicated": v.duplicated,
            "dead_lettered_expected": v.dead_lettered_expected,
            "dead_lettered_unexpected": v.dead_lettered_unexpected,
            "matching": v.matching,
            "shared_identities": v.shared_identities,
            "unmatched": v.unmatched,
            "unidentified": v.unidentified,
            "end_to_end_to_output_timestamp": latency(Some(v.to_output)),
            "end_to_end_to_arrival": latency(Some(v.to_arrival)),
        })
    });
    let json = serde_json::json!({
        "destination": summary.destination,
        "records": summary.events,
        "bytes": summary.bytes,
        "elapsed_s": summary.elapsed.as_secs_f64(),
        "records_per_s": summary.events_per_sec(),
        "delivery_failures": summary.delivery_failures,
        "delivery_latency": latency(summary.latency),
        "bad_records": summary.dirt.bad.iter().map(|(k, n)| (k.as_str(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        "duplicates_sent": summary.dirt.duplicates,
        "verification": verification,
        "points": points,
    });
    let json_path = json_path(path);
    let text = serde_json::to_string_pretty(&json)?;
    std::fs::write(&json_path, text).map_err(|e| Error::io(&json_path, e))?;
    std::fs::write(path, html(summary, points)).map_err(|e| Error::io(path, e))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page: the summary, then a chart per figure that the run has.
fn html(summary: &Summary, points: &[Point]) -> String {
    let series = |pick: fn(&Point) -> Option<f64>| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter_map(|p| pick(p).map(|v| (p.t, v)))
            .collect()
    };
    let mut charts = String::new();
    charts.push_str(&chart(
        "Rate: target and achieved",
        "events/s",
        &[
            ("target", "#999999", series(|p| p.target_rate)),
            ("achieved", "#1f77b4", series(|p| Some(p.achieved_rate))),
        ],
    ));
    charts.push_str(&chart(
        "Delivery latency (send to acknowledgement)",
        "ms",
        &[
            ("p50", "#2ca02c", series(|p| p.delivery_p50_ms)),
            ("p99", "#ff7f0e", series(|p| p.delivery_p99_ms)),
            ("max", "#d62728", series(|p| p.delivery_max_ms)),
        ],
    ));
    if summary.verification.is_some() {
        charts.push_str(&chart(
            "End-to-end latency (send to arrival from the pipeline)",
            "ms",
            &[
                ("p50", "#2ca02c", series(|p| p.end_to_end_p50_ms)),
                ("p99", "#ff7f0e", series(|p| p.end_to_end_p99_ms)),
            ],
        ));
        charts.push_str(&chart(
            "Arrivals (events seen in the output) and repeated arrivals",
            "events",
            &[
                (
                    "arrived",
                    "#1f77b4",
                    series(|p| p.arrived.map(|n| n as f64)),
                ),
                (
                    "repeated",
                    "#d62728",
                    series(|p| p.repeated.map(|n| n as f64)),
                ),
            ],
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>datagen report: {dest}</title>\
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}pre{{white-space:pre-wrap;background:#f4f4f4;padding:1em}}\
svg{{display:block;margin:1em 0}}.axis{{stroke:#444}}.grid{{stroke:#ddd}}text{{font-size:12px}}</style></head>\
<body><h1>datagen report</h1><p>To {dest}: {points} points, one every {step} s or so.</p><pre>{summary}</pre>{charts}</body></html>\n",
        dest = escape(&summary.destination),
        points = points.len(),
        step = points
            .windows(2)
            .next()
            .map_or(1.0, |w| (w[1].t - w[0].t).max(0.0))
            .round(),
        summary = escape(&summary.to_string()),
    )
}

/// A line chart as inline SVG: time in seconds across, `unit` up, one line per series.
/// One line of a chart: its name, its colour, its (seconds, value) points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn chart(title: &str, unit: &str, series: &[Line<'_>]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 30.0;
    const TOP: f64 = 30.0;
    const RIGHT: f64 = 110.0;
    if series.iter().all(|(_, _, points)| points.is_empty()) {
        return format!("<h2>{}</h2><p>No data in this run.</p>", escape(title));
    }
    let all = series.iter().flat_map(|(_, _, points)| points.iter());
    let t_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let v_max = all.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05;
    let x = |t: f64| LEFT + t / t_max * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / v_max) * (H - TOP - BOTTOM);
    let mut svg = format!(
        "<h2>{}</h2><svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
        escape(title),
        escape(title)
    );
    for i in 0..=4 {
        let v = v_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            tick(v),
            y = y(v)
        );
        let t = t_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{} s</text>",
            x(t),
            H - 8.0,
            tick(t)
        );
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\"/><text x=\"8\" y=\"{}\">{}</text>",
        H - BOTTOM,
        TOP - 10.0,
        escape(unit)
    );
    for (i, (name, color, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let path: Vec<String> = points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/><text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
            path.join(" "),
            W - RIGHT + 10.0,
            TOP + 16.0 * (i as f64 + 1.0),
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A number for an axis: whole above 10, one decimal below.
fn tick(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_stay_bounded_and_merge_neighbours() {
        let started = Instant::now();
        let mut recorder = Recorder::new(started);
        for second in 1..=(MAX_POINTS as u64 * 3) {
            recorder.sample(
                started + Duration::from_secs(second),
                second * 100,
                &Pace::Rate(100.0),
                None,
                None,
            );
        }
        let points = recorder.points();
        assert!(points.len() < MAX_POINTS, "{}", points.len());
        assert!(
            points
                .iter()
                .all(|p| (p.achieved_rate - 100.0).abs() < 1e-6)
        );
        assert!(points.iter().all(|p| p.target_rate == Some(100.0)));
        assert!(points.windows(2).all(|w| w[0].t < w[1].t));
    }

    #[test]
    fn the_page_is_self_contained_and_escapes_the_run_text() {
        let points: Vec<Point> = (1..=5)
            .map(|t| Point {
                t: f64::from(t),
                target_rate: Some(1000.0),
                achieved_rate: 990.0,
                delivery_p50_ms: Some(2.0),
                delivery_p99_ms: Some(9.0),
                delivery_max_ms: Some(20.0),
                ..Point::default()
            })
            .collect();
        let summary = Summary {
            report_error: None,
            events: 5000,
            bytes: 2_500_000,
            elapsed: Duration::from_secs(5),
            delivery_failures: 0,
            first_failure: None,
            destination: "topic <script>".into(),
            latency: None,
            dirt: Default::default(),
            verification: None,
        };
        let page = html(&summary, &points);
        assert!(
            !page.contains("http://") && !page.contains("https://") && !page.contains("<script")
        );
        assert!(page.contains("topic &lt;script&gt;"));
        assert_eq!(page.matches("<svg").count(), 2);
        let quiet = html(&summary, &[]);
        assert_eq!(quiet.matches("No data in this run").count(), 2);
        assert!(page.matches("<polyline").count() >= 4);
    }
}
