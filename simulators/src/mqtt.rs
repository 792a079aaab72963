//! The MQTT edge: broker addresses, and publisher and subscriber connections, each with one
//! task that owns the rumqttc event loop.
//!
//! An error after the first connection is logged and polling continues with backoff (that is
//! how rumqttc reconnects); an error before the first ConnAck fails the connect call, so a
//! wrong address is reported at once instead of retried forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

use aqyl_connect::Connector;
/// A password that never prints (shared with the service's configuration).
pub use aqyl_core::config::Secret;
use aqyl_core::config::{BrokerSettings, FileSetting, MqttUrl};

/// Where and how to connect: the broker's address, TLS and credentials, built by the same
/// code as the service's connections (`aqyl-connect`).
#[derive(Debug, Clone)]
pub struct Broker {
    connector: Connector,
}

/// TLS files for `mqtts://`, as the flags name them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    /// CA certificates to trust instead of the system's (`--ca-file`).
    pub ca_file: Option<FileSetting>,
    /// Client certificate for mutual TLS (`--client-cert`).
    pub client_cert: Option<FileSetting>,
    /// Its private key (`--client-key`).
    pub client_key: Option<FileSetting>,
}

impl Broker {
    /// Parses `mqtt://host[:port]` (or `tcp://`, default port 1883) or `mqtts://host[:port]`
    /// (or `ssl://`, default port 8883; the system's CA certificates are trusted).
    pub fn from_url(
        url: &str,
        username: Option<String>,
        password: Option<Secret>,
    ) -> Result<Broker> {
        Self::with_tls(url, username, password, TlsFiles::default())
    }

    /// [`Broker::from_url`] with TLS files; every file is read and checked here.
    pub fn with_tls(
        url: &str,
        username: Option<String>,
        password: Option<Secret>,
        tls: TlsFiles,
    ) -> Result<Broker> {
        let url = MqttUrl::parse(url).map_err(|e| {
            Error::Invalid(e.replace(
                "mqtt.username/mqtt.password (or AQYL_MQTT_USERNAME/AQYL_MQTT_PASSWORD)",
                "--username/--password",
            ))
        })?;
        let settings = BrokerSettings {
            url,
            username,
            password,
            ca_file: tls.ca_file,
            client_cert: tls.client_cert,
            client_key: tls.client_key,
        };
        if settings.username.is_some() != settings.password.is_some() {
            return Err(Error::Invalid(
                "username and password must both be set or both be absent (--username with --password or --password-file)".into(),
            ));
        }
        let connector = Connector::new(&settings).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Broker { connector })
    }

    /// Host name or address.
    pub fn host(&self) -> &str {
        &self.connector.settings().url.host
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.connector.settings().url.port
    }

    /// rumqttc options for a connection named `client_id`.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = self.connector.options(client_id);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_clean_session(true);
        o.set_inflight(1000);
        o
    }
}

/// A client id unique to this process: `aqyl-sim-<role>-<pid>-<n>`.
pub fn client_id(role: &str, n: usize) -> String {
    format!("aqyl-sim-{role}-{}-{n}", std::process::id())
}

/// Parses `0` or `1` into a QoS.
pub fn qos(level: u8) -> Result<QoS> {
    match level {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(Error::Invalid(format!(
            "QoS must be 0, 1 or 2, not {level}"
        ))),
    }
}

#[derive(Debug, Default)]
struct Counters {
    acked: AtomicU64,
    subacks: AtomicU64,
    closing: AtomicBool,
}

type Handler = Box<dyn FnMut(Publish) + Send>;

async fn drive(
    connector: Connector,
    mut el: EventLoop,
    client: AsyncClient,
    counters: Arc<Counters>,
    mut connected: Option<oneshot::Sender<std::result::Result<(), String>>>,
    subscriptions: Vec<(String, QoS)>,
    mut handler: Option<Handler>,
) {
    let mut backoff = aqyl_core::backoff::Backoff::new(Duration::from_secs(5));
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(h) = handler.as_mut() {
                    h(p);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                for (filter, q) in &subscriptions {
                    // The event loop is this task: never await on the request channel here.
                    if let Err(e) = client.try_subscribe(filter.clone(), *q) {
                        tracing::warn!(%filter, error = %e, "Could not subscribe.");
                    }
                }
                if let Some(tx) = connected.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                counters.subacks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(Err(connector.explain(&e)));
                    return;
                }
                if counters.closing.load(Ordering::Relaxed) {
                    break;
                }
                tracing::warn!(error = %connector.explain(&e), "MQTT connection failed; retrying.");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

/// One connection with its event-loop task.
#[derive(Debug)]
pub struct Connection {
    client: AsyncClient,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
    published: AtomicU64,
    qos: QoS,
    subscriptions: u64,
}

impl Connection {
    async fn open(
        broker: &Broker,
        id: &str,
        qos: QoS,
        queue: usize,
        subscriptions: Vec<(String, QoS)>,
        handler: Option<Handler>,
    ) -> Result<Self> {
        let (client, el) = AsyncClient::new(broker.options(id), queue);
        let counters = Arc::new(Counters::default());
        let (tx, rx) = oneshot::channel();
        let n = subscriptions.len() as u64;
        let task = tokio::spawn(drive(
            broker.connector.clone(),
            el,
            client.clone(),
            counters.clone(),
            Some(tx),
            subscriptions,
            handler,
        ));
        let addr = broker.connector.address();
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(Error::Mqtt(e)),
            Ok(Err(_)) | Err(_) => {
                task.abort();
                return Err(Error::Mqtt(format!(
                    "no answer from the broker at {addr} within 10 s"
                )));
            }
        }
        Ok(Self {
            client,
            counters,
            task,
            published: AtomicU64::new(0),
            qos,
            subscriptions: n,
        })
    }

    /// Connects a publisher that sends at `qos`. `queue` bounds the client's request queue:
    /// [`Connection::publish`] waits while it is full, so a small queue keeps `sent_at` close
    /// to the moment a message reaches the socket.
    pub async fn publisher(broker: &Broker, id: &str, qos: QoS, queue: usize) -> Result<Self> {
        Self::open(broker, id, qos, queue.max(1), Vec::new(), None).await
    }

    /// Connects a subscriber to `filters`, handing every message to `handler` on the
    /// event-loop task; returns once the broker has acknowledged every subscription.
    pub async fn subscriber(
        broker: &Broker,
        id: &str,
        qos: QoS,
        filters: &[String],
        handler: impl FnMut(Publish) + Send + 'static,
    ) -> Result<Self> {
        let subs = filters.iter().map(|f| (f.clone(), qos)).collect();
        let conn = Self::open(broker, id, qos, 64, subs, Some(Box::new(handler))).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while conn.counters.subacks.load(Ordering::Relaxed) < conn.subscriptions {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Mqtt(
                    "the broker did not acknowledge the subscriptions within 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(conn)
    }

    /// Queues one message (waits while the request queue is full).
    pub async fn publish(&self, topic: impl Into<String>, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, self.qos, false, payload)
            .await
            .map_err(|e| Error::Mqtt(format!("the connection is gone: {e}")))?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Messages queued so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// QoS 1 acknowledgements received so far.
    pub fn acked(&self) -> u64 {
        self.counters.acked.load(Ordering::Relaxed)
    }

    /// Waits until every QoS 1 message is acknowledged (up to `timeout`), then disconnects
    /// cleanly, which also flushes QoS 0 messages still in the queue. Returns the number of
    /// messages left unacknowledged.
    pub async fn close(self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        let published = self.published();
        if self.qos != QoS::AtMostOnce {
            while self.acked() < published && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.counters.closing.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect().await;
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        if self.qos == QoS::AtMostOnce {
            0
        } else {
            published.saturating_sub(self.counters.acked.load(Ordering::Relaxed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() -> Result<()> {
        let b = Broker::from_url("mqtt://127.0.0.1:1884", None, None)?;
        assert_eq!((b.host(), b.port()), ("127.0.0.1", 1884));
        assert_eq!(
            Broker::from_url("mqtt://localhost", None, None)?.port(),
            1883
        );
        assert_eq!(
            Broker::from_url("mqtt://[::1]:1885", None, None)?.host(),
            "::1"
        );
        let missing = TlsFiles {
            ca_file: Some(FileSetting::given("--ca-file", "/nonexistent/ca.pem")),
            ..TlsFiles::default()
        };
        let err = Broker::with_tls("mqtts://h", None, None, missing.clone()).unwrap_err();
        assert!(
            err.to_string()
                .contains("--ca-file (/nonexistent/ca.pem): cannot read it"),
            "{err}"
        );
        let plain = Broker::with_tls("mqtt://h", None, None, missing).unwrap_err();
        assert!(plain.to_string().contains("use mqtts://"), "{plain}");
        assert!(Broker::from_url("127.0.0.1:1883", None, None).is_err());
        assert!(Broker::from_url("mqtt://h", Some("u".into()), None).is_err());
        let b = Broker::from_url("mqtt://h", Some("u".into()), Some(Secret::new("hunter2")))?;
        assert!(!format!("{b:?}").contains("hunter2"));
        Ok(())
    }
}
