//! `stratus config`: an app's config vars read, or changed as one new release rolled out
//! like a restart ([`crate::secrets`] seals them).

use api::{ApiError, ErrorCode, ServiceError};
use proto::api::{ChangeAccepted, ConfigChange, ConfigView};

use crate::handles::AgentHandles;
use crate::operations::changes::{copy_release, current, release_of};
use crate::secrets::{self, ConfigError};

pub async fn view(agent: &AgentHandles, app: &str, show: bool) -> Result<ConfigView, ApiError> {
    let existing = current(agent, app).await?;
    let release = release_of(&existing, app)?;
    let vars = secrets::open(agent.config.keyring.as_ref(), app, release.config.as_ref())
        .map_err(ApiError::from_service)?;
    Ok(ConfigView {
        app: app.to_string(),
        release: release.number,
        vars: vars
            .into_iter()
            .map(|(key, value)| (key, show.then_some(value)))
            .collect(),
    })
}

pub async fn change(
    agent: &AgentHandles,
    app: &str,
    change: ConfigChange,
) -> Result<ChangeAccepted, ApiError> {
    let existing = current(agent, app).await?;
    let release = release_of(&existing, app)?.clone();
    let keyring = agent.config.keyring.as_ref();
    let vars =
        secrets::open(keyring, app, release.config.as_ref()).map_err(ApiError::from_service)?;
    let vars = secrets::change(vars, &change.set, &change.unset).map_err(ApiError::from_service)?;
    let sealed =
        secrets::seal(keyring, app, &vars, &mut rand::rng()).map_err(ApiError::from_service)?;
    // Names only: the note is shown by `stratus releases` and logged.
    let mut parts = Vec::new();
    if !change.set.is_empty() {
        let keys: Vec<&str> = change.set.keys().map(String::as_str).collect();
        parts.push(format!("set {}", keys.join(", ")));
    }
    if !change.unset.is_empty() {
        parts.push(format!("unset {}", change.unset.join(", ")));
    }
    let note = format!("config: {}", parts.join("; "));
    let source = proto::catalog::Release {
        config: Some(sealed),
        ..release
    };
    copy_release(agent, existing, source, note).await
}

impl ServiceError for ConfigError {
    fn error_code(&self) -> ErrorCode {
        match self {
            ConfigError::BadKey(_) | ConfigError::Empty => ErrorCode::BadRequest,
            ConfigError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            ConfigError::NoKey => ErrorCode::Conflict,
            ConfigError::UnknownKey(_) | ConfigError::Corrupt => ErrorCode::Internal,
        }
    }
}
