//! Who may call which app, for a proxy whose callers are scoped: the node-local balancer
//! behind `APP.internal`, which serves a node's containers and must keep each tenant to
//! its own apps. The public ingress has no scope: anyone may reach any app it routes.
//!
//! The proxy only asks; the answer comes from whoever knows which address belongs to whom
//! (the agent's record of its tenant networks), handed in as a [`Callers`].

use std::net::IpAddr;

/// Who a client address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The host itself (loopback) or the administrator's own containers: every app.
    Anyone,
    /// A container on this tenant's network: its apps only. Another tenant's app is
    /// unknown to it (404), exactly as an absent one, the API's and DNS's rule.
    Tenant(String),
    /// Not a caller this proxy serves (another host, an unknown network): 403.
    Stranger,
}

/// Tells callers apart by their address. Called once per request, on the proxy's threads:
/// it must be quick and must not block.
pub trait Callers: Send + Sync + 'static {
    fn caller(&self, client: IpAddr) -> Caller;
}

/// Whether a request of `caller` may reach `app`, `owner`'s (`None`: the administrator's).
pub fn may_reach(caller: &Caller, owner: Option<&str>) -> bool {
    match caller {
        Caller::Anyone => true,
        Caller::Tenant(tenant) => owner == Some(tenant.as_str()),
        Caller::Stranger => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_reaches_its_own_apps_only() {
        let acme = Caller::Tenant("acme".into());
        assert!(may_reach(&acme, Some("acme")));
        assert!(!may_reach(&acme, Some("globex")));
        assert!(!may_reach(&acme, None), "not the administrator's apps");
        assert!(may_reach(&Caller::Anyone, Some("globex")));
        assert!(may_reach(&Caller::Anyone, None));
        assert!(!may_reach(&Caller::Stranger, None));
    }
}
