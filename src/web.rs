//! A small read-only HTTP server for dashboards and Prometheus scrapes, and the helpers
//! that render metrics with `prometheus-client` (the Prometheus text format 0.0.4).
//!
//! Guarantees: it binds where it is told (loopback by default in both binaries), answers
//! only GET and HEAD (anything else gets 405), and serves only what its [`View`] renders:
//! no files, and nothing from the internet. It runs on its own thread, so it works whatever
//! the job does (Kafka or files), and stops when the [`Server`] is dropped.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

/// What a server shows. Each method renders a fresh answer.
pub trait View: Send + Sync + 'static {
    /// The HTML page at `/`, if there is one.
    fn page(&self) -> Option<&'static str> {
        None
    }
    /// The JSON at `/api/job`, if there is one.
    fn api(&self) -> Option<String> {
        None
    }
    /// The Prometheus text at `/metrics`.
    fn metrics(&self) -> String;
    /// Called about once a second, to sample rates.
    fn tick(&self) {}
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The address it actually listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How many ports above a taken one are tried.
const NEXT_PORTS: u16 = 20;

/// Serves `view` on `addr`, or on the next free port above it (logged) when it is taken.
pub fn serve(addr: SocketAddr, view: Arc<dyn View>) -> Result<Server> {
    let mut candidate = addr;
    let server = loop {
        match tiny_http::Server::http(candidate) {
            Ok(server) => break server,
            Err(e)
                if addr.port() != 0
                    && candidate.port() < addr.port().saturating_add(NEXT_PORTS) =>
            {
                log::debug!("{candidate}: {e}");
                candidate.set_port(candidate.port() + 1);
            }
            Err(e) => return Err(Error::Http(format!("cannot listen on {candidate}: {e}"))),
        }
    };
    let bound = server.server_addr().to_ip().unwrap_or(candidate);
    if bound.port() != addr.port() && addr.port() != 0 {
        log::warn!("{addr} is taken; serving on {bound} instead");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                let mut last_tick = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) {
                        respond(request, view.as_ref());
                    }
                    if last_tick.elapsed() >= Duration::from_secs(1) {
                        view.tick();
                        last_tick = std::time::Instant::now();
                    }
                }
            })
            .map_err(|e| Error::Http(e.to_string()))?
    };
    Ok(Server {
        addr: bound,
        stop,
        thread: Some(thread),
    })
}

fn respond(request: tiny_http::Request, view: &dyn View) {
    use tiny_http::{Header, Method, Response};
    let header = |value: &str| Header::from_bytes("Content-Type", value).ok();
    if !matches!(request.method(), Method::Get | Method::Head) {
        let _ = request.respond(Response::from_string("read-only\n").with_status_code(405));
        return;
    }
    let path = request.url().split('?').next().unwrap_or("/").to_string();
    let (status, content_type, body) = match path.as_str() {
        "/" => match view.page() {
            Some(page) => (200, "text/html; charset=utf-8", page.to_string()),
            None => (
                404,
                "text/plain; charset=utf-8",
                "see /metrics\n".to_string(),
            ),
        },
        "/api/job" => match view.api() {
            Some(json) => (200, "application/json", json),
            None => (404, "text/plain; charset=utf-8", "not found\n".to_string()),
        },
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            view.metrics(),
        ),
        _ => (404, "text/plain; charset=utf-8", "not found\n".to_string()),
    };
    let mut response = Response::from_string(body).with_status_code(status);
    if let Some(h) = header(content_type) {
        response = response.with_header(h);
    }
    if let Ok(h) = Header::from_bytes("Cache-Control", "no-store") {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}

/// A metrics registry that already holds `streamkit_build_info`; each view adds its own
/// metrics and collectors, then renders it with [`render_metrics`] on every scrape.
pub fn metrics_registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BuildInfo));
    registry
}

/// `registry` in the Prometheus text format (version 0.0.4), by `prometheus-client`.
pub fn render_metrics(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail, and every collector here only formats numbers.
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        log::debug!("metrics encoding stopped early: {e}");
    }
    text
}

/// Writes one metric family of `samples` (labels, value) from a collector.
pub fn encode_samples<L, M>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric,
{
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `streamkit_build_info{version, librdkafka_version} 1`.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
        encode_samples(
            &mut encoder,
            "streamkit_build_info",
            "Build information (always 1).",
            MetricType::Gauge,
            [(
                [
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("librdkafka_version", librdkafka.as_str()),
                ],
                ConstGauge::new(1i64),
            )],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::ConstCounter;

    #[derive(Debug)]
    struct Things;

    impl Collector for Things {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
            encode_samples(
                &mut encoder,
                "x",
                "Things.",
                MetricType::Counter,
                [([("op", "a\"b")], ConstCounter::new(3u64))],
            )
        }
    }

    #[test]
    fn metrics_follow_the_text_format_with_build_info() {
        let mut registry = metrics_registry();
        registry.register_collector(Box::new(Things));
        let text = render_metrics(&registry);
        assert!(
            text.contains("# TYPE x_total counter\nx_total{op=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE streamkit_build_info gauge\nstreamkit_build_info{version=\""),
            "{text}"
        );
    }
}
