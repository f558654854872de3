//! Quota reservations as the tenant's quota keeper makes them: pure, over the catalog's
//! usage and the reservations still in flight.
//!
//! There is no central counter. One node per tenant, its first keeper among the live
//! nodes, answers every reservation of the tenant, so two deploys of one tenant on two
//! nodes at once are counted against each other: the second sees the first's hold before
//! the first's record reaches the catalog. A hold lasts until the app's record shows the
//! change or [`HOLD_MS`] passes (a deploy that failed or never finished).

use std::collections::BTreeMap;

use proto::tenancy::{Quota, Usage};

use crate::tenancy::directory::{QuotaExceeded, check_quota};

/// How long a reservation counts without its record: longer than a deploy with a build.
pub const HOLD_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    usage: Usage,
    until_ms: u64,
}

/// The holds one keeper has granted, by tenant and app.
#[derive(Debug, Default)]
pub struct Reservations {
    holds: BTreeMap<(String, String), Hold>,
}

impl Reservations {
    /// Reserves `asked`, the whole of what `app` will reserve after the change, if the
    /// tenant's other apps (`recorded`, from the catalog, overridden by live holds) leave
    /// room for it under `quota`.
    pub fn reserve(
        &mut self,
        tenant: &str,
        app: &str,
        asked: Usage,
        quota: &Quota,
        recorded: &BTreeMap<String, Usage>,
        now_ms: u64,
    ) -> Result<(), QuotaExceeded> {
        self.holds.retain(|_, hold| hold.until_ms > now_ms);
        let mut used: BTreeMap<&str, Usage> = recorded
            .iter()
            .map(|(name, usage)| (name.as_str(), *usage))
            .collect();
        for ((holder, name), hold) in &self.holds {
            if holder == tenant {
                used.insert(name.as_str(), hold.usage);
            }
        }
        let current = used.remove(app);
        let others = used.into_values().fold(Usage::default(), Usage::plus);
        // Shrinking never needs room: a scale down passes even over a lowered quota.
        let shrinks = current.is_some_and(|current| {
            asked.replicas <= current.replicas
                && asked.cpu_millis <= current.cpu_millis
                && asked.memory_bytes <= current.memory_bytes
        });
        if !shrinks {
            check_quota(quota, others, asked)?;
        }
        self.holds.insert(
            (tenant.to_string(), app.to_string()),
            Hold {
                usage: asked,
                until_ms: now_ms + HOLD_MS,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(replicas: u32) -> Usage {
        Usage {
            apps: 1,
            replicas,
            cpu_millis: 250 * u64::from(replicas),
            memory_bytes: 0,
        }
    }

    fn quota(replicas: u32) -> Quota {
        Quota {
            replicas: Some(replicas),
            ..Quota::default()
        }
    }

    #[test]
    fn concurrent_reservations_of_one_tenant_count_against_each_other() {
        let mut keeper = Reservations::default();
        let recorded = BTreeMap::new();
        assert!(
            keeper
                .reserve("acme", "a", usage(2), &quota(3), &recorded, 0)
                .is_ok()
        );
        // "a" is not in the catalog yet: its hold still counts.
        let err = keeper
            .reserve("acme", "b", usage(2), &quota(3), &recorded, 1)
            .unwrap_err();
        assert_eq!(
            (err.used.as_str(), err.asked.as_str(), err.limit.as_str()),
            ("2", "2", "3")
        );
        // Another tenant is not counted.
        assert!(
            keeper
                .reserve("other", "c", usage(3), &quota(3), &recorded, 1)
                .is_ok()
        );
    }

    #[test]
    fn a_redeploy_replaces_its_own_reservation_and_holds_expire() {
        let mut keeper = Reservations::default();
        let recorded = BTreeMap::from([("a".to_string(), usage(2))]);
        assert!(
            keeper
                .reserve("acme", "a", usage(3), &quota(3), &recorded, 0)
                .is_ok()
        );
        assert!(
            keeper
                .reserve("acme", "a", usage(3), &quota(3), &recorded, 1)
                .is_ok()
        );
        assert!(
            keeper
                .reserve("acme", "b", usage(1), &quota(3), &recorded, 2)
                .is_err()
        );
        // The hold on "a" lapsed and the catalog says 2.
        assert!(
            keeper
                .reserve("acme", "b", usage(1), &quota(3), &recorded, HOLD_MS + 1)
                .is_ok()
        );
    }

    #[test]
    fn scaling_down_passes_even_over_a_lowered_quota() {
        let mut keeper = Reservations::default();
        let recorded = BTreeMap::from([("a".to_string(), usage(5))]);
        assert!(
            keeper
                .reserve("acme", "a", usage(4), &quota(2), &recorded, 0)
                .is_ok()
        );
        assert!(
            keeper
                .reserve("acme", "a", usage(5), &quota(2), &recorded, 1)
                .is_err()
        );
    }
}
