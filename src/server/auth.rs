//! Admission of a client before the upgrade: the path, the `Origin`, the listener's capacity,
//! and the client's credentials (`auth_token`, or a JWT checked with `jwt_secret` /
//! `jwt_public_key`). A refusal is an HTTP status with a short reason; it never carries the token.

use http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq as _;

use crate::config::ListenConfig;
use crate::server::subscriptions::Pattern;

/// Why a client was refused, by the counter it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Path,
    Origin,
    Full,
    Auth,
    Upgrade,
}

impl Refused {
    pub const ALL: [Refused; 5] = [
        Refused::Path,
        Refused::Origin,
        Refused::Full,
        Refused::Auth,
        Refused::Upgrade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Path => "path",
            Refused::Origin => "origin",
            Refused::Full => "full",
            Refused::Auth => "auth",
            Refused::Upgrade => "upgrade",
        }
    }
}

/// A refusal: the status, its counter, and the reason (logged and sent as the body).
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub why: Refused,
    pub reason: String,
}

fn refuse(status: StatusCode, why: Refused, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        why,
        reason: reason.into(),
    }
}

/// Who an admitted client is.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The JWT's `sub`.
    pub user: Option<String>,
    /// The JWT's `subjects`: what the client may subscribe to and publish on (none = anything).
    pub allowed: Option<Vec<Pattern>>,
}

/// Checks where an upgrade request goes and where it comes from: the path, then the `Origin`.
pub fn check_place(listen: &ListenConfig, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    if path != listen.path {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            Refused::Path,
            format!("no WebSocket endpoint at this path (it is {})", listen.path),
        ));
    }
    if listen.allowed_origins.is_empty() {
        return Ok(());
    }
    let origin = headers
        .get(http::header::ORIGIN)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match origin {
        Some(origin)
            if listen
                .allowed_origins
                .contains(&origin.trim_end_matches('/').to_ascii_lowercase()) =>
        {
            Ok(())
        }
        Some(origin) => Err(refuse(
            StatusCode::FORBIDDEN,
            Refused::Origin,
            format!(
                "the Origin {} is not in allowed_origins",
                crate::subjects::quoted(&origin)
            ),
        )),
        None => Err(refuse(
            StatusCode::FORBIDDEN,
            Refused::Origin,
            "no Origin header, and allowed_origins is set",
        )),
    }
}

/// Checks the client's credentials: `auth_token` (what clients must present, the link's
/// `auth_token`), or a JWT when the listener has a JWT key, or nothing when it has neither.
pub fn authenticate(
    listen: &ListenConfig,
    auth_token: Option<&str>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Admitted, Refusal> {
    if auth_token.is_none() && listen.jwt.is_none() {
        return Ok(Admitted::default());
    }
    let Some(presented) = presented_token(query, headers) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            Refused::Auth,
            "no token: send `Authorization: Bearer <token>`, the subprotocols `bearer, <token>`, or `?token=<token>`",
        ));
    };
    let Some(jwt) = &listen.jwt else {
        let expected = auth_token.unwrap_or_default();
        return if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(Admitted::default())
        } else {
            Err(refuse(
                StatusCode::UNAUTHORIZED,
                Refused::Auth,
                "the token is not the listener's auth_token",
            ))
        };
    };
    let claims = jwt
        .verify(&presented)
        .map_err(|reason| refuse(StatusCode::UNAUTHORIZED, Refused::Auth, reason))?;
    let allowed = claims
        .subjects
        .map(|patterns| {
            patterns
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|e| {
            refuse(
                StatusCode::UNAUTHORIZED,
                Refused::Auth,
                format!("the JWT's `subjects` claim holds a bad pattern: {e}"),
            )
        })?;
    Ok(Admitted {
        user: claims.sub,
        allowed,
    })
}

/// The subprotocol a client names before its token: `new WebSocket(url, ["bearer", token])`.
pub const BEARER_PROTOCOL: &str = "bearer";

/// The token offered as the subprotocol after [`BEARER_PROTOCOL`]
/// (`Sec-WebSocket-Protocol: bearer, <token>`); the listener answers with `bearer`.
pub fn subprotocol_token(headers: &HeaderMap) -> Option<String> {
    let mut offered = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    offered.find(|p| *p == BEARER_PROTOCOL)?;
    offered.next().map(str::to_string)
}

/// The token in `Authorization: Bearer`, else in the subprotocols, else in the query's `token`
/// (browsers cannot set headers on a WebSocket).
fn presented_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(token) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(token.trim().to_string());
    }
    if let Some(token) = subprotocol_token(headers) {
        return Some(token);
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::jwt::JwtKey;
    use jsonwebtoken::Algorithm;

    fn listen() -> ListenConfig {
        ListenConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            path: "/chat".into(),
            max_clients: 10,
            allowed_origins: vec!["https://chat.example.com".into()],
            jwt: None,
            client_queue_bytes: 1 << 20,
            client_rate_limit: 0,
            client_events: false,
            tls: None,
            history: None,
            presence: false,
            presence_events: false,
            client_publish: false,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn refuses_by_path_origin_and_token() {
        let l = listen();
        let good = headers(&[("origin", "https://chat.example.com/")]);
        assert_eq!(check_place(&l, "/", &good).unwrap_err().why, Refused::Path);
        let evil = headers(&[("origin", "https://evil.example.com")]);
        let refusal = check_place(&l, "/chat", &evil).unwrap_err();
        assert_eq!(refusal.status, StatusCode::FORBIDDEN);
        assert_eq!(
            refusal.reason,
            "the Origin \"https://evil.example.com\" is not in allowed_origins"
        );
        let long = format!("https://{}.example.com", "a".repeat(200));
        let reason = check_place(&l, "/chat", &headers(&[("origin", &long)]))
            .unwrap_err()
            .reason;
        assert!(reason.len() < 120, "{reason}");
        assert!(
            reason.contains("...") && !reason.contains(&long),
            "{reason}"
        );
        assert!(check_place(&l, "/chat", &good).is_ok());
        assert!(authenticate(&l, None, None, &good).is_ok());
        let refusal = authenticate(&l, Some("s3cret"), Some("token=nope"), &good).unwrap_err();
        assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
        assert!(!refusal.reason.contains("nope") && !refusal.reason.contains("s3cret"));
        assert!(authenticate(&l, Some("s3cret"), Some("a=1&token=s3cret"), &good).is_ok());
        let bearer = headers(&[("authorization", "Bearer s3cret")]);
        assert!(authenticate(&l, Some("s3cret"), None, &bearer).is_ok());
        let offered = headers(&[("sec-websocket-protocol", "bearer, s3cret")]);
        assert!(authenticate(&l, Some("s3cret"), None, &offered).is_ok());
        let unnamed = headers(&[("sec-websocket-protocol", "s3cret")]);
        assert!(authenticate(&l, Some("s3cret"), None, &unnamed).is_err());
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256(secret: &[u8], claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    #[test]
    fn jwts_are_checked_for_exp_nbf_aud_iss_with_the_leeway() {
        let secret = b"a-secret-of-thirty-two-bytes-xyz";
        let plain = JwtKey::secret(std::str::from_utf8(secret).unwrap()).unwrap();
        let strict = plain.clone().requiring(
            Some("chat.example.com".into()),
            Some("https://auth.example.com".into()),
        );
        let t = now();
        let verify = |key: &JwtKey, claims| key.verify(&hs256(secret, claims)).map(|_| ());
        let ok = serde_json::json!({"exp": t + 60});
        assert!(verify(&plain, ok.clone()).is_ok());
        // Within the leeway either side, and past it.
        assert!(verify(&plain, serde_json::json!({"exp": t - 20})).is_ok());
        assert_eq!(
            verify(&plain, serde_json::json!({"exp": t - 40})),
            Err("the JWT has expired (exp)".into())
        );
        assert!(verify(&plain, serde_json::json!({"exp": t + 60, "nbf": t + 20})).is_ok());
        assert_eq!(
            verify(&plain, serde_json::json!({"exp": t + 600, "nbf": t + 120})),
            Err("the JWT is not valid yet (nbf)".into())
        );
        assert_eq!(
            verify(&plain, serde_json::json!({"sub": "x"})),
            Err("the JWT has no `exp` claim".into())
        );
        let both = serde_json::json!({"exp": t + 60, "aud": "chat.example.com", "iss": "https://auth.example.com"});
        assert!(verify(&strict, both).is_ok());
        assert_eq!(
            verify(
                &strict,
                serde_json::json!({"exp": t + 60, "aud": "other", "iss": "https://auth.example.com"})
            ),
            Err("the JWT's audience (aud) is not `jwt_audience`".into())
        );
        assert_eq!(
            verify(
                &strict,
                serde_json::json!({"exp": t + 60, "aud": "chat.example.com", "iss": "https://evil.example.com"})
            ),
            Err("the JWT's issuer (iss) is not `jwt_issuer`".into())
        );
        assert_eq!(
            verify(
                &strict,
                serde_json::json!({"exp": t + 60, "iss": "https://auth.example.com"})
            ),
            Err("the JWT has no `aud` claim".into())
        );
        assert_eq!(
            verify(
                &strict,
                serde_json::json!({"exp": t + 60, "aud": "chat.example.com"})
            ),
            Err("the JWT has no `iss` claim".into())
        );
        assert!(verify(&strict, ok).is_err());
        assert_ne!(plain, strict, "aud and iss are part of the settings");
    }

    #[test]
    fn the_algorithm_is_the_keys_never_the_tokens() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = pair.public_key_pem();
        let key = JwtKey::public_key(&public).unwrap();
        // HS256 signed with the public key's PEM as the secret: the classic confusion.
        let forged = hs256(public.as_bytes(), serde_json::json!({"exp": now() + 60}));
        assert_eq!(
            key.verify(&forged).map(|_| ()),
            Err("the JWT is not signed with ES256, the algorithm of the listener's key".into())
        );
        // `alg: none`, no signature.
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"exp":{}}}"#, now() + 60))
        );
        let refused = key.verify(&none).map(|_| ()).unwrap_err();
        assert!(refused.starts_with("the JWT is not valid"), "{refused}");
    }

    #[test]
    fn an_rsa_key_takes_rs256_only() {
        // A key pair made for this test only (openssl genpkey -algorithm RSA).
        let public = include_str!("../../tests/fixtures/jwt-rsa-public.pem");
        let private = include_str!("../../tests/fixtures/jwt-rsa-private.pem");
        let key = JwtKey::public_key(public).unwrap();
        let claims = serde_json::json!({"sub": "ann", "exp": now() + 60});
        let signed = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::RS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(key.verify(&signed).unwrap().sub.as_deref(), Some("ann"));
        // HS256 with the RSA public key's PEM as the secret is refused.
        let forged = hs256(public.as_bytes(), claims);
        assert_eq!(
            key.verify(&forged).map(|_| ()),
            Err("the JWT is not signed with RS256, the algorithm of the listener's key".into())
        );
    }
}
