//! The MQTT edge's sections: `[mqtt]`, the broker Aqyl subscribes to and publishes on (and
//! [`MqttUrl`], its parsed URL), and `[outputs]`, the topics it publishes on. The connection
//! and the publisher are in `aqyl-mqtt`, which aqyl-core does not depend on, so the sections
//! stay here.

use super::Secret;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// `[mqtt]`: the broker Aqyl subscribes to and publishes on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port` (env `AQYL_MQTT_URL`).
    #[serde(default = "default_mqtt_url")]
    pub url: Spanned<String>,
    /// Client id; default `aqyl-<hostname>`. Keep it stable across restarts so the broker
    /// keeps the persistent session, and unique per running instance.
    pub client_id: Option<String>,
    /// User name (env `AQYL_MQTT_USERNAME`).
    pub username: Option<String>,
    /// Password (env `AQYL_MQTT_PASSWORD`).
    pub password: Option<Secret>,
    /// Keep-alive interval.
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub keep_alive: Duration,
    /// Start with a clean session (loses messages queued while Aqyl was away). Default false.
    #[serde(default)]
    pub clean_session: bool,
    /// Prefix added to every ingest subscription, e.g. `$share/aqyl/` to spread the load over
    /// several instances with MQTT shared subscriptions.
    #[serde(default)]
    pub subscription_prefix: String,
    /// Longest wait between reconnect attempts (backoff doubles from 100 ms up to this).
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub max_reconnect_backoff: Duration,
}

fn default_mqtt_url() -> Spanned<String> {
    Spanned::new(0..0, "mqtt://127.0.0.1:1883".into())
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: default_mqtt_url(),
            client_id: None,
            username: None,
            password: None,
            keep_alive: default_keep_alive(),
            clean_session: false,
            subscription_prefix: String::new(),
            max_reconnect_backoff: default_max_backoff(),
        }
    }
}

/// A parsed MQTT broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS requested (`mqtts://`).
    pub tls: bool,
}

impl MqttUrl {
    /// Parses `mqtt://host[:port]`, `tcp://…` or `mqtts://…`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("broker URL {url:?} has no scheme; write it like mqtt://127.0.0.1:1883")
        })?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(format!(
                    "broker URL scheme {other:?} is not supported; use mqtt:// or mqtts://"
                ))
            }
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.contains('@') {
            return Err("put MQTT credentials in mqtt.username/mqtt.password (or AQYL_MQTT_USERNAME/AQYL_MQTT_PASSWORD), not in the URL".into());
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("broker URL {url:?} has an invalid port {p:?}"))?,
            ),
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("broker URL {url:?} has no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// `[outputs]`: MQTT topics Aqyl publishes on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// Prefix of every output topic (`aqyl` → `aqyl/deadletter/traffic`).
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Also publish every closed window as JSON on
    /// `<prefix>/aggregates/<sensor_type>/<subject>` (QoS 1), for live dashboards.
    #[serde(default)]
    pub aggregates: bool,
}

fn default_prefix() -> String {
    "aqyl".into()
}

impl Default for OutputsConfig {
    fn default() -> Self {
        Self {
            topic_prefix: default_prefix(),
            aggregates: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            MqttUrl::parse("mqtt://127.0.0.1:1883").unwrap(),
            MqttUrl {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(MqttUrl::parse("mqtts://broker").unwrap().port, 8883);
    }
}
