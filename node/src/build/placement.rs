//! Where a build runs: placed like a replica, on the least-burdened node that can reserve
//! the build's CPU and memory, among the nodes that can build (they have Docker). The node
//! that accepted the upload gets no preference. A node that built the same dependency
//! layer before is tried first when it has room: there the layer is cached, and nothing is
//! installed again. Pure: candidates and an RNG in, nodes to try in order out.

use rand::Rng;

use crate::control::scheduler::{self, Needs, NodeCandidate, ScheduleError};

/// The nodes to ask, in order: each may still refuse (its own ledger decides), and a node
/// that died mid-build is `excluded` from the next attempt.
pub fn build_nodes(
    candidates: &[NodeCandidate],
    needs: Needs,
    cached_on: Option<&str>,
    excluded: &[String],
    rng: &mut impl Rng,
) -> Result<Vec<String>, ScheduleError> {
    let pool: Vec<NodeCandidate> = candidates
        .iter()
        .filter(|node| !excluded.contains(&node.node_id))
        .cloned()
        // A build is not a replica of the app: spreading away from its replicas is not a goal.
        .map(|node| NodeCandidate {
            replicas_of_app: 0,
            ..node
        })
        .collect();
    let mut plan = scheduler::plan(&pool, needs, 0, 1, rng)?
        .pop()
        .map(|plan| plan.candidates)
        .unwrap_or_default();
    if let Some(cached) = cached_on
        && let Some(at) = plan.iter().position(|node| node == cached)
    {
        let node = plan.remove(at);
        plan.insert(0, node);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn node(id: &str, reserved_cpu: u64) -> NodeCandidate {
        NodeCandidate {
            node_id: id.into(),
            live: true,
            draining: false,
            cpu_capacity_millis: 2_000,
            mem_capacity_bytes: 4 << 30,
            reserved_cpu_millis: reserved_cpu,
            reserved_mem_bytes: 0,
            cpu_usage_pct: 10.0,
            mem_available_bytes: 3 << 30,
            containers: 0,
            replicas_of_app: 0,
        }
    }

    const BUILD: Needs = Needs {
        cpu_millis: 1_000,
        mem_bytes: 1 << 30,
    };

    #[test]
    fn a_build_goes_to_the_least_reserved_node_that_fits() {
        let nodes = [node("busy", 1_500), node("idle", 0), node("half", 900)];
        for seed in 0..50 {
            let plan = build_nodes(&nodes, BUILD, None, &[], &mut StdRng::seed_from_u64(seed))
                .expect("room");
            // busy cannot reserve a whole core more; idle is the clear best.
            assert_eq!(
                plan,
                vec!["idle".to_string(), "half".to_string()],
                "seed {seed}"
            );
        }
    }

    #[test]
    fn the_node_with_the_cached_layer_goes_first_if_it_has_room() {
        let nodes = [node("a", 0), node("b", 500), node("full", 1_800)];
        let mut rng = StdRng::seed_from_u64(7);
        let plan = build_nodes(&nodes, BUILD, Some("b"), &[], &mut rng).expect("room");
        assert_eq!(plan[0], "b");
        let plan = build_nodes(&nodes, BUILD, Some("full"), &[], &mut rng).expect("room");
        assert!(!plan.contains(&"full".to_string()), "{plan:?}");
    }

    #[test]
    fn a_node_that_died_mid_build_is_not_asked_again_and_no_room_is_an_error() {
        let nodes = [node("a", 0), node("b", 0)];
        let mut rng = StdRng::seed_from_u64(1);
        let plan = build_nodes(&nodes, BUILD, Some("a"), &["a".into()], &mut rng).expect("b");
        assert_eq!(plan, vec!["b".to_string()]);
        let err = build_nodes(&nodes, BUILD, None, &["a".into(), "b".into()], &mut rng);
        assert!(
            matches!(err, Err(ScheduleError::NoCapacity { .. })),
            "{err:?}"
        );
        let full = [node("a", 2_000)];
        assert!(build_nodes(&full, BUILD, None, &[], &mut rng).is_err());
    }

    /// A thousand simulated nodes, many builds: the plan is quick and never picks a node
    /// without room.
    #[test]
    fn a_thousand_nodes() {
        let nodes: Vec<NodeCandidate> = (0..1_000)
            .map(|i| node(&format!("n{i}"), (i % 3) * 600))
            .collect();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let plan = build_nodes(&nodes, BUILD, None, &[], &mut rng).expect("room");
            let first = nodes.iter().find(|n| n.node_id == plan[0]).expect("known");
            assert!(first.reserved_cpu_millis + 1_000 <= 2_000);
        }
    }
}
