//! Placement decisions: where the replicas of an app should run. Pure code: the gossip
//! view and an RNG come in, ranked candidate lists come out; the target node has the last
//! word through [`Admission`], so stale views can never overcommit a node.
//!
//! Several nodes may schedule at once from slightly different views. If each picked "the"
//! least-loaded node they would all pile onto it (herding); picking the better of two
//! random candidates among the best few (power of two choices) spreads concurrent
//! decisions while staying close to optimal.

use std::collections::BTreeMap;

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

/// What scheduling knows about one node, from its gossiped identity and load.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCandidate {
    pub node_id: String,
    pub live: bool,
    pub draining: bool,
    pub cpu_capacity_millis: u64,
    pub mem_capacity_bytes: u64,
    pub reserved_cpu_millis: u64,
    pub reserved_mem_bytes: u64,
    /// Live utilisation, 0 to 100.
    pub cpu_usage_pct: f32,
    pub mem_available_bytes: u64,
    pub containers: usize,
    /// Replicas of the app being placed that already run there.
    pub replicas_of_app: usize,
}

/// What one replica reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub cpu_millis: u64,
    pub mem_bytes: u64,
}

impl NodeCandidate {
    fn fits(&self, needs: Needs) -> bool {
        self.reserved_cpu_millis.saturating_add(needs.cpu_millis) <= self.cpu_capacity_millis
            && self.reserved_mem_bytes.saturating_add(needs.mem_bytes) <= self.mem_capacity_bytes
    }

    /// Lower is better. Spreading one app's replicas beats everything; then reservations
    /// (what is promised), then live load (what is used), then container count.
    fn score(&self) -> (usize, u64, u64, u64) {
        let reserved = fraction(self.reserved_cpu_millis, self.cpu_capacity_millis)
            .max(fraction(self.reserved_mem_bytes, self.mem_capacity_bytes));
        let mem_used = 1.0 - fraction(self.mem_available_bytes, self.mem_capacity_bytes);
        let live = (f64::from(self.cpu_usage_pct) / 100.0).max(mem_used);
        // Quantised so tiny jitter in live load does not outrank a real difference.
        (
            self.replicas_of_app,
            (reserved * 100.0).round() as u64,
            (live * 20.0).round() as u64,
            self.containers as u64,
        )
    }
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        (part as f64 / whole as f64).clamp(0.0, 1.0)
    }
}

/// Where one replica should go: try `candidates` in order until one admits it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ReplicaPlan {
    pub replica: u32,
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "no live node has room for {cpu_millis} millicores and {mem_bytes} bytes of memory \
         ({live} live nodes): lower the app's [resources] or add nodes"
    )]
    NoCapacity {
        cpu_millis: u64,
        mem_bytes: u64,
        live: usize,
    },
}

/// How many of the best candidates the two random choices are drawn from.
const CHOICE_POOL: usize = 4;

/// Plans `replicas` replicas (numbered from `first_replica`). Each plan lists every node
/// that could take the replica, best guess first, so a refusal moves on without
/// rescheduling. Replicas of one app go to distinct nodes while there are enough.
pub fn plan(
    nodes: &[NodeCandidate],
    needs: Needs,
    first_replica: u32,
    replicas: u32,
    rng: &mut impl Rng,
) -> Result<Vec<ReplicaPlan>, ScheduleError> {
    let mut pool: Vec<NodeCandidate> = nodes
        .iter()
        .filter(|node| node.live && !node.draining)
        .cloned()
        .collect();
    let live = pool.len();
    let mut plans = Vec::with_capacity(replicas as usize);
    for replica in first_replica..first_replica + replicas {
        let mut fitting: Vec<usize> = (0..pool.len()).filter(|&i| pool[i].fits(needs)).collect();
        if fitting.is_empty() {
            return Err(ScheduleError::NoCapacity {
                cpu_millis: needs.cpu_millis,
                mem_bytes: needs.mem_bytes,
                live,
            });
        }
        // Shuffle first so equally good nodes are ordered differently by each scheduler:
        // a fixed tie-break would make every scheduler draw from the same few nodes.
        fitting.shuffle(rng);
        fitting.sort_by_key(|&i| pool[i].score());
        // Only near-equals compete: same spread group, reservations within 10 points.
        let best = pool[fitting[0]].score();
        let pool_size = fitting
            .iter()
            .take(CHOICE_POOL)
            .take_while(|&&i| {
                let score = pool[i].score();
                score.0 == best.0 && score.1 <= best.1 + 10
            })
            .count();
        let chosen_rank = two_choices(pool_size, rng);
        let chosen = fitting.remove(chosen_rank);
        let mut candidates = vec![pool[chosen].node_id.clone()];
        candidates.extend(fitting.iter().map(|&i| pool[i].node_id.clone()));
        // Later replicas see this one's reservation and spread away from it.
        let node = &mut pool[chosen];
        node.reserved_cpu_millis += needs.cpu_millis;
        node.reserved_mem_bytes += needs.mem_bytes;
        node.containers += 1;
        node.replicas_of_app += 1;
        plans.push(ReplicaPlan {
            replica,
            candidates,
        });
    }
    Ok(plans)
}

/// Rank (0 = best) picked by two random draws among the `pool_size` best: the better wins.
fn two_choices(pool_size: usize, rng: &mut impl Rng) -> usize {
    if pool_size <= 1 {
        return 0;
    }
    let ranks: Vec<usize> = (0..pool_size).collect();
    let first = ranks.choose(rng).copied().unwrap_or(0);
    let second = ranks.choose(rng).copied().unwrap_or(0);
    first.min(second)
}

/// The target node's ledger of what it promised. It alone decides, against its real
/// reservations, so concurrent schedulers working from stale views cannot overcommit it.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    cpu_capacity_millis: u64,
    mem_capacity_bytes: u64,
    admitted: BTreeMap<String, Needs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum AdmitDecision {
    Admitted,
    /// The same placement was admitted before: a retry, not a second copy.
    AlreadyAdmitted,
    Refused {
        reason: String,
    },
}

impl Admission {
    pub fn new(cpu_capacity_millis: u64, mem_capacity_bytes: u64) -> Admission {
        Admission {
            cpu_capacity_millis,
            mem_capacity_bytes,
            admitted: BTreeMap::new(),
        }
    }

    pub fn admit(&mut self, placement_id: &str, needs: Needs) -> AdmitDecision {
        if self.admitted.contains_key(placement_id) {
            return AdmitDecision::AlreadyAdmitted;
        }
        let (cpu, mem) = self.reserved();
        if cpu.saturating_add(needs.cpu_millis) > self.cpu_capacity_millis {
            return AdmitDecision::Refused {
                reason: format!(
                    "cpu: {cpu} of {} millicores reserved, {} more asked",
                    self.cpu_capacity_millis, needs.cpu_millis
                ),
            };
        }
        if mem.saturating_add(needs.mem_bytes) > self.mem_capacity_bytes {
            return AdmitDecision::Refused {
                reason: format!(
                    "memory: {mem} of {} bytes reserved, {} more asked",
                    self.mem_capacity_bytes, needs.mem_bytes
                ),
            };
        }
        self.admitted.insert(placement_id.to_string(), needs);
        AdmitDecision::Admitted
    }

    /// Frees a placement's reservation (its container is gone). Unknown ids are ignored.
    pub fn release(&mut self, placement_id: &str) {
        self.admitted.remove(placement_id);
    }

    /// (millicores, bytes) currently promised.
    pub fn reserved(&self) -> (u64, u64) {
        self.admitted.values().fold((0, 0), |(cpu, mem), needs| {
            (cpu + needs.cpu_millis, mem + needs.mem_bytes)
        })
    }

    pub fn placements(&self) -> impl Iterator<Item = &str> {
        self.admitted.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn node(id: &str, reserved_cpu: u64) -> NodeCandidate {
        NodeCandidate {
            node_id: id.into(),
            live: true,
            draining: false,
            cpu_capacity_millis: 2000,
            mem_capacity_bytes: 4 << 30,
            reserved_cpu_millis: reserved_cpu,
            reserved_mem_bytes: 0,
            cpu_usage_pct: 10.0,
            mem_available_bytes: 3 << 30,
            containers: 0,
            replicas_of_app: 0,
        }
    }

    const NEEDS: Needs = Needs {
        cpu_millis: 500,
        mem_bytes: 256 << 20,
    };

    #[test]
    fn dead_draining_and_full_nodes_are_never_chosen() {
        let mut dead = node("dead", 0);
        dead.live = false;
        let mut draining = node("draining", 0);
        draining.draining = true;
        let full = node("full", 1800);
        let ok = node("ok", 1000);
        let plans = plan(
            &[dead, draining, full, ok],
            NEEDS,
            0,
            1,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        assert_eq!(plans[0].candidates, vec!["ok"]);
    }

    #[test]
    fn replicas_spread_over_distinct_nodes_and_prefer_the_least_reserved() {
        let nodes = [node("a", 1500), node("b", 0), node("c", 0), node("d", 500)];
        let plans = plan(&nodes, NEEDS, 0, 3, &mut StdRng::seed_from_u64(7)).unwrap();
        let chosen: Vec<&str> = plans.iter().map(|p| p.candidates[0].as_str()).collect();
        let mut distinct = chosen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{chosen:?}");
        assert!(
            !chosen.contains(&"a"),
            "the most reserved node was chosen: {chosen:?}"
        );
        // Every plan keeps fallbacks for a refusal.
        assert!(plans.iter().all(|p| p.candidates.len() >= 2));
    }

    #[test]
    fn more_replicas_than_nodes_doubles_up_rather_than_failing() {
        let plans = plan(
            &[node("a", 0), node("b", 0)],
            NEEDS,
            0,
            3,
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[2].replica, 2);
    }

    #[test]
    fn no_capacity_is_an_error_with_the_reason() {
        let err = plan(
            &[node("a", 1900)],
            NEEDS,
            0,
            1,
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no live node has room"), "{err}");
    }

    #[test]
    fn admission_never_overcommits_and_is_idempotent() {
        let mut admission = Admission::new(1000, 1 << 30);
        assert_eq!(admission.admit("p1", NEEDS), AdmitDecision::Admitted);
        assert_eq!(admission.admit("p1", NEEDS), AdmitDecision::AlreadyAdmitted);
        assert_eq!(admission.admit("p2", NEEDS), AdmitDecision::Admitted);
        assert!(matches!(
            admission.admit("p3", NEEDS),
            AdmitDecision::Refused { .. }
        ));
        admission.release("p1");
        assert_eq!(admission.admit("p3", NEEDS), AdmitDecision::Admitted);
        assert_eq!(admission.reserved(), (1000, 512 << 20));
    }

    /// Many schedulers place at once from the same stale view of 1,000 nodes; every
    /// decision goes through its target's admission. No node is overcommitted, and the
    /// load spreads instead of herding onto the single best node.
    #[test]
    fn a_thousand_nodes_and_fifty_concurrent_schedulers_neither_herd_nor_overcommit() {
        let mut rng = StdRng::seed_from_u64(42);
        let view: Vec<NodeCandidate> = (0..1000)
            .map(|i| node(&format!("n{i:04}"), if i < 10 { 0 } else { 1000 }))
            .collect();
        let mut admissions: BTreeMap<String, Admission> = view
            .iter()
            .map(|n| {
                let mut admission = Admission::new(n.cpu_capacity_millis, n.mem_capacity_bytes);
                // Pre-existing reservations, as the view says.
                if n.reserved_cpu_millis > 0 {
                    let _ = admission.admit(
                        "existing",
                        Needs {
                            cpu_millis: n.reserved_cpu_millis,
                            mem_bytes: 0,
                        },
                    );
                }
                (n.node_id.clone(), admission)
            })
            .collect();
        let mut first_choices: BTreeMap<String, usize> = BTreeMap::new();
        for scheduler in 0..50 {
            let plans = plan(&view, NEEDS, 0, 1, &mut rng).unwrap();
            *first_choices
                .entry(plans[0].candidates[0].clone())
                .or_default() += 1;
            let placed = plans[0].candidates.iter().any(|target| {
                let admission = admissions.get_mut(target).unwrap();
                admission.admit(&format!("s{scheduler}"), NEEDS) == AdmitDecision::Admitted
            });
            assert!(placed, "scheduler {scheduler} could not place");
        }
        for (id, admission) in &admissions {
            assert!(admission.reserved().0 <= 2000, "{id} overcommitted");
        }
        let busiest = first_choices.values().max().copied().unwrap_or(0);
        assert!(
            busiest <= 12,
            "herding: one node was the first choice of {busiest} of 50 schedulers"
        );
        assert!(
            first_choices.len() >= 3,
            "choices did not spread: {first_choices:?}"
        );
    }
}
