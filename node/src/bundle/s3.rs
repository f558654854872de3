//! Bundles kept in an S3-protocol bucket (AWS S3, MinIO, Ceph RGW, R2, s3s-fs...) instead of
//! on the nodes' disks: the store behind `--store s3://bucket[/prefix]`.
//!
//! An object's key is `<prefix><sha256>`, so a bucket is content-addressed like the local
//! [`BlobStore`](super::BlobStore) and a copy is checked the same way, by hashing it again:
//! - [`S3Store::put_file`] hashes the file before sending anything, hashes it again as it is
//!   streamed out (a file changed mid-upload is caught and the object deleted), lets the
//!   server check small objects itself (`x-amz-checksum-sha256`) and checks the stored size
//!   afterwards;
//! - [`S3Store::fetch_verified`] hashes the download as it is written and only renames it
//!   into place if it matches, so a corrupt or cut-short copy never reaches the unpacker.
//!   Callers still unpack through [`BlobStore::unpack_release`](super::BlobStore::unpack_release),
//!   which hashes once more right before unpacking.
//!
//! Requests are path-style (`http://endpoint/bucket/key`), which every S3-protocol server
//! understands and which needs no wildcard DNS. The client (`rust-s3`) is built without
//! native TLS: plain HTTP, or rustls with the webpki root certificates for `https://`.
//!
//! Async (tokio); nothing here blocks for long: files are read and written through
//! `tokio::fs` and hashing is done a chunk at a time.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::checksum::{Checksum, Sha256Stream};
use base64::Engine as _;
use futures_util::StreamExt as _;
use s3::bucket::CHUNK_SIZE;
use s3::creds::Credentials;
use s3::error::S3Error as ClientError;
use s3::request::Request as _;
use s3::request::tokio_backend::ReqwestRequest;
use s3::{Bucket, BucketConfiguration, Region};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio_util::io::InspectReader;
use tracing::{debug, info, warn};
use url::Url;

use super::{is_valid_digest, sha256_reader};

/// The region used when none is given: the one every S3-protocol server accepts.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Where bundles go inside the bucket when the store URL names no prefix.
pub const DEFAULT_PREFIX: &str = "blobs/";

/// Short requests (HEAD, DELETE, listing, one 8 MiB part of an upload) finish in this or the
/// server is in trouble.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A download is one GET of the whole bundle (256 MiB by default at most), so it gets longer:
/// 10 minutes is 0.45 MB/s for the largest bundle.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Parts of a multipart upload in flight at once. Each part is 8 MiB held in memory, so this
/// bounds an upload's memory to a few parts whatever the bundle's size.
const UPLOAD_PARTS_IN_FLIGHT: usize = 2;
/// What bundles are: zips.
const CONTENT_TYPE: &str = "application/zip";
/// Object metadata (`x-amz-meta-sha256`) naming the digest, for people browsing the bucket.
const DIGEST_METADATA: &str = "sha256";

/// Where the store is and how to sign in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name (3 to 63 lowercase letters, digits, dots and hyphens).
    pub bucket: String,
    /// Base URL of the S3 API, `http://host:port` or `https://host[/path]`; requests go to
    /// `<endpoint>/<bucket>/<key>`.
    pub endpoint: String,
    /// Signing region [default: us-east-1].
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Key prefix of every bundle, empty or ending in `/` [default: blobs/].
    pub prefix: String,
}

impl fmt::Debug for S3Config {
    // The secret key must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Config {
    /// Reads `s3://bucket` or `s3://bucket/prefix` into a config with the default region,
    /// no endpoint and no credentials; set those with the `with_*` methods.
    pub fn from_url(url: &str) -> Result<S3Config, S3Error> {
        let invalid = |reason: &str| S3Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = Url::parse(url).map_err(|err| invalid(&format!("it is not a URL ({err})")))?;
        if parsed.scheme() != "s3" {
            return Err(invalid("it does not start with s3://"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("it has a query or fragment"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "credentials do not go in the URL; give --s3-access-key and --s3-secret-key",
            ));
        }
        if parsed.port().is_some() {
            return Err(invalid(
                "a port does not go in the store URL; give the server with --s3-endpoint",
            ));
        }
        // The parser rewrites some URLs as it reads them: it resolves `..`, escapes spaces,
        // lowercases the scheme. Those are refused, so the bucket and the prefix are exactly
        // what was typed.
        if parsed.as_str() != url {
            return Err(invalid(&format!(
                "it reads as {parsed}: write the bucket and prefix plainly"
            )));
        }
        let bucket = parsed.host_str().unwrap_or_default();
        let prefix = parsed.path().strip_prefix('/').unwrap_or(parsed.path());
        check_bucket_name(bucket).map_err(|reason| invalid(&reason))?;
        let prefix = normalize_prefix(prefix).map_err(|reason| invalid(&reason))?;
        Ok(S3Config {
            bucket: bucket.to_string(),
            endpoint: String::new(),
            region: DEFAULT_REGION.to_string(),
            access_key: String::new(),
            secret_key: String::new(),
            prefix,
        })
    }

    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> S3Config {
        self.endpoint = endpoint.into();
        self
    }

    pub fn with_region(mut self, region: impl Into<String>) -> S3Config {
        self.region = region.into();
        self
    }

    pub fn with_credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> S3Config {
        self.access_key = access_key.into();
        self.secret_key = secret_key.into();
        self
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Checks every field, so a bad flag fails at start rather than on the first deploy.
    pub fn validate(&self) -> Result<(), S3Error> {
        check_bucket_name(&self.bucket).map_err(|reason| S3Error::InvalidUrl {
            url: self.url(),
            reason,
        })?;
        if normalize_prefix(&self.prefix).as_deref() != Ok(self.prefix.as_str()) {
            return Err(S3Error::InvalidUrl {
                url: self.url(),
                reason: "the prefix must be empty or end in / and hold only letters, digits \
                         and - _ . / (no empty, . or .. segments)"
                    .to_string(),
            });
        }
        check_endpoint(&self.endpoint)?;
        if self.region.is_empty()
            || self
                .region
                .contains(|c: char| c.is_whitespace() || c == '/')
        {
            return Err(S3Error::InvalidSetting(format!(
                "region {:?} is not a region name: give one like us-east-1 with --s3-region",
                self.region
            )));
        }
        if self.access_key.is_empty() || self.secret_key.is_empty() {
            return Err(S3Error::InvalidSetting(
                "the S3 store needs credentials: give --s3-access-key and --s3-secret-key \
                 (or STRATUS_S3_ACCESS_KEY and STRATUS_S3_SECRET_KEY)"
                    .to_string(),
            ));
        }
        Ok(())
    }
}

/// S3's bucket naming rules (the subset that holds for every region and server): 3 to 63
/// characters, lowercase letters, digits, dots and hyphens, a letter or digit at each end.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("it names no bucket".to_string());
    }
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && bucket
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && !bucket.contains("..");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "bucket name {bucket:?} is invalid: use 3 to 63 lowercase letters, digits, dots \
             and hyphens, starting and ending with a letter or digit"
        ))
    }
}

/// The prefix as stored: empty means [`DEFAULT_PREFIX`], and a missing trailing `/` is
/// added, so `s3://b/prod` keeps bundles under `prod/`. Only characters that need no
/// escaping in a URL path are taken, and no `.`/`..` segment that a proxy could fold away.
fn normalize_prefix(prefix: &str) -> Result<String, String> {
    if prefix.is_empty() {
        return Ok(DEFAULT_PREFIX.to_string());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    let segments_ok = trimmed.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !segments_ok {
        return Err(format!(
            "prefix {prefix:?} is invalid: use letters, digits and - _ . separated by single /"
        ));
    }
    Ok(format!("{trimmed}/"))
}

/// An `http://` or `https://` base URL with a host, and nothing a base URL cannot have
/// (credentials, a query, a fragment).
fn check_endpoint(endpoint: &str) -> Result<(), S3Error> {
    let invalid = || S3Error::InvalidEndpoint(endpoint.to_string());
    let url = Url::parse(endpoint).map_err(|_| invalid())?;
    let host = url.host_str().unwrap_or_default();
    // The parser skips extra slashes (`http:///x` reads as host `x`) and lowercases the
    // host; the endpoint must name its host where it is written.
    let host_as_written = endpoint
        .to_ascii_lowercase()
        .starts_with(&format!("{}://{host}", url.scheme()));
    let valid = matches!(url.scheme(), "http" | "https")
        && !host.is_empty()
        && host_as_written
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && !endpoint.contains(char::is_whitespace);
    if valid { Ok(()) } else { Err(invalid()) }
}

/// Everything that can go wrong with the S3 store. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid store URL {url:?}: {reason}; expected s3://bucket or s3://bucket/prefix")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "invalid S3 endpoint {0:?}: give the server's base URL with --s3-endpoint, such as \
         http://127.0.0.1:9000 or https://s3.eu-west-1.amazonaws.com"
    )]
    InvalidEndpoint(String),
    #[error("invalid S3 setting: {0}")]
    InvalidSetting(String),
    #[error("{0:?} is not a SHA-256 digest: expected 64 lowercase hex characters")]
    InvalidDigest(String),
    #[error(
        "{path} hashes to sha256 {actual}, not {expected}: nothing was uploaded; store the \
         file under its own digest"
    )]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "{path} changed while it was being uploaded (it now hashes to {actual}, not \
         {expected}); nothing was kept: do not modify a bundle while it is stored"
    )]
    ChangedDuringUpload {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "the S3 server kept {actual} of {expected} bytes of {key}; the object was deleted: \
         upload it again"
    )]
    Incomplete {
        key: String,
        expected: u64,
        actual: String,
    },
    #[error("bundle {digest} is not in the S3 store ({key}): upload it before fetching it")]
    NotFound { digest: String, key: String },
    #[error(
        "bucket {bucket} does not exist at {endpoint}: create it, or let the node create it \
         at start (ensure_bucket)"
    )]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error(
        "bucket {bucket} already exists and belongs to another account: choose another bucket \
         name in --store"
    )]
    BucketTaken { bucket: String },
    #[error(
        "the S3 server at {endpoint} refused access to bucket {bucket} ({code}): check \
         --s3-access-key and --s3-secret-key, and that the key may list, read and write the \
         bucket"
    )]
    Denied {
        endpoint: String,
        bucket: String,
        code: String,
    },
    #[error(
        "the copy of bundle {digest} in the S3 store ({key}) is corrupt: it hashes to \
         {actual}; the download was deleted: upload the bundle again (deploy it again)"
    )]
    Corrupt {
        digest: String,
        key: String,
        actual: String,
    },
    #[error(
        "cannot talk to the S3 server at {endpoint} ({reason}): check --s3-endpoint and that \
         the server is up"
    )]
    Unreachable { endpoint: String, reason: String },
    #[error("the S3 server at {endpoint} answered HTTP {status} ({code}): {message}")]
    Http {
        endpoint: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("S3 client error: {0}")]
    Client(String),
}

impl S3Error {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> S3Error {
        let path = path.to_path_buf();
        move |source| S3Error::Io {
            action,
            path,
            source,
        }
    }
}

/// A bucket of bundles, keyed by digest. Cheap to clone: clones share the HTTP client.
#[derive(Clone)]
pub struct S3Store {
    config: S3Config,
    /// For everything but downloads.
    bucket: Box<Bucket>,
    /// The same bucket with [`DOWNLOAD_TIMEOUT`].
    download: Box<Bucket>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds the client after checking `config`. Makes no request: call
    /// [`S3Store::ensure_bucket`] at start to learn whether the server and the credentials
    /// work.
    pub fn new(config: S3Config) -> Result<S3Store, S3Error> {
        config.validate()?;
        let region = Region::Custom {
            region: config.region.clone(),
            endpoint: config.endpoint.trim_end_matches('/').to_string(),
        };
        let credentials = Credentials::new(
            Some(&config.access_key),
            Some(&config.secret_key),
            None,
            None,
            None,
        )
        .map_err(|err| S3Error::InvalidSetting(format!("S3 credentials: {err}")))?;
        let bucket = Bucket::new(&config.bucket, region, credentials)
            .map_err(|err| S3Error::Client(err.to_string()))?
            .with_path_style()
            .with_request_timeout(REQUEST_TIMEOUT)
            .map_err(|err| S3Error::Client(err.to_string()))?;
        let download = bucket
            .with_request_timeout(DOWNLOAD_TIMEOUT)
            .map_err(|err| S3Error::Client(err.to_string()))?;
        Ok(S3Store {
            config,
            bucket,
            download,
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The object key of bundle `digest`. Refuses anything but a digest, so no caller can
    /// reach outside the prefix.
    pub fn key(&self, digest: &str) -> Result<String, S3Error> {
        if !is_valid_digest(digest) {
            return Err(S3Error::InvalidDigest(digest.to_string()));
        }
        Ok(format!("{}{digest}", self.config.prefix))
    }

    /// Creates the bucket if it does not exist; returns whether it did. Also the first
    /// check that the endpoint answers and accepts the credentials, so call it at start.
    pub async fn ensure_bucket(&self) -> Result<bool, S3Error> {
        // Nodes starting together race to create the bucket, and the losers may hear
        // "already exists" or even a 500 from some servers: look again before failing.
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            match self.try_ensure_bucket().await {
                Ok(created) => return Ok(created),
                Err(err @ (S3Error::Denied { .. } | S3Error::Unreachable { .. })) => {
                    return Err(err);
                }
                Err(err) if attempt >= ATTEMPTS => return Err(err),
                Err(err) => {
                    debug!(error = %err, attempt, "bucket not ready, looking again");
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn try_ensure_bucket(&self) -> Result<bool, S3Error> {
        // Listing one key proves the bucket exists and that the key may use it; creating
        // first would need s3:CreateBucket, which a key scoped to one bucket often lacks.
        let probe = self
            .bucket
            .list_page(self.config.prefix.clone(), None, None, None, Some(1))
            .await;
        match probe.map_err(|err| self.classify(err, None)) {
            Ok(_) => return Ok(false),
            Err(S3Error::NoSuchBucket { .. }) => {}
            Err(err) => return Err(err),
        }
        // Without a location constraint for us-east-1: AWS refuses one that names it.
        let mut config = BucketConfiguration::private();
        if self.config.region != DEFAULT_REGION {
            config.set_location_constraint(self.bucket.region());
        }
        let created = async {
            let request = ReqwestRequest::new(
                &self.bucket,
                "",
                s3::command::Command::CreateBucket { config },
            )
            .await?;
            request.response_data(false).await
        }
        .await;
        match created {
            Ok(_) => {
                info!(bucket = %self.config.bucket, endpoint = %self.config.endpoint, "created the S3 bucket");
                Ok(true)
            }
            Err(err) => match self.classify(err, None) {
                // Another node created it in the meantime.
                S3Error::Http { code, .. } if code == "BucketAlreadyOwnedByYou" => Ok(false),
                S3Error::Http { code, .. } if code == "BucketAlreadyExists" => {
                    Err(S3Error::BucketTaken {
                        bucket: self.config.bucket.clone(),
                    })
                }
                err => Err(err),
            },
        }
    }

    /// Uploads the file at `path` as bundle `sha256`, after checking that the file hashes
    /// to it. Streams: at most a few 8 MiB parts are in memory, whatever the size. Returns
    /// the number of bytes stored.
    pub async fn put_file(&self, path: &Path, sha256: &str) -> Result<u64, S3Error> {
        let key = self.key(sha256)?;
        // Checked before any byte leaves: a wrong digest is the caller's bug, and an object
        // under the wrong key would poison every later fetch of that key.
        let hashed = path.to_path_buf();
        let actual = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&hashed).and_then(sha256_reader)
        })
        .await
        .map_err(|err| S3Error::Client(format!("the hashing task failed: {err}")))?
        .map_err(S3Error::io("read", path))?
        .digest;
        if actual != sha256 {
            return Err(S3Error::DigestMismatch {
                path: path.to_path_buf(),
                expected: sha256.to_string(),
                actual,
            });
        }
        let size = tokio::fs::metadata(path)
            .await
            .map_err(S3Error::io("read the size of", path))?
            .len();
        let sent = if size < CHUNK_SIZE as u64 {
            self.put_small(path, &key, sha256).await?
        } else {
            self.put_multipart(path, &key, sha256).await?
        };
        if sent.digest != sha256 {
            // Only a multipart upload gets here: what it stored is not the bundle.
            self.delete_key(&key).await?;
            return Err(S3Error::ChangedDuringUpload {
                path: path.to_path_buf(),
                expected: sha256.to_string(),
                actual: sent.digest,
            });
        }
        self.check_stored_size(&key, sent.bytes).await?;
        Ok(sent.bytes)
    }

    /// One PUT of a bundle smaller than a part (it would be one part anyway). The server
    /// checks the body against `x-amz-checksum-sha256` and refuses it on a mismatch.
    async fn put_small(&self, path: &Path, key: &str, sha256: &str) -> Result<Checksum, S3Error> {
        let content = tokio::fs::read(path)
            .await
            .map_err(S3Error::io("read", path))?;
        let digest = Sha256::digest(&content);
        let sent = Checksum {
            digest: hex::encode(digest),
            bytes: content.len() as u64,
        };
        if sent.digest != sha256 {
            // Changed since it was hashed: send nothing, and leave any copy already stored.
            return Err(S3Error::ChangedDuringUpload {
                path: path.to_path_buf(),
                expected: sha256.to_string(),
                actual: sent.digest,
            });
        }
        let checksum = base64::engine::general_purpose::STANDARD.encode(digest);
        let client = |err: ClientError| self.classify(err, Some((sha256, key)));
        self.bucket
            .put_object_builder(key, &content)
            .with_content_type(CONTENT_TYPE)
            .with_header("x-amz-checksum-sha256", checksum)
            .map_err(client)?
            .with_metadata(DIGEST_METADATA, sha256)
            .map_err(client)?
            .execute()
            .await
            .map_err(client)?;
        Ok(sent)
    }

    /// A multipart upload read straight from the file, hashed as it is read. Each part's
    /// body is covered by the request signature (`x-amz-content-sha256`), which the server
    /// checks; the whole is checked by the caller against the hash of what was read.
    async fn put_multipart(
        &self,
        path: &Path,
        key: &str,
        sha256: &str,
    ) -> Result<Checksum, S3Error> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(S3Error::io("open", path))?;
        // Hashes exactly the bytes the upload reads, so what was sent is known, not assumed.
        let mut hasher = Sha256Stream::new();
        let mut reader = InspectReader::new(file, |bytes: &[u8]| hasher.update(bytes));
        let client = |err: ClientError| self.classify(err, Some((sha256, key)));
        self.bucket
            .put_object_stream_builder(key)
            .with_content_type(CONTENT_TYPE)
            .with_metadata(DIGEST_METADATA, sha256)
            .map_err(client)?
            .with_max_concurrent_chunks(UPLOAD_PARTS_IN_FLIGHT)
            .execute_stream(&mut reader)
            .await
            .map_err(client)?;
        drop(reader);
        Ok(hasher.finish())
    }

    /// The server must hold exactly what was sent; a short object is deleted.
    async fn check_stored_size(&self, key: &str, expected: u64) -> Result<(), S3Error> {
        let (head, _) = self
            .bucket
            .head_object(key)
            .await
            .map_err(|err| self.classify(err, None))?;
        let stored = head.content_length.and_then(|len| u64::try_from(len).ok());
        if stored == Some(expected) {
            return Ok(());
        }
        warn!(%key, expected, ?stored, "the S3 server kept a different size: deleting the object");
        self.delete_key(key).await?;
        Err(S3Error::Incomplete {
            key: key.to_string(),
            expected,
            actual: stored.map_or_else(|| "an unknown number".to_string(), |n| n.to_string()),
        })
    }

    /// Whether bundle `sha256` is in the bucket. Not verified: [`S3Store::fetch_verified`]
    /// is.
    pub async fn has(&self, sha256: &str) -> Result<bool, S3Error> {
        let key = self.key(sha256)?;
        self.bucket
            .object_exists(&key)
            .await
            .map_err(|err| self.classify(err, Some((sha256, &key))))
    }

    /// Downloads bundle `sha256` to `dest`, hashing it as it is written. The bytes go to a
    /// temporary file beside `dest` and are renamed to `dest` only if they hash to
    /// `sha256`; otherwise the download is deleted and [`S3Error::Corrupt`] returned.
    /// Returns the number of bytes. `dest`'s folder must exist; `dest` is replaced.
    pub async fn fetch_verified(&self, sha256: &str, dest: &Path) -> Result<u64, S3Error> {
        let key = self.key(sha256)?;
        let folder = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Deleted when dropped: every early return below leaves nothing behind.
        let temp = tempfile::Builder::new()
            .prefix(".s3-fetch-")
            .tempfile_in(&folder)
            .map_err(S3Error::io("create a temporary file in", &folder))?;
        let std_file = temp.reopen().map_err(S3Error::io("open", temp.path()))?;
        let mut file = tokio::fs::File::from_std(std_file);

        let mut response = self
            .download
            .get_object_stream(&key)
            .await
            .map_err(|err| self.classify(err, Some((sha256, &key))))?;
        let mut hasher = Sha256Stream::new();
        while let Some(chunk) = response.bytes().next().await {
            let chunk = chunk.map_err(|err| self.classify(err, Some((sha256, &key))))?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(S3Error::io("write", temp.path()))?;
        }
        let Checksum {
            digest: actual,
            bytes,
        } = hasher.finish();
        if actual != sha256 {
            warn!(digest = sha256, %actual, %key, "the S3 copy of a bundle is corrupt: deleting the download");
            drop(file);
            let temp_path = temp.path().to_path_buf();
            temp.close().map_err(S3Error::io("remove", &temp_path))?;
            return Err(S3Error::Corrupt {
                digest: sha256.to_string(),
                key,
                actual,
            });
        }
        // Synced before the rename: after a crash `dest` must never name a file whose data
        // did not reach the disk.
        file.sync_all()
            .await
            .map_err(S3Error::io("sync", temp.path()))?;
        drop(file);
        temp.persist(dest)
            .map_err(|err| S3Error::io("store", dest)(err.error))?;
        Ok(bytes)
    }

    /// Deletes bundle `sha256` from the bucket; deleting one that is not there is no error
    /// (S3 answers the same either way).
    pub async fn delete(&self, sha256: &str) -> Result<(), S3Error> {
        let key = self.key(sha256)?;
        self.delete_key(&key).await
    }

    async fn delete_key(&self, key: &str) -> Result<(), S3Error> {
        self.bucket
            .delete_object(key)
            .await
            .map(|_| ())
            .map_err(|err| self.classify(err, None))
    }

    /// Turns a client error into one that says what happened and what to do. `object` is
    /// the (digest, key) a 404 is about, when the request was about one.
    fn classify(&self, err: ClientError, object: Option<(&str, &str)>) -> S3Error {
        let endpoint = self.config.endpoint.clone();
        match err {
            ClientError::HttpFailWithBody(status, body) => {
                let ErrorBody { code, message } = ErrorBody::parse(&body);
                match (status, object) {
                    (404, _) if code == "NoSuchBucket" => S3Error::NoSuchBucket {
                        bucket: self.config.bucket.clone(),
                        endpoint,
                    },
                    (404, Some((digest, key))) => S3Error::NotFound {
                        digest: digest.to_string(),
                        key: key.to_string(),
                    },
                    (401 | 403, _) => S3Error::Denied {
                        endpoint,
                        bucket: self.config.bucket.clone(),
                        // HEAD answers carry no body, so no code.
                        code: if code.is_empty() {
                            format!("HTTP {status}")
                        } else {
                            code
                        },
                    },
                    _ => S3Error::Http {
                        endpoint,
                        status,
                        code,
                        message,
                    },
                }
            }
            ClientError::Reqwest(err) => S3Error::Unreachable {
                endpoint,
                reason: error_chain(&err),
            },
            ClientError::Io(err) => S3Error::Unreachable {
                endpoint,
                reason: error_chain(&err),
            },
            err => S3Error::Client(error_chain(&err)),
        }
    }
}

/// The parts of an S3 error body (`<Error><Code>NoSuchKey</Code><Message>...`) that say
/// what went wrong; other elements (`RequestId`, `Resource`...) are ignored.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl ErrorBody {
    /// Empty fields when the body is not such XML (a HEAD answer has no body at all).
    fn parse(body: &str) -> ErrorBody {
        quick_xml::de::from_str(body).unwrap_or_default()
    }
}

/// An error and its causes on one line: reqwest's own message ("error sending request")
/// hides the useful part ("connection refused") in its source.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn config() -> S3Config {
        S3Config::from_url("s3://stratus-bundles")
            .unwrap()
            .with_endpoint("http://127.0.0.1:9000")
            .with_credentials("access", "secret")
    }

    #[test]
    fn a_store_url_names_a_bucket_and_an_optional_prefix() {
        let plain = S3Config::from_url("s3://my-bucket").unwrap();
        assert_eq!(plain.bucket, "my-bucket");
        assert_eq!(plain.prefix, DEFAULT_PREFIX);
        assert_eq!(plain.region, DEFAULT_REGION);
        assert_eq!(
            S3Config::from_url("s3://my-bucket/").unwrap().prefix,
            "blobs/"
        );
        assert_eq!(
            S3Config::from_url("s3://my.bucket/prod/bundles")
                .unwrap()
                .prefix,
            "prod/bundles/"
        );
        assert_eq!(S3Config::from_url("s3://b-1/x/").unwrap().prefix, "x/");
    }

    #[test]
    fn bad_store_urls_are_refused_with_the_reason() {
        for bad in [
            "my-bucket",
            "https://my-bucket",
            "s3://",
            "s3://ab",
            "s3://My-Bucket",
            "s3://-bucket",
            "s3://bucket-",
            "s3://a..b",
            "s3://under_score",
            "s3://key:secret@bucket",
            "s3://bucket?x=1",
            "s3://bucket/a//b",
            "s3://bucket/../up",
            "s3://bucket/a b",
            "s3://bucket/a%2f",
            "S3://bucket",
            "s3://bucket:9000",
            "s3://bucket/a/./b",
            "s3://bucket#x",
        ] {
            let err = S3Config::from_url(bad).unwrap_err();
            assert!(
                matches!(err, S3Error::InvalidUrl { .. }),
                "{bad:?} accepted or wrong error: {err}"
            );
            assert!(err.to_string().contains("expected s3://bucket"), "{err}");
        }
    }

    #[test]
    fn a_config_needs_an_http_endpoint_and_credentials() {
        assert!(config().validate().is_ok());
        assert!(
            config()
                .with_endpoint("https://s3.eu-west-1.amazonaws.com/")
                .validate()
                .is_ok()
        );
        assert!(
            config()
                .with_endpoint("https://example.supabase.co/storage/v1/s3")
                .validate()
                .is_ok()
        );
        for bad in [
            "",
            "127.0.0.1:9000",
            "ftp://host",
            "http://",
            "http:///x",
            "http://a b",
        ] {
            assert!(
                matches!(
                    config().with_endpoint(bad).validate(),
                    Err(S3Error::InvalidEndpoint(_))
                ),
                "{bad:?} accepted"
            );
        }
        let err = config().with_credentials("", "").validate().unwrap_err();
        assert!(err.to_string().contains("--s3-access-key"), "{err}");
        assert!(config().with_region("").validate().is_err());
        let mut bad_prefix = config();
        bad_prefix.prefix = "no-slash".into();
        assert!(bad_prefix.validate().is_err());
        bad_prefix.prefix = String::new();
        assert!(bad_prefix.validate().is_err());
    }

    #[test]
    fn the_secret_key_never_shows_in_debug_output() {
        let text = format!("{:?}", config().with_credentials("AKIA", "hunter2"));
        assert!(text.contains("AKIA"));
        assert!(!text.contains("hunter2"), "{text}");
        let store = S3Store::new(config().with_credentials("AKIA", "hunter2")).unwrap();
        assert!(!format!("{store:?}").contains("hunter2"));
    }

    #[test]
    fn keys_are_the_prefix_and_a_digest_and_nothing_else() {
        let store = S3Store::new(config()).unwrap();
        assert_eq!(store.key(ABC).unwrap(), format!("blobs/{ABC}"));
        for bad in ["", "../etc/passwd", &ABC.to_uppercase(), &ABC[1..]] {
            assert!(matches!(store.key(bad), Err(S3Error::InvalidDigest(_))));
        }
    }

    #[test]
    fn s3_error_bodies_give_their_code_and_message() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
                    <Message>The specified key does not exist.</Message>\
                    <Key>blobs/x</Key><RequestId>1</RequestId></Error>";
        assert_eq!(
            ErrorBody::parse(body),
            ErrorBody {
                code: "NoSuchKey".into(),
                message: "The specified key does not exist.".into(),
            }
        );
        // Escapes are decoded, and a missing field is empty.
        assert_eq!(
            ErrorBody::parse("<Error><Code>A&amp;B</Code></Error>"),
            ErrorBody {
                code: "A&B".into(),
                message: String::new(),
            }
        );
        assert_eq!(ErrorBody::parse(""), ErrorBody::default());
        assert_eq!(ErrorBody::parse("<Code>unterminated"), ErrorBody::default());
        assert_eq!(ErrorBody::parse("not xml at all"), ErrorBody::default());
    }

    #[test]
    fn client_errors_are_classified_by_cause() {
        let store = S3Store::new(config()).unwrap();
        let fail = |status, code: &str| {
            ClientError::HttpFailWithBody(
                status,
                format!("<Error><Code>{code}</Code><Message>m</Message></Error>"),
            )
        };
        assert!(matches!(
            store.classify(fail(404, "NoSuchBucket"), Some((ABC, "k"))),
            S3Error::NoSuchBucket { .. }
        ));
        assert!(matches!(
            store.classify(fail(404, "NoSuchKey"), Some((ABC, "k"))),
            S3Error::NotFound { .. }
        ));
        assert!(matches!(
            store.classify(fail(403, "SignatureDoesNotMatch"), None),
            S3Error::Denied { code, .. } if code == "SignatureDoesNotMatch"
        ));
        assert!(matches!(
            store.classify(ClientError::HttpFailWithBody(403, String::new()), None),
            S3Error::Denied { code, .. } if code == "HTTP 403"
        ));
        assert!(matches!(
            store.classify(fail(500, "InternalError"), None),
            S3Error::Http { status: 500, .. }
        ));
    }
}
