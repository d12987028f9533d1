//! Extraction: choosing one e-node per e-class so that the graph the roots need is cheapest.
//!
//! egg's extractor sums children's costs as if every use had its own copy. In a transformer the
//! residual stream feeds every block twice and each LayerNorm feeds three projections, so tree
//! costs grow geometrically with depth and, past a few blocks, round away the savings of any
//! rewrite. This extractor is the greedy DAG heuristic instead: a class's cost is the sum of the
//! own costs of the distinct classes it needs (itself included), so shared work counts once.
//! It iterates to a fixed point and never picks a node that needs its own class (no cycles).

use egg::{Id, Language};
use std::collections::HashMap;

use crate::cost::node_cost;
use crate::lang::{VGraph, Vit};

/// Most improvement rounds; each is linear in the e-graph times the needed-set size.
const MAX_ROUNDS: usize = 64;

/// The chosen node of every class the roots can reach.
pub struct Choice {
    pub best: HashMap<Id, Vit>,
}

struct Pick {
    node: usize,
    own: f64,
    total: f64,
    needs: Vec<u64>,
}

/// Choose the cheapest e-node for each class by shared (DAG) cost.
pub fn extract(eg: &VGraph) -> Choice {
    let ids: Vec<Id> = eg.classes().map(|c| c.id).collect();
    let index: HashMap<Id, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let words = ids.len().div_ceil(64);
    // Own costs and canonical child indices of every node, computed once.
    let nodes: Vec<Vec<(f64, Vec<usize>)>> = ids
        .iter()
        .map(|&id| {
            eg[id]
                .nodes
                .iter()
                .map(|n| {
                    let kids = n.children().iter().map(|&c| index[&eg.find(c)]).collect();
                    (node_cost(eg, n), kids)
                })
                .collect()
        })
        .collect();
    let order = post_order(&nodes);
    let mut picks: Vec<Option<Pick>> = (0..ids.len()).map(|_| None).collect();
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        for &ci in &order {
            let mut best: Option<Pick> = None;
            for (ni, (own, kids)) in nodes[ci].iter().enumerate() {
                if !own.is_finite() {
                    continue;
                }
                let mut needs = vec![0u64; words];
                let mut ok = true;
                for &k in kids {
                    match &picks[k] {
                        Some(p) => {
                            for (w, x) in needs.iter_mut().zip(&p.needs) {
                                *w |= x;
                            }
                        }
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok || needs[ci / 64] & (1 << (ci % 64)) != 0 {
                    continue;
                }
                let mut total = *own;
                for (w, &bits) in needs.iter().enumerate() {
                    let mut b = bits;
                    while b != 0 {
                        let k = w * 64 + b.trailing_zeros() as usize;
                        b &= b - 1;
                        total += picks[k].as_ref().map_or(0.0, |p| p.own);
                    }
                }
                needs[ci / 64] |= 1 << (ci % 64);
                if best.as_ref().is_none_or(|b| total < b.total) {
                    best = Some(Pick {
                        node: ni,
                        own: *own,
                        total,
                        needs,
                    });
                }
            }
            let Some(b) = best else { continue };
            let better = match &picks[ci] {
                None => true,
                Some(p) => {
                    p.node != b.node && b.total < p.total * (1.0 - 1e-12)
                        || p.node == b.node && (p.total != b.total || p.needs != b.needs)
                }
            };
            if better {
                let switched = picks[ci].as_ref().is_none_or(|p| p.node != b.node);
                let moved = picks[ci]
                    .as_ref()
                    .is_none_or(|p| (p.total - b.total).abs() > 1e-9 * p.total.abs());
                changed |= switched || moved;
                picks[ci] = Some(b);
            }
        }
        if !changed {
            break;
        }
    }
    let best = ids
        .iter()
        .zip(picks)
        .filter_map(|(&id, p)| p.map(|p| (id, eg[id].nodes[p.node].clone())))
        .collect();
    Choice { best }
}

/// Classes in depth-first post-order over all nodes' children, so that a round visits children
/// before parents wherever the graph is acyclic and one round picks nearly everything.
fn post_order(nodes: &[Vec<(f64, Vec<usize>)>]) -> Vec<usize> {
    let mut seen = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    for start in 0..nodes.len() {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        // (class, next child to visit as a flat index over its nodes' children)
        let mut stack = vec![(start, 0usize)];
        while let Some((c, k)) = stack.pop() {
            let kids: Vec<usize> = nodes[c]
                .iter()
                .flat_map(|(_, ks)| ks.iter().copied())
                .collect();
            if let Some(&next) = kids.get(k) {
                stack.push((c, k + 1));
                if !seen[next] {
                    seen[next] = true;
                    stack.push((next, 0));
                }
            } else {
                order.push(c);
            }
        }
    }
    order
}
