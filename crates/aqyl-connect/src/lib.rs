//! How Aqyl's commands reach the MQTT broker: one [`Connector`] turns the broker's settings
//! ([`BrokerSettings`], from `[mqtt]` or from `aqyl-sim`'s flags) into rumqttc client options
//! with the same transport and credentials for every connection: `aqyl run`'s ingest and
//! output connections, `aqyl events tail`, `aqyl quality` and the simulator.
//!
//! TLS (`mqtts://`) is rustls with the ring provider. The broker's certificate must chain to
//! the CA certificates in `ca_file` when it is set (then only those are trusted), otherwise to
//! the system's roots (`/etc/ssl/certs`, through `rustls-native-certs`), and must name the
//! URL's host (a DNS name, or an IP address in its subjectAltName). A client certificate and
//! key are presented when set (mutual TLS). The files are read and checked when the
//! [`Connector`] is built, so `aqyl check` and a start report a bad file at once, naming the
//! setting, instead of a connection that fails over and over.
//!
//! [`explain`] turns a failed connection into a sentence that says what to fix, and
//! [`is_permanent`] tells the failures that retrying cannot cure (a certificate that is not
//! trusted, credentials the broker refuses) from an unreachable broker.

use aqyl_core::config::{BrokerSettings, FileSetting};
use aqyl_core::error::ConfigError;
use rumqttc::tokio_rustls::rustls;
use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A setting that cannot be used: which one (when it names a file) and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The file setting at fault, if one is.
    pub setting: Option<FileSetting>,
    /// What is wrong and what to do.
    pub message: String,
}

impl SettingError {
    fn at(setting: &FileSetting, message: impl Into<String>) -> Self {
        Self {
            setting: Some(setting.clone()),
            message: message.into(),
        }
    }

    /// As a configuration error of the file `config`, at the line that named the setting.
    pub fn to_config_error(&self, config: &Path) -> ConfigError {
        match &self.setting {
            Some(s) => s.error(config, &self.message),
            None => ConfigError::file(config, &self.message),
        }
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.setting {
            Some(s) => write!(f, "{}: {}", s.describe(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SettingError {}

/// Everything needed to open connections to one broker: the transport (TLS configuration
/// built once) and the credentials. Its `Debug` shows the address only.
#[derive(Clone)]
pub struct Connector {
    broker: BrokerSettings,
    transport: Transport,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connector({})", self.broker.address())
    }
}

impl Connector {
    /// Reads and checks the TLS files (for `mqtts://`) and the settings' consistency.
    pub fn new(broker: &BrokerSettings) -> Result<Self, SettingError> {
        if let Some((setting, message)) = broker.problems().into_iter().next() {
            return Err(SettingError {
                setting: setting.cloned(),
                message,
            });
        }
        let transport = if broker.url.tls {
            Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls_config(broker)?)))
        } else {
            Transport::Tcp
        };
        Ok(Self {
            broker: broker.clone(),
            transport,
        })
    }

    /// Options for a connection named `client_id`: host, port, transport and credentials;
    /// the caller adds what its connection needs (keep-alive, session, packet sizes).
    pub fn options(&self, client_id: impl Into<String>) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, &self.broker.url.host, self.broker.url.port);
        options.set_transport(self.transport.clone());
        if let (Some(user), Some(password)) = (&self.broker.username, &self.broker.password) {
            options.set_credentials(user, password.expose());
        }
        options
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &BrokerSettings {
        &self.broker
    }

    /// `mqtts://host:port`, for messages.
    pub fn address(&self) -> String {
        self.broker.address()
    }

    /// [`explain`] for this broker.
    pub fn explain(&self, e: &ConnectionError) -> String {
        explain(e, &self.broker)
    }
}

/// The rustls configuration for `mqtts://`: the roots to trust and, for mutual TLS, the
/// client's certificate and key. Every file is read and parsed here.
pub fn tls_config(broker: &BrokerSettings) -> Result<ClientConfig, SettingError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingError {
            setting: None,
            message: format!("cannot set up TLS: {e}"),
        })?;
    let mut roots = RootCertStore::empty();
    match &broker.ca_file {
        Some(ca) => {
            let certs = certificates(ca)?;
            let total = certs.len();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(SettingError::at(
                    ca,
                    format!("none of its {total} certificate(s) can be parsed; point it at the PEM certificate of the CA that signed the broker's certificate"),
                ));
            }
        }
        None => {
            // The system's store, as curl, Go programs (Telegraf) and `mosquitto_sub
            // --tls-use-os-certs` use it.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(SettingError {
                    setting: None,
                    message: "mqtts:// needs CA certificates to check the broker's certificate, and the system has none (install the ca-certificates package), or set mqtt.ca_file / AQYL_MQTT_CA_FILE (aqyl-sim: --ca-file) to the PEM certificate of the CA that signed the broker's".into(),
                });
            }
        }
    }
    let builder = builder.with_root_certificates(roots);
    match (&broker.client_cert, &broker.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let private = private_key(key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| {
                    SettingError::at(
                        key,
                        format!("cannot be used with the client certificate ({e}); give the key of that certificate, RSA, ECDSA P-256/P-384 or Ed25519"),
                    )
                })
        }
        // (BrokerSettings::problems, checked first by Connector::new, says which is missing.)
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The PEM certificates in a file (at least one).
fn certificates(setting: &FileSetting) -> Result<Vec<CertificateDer<'static>>, SettingError> {
    let pem = setting.read().map_err(|e| SettingError::at(setting, e))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SettingError::at(setting, format!("is not a readable PEM file ({e})")))?;
    if certs.is_empty() {
        return Err(SettingError::at(
            setting,
            "holds no certificate (no -----BEGIN CERTIFICATE----- block); give a PEM certificate file",
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn private_key(setting: &FileSetting) -> Result<PrivateKeyDer<'static>, SettingError> {
    let pem = setting.read().map_err(|e| SettingError::at(setting, e))?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(SettingError::at(
            setting,
            "holds no private key (a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block, unencrypted)",
        )),
        Err(e) => Err(SettingError::at(
            setting,
            format!("is not a readable PEM file ({e})"),
        )),
    }
}

/// The TLS error inside a connection error, if there is one: rumqttc wraps it in its own
/// errors, in I/O errors (the handshake, a read after it), or in both.
fn rustls_error(e: &ConnectionError) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An I/O error's `source` skips the error it wraps.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
        }
        current = err.source();
    }
    None
}

/// Whether retrying cannot cure the failure: the broker's certificate is not trusted or does
/// not fit the host, the broker refuses this client's certificate, or it refuses the
/// credentials. (An unreachable or restarting broker is not permanent.)
pub fn is_permanent(e: &ConnectionError) -> bool {
    if let ConnectionError::ConnectionRefused(code) = e {
        return matches!(
            code,
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
        );
    }
    matches!(
        rustls_error(e),
        Some(rustls::Error::InvalidCertificate(_)) | Some(rustls::Error::AlertReceived(_))
    )
}

/// What went wrong connecting to `broker`, and what to do, in one sentence.
pub fn explain(e: &ConnectionError, broker: &BrokerSettings) -> String {
    let at = broker.address();
    let trusted = match &broker.ca_file {
        Some(ca) => format!("the CA certificate(s) in {}", ca.describe()),
        None => "the system's CA certificates (no mqtt.ca_file is set)".into(),
    };
    if let ConnectionError::ConnectionRefused(code) = e {
        return match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                let who = match &broker.username {
                    Some(u) => format!("user {u:?} with the configured password"),
                    None => "a client without user name and password".into(),
                };
                format!(
                    "the broker at {at} refused {who} ({code:?}): check mqtt.username and mqtt.password or mqtt.password_file (AQYL_MQTT_USERNAME, AQYL_MQTT_PASSWORD, AQYL_MQTT_PASSWORD_FILE) against the broker's password file and ACLs"
                )
            }
            other => format!("the broker at {at} refused the connection ({other:?})"),
        };
    }
    match rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            use rustls::CertificateError as C;
            let what = match c {
                C::UnknownIssuer | C::BadSignature => format!(
                    "the broker's certificate is not signed by {trusted}: set mqtt.ca_file / AQYL_MQTT_CA_FILE (aqyl-sim: --ca-file) to the CA that signed it"
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                    "the broker's certificate does not name the host {:?} of mqtt.url: connect with a host name (or IP address) that the certificate lists",
                    broker.url.host
                ),
                C::Expired | C::ExpiredContext { .. } => {
                    "the broker's certificate has expired: renew it on the broker".into()
                }
                _ => format!("the broker's certificate is not accepted (checked against {trusted})"),
            };
            format!("TLS to {at} failed: {what} ({c:?})")
        }
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "TLS to {at} failed: the broker refused the handshake ({alert:?}); if it requires client certificates, set mqtt.client_cert and mqtt.client_key to a certificate signed by a CA it trusts"
        ),
        Some(other) => format!("TLS to {at} failed: {other}"),
        None => format!("cannot connect to the broker at {at}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aqyl_core::config::{MqttUrl, Secret};

    fn settings(url: &str) -> BrokerSettings {
        BrokerSettings {
            url: MqttUrl::parse(url).unwrap(),
            username: Some("aqyl".into()),
            password: Some(Secret::new("pw-5e1d")),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }

    fn file(name: &str, path: &Path) -> Option<FileSetting> {
        Some(FileSetting::given(name, path))
    }

    fn error(b: &BrokerSettings) -> String {
        Connector::new(b).unwrap_err().to_string()
    }

    #[test]
    fn one_connector_gives_every_connection_the_same_address_transport_and_credentials() {
        let pki = aqyl_tests::Pki::generate();
        let mut b = settings("mqtts://127.0.0.1:8883");
        b.ca_file = file("mqtt.ca_file", &pki.ca);
        b.client_cert = file("mqtt.client_cert", &pki.client_cert);
        b.client_key = file("mqtt.client_key", &pki.client_key);
        let c = Connector::new(&b).unwrap();
        let o = c.options("aqyl-x");
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 8883));
        assert!(matches!(o.transport(), Transport::Tls(_)));
        assert_eq!(o.client_id(), "aqyl-x");
        let login = o.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("aqyl", "pw-5e1d")
        );
        assert_eq!(format!("{c:?}"), "Connector(mqtts://127.0.0.1:8883)");
        let plain = Connector::new(&settings("mqtt://[::1]:1884")).unwrap();
        assert!(matches!(plain.options("p").transport(), Transport::Tcp));
        assert_eq!(plain.address(), "mqtt://[::1]:1884");
    }

    #[test]
    fn unusable_tls_files_are_refused_naming_the_setting() {
        let pki = aqyl_tests::Pki::generate();
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM at all\n").unwrap();
        let mut b = settings("mqtts://127.0.0.1");

        b.ca_file = file("mqtt.ca_file", &dir.path().join("missing.pem"));
        let e = error(&b);
        assert!(
            e.starts_with("mqtt.ca_file (") && e.contains("cannot read it"),
            "{e}"
        );
        b.ca_file = file("mqtt.ca_file", &garbage);
        assert!(error(&b).contains("holds no certificate"), "{}", error(&b));
        // A key where the CA certificate should be.
        b.ca_file = file("AQYL_MQTT_CA_FILE", &pki.client_key);
        let e = error(&b);
        assert!(
            e.starts_with("AQYL_MQTT_CA_FILE (") && e.contains("holds no certificate"),
            "{e}"
        );

        b.ca_file = file("mqtt.ca_file", &pki.ca);
        b.client_cert = file("mqtt.client_cert", &pki.client_cert);
        let e = error(&b);
        assert!(e.contains("needs its private key too"), "{e}");
        // A certificate where the key should be.
        b.client_key = file("mqtt.client_key", &pki.client_cert);
        let e = error(&b);
        assert!(
            e.starts_with("mqtt.client_key (") && e.contains("holds no private key"),
            "{e}"
        );
        // The broker's key with the client's certificate.
        b.client_key = file("mqtt.client_key", &pki.server_key);
        let e = error(&b);
        assert!(
            e.starts_with("mqtt.client_key (")
                && e.contains("cannot be used with the client certificate"),
            "{e}"
        );
        b.client_key = file("mqtt.client_key", &pki.client_key);
        assert!(Connector::new(&b).is_ok());

        let mut plain = settings("mqtt://127.0.0.1");
        plain.ca_file = file("--ca-file", &pki.ca);
        let e = error(&plain);
        assert!(
            e.starts_with("--ca-file (") && e.contains("use mqtts://"),
            "{e}"
        );
    }

    #[test]
    fn refusals_that_retrying_cannot_cure_are_told_from_an_unreachable_broker() {
        let b = settings("mqtts://broker.city:8883");
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert!(is_permanent(&refused));
        let why = explain(&refused, &b);
        assert!(
            why.starts_with("the broker at mqtts://broker.city:8883 refused user \"aqyl\"")
                && !why.contains("pw-5e1d"),
            "{why}"
        );
        let untrusted = ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        assert!(is_permanent(&untrusted));
        let why = explain(&untrusted, &b);
        assert!(
            why.contains("is not signed by the system's CA certificates (no mqtt.ca_file is set)"),
            "{why}"
        );
        let down = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!is_permanent(&down));
        assert!(explain(&down, &b)
            .starts_with("cannot connect to the broker at mqtts://broker.city:8883"));
    }
}
