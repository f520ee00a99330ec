//! Credentials: short-lived access tokens (JWT, HS256), long-lived device tokens, and the
//! signing secret.
//!
//! A device token is 32 random bytes, shown to the client once; only its SHA-256 is stored.
//! Exchanging it at `/api/v1/auth/refresh` yields a fresh access token, so a learner's account
//! survives access-token expiry without any password.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const ISSUER: &str = "teachback";
/// File in the data dir that holds the generated signing secret.
const SECRET_FILE: &str = "jwt-secret";
/// Prefix that makes device tokens recognisable (for example by secret scanners).
const DEVICE_TOKEN_PREFIX: &str = "tbd_";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The learner's id.
    pub sub: Uuid,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a presented access token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is invalid")]
    Invalid,
}

/// Signs and checks access tokens, and purpose-bound grants (see [`Grant`]).
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    upload: PurposeKey,
    share: PurposeKey,
}

/// What a [`Grant`] allows. Each purpose signs with its own key derived from the secret, so a
/// grant can never pass as an access token or as a grant of another purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Upload one lecture's recording (a signed upload URL).
    Upload,
    /// Watch one lecture (a share link).
    Share,
}

#[derive(Clone)]
struct PurposeKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl PurposeKey {
    fn derive(secret: &[u8], purpose: &str) -> PurposeKey {
        let key = Sha256::digest([purpose.as_bytes(), b"\0", secret].concat());
        PurposeKey {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
        }
    }
}

/// A signed, expiring permission about one lecture: an upload URL's signature or a share token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The lecture.
    pub sub: Uuid,
    pub iss: String,
    pub exp: i64,
    /// Upload grants: the only content type accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct: Option<String>,
    /// Upload grants: the largest body accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

impl Keys {
    pub fn new(secret: &SecretString, ttl: Duration) -> Keys {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Tokens are issued and checked by the same service; allow only small clock skew
        // between instances.
        validation.leeway = 5;
        Keys {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            ttl,
            upload: PurposeKey::derive(bytes, "upload"),
            share: PurposeKey::derive(bytes, "share"),
        }
    }

    fn purpose(&self, purpose: Purpose) -> &PurposeKey {
        match purpose {
            Purpose::Upload => &self.upload,
            Purpose::Share => &self.share,
        }
    }

    /// Signs a grant for `purpose`.
    pub fn sign_grant(&self, purpose: Purpose, grant: &Grant) -> anyhow::Result<String> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            grant,
            &self.purpose(purpose).encoding,
        )
        .context("signing a grant")
    }

    /// A new grant about `lecture`, valid for `ttl`.
    pub fn grant(&self, lecture: Uuid, ttl: Duration) -> Grant {
        Grant {
            sub: lecture,
            iss: ISSUER.to_owned(),
            exp: jiff::Timestamp::now().as_second() + ttl.as_secs() as i64,
            ct: None,
            max: None,
        }
    }

    /// Checks a grant's signature (for `purpose`), issuer and expiry.
    pub fn verify_grant(&self, purpose: Purpose, token: &str) -> Result<Grant, TokenError> {
        jsonwebtoken::decode::<Grant>(token, &self.purpose(purpose).decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }

    /// A new access token for `user`, and when it expires (Unix seconds).
    pub fn issue(&self, user: Uuid) -> anyhow::Result<(String, i64)> {
        let now = jiff::Timestamp::now().as_second();
        self.issue_at(user, now, now + self.ttl.as_secs() as i64)
    }

    /// A token with explicit times (tests use it to make expired tokens).
    pub fn issue_at(&self, user: Uuid, iat: i64, exp: i64) -> anyhow::Result<(String, i64)> {
        let claims = Claims {
            sub: user,
            iss: ISSUER.to_owned(),
            iat,
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("signing an access token")?;
        Ok((token, exp))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// A fresh device token: shown to the client once, stored only as [`hash_device_token`].
pub fn new_device_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{DEVICE_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// SHA-256 of a device token, hex-encoded: what the log and the read model keep.
pub fn hash_device_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The signing secret: the configured one, or one generated on first start into
/// `<data dir>/jwt-secret` with mode 0600 and reused afterwards. Never logged.
pub fn load_or_create_secret(
    configured: Option<&SecretString>,
    data_dir: &Path,
) -> anyhow::Result<SecretString> {
    if let Some(secret) = configured {
        anyhow::ensure!(
            secret.expose_secret().len() >= 32,
            "TEACHBACK_JWT_SECRET must be at least 32 characters"
        );
        return Ok(secret.clone());
    }
    let path = data_dir.join(SECRET_FILE);
    if !path.exists() {
        // Written to a temporary file, fsynced, then linked into place: the secret file is never
        // seen half-written, and of two processes starting at once exactly one link succeeds.
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = hex::encode(bytes);
        let tmp = data_dir.join(format!("{SECRET_FILE}.{}.tmp", hex::encode(&bytes[..4])));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(secret.as_bytes())
                    .and_then(|()| file.sync_all())
            })
            .and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated a new access-token signing secret");
                return Ok(SecretString::from(secret));
            }
            // Another process won the race: use its secret.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    let secret =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let secret = secret.trim().to_owned();
    anyhow::ensure!(
        secret.len() >= 32,
        "{} is too short to be a signing secret; remove it to have a new one generated \
         (existing access tokens will stop working)",
        path.display()
    );
    Ok(SecretString::from(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(
            &SecretString::from("k".repeat(40)),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn a_token_verifies_until_it_expires_and_not_under_another_key() {
        let user = Uuid::now_v7();
        let (token, _) = keys().issue(user).unwrap();
        assert_eq!(keys().verify(&token).unwrap().sub, user);

        let now = jiff::Timestamp::now().as_second();
        let (old, _) = keys().issue_at(user, now - 7200, now - 3600).unwrap();
        assert_eq!(keys().verify(&old).unwrap_err(), TokenError::Expired);

        let other = Keys::new(&SecretString::from("o".repeat(40)), Duration::from_secs(60));
        assert_eq!(other.verify(&token).unwrap_err(), TokenError::Invalid);
        assert_eq!(keys().verify("not.a.jwt").unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn grants_are_bound_to_their_purpose() {
        let keys = keys();
        let lecture = Uuid::now_v7();
        let mut grant = keys.grant(lecture, Duration::from_secs(60));
        grant.ct = Some("audio/webm".into());
        grant.max = Some(10);
        let upload = keys.sign_grant(Purpose::Upload, &grant).unwrap();
        assert_eq!(keys.verify_grant(Purpose::Upload, &upload).unwrap(), grant);
        // Neither a share token nor an access token.
        assert_eq!(
            keys.verify_grant(Purpose::Share, &upload).unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(keys.verify(&upload).unwrap_err(), TokenError::Invalid);
        let (access, _) = keys.issue(lecture).unwrap();
        assert_eq!(
            keys.verify_grant(Purpose::Upload, &access).unwrap_err(),
            TokenError::Invalid
        );
        grant.exp = jiff::Timestamp::now().as_second() - 60;
        let expired = keys.sign_grant(Purpose::Share, &grant).unwrap();
        assert_eq!(
            keys.verify_grant(Purpose::Share, &expired).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn device_tokens_are_random_and_only_their_hash_is_kept() {
        let a = new_device_token();
        let b = new_device_token();
        assert_ne!(a, b);
        assert!(a.starts_with(DEVICE_TOKEN_PREFIX));
        assert_eq!(hash_device_token(&a), hash_device_token(&a));
        assert_eq!(hash_device_token(&a).len(), 64);
        assert!(!hash_device_token(&a).contains(&a[4..]));
    }

    #[test]
    fn the_generated_secret_is_private_and_stable_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(None, dir.path()).unwrap();
        let second = load_or_create_secret(None, dir.path()).unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
