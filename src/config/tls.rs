//! TLS for `wss://` (and a `wss` listener's certificate, [`ServerTls`]): which servers are trusted, the client certificate for mutual TLS, and TLS
//! failures in words a user can act on.
//!
//! Trust is webpki-roots (Mozilla's root list, compiled into the binary, so the provider behaves
//! the same in a bare container as on a desktop) plus every root given in `tls_ca` (PEM text) and
//! `tls_ca_file` (a PEM file, read when the link is put). The server's certificate chain and name
//! are always verified: there is deliberately no setting that turns verification off.
//!
//! The rustls config is built once per link, when its settings are parsed, so a bad PEM refuses
//! the link at once and every reconnect reuses the same config.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use super::keys::{Key, Mode, Secret, Value};
use super::layers::Layers;
use super::{invalid, ConfigError};

/// The TLS keys: a dialling link's trust and client certificate, a `wss` listener's certificate.
#[rustfmt::skip]
pub(crate) const KEYS: &[Key] = &[
    Key::new("tls_ca", Mode::Dialling, Secret::Allowed, Value::Text),
    Key::new("tls_ca_file", Mode::Dialling, Secret::No, Value::Text),
    Key::new("tls_client_cert", Mode::Dialling, Secret::Allowed, Value::Text),
    Key::new("tls_client_key", Mode::Dialling, Secret::Preferred, Value::Text),
    Key::new("tls_cert", Mode::Listener, Secret::Allowed, Value::Text),
    Key::new("tls_key", Mode::Listener, Secret::Preferred, Value::Text),
];

/// The TLS settings of a session and the rustls config made of them. Two are equal when their
/// settings are (the config is derived from them).
#[derive(Clone)]
pub struct Tls {
    ca: Option<String>,
    /// The path given in `tls_ca_file` and the bytes read from it.
    ca_file: Option<(String, Vec<u8>)>,
    client_cert: Option<String>,
    client_key: Option<String>,
    config: Arc<ClientConfig>,
}

/// The settings as read from config and secrets, before anything is parsed.
#[derive(Default)]
pub struct TlsKeys {
    pub ca: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The config of every session without TLS settings of its own: built once.
static PLATFORM: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(webpki_roots())
            .with_no_client_auth(),
    )
});

fn refuse(key: &str, reason: impl Into<String>) -> ConfigError {
    // PEM text is never echoed: it is long, and a key is a secret.
    ConfigError {
        key: key.to_string(),
        value: None,
        reason: reason.into(),
    }
}

/// A PEM syntax error in words (the library's quotes bytes as numbers).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("a `-----BEGIN {label}-----` block has no `-----END {label}-----` line")
        }
        E::IllegalSectionStart { line } => format!(
            "malformed `-----BEGIN` line `{}`",
            String::from_utf8_lossy(line)
        ),
        E::Base64Decode(_) => "the content of a block is not base64".into(),
        other => other.to_string(),
    }
}

/// A name from a certificate as rustls reports it (`DnsName("a.example")`), without the wrapping.
fn plain_name(name: &str) -> &str {
    match (name.find('('), name.rfind(')')) {
        (Some(open), Some(close)) if open < close => name[open + 1..close].trim_matches('"'),
        _ => name,
    }
}

/// The certificates of a PEM text; `key` names the setting in errors.
fn certificates(key: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse(key, format!("not valid PEM ({})", pem_error(&e))))?;
    if certs.is_empty() {
        return Err(refuse(
            key,
            "no PEM certificate found (expected one or more `-----BEGIN CERTIFICATE-----` blocks)",
        ));
    }
    Ok(certs)
}

impl Tls {
    /// Parses the TLS settings and builds the rustls config; errors name the key at fault.
    pub fn new(keys: TlsKeys) -> Result<Self, ConfigError> {
        let TlsKeys {
            ca,
            ca_file,
            client_cert,
            client_key,
        } = keys;
        let ca_file = ca_file
            .map(|path| {
                std::fs::read(&path)
                    .map(|bytes| (path.clone(), bytes))
                    .map_err(|e| ConfigError {
                        key: "tls_ca_file".into(),
                        value: Some(path),
                        reason: format!("cannot read the file ({e})"),
                    })
            })
            .transpose()?;
        if ca.is_none() && ca_file.is_none() && client_cert.is_none() && client_key.is_none() {
            return Ok(Tls {
                ca,
                ca_file,
                client_cert,
                client_key,
                config: Arc::clone(&PLATFORM),
            });
        }

        let mut roots = webpki_roots();
        let extra = [
            ("tls_ca", ca.as_ref().map(|s| s.as_bytes())),
            ("tls_ca_file", ca_file.as_ref().map(|(_, b)| b.as_slice())),
        ];
        for (key, pem) in extra {
            let Some(pem) = pem else { continue };
            for (n, cert) in certificates(key, pem)?.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    refuse(
                        key,
                        format!("certificate {} is not a usable CA certificate ({e})", n + 1),
                    )
                })?;
            }
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots);
        let config = match (&client_cert, &client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(refuse(
                    "tls_client_key",
                    "not set, but `tls_client_cert` is: mutual TLS needs both",
                ))
            }
            (None, Some(_)) => {
                return Err(refuse(
                    "tls_client_cert",
                    "not set, but `tls_client_key` is: mutual TLS needs both",
                ))
            }
            (Some(cert), Some(key)) => {
                let chain = certificates("tls_client_cert", cert.as_bytes())?;
                // The PEM error is not shown: its details could quote part of the key.
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                    refuse(
                        "tls_client_key",
                        "not a PEM private key (expected a `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    refuse(
                        "tls_client_key",
                        match e {
                            rustls::Error::InconsistentKeys(_) => {
                                "does not belong to the certificate in `tls_client_cert`".into()
                            }
                            other => format!("cannot be used with `tls_client_cert` ({other})"),
                        },
                    )
                })?
            }
        };
        Ok(Tls {
            ca,
            ca_file,
            client_cert,
            client_key,
            config: Arc::new(config),
        })
    }

    /// The rustls config every connection of the session uses.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// Whether any TLS setting is given.
    pub fn is_set(&self) -> bool {
        !self.set_keys().is_empty()
    }

    /// The TLS keys that are set.
    pub fn set_keys(&self) -> Vec<&'static str> {
        [
            ("tls_ca", self.ca.is_some()),
            ("tls_ca_file", self.ca_file.is_some()),
            ("tls_client_cert", self.client_cert.is_some()),
            ("tls_client_key", self.client_key.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| key)
        .collect()
    }

    /// Whether a client certificate is configured (mutual TLS).
    pub fn has_client_cert(&self) -> bool {
        self.client_cert.is_some()
    }

    /// The TLS keys whose values differ between two sessions' settings.
    pub fn differing_keys(&self, other: &Self) -> Vec<&'static str> {
        [
            ("tls_ca", self.ca == other.ca),
            ("tls_ca_file", self.ca_file == other.ca_file),
            ("tls_client_cert", self.client_cert == other.client_cert),
            ("tls_client_key", self.client_key == other.client_key),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| key)
        .collect()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        self.differing_keys(other).is_empty()
    }
}

impl Eq for Tls {}

impl fmt::Debug for Tls {
    // By hand: the client key never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("tls_ca", &self.ca.as_ref().map(|_| "<PEM>"))
            .field("tls_ca_file", &self.ca_file.as_ref().map(|(path, _)| path))
            .field(
                "tls_client_cert",
                &self.client_cert.as_ref().map(|_| "<PEM>"),
            )
            .field(
                "tls_client_key",
                &self.client_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The certificate chain and key of a `wss` listener (`tls_cert`, `tls_key`) and the rustls
/// server config made of them, built when the link is put. Equal when the PEM texts are.
#[derive(Clone)]
pub struct ServerTls {
    cert: String,
    key: String,
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    pub fn new(cert: String, key: String) -> Result<Self, ConfigError> {
        let chain = certificates("tls_cert", cert.as_bytes())?;
        // The PEM error is not shown: its details could quote part of the key.
        let private = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
            refuse(
                "tls_key",
                "not a PEM private key (expected a `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
            )
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| {
                refuse(
                    "tls_key",
                    match e {
                        rustls::Error::InconsistentKeys(_) => {
                            "does not belong to the certificate in `tls_cert`".into()
                        }
                        other => format!("cannot be used with `tls_cert` ({other})"),
                    },
                )
            })?;
        // WebSocket is HTTP/1.1 here.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert,
            key,
            config: Arc::new(config),
        })
    }

    /// The rustls config every client connection of the listener uses.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key
    }
}

impl Eq for ServerTls {}

impl fmt::Debug for ServerTls {
    // By hand: the key never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("tls_cert", &"<PEM>")
            .field("tls_key", &"<redacted>")
            .finish()
    }
}

fn date(time: rustls::pki_types::UnixTime) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(time.as_secs())).to_string()
}

/// A TLS failure with `host` in words a user can act on. `client_cert` says whether the session
/// has a client certificate, which decides what a refused handshake most likely means.
pub fn explain(error: &rustls::Error, host: &str, client_cert: bool) -> String {
    use CertificateError as C;
    let detail = match error {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            C::UnknownIssuer => format!(
                "the certificate of {host} is not signed by a trusted CA (unknown issuer); for a server with a private CA, give that CA in `tls_ca` or `tls_ca_file`"
            ),
            C::NotValidForNameContext { presented, .. } => format!(
                "the certificate of the server is not valid for the name {host} (name mismatch; it is for {})",
                if presented.is_empty() {
                    "no name".to_string()
                } else {
                    presented.iter().map(|n| plain_name(n)).collect::<Vec<_>>().join(", ")
                }
            ),
            C::NotValidForName => format!(
                "the certificate of the server is not valid for the name {host} (name mismatch)"
            ),
            C::ExpiredContext { not_after, .. } => format!(
                "the certificate of {host} has expired (it was valid until {})",
                date(*not_after)
            ),
            C::Expired => format!("the certificate of {host} has expired"),
            C::NotValidYetContext { not_before, .. } => format!(
                "the certificate of {host} is not valid yet (it is valid from {})",
                date(*not_before)
            ),
            C::NotValidYet => format!("the certificate of {host} is not valid yet"),
            C::Revoked => format!("the certificate of {host} has been revoked"),
            other => format!("the certificate of {host} was rejected ({other:?})"),
        },
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure),
        ) if !client_cert => format!(
            "{host} refused the handshake ({alert:?}): it requires a client certificate; set `tls_client_cert` and `tls_client_key`"
        ),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied),
        ) if client_cert => format!(
            "{host} refused the client certificate of `tls_client_cert` ({alert:?}); check that the server trusts its CA"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("{host} ended the handshake with the alert {alert:?}")
        }
        other => format!("handshake with {host} failed ({other})"),
    };
    format!("TLS: {detail}")
}

impl Layers<'_> {
    /// A dialling link's trust roots and client certificate.
    pub(crate) fn client_tls(&self) -> Result<Tls, ConfigError> {
        Tls::new(TlsKeys {
            ca: self.value("tls_ca")?,
            ca_file: self.plain("tls_ca_file").map(str::to_string),
            client_cert: self.value("tls_client_cert")?,
            client_key: self.value("tls_client_key")?,
        })
    }

    /// A `wss` listener's certificate chain and key: both or neither.
    pub(crate) fn server_tls(&self) -> Result<Option<ServerTls>, ConfigError> {
        Ok(match (self.value("tls_cert")?, self.value("tls_key")?) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "tls_key",
                    "",
                    "not set, but `tls_cert` is: a wss listener needs both",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_cert",
                    "",
                    "not set, but `tls_key` is: a wss listener needs both",
                ))
            }
            (Some(cert), Some(key)) => Some(ServerTls::new(cert, key)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_settings_share_the_platform_config() {
        let a = Tls::new(TlsKeys::default()).unwrap();
        let b = Tls::new(TlsKeys::default()).unwrap();
        assert!(Arc::ptr_eq(&a.config, &b.config));
        assert!(!a.is_set());
    }

    #[test]
    fn bad_pem_names_the_key() {
        let err = Tls::new(TlsKeys {
            ca: Some("not a certificate".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "tls_ca");
        assert!(
            err.to_string().contains("no PEM certificate found"),
            "{err}"
        );

        let err = Tls::new(TlsKeys {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `tls_ca_file` '/nonexistent/ca.pem': cannot read the file (No such file or directory (os error 2))"
        );

        let err = Tls::new(TlsKeys {
            client_key: Some(
                "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n".into(),
            ),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "tls_client_cert");
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn debug_hides_the_key() {
        let tls = Tls {
            ca: None,
            ca_file: None,
            client_cert: Some("CERT".into()),
            client_key: Some("KEY-MATERIAL".into()),
            config: Arc::clone(&PLATFORM),
        };
        let debug = format!("{tls:?}");
        assert!(!debug.contains("KEY-MATERIAL"), "{debug}");
    }

    #[test]
    fn certificate_names_lose_their_wrapping() {
        assert_eq!(plain_name("DnsName(\"other.example\")"), "other.example");
        assert_eq!(plain_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(plain_name("bare.example"), "bare.example");
    }

    #[test]
    fn failures_are_explained() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "TLS: the certificate of h is not signed by a trusted CA (unknown issuer)",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "TLS: the certificate of the server is not valid for the name h (name mismatch)",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "TLS: the certificate of h has expired",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "TLS: h refused the handshake (CertificateRequired): it requires a client certificate",
            ),
        ];
        for (error, expected) in cases {
            let text = explain(&error, "h", false);
            assert!(text.starts_with(expected), "{text}");
        }
        let text = explain(
            &rustls::Error::AlertReceived(AlertDescription::UnknownCA),
            "h",
            true,
        );
        assert!(text.contains("refused the client certificate"), "{text}");
    }
}
