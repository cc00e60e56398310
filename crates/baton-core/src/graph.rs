//! The workstream graph and its phases.
//!
//! Phases are topological layers with priorities: a workstream can be in phase `k` only when
//! every workstream it depends on is in an earlier phase, and each phase holds the placeable
//! workstreams of the highest priority present. So "build system (critical) first, then
//! testing (high), then the rest (medium) in parallel" falls out of the graph. A phase starts
//! when the previous one has completed.

use crate::model::Priority;

/// One node: its priority and the indices of the nodes it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub priority: Priority,
    pub depends_on: Vec<usize>,
}

/// Returns a dependency cycle as a path of node indices that starts and ends at the same node
/// (`[a, b, a]` for `a -> b -> a`), or `None` when the graph is acyclic.
pub fn find_cycle(depends_on: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let n_nodes = depends_on.len();
    let mut marks = vec![Mark::New; n_nodes];
    for root in 0..n_nodes {
        if marks[root] != Mark::New {
            continue;
        }
        // An explicit stack of (node, next edge index) keeps deep graphs off the call stack.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut edge_idx)) = path.last_mut() {
            if let Some(&next) = depends_on[node].get(*edge_idx) {
                *edge_idx += 1;
                match marks[next] {
                    Mark::New => {
                        marks[next] = Mark::OnPath;
                        path.push((next, 0));
                    }
                    Mark::OnPath => {
                        let start = path.iter().position(|&(n, _)| n == next).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[start..].iter().map(|&(n, _)| n).collect();
                        cycle.push(next);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

/// Computes the phases of an acyclic graph: `phases[k]` lists the node indices of phase `k`,
/// each phase in declaration order. Returns `None` when the graph has a cycle.
pub fn phases(nodes: &[Node]) -> Option<Vec<Vec<usize>>> {
    let n_nodes = nodes.len();
    let mut phase_of: Vec<Option<usize>> = vec![None; n_nodes];
    let mut phases: Vec<Vec<usize>> = Vec::new();
    let mut n_placed = 0;
    while n_placed < n_nodes {
        let current_phase = phases.len();
        let placeable: Vec<usize> = (0..n_nodes)
            .filter(|&idx| phase_of[idx].is_none())
            .filter(|&idx| {
                nodes[idx].depends_on.iter().all(|&dep| phase_of[dep].is_some_and(|phase| phase < current_phase))
            })
            .collect();
        let top_priority = placeable.iter().map(|&idx| nodes[idx].priority).min()?;
        let phase: Vec<usize> = placeable.into_iter().filter(|&idx| nodes[idx].priority == top_priority).collect();
        for &idx in &phase {
            phase_of[idx] = Some(current_phase);
        }
        n_placed += phase.len();
        phases.push(phase);
    }
    Some(phases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(priority: Priority, depends_on: &[usize]) -> Node {
        Node { priority, depends_on: depends_on.to_vec() }
    }

    #[test]
    fn the_roadmap_gives_three_phases() {
        // build, testing, kernel, storage, security, perf
        let nodes = vec![
            node(Priority::Critical, &[]),
            node(Priority::High, &[0]),
            node(Priority::Medium, &[0]),
            node(Priority::Medium, &[0]),
            node(Priority::Medium, &[0]),
            node(Priority::Medium, &[0, 1]),
        ];
        assert_eq!(phases(&nodes).unwrap(), vec![vec![0], vec![1], vec![2, 3, 4, 5]]);
    }

    #[test]
    fn same_priority_without_dependencies_is_one_phase() {
        let nodes = vec![node(Priority::Medium, &[]), node(Priority::Medium, &[]), node(Priority::Medium, &[])];
        assert_eq!(phases(&nodes).unwrap(), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn cycles_are_found_and_named_as_paths() {
        let cycle = find_cycle(&[vec![1], vec![2], vec![0]]).unwrap();
        assert_eq!(cycle, vec![0, 1, 2, 0]);
        assert_eq!(find_cycle(&[vec![0]]).unwrap(), vec![0, 0]);
        assert_eq!(find_cycle(&[vec![], vec![0], vec![0, 1]]), None);
        assert!(phases(&[node(Priority::Low, &[1]), node(Priority::Low, &[0])]).is_none());
    }

    /// Random DAGs: every edge points from a higher index to a lower one.
    fn dag() -> impl Strategy<Value = Vec<Node>> {
        (1usize..24).prop_flat_map(|n_nodes| {
            let nodes: Vec<_> = (0..n_nodes)
                .map(|idx| {
                    let deps = if idx == 0 {
                        Just(Vec::new()).boxed()
                    } else {
                        proptest::collection::vec(0..idx, 0..3).boxed()
                    };
                    (0usize..4, deps).prop_map(|(rank, mut deps)| {
                        deps.sort_unstable();
                        deps.dedup();
                        Node { priority: Priority::from_rank(rank as i64), depends_on: deps }
                    })
                })
                .collect();
            nodes
        })
    }

    proptest! {
        #[test]
        fn phases_respect_dependencies_and_priorities(nodes in dag()) {
            prop_assert!(find_cycle(&nodes.iter().map(|n| n.depends_on.clone()).collect::<Vec<_>>()).is_none());
            let phases = phases(&nodes).expect("a DAG has phases");
            let mut phase_of = vec![usize::MAX; nodes.len()];
            for (phase_idx, phase) in phases.iter().enumerate() {
                prop_assert!(!phase.is_empty());
                for &idx in phase {
                    prop_assert_eq!(phase_of[idx], usize::MAX, "placed twice");
                    phase_of[idx] = phase_idx;
                }
                // One priority class per phase.
                let first = nodes[phase[0]].priority;
                prop_assert!(phase.iter().all(|&idx| nodes[idx].priority == first));
            }
            for (idx, node) in nodes.iter().enumerate() {
                prop_assert!(phase_of[idx] != usize::MAX, "every node is placed");
                for &dep in &node.depends_on {
                    prop_assert!(phase_of[dep] < phase_of[idx], "a dependency runs in an earlier phase");
                }
            }
            // A node is never held back behind a lower-priority phase it does not depend on:
            // when it could have been placed earlier, the phases in between outrank it.
            for (idx, node) in nodes.iter().enumerate() {
                let earliest = node.depends_on.iter().map(|&dep| phase_of[dep] + 1).max().unwrap_or(0);
                for phase in &phases[earliest..phase_of[idx]] {
                    prop_assert!(nodes[phase[0]].priority < node.priority);
                }
            }
        }

        #[test]
        fn a_back_edge_makes_a_cycle_that_is_reported(nodes in dag(), pick in 0usize..1000) {
            let mut depends_on: Vec<Vec<usize>> = nodes.iter().map(|n| n.depends_on.clone()).collect();
            let with_deps: Vec<usize> = (0..nodes.len()).filter(|&i| !depends_on[i].is_empty()).collect();
            prop_assume!(!with_deps.is_empty());
            let from = with_deps[pick % with_deps.len()];
            let to = depends_on[from][0];
            depends_on[to].push(from);
            let cycle = find_cycle(&depends_on).expect("cycle");
            prop_assert_eq!(cycle.first(), cycle.last());
            for pair in cycle.windows(2) {
                prop_assert!(depends_on[pair[0]].contains(&pair[1]), "each step is an edge");
            }
        }
    }
}
