//! A minimal HTTP endpoint: `GET /metrics` (Prometheus text format) and `GET /health` (`ok`,
//! or 503 with what cannot do its job, e.g. a sink whose spill cannot be written).
//!
//! With `http.token` (or `http.token_file`), `/metrics` answers only requests that carry
//! `Authorization: Bearer <token>` (401 otherwise); `/health` stays open, since it tells
//! nothing but whether Aqyl works and the probes of service managers and orchestrators send
//! no credentials.
//! Hand-written over a TCP listener because it serves two fixed plain-text responses; a web
//! framework would add more build time than code it saves.
//!
//! It must never hurt the service it reports on: at most [`MAX_CONNECTIONS`] connections are
//! served at once and further ones are closed as soon as they are accepted (so idle clients
//! can neither use up Aqyl's file descriptors nor queue a health check behind them for long),
//! a client gets [`IO_TIMEOUT`] to send its request and again to take the answer, and a failed
//! `accept` (out of file descriptors) backs off instead of spinning.

use anyhow::Context;
use aqyl_core::config::Secret;
use aqyl_core::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Time a client has to send its request, and again to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `addr` and serves until the returned task is aborted; with `token`, `/metrics`
/// requires it as a bearer token.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    token: Option<Secret>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (http.addr / AQYL_HTTP_ADDR); is the port in use?")
    })?;
    let loopback = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    if !loopback && token.is_none() {
        tracing::warn!(%addr, "/metrics is served beyond this machine without a token: set http.token or http.token_file (AQYL_HTTP_TOKEN, AQYL_HTTP_TOKEN_FILE), or listen on 127.0.0.1.");
    }
    tracing::info!(%addr, token = token.is_some(), "Serving /metrics and /health.");
    Ok(tokio::spawn(accept_loop(
        listener,
        metrics,
        token.map(Arc::new),
    )))
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, token: Option<Arc<Secret>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // all slots busy: closed at once (dropped), the client may retry
                };
                let metrics = metrics.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    answer(socket, &metrics, token.as_deref()).await;
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

/// Whether the request's headers carry `Authorization: Bearer <token>`. The comparison
/// takes as long wherever the first difference is.
fn authorized(request: &str, token: &Secret) -> bool {
    let given = request
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| {
            let value = value.trim();
            let (scheme, credentials) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| credentials.trim())
        });
    let Some(given) = given else { return false };
    let (a, b) = (given.as_bytes(), token.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn answer(mut socket: TcpStream, metrics: &Metrics, token: Option<&Secret>) {
    let mut buf = [0u8; 4096];
    let Ok(Ok(n)) = tokio::time::timeout(IO_TIMEOUT, socket.read(&mut buf)).await else {
        return; // an idle or slow client: its slot goes to the next one
    };
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let mut extra = "";
    let (status, body) = match path {
        "/metrics" if token.is_some_and(|t| !authorized(&request, t)) => {
            extra = "www-authenticate: Bearer realm=\"aqyl\"\r\n";
            (
                "401 Unauthorized",
                "/metrics needs the bearer token of http.token: send Authorization: Bearer <token>\n"
                    .to_string(),
            )
        }
        "/metrics" => ("200 OK", metrics.render_prometheus()),
        "/health" => match metrics.problems() {
            problems if problems.is_empty() => ("200 OK", "ok\n".to_string()),
            problems => ("503 Service Unavailable", problems.join("\n") + "\n"),
        },
        _ => ("404 Not Found", "try /metrics or /health\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(IO_TIMEOUT, socket.write_all(response.as_bytes())).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_answers_while_a_thousand_idle_connections_are_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(accept_loop(listener, Arc::new(Metrics::default()), None));
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

    async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{headers}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_need_the_bearer_token_and_health_stays_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = Some(Arc::new(Secret::new("s3cr3t-t0ken")));
        let task = tokio::spawn(accept_loop(listener, Arc::new(Metrics::default()), token));
        let none = get_with(addr, "/metrics", "").await;
        assert!(none.starts_with("HTTP/1.1 401 Unauthorized"), "{none}");
        assert!(none.contains("www-authenticate: Bearer"), "{none}");
        assert!(!none.contains("s3cr3t"), "the answer never shows the token");
        let wrong = get_with(addr, "/metrics", "Authorization: Bearer s3cr3t-t0keN\r\n").await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let basic = get_with(addr, "/metrics", "Authorization: Basic s3cr3t-t0ken\r\n").await;
        assert!(basic.starts_with("HTTP/1.1 401"), "{basic}");
        let right = get_with(addr, "/metrics", "authorization: bearer s3cr3t-t0ken\r\n").await;
        assert!(right.starts_with("HTTP/1.1 200 OK"), "{right}");
        assert!(right.contains("aqyl_received_total"), "{right}");
        let health = get_with(addr, "/health", "").await;
        assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
        task.abort();
    }
}
