//! What every handler gets: the agent's services and the limits the router enforces.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// JSON bodies are small; larger ones are refused, not buffered.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// Limits the router enforces. The defaults suit an agent; tests shorten them.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Where uploads are written while they stream in.
    pub upload_dir: PathBuf,
    /// Largest deploy or blob body.
    pub max_upload_bytes: u64,
    /// Longest a request may take before it has an answer (a streamed answer, like a
    /// followed log, may then go on).
    pub request_timeout: Duration,
    /// Longest an upload (deploy, blob copy) may take, body included.
    pub upload_timeout: Duration,
    /// Longest a request body may stall between two chunks.
    pub body_idle_timeout: Duration,
}

impl ApiConfig {
    pub fn new(upload_dir: PathBuf, max_upload_bytes: u64) -> ApiConfig {
        ApiConfig {
            upload_dir,
            max_upload_bytes,
            request_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(30 * 60),
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What every handler gets: the agent's services and the limits.
pub struct ApiState<S> {
    pub service: Arc<S>,
    pub config: Arc<ApiConfig>,
}

impl<S> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            service: self.service.clone(),
            config: self.config.clone(),
        }
    }
}
