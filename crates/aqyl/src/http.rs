//! The HTTP endpoint, on axum (over hyper 1, both already built for the embedded demo broker):
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /` | the status page: a map of the sensors coloured by quality, the incidents |
//! | `GET /events` | the page's live feed (server-sent events): a snapshot, then batched changes |
//! | `GET /api/status` | the snapshot as JSON |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /health` | `ok`, or 503 with what cannot do its job (broker, sink, spill, state, workers) |
//! | `GET /ready` | `ready`, or 503 while recovery runs or the ingest subscription is not in place |
//! | `GET /api/state?type=&area=&bbox=&limit=&offset=` | the live city state ([`crate::city`]) |
//! | `GET /v1.1/...` | the sensor catalogue, OGC SensorThings API 1.1 ([`crate::sta`]) |
//! | `GET /sensors/<type>/<id>.jsonld` | a sensor's SOSA/SSN description (also `GET /v1.1/Things(id)` with `Accept: application/ld+json`) |
//! | `GET /api/subscriptions` | the contextual subscriptions, from files and over HTTP, with where each came from |
//! | `PUT`, `GET`, `DELETE /api/subscriptions/<name>` | create or replace, read, delete one created over HTTP ([`crate::city::subscriptions`]) |
//! | `GET /api/subscriptions/<name>/events` | server-sent events: each incident message the subscription selects, as it is published |
//! | `POST /api/reports` | a citizen report ([`crate::reports`]) |
//!
//! Writes (`PUT`, `DELETE`, `POST`) need the token: without `http.token` they are refused
//! (403) rather than left open to anyone who reaches the port.
//!
//! With `http.token` (or `http.token_file`), `/metrics`, the page, its data and the city
//! services answer only
//! requests that carry `Authorization: Bearer <token>` or, for a browser, `?token=<token>`
//! (401 otherwise); `/health` and `/ready` stay open, since they tell nothing but whether Aqyl
//! works and the probes of service managers and orchestrators send no credentials.
//!
//! It must never hurt the service it reports on: at most [`MAX_CONNECTIONS`] connections are
//! served at once and further ones are closed as soon as they are accepted (so idle clients
//! can neither use up Aqyl's file descriptors nor queue a health check behind them for long);
//! a client gets [`IO_TIMEOUT`] to send a request's headers (also between requests on a kept
//! connection), a write may stall for no longer than [`IO_TIMEOUT`], a request is answered
//! within [`REQUEST_TIMEOUT`] or gets 503, at most [`MAX_LIVE_PAGES`] pages follow the live
//! feed at once, and a failed `accept` (out of file descriptors) backs off instead of spinning.

use crate::status::StatusBoard;
use anyhow::Context;
use aqyl_core::config::Secret;
use aqyl_core::metrics::Metrics;
use axum::extract::Path as UrlPath;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Pages following the live feed at once (each holds a connection).
pub const MAX_LIVE_PAGES: usize = 32;
/// Time a client has to send a request's headers; the longest a write may stall.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a request has to be answered (the live feed excepted).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The status page: one file, its script and style inline, nothing fetched from elsewhere.
const STATUS_PAGE: &str = include_str!("status.html");

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    token: Option<Arc<Secret>>,
    live_pages: Arc<tokio::sync::Semaphore>,
    city: Option<crate::sta::Catalogue>,
    api: Api,
}

/// The city services that take requests: contextual subscriptions (with their live feeds)
/// and citizen reports. Each is off (404) when absent.
#[derive(Clone, Default)]
pub struct Api {
    /// The subscriptions, from files and over HTTP.
    pub subscriptions: Option<Arc<crate::city::subscriptions::Subscriptions>>,
    /// Their live feeds (fed by the incident publisher).
    pub feeds: aqyl_mqtt::publish::Feeds,
    /// The output topic prefix (`outputs.topic_prefix`), for the topics shown.
    pub prefix: String,
    /// The intake of citizen reports.
    pub reports: Option<Arc<crate::reports::Reports>>,
}

/// Binds `addr` and serves until the returned task is aborted; with `token`, `/metrics` and
/// the status page require it.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    token: Option<Secret>,
    city: Option<crate::sta::Catalogue>,
    api: Api,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (http.addr / AQYL_HTTP_ADDR); is the port in use?")
    })?;
    let loopback = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    if !loopback && token.is_none() {
        tracing::warn!(%addr, "/metrics and the status page are served beyond this machine without a token: set http.token or http.token_file (AQYL_HTTP_TOKEN, AQYL_HTTP_TOKEN_FILE), or listen on 127.0.0.1.");
    }
    tracing::info!(%addr, token = token.is_some(), "Serving the status page, /metrics, /health and /ready.");
    Ok(tokio::spawn(accept_loop(
        listener,
        router(metrics, board, token, city, api),
    )))
}

fn router(
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    token: Option<Secret>,
    city: Option<crate::sta::Catalogue>,
    api: Api,
) -> Router {
    let state = AppState {
        metrics,
        board,
        token: token.map(Arc::new),
        live_pages: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE_PAGES)),
        city,
        api,
    };
    let guarded = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(status_json))
        .route("/api/state", get(city_state))
        .route("/v1.1", get(sensor_things))
        .route("/v1.1/*rest", get(sensor_things))
        .route("/sensors/*rest", get(sensor_jsonld))
        .route("/api/subscriptions", get(list_subscriptions))
        .route(
            "/api/subscriptions/:name",
            get(get_subscription)
                .put(put_subscription)
                .delete(delete_subscription),
        )
        .route("/api/reports", post(post_report))
        .layer(axum::middleware::from_fn(with_timeout))
        .route("/events", get(live_feed))
        .route("/api/subscriptions/:name/events", get(subscription_feed))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .layer(axum::middleware::from_fn(with_timeout))
        .merge(guarded)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "try /, /metrics, /health or /ready\n",
            )
        })
        .with_state(state)
}

/// Answers 503 when the request takes longer than [`REQUEST_TIMEOUT`].
async fn with_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the request timed out\n").into_response(),
    }
}

/// Lets a request through when no token is configured, or when it carries the token.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if authorized(request.headers(), request.uri().query(), token) {
        return next.run(request).await;
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "this needs the bearer token of http.token: send Authorization: Bearer <token> (or, from a browser, add ?token=<token>)\n",
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"aqyl\""),
    );
    response
}

/// Whether the request carries the token: `Authorization: Bearer <token>`, or `token=` in
/// the query. The comparison takes as long wherever the first difference is.
fn authorized(headers: &HeaderMap, query: Option<&str>, token: &Secret) -> bool {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|value| {
            let (scheme, credentials) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| credentials.trim().to_string())
        });
    let from_query = || {
        query?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| percent_decode(v))
    };
    let Some(given) = from_header.or_else(from_query) else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `%XX` and `+` decoded (a token from a URL).
fn percent_decode(s: &str) -> String {
    crate::sta::query::decode_component(s)
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_PAGE,
    )
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, aqyl_core::metrics::CONTENT_TYPE)],
        state.metrics.render_prometheus(),
    )
}

async fn health(State(state): State<AppState>) -> Response {
    match state.metrics.problems() {
        problems if problems.is_empty() => "ok\n".into_response(),
        problems => (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n").into_response(),
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.metrics.not_ready() {
        why if why.is_empty() => "ready\n".into_response(),
        why => (StatusCode::SERVICE_UNAVAILABLE, why.join("\n") + "\n").into_response(),
    }
}

async fn status_json(State(state): State<AppState>) -> Response {
    axum::Json(state.board.snapshot()).into_response()
}

/// `http://<host>` of the request, for links (a Host header with anything but host-name and
/// port characters is not trusted).
fn root_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn city_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "the city services are off ([city] enabled = false)\n",
    )
        .into_response()
}

/// Runs a city request off the runtime's threads (a big catalogue query takes a while).
async fn off_runtime(f: impl FnOnce() -> crate::sta::Answer + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(a) => (
            StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, a.content_type)],
            a.body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the request failed\n").into_response(),
    }
}

async fn sensor_things(State(state): State<AppState>, request: Request) -> Response {
    let Some(city) = state.city.clone() else {
        return city_off();
    };
    let root = root_url(request.headers());
    let uri = request.uri();
    let path = uri
        .path()
        .strip_prefix("/v1.1")
        .unwrap_or_default()
        .to_string();
    let query = uri.query().unwrap_or_default().to_string();
    // A Thing asked for as JSON-LD is its SOSA/SSN description (content negotiation).
    let ld = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/ld+json"));
    off_runtime(
        move || match ld.then(|| city.thing_jsonld(&root, &path)).flatten() {
            Some(answer) => answer,
            None => city.get(&root, &path, &query),
        },
    )
    .await
}

/// `/api/state`: answered whenever the page is served (with the city services off, from
/// the dataflow's outputs alone: see [`crate::city::state`]).
async fn city_state(State(state): State<AppState>, request: Request) -> Response {
    let city = state.board.city().clone();
    let query = request.uri().query().unwrap_or_default().to_string();
    off_runtime(move || crate::sta::state_answer(&city, &query)).await
}

async fn sensor_jsonld(State(state): State<AppState>, request: Request) -> Response {
    let Some(city) = state.city.clone() else {
        return city_off();
    };
    let root = root_url(request.headers());
    let rest = request
        .uri()
        .path()
        .strip_prefix("/sensors/")
        .unwrap_or_default()
        .to_string();
    off_runtime(move || city.jsonld_answer(&root, &rest)).await
}

/// The live feed: `snapshot` (everything), then `changes` every batch; a page that falls
/// behind by more than the feed keeps gets a fresh `snapshot`.
async fn live_feed(State(state): State<AppState>) -> Response {
    let Ok(slot) = state.live_pages.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many pages follow the live feed; close one\n",
        )
            .into_response();
    };
    let board = state.board.clone();
    let rx = board.subscribe();
    let first = board.snapshot().to_string();
    let stream = futures_util::stream::unfold(
        (Some(first), rx, board, slot),
        |(pending, mut rx, board, slot)| async move {
            if let Some(snapshot) = pending {
                let event = SseEvent::default().event("snapshot").data(snapshot);
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (None, rx, board, slot),
                ));
            }
            let event = match rx.recv().await {
                Ok(changes) => SseEvent::default().event("changes").data(&*changes),
                // Fell behind by more than the feed keeps: start again from a snapshot.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => SseEvent::default()
                    .event("snapshot")
                    .data(board.snapshot().to_string()),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(event), (None, rx, board, slot)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn json_error(status: u16, message: impl Into<String>) -> Response {
    json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        serde_json::json!({ "error": message.into() }),
    )
}

fn subscriptions_off() -> Response {
    json_error(
        404,
        "contextual subscriptions over HTTP are off: the service has no state directory for them",
    )
}

/// Writes need the token; without one configured they are refused, not left open.
fn writes_refused(state: &AppState) -> Option<Response> {
    state.token.is_none().then(|| {
        json_error(
            403,
            "writing needs a token: set http.token or http.token_file (AQYL_HTTP_TOKEN, AQYL_HTTP_TOKEN_FILE) and send Authorization: Bearer <token>",
        )
    })
}

/// A subscription as listed: its settings, where it came from, what it selects and its topic.
fn subscription_json(
    prefix: &str,
    s: &aqyl_core::subscriptions::Subscription,
) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("selects".into(), s.describe().into());
        o.insert(
            "topic".into(),
            format!("{prefix}/subscriptions/{}/#", s.name).into(),
        );
        o.insert(
            "events".into(),
            format!("/api/subscriptions/{}/events", s.name).into(),
        );
    }
    v
}

async fn list_subscriptions(State(state): State<AppState>) -> Response {
    let Some(subs) = &state.api.subscriptions else {
        return subscriptions_off();
    };
    let list: Vec<_> = subs
        .list()
        .iter()
        .map(|s| subscription_json(&state.api.prefix, s))
        .collect();
    json(StatusCode::OK, serde_json::json!({ "subscriptions": list }))
}

async fn get_subscription(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let Some(subs) = &state.api.subscriptions else {
        return subscriptions_off();
    };
    match subs.get(&name) {
        Some(s) => json(StatusCode::OK, subscription_json(&state.api.prefix, &s)),
        None => json_error(404, format!("no subscription {name:?}")),
    }
}

async fn put_subscription(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(subs) = state.api.subscriptions.clone() else {
        return subscriptions_off();
    };
    if let Some(refused) = writes_refused(&state) {
        return refused;
    }
    // The store writes and syncs a file: off the runtime's threads.
    let answer = tokio::task::spawn_blocking(move || subs.put(&name, &body)).await;
    match answer {
        Ok(Ok((put, s))) => {
            tracing::info!(subscription = %s.name, selects = %s.describe(), "Subscription set over HTTP.");
            let status = match put {
                crate::city::subscriptions::Put::Created => StatusCode::CREATED,
                crate::city::subscriptions::Put::Replaced => StatusCode::OK,
            };
            json(status, subscription_json(&state.api.prefix, &s))
        }
        Ok(Err(r)) => json_error(r.status, r.message),
        Err(_) => json_error(500, "the request failed"),
    }
}

async fn delete_subscription(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let Some(subs) = state.api.subscriptions.clone() else {
        return subscriptions_off();
    };
    if let Some(refused) = writes_refused(&state) {
        return refused;
    }
    let n = name.clone();
    match tokio::task::spawn_blocking(move || subs.delete(&n)).await {
        Ok(Ok(())) => {
            tracing::info!(subscription = %name, "Subscription deleted over HTTP.");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Err(r)) => json_error(r.status, r.message),
        Err(_) => json_error(500, "the request failed"),
    }
}

/// A subscription's live feed: `incident` events (the message as published on MQTT), and a
/// `lagged` event with how many were missed when the client fell more than
/// [`aqyl_mqtt::publish::FEED_CAPACITY`] behind. Shares [`MAX_LIVE_PAGES`] with the page.
async fn subscription_feed(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let Some(subs) = &state.api.subscriptions else {
        return subscriptions_off();
    };
    if subs.get(&name).is_none() {
        return json_error(404, format!("no subscription {name:?}"));
    }
    let Ok(slot) = state.live_pages.clone().try_acquire_owned() else {
        return json_error(503, "too many live feeds are followed at once; close one");
    };
    let rx = state.api.feeds.follow(&name);
    let stream = futures_util::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        use tokio::sync::broadcast::error::RecvError;
        let event = match rx.recv().await {
            Ok(message) => SseEvent::default().event("incident").data(&*message),
            Err(RecvError::Lagged(missed)) => SseEvent::default()
                .event("lagged")
                .data(serde_json::json!({ "missed": missed }).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), (rx, slot)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Reads at most `limit` bytes of a body, and one chunk beyond (enough to know it is longer).
async fn read_limited(body: axum::body::Body, limit: usize) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.extend_from_slice(&chunk[..chunk.len().min(limit + 1 - out.len())]);
        if out.len() > limit {
            break;
        }
    }
    out
}

async fn post_report(State(state): State<AppState>, request: Request) -> Response {
    let Some(reports) = state.api.reports.clone() else {
        return json_error(404, "citizen reports are off ([reports] enabled = false)");
    };
    if let Some(refused) = writes_refused(&state) {
        return refused;
    }
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let limit = reports.max_bytes();
    // A declared size beyond the limit is refused without reading the body.
    let body = if declared.is_some_and(|d| d > limit) {
        Vec::new()
    } else {
        read_limited(request.into_body(), limit).await
    };
    let answer = reports.receive(&peer, &body, declared).await;
    let mut response = json(
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer.body,
    );
    if let Some(wait) = answer.retry_after {
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

async fn accept_loop(listener: TcpListener, router: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // all slots busy: closed at once (dropped), the client may retry
                };
                let service = service.clone();
                // Handlers that need the peer (the reports' rate limit) find it here.
                let service = hyper::service::service_fn(
                    move |mut request: hyper::Request<hyper::body::Incoming>| {
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        hyper::service::Service::call(&service, request)
                    },
                );
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(StallLimit::new(socket));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(IO_TIMEOUT)
                        .serve_connection(io, service)
                        .await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "HTTP endpoint cannot accept a connection; retrying.");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A connection whose writes fail once they have made no progress for [`IO_TIMEOUT`] (a
/// client that does not take its answer).
struct StallLimit {
    inner: TcpStream,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallLimit {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            stalled: None,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(IO_TIMEOUT)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future;

impl AsyncRead for StallLimit {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallLimit {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn spawn(listener: TcpListener, token: Option<Secret>) -> tokio::task::JoinHandle<()> {
        let metrics = Arc::new(Metrics::default());
        let registry = aqyl_core::ingest::decode::Registry::new(Vec::new());
        let city = crate::city::state::CityState::new(4, 100, None, metrics.clone());
        let board = StatusBoard::new(&registry, city, None, metrics.clone());
        tokio::spawn(accept_loop(
            listener,
            router(metrics, board, token, None, Api::default()),
        ))
    }

    async fn get_with(
        addr: std::net::SocketAddr,
        path: &str,
        headers: &str,
    ) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        get_with(addr, path, "").await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_answers_while_a_thousand_idle_connections_are_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = spawn(listener, None);
        let mut idle = Vec::new();
        for _ in 0..1000 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Beyond the limit a connection is closed at once; an idle one within the limit is
        // closed after IO_TIMEOUT. (Without the limit and the timeout neither is ever closed.)
        let closed = |mut c: TcpStream| async move {
            let mut buf = [0u8; 16];
            matches!(
                tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        };
        assert!(
            closed(idle.pop().unwrap()).await,
            "the 1000th is turned away"
        );
        assert!(closed(idle.remove(0)).await, "an idle client is dropped");
        // A health checker retries; the idle clients' slots free up within IO_TIMEOUT.
        let mut answer = String::new();
        for _ in 0..300 {
            answer = get(addr, "/health").await.unwrap_or_default();
            if !answer.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
        assert!(answer.ends_with("ok\n"), "{answer}");
        let metrics = get(addr, "/metrics").await.unwrap();
        assert!(metrics.contains("aqyl_received_total"), "{metrics}");
        drop(idle);
        task.abort();
    }

    #[tokio::test]
    async fn metrics_and_the_page_need_the_bearer_token_and_health_stays_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = spawn(listener, Some(Secret::new("s3cr3t-t0ken")));
        let get = |path: &'static str, headers: &'static str| async move {
            get_with(addr, path, headers).await.unwrap()
        };
        let none = get("/metrics", "").await;
        assert!(none.starts_with("HTTP/1.1 401 Unauthorized"), "{none}");
        assert!(none.contains("www-authenticate: Bearer"), "{none}");
        assert!(!none.contains("s3cr3t"), "the answer never shows the token");
        let wrong = get("/metrics", "Authorization: Bearer s3cr3t-t0keN\r\n").await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let basic = get("/metrics", "Authorization: Basic s3cr3t-t0ken\r\n").await;
        assert!(basic.starts_with("HTTP/1.1 401"), "{basic}");
        let right = get("/metrics", "authorization: bearer s3cr3t-t0ken\r\n").await;
        assert!(right.starts_with("HTTP/1.1 200 OK"), "{right}");
        assert!(right.contains("aqyl_received_total"), "{right}");
        assert!(
            right.contains("content-type: text/plain; version=0.0.4"),
            "{right}"
        );
        for path in [
            "/",
            "/api/status",
            "/events",
            "/api/state",
            "/v1.1/Things",
            "/sensors/traffic/1.jsonld",
        ] {
            let page = get(path, "").await;
            assert!(page.starts_with("HTTP/1.1 401"), "{path}: {page}");
        }
        let page = get("/?token=s3cr3t%2Dt0ken", "").await;
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("<canvas"), "{page}");
        let status = get("/api/status?token=s3cr3t-t0ken", "").await;
        assert!(status.contains("\"sensors\":[]"), "{status}");
        let health = get("/health", "").await;
        assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
        let ready = get("/ready", "").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "not started: {ready}");
        assert!(ready.contains("recovery under way"), "{ready}");
        let missing = get("/nothing", "").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        task.abort();
    }

    /// A router with subscriptions (kept in `dir`) and reports (no broker connection).
    fn spawn_api(
        listener: TcpListener,
        token: Option<Secret>,
        dir: &std::path::Path,
    ) -> tokio::task::JoinHandle<()> {
        let metrics = Arc::new(Metrics::default());
        let registry = aqyl_core::ingest::decode::Registry::new(Vec::new());
        let city = crate::city::state::CityState::new(4, 100, None, metrics.clone());
        let board = StatusBoard::new(&registry, city, None, metrics.clone());
        let api = Api {
            subscriptions: Some(
                crate::city::subscriptions::Subscriptions::open(Vec::new(), dir).unwrap(),
            ),
            feeds: Default::default(),
            prefix: "aqyl".into(),
            reports: Some(crate::reports::Reports::new(
                aqyl_core::reports::ReportsConfig::default(),
                "aqyl",
                Duration::from_secs(300),
                metrics.clone(),
            )),
        };
        tokio::spawn(accept_loop(
            listener,
            router(metrics, board, token, None, api),
        ))
    }

    async fn send(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        auth: bool,
        body: &str,
    ) -> String {
        let auth = if auth {
            "authorization: Bearer t0k\r\n"
        } else {
            ""
        };
        let mut s = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn writes_are_refused_without_a_configured_token() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = spawn_api(listener, None, dir.path());
        let put = send(addr, "PUT", "/api/subscriptions/mine", false, "{}").await;
        assert!(put.starts_with("HTTP/1.1 403"), "{put}");
        assert!(put.contains("http.token"), "{put}");
        let post = send(addr, "POST", "/api/reports", false, "{}").await;
        assert!(post.starts_with("HTTP/1.1 403"), "{post}");
        let list = send(addr, "GET", "/api/subscriptions", false, "").await;
        assert!(
            list.starts_with("HTTP/1.1 200") && list.contains("\"subscriptions\":[]"),
            "{list}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn subscriptions_and_reports_take_writes_with_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = spawn_api(listener, Some(Secret::new("t0k")), dir.path());
        let body = r#"{"levels":["critical"]}"#;
        let anon = send(addr, "PUT", "/api/subscriptions/mine", false, body).await;
        assert!(anon.starts_with("HTTP/1.1 401"), "{anon}");
        let made = send(addr, "PUT", "/api/subscriptions/mine", true, body).await;
        assert!(made.starts_with("HTTP/1.1 201"), "{made}");
        assert!(made.contains("aqyl/subscriptions/mine/#"), "{made}");
        let bad = send(
            addr,
            "PUT",
            "/api/subscriptions/bad",
            true,
            r#"{"levels":"x"}"#,
        )
        .await;
        assert!(
            bad.starts_with("HTTP/1.1 400") && bad.contains("invalid type"),
            "{bad}"
        );
        let feed = send(addr, "GET", "/api/subscriptions/nothing/events", true, "").await;
        assert!(feed.starts_with("HTTP/1.1 404"), "{feed}");
        let json = send(addr, "POST", "/api/reports", true, "{\"category\":").await;
        assert!(
            json.starts_with("HTTP/1.1 400") && json.contains("malformed_json"),
            "{json}"
        );
        let big = send(addr, "POST", "/api/reports", true, &" ".repeat(9000)).await;
        assert!(
            big.starts_with("HTTP/1.1 413") && big.contains("oversized"),
            "{big}"
        );
        let good = r#"{"category":"traffic","position":{"lat":56.1,"lon":10.2},"time":"2026-11-30T08:00:00Z","text":"queue"}"#;
        let unconnected = send(addr, "POST", "/api/reports", true, good).await;
        assert!(unconnected.starts_with("HTTP/1.1 503"), "{unconnected}");
        assert!(unconnected.contains("retry-after: 1"), "{unconnected}");
        let gone = send(addr, "DELETE", "/api/subscriptions/mine", true, "").await;
        assert!(gone.starts_with("HTTP/1.1 204"), "{gone}");
        task.abort();
    }

    #[test]
    fn tokens_in_urls_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Db+c%zz%4"), "a-b c%zz%4");
    }
}
