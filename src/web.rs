//! A small read-only HTTP server for dashboards and Prometheus scrapes, and the Prometheus
//! text format.
//!
//! Guarantees: it binds where it is told (loopback by default in both binaries), answers
//! only GET and HEAD (anything else gets 405), and serves only what its [`View`] renders:
//! no files, and nothing from the internet. It runs on its own thread, so it works whatever
//! the job does (Kafka or files), and stops when the [`Server`] is dropped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// Builds a Prometheus text exposition (format 0.0.4).
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{key}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.family(name, "counter", help);
        for (labels, value) in samples {
            self.sample(name, labels, *value);
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.family(name, "gauge", help);
        for (labels, value) in samples {
            self.sample(name, labels, *value);
        }
    }

    /// `buckets` are (upper bound, cumulative count), ascending.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, cumulative) in buckets {
            self.sample(&bucket, &[("le", &le.to_string())], *cumulative as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], count as f64);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count as f64);
    }

    /// `streamkit_build_info`: version and librdkafka version, value 1.
    pub fn build_info(&mut self) {
        let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
        self.gauge(
            "streamkit_build_info",
            "Build information (always 1).",
            &[(
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("librdkafka_version", &librdkafka),
                ],
                1.0,
            )],
        );
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_follows_the_text_format() {
        let mut e = Exposition::default();
        e.counter("x_total", "Things.", &[(&[("op", "a\"b")], 3.0)]);
        e.histogram("d_seconds", "Durations.", &[(0.1, 1), (1.0, 2)], 0.6, 3);
        let text = e.finish();
        assert!(
            text.contains("# TYPE x_total counter\nx_total{op=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("d_seconds_bucket{le=\"0.1\"} 1\nd_seconds_bucket{le=\"1\"} 2\nd_seconds_bucket{le=\"+Inf\"} 3\nd_seconds_sum 0.6\nd_seconds_count 3\n"), "{text}");
    }
}
