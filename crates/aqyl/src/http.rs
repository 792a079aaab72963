//! A minimal HTTP endpoint: `GET /metrics` (Prometheus text format) and `GET /health`.
//! Hand-written over a TCP listener because it serves two fixed plain-text responses; a web
//! framework would add more build time than code it saves.

use anyhow::Context;
use aqyl_core::metrics::Metrics;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Binds `addr` and serves until the returned task is aborted.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (http.addr / AQYL_HTTP_ADDR); is the port in use?")
    })?;
    tracing::info!(%addr, "Serving /metrics and /health.");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/metrics" => ("200 OK", metrics.render_prometheus()),
                    "/health" => ("200 OK", "ok\n".to_string()),
                    _ => ("404 Not Found", "try /metrics or /health\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    }))
}
