#![allow(clippy::unwrap_used)]
//! The S3 store against a real S3-protocol server: s3s-fs on 127.0.0.1:19000 (or
//! `STRATUS_S3_PORT`), started through `scripts/start-s3.sh` when it does not answer, which
//! also installs it on first use. Each test has a bucket of its own, so they run in
//! parallel and a rerun finds nothing left over.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use node::bundle::{DEFAULT_PREFIX, S3Config, S3Error, S3Store, sha256_file};
use s3::creds::Credentials;
use s3::{Bucket, Region};

/// The fixed test credentials of scripts/start-s3.sh.
const ACCESS_KEY: &str = "stratus-test";
const SECRET_KEY: &str = "stratus-test-secret";

fn port() -> u16 {
    std::env::var("STRATUS_S3_PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(19000)
}

fn endpoint() -> String {
    format!("http://127.0.0.1:{}", port())
}

/// Starts the server once per test binary if nothing answers on its port.
fn ensure_server() {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        let addr = SocketAddr::from(([127, 0, 0, 1], port()));
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/start-s3.sh");
        let output = Command::new("bash")
            .arg(&script)
            .env("STRATUS_S3_PORT", port().to_string())
            .output()
            .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(err) = started {
        panic!("no S3 server for the tests: {err}");
    }
}

/// A bucket name no other test (or earlier run) uses.
fn unique_bucket(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t-{test}-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
    .chars()
    .take(63)
    .collect()
}

fn config(test: &str) -> S3Config {
    S3Config::from_url(&format!("s3://{}", unique_bucket(test)))
        .unwrap()
        .with_endpoint(endpoint())
        .with_credentials(ACCESS_KEY, SECRET_KEY)
}

/// A store on a fresh bucket, created.
async fn store(test: &str) -> S3Store {
    ensure_server();
    let store = S3Store::new(config(test)).unwrap();
    assert!(store.ensure_bucket().await.unwrap(), "the bucket was new");
    store
}

/// A file holding `content` and its digest.
fn bundle_file(dir: &Path, name: &str, content: &[u8]) -> (PathBuf, String) {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    let digest = sha256_file(&path).unwrap();
    (path, digest)
}

/// The folder's entries, to show a failed fetch left nothing behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn ensure_bucket_creates_a_missing_bucket_and_then_finds_it() {
    ensure_server();
    let store = S3Store::new(config("create")).unwrap();
    assert!(store.ensure_bucket().await.unwrap(), "created");
    assert!(!store.ensure_bucket().await.unwrap(), "already there");
    // A second node (a second client) on the same bucket finds it too.
    let other = S3Store::new(store.config().clone()).unwrap();
    assert!(!other.ensure_bucket().await.unwrap());
}

#[tokio::test]
async fn a_bundle_goes_up_and_comes_back_verified() {
    let store = store("roundtrip").await;
    let dir = tempfile::tempdir().unwrap();
    let (path, digest) = bundle_file(dir.path(), "bundle.zip", b"PK not really a zip");
    assert!(!store.has(&digest).await.unwrap());
    assert_eq!(store.put_file(&path, &digest).await.unwrap(), 19);
    assert!(store.has(&digest).await.unwrap());
    // Content-addressed: storing the same bundle again is harmless.
    assert_eq!(store.put_file(&path, &digest).await.unwrap(), 19);

    let dest = dir.path().join("fetched.zip");
    assert_eq!(store.fetch_verified(&digest, &dest).await.unwrap(), 19);
    assert_eq!(std::fs::read(&dest).unwrap(), b"PK not really a zip");
    assert_eq!(entries(dir.path()), ["bundle.zip", "fetched.zip"]);

    store.delete(&digest).await.unwrap();
    assert!(!store.has(&digest).await.unwrap());
    // Deleting what is not there is no error.
    store.delete(&digest).await.unwrap();
}

#[tokio::test]
async fn a_bundle_larger_than_a_part_goes_up_in_parts() {
    let store = store("multipart").await;
    let dir = tempfile::tempdir().unwrap();
    // 8 MiB parts: a full one and a short one. Small enough to stay fast in a debug build,
    // where SHA-256 is slow and the bytes are hashed five times here.
    let content: Vec<u8> = (0..(8 << 20) + 12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (path, digest) = bundle_file(dir.path(), "big.zip", &content);
    let size = content.len() as u64;
    assert_eq!(store.put_file(&path, &digest).await.unwrap(), size);
    let dest = dir.path().join("fetched.zip");
    assert_eq!(store.fetch_verified(&digest, &dest).await.unwrap(), size);
    assert!(std::fs::read(&dest).unwrap() == content);
    // 8 MiB a run would pile up in the server's folder.
    store.delete(&digest).await.unwrap();
}

#[tokio::test]
async fn a_file_that_does_not_match_its_digest_is_not_uploaded() {
    let store = store("mismatch").await;
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = bundle_file(dir.path(), "bundle.zip", b"one");
    let (_, other_digest) = bundle_file(dir.path(), "other.zip", b"two");
    let err = store.put_file(&path, &other_digest).await.unwrap_err();
    assert!(matches!(err, S3Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("nothing was uploaded"), "{err}");
    assert!(!store.has(&other_digest).await.unwrap());
    assert!(matches!(
        store.put_file(&path, "not-a-digest").await,
        Err(S3Error::InvalidDigest(_))
    ));
}

#[tokio::test]
async fn fetching_a_missing_bundle_is_not_found_and_leaves_nothing() {
    let store = store("missing").await;
    let dir = tempfile::tempdir().unwrap();
    let digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let err = store
        .fetch_verified(digest, &dir.path().join("fetched.zip"))
        .await
        .unwrap_err();
    match &err {
        S3Error::NotFound { digest: d, key } => {
            assert_eq!(d, digest);
            assert_eq!(key, &format!("{DEFAULT_PREFIX}{digest}"));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(err.to_string().contains("is not in the S3 store"), "{err}");
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[tokio::test]
async fn a_corrupt_copy_in_the_bucket_is_detected_and_the_download_deleted() {
    let store = store("corrupt").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, digest) = bundle_file(dir.path(), "good.zip", b"the real bundle");
    // Other bytes under the good digest's key, written behind the store's back.
    let raw = Bucket::new(
        &store.config().bucket,
        Region::Custom {
            region: "us-east-1".into(),
            endpoint: endpoint(),
        },
        Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None).unwrap(),
    )
    .unwrap()
    .with_path_style();
    raw.put_object(store.key(&digest).unwrap(), b"the real bundlE")
        .await
        .unwrap();
    assert!(store.has(&digest).await.unwrap());

    let dest = dir.path().join("fetched.zip");
    std::fs::write(&dest, b"an older file at the destination").unwrap();
    let err = store.fetch_verified(&digest, &dest).await.unwrap_err();
    match &err {
        S3Error::Corrupt {
            digest: d, actual, ..
        } => {
            assert_eq!(d, &digest);
            assert_ne!(actual, &digest);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("corrupt"), "{err}");
    // The corrupt bytes never reached the destination, and no temporary file is left.
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"an older file at the destination"
    );
    assert_eq!(entries(dir.path()), ["fetched.zip", "good.zip"]);
}

#[tokio::test]
async fn wrong_credentials_are_a_clear_error() {
    let store = store("creds").await;
    let good = store.config().clone();
    let wrong_secret =
        S3Store::new(good.clone().with_credentials(ACCESS_KEY, "not-the-secret")).unwrap();
    let err = wrong_secret.ensure_bucket().await.unwrap_err();
    assert!(matches!(err, S3Error::Denied { .. }), "{err:?}");
    assert!(err.to_string().contains("--s3-secret-key"), "{err}");

    let wrong_key = S3Store::new(good.with_credentials("nobody", SECRET_KEY)).unwrap();
    let digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let err = wrong_key.has(digest).await.unwrap_err();
    assert!(matches!(err, S3Error::Denied { .. }), "{err:?}");
    let dir = tempfile::tempdir().unwrap();
    let err = wrong_key
        .fetch_verified(digest, &dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, S3Error::Denied { .. }), "{err:?}");
    assert!(entries(dir.path()).is_empty());
}

#[tokio::test]
async fn a_missing_bucket_and_a_dead_endpoint_say_what_to_check() {
    ensure_server();
    let absent = S3Store::new(config("absent")).unwrap();
    let digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    // DELETE, because s3s-fs (unlike S3 and MinIO) does not check the bucket on PUT or GET.
    let err = absent.delete(digest).await.unwrap_err();
    assert!(matches!(err, S3Error::NoSuchBucket { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Nothing listens on port 1: refused at once (after the client's one retry).
    let dead = S3Store::new(config("dead").with_endpoint("http://127.0.0.1:1")).unwrap();
    let err = dead.ensure_bucket().await.unwrap_err();
    assert!(matches!(err, S3Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("--s3-endpoint"), "{err}");
}
