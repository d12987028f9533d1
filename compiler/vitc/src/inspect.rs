//! `vitc inspect`: a summary of a model that a person reads at a glance — inputs and outputs,
//! parameters and their bytes, FLOPs, op counts, and the attention blocks found.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use vitc_ir::{Module, Op, ValueId};

/// Attention blocks in a module: fused `vit.attention` ops, plus unfused ones recognised as a
/// softmax whose result is the left operand of a matmul (the scores · V product).
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
        .filter(|n| matches!(m.node(n.inputs[0]).op, Op::Softmax { .. }))
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

pub fn summary(path: &Path, m: &Module) -> String {
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
    let (fused, unfused) = attention_blocks(m);
    let _ = writeln!(
        s,
        "attention  {} block(s){}",
        fused + unfused,
        match (fused, unfused) {
            (0, _) => " (unfused: softmax · matmul)".to_string(),
            (_, 0) => " (fused vit.attention)".to_string(),
            _ => format!(" ({fused} fused, {unfused} unfused)"),
        }
    );
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
    let _ = writeln!(s, "ops        {total}: {}", list.join(", "));
    s
}
