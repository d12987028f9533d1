//! The static memory plan: where every value of a module lives while the compiled model runs.
//!
//! Graph inputs are read in place from the caller's input buffers; constants are read-only
//! globals in the library; values that are graph outputs are computed straight into the
//! caller's output buffers; every other value, and every node's per-task scratch, gets an offset
//! in one workspace. Offsets come from liveness over the node order (the order the code runs
//! nodes in): two buffers may share bytes only if their lifetimes do not overlap. A node's
//! result is live from the node through its last use, so it never shares memory with the
//! node's own operands. Placement is greedy by size with best-fit reuse of gaps, all offsets
//! 64-byte aligned.
//!
//! This module decides offsets only; it emits no code and knows nothing about kernels beyond
//! the task count and scratch size the driver hands it for each node.

use crate::error::CodegenError;
use vitc_ir::{Module, Op, ValueId};

/// Alignment of every workspace offset (a cache line; what any vector load wants).
pub const ALIGN: usize = 64;

/// Where a value lives at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loc {
    /// Graph input `k`: the caller's `inputs[k]`.
    Input(usize),
    /// Graph output `j`: the caller's `outputs[j]`.
    Output(usize),
    /// The constant of this name in the module's constant table (a global of the library).
    Constant(String),
    /// This byte offset in the workspace.
    Workspace(usize),
    /// Nothing needs the value: it is never computed.
    Unused,
}

/// What the kernel of one node asks of the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeWork {
    /// Independent tasks (0 = nothing to do, 1 = not split).
    pub tasks: u32,
    /// Scratch bytes each task needs.
    pub scratch_per_task: usize,
}

/// The per-task scratch region of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    /// Workspace offset of task 0's scratch.
    pub offset: usize,
    /// Bytes from one task's scratch to the next (the request rounded up to [`ALIGN`]).
    pub stride: usize,
}

/// One compute node to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub node: ValueId,
    pub work: NodeWork,
    pub scratch: Option<Scratch>,
}

/// An output that is not computed in place (it is a graph input, a constant, or a value that
/// is already another output): copied after all nodes have run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputCopy {
    pub output: usize,
    pub from: Loc,
    pub bytes: usize,
}

/// A lifetime-annotated buffer request for [`assign_offsets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub size: usize,
    /// First and last step (inclusive) during which the buffer must hold its contents.
    pub first: usize,
    pub last: usize,
}

/// The memory plan of a module.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Per value (indexed like the module's nodes).
    pub locs: Vec<Loc>,
    /// The compute nodes some output needs, in the order they run.
    pub steps: Vec<Step>,
    /// Outputs filled by copying, after the steps.
    pub copies: Vec<OutputCopy>,
    /// Names of the constants the code reads, each once, in first-use order.
    pub constants: Vec<String>,
    /// Bytes of those constants.
    pub weights_bytes: usize,
    /// Bytes of workspace the caller must provide (a multiple of [`ALIGN`]; 0 if none).
    pub workspace_bytes: usize,
    /// Bytes the workspace buffers would take without any reuse (for reporting).
    pub unshared_bytes: usize,
}

fn too_large(m: &Module) -> CodegenError {
    CodegenError::Unsupported {
        node: m.name.clone(),
        op: "module".into(),
        msg: "the workspace would not fit in the address space".into(),
    }
}

/// Plan a verified module. `work(v)` is asked once for each compute node some output needs.
pub fn plan(m: &Module, mut work: impl FnMut(ValueId) -> NodeWork) -> Result<Plan, CodegenError> {
    let n = m.nodes.len();
    // Which nodes some output depends on (nodes are in topological order, so one reverse scan).
    let mut needed = vec![false; n];
    for (_, v) in &m.outputs {
        needed[v.0] = true;
    }
    for i in (0..n).rev() {
        if needed[i] {
            for v in &m.nodes[i].inputs {
                needed[v.0] = true;
            }
        }
    }

    let mut locs = vec![Loc::Unused; n];
    let mut constants = Vec::new();
    let mut weights_bytes = 0usize;
    for (i, node) in m.nodes.iter().enumerate() {
        match &node.op {
            Op::Input { index } => locs[i] = Loc::Input(*index),
            Op::Constant { name } if needed[i] => {
                if !constants.contains(name) {
                    constants.push(name.clone());
                    weights_bytes = weights_bytes
                        .checked_add(node.ty.size_bytes())
                        .ok_or_else(|| too_large(m))?;
                }
                locs[i] = Loc::Constant(name.clone());
            }
            _ => {}
        }
    }
    // A compute node that is an output is computed into the first output slot naming it.
    for (j, (_, v)) in m.outputs.iter().enumerate() {
        if needed[v.0] && locs[v.0] == Loc::Unused && is_compute(&m.nodes[v.0].op) {
            locs[v.0] = Loc::Output(j);
        }
    }

    // Last use of each value, in node indices.
    let mut last_use: Vec<usize> = (0..n).collect();
    for (i, node) in m.nodes.iter().enumerate() {
        if needed[i] {
            for v in &node.inputs {
                last_use[v.0] = last_use[v.0].max(i);
            }
        }
    }

    // Buffer requests: one per workspace value, one per node with scratch. Lifetimes are in
    // node indices, which run in order, so overlap there is overlap in time.
    enum Owner {
        Value(usize),
        Scratch(usize, usize),
    }
    let mut owners = Vec::new();
    let mut intervals = Vec::new();
    let mut steps = Vec::new();
    for (i, node) in m.nodes.iter().enumerate() {
        if !needed[i] || !is_compute(&node.op) {
            continue;
        }
        let w = work(ValueId(i));
        if locs[i] == Loc::Unused {
            owners.push(Owner::Value(i));
            intervals.push(Interval {
                size: node.ty.size_bytes(),
                first: i,
                last: last_use[i],
            });
        }
        if w.tasks > 0 && w.scratch_per_task > 0 {
            let stride = round_up(w.scratch_per_task).ok_or_else(|| too_large(m))?;
            let size = stride
                .checked_mul(w.tasks as usize)
                .ok_or_else(|| too_large(m))?;
            owners.push(Owner::Scratch(steps.len(), stride));
            intervals.push(Interval {
                size,
                first: i,
                last: i,
            });
        }
        steps.push(Step {
            node: ValueId(i),
            work: w,
            scratch: None,
        });
    }
    let (offsets, workspace_bytes) = assign_offsets(&intervals).ok_or_else(|| too_large(m))?;
    let mut unshared_bytes = 0usize;
    for ((owner, &offset), iv) in owners.iter().zip(&offsets).zip(&intervals) {
        unshared_bytes = round_up(iv.size)
            .and_then(|s| unshared_bytes.checked_add(s))
            .ok_or_else(|| too_large(m))?;
        match *owner {
            Owner::Value(v) => locs[v] = Loc::Workspace(offset),
            Owner::Scratch(step, stride) => {
                steps[step].scratch = Some(Scratch { offset, stride });
            }
        }
    }

    let copies = m
        .outputs
        .iter()
        .enumerate()
        .filter(|(j, (_, v))| locs[v.0] != Loc::Output(*j))
        .map(|(j, (_, v))| OutputCopy {
            output: j,
            from: locs[v.0].clone(),
            bytes: m.nodes[v.0].ty.size_bytes(),
        })
        .collect();

    Ok(Plan {
        locs,
        steps,
        copies,
        constants,
        weights_bytes,
        workspace_bytes,
        unshared_bytes,
    })
}

/// Whether a node is computed by a kernel (everything but inputs and constants).
pub fn is_compute(op: &Op) -> bool {
    !matches!(op, Op::Input { .. } | Op::Constant { .. })
}

fn round_up(x: usize) -> Option<usize> {
    x.checked_next_multiple_of(ALIGN)
}

/// Give every interval an [`ALIGN`]-aligned offset such that intervals whose lifetimes overlap
/// occupy disjoint bytes; return the offsets and the total size (a multiple of [`ALIGN`]), or
/// `None` on arithmetic overflow.
///
/// Greedy by size: the largest buffers are placed first (they are the hardest to fit), each at
/// the smallest gap between already placed, lifetime-overlapping buffers that holds it (best
/// fit), or after all of them if no gap does. Zero-sized buffers get offset 0.
pub fn assign_offsets(intervals: &[Interval]) -> Option<(Vec<usize>, usize)> {
    let mut order: Vec<usize> = (0..intervals.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(intervals[i].size), intervals[i].first, i));
    let mut offsets = vec![0usize; intervals.len()];
    // Placed buffers as (offset, end) with their interval, kept sorted by offset.
    let mut placed: Vec<(usize, usize, Interval)> = Vec::new();
    let mut total = 0usize;
    for i in order {
        let b = intervals[i];
        if b.size == 0 {
            continue;
        }
        let mut cursor = 0usize;
        let mut best: Option<(usize, usize)> = None; // (gap size, offset)
        for &(off, end, iv) in &placed {
            if iv.first > b.last || b.first > iv.last {
                continue;
            }
            if off > cursor {
                let gap = off - cursor;
                if gap >= b.size && best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, cursor));
                }
            }
            cursor = cursor.max(end.checked_next_multiple_of(ALIGN)?);
        }
        let offset = best.map_or(cursor, |(_, o)| o);
        let end = offset.checked_add(b.size)?;
        offsets[i] = offset;
        total = total.max(end.checked_next_multiple_of(ALIGN)?);
        let at = placed.partition_point(|&(o, _, _)| o <= offset);
        placed.insert(at, (offset, end, b));
    }
    Some((offsets, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitc_ir::{BinaryOp, DType, Tensor, TensorType, UnaryOp};

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn check_no_overlap(iv: &[Interval], off: &[usize], total: usize) {
        for (i, a) in iv.iter().enumerate() {
            assert_eq!(off[i] % ALIGN, 0);
            if a.size > 0 {
                assert!(off[i] + a.size <= total);
            }
            for (j, b) in iv.iter().enumerate().skip(i + 1) {
                let live_together = a.first <= b.last && b.first <= a.last;
                let disjoint = off[i] + a.size <= off[j] || off[j] + b.size <= off[i];
                assert!(
                    !live_together || a.size == 0 || b.size == 0 || disjoint,
                    "{a:?}@{} overlaps {b:?}@{}",
                    off[i],
                    off[j]
                );
            }
        }
    }

    #[test]
    fn random_intervals_never_overlap() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for _ in 0..300 {
            let n = 1 + rng.below(40);
            let iv: Vec<Interval> = (0..n)
                .map(|_| {
                    let first = rng.below(30);
                    Interval {
                        size: [0, 1, 4, 63, 64, 100, 4096, 1000][rng.below(8)] * (1 + rng.below(3)),
                        first,
                        last: first + rng.below(8),
                    }
                })
                .collect();
            let (off, total) = assign_offsets(&iv).unwrap();
            check_no_overlap(&iv, &off, total);
            assert_eq!(total % ALIGN, 0);
        }
    }

    #[test]
    fn a_chain_reuses_memory() {
        // a → b → c → d: only two of them are ever live at once.
        let iv: Vec<Interval> = (0..4)
            .map(|i| Interval {
                size: 1000,
                first: i,
                last: i + 1,
            })
            .collect();
        let (off, total) = assign_offsets(&iv).unwrap();
        check_no_overlap(&iv, &off, total);
        assert_eq!(total, 2 * 1024);
    }

    /// A random DAG of elementwise ops on one shape, with some outputs (possibly repeated,
    /// possibly an input or a constant).
    fn random_module(rng: &mut Rng) -> Module {
        let mut m = Module::new("random");
        let sizes = [[1usize, 3], [4, 16], [2, 40]];
        let shape = sizes[rng.below(sizes.len())].to_vec();
        let ty = TensorType::new(shape.clone(), DType::F32);
        let mut vals = vec![m.add_input("x", ty.clone())];
        if rng.below(2) == 0 {
            vals.push(m.add_input("y", ty.clone()));
        }
        let numel = shape.iter().product();
        vals.push(m.add_constant("w", Tensor::f32(shape.clone(), vec![0.5; numel])));
        for k in 0..3 + rng.below(25) {
            let a = vals[rng.below(vals.len())];
            let v = if rng.below(3) == 0 {
                m.add(Op::Unary(UnaryOp::Relu), vec![a], format!("n{k}"))
            } else {
                let b = vals[vals.len() - 1 - rng.below(vals.len().min(4))];
                m.add(Op::Binary(BinaryOp::Add), vec![a, b], format!("n{k}"))
            }
            .unwrap();
            vals.push(v);
        }
        for k in 0..1 + rng.below(3) {
            let v = if k == 0 {
                *vals.last().unwrap()
            } else {
                vals[rng.below(vals.len())]
            };
            m.outputs.push((format!("out{k}"), v));
        }
        vitc_ir::verify(&m).unwrap();
        m
    }

    #[test]
    fn random_dags_never_share_live_bytes() {
        let mut rng = Rng(12345);
        let mut reused = 0;
        for _ in 0..500 {
            let m = random_module(&mut rng);
            let mut scratch = Vec::new();
            let p = plan(&m, |v| {
                let w = NodeWork {
                    tasks: 1 + (v.0 % 3) as u32,
                    scratch_per_task: [0, 10, 100][v.0 % 3],
                };
                scratch.push((v, w));
                w
            })
            .unwrap();
            if p.workspace_bytes < p.unshared_bytes {
                reused += 1;
            }
            // Recompute lifetimes independently: a value is live from its node to its last
            // user; scratch only during its node.
            let mut region: Vec<(usize, usize, usize, usize)> = Vec::new(); // (off, len, first, last)
            for (i, loc) in p.locs.iter().enumerate() {
                if let Loc::Workspace(off) = loc {
                    let last = m
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|(k, n)| {
                            p.locs[*k] != Loc::Unused && n.inputs.contains(&ValueId(i))
                        })
                        .map(|(k, _)| k)
                        .max()
                        .expect("a workspace value has a user");
                    region.push((*off, m.nodes[i].ty.size_bytes(), i, last));
                }
            }
            for s in &p.steps {
                if let Some(sc) = s.scratch {
                    assert!(sc.stride >= s.work.scratch_per_task && sc.stride % ALIGN == 0);
                    let len = sc.stride * s.work.tasks as usize;
                    region.push((sc.offset, len, s.node.0, s.node.0));
                }
            }
            for (a, ra) in region.iter().enumerate() {
                assert_eq!(ra.0 % ALIGN, 0);
                assert!(ra.0 + ra.1 <= p.workspace_bytes);
                for rb in &region[a + 1..] {
                    if ra.2 <= rb.3 && rb.2 <= ra.3 {
                        assert!(ra.0 + ra.1 <= rb.0 || rb.0 + rb.1 <= ra.0, "{ra:?} {rb:?}");
                    }
                }
            }
            // Every output is either computed in place or copied, exactly once.
            for (j, (_, v)) in m.outputs.iter().enumerate() {
                let in_place = p.locs[v.0] == Loc::Output(j);
                let copied = p.copies.iter().filter(|c| c.output == j).count();
                assert_eq!(in_place as usize + copied, 1);
            }
            // Steps are exactly the needed compute nodes, in order.
            assert!(p.steps.windows(2).all(|w| w[0].node < w[1].node));
        }
        eprintln!("reuse on {reused} of 500 random DAGs");
        assert!(reused > 100, "reuse happened on only {reused} of 500 DAGs");
    }

    #[test]
    fn outputs_inputs_and_constants() {
        let mut m = Module::new("m");
        let ty = TensorType::new([2, 3], DType::F32);
        let x = m.add_input("x", ty.clone());
        let c = m.add_constant("c", Tensor::f32([2, 3], vec![1.0; 6]));
        let dead = m.add(Op::Unary(UnaryOp::Neg), vec![x], "dead").unwrap();
        let a = m.add(Op::Binary(BinaryOp::Add), vec![x, c], "a").unwrap();
        let b = m.add(Op::Unary(UnaryOp::Relu), vec![a], "b").unwrap();
        m.outputs = vec![
            ("b".into(), b),
            ("x".into(), x),
            ("b2".into(), b),
            ("c".into(), c),
        ];
        let p = plan(&m, |_| NodeWork {
            tasks: 1,
            scratch_per_task: 0,
        })
        .unwrap();
        assert_eq!(p.locs[x.0], Loc::Input(0));
        assert_eq!(p.locs[c.0], Loc::Constant("c".into()));
        assert_eq!(p.locs[dead.0], Loc::Unused);
        assert_eq!(p.locs[a.0], Loc::Workspace(0));
        assert_eq!(p.locs[b.0], Loc::Output(0));
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.workspace_bytes, 64);
        assert_eq!(p.weights_bytes, 24);
        let copies: Vec<(usize, Loc)> = p
            .copies
            .iter()
            .map(|c| (c.output, c.from.clone()))
            .collect();
        assert_eq!(
            copies,
            vec![
                (1, Loc::Input(0)),
                (2, Loc::Output(0)),
                (3, Loc::Constant("c".into()))
            ]
        );
    }

    #[test]
    fn mlp_like_chain_measured_reuse() {
        // x → 8 layers of add/relu on [64, 256] f32 (64 KiB each): the plan needs two buffers.
        let mut m = Module::new("chain");
        let ty = TensorType::new([64, 256], DType::F32);
        let mut v = m.add_input("x", ty);
        let b = m.add_constant("b", Tensor::f32([64, 256], vec![0.0; 64 * 256]));
        for k in 0..8 {
            let a = m
                .add(Op::Binary(BinaryOp::Add), vec![v, b], format!("add{k}"))
                .unwrap();
            v = m
                .add(Op::Unary(UnaryOp::Relu), vec![a], format!("relu{k}"))
                .unwrap();
        }
        m.outputs.push(("y".into(), v));
        let p = plan(&m, |_| NodeWork {
            tasks: 1,
            scratch_per_task: 0,
        })
        .unwrap();
        assert_eq!(p.unshared_bytes, 15 * 65536);
        assert_eq!(p.workspace_bytes, 2 * 65536);
    }
}
