//! `vitc profile`: compile a model with per-node timestamps (`CompileOptions::profile`), run it
//! through the runtime's pool, and render where the time goes — per op kind, per block (the
//! `/blocks/blocks.N/…` prefix of node names) and the slowest nodes — so the next bottleneck is
//! visible. The timestamps are cycle-counter reads that the profiling build stores at the end of
//! its workspace; ticks become milliseconds by the wall-clock time of the same runs.
//!
//! Only the rendering lives here; timing a normal build is `vitc bench`.

use std::collections::HashMap;
use std::fmt::Write as _;
use vitc_ir::{Module, ValueId};
use vitc_llvm::driver::ProfileLayout;

/// Per-step times of `iters` runs, in milliseconds: `times[run][step]`.
pub struct Samples {
    pub times: Vec<Vec<f64>>,
    /// Wall-clock milliseconds of each run (P_run as the caller sees it).
    pub wall: Vec<f64>,
}

/// Turn the raw timestamp tables of each run (`steps + 1` ticks) into per-step milliseconds,
/// scaling ticks by the ratio of total ticks to total wall-clock time.
pub fn samples(ticks: &[Vec<u64>], wall_ms: &[f64]) -> Samples {
    let total_ticks: u64 = ticks
        .iter()
        .map(|t| t.last().copied().unwrap_or(0).wrapping_sub(t[0]))
        .sum();
    let total_ms: f64 = wall_ms.iter().sum();
    let ms_per_tick = if total_ticks > 0 {
        total_ms / total_ticks as f64
    } else {
        0.0
    };
    let times = ticks
        .iter()
        .map(|t| {
            t.windows(2)
                .map(|w| w[1].wrapping_sub(w[0]) as f64 * ms_per_tick)
                .collect()
        })
        .collect();
    Samples {
        times,
        wall: wall_ms.to_vec(),
    }
}

/// The block a node belongs to: `blocks.3` for `/blocks/blocks.3/attn/…`, else the first part
/// of its name path, or `(top)` for names without a path.
fn block_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [first, second, _, ..] if second.starts_with(&format!("{first}.")) => second.to_string(),
        [first, _, ..] => first.to_string(),
        _ => "(top)".to_string(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The report: per op kind, per block, and the `top` slowest nodes, by median step time.
pub fn render(
    m: &Module,
    layout: &ProfileLayout,
    s: &Samples,
    threads: usize,
    top: usize,
) -> String {
    let steps = layout.steps.len();
    let med: Vec<f64> = (0..steps)
        .map(|i| median(&mut s.times.iter().map(|r| r[i]).collect::<Vec<_>>()))
        .collect();
    let total: f64 = med.iter().sum();
    let mut wall = s.wall.clone();
    let wall_med = median(&mut wall);
    let wall_min = wall.first().copied().unwrap_or(0.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} runs on {threads} thread(s): wall min {wall_min:.3} ms, median {wall_med:.3} ms; \
         sum of per-node medians {total:.3} ms over {steps} nodes",
        s.times.len()
    );
    let pct = |x: f64| if total > 0.0 { 100.0 * x / total } else { 0.0 };
    let node = |v: ValueId| m.node(v);

    // By op kind.
    let mut by_op: HashMap<String, (f64, usize, u64)> = HashMap::new();
    for (i, &v) in layout.steps.iter().enumerate() {
        let e = by_op.entry(node(v).op.name()).or_default();
        e.0 += med[i];
        e.1 += 1;
        let n = node(v);
        let ins: Vec<&[usize]> = n.inputs.iter().map(|&u| m.ty(u).shape.as_slice()).collect();
        e.2 += n.op.flops(&ins, &n.ty.shape);
    }
    let mut rows: Vec<_> = by_op.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let _ = writeln!(out, "\nby op kind:");
    let _ = writeln!(
        out,
        "  {:<20} {:>9} {:>6} {:>6} {:>9}",
        "op", "ms", "%", "nodes", "GFLOP/s"
    );
    for (op, (ms, count, flops)) in &rows {
        let gf = if *ms > 0.0 && *flops > 0 {
            format!("{:.1}", *flops as f64 / (ms * 1e6))
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "  {op:<20} {ms:>9.3} {:>5.1}% {count:>6} {gf:>9}",
            pct(*ms)
        );
    }

    // By block, in first-run order.
    let mut order: Vec<String> = Vec::new();
    let mut by_block: HashMap<String, f64> = HashMap::new();
    for (i, &v) in layout.steps.iter().enumerate() {
        let b = block_of(&node(v).name);
        if !by_block.contains_key(&b) {
            order.push(b.clone());
        }
        *by_block.entry(b).or_default() += med[i];
    }
    let _ = writeln!(out, "\nby block:");
    for b in &order {
        let ms = by_block[b];
        let _ = writeln!(out, "  {b:<28} {ms:>9.3} ms {:>5.1}%", pct(ms));
    }

    // The slowest nodes.
    let mut idx: Vec<usize> = (0..steps).collect();
    idx.sort_by(|&a, &b| med[b].total_cmp(&med[a]));
    let _ = writeln!(out, "\nslowest nodes:");
    for &i in idx.iter().take(top) {
        let v = layout.steps[i];
        let n = node(v);
        let _ = writeln!(
            out,
            "  {:>8.3} ms {:>5.1}%  {:<16} {:<18} tasks {:>3}  {}",
            med[i],
            pct(med[i]),
            n.op.name(),
            format!("{:?}", n.ty.shape),
            layout.tasks[i],
            n.name
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_from_names() {
        assert_eq!(block_of("/blocks/blocks.3/attn/Split"), "blocks.3");
        assert_eq!(block_of("/patch_embed/proj/Conv"), "patch_embed");
        assert_eq!(block_of("/Concat"), "(top)");
        assert_eq!(block_of("head"), "(top)");
    }

    #[test]
    fn ticks_scale_to_wall_time() {
        let s = samples(&[vec![100, 150, 300]], &[2.0]);
        assert!((s.times[0][0] - 0.5).abs() < 1e-12);
        assert!((s.times[0][1] - 1.5).abs() < 1e-12);
    }
}
