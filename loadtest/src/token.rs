//! Login tokens for chat users: minted here (HS256 from `--secret`) or printed by a command.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Where a user's password (a JWT) comes from.
pub enum TokenSource {
    Hs256 {
        key: EncodingKey,
        ttl_s: u64,
        iss: Option<String>,
        aud: Option<String>,
    },
    /// A shell command; `{user}` is replaced by the user id, stdout (trimmed) is the token.
    Command(String),
}

impl TokenSource {
    pub fn hs256(secret: &str, ttl_s: u64, iss: Option<String>, aud: Option<String>) -> Self {
        TokenSource::Hs256 {
            key: EncodingKey::from_secret(secret.as_bytes()),
            ttl_s,
            iss,
            aud,
        }
    }

    pub async fn token(&self, user: &str) -> anyhow::Result<String> {
        match self {
            TokenSource::Hs256 {
                key,
                ttl_s,
                iss,
                aud,
            } => mint(key, user, *ttl_s, iss.as_deref(), aud.as_deref()),
            TokenSource::Command(cmd) => run_command(cmd, user).await,
        }
    }
}

/// An HS256 token for `user`, valid for `ttl_s` seconds from now.
pub fn mint(
    key: &EncodingKey,
    user: &str,
    ttl_s: u64,
    iss: Option<&str>,
    aud: Option<&str>,
) -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs();
    let claims = Claims {
        sub: user,
        exp: now + ttl_s,
        iat: now,
        iss,
        aud,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).context("minting a token")
}

async fn run_command(template: &str, user: &str) -> anyhow::Result<String> {
    let cmd = template.replace("{user}", user);
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .output()
        .await
        .with_context(|| format!("running --token-cmd `{cmd}`"))?;
    if !out.status.success() {
        bail!(
            "--token-cmd `{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let token = String::from_utf8(out.stdout)
        .context("--token-cmd printed non-UTF-8")?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("--token-cmd `{cmd}` printed nothing");
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Back {
        sub: String,
        exp: u64,
        iss: String,
    }

    #[tokio::test]
    async fn minted_token_verifies_with_the_secret() {
        let src = TokenSource::hs256("s3cret", 60, Some("chatmq".into()), None);
        let t = src.token("alice").await.expect("mint");
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&["chatmq"]);
        let back = decode::<Back>(&t, &DecodingKey::from_secret(b"s3cret"), &v).expect("verify");
        assert_eq!(back.claims.sub, "alice");
        assert_eq!(back.claims.iss, "chatmq");
        assert!(back.claims.exp > 0);
        assert!(decode::<Back>(&t, &DecodingKey::from_secret(b"other"), &v).is_err());
    }

    #[tokio::test]
    async fn command_gets_the_user() {
        let src = TokenSource::Command("echo tok-{user}".into());
        assert_eq!(src.token("bob").await.expect("cmd"), "tok-bob");
        assert!(TokenSource::Command("false".into())
            .token("x")
            .await
            .is_err());
    }
}
