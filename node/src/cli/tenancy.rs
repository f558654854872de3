//! `stratus tenant`, `stratus token` and `stratus whoami` answers as tables and lines.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{Cell, Table};
use proto::api::{TenantsResponse, TokenCreated, TokensResponse, WhoAmI};
use proto::tenancy::Quota;

use crate::control::hlc::unix_ms;

/// `stratus tenant list`.
pub fn tenants_table(response: &TenantsResponse) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "TENANT",
        "ISOLATION",
        "APPS",
        "REPLICAS",
        "CPU",
        "MEMORY",
    ]);
    for tenant in &response.tenants {
        let used = tenant.used;
        let limit = |used: String, limit: Option<String>| match limit {
            Some(limit) => format!("{used} / {limit}"),
            None => used,
        };
        table.add_row(vec![
            Cell::new(&tenant.name),
            Cell::new(tenant.isolation.as_str()),
            Cell::new(limit(
                used.apps.to_string(),
                tenant.quota.apps.map(|n| n.to_string()),
            )),
            Cell::new(limit(
                used.replicas.to_string(),
                tenant.quota.replicas.map(|n| n.to_string()),
            )),
            Cell::new(limit(
                cores(used.cpu_millis),
                tenant.quota.cpu_millis.map(cores),
            )),
            Cell::new(limit(
                bytes(used.memory_bytes),
                tenant.quota.memory_bytes.map(bytes),
            )),
        ]);
    }
    table.to_string()
}

/// `stratus token list`.
pub fn tokens_table(response: &TokensResponse) -> String {
    let now = unix_ms();
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["ID", "TENANT", "ROLE", "NAME", "EXPIRES", "STATE"]);
    for token in &response.tokens {
        let state = if token.revoked_at_ms.is_some() {
            "revoked"
        } else if token.expires_at_ms.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        };
        table.add_row(vec![
            Cell::new(&token.id),
            Cell::new(&token.tenant),
            Cell::new(token.role.as_str()),
            Cell::new(token.name.as_deref().unwrap_or("-")),
            Cell::new(expiry(token.expires_at_ms, now)),
            Cell::new(state),
        ]);
    }
    table.to_string()
}

/// What `stratus token create` prints: the token once, and how to use it.
pub fn token_created(created: &TokenCreated) -> String {
    format!(
        "{}\n\ntoken {} for tenant {} with role {} ({}). This is the only time it is shown: \
         keep it now.\nUse it with --token or STRATUS_API_TOKEN; revoke it with \
         `stratus token revoke {}`.",
        created.token,
        created.view.id,
        created.view.tenant,
        created.view.role,
        expiry(created.view.expires_at_ms, unix_ms()),
        created.view.id,
    )
}

/// `stratus whoami`.
pub fn whoami(who: &WhoAmI) -> String {
    if who.admin {
        return "cluster administrator (the agents' --api-token): every tenant".to_string();
    }
    format!(
        "tenant {}, role {}, token {}{}, {}",
        who.tenant.as_deref().unwrap_or("-"),
        who.role,
        who.token_id,
        who.token_name
            .as_deref()
            .map(|name| format!(" ({name})"))
            .unwrap_or_default(),
        expiry(who.expires_at_ms, unix_ms()),
    )
}

/// A quota line for `stratus tenant quota`.
pub fn quota_line(tenant: &str, quota: &Quota) -> String {
    let part = |name: &str, value: Option<String>| {
        format!("{name} {}", value.unwrap_or_else(|| "unlimited".into()))
    };
    format!(
        "{tenant}: {}, {}, {}, {}",
        part("apps", quota.apps.map(|n| n.to_string())),
        part("replicas", quota.replicas.map(|n| n.to_string())),
        part("cpu", quota.cpu_millis.map(cores)),
        part("memory", quota.memory_bytes.map(bytes)),
    )
}

fn expiry(expires_at_ms: Option<u64>, now_ms: u64) -> String {
    match expires_at_ms {
        None => "never expires".to_string(),
        Some(at) if at <= now_ms => "expired".to_string(),
        Some(at) => format!(
            "expires in {}",
            humantime::format_duration(std::time::Duration::from_secs((at - now_ms) / 1000))
        ),
    }
}

fn cores(millis: u64) -> String {
    format!("{}", millis as f64 / 1000.0)
}

fn bytes(value: u64) -> String {
    bytesize::ByteSize::b(value).display().iec().to_string()
}

/// `stratus audit`.
pub fn audit_table(response: &proto::api::AuditResponse) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "TIME", "NODE", "TENANT", "TOKEN", "ACTION", "TARGET", "STATUS", "SOURCE",
    ]);
    for record in &response.records {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.at_ms);
        let token = match &record.token_name {
            Some(name) => format!("{} ({name})", record.token_id),
            None => record.token_id.clone(),
        };
        table.add_row(vec![
            Cell::new(humantime::format_rfc3339_seconds(time)),
            Cell::new(&record.node),
            Cell::new(record.tenant.as_deref().unwrap_or("-")),
            Cell::new(token),
            Cell::new(&record.action),
            Cell::new(&record.target),
            Cell::new(record.status),
            Cell::new(&record.source),
        ]);
    }
    let mut text = table.to_string();
    if !response.unreachable.is_empty() {
        text.push_str(&format!(
            "\nmissing the records of {} (not answering)",
            response.unreachable.join(", ")
        ));
    }
    text
}
