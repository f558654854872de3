//! What every handler gets: the agent's services and the limits the router enforces.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::rate_limit::{Limiter, RateLimit};

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
    /// Silence after which an event stream sends a heartbeat, so proxies keep it open.
    pub event_heartbeat: Duration,
    /// Calls per token (or address) on the user routes; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
}

/// `--api-rate-limit`'s default: 50 calls a second...
pub const DEFAULT_RATE_PER_SECOND: u32 = 50;
/// ...with bursts of 100 (a `stratus status` of a big cluster, a dashboard's first load).
pub const DEFAULT_RATE_BURST: u32 = 100;

impl ApiConfig {
    pub fn new(upload_dir: PathBuf, max_upload_bytes: u64) -> ApiConfig {
        ApiConfig {
            upload_dir,
            max_upload_bytes,
            request_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(30 * 60),
            body_idle_timeout: Duration::from_secs(60),
            event_heartbeat: Duration::from_secs(15),
            rate_limit: RateLimit::new(DEFAULT_RATE_PER_SECOND, DEFAULT_RATE_BURST),
        }
    }
}

/// What every handler gets: the agent's services and the limits.
pub struct ApiState<S> {
    pub service: Arc<S>,
    pub config: Arc<ApiConfig>,
    /// The callers' buckets, if `config.rate_limit` is set.
    pub limiter: Option<Arc<Limiter>>,
}

impl<S> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            service: self.service.clone(),
            config: self.config.clone(),
            limiter: self.limiter.clone(),
        }
    }
}
