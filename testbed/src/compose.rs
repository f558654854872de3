//! Docker Compose for the tests that run `docker-compose.yml`: the chaos suite's compose
//! variant (`tests/chaos_compose.rs`) and the compose cluster as shipped (`tests/compose.rs`).

use std::process::Command;

/// `docker compose` (v2) if present, else `docker-compose` (v1); `None` without either.
pub fn find_compose() -> Option<Vec<String>> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if works("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if works("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// [`find_compose`], or a panic saying how to install it: for tests, which must fail (not
/// pass silently) where Compose is missing.
pub fn compose_command() -> Vec<String> {
    find_compose().unwrap_or_else(|| {
        panic!(
            "neither `docker compose` nor `docker-compose` is installed: run \
             `bash scripts/install-deps.sh` (as root it installs Debian's docker-compose) \
             or install the Compose v2 plugin"
        )
    })
}
