//! The MQTT edge's sections: `[mqtt]`, the broker Aqyl subscribes to and publishes on (and
//! [`MqttUrl`], its parsed URL), and `[outputs]`, the topics it publishes on. The connection
//! and the publisher are in `aqyl-mqtt`, which aqyl-core does not depend on, so the sections
//! stay here.

use super::{FileSetting, Secret};
use crate::error::{ConfigError, ConfigErrors};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// `[mqtt]`: the broker Aqyl subscribes to and publishes on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port`, or `mqtts://host:port` for TLS (env `AQYL_MQTT_URL`).
    #[serde(default = "default_mqtt_url")]
    pub url: Spanned<String>,
    /// Client id; default `aqyl-<hostname>`. Keep it stable across restarts so the broker
    /// keeps the persistent session, and unique per running instance.
    pub client_id: Option<String>,
    /// User name (env `AQYL_MQTT_USERNAME`).
    pub username: Option<String>,
    /// Password (env `AQYL_MQTT_PASSWORD`).
    pub password: Option<Secret>,
    /// A file holding the password (a container secret), instead of `password`; a trailing
    /// line ending is not part of it (env `AQYL_MQTT_PASSWORD_FILE`).
    pub password_file: Option<FileSetting>,
    /// PEM file of the CA certificate(s) that signed the broker's certificate, for
    /// `mqtts://`; only these are trusted then. Without it the system's roots are (env
    /// `AQYL_MQTT_CA_FILE`).
    pub ca_file: Option<FileSetting>,
    /// PEM file of this client's certificate (chain), for brokers that require one (mutual
    /// TLS); with `client_key` (env `AQYL_MQTT_CLIENT_CERT`).
    pub client_cert: Option<FileSetting>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1) (env
    /// `AQYL_MQTT_CLIENT_KEY`).
    pub client_key: Option<FileSetting>,
    /// Keep-alive interval.
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub keep_alive: Duration,
    /// Start with a clean session (loses messages queued while Aqyl was away). Default false.
    #[serde(default)]
    pub clean_session: bool,
    /// Prefix added to every ingest subscription (a topic namespace). Not `$share/...`:
    /// instances sharing a subscription would each see part of every sensor's readings; a
    /// cluster (`[cluster]`) spreads the load and keeps every sensor whole.
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
            password_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
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

impl MqttConfig {
    /// How to reach and log into the broker, the password read from `password_file` when
    /// set. Every problem is named with its setting; `config` is the configuration file.
    pub fn broker(&self, config: &Path) -> Result<BrokerSettings, ConfigErrors> {
        let url = MqttUrl::parse(self.url.get_ref())
            .map_err(|e| ConfigError::file(config, format!("mqtt.url: {e}")))?;
        let mut errors = Vec::new();
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(file)) => {
                errors.push(file.error(config, "set as well as a password (mqtt.password or AQYL_MQTT_PASSWORD); keep one of them"));
                None
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(file)) => match super::file_setting::read_secret(file) {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(file.error(config, e));
                    None
                }
            },
            (None, None) => None,
        };
        let broker = BrokerSettings {
            url,
            username: self.username.clone(),
            password,
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        };
        if errors.is_empty() {
            for (setting, message) in broker.problems() {
                errors.push(match setting {
                    Some(s) => s.error(config, message),
                    None => ConfigError::file(config, message),
                });
            }
        }
        if errors.is_empty() {
            Ok(broker)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// How to reach and log into the broker: what every command that talks to it needs, the
/// password already read from its file. Built from `[mqtt]` ([`MqttConfig::broker`]) or from
/// a command's flags (`aqyl-sim`); `aqyl-connect` turns it into client options.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSettings {
    /// Where.
    pub url: MqttUrl,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// CA certificates to trust instead of the system's (TLS only).
    pub ca_file: Option<FileSetting>,
    /// Client certificate (mutual TLS).
    pub client_cert: Option<FileSetting>,
    /// Its private key.
    pub client_key: Option<FileSetting>,
}

impl BrokerSettings {
    /// Settings that contradict each other, each with the file setting it concerns (if any)
    /// and what to do. Files are not read here.
    pub fn problems(&self) -> Vec<(Option<&FileSetting>, String)> {
        let mut out = Vec::new();
        if !self.url.tls {
            for s in [&self.ca_file, &self.client_cert, &self.client_key]
                .into_iter()
                .flatten()
            {
                out.push((
                    Some(s),
                    format!(
                        "set, but the broker URL is plain mqtt://{}:{}, not TLS: use mqtts:// (port 8883 by default) or remove the TLS settings",
                        self.url.host, self.url.port
                    ),
                ));
            }
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), None) => out.push((
                Some(cert),
                "needs its private key too: set mqtt.client_key (AQYL_MQTT_CLIENT_KEY, aqyl-sim --client-key)".into(),
            )),
            (None, Some(key)) => out.push((
                Some(key),
                "needs its certificate too: set mqtt.client_cert (AQYL_MQTT_CLIENT_CERT, aqyl-sim --client-cert)".into(),
            )),
            _ => {}
        }
        if self.username.is_some() != self.password.is_some() {
            out.push((
                None,
                "the MQTT user name and password must both be set or both be absent (mqtt.username with mqtt.password or mqtt.password_file, or AQYL_MQTT_USERNAME with AQYL_MQTT_PASSWORD or AQYL_MQTT_PASSWORD_FILE)".into(),
            ));
        }
        out
    }

    /// `mqtts://host:port`, for messages (no credentials).
    pub fn address(&self) -> String {
        let scheme = if self.url.tls { "mqtts" } else { "mqtt" };
        if self.url.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.url.host, self.url.port)
        } else {
            format!("{scheme}://{}:{}", self.url.host, self.url.port)
        }
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
