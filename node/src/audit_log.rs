//! The audit log of one node: every mutating API call it served, one JSON line each in
//! `<data dir>/audit.jsonl`, kept on this node only. `stratus audit` gathers them from
//! every live node ([`crate::operations::audit`]). The file turns over at
//! [`MAX_FILE_BYTES`], keeping one older file.

use std::path::{Path, PathBuf};

use api::AuditQuery;
use proto::api::AuditRecord;
use tokio::io::AsyncWriteExt as _;
use tracing::warn;

/// Size at which `audit.jsonl` becomes `audit.jsonl.1` (replacing the older one).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

pub struct AuditLog {
    path: PathBuf,
    /// Serialises appends and turnovers.
    writing: tokio::sync::Mutex<()>,
}

impl AuditLog {
    pub fn new(data_dir: &Path) -> AuditLog {
        AuditLog {
            path: data_dir.join("audit.jsonl"),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Appends `record`, durably. A failure is logged, never the caller's: the call it
    /// records has already been answered.
    pub async fn append(&self, record: &AuditRecord) {
        let _writing = self.writing.lock().await;
        if let Err(err) = self.try_append(record).await {
            warn!(path = %self.path.display(), error = %err, "cannot write the audit log");
        }
    }

    async fn try_append(&self, record: &AuditRecord) -> std::io::Result<()> {
        if tokio::fs::metadata(&self.path)
            .await
            .is_ok_and(|meta| meta.len() >= MAX_FILE_BYTES)
        {
            tokio::fs::rename(&self.path, self.path.with_extension("jsonl.1")).await?;
        }
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        file.write_all(&line).await?;
        file.sync_data().await
    }

    /// This node's records matching `query`, oldest first.
    pub async fn read(&self, query: &AuditQuery) -> std::io::Result<Vec<AuditRecord>> {
        let mut records = Vec::new();
        for path in [self.path.with_extension("jsonl.1"), self.path.clone()] {
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            records.extend(
                text.lines()
                    .filter_map(|line| serde_json::from_str::<AuditRecord>(line).ok())
                    .filter(|record| matches(record, query)),
            );
        }
        Ok(records)
    }
}

/// Whether `record` is one `query` asks for.
pub fn matches(record: &AuditRecord, query: &AuditQuery) -> bool {
    query
        .tenant
        .as_deref()
        .is_none_or(|tenant| record.tenant.as_deref() == Some(tenant))
        && query.since_ms.is_none_or(|since| record.at_ms >= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at_ms: u64, tenant: Option<&str>) -> AuditRecord {
        AuditRecord {
            at_ms,
            node: "n1".into(),
            token_id: "t".into(),
            token_name: None,
            tenant: tenant.map(str::to_string),
            action: "POST /v1/apps/{app}/scale".into(),
            target: "/v1/apps/web/scale".into(),
            status: 202,
            source: "127.0.0.1:1".into(),
        }
    }

    #[tokio::test]
    async fn records_survive_in_order_and_filter_by_tenant_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&record(1, Some("acme"))).await;
        log.append(&record(2, Some("globex"))).await;
        log.append(&record(3, None)).await;
        log.append(&record(4, Some("acme"))).await;
        let all = log.read(&AuditQuery::default()).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let acme = AuditQuery {
            tenant: Some("acme".into()),
            since_ms: Some(2),
        };
        let found = log.read(&acme).await.unwrap();
        assert_eq!(found.iter().map(|r| r.at_ms).collect::<Vec<_>>(), [4]);
        // A torn last line (a crash mid-write) is skipped, not fatal.
        std::fs::write(
            dir.path().join("audit.jsonl"),
            format!(
                "{}\n{{\"at_ms\":",
                serde_json::to_string(&record(9, None)).unwrap()
            ),
        )
        .unwrap();
        assert_eq!(log.read(&AuditQuery::default()).await.unwrap().len(), 1);
    }
}
