//! MLP pruning: remove ⌊R·N⌋ of the N hidden units of every MLP (a `vit.linear` with an
//! activation, fc1, read only by a second `vit.linear`, fc2) of a fused module, physically —
//! the units' columns and bias entries of fc1 and their rows of fc2.
//!
//! With calibration images, blocks are handled in model order, each seeing the earlier ones
//! already pruned. Replacing unit j by its calibration mean at each token position, μ_j(t)
//! (added back through fc2's residual as μ_j(t)·W2[j, :], as head pruning does), changes fc2's
//! output by (a_j(t) − μ_j(t))·W2[j, :], whose expected squared size is Var_t(a_j)·‖W2[j, :]‖²
//! averaged over positions; the units where that is smallest go. Hidden units are too many to
//! score each by a run of the whole model, as head pruning does, and this energy is what the
//! model's output sees of a unit after compensation. Without images the units with the
//! smallest ‖W1[:, j]‖·‖W2[j, :]‖ go, uncompensated. A ratio that removes no unit leaves the
//! module untouched.

use std::collections::BTreeMap;

use vitc_ir::Module;

use crate::blocks::{
    check_ratio, keep_inputs, keep_outputs, label, matrix, mlp_blocks, rebuild, removed_count,
    MlpBlock,
};
use crate::calib::{self, Calibration, Live};
use crate::error::PruneError;
use crate::report::{Choice, PruneReport};

/// Remove the fraction `ratio` (0 ≤ ratio < 1) of the hidden units of every MLP of `m`, chosen
/// and compensated with `calib` when given. Returns the pruned module and what was removed.
pub fn prune_mlp(
    m: &Module,
    ratio: f64,
    calib: Option<&Calibration>,
) -> Result<(Module, PruneReport), PruneError> {
    check_ratio("MLP pruning", ratio)?;
    let blocks = mlp_blocks(m)?;
    let counts: Vec<usize> = blocks
        .iter()
        .map(|b| removed_count(ratio, b.hidden))
        .collect();
    let mut report = PruneReport::start(
        "MLP units",
        ratio,
        calib,
        "share of fc2 input energy removed",
        blocks.iter().map(|b| (label(m, b.fc1.node), b.hidden)),
    );
    if counts.iter().all(|&k| k == 0) {
        return Ok((m.clone(), report));
    }
    let choice = match calib {
        Some(c) => search(m, &blocks, &counts, c)?,
        None => blocks
            .iter()
            .zip(&counts)
            .map(|(b, &k)| by_magnitude(m, b, k))
            .collect(),
    };
    let mut edits = BTreeMap::new();
    for (b, c) in blocks.iter().zip(&choice) {
        if c.removed.is_empty() {
            continue;
        }
        let kept: Vec<usize> = (0..b.hidden).filter(|j| !c.removed.contains(j)).collect();
        edits.insert(b.fc1.node, keep_outputs(m, &b.fc1, &kept));
        edits.insert(
            b.fc2.node,
            keep_inputs(m, &b.fc2, &kept, &c.removed, c.stats.as_ref()),
        );
    }
    let pruned = rebuild(m, edits)?;
    report.record(choice);
    Ok((pruned, report))
}

/// The `k` indices with the smallest scores, ascending (ties go to the lower index).
fn smallest(score: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
    let mut out = order[..k].to_vec();
    out.sort_unstable();
    out
}

/// Squared norm of each row of the `[K, N]` constant `w`.
fn row_norms2(m: &Module, w: usize) -> Vec<f64> {
    let (_, n, v) = matrix(m, w);
    v.chunks(n).map(|r| r.iter().map(|x| x * x).sum()).collect()
}

fn by_magnitude(m: &Module, b: &MlpBlock, k: usize) -> Choice {
    let (k1, n1, w1) = matrix(m, b.fc1.w);
    let out2 = row_norms2(m, b.fc2.w);
    let score: Vec<f64> = (0..n1)
        .map(|j| {
            let in1: f64 = (0..k1).map(|r| w1[r * n1 + j] * w1[r * n1 + j]).sum();
            (in1 * out2[j]).sqrt()
        })
        .collect();
    Choice {
        removed: smallest(&score, k),
        stats: None,
        score: None,
    }
}

/// The calibrated choice for every block (see the module doc).
fn search(
    m: &Module,
    blocks: &[MlpBlock],
    counts: &[usize],
    c: &Calibration,
) -> Result<Vec<Choice>, PruneError> {
    let mut cache: Vec<Live> = c.runs().iter().map(|x| calib::start(m, x)).collect();
    let mut cut = 0;
    let mut choices = Vec::with_capacity(blocks.len());
    for (b, &k) in blocks.iter().zip(counts) {
        let g = b.fc2.node;
        cache = calib::par_map(&cache, |l| calib::run_segment(m, cut, g, l.clone()))?;
        cut = g;
        let stats = calib::position_stats(cache.iter().map(|l| &l[&b.fc1.node]));
        let energy: Vec<f64> = stats
            .var
            .iter()
            .zip(row_norms2(m, b.fc2.w))
            .map(|(v, n)| v * n)
            .collect();
        let removed = smallest(&energy, k);
        let total: f64 = energy.iter().sum();
        let gone: f64 = removed.iter().map(|&j| energy[j]).sum();
        for l in cache.iter_mut() {
            if let Some(a) = l.get_mut(&b.fc1.node) {
                calib::fill_channels(a, &removed, &stats.mean);
            }
        }
        choices.push(Choice {
            removed,
            stats: Some(stats),
            score: (total > 0.0).then(|| gone / total),
        });
    }
    Ok(choices)
}
