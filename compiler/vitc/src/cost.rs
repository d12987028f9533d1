//! `vitc inspect --cost`: what one run of a module costs, per transformer block and in total —
//! FLOPs, parameters, weight bytes, and the workspace the LLVM backend's memory plan gives it —
//! so that a change to the model (a larger batch, pruned heads, MLP channels or tokens) shows
//! up as numbers per block. [`cost`] is a pure function of the module and the kernel target:
//! call it on the module before and after a transformation and [`compare`] the two reports.
//!
//! The workspace comes from `vitc_llvm::plan::plan` with the kernels' own task counts and
//! scratch sizes, the same plan `vitc_llvm::compile` builds, but without generating any code.
//! Weight bytes are the IR constants' bytes; the library may store a few more where a kernel
//! packs a weight into padded panels. Nothing here prints; the CLI renders the report.

use std::collections::HashSet;
use std::fmt;
use vitc_ir::{Module, TensorType, ValueId};
use vitc_llvm::kernels::{self, KernelTarget};
use vitc_llvm::plan::{self, Loc, NodeWork};
use vitc_llvm::CodegenError;

/// The cost of one block (or of the whole module, for [`CostReport::total`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockCost {
    /// `blocks.3` (from node names such as `/blocks/blocks.3/attn/Split`), a top-level part such
    /// as `patch_embed`, or `(top)`; `total` for the whole module.
    pub name: String,
    /// Compute nodes that run.
    pub nodes: usize,
    /// Floating-point operations of one run (a multiply-add counts two).
    pub flops: u64,
    /// Elements of the constants the block's nodes read first (each constant counts once, in
    /// the block that reads it first).
    pub params: usize,
    /// Bytes of those constants.
    pub weight_bytes: usize,
    /// The most workspace bytes live at once while one of the block's nodes runs: values that
    /// are held in the workspace plus that node's scratch. For the total: the workspace size.
    pub workspace_bytes: usize,
}

/// Per-block costs in run order, and the totals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostReport {
    /// The kernel target the workspace was planned for.
    pub target: String,
    /// Graph inputs and their types, to say what one run covers (its batch).
    pub inputs: Vec<String>,
    pub blocks: Vec<BlockCost>,
    /// Sums over the blocks, except `workspace_bytes`: the whole plan's workspace size (what
    /// `P_workspace_size()` returns for a normal build).
    pub total: BlockCost,
}

/// The block a node belongs to, by its name path: the numbered parts joined
/// (`/blocks/blocks.3/attn/Split` → `blocks.3`, `/layers/layers.1/blocks/blocks.0/…` →
/// `layers.1/blocks.0`), else its first part (`/patch_embed/proj/Conv` → `patch_embed`), else
/// `(top)`.
pub fn block_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
    let Some((_, path)) = parts.split_last() else {
        return "(top)".into();
    };
    let numbered: Vec<&str> = path
        .iter()
        .copied()
        .filter(|p| {
            p.rsplit_once('.').is_some_and(|(stem, n)| {
                !stem.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .collect();
    if !numbered.is_empty() {
        numbered.join("/")
    } else if let Some(first) = path.first() {
        first.to_string()
    } else {
        "(top)".into()
    }
}

/// The cost report of `m` on `target`. Fails only where the memory plan does (a workspace
/// that would not fit the address space).
pub fn cost(m: &Module, target: &KernelTarget) -> Result<CostReport, CodegenError> {
    let tys =
        |v: ValueId| -> Vec<&TensorType> { m.node(v).inputs.iter().map(|&u| m.ty(u)).collect() };
    let p = plan::plan(m, |v| {
        let (n, t) = (m.node(v), tys(v));
        NodeWork {
            tasks: kernels::task_count(n, &t, target),
            scratch_per_task: kernels::scratch_bytes(n, &t, target),
        }
    })?;

    // Workspace buffers as (bytes, first node, last node), values then scratch, in node
    // indices as the plan counts lifetimes.
    let mut last_use: Vec<usize> = (0..m.nodes.len()).collect();
    for s in &p.steps {
        for u in &m.node(s.node).inputs {
            last_use[u.0] = last_use[u.0].max(s.node.0);
        }
    }
    let mut buffers: Vec<(usize, usize, usize)> = Vec::new();
    for (i, loc) in p.locs.iter().enumerate() {
        if let Loc::Workspace(_) = loc {
            buffers.push((m.nodes[i].ty.size_bytes(), i, last_use[i]));
        }
    }
    for s in &p.steps {
        if let Some(sc) = s.scratch {
            let bytes = sc.stride * s.work.tasks as usize;
            buffers.push((bytes, s.node.0, s.node.0));
        }
    }

    let mut blocks: Vec<BlockCost> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for s in &p.steps {
        let n = m.node(s.node);
        let name = block_of(&n.name);
        let at = match blocks.iter().position(|b| b.name == name) {
            Some(i) => i,
            None => {
                blocks.push(BlockCost {
                    name,
                    ..Default::default()
                });
                blocks.len() - 1
            }
        };
        let b = &mut blocks[at];
        b.nodes += 1;
        let shapes: Vec<&[usize]> = n.inputs.iter().map(|&u| m.ty(u).shape.as_slice()).collect();
        b.flops += n.op.flops(&shapes, &n.ty.shape);
        for &u in &n.inputs {
            if let Some(Loc::Constant(c)) = p.locs.get(u.0) {
                if seen.insert(c.clone()) {
                    b.params += m.ty(u).numel();
                    b.weight_bytes += m.ty(u).size_bytes();
                }
            }
        }
        let i = s.node.0;
        let live: usize = buffers
            .iter()
            .filter(|&&(_, first, last)| first <= i && i <= last)
            .map(|&(bytes, _, _)| bytes)
            .sum();
        b.workspace_bytes = b.workspace_bytes.max(live);
    }
    let total = BlockCost {
        name: "total".into(),
        nodes: blocks.iter().map(|b| b.nodes).sum(),
        flops: blocks.iter().map(|b| b.flops).sum(),
        params: blocks.iter().map(|b| b.params).sum(),
        weight_bytes: blocks.iter().map(|b| b.weight_bytes).sum(),
        workspace_bytes: p.workspace_bytes,
    };
    Ok(CostReport {
        target: target.name.clone(),
        inputs: m
            .inputs
            .iter()
            .map(|(n, v)| format!("{n} {}", m.ty(*v)))
            .collect(),
        blocks,
        total,
    })
}

const HEADER: [&str; 6] = [
    "block",
    "nodes",
    "MFLOP",
    "params",
    "weight B",
    "workspace B",
];

fn row(f: &mut impl fmt::Write, b: &BlockCost) -> fmt::Result {
    writeln!(
        f,
        "  {:<24} {:>6} {:>12.3} {:>10} {:>12} {:>12}",
        b.name,
        b.nodes,
        b.flops as f64 / 1e6,
        b.params,
        b.weight_bytes,
        b.workspace_bytes
    )
}

impl fmt::Display for CostReport {
    /// A table: one row per block in run order, then `total` (whose workspace is the plan's
    /// whole workspace, not a sum).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cost per run ({}) on {}:",
            self.inputs.join(", "),
            self.target
        )?;
        writeln!(
            f,
            "  {:<24} {:>6} {:>12} {:>10} {:>12} {:>12}",
            HEADER[0], HEADER[1], HEADER[2], HEADER[3], HEADER[4], HEADER[5]
        )?;
        for b in &self.blocks {
            row(f, b)?;
        }
        row(f, &self.total)
    }
}

/// Two reports side by side, block by block (blocks matched by name; one missing on either side
/// shows as `-`): FLOPs, parameters and workspace before → after, and the change in percent.
// For the pruning flags' "before and after" report; until they call it, only the tests do.
#[cfg_attr(not(test), allow(dead_code))]
pub fn compare(before: &CostReport, after: &CostReport) -> String {
    use fmt::Write as _;
    let mut names: Vec<&str> = before.blocks.iter().map(|b| b.name.as_str()).collect();
    for b in &after.blocks {
        if !names.contains(&b.name.as_str()) {
            names.push(&b.name);
        }
    }
    let find = |r: &'_ CostReport, n: &str| r.blocks.iter().find(|b| b.name == n).cloned();
    let pct = |a: f64, b: f64| {
        if a > 0.0 {
            format!("{:+.1}%", 100.0 * (b - a) / a)
        } else {
            "".into()
        }
    };
    let cell = |b: &Option<BlockCost>, f: &dyn Fn(&BlockCost) -> f64| {
        b.as_ref().map_or("-".to_string(), |b| format!("{}", f(b)))
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<24} {:>26} {:>26} {:>26}",
        "block", "MFLOP before → after", "params before → after", "workspace B before → after"
    );
    let mflop = |b: &BlockCost| (b.flops as f64 / 1e3).round() / 1e3;
    let params = |b: &BlockCost| b.params as f64;
    let ws = |b: &BlockCost| b.workspace_bytes as f64;
    let mut line = |name: &str, x: Option<BlockCost>, y: Option<BlockCost>| {
        let col = |f: &dyn Fn(&BlockCost) -> f64| {
            let change = match (&x, &y) {
                (Some(a), Some(b)) => pct(f(a), f(b)),
                _ => String::new(),
            };
            format!("{} → {} {change}", cell(&x, f), cell(&y, f))
        };
        let _ = writeln!(
            s,
            "  {:<24} {:>26} {:>26} {:>26}",
            name,
            col(&mflop),
            col(&params),
            col(&ws)
        );
    };
    for n in names {
        line(n, find(before, n), find(after, n));
    }
    line(
        "total",
        Some(before.total.clone()),
        Some(after.total.clone()),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitc_ir::{BinaryOp, DType, Op, Tensor, UnaryOp};

    fn kt() -> KernelTarget {
        vitc_llvm::target::resolve("x86_64-avx512")
            .unwrap()
            .kernel_target()
    }

    /// Two "blocks" of matmul + add + relu on [rows, 8], then a head; names as exporters
    /// write them.
    fn model(rows: usize) -> Module {
        let mut m = Module::new("two_blocks");
        let mut x = m.add_input("x", TensorType::new([rows, 8], DType::F32));
        for b in 0..2 {
            let w = m.add_constant(&format!("blocks.{b}.w"), Tensor::f32([8, 8], vec![0.5; 64]));
            let c = m.add_constant(&format!("blocks.{b}.c"), Tensor::f32([8], vec![1.0; 8]));
            let p = format!("/blocks/blocks.{b}");
            let y = m
                .add(Op::MatMul, vec![x, w], format!("{p}/MatMul"))
                .unwrap();
            let y = m
                .add(Op::Binary(BinaryOp::Add), vec![y, c], format!("{p}/Add"))
                .unwrap();
            x = m
                .add(Op::Unary(UnaryOp::Relu), vec![y], format!("{p}/Relu"))
                .unwrap();
        }
        let y = m
            .add(Op::Unary(UnaryOp::Neg), vec![x], "/head/Neg")
            .unwrap();
        m.outputs.push(("y".into(), y));
        vitc_ir::verify(&m).unwrap();
        m
    }

    #[test]
    fn block_names() {
        assert_eq!(block_of("/blocks/blocks.3/attn/Split"), "blocks.3");
        assert_eq!(block_of("/blocks.0/n1/LayerNormalization"), "blocks.0");
        assert_eq!(
            block_of("/layers/layers.1/blocks/blocks.0/attn/MatMul"),
            "layers.1/blocks.0"
        );
        assert_eq!(block_of("/patch_embed/proj/Conv"), "patch_embed");
        assert_eq!(block_of("/Concat_1"), "(top)");
        assert_eq!(block_of("head"), "(top)");
        assert_eq!(block_of(""), "(top)");
    }

    #[test]
    fn blocks_add_up_to_the_module() {
        let m = model(16);
        let r = cost(&m, &kt()).unwrap();
        let names: Vec<&str> = r.blocks.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["blocks.0", "blocks.1", "head"]);
        assert_eq!(r.total.flops, m.flops());
        assert_eq!(r.total.params, m.constant_elements());
        assert_eq!(r.total.weight_bytes, m.constant_bytes());
        // Each block: 2·16·8·8 (matmul) + 16·8 (add) + 16·8 (relu) FLOPs, 72 parameters.
        assert_eq!(r.blocks[0].flops, 2 * 16 * 64 + 2 * 16 * 8);
        assert_eq!(r.blocks[1].params, 72);
        assert_eq!(r.blocks[2].params, 0);
        // The last node writes the output in place; inside a block a node's operand and result
        // are both live: 2 × 16 × 8 × 4 bytes.
        assert_eq!(r.blocks[0].workspace_bytes, 2 * 16 * 8 * 4);
        assert!(r
            .blocks
            .iter()
            .all(|b| b.workspace_bytes <= r.total.workspace_bytes));
    }

    #[test]
    fn costs_scale_with_rows() {
        let (a, b) = (
            cost(&model(16), &kt()).unwrap(),
            cost(&model(64), &kt()).unwrap(),
        );
        assert_eq!(b.total.flops, 4 * a.total.flops);
        assert_eq!(b.total.params, a.total.params);
        assert_eq!(b.blocks[0].workspace_bytes, 4 * a.blocks[0].workspace_bytes);
        let table = compare(&a, &b);
        assert!(table.contains("blocks.0"), "{table}");
        assert!(table.contains("+300.0%"), "{table}");
        let shown = a.to_string();
        assert_eq!(shown.lines().count(), 2 + 3 + 1, "{shown}");
    }
}
