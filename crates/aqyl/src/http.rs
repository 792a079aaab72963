//! A minimal HTTP endpoint: `GET /metrics` (Prometheus text format) and `GET /health` (`ok`,
//! or 503 with what cannot do its job, e.g. a sink whose spill cannot be written).
//! Hand-written over a TCP listener because it serves two fixed plain-text responses; a web
//! framework would add more build time than code it saves.
//!
//! It must never hurt the service it reports on: at most [`MAX_CONNECTIONS`] connections are
//! served at once and further ones are closed as soon as they are accepted (so idle clients
//! can neither use up Aqyl's file descriptors nor queue a health check behind them for long),
//! a client gets [`IO_TIMEOUT`] to send its request and again to take the answer, and a failed
//! `accept` (out of file descriptors) backs off instead of spinning.

use anyhow::Context;
use aqyl_core::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Time a client has to send its request, and again to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `addr` and serves until the returned task is aborted.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (http.addr / AQYL_HTTP_ADDR); is the port in use?")
    })?;
    tracing::info!(%addr, "Serving /metrics and /health.");
    Ok(tokio::spawn(accept_loop(listener, metrics)))
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // all slots busy: closed at once (dropped), the client may retry
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    answer(socket, &metrics).await;
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

async fn answer(mut socket: TcpStream, metrics: &Metrics) {
    let mut buf = [0u8; 1024];
    let Ok(Ok(n)) = tokio::time::timeout(IO_TIMEOUT, socket.read(&mut buf)).await else {
        return; // an idle or slow client: its slot goes to the next one
    };
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/metrics" => ("200 OK", metrics.render_prometheus()),
        "/health" => match metrics.problems() {
            problems if problems.is_empty() => ("200 OK", "ok\n".to_string()),
            problems => ("503 Service Unavailable", problems.join("\n") + "\n"),
        },
        _ => ("404 Not Found", "try /metrics or /health\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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
        let task = tokio::spawn(accept_loop(listener, Arc::new(Metrics::default())));
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
}
