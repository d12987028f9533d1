//! Attention-head pruning: remove ⌊R·H⌋ heads from every `vit.attention` block of a fused
//! module, physically — the heads' columns of the Q, K and V projections (weights and bias),
//! their rows of the output projection, and the `heads` attribute — so the compiled kernels
//! simply do less work.
//!
//! With calibration images the heads are chosen block by block in model order, each block
//! seeing the earlier blocks already pruned: a candidate set is scored by how far removing it
//! moves the model's final outputs (KL divergence of their softmax from the unpruned model's,
//! averaged over the calibration set). Every set of ⌊R·H⌋ heads is tried when that costs no
//! more runs than the greedy path (one head, or 2 of 4); otherwise heads are taken greedily, one
//! at a time. A removed head is replaced by its mean output over
//! the calibration set at each token position — a constant the output projection adds through
//! its residual. Per position because one mean for all tokens, a plain bias, misstates the
//! class token: on digits_vit that scores worse than no compensation at all. Without images
//! the heads with the smallest value→output weight path (‖W_v[:, h]‖·‖W_proj[h, :]‖) go,
//! uncompensated. A ratio that removes no head leaves the module untouched.

use std::collections::BTreeMap;

use vitc_ir::{Module, Op};

use crate::blocks::{
    attention_blocks, check_ratio, keep_inputs, keep_outputs, label, matrix, rebuild,
    removed_count, AttnBlock, Edit, Operand,
};
use crate::calib::{self, Calibration, Live};
use crate::error::PruneError;
use crate::report::{Choice, PruneReport};

/// Remove the fraction `ratio` (0 ≤ ratio < 1) of the heads of every attention block of `m`,
/// chosen and compensated with `calib` when given. Returns the pruned module and what was
/// removed.
pub fn prune_heads(
    m: &Module,
    ratio: f64,
    calib: Option<&Calibration>,
) -> Result<(Module, PruneReport), PruneError> {
    check_ratio("head pruning", ratio)?;
    let blocks = attention_blocks(m)?;
    let counts: Vec<usize> = blocks
        .iter()
        .map(|b| removed_count(ratio, b.heads))
        .collect();
    let mut report = PruneReport::start(
        "heads",
        ratio,
        calib,
        "output KL from unpruned",
        blocks.iter().map(|b| (label(m, b.attn), b.heads)),
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
    let pruned = apply(m, &blocks, &choice)?;
    report.record(choice);
    Ok((pruned, report))
}

/// The channels of the attention output (and rows of the projection) that carry `heads`.
fn channels(heads: &[usize], width: usize) -> Vec<usize> {
    heads
        .iter()
        .flat_map(|&h| h * width..(h + 1) * width)
        .collect()
}

fn by_magnitude(m: &Module, b: &AttnBlock, k: usize) -> Choice {
    let (kv, nv, wv) = matrix(m, b.v.w);
    let (_, np, wp) = matrix(m, b.proj.w);
    let mut score: Vec<(f64, usize)> = (0..b.heads)
        .map(|h| {
            let cols = h * b.dv..(h + 1) * b.dv;
            let v: f64 = (0..kv)
                .flat_map(|r| cols.clone().map(move |c| r * nv + c))
                .map(|i| wv[i] * wv[i])
                .sum();
            let p: f64 = wp[cols.start * np..cols.end * np]
                .iter()
                .map(|x| x * x)
                .sum();
            ((v * p).sqrt(), h)
        })
        .collect();
    score.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut removed: Vec<usize> = score[..k].iter().map(|s| s.1).collect();
    removed.sort_unstable();
    Choice {
        removed,
        stats: None,
        score: None,
    }
}

/// The greedy, calibrated choice for every block (see the module doc).
fn search(
    m: &Module,
    blocks: &[AttnBlock],
    counts: &[usize],
    c: &Calibration,
) -> Result<Vec<Choice>, PruneError> {
    let end = m.nodes.len();
    let runs = c.runs();
    let reference = calib::par_map(runs, |x| Ok(vitc_ir::run(m, std::slice::from_ref(x))?))?;
    let idx: Vec<usize> = (0..runs.len()).collect();
    let mut cache: Vec<Live> = runs.iter().map(|x| calib::start(m, x)).collect();
    let mut cut = 0;
    let mut choices = Vec::with_capacity(blocks.len());
    for (b, &k) in blocks.iter().zip(counts) {
        // Cut at the output projection: the attention result and the residual are cached, and
        // each trial replays only the projection and everything after it.
        let p = b.proj.node;
        cache = calib::par_map(&cache, |l| calib::run_segment(m, cut, p, l.clone()))?;
        cut = p;
        let stats = calib::position_stats(cache.iter().map(|l| &l[&b.attn]));
        // The KL of the outputs with `trial` heads replaced by their means.
        let kl_without = |trial: &[usize]| -> Result<f64, PruneError> {
            let cols = channels(trial, b.dv);
            let kl = calib::par_map(&idx, |&i| {
                let mut l = cache[i].clone();
                if let Some(a) = l.get_mut(&b.attn) {
                    calib::fill_channels(a, &cols, &stats.mean);
                }
                let out = calib::run_segment(m, p, end, l)?;
                let out = calib::outputs(m, &out)?;
                Ok(reference[i]
                    .iter()
                    .zip(&out)
                    .map(|(r, o)| calib::kl_divergence(r, o))
                    .sum::<f64>())
            })?;
            Ok(kl.iter().sum::<f64>() / runs.len() as f64)
        };
        let (mut removed, score) = if k == 0 {
            (Vec::new(), None)
        } else if combinations(b.heads, k) <= greedy_trials(b.heads, k) {
            // Every set of k heads costs no more runs than the greedy path (k = 1; 2 of 4).
            let mut best: Option<(f64, Vec<usize>)> = None;
            for trial in subsets(b.heads, k) {
                let s = kl_without(&trial)?;
                if best.as_ref().is_none_or(|(b, _)| s < *b) {
                    best = Some((s, trial));
                }
            }
            let (s, set) = best.expect("k <= heads - 1, so a set exists");
            (set, Some(s))
        } else {
            // Greedy: one head at a time, each the one whose removal (with those already
            // chosen) moves the outputs least.
            let mut removed: Vec<usize> = Vec::new();
            let mut score = None;
            for _ in 0..k {
                let mut best: Option<(f64, usize)> = None;
                for h in (0..b.heads).filter(|h| !removed.contains(h)) {
                    let mut trial = removed.clone();
                    trial.push(h);
                    let s = kl_without(&trial)?;
                    if best.is_none_or(|(b, _)| s < b) {
                        best = Some((s, h));
                    }
                }
                let (s, h) = best.expect("a block keeps at least one head to try");
                removed.push(h);
                score = Some(s);
            }
            (removed, score)
        };
        removed.sort_unstable();
        // Later blocks are scored on this block as pruned.
        let cols = channels(&removed, b.dv);
        for l in cache.iter_mut() {
            if let Some(a) = l.get_mut(&b.attn) {
                calib::fill_channels(a, &cols, &stats.mean);
            }
        }
        choices.push(Choice {
            removed,
            stats: Some(stats),
            score,
        });
    }
    Ok(choices)
}

/// n choose k, saturating.
fn combinations(n: usize, k: usize) -> usize {
    (0..k).fold(1usize, |c, i| c.saturating_mul(n - i) / (i + 1))
}

/// Trials the greedy search runs to take `k` of `n` heads: n + (n − 1) + … + (n − k + 1).
fn greedy_trials(n: usize, k: usize) -> usize {
    (0..k).map(|i| n - i).sum()
}

/// Every `k`-subset of `0..n`, ascending, in lexicographic order.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur: Vec<usize> = (0..k).collect();
    loop {
        out.push(cur.clone());
        // The rightmost index that can still move right.
        let Some(i) = (0..k).rev().find(|&i| cur[i] < n - k + i) else {
            return out;
        };
        cur[i] += 1;
        for j in i + 1..k {
            cur[j] = cur[j - 1] + 1;
        }
    }
}

/// Rewrite every block without its chosen heads.
fn apply(m: &Module, blocks: &[AttnBlock], choice: &[Choice]) -> Result<Module, PruneError> {
    let mut edits = BTreeMap::new();
    for (b, c) in blocks.iter().zip(choice) {
        if c.removed.is_empty() {
            continue;
        }
        let kept: Vec<usize> = (0..b.heads).filter(|h| !c.removed.contains(h)).collect();
        for (l, width) in [(&b.q, b.dk), (&b.k, b.dk), (&b.v, b.dv)] {
            edits.insert(l.node, keep_outputs(m, l, &channels(&kept, width)));
        }
        let Op::Attention {
            scale,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
            has_bias,
            has_mask,
            ..
        } = m.nodes[b.attn].op
        else {
            unreachable!("matched as vit.attention");
        };
        edits.insert(
            b.attn,
            Edit {
                op: Op::Attention {
                    heads: kept.len(),
                    scale,
                    q_layout,
                    k_layout,
                    v_layout,
                    out_layout,
                    has_bias,
                    has_mask,
                },
                operands: vec![
                    Operand::Old(b.q.node),
                    Operand::Old(b.k.node),
                    Operand::Old(b.v.node),
                ],
            },
        );
        edits.insert(
            b.proj.node,
            keep_inputs(
                m,
                &b.proj,
                &channels(&kept, b.dv),
                &channels(&c.removed, b.dv),
                c.stats.as_ref(),
            ),
        );
    }
    rebuild(m, edits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_and_counts() {
        assert_eq!(
            subsets(4, 2),
            [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
        );
        assert_eq!(subsets(3, 1), [[0], [1], [2]]);
        for (n, k) in [(4, 2), (12, 3), (6, 0), (5, 5)] {
            assert_eq!(subsets(n, k).len(), combinations(n, k), "{n} choose {k}");
        }
        assert_eq!(greedy_trials(4, 2), 7);
        assert!(combinations(12, 3) > greedy_trials(12, 3));
    }
}
