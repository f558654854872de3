//! `stratus tenant`, `stratus token`, `stratus whoami` and `stratus audit`: arguments and the calls they
//! make. What they print is `node::cli::tenancy`'s.

use std::time::Duration;

use clap::Subcommand;
use node::cli::tenancy as show;
use proto::api::{CreateTenantRequest, CreateTokenRequest};
use proto::tenancy::{Isolation, Quota, Role};

use crate::Target;

#[derive(Subcommand)]
pub enum TenantAction {
    /// Create a tenant (cluster administrator)
    Create {
        name: String,
        /// How its replicas run: container (runc, hardened) or gvisor (runsc)
        #[arg(long, default_value = "container", value_parser = parse_isolation)]
        isolation: Isolation,
        #[command(flatten)]
        target: Target,
    },
    /// List the tenants with their quotas and what they use
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Delete a tenant that has no apps left; its tokens stop working
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set a tenant's quota (cluster administrator); a limit left out is unlimited
    Quota {
        name: String,
        #[arg(long)]
        apps: Option<u32>,
        #[arg(long)]
        replicas: Option<u32>,
        /// Total CPU its replicas reserve, in cores (e.g. 8 or 0.5)
        #[arg(long, value_parser = parse_cores)]
        cpu: Option<u64>,
        /// Total memory its replicas reserve (e.g. 16GiB, 512MiB)
        #[arg(long, value_parser = parse_bytes)]
        memory: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Create a token for a tenant; it is shown once
    Create {
        #[arg(long)]
        tenant: String,
        /// read (apps, status, logs), deploy (read + changes) or admin (deploy + tokens)
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// What the token is for (ci, laptop)
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30d or 12h [default: until revoked]
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        #[command(flatten)]
        target: Target,
    },
    /// List tokens (never their secrets)
    List {
        /// Only this tenant's (the cluster administrator sees every tenant's)
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id: every node refuses it within a few gossip rounds
    Revoke {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn tenant(action: TenantAction) -> anyhow::Result<()> {
    match action {
        TenantAction::Create {
            name,
            isolation,
            target,
        } => {
            let tenant = target
                .client()?
                .create_tenant(&CreateTenantRequest {
                    name,
                    isolation,
                    quota: Quota::default(),
                })
                .await?;
            println!(
                "tenant {} created ({}); give it a token with `stratus token create --tenant {} --role admin`",
                tenant.name,
                tenant.isolation.as_str(),
                tenant.name
            );
        }
        TenantAction::List { target, json } => {
            let tenants = target.client()?.tenants().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tenants)?);
            } else {
                println!("{}", show::tenants_table(&tenants));
            }
        }
        TenantAction::Delete { name, target } => {
            target.client()?.delete_tenant(&name).await?;
            println!("tenant {name} deleted: its tokens stop working on every node");
        }
        TenantAction::Quota {
            name,
            apps,
            replicas,
            cpu,
            memory,
            target,
        } => {
            let quota = Quota {
                apps,
                replicas,
                cpu_millis: cpu,
                memory_bytes: memory,
            };
            let tenant = target.client()?.set_quota(&name, &quota).await?;
            println!("{}", show::quota_line(&tenant.name, &tenant.quota));
        }
    }
    Ok(())
}

pub async fn token(action: TokenAction) -> anyhow::Result<()> {
    match action {
        TokenAction::Create {
            tenant,
            role,
            name,
            expires,
            target,
        } => {
            let created = target
                .client()?
                .create_token(&CreateTokenRequest {
                    tenant,
                    role,
                    name,
                    expires_in_secs: expires.map(|lifetime| lifetime.as_secs().max(1)),
                })
                .await?;
            println!("{}", show::token_created(&created));
        }
        TokenAction::List {
            tenant,
            target,
            json,
        } => {
            let tokens = target.client()?.tokens(tenant.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                println!("{}", show::tokens_table(&tokens));
            }
        }
        TokenAction::Revoke { id, target } => {
            target.client()?.revoke_token(&id).await?;
            println!("token {id} revoked: every node refuses it within a few seconds");
        }
    }
    Ok(())
}

pub async fn whoami(target: Target, json: bool) -> anyhow::Result<()> {
    let who = target.client()?.whoami().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&who)?);
    } else {
        println!("{}", show::whoami(&who));
    }
    Ok(())
}

pub async fn audit(
    target: Target,
    tenant: Option<String>,
    since: Option<Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let since_ms = since.map(|ago| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(ago).as_millis() as u64
    });
    let records = target
        .client()?
        .gather_audit(&api::AuditQuery { tenant, since_ms })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        println!("{}", show::audit_table(&records));
    }
    Ok(())
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not a role: use read, deploy or admin"))
}

fn parse_isolation(text: &str) -> Result<Isolation, String> {
    match text {
        "container" => Ok(Isolation::Container),
        "gvisor" => Ok(Isolation::Gvisor),
        _ => Err(format!(
            "{text:?} is not an isolation: use container or gvisor"
        )),
    }
}

fn parse_cores(text: &str) -> Result<u64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|cores| cores.is_finite() && *cores > 0.0)
        .map(|cores| (cores * 1000.0).round() as u64)
        .ok_or_else(|| format!("{text:?} is not a number of cores: write 8 or 0.5"))
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|err| format!("{text:?} is not a size ({err}): write 16GiB or 512MiB"))
}
