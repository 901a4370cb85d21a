//! JWT verification: username = user id, password = token.

use crate::config::{AuthConfig, JwtAlgorithm};
use crate::store::valid_id;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who is connected. Anonymous connections (when allowed) have no user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// Token expiry, seconds since the epoch.
    pub expires_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("token invalid")]
    BadToken,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("username does not match the token subject")]
    SubjectMismatch,
    #[error("user id is not valid")]
    BadUserId,
}

impl AuthError {
    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::BadToken => "bad_token",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::SubjectMismatch => "subject_mismatch",
            AuthError::BadUserId => "bad_user_id",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
    #[error("{0}")]
    Missing(&'static str),
}

/// Verifies tokens with one pinned algorithm and key.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// The configured key material: the HS* secret, or the PEM file at `pem` (named in errors
/// as `pem_key`).
enum Material {
    Secret(Vec<u8>),
    Pem(Vec<u8>),
}

fn material(
    cfg: &AuthConfig,
    pem: Option<&std::path::Path>,
    pem_key: &'static str,
) -> Result<Material, KeyError> {
    match cfg.algorithm {
        JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => {
            let secret = cfg
                .secret
                .as_deref()
                .ok_or(KeyError::Missing("auth.secret"))?;
            Ok(Material::Secret(secret.as_bytes().to_vec()))
        }
        _ => {
            let path = pem.ok_or(KeyError::Missing(pem_key))?;
            std::fs::read(path)
                .map(Material::Pem)
                .map_err(|source| KeyError::Read {
                    path: path.display().to_string(),
                    source,
                })
        }
    }
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, KeyError> {
        let alg = algorithm(cfg.algorithm);
        let source = material(cfg, cfg.public_key_file.as_deref(), "auth.public_key_file")?;
        let key = match (source, cfg.algorithm) {
            (Material::Secret(s), _) => DecodingKey::from_secret(&s),
            (Material::Pem(pem), JwtAlgorithm::RS256) => DecodingKey::from_rsa_pem(&pem)?,
            (Material::Pem(pem), JwtAlgorithm::ES256) => DecodingKey::from_ec_pem(&pem)?,
            (Material::Pem(pem), _) => DecodingKey::from_ed_pem(&pem)?,
        };
        // `Validation::new` pins the algorithm: a token whose header names any other
        // algorithm (including `none`) is refused before its signature is looked at.
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        // A configured issuer/audience must be present, not just right when present.
        let mut required = vec!["exp", "sub"];
        required.extend(cfg.issuer.as_ref().map(|_| "iss"));
        required.extend(cfg.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Authenticator { key, validation })
    }

    /// Checks `token` for `username`. An empty username takes the token's subject.
    pub fn verify(&self, username: &str, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::BadToken,
            },
        )?;
        let claims = data.claims;
        if !username.is_empty() && username != claims.sub {
            return Err(AuthError::SubjectMismatch);
        }
        if !valid_id(&claims.sub) {
            return Err(AuthError::BadUserId);
        }
        Ok(Identity {
            user: claims.sub,
            expires_at: claims.exp,
        })
    }
}

/// Mints a token for `user` (the `chatmq token` command and tests).
pub fn mint(cfg: &AuthConfig, user: &str, ttl: Duration) -> Result<String, KeyError> {
    let now = unix_now();
    let claims = Claims {
        sub: user.to_owned(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
        iss: cfg.issuer.clone(),
        aud: cfg.audience.clone(),
    };
    let alg = algorithm(cfg.algorithm);
    let source = material(
        cfg,
        cfg.private_key_file.as_deref(),
        "auth.private_key_file (needed to mint tokens with an asymmetric algorithm)",
    )?;
    let key = match (source, cfg.algorithm) {
        (Material::Secret(s), _) => EncodingKey::from_secret(&s),
        (Material::Pem(pem), JwtAlgorithm::RS256) => EncodingKey::from_rsa_pem(&pem)?,
        (Material::Pem(pem), JwtAlgorithm::ES256) => EncodingKey::from_ec_pem(&pem)?,
        (Material::Pem(pem), _) => EncodingKey::from_ed_pem(&pem)?,
    };
    Ok(jsonwebtoken::encode(&Header::new(alg), &claims, &key)?)
}

pub use crate::clock::unix_now;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig {
            secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..AuthConfig::default()
        }
    }

    fn sign(claims: &serde_json::Value, secret: &str, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    #[test]
    fn accepts_a_minted_token() {
        let c = cfg();
        let auth = Authenticator::new(&c).expect("auth");
        let t = mint(&c, "alice", Duration::from_secs(60)).expect("mint");
        assert_eq!(auth.verify("alice", &t).map(|i| i.user), Ok("alice".into()));
        // An empty username takes the subject.
        assert_eq!(auth.verify("", &t).map(|i| i.user), Ok("alice".into()));
    }

    #[test]
    fn refuses_bad_tokens() {
        let c = cfg();
        let auth = Authenticator::new(&c).expect("auth");
        let secret = c.secret.clone().unwrap_or_default();
        let exp = unix_now() + 60;
        let good = serde_json::json!({"sub": "alice", "exp": exp});
        assert_eq!(
            auth.verify("bob", &sign(&good, &secret, Algorithm::HS256)),
            Err(AuthError::SubjectMismatch)
        );
        assert_eq!(
            auth.verify(
                "alice",
                &sign(&good, "another-secret-another-secret", Algorithm::HS256)
            ),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            auth.verify("alice", &sign(&good, &secret, Algorithm::HS512)),
            Err(AuthError::BadToken)
        );
        let expired = serde_json::json!({"sub": "alice", "exp": unix_now() - 3600});
        assert_eq!(
            auth.verify("alice", &sign(&expired, &secret, Algorithm::HS256)),
            Err(AuthError::Expired)
        );
        let no_exp = serde_json::json!({"sub": "alice"});
        assert_eq!(
            auth.verify("alice", &sign(&no_exp, &secret, Algorithm::HS256)),
            Err(AuthError::BadToken)
        );
        let future = serde_json::json!({"sub": "alice", "exp": exp, "nbf": unix_now() + 3600});
        assert_eq!(
            auth.verify("alice", &sign(&future, &secret, Algorithm::HS256)),
            Err(AuthError::NotYetValid)
        );
        let bad_sub = serde_json::json!({"sub": "al/ice", "exp": exp});
        assert_eq!(
            auth.verify("", &sign(&bad_sub, &secret, Algorithm::HS256)),
            Err(AuthError::BadUserId)
        );
        assert_eq!(auth.verify("alice", "not.a.jwt"), Err(AuthError::BadToken));
        assert_eq!(auth.verify("alice", ""), Err(AuthError::Missing));
    }

    #[test]
    fn refuses_alg_none() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let auth = Authenticator::new(&cfg()).expect("auth");
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, unix_now() + 60));
        assert_eq!(
            auth.verify("alice", &format!("{header}.{body}.")),
            Err(AuthError::BadToken)
        );
    }

    #[test]
    fn es256_with_pem_keys() {
        let dir = tempfile::tempdir().expect("dir");
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let (public, private) = (dir.path().join("pub.pem"), dir.path().join("key.pem"));
        std::fs::write(&public, pair.public_key_pem()).expect("write");
        std::fs::write(&private, pair.serialize_pem()).expect("write");
        let c = AuthConfig {
            algorithm: JwtAlgorithm::ES256,
            public_key_file: Some(public),
            private_key_file: Some(private),
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(&c).expect("auth");
        let t = mint(&c, "alice", Duration::from_secs(60)).expect("mint");
        assert_eq!(auth.verify("alice", &t).map(|i| i.user), Ok("alice".into()));
        // An HS256 token signed with anything is refused: the algorithm is pinned.
        let hs = sign(
            &serde_json::json!({"sub": "alice", "exp": unix_now() + 60}),
            "x",
            Algorithm::HS256,
        );
        assert_eq!(auth.verify("alice", &hs), Err(AuthError::BadToken));
        // A missing key file is named.
        let broken = AuthConfig {
            public_key_file: Some(dir.path().join("nope.pem")),
            ..c
        };
        assert!(matches!(
            Authenticator::new(&broken),
            Err(KeyError::Read { .. })
        ));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut c = cfg();
        c.issuer = Some("chatmq-test".into());
        c.audience = Some("mobile".into());
        let auth = Authenticator::new(&c).expect("auth");
        let t = mint(&c, "alice", Duration::from_secs(60)).expect("mint");
        assert!(auth.verify("alice", &t).is_ok());
        let other = mint(&cfg(), "alice", Duration::from_secs(60)).expect("mint");
        assert_eq!(auth.verify("alice", &other), Err(AuthError::BadToken));
    }
}
