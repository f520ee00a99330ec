//! The S3-compatible blob store (cargo feature `s3`): one object per key under an optional key
//! prefix in one bucket, through `object_store`'s Amazon S3 client.
//!
//! A put is a single PUT of the whole blob; it returns once the server has acknowledged it, and S3
//! replaces an object atomically, so readers see the old blob or the new one, never a mix. Any
//! S3-compatible server works (AWS, MinIO, Ceph, moto): `s3://bucket/prefix` takes the endpoint,
//! region and credentials from the usual `AWS_*` variables (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, and
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
//!
//! Error messages are scrubbed first: server replies can echo the access key id, a
//! session token or the signed request, and none of that may reach a log.

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::{BlobError, BlobStore, validate_key};

pub struct S3BlobStore {
    store: AmazonS3,
    bucket: String,
    /// Plain segments without a leading or trailing `/`; empty for the bucket's root.
    prefix: String,
    scrubber: Scrubber,
}

impl S3BlobStore {
    /// The store `s3://{rest}` names, `rest` being `bucket` or `bucket/prefix`, configured from the
    /// `AWS_*` environment variables.
    pub fn from_url(rest: &str) -> Result<S3BlobStore, BlobError> {
        let (bucket, prefix) = parse_location(rest)?;
        S3BlobStore::build(AmazonS3Builder::from_env(), bucket, prefix)
    }

    /// A store on an explicit endpoint with static credentials, ignoring the `AWS_*` variables
    /// (tests use it against a local server). `prefix` may be empty; `allow_http` permits an
    /// `http://` endpoint.
    pub fn new(
        bucket: &str,
        prefix: &str,
        endpoint: &str,
        allow_http: bool,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<S3BlobStore, BlobError> {
        let (bucket, prefix) = check_location(bucket, prefix)?;
        let builder = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(allow_http)
            .with_region("us-east-1")
            .with_access_key_id(access_key_id)
            .with_secret_access_key(secret_access_key);
        S3BlobStore::build(builder, bucket, prefix)
    }

    fn build(
        builder: AmazonS3Builder,
        bucket: &str,
        prefix: &str,
    ) -> Result<S3BlobStore, BlobError> {
        let scrubber = Scrubber::new(
            [
                AmazonS3ConfigKey::AccessKeyId,
                AmazonS3ConfigKey::SecretAccessKey,
                AmazonS3ConfigKey::Token,
            ]
            .iter()
            .filter_map(|key| builder.get_config_value(key)),
        );
        let store = builder.with_bucket_name(bucket).build().map_err(|e| {
            BlobError::Backend(scrubber.scrub(&format!("cannot configure S3 store: {e}")))
        })?;
        Ok(S3BlobStore {
            store,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            scrubber,
        })
    }

    fn path(&self, key: &str) -> Result<Path, BlobError> {
        validate_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(full).map_err(|_| BlobError::InvalidKey(key.to_owned()))
    }

    /// Maps an `object_store` error for `key`: a missing object is `NotFound`, a missing bucket
    /// (which S3 also answers with 404) and everything else are backend errors.
    fn error(&self, key: &str, e: object_store::Error) -> BlobError {
        match e {
            object_store::Error::NotFound { .. } if e.to_string().contains("NoSuchBucket") => {
                BlobError::Backend(format!("S3 bucket `{}` does not exist", self.bucket))
            }
            object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_owned()),
            e => BlobError::Backend(self.scrubber.scrub(&format!("S3 `{key}`: {e}"))),
        }
    }
}

/// Splits `bucket/prefix` (the part of an `s3://` URL after the scheme).
fn parse_location(rest: &str) -> Result<(&str, &str), BlobError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    check_location(bucket, prefix)
}

/// Checks a bucket name and a key prefix; the prefix loses any trailing `/`. The prefix follows
/// the key rules ([`validate_key`]) so that prefixed keys stay plain paths.
fn check_location<'a>(bucket: &'a str, prefix: &'a str) -> Result<(&'a str, &'a str), BlobError> {
    let bucket_ok = !bucket.is_empty()
        && bucket.len() <= 63
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
    if !bucket_ok {
        return Err(BlobError::Backend(format!(
            "invalid S3 bucket name `{bucket}` (expected s3://bucket/prefix)"
        )));
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if !prefix.is_empty() && validate_key(prefix).is_err() {
        return Err(BlobError::Backend(format!(
            "invalid S3 key prefix `{prefix}` (plain `/`-separated segments of [A-Za-z0-9._-])"
        )));
    }
    Ok((bucket, prefix))
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let path = self.path(key)?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| match self.error(key, e) {
                // A PUT creates the object, so a 404 can only mean the bucket is missing.
                BlobError::NotFound(_) => BlobError::Backend(format!(
                    "S3 `{key}`: PUT answered 404 (does bucket `{}` exist?)",
                    self.bucket
                )),
                other => other,
            })?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let path = self.path(key)?;
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.error(key, e))?;
        result.bytes().await.map_err(|e| self.error(key, e))
    }

    async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn signed_put_url(
        &self,
        key: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, BlobError> {
        use object_store::signer::Signer;
        let path = self.path(key)?;
        let url = self
            .store
            .signed_url(reqwest::Method::PUT, &path, expires)
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(Some(url.to_string()))
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        // S3 answers a DELETE of a missing object with success, so ask first to tell the two apart.
        let existed = self.exists(key).await?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(existed),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Removes credential material from error messages: the configured access key id, secret and
/// session token wherever they appear, and the contents of the S3 error-reply elements that echo
/// a request's credentials or signature.
struct Scrubber {
    secrets: Vec<String>,
}

/// S3 error-reply elements whose contents are replaced whatever they hold.
const SENSITIVE_ELEMENTS: [&str; 6] = [
    "AWSAccessKeyId",
    "SignatureProvided",
    "StringToSign",
    "StringToSignBytes",
    "CanonicalRequest",
    "CanonicalRequestBytes",
];

const REDACTED: &str = "[redacted]";

impl Scrubber {
    fn new(secrets: impl IntoIterator<Item = String>) -> Scrubber {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret containing another is removed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Scrubber { secrets }
    }

    fn scrub(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), REDACTED);
        }
        for element in SENSITIVE_ELEMENTS {
            out = redact_element(&out, element);
        }
        out
    }
}

/// Replaces the contents of every `<element>…</element>` in `text` (an unclosed one: to the end).
fn redact_element(text: &str, element: &str) -> String {
    let open = format!("<{element}>");
    let close = format!("</{element}>");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let content = start + open.len();
        out.push_str(&rest[..content]);
        out.push_str(REDACTED);
        match rest[content..].find(&close) {
            Some(end) => rest = &rest[content + end..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        assert_eq!(parse_location("audio").unwrap(), ("audio", ""));
        assert_eq!(parse_location("audio/").unwrap(), ("audio", ""));
        assert_eq!(parse_location("audio/a/b").unwrap(), ("audio", "a/b"));
        assert_eq!(parse_location("audio/a/b/").unwrap(), ("audio", "a/b"));
        assert_eq!(parse_location("audio//").unwrap(), ("audio", ""));
        for bad in ["", "/x", "Audio", "a_b", "audio/../x", "audio/a//b"] {
            assert!(parse_location(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_land_under_the_prefix_and_describe_names_the_url() {
        let store =
            S3BlobStore::new("audio", "v1/", "http://127.0.0.1:1", true, "id", "secret").unwrap();
        assert_eq!(store.describe(), "s3://audio/v1");
        assert_eq!(store.path("a/b.wav").unwrap().as_ref(), "v1/a/b.wav");
        assert!(matches!(store.path("../x"), Err(BlobError::InvalidKey(_))));
        let root =
            S3BlobStore::new("audio", "", "http://127.0.0.1:1", true, "id", "secret").unwrap();
        assert_eq!(root.describe(), "s3://audio");
        assert_eq!(root.path("a").unwrap().as_ref(), "a");
    }

    #[test]
    fn error_messages_never_carry_credentials() {
        let scrubber = Scrubber::new(["AKIDEXAMPLE".to_owned(), "s3cr3t/KEY".to_owned()]);
        let message = "403: <Error><Code>SignatureDoesNotMatch</Code>\
            <AWSAccessKeyId>ASIATEMP</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256\n20260101\
            </StringToSign><CanonicalRequest>PUT /b/k x-amz-security-token:tok</CanonicalRequest>\
            <Message>key AKIDEXAMPLE with s3cr3t/KEY</Message><StringToSignBytes>41 57";
        let scrubbed = scrubber.scrub(message);
        for leak in ["AKIDEXAMPLE", "s3cr3t", "ASIATEMP", "HMAC", "tok", "41 57"] {
            assert!(!scrubbed.contains(leak), "{leak} in {scrubbed}");
        }
        assert!(
            scrubbed.contains("<Code>SignatureDoesNotMatch</Code>"),
            "{scrubbed}"
        );
        assert!(scrubbed.contains("<AWSAccessKeyId>[redacted]</AWSAccessKeyId>"));
    }
}
