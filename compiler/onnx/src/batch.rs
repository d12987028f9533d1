//! `--batch N`: rewrite a module imported at batch 1 so that it computes N images at once.
//!
//! Exporters fix the batch at 1 in more places than the graph inputs: reshape targets such as
//! `[1, 197, 3, 3, 64]`, batch-times-something products such as MobileViT's `[1024, 2, 16, 2]`,
//! and shape subgraphs that the import has already folded into static attributes. So the model
//! is imported at batch 1 as usual, and then this pass walks the module once, tracking for each
//! value where the batch lives: `None` for values that do not depend on a graph input
//! (weights), or the dim `d` that holds it — at batch N that dim is N times as large, with the
//! batch index as its outermost factor (index `b·s + i`). Every op is rewritten to keep that
//! invariant: a reshape puts the batch on the output dim whose leading elements match the
//! input's (the same bytes in the same order), a transpose moves it with its dim, a weight
//! that meets the batch in a concat or a folded dim is broadcast over it. Ops that would mix
//! images — a reduction, softmax, slice or contraction over the batch dim — are refused with
//! the node's name, never rewritten into something else.
//!
//! The pass changes shapes and attributes only; it adds no arithmetic, and what it cannot
//! prove equivalent it refuses. One thing it cannot see: a value computed from the batch size
//! itself (`Shape` → `Gather` → arithmetic on the number) was folded to 1 at import and stays 1.

use crate::error::OnnxError;
use vitc_ir::types::checked_numel;
use vitc_ir::{Module, Node, Op, TensorType, ValueId};

/// Rewrite `m` (imported at batch 1: dim 0 of every graph input is 1) for batch `n`.
pub(crate) fn rebatch(m: &Module, n: usize) -> Result<Module, OnnxError> {
    if n == 0 {
        return Err(OnnxError::BadBatch {
            batch: n,
            msg: "the batch size must be at least 1".into(),
        });
    }
    let mut rb = Rebatch {
        src: m,
        out: Module::new(m.name.clone()),
        n,
        map: Vec::with_capacity(m.nodes.len()),
        bdim: Vec::with_capacity(m.nodes.len()),
    };
    rb.out.constants = m.constants.clone();
    for node in &m.nodes {
        let (v, b) = rb.node(node)?;
        rb.map.push(v);
        rb.bdim.push(b);
    }
    for (name, v) in &m.outputs {
        rb.out.outputs.push((name.clone(), rb.map[v.0]));
    }
    Ok(rb.out)
}

struct Rebatch<'a> {
    src: &'a Module,
    out: Module,
    n: usize,
    /// Source value → rewritten value.
    map: Vec<ValueId>,
    /// Source value → the dim holding the batch (the same dim index in both modules).
    bdim: Vec<Option<usize>>,
}

/// What a rewritten node yields: its value and where its batch is.
type Res = Result<(ValueId, Option<usize>), OnnxError>;

impl Rebatch<'_> {
    fn err(&self, node: &Node, msg: impl Into<String>) -> OnnxError {
        OnnxError::Batch {
            batch: self.n,
            node: node.name.clone(),
            op: node.op.name(),
            msg: msg.into(),
        }
    }

    /// The batch-1 shape of source value `v`.
    fn s1(&self, v: ValueId) -> &[usize] {
        &self.src.ty(v).shape
    }

    /// Add a node to the rewritten module, refusing results whose size overflows.
    fn add(&mut self, node: &Node, op: Op, inputs: Vec<ValueId>) -> Result<ValueId, OnnxError> {
        let v = self
            .out
            .add(op, inputs, node.name.clone())
            .map_err(|e| self.err(node, e.to_string()))?;
        let shape = &self.out.ty(v).shape;
        if checked_numel(shape).is_none() {
            return Err(OnnxError::ShapeOverflow {
                what: format!("--batch {}: node '{}'", self.n, node.name),
                shape: crate::error::dims_i64(shape),
            });
        }
        Ok(v)
    }

    /// `shape` with dim `d` multiplied by the batch.
    fn times_n(&self, node: &Node, shape: &[usize], d: usize) -> Result<Vec<usize>, OnnxError> {
        let mut s = shape.to_vec();
        s[d] = s[d]
            .checked_mul(self.n)
            .ok_or_else(|| OnnxError::ShapeOverflow {
                what: format!("--batch {}: node '{}'", self.n, node.name),
                shape: crate::error::dims_i64(shape),
            })?;
        Ok(s)
    }

    /// Repeat a value that does not depend on the batch once per image along its dim `d`, so
    /// that it lines up with a batched operand there: `[.., s, ..]` → `[.., N·s, ..]`, image
    /// `b` reading the original at `b·s + i`.
    fn lift(&mut self, node: &Node, src: ValueId, d: usize) -> Result<ValueId, OnnxError> {
        let v = self.map[src.0];
        let shape = self.out.ty(v).shape.clone();
        let s = shape[d];
        if s == 1 {
            let to = self.times_n(node, &shape, d)?;
            return self.add(node, Op::Broadcast { shape: to }, vec![v]);
        }
        let mut split = shape.clone();
        split.insert(d, 1);
        let r = self.add(
            node,
            Op::Reshape {
                shape: split.clone(),
            },
            vec![v],
        )?;
        let wide = self.times_n(node, &split, d)?;
        let b = self.add(node, Op::Broadcast { shape: wide }, vec![r])?;
        let to = self.times_n(node, &shape, d)?;
        self.add(node, Op::Reshape { shape: to }, vec![b])
    }

    fn node(&mut self, node: &Node) -> Res {
        let ins = &node.inputs;
        match &node.op {
            Op::Input { index } => {
                let shape = &node.ty.shape;
                if shape.first() != Some(&1) {
                    return Err(self.err(
                        node,
                        format!(
                            "graph input '{}' is {}; --batch rewrites a batch dimension fixed at \
                             1, so dim 0 of every input must be 1",
                            node.name, node.ty
                        ),
                    ));
                }
                let to = self.times_n(node, shape, 0)?;
                if checked_numel(&to).is_none() {
                    return Err(OnnxError::ShapeOverflow {
                        what: format!("--batch {}: graph input '{}'", self.n, node.name),
                        shape: crate::error::dims_i64(&to),
                    });
                }
                let v = self
                    .out
                    .add_input(node.name.clone(), TensorType::new(to, node.ty.dtype));
                debug_assert_eq!(self.out.inputs.len() - 1, *index);
                Ok((v, Some(0)))
            }
            Op::Constant { .. } => {
                let v = self.out.push(node.clone());
                Ok((v, None))
            }
            _ => {
                let bds: Vec<Option<usize>> = ins.iter().map(|v| self.bdim[v.0]).collect();
                if bds.iter().all(Option::is_none) {
                    // Weights only: the same node on the same operands.
                    let mapped = ins.iter().map(|v| self.map[v.0]).collect();
                    let v = self.add(node, node.op.clone(), mapped)?;
                    return Ok((v, None));
                }
                self.batched(node, &bds)
            }
        }
    }

    /// A node with at least one batched operand.
    fn batched(&mut self, node: &Node, bds: &[Option<usize>]) -> Res {
        let ins = node.inputs.clone();
        let mapped: Vec<ValueId> = ins.iter().map(|v| self.map[v.0]).collect();
        // Operands after the first that must not carry the batch (weights, scales, axes data).
        let only_first = |rb: &Self, what: &str| -> Result<usize, OnnxError> {
            if bds[1..].iter().any(Option::is_some) {
                return Err(rb.err(node, format!("the {what} depends on the batch")));
            }
            bds[0].ok_or_else(|| rb.err(node, "only a weight operand depends on the batch"))
        };
        match &node.op {
            Op::Unary(_) | Op::Clip { .. } | Op::Cast { .. } | Op::Gelu { .. } => {
                let d = only_first(self, "operand")?;
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(d)))
            }
            Op::Binary(_) | Op::Where => self.broadcasting(node, bds),
            Op::MatMul => self.matmul(node, bds),
            Op::Conv { .. } => {
                let d = only_first(self, "weight or bias")?;
                if d != 0 {
                    return Err(self.err(
                        node,
                        format!("the batch is in dim {d} of the input, not in N (dim 0)"),
                    ));
                }
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(0)))
            }
            Op::Reduce { axes, keepdims, .. } => {
                let d = only_first(self, "operand")?;
                if axes.contains(&d) {
                    return Err(self.err(node, format!("it reduces over the batch (dim {d})")));
                }
                let d2 = if *keepdims {
                    d
                } else {
                    d - axes.iter().filter(|&&a| a < d).count()
                };
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(d2)))
            }
            Op::Softmax { axis } => {
                let d = only_first(self, "operand")?;
                if *axis == d {
                    return Err(self.err(node, format!("it normalises over the batch (dim {d})")));
                }
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(d)))
            }
            Op::LayerNorm { axis, .. } => {
                let d = only_first(self, "scale or bias")?;
                if d >= *axis {
                    return Err(self.err(
                        node,
                        format!("it normalises over dims {axis}.., which hold the batch (dim {d})"),
                    ));
                }
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(d)))
            }
            Op::Quantize { axis, .. } | Op::Dequantize { axis } => {
                let d = only_first(self, "scale or zero point")?;
                if *axis == Some(d) {
                    return Err(
                        self.err(node, format!("its per-channel axis is the batch (dim {d})"))
                    );
                }
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(d)))
            }
            Op::Reshape { shape } => {
                let d = only_first(self, "operand")?;
                self.reshape(node, d, shape, mapped[0])
            }
            Op::Broadcast { shape } => {
                let d = only_first(self, "operand")?;
                let s1 = self.s1(ins[0]);
                let dd = d + shape.len() - s1.len();
                if shape[dd] != s1[d] {
                    return Err(self.err(
                        node,
                        format!(
                            "it broadcasts the batch dim {d} of {} to {}",
                            self.src.ty(ins[0]),
                            shape[dd]
                        ),
                    ));
                }
                let to = self.times_n(node, shape, dd)?;
                let v = self.add(node, Op::Broadcast { shape: to }, mapped)?;
                Ok((v, Some(dd)))
            }
            Op::Transpose { perm } => {
                let d = only_first(self, "operand")?;
                let j = perm
                    .iter()
                    .position(|&p| p == d)
                    .ok_or_else(|| self.err(node, "perm is not a permutation"))?;
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(j)))
            }
            Op::Slice {
                starts,
                ends,
                steps,
            } => {
                let d = only_first(self, "operand")?;
                let s = self.s1(ins[0])[d] as i64;
                if starts[d] != 0 || ends[d] != s || steps[d] != 1 {
                    return Err(self.err(
                        node,
                        format!(
                            "it slices the batch dim {d} ({}..{} step {} of {s})",
                            starts[d], ends[d], steps[d]
                        ),
                    ));
                }
                let mut ends = ends.clone();
                ends[d] = s * self.n as i64;
                let op = Op::Slice {
                    starts: starts.clone(),
                    ends,
                    steps: steps.clone(),
                };
                let v = self.add(node, op, mapped)?;
                Ok((v, Some(d)))
            }
            Op::Concat { axis } => {
                let d = self.agree(node, bds)?;
                if *axis == d {
                    return Err(
                        self.err(node, format!("it concatenates along the batch (dim {d})"))
                    );
                }
                let mut new = Vec::with_capacity(ins.len());
                for (i, &v) in ins.iter().enumerate() {
                    new.push(if bds[i].is_some() {
                        mapped[i]
                    } else {
                        self.lift(node, v, d)?
                    });
                }
                let v = self.add(node, node.op.clone(), new)?;
                Ok((v, Some(d)))
            }
            Op::Gather { axis } => {
                let idx = ins[1];
                let d = match (bds[0], bds[1]) {
                    (Some(d), None) if d == *axis => {
                        return Err(self.err(node, format!("it gathers along the batch (dim {d})")))
                    }
                    (Some(d), None) if d < *axis => d,
                    (Some(d), None) => d - 1 + self.s1(idx).len(),
                    (None, Some(di)) => axis + di,
                    _ => {
                        return Err(
                            self.err(node, "both the data and the indices depend on the batch")
                        )
                    }
                };
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(d)))
            }
            Op::GatherElements { axis } => {
                // Both operands hold the batch in one dim, with equal batch-1 sizes there (the
                // type rule makes them equal off the axis), so image b's indices meet image b's
                // data; a weight operand is repeated per image to match.
                let d = self.agree(node, bds)?;
                if *axis == d {
                    return Err(self.err(node, format!("it gathers along the batch (dim {d})")));
                }
                let mut new = Vec::with_capacity(2);
                for (i, &v) in ins.iter().enumerate() {
                    new.push(if bds[i].is_some() {
                        mapped[i]
                    } else {
                        self.lift(node, v, d)?
                    });
                }
                let v = self.add(node, node.op.clone(), new)?;
                Ok((v, Some(d)))
            }
            Op::Pad { pads, .. } => {
                let d = only_first(self, "operand")?;
                let r = self.s1(ins[0]).len();
                if pads[d] != 0 || pads[d + r] != 0 {
                    return Err(self.err(node, format!("it pads the batch dim {d}")));
                }
                let v = self.add(node, node.op.clone(), mapped)?;
                Ok((v, Some(d)))
            }
            op => Err(self.err(
                node,
                format!(
                    "{} is not an op the ONNX import produces, so --batch has no rule for it",
                    op.name()
                ),
            )),
        }
    }

    /// The one batch dim that every batched operand has (concat).
    fn agree(&self, node: &Node, bds: &[Option<usize>]) -> Result<usize, OnnxError> {
        let mut ds = bds.iter().flatten();
        let d = *ds.next().expect("some operand is batched");
        if ds.any(|&e| e != d) {
            return Err(self.err(
                node,
                format!("its operands hold the batch in different dims ({bds:?})"),
            ));
        }
        Ok(d)
    }

    /// Elementwise ops with numpy broadcasting, operands aligned to the right.
    /// Batched operands must hold the batch in the same output dim without being broadcast
    /// there; a weight that is 1 there broadcasts over the images, one as large as the batched
    /// operands' dim (a batch folded into a larger dim) is repeated per image.
    fn broadcasting(&mut self, node: &Node, bds: &[Option<usize>]) -> Res {
        let ins = node.inputs.clone();
        let r = node.ty.rank();
        let out1 = node.ty.shape.clone();
        let mut dd = None;
        for (i, &v) in ins.iter().enumerate() {
            if let Some(d) = bds[i] {
                let o = d + r - self.s1(v).len();
                if dd.is_some_and(|x| x != o) {
                    return Err(self.err(
                        node,
                        format!("its operands hold the batch in different dims ({bds:?})"),
                    ));
                }
                if self.s1(v)[d] != out1[o] {
                    return Err(self.err(
                        node,
                        format!(
                            "operand {i} ({}) has the batch in dim {d}, which broadcasts to {}",
                            self.src.ty(v),
                            out1[o]
                        ),
                    ));
                }
                dd = Some(o);
            }
        }
        let dd = dd.expect("some operand is batched");
        let mut new = Vec::with_capacity(ins.len());
        for (i, &v) in ins.iter().enumerate() {
            let rank = self.s1(v).len();
            let lifted = if bds[i].is_some() || dd + rank < r {
                None
            } else {
                let pos = dd + rank - r;
                match self.s1(v)[pos] {
                    1 => None,
                    _ => Some(pos),
                }
            };
            new.push(match lifted {
                Some(pos) => self.lift(node, v, pos)?,
                None => self.map[v.0],
            });
        }
        let v = self.add(node, node.op.clone(), new)?;
        Ok((v, Some(dd)))
    }

    /// `a [.., M, K] · b [.., K, N]`: the batch may be in M of `a` (rows of a folded batch), in
    /// N of `b`, or in the broadcast leading dims; never in K.
    fn matmul(&mut self, node: &Node, bds: &[Option<usize>]) -> Res {
        let (a, b) = (node.inputs[0], node.inputs[1]);
        let (ra, rb) = (self.s1(a).len(), self.s1(b).len());
        let r = node.ty.rank();
        match (bds[0], bds[1]) {
            (Some(d), _) if d == ra - 1 => {
                Err(self.err(node, "the batch is in K of the left operand"))
            }
            (_, Some(d)) if d == rb - 2 => {
                Err(self.err(node, "the batch is in K of the right operand"))
            }
            (Some(d), None) if d == ra - 2 => {
                let v = self.add(node, Op::MatMul, vec![self.map[a.0], self.map[b.0]])?;
                Ok((v, Some(r - 2)))
            }
            (None, Some(d)) if d == rb - 1 => {
                let v = self.add(node, Op::MatMul, vec![self.map[a.0], self.map[b.0]])?;
                Ok((v, Some(r - 1)))
            }
            (Some(d), _) if d == ra - 2 => Err(self.err(
                node,
                "the batch is in M of the left operand and in the right operand too",
            )),
            (_, Some(d)) if d == rb - 1 => Err(self.err(
                node,
                "the batch is in N of the right operand and in the left operand too",
            )),
            _ => {
                // Leading (broadcast) dims only: elementwise rules over the prefix.
                let out1 = &node.ty.shape;
                let mut dd = None;
                for (i, &v) in [a, b].iter().enumerate() {
                    if let Some(d) = bds[i] {
                        let o = d + r - self.s1(v).len();
                        if dd.is_some_and(|x| x != o) || self.s1(v)[d] != out1[o] {
                            return Err(self.err(
                                node,
                                format!(
                                    "the operands' batch dims do not line up ({} and {})",
                                    self.src.ty(a),
                                    self.src.ty(b)
                                ),
                            ));
                        }
                        dd = Some(o);
                    }
                }
                let dd = dd.expect("some operand is batched");
                let mut new = Vec::with_capacity(2);
                for (i, &v) in [a, b].iter().enumerate() {
                    let rank = self.s1(v).len();
                    // A weight without the dim, or with 1 there, broadcasts over the images.
                    new.push(
                        if bds[i].is_some() || dd + rank < r || self.s1(v)[dd + rank - r] == 1 {
                            self.map[v.0]
                        } else {
                            self.lift(node, v, dd + rank - r)?
                        },
                    );
                }
                let v = self.add(node, Op::MatMul, new)?;
                Ok((v, Some(dd)))
            }
        }
    }

    /// A reshape moves no bytes, so the batch goes to the first output dim whose leading
    /// elements are exactly those before the batch in the input: there the batch-N bytes, laid
    /// out as [before][N][after], read the same through the new shape.
    fn reshape(&mut self, node: &Node, d: usize, target: &[usize], x: ValueId) -> Res {
        let s1 = self.s1(node.inputs[0]);
        let before: usize = s1[..d].iter().product();
        let mut prefix = 1usize;
        let mut at = None;
        for (j, &t) in target.iter().enumerate() {
            if prefix == before {
                at = Some(j);
                break;
            }
            prefix = prefix.saturating_mul(t);
        }
        let Some(j) = at else {
            return Err(self.err(
                node,
                format!(
                    "no dim of {target:?} starts after exactly the {before} element(s) before the \
                     batch in {}",
                    self.src.ty(node.inputs[0])
                ),
            ));
        };
        let to = self.times_n(node, target, j)?;
        let v = self.add(node, Op::Reshape { shape: to }, vec![x])?;
        Ok((v, Some(j)))
    }
}
