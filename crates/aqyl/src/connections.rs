//! What the configuration says about reaching other services, built the one way every
//! command builds it: the broker's [`Connector`] (TLS files read and parsed, the password read
//! from its file), the HTTP endpoint's bearer token, and the store's client (URL and CA
//! file). `aqyl run` builds it before it starts anything; `aqyl check` builds it to validate
//! the configuration, so it refuses exactly what a start would refuse, with the line of the
//! setting at fault.

use aqyl_connect::Connector;
use aqyl_core::config::{Config, Loaded, Secret};
use aqyl_core::error::{ConfigError, ConfigErrors};
use std::path::Path;

/// The connections of one configuration.
#[derive(Debug, Clone)]
pub struct Connections {
    /// The broker (every MQTT connection of the command).
    pub broker: Connector,
    /// The token `GET /metrics` requires, if any.
    pub http_token: Option<Secret>,
}

/// Builds the connections of a loaded configuration, reporting every problem.
pub fn prepare(loaded: &Loaded) -> Result<Connections, ConfigErrors> {
    prepare_config(&loaded.config, &loaded.path)
}

/// [`prepare`] for a configuration read from `path` (which need not exist: the operator
/// commands run on the defaults and the environment).
pub fn prepare_config(cfg: &Config, path: &Path) -> Result<Connections, ConfigErrors> {
    let mut errors = Vec::new();
    let broker = match broker(cfg, path) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.extend(e.0);
            None
        }
    };
    let http_token = cfg.http.bearer_token(path).unwrap_or_else(|e| {
        errors.extend(e.0);
        None
    });
    if cfg.influx.enabled {
        let i = &cfg.influx;
        if let Err(e) = aqyl_sink::influx::client(&i.url, &i.org, &i.token, i.ca_file.as_ref()) {
            errors.push(match (&e, &i.ca_file) {
                (aqyl_sink::SinkError::InfluxCa { .. }, Some(ca)) => ConfigError {
                    file: path.to_path_buf(),
                    line: ca.line,
                    message: e.to_string(),
                },
                _ => ConfigError::file(path, e.to_string()),
            });
        }
    }
    match broker {
        Some(broker) if errors.is_empty() => Ok(Connections { broker, http_token }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// The broker's connector alone (for the operator commands).
pub fn broker(cfg: &Config, path: &Path) -> Result<Connector, ConfigErrors> {
    let settings = cfg.mqtt.broker(path)?;
    Connector::new(&settings).map_err(|e| e.to_config_error(path).into())
}

/// How `aqyl check` describes the connections: where, how protected, with which
/// credentials (never the secrets themselves).
pub fn describe(cfg: &Config, c: &Connections) -> String {
    let b = c.broker.settings();
    let mut out = format!("  broker: {}", b.address());
    if b.url.tls {
        out.push_str(&match &b.ca_file {
            Some(ca) => format!(", TLS trusting {}", ca.describe()),
            None => ", TLS trusting the system's CA certificates".into(),
        });
        if let Some(cert) = &b.client_cert {
            out.push_str(&format!(", client certificate {}", cert.describe()));
        }
    } else {
        out.push_str(", no TLS");
    }
    match (&b.username, &cfg.mqtt.password_file) {
        (Some(u), Some(f)) => {
            out.push_str(&format!(", user {u:?} (password from {})", f.describe()))
        }
        (Some(u), None) => out.push_str(&format!(", user {u:?} (password set)")),
        _ => out.push_str(", no user name"),
    }
    out.push('\n');
    if let Some(addr) = &cfg.http.addr {
        out.push_str(&format!(
            "  http: {addr}, /metrics {}, /health open\n",
            if c.http_token.is_some() {
                "needs the bearer token"
            } else {
                "open"
            }
        ));
    }
    let city = &cfg.city;
    out.push_str(&if !city.enabled {
        "  city: off (no /api/state, /v1.1 or state topics)\n".to_string()
    } else {
        format!(
            "  city: {} readings per sensor, at most {} sensors, state topics {}{}\n",
            city.observations,
            city.max_sensors,
            if city.state_interval.is_zero() {
                "off".to_string()
            } else {
                format!("every {}", aqyl_core::duration::label(city.state_interval))
            },
            if cfg.http.addr.is_some() {
                ", /api/state and /v1.1 (SensorThings) on http"
            } else {
                ""
            }
        )
    });
    if cfg.influx.enabled && cfg.influx.url.starts_with("https") {
        out.push_str(&match &cfg.influx.ca_file {
            Some(ca) => format!("  influx: TLS trusting {}\n", ca.describe()),
            None => "  influx: TLS trusting the client's built-in public roots\n".into(),
        });
    }
    out
}
