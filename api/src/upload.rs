//! Streams a request body to a file, hashing it on the way and enforcing a size limit, so
//! an upload is never held whole in memory.

use std::path::{Path, PathBuf};

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::checksum::Sha256Stream;
use crate::error::ApiError;

/// A body saved to disk. The file is removed when this is dropped unless it was kept.
#[derive(Debug)]
pub struct Upload {
    path: Option<PathBuf>,
    pub sha256: String,
    pub size: u64,
}

impl Upload {
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Hands the file over to the caller, who becomes responsible for it.
    pub fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) async fn save_body(mut body: Body, dir: &Path, limit: u64) -> Result<Upload, ApiError> {
    tokio::fs::create_dir_all(dir).await.map_err(|err| {
        ApiError::Internal(format!("cannot create upload dir {}: {err}", dir.display()))
    })?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("upload-{}-{n}.part", std::process::id()));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|err| ApiError::Internal(format!("cannot create {}: {err}", path.display())))?;
    // From here on the guard removes the file on every early return.
    let mut upload = Upload {
        path: Some(path),
        sha256: String::new(),
        size: 0,
    };
    let mut hasher = Sha256Stream::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(upload_error)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if hasher.bytes() + data.len() as u64 > limit {
            return Err(ApiError::upload_too_large(limit));
        }
        hasher.update(&data);
        file.write_all(&data)
            .await
            .map_err(|err| ApiError::Internal(format!("cannot write upload: {err}")))?;
    }
    file.sync_all()
        .await
        .map_err(|err| ApiError::Internal(format!("cannot sync upload: {err}")))?;
    let checksum = hasher.finish();
    upload.sha256 = checksum.digest;
    upload.size = checksum.bytes;
    Ok(upload)
}

/// A body that failed while streaming in: the client went away, or it stalled longer than
/// the router's body idle timeout.
fn upload_error(err: axum::Error) -> ApiError {
    let stalled = std::error::Error::source(&err)
        .is_some_and(|source| source.is::<tower_http::timeout::TimeoutError>());
    if stalled {
        ApiError::BadRequest(
            "upload stalled: no data arrived for too long; check the connection and deploy again"
                .into(),
        )
    } else {
        ApiError::BadRequest(format!("upload interrupted: {err}"))
    }
}
