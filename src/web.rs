//! A small read-only HTTP server for dashboards and Prometheus scrapes, and the helpers
//! that render metrics with `prometheus-client` (the Prometheus text format 0.0.4).
//!
//! The server is axum's router on hyper's HTTP/1 connections, run as tasks of a tokio
//! runtime the caller owns (the job's): no thread per connection. Guarantees:
//! - It binds where it is told (loopback by default in both binaries), answers only GET
//!   and HEAD (anything else gets 405), and serves only what its [`View`] renders: no
//!   files, and nothing from the internet.
//! - Limits: request headers of at most [`MAX_HEADER_BYTES`] (more gets 431); headers must
//!   arrive within [`HEADER_READ_TIMEOUT`], which also closes a keep-alive connection idle
//!   that long; at most [`MAX_CONNECTIONS`] connections at once (more are closed at once).
//! - Each connection is its own task: a slow client, or one that pipelines requests
//!   without reading the answers, delays only itself.
//! - An accept error is logged and retried with backoff; the listener never goes away
//!   while the [`Server`] lives. Dropping it stops it. Out of file descriptors, a spare
//!   one is given up to accept each pending connection and close it at once, so clients
//!   are refused promptly (and retry) rather than left in the backlog.
//!
//! Routes: `/` (the page), `/api/job` and `/api/job/history` (JSON), `/metrics`,
//! `/chart.js` (the pages' charts: inline SVG drawn by a script served from the binary),
//! and, for a view that browses topics, `/topics`, `/api/topics` and
//! `/api/topics/{topic}/partitions/{partition}/messages?limit=N` (see [`crate::browse`];
//! a bad topic, partition or limit gets 400, an unknown one 404, a cluster that does not
//! answer 503, each with `{"error": "..."}`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::browse::{self, BrowseError, TopicBrowser};
use crate::error::{Error, Result};

/// Largest request head (request line and headers) read; more is answered with 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long a client may take to send a request's headers, and how long a keep-alive
/// connection may sit idle before it is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

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
    /// The JSON at `/api/job/history` (see [`crate::history`]), if there is one.
    fn history(&self) -> Option<String> {
        None
    }
    /// The Prometheus text at `/metrics`.
    fn metrics(&self) -> String;
    /// Called about once a second, to sample rates.
    fn tick(&self) {}
    /// What `/topics` shows.
    fn topics(&self) -> Topics {
        Topics::Absent
    }
}

/// What a view's `/topics` shows.
pub enum Topics {
    /// No topic browser (404).
    Absent,
    /// A page that says why there are no topics (file mode, say).
    None(&'static str),
    /// The topics of a cluster.
    Browse(Arc<TopicBrowser>),
}

/// The page of the topic browser.
const TOPICS_PAGE: &str = include_str!("browse/topics.html");
/// The charts' script, shared by every page.
const CHART_SCRIPT: &str = include_str!("web/chart.js");

/// A running server; dropping it stops it (its tasks end with the runtime or sooner).
pub struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Server {
    /// The address it actually listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How many ports above a taken one are tried.
const NEXT_PORTS: u16 = 20;

/// Serves `view` on `addr` from `runtime`, or on the next free port above it (logged) when
/// it is taken. `what` names the server in messages ("dashboard", "metrics").
pub fn serve(
    what: &'static str,
    addr: SocketAddr,
    view: Arc<dyn View>,
    runtime: &tokio::runtime::Handle,
) -> Result<Server> {
    let listen_error = |reason: String| Error::Listen {
        what,
        addr: addr.to_string(),
        reason,
    };
    let mut candidate = addr;
    let listener = loop {
        match std::net::TcpListener::bind(candidate) {
            Ok(listener) => break listener,
            // Only a taken port moves on to the next one; any other error is about the
            // address asked for, and says so.
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && candidate.port() < addr.port().saturating_add(NEXT_PORTS) =>
            {
                log::debug!("{candidate}: {e}");
                candidate.set_port(candidate.port() + 1);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
                return Err(listen_error(format!(
                    "it and the next {NEXT_PORTS} ports are taken"
                )));
            }
            Err(e) => return Err(listen_error(e.to_string())),
        }
    };
    let bound = listener
        .local_addr()
        .map_err(|e| listen_error(e.to_string()))?;
    if bound.port() != addr.port() && addr.port() != 0 {
        log::warn!("{addr} is taken; serving the {what} on {bound} instead");
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| listen_error(e.to_string()))?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(|e| listen_error(e.to_string()))?
    };
    let stop = CancellationToken::new();
    let router = Router::new()
        .route("/", get(page))
        .route("/api/job", get(api))
        .route("/api/job/history", get(history))
        .route("/metrics", get(metrics))
        .route("/chart.js", get(chart_script))
        .route("/topics", get(topics_page))
        .route("/api/topics", get(topic_list))
        .route(
            "/api/topics/{topic}/partitions/{partition}/messages",
            get(topic_messages),
        )
        .fallback(not_found)
        .layer(axum::middleware::map_response(no_store))
        .with_state(Arc::clone(&view));
    runtime.spawn(accept_loop(what, listener, router, stop.clone()));
    runtime.spawn(tick_loop(view, stop.clone()));
    Ok(Server { addr: bound, stop })
}

/// Accepts connections until `stop`, each served by a task of its own.
async fn accept_loop(
    what: &'static str,
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(10);
    // One descriptor held in reserve: out of descriptors, it is given up to accept a
    // pending connection and close it at once, so that the backlog drains instead of
    // holding every client (a fresh one included) until idle connections time out.
    let mut spare = std::fs::File::open("/dev/null").ok();
    let mut shed: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                if shed > 0 {
                    log::warn!(
                        "{what}: closed {shed} connections at once while out of file descriptors"
                    );
                    shed = 0;
                }
                stream
            }
            Err(e) if out_of_descriptors(&e) && spare.take().is_some() => {
                if shed == 0 {
                    log::warn!(
                        "{what}: cannot accept a connection ({e}); closing new connections at once until descriptors are free"
                    );
                }
                if let Ok(Ok((stream, _))) =
                    tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
                {
                    drop(stream);
                    shed += 1;
                }
                spare = std::fs::File::open("/dev/null").ok();
                continue;
            }
            Err(e) => {
                // Out of file descriptors, or the like: keep the listener, try again later.
                log::warn!("{what}: cannot accept a connection ({e}); retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                spare = spare.or_else(|| std::fs::File::open("/dev/null").ok());
                continue;
            }
        };
        // Over the cap: close it at once rather than hold a descriptor for it.
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .max_buf_size(MAX_HEADER_BYTES)
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection => {}
            }
            drop(permit);
        });
    }
}

/// EMFILE or ENFILE: the process, or the system, has no file descriptor left.
fn out_of_descriptors(error: &std::io::Error) -> bool {
    // Linux's numbers (asm-generic/errno-base.h): ENFILE 23, EMFILE 24.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// Calls the view's `tick` about once a second, until `stop`.
async fn tick_loop(view: Arc<dyn View>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => view.tick(),
        }
    }
}

type ViewState = State<Arc<dyn View>>;

async fn page(State(view): ViewState) -> Response {
    match view.page() {
        Some(page) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response(),
        None => (StatusCode::NOT_FOUND, "see /metrics\n").into_response(),
    }
}

async fn api(State(view): ViewState) -> Response {
    match view.api() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn history(State(view): ViewState) -> Response {
    match view.history() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn chart_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CHART_SCRIPT,
    )
        .into_response()
}

async fn topics_page(State(view): ViewState) -> Response {
    match view.topics() {
        Topics::Absent => not_found().await,
        Topics::None(_) | Topics::Browse(_) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            TOPICS_PAGE,
        )
            .into_response(),
    }
}

fn json_answer<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_string(body) {
        Ok(json) => (status, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn browse_error(error: &BrowseError) -> Response {
    let status = match error {
        BrowseError::BadRequest(_) => StatusCode::BAD_REQUEST,
        BrowseError::NotFound(_) => StatusCode::NOT_FOUND,
        BrowseError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    json_answer(status, &serde_json::json!({ "error": error.to_string() }))
}

/// Runs a blocking read of the browser on a blocking thread, one of a bounded few.
async fn browse_with<T, F>(browser: Arc<TopicBrowser>, read: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce(&TopicBrowser) -> std::result::Result<T, BrowseError> + Send + 'static,
{
    let _permit = match browser.permit().await {
        Ok(permit) => permit,
        Err(e) => return browse_error(&e),
    };
    let reader = Arc::clone(&browser);
    match tokio::task::spawn_blocking(move || read(&reader)).await {
        Ok(Ok(answer)) => json_answer(StatusCode::OK, &answer),
        Ok(Err(e)) => browse_error(&e),
        Err(_) => browse_error(&BrowseError::Unavailable("the read failed".into())),
    }
}

async fn topic_list(State(view): ViewState) -> Response {
    match view.topics() {
        Topics::Absent => not_found().await,
        Topics::None(reason) => json_answer(
            StatusCode::OK,
            &browse::TopicList {
                topics: Vec::new(),
                note: Some(reason.to_string()),
            },
        ),
        Topics::Browse(browser) => browse_with(browser, TopicBrowser::list).await,
    }
}

async fn topic_messages(
    State(view): ViewState,
    Path((topic, partition)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    let browser = match view.topics() {
        Topics::Absent => return not_found().await,
        Topics::None(reason) => return browse_error(&BrowseError::NotFound(reason.to_string())),
        Topics::Browse(browser) => browser,
    };
    let checked = browse::check_topic(&topic).and_then(|()| {
        let partition = browse::parse_partition(&partition)?;
        Ok((partition, browse::parse_limit(uri.query())?))
    });
    match checked {
        Ok((partition, limit)) => {
            browse_with(browser, move |b| b.messages(&topic, partition, limit)).await
        }
        Err(e) => browse_error(&e),
    }
}

async fn metrics(State(view): ViewState) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        view.metrics(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Every answer is fresh, and a method other than GET or HEAD says the server is read-only.
async fn no_store(mut response: Response) -> Response {
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        response = (StatusCode::METHOD_NOT_ALLOWED, "read-only\n").into_response();
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
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
