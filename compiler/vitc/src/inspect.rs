//! `vitc inspect`: a summary of a model that a person reads at a glance — inputs and outputs,
//! parameters and their bytes, FLOPs, op counts, and the attention blocks found — for the model
//! as imported and after the -O2 passes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use vitc_ir::{Module, Op, ValueId};

/// Attention blocks in a module: fused `vit.attention` ops, and unfused ones recognised as a
/// softmax whose result (through quantize/dequantize/reshape, as QDQ models wrap it) is the left
/// operand of a matmul — the scores · V product.
pub fn attention_blocks(m: &Module) -> (usize, usize) {
    let fused = m
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Attention { .. }))
        .count();
    let unfused = m
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::MatMul))
        .filter(|n| {
            let mut v: ValueId = n.inputs[0];
            loop {
                let d = m.node(v);
                match d.op {
                    Op::Softmax { .. } => return true,
                    Op::Quantize { .. } | Op::Dequantize { .. } | Op::Reshape { .. } => {
                        v = d.inputs[0]
                    }
                    _ => return false,
                }
            }
        })
        .count();
    (fused, unfused)
}

fn human(n: f64, unit: &str) -> String {
    if n >= 1e9 {
        format!("{:.2} G{unit}", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2} M{unit}", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.2} k{unit}", n / 1e3)
    } else {
        format!("{n} {unit}")
    }
}

pub fn summary(path: &Path, m: &Module, fused: &Module) -> String {
    let mut s = String::new();
    let io = |list: &[(String, ValueId)]| -> Vec<String> {
        list.iter()
            .map(|(n, v)| format!("{n} {}", m.ty(*v)))
            .collect()
    };
    let _ = writeln!(s, "model      {}", path.display());
    let _ = writeln!(s, "inputs     {}", io(&m.inputs).join(", "));
    let _ = writeln!(s, "outputs    {}", io(&m.outputs).join(", "));
    let params = m.constant_elements() as f64;
    let _ = writeln!(
        s,
        "parameters {} ({})",
        human(params, "").trim_end(),
        human(m.constant_bytes() as f64, "B")
    );
    let _ = writeln!(s, "flops      {}", human(m.flops() as f64, "FLOP"));
    // Blocks are counted in the fused module where the passes found them all, else in the
    // import (softmax · matmul pairs), so a model the passes do not fully fuse still shows
    // every block.
    let (after, _) = attention_blocks(fused);
    let (_, before) = attention_blocks(m);
    let note = if after > 0 && after >= before {
        " (fused into vit.attention at -O2)".to_string()
    } else if after > 0 {
        format!(" ({after} fused into vit.attention at -O2)")
    } else {
        " (softmax · matmul, not fused)".to_string()
    };
    let _ = writeln!(s, "attention  {} block(s){note}", after.max(before));
    let _ = writeln!(s, "ops        {}", op_counts(m));
    let _ = writeln!(
        s,
        "-O2        {}; {}",
        human(fused.flops() as f64, "FLOP"),
        op_counts(fused)
    );
    s
}

/// "N: op count, op count, …", most frequent first.
fn op_counts(m: &Module) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in &m.nodes {
        if !matches!(n.op, Op::Input { .. } | Op::Constant { .. }) {
            *counts.entry(n.op.name()).or_default() += 1;
        }
    }
    let total: usize = counts.values().sum();
    let mut ops: Vec<_> = counts.into_iter().collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let list: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total}: {}", list.join(", "))
}
