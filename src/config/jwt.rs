//! The keys that verify client JWTs (`jwt_secret`, `jwt_public_key`, `jwt_audience`,
//! `jwt_issuer`): parsed with the listener's config, used by admission.

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{invalid, ConfigError};

/// How far a JWT's `exp` may lie in the past, and its `nbf` in the future (clock skew between
/// the issuer and the provider).
pub const JWT_LEEWAY_SECS: u64 = 30;

/// A key that verifies client JWTs, and the algorithms it accepts.
#[derive(Clone)]
pub struct JwtKey {
    /// What the user gave (the secret or the PEM), for comparing settings.
    source: Arc<str>,
    key: DecodingKey,
    algorithm: Algorithm,
    /// `jwt_audience`: the `aud` a token must carry.
    audience: Option<String>,
    /// `jwt_issuer`: the `iss` a token must carry.
    issuer: Option<String>,
}

impl JwtKey {
    /// `jwt_secret`: HS256.
    pub fn secret(secret: &str) -> Result<Self, ConfigError> {
        if secret.len() < 16 {
            return Err(invalid(
                "jwt_secret",
                "",
                "shorter than 16 bytes: an HS256 secret that short can be guessed; use 32 random bytes or more",
            ));
        }
        Ok(JwtKey {
            source: secret.into(),
            key: DecodingKey::from_secret(secret.as_bytes()),
            algorithm: Algorithm::HS256,
            audience: None,
            issuer: None,
        })
    }

    /// `jwt_public_key`: an RSA key (RS256) or an EC P-256 key (ES256), PEM.
    pub fn public_key(pem: &str) -> Result<Self, ConfigError> {
        let (key, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            (key, Algorithm::ES256)
        } else {
            return Err(ConfigError {
                key: "jwt_public_key".into(),
                value: None,
                reason: "not a PEM public key of RSA (RS256) or EC P-256 (ES256) (expected a `-----BEGIN PUBLIC KEY-----` block)".into(),
            });
        };
        Ok(JwtKey {
            source: pem.into(),
            key,
            algorithm,
            audience: None,
            issuer: None,
        })
    }

    /// The `aud` and `iss` a token must carry (`jwt_audience`, `jwt_issuer`), when set.
    pub fn requiring(mut self, audience: Option<String>, issuer: Option<String>) -> Self {
        self.audience = audience;
        self.issuer = issuer;
        self
    }

    /// The token's claims, or why it is refused (words a client may be told).
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, String> {
        // The algorithm is the key's, never the token's header: `Validation::new` accepts that
        // one alone.
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => "the JWT has expired (exp)".to_string(),
                ErrorKind::InvalidSignature => "the JWT's signature does not verify".to_string(),
                ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)".to_string(),
                ErrorKind::InvalidAudience => {
                    "the JWT's audience (aud) is not `jwt_audience`".to_string()
                }
                ErrorKind::InvalidIssuer => {
                    "the JWT's issuer (iss) is not `jwt_issuer`".to_string()
                }
                ErrorKind::InvalidAlgorithm => format!(
                    "the JWT is not signed with {:?}, the algorithm of the listener's key",
                    self.algorithm
                ),
                ErrorKind::MissingRequiredClaim(claim) => {
                    format!("the JWT has no `{claim}` claim")
                }
                _ => format!("the JWT is not valid ({e})"),
            }
        })?;
        Ok(data.claims)
    }
}

impl PartialEq for JwtKey {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.audience == other.audience
            && self.issuer == other.issuer
    }
}

impl Eq for JwtKey {}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtKey({:?}, <redacted>)", self.algorithm)
    }
}

/// What the provider reads of a client's JWT.
#[derive(Deserialize)]
pub(crate) struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    /// The subject patterns the client may subscribe to and publish on.
    #[serde(default)]
    pub subjects: Option<Vec<String>>,
}
