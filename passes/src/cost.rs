//! The cost model extraction minimises: for every op, its floating-point operations plus the
//! bytes it reads and writes (weights included, so int8 weights are cheaper than f32 ones),
//! plus one so that every op costs something and fewer ops win ties. Reshapes move no bytes
//! (the kernels treat them as views). Fused attention counts its softmax and, when the scale is
//! not 1, the multiply, so that folding the scale into a projection pays. It knows nothing about
//! targets: it only has to rank the rewritten forms of one graph.

use egg::{CostFunction, Id, Language};
use vitc_ir::infer::infer_type;
use vitc_ir::{AttnLayout, Op, TensorType};

use crate::lang::{node_op, operands, ty, VGraph, Vit};

/// Extraction cost over an e-graph: the cost of an e-node plus its children's.
pub struct VitCost<'a> {
    eg: &'a VGraph,
}

impl<'a> VitCost<'a> {
    pub fn new(eg: &'a VGraph) -> Self {
        VitCost { eg }
    }
}

impl CostFunction<Vit> for VitCost<'_> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &Vit, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        let own = node_cost(self.eg, enode);
        enode.children().iter().fold(own, |acc, &c| acc + costs(c))
    }
}

/// The cost of one e-node alone; leaves are free (their bytes are counted where they are read).
pub fn node_cost(eg: &VGraph, enode: &Vit) -> f64 {
    if !matches!(enode, Vit::Op(..)) {
        return 0.0;
    }
    let Some(op) = node_op(eg, enode) else {
        return f64::INFINITY;
    };
    let ins: Option<Vec<&TensorType>> = operands(enode).iter().map(|&a| ty(eg, a)).collect();
    let Some(ins) = ins else {
        return f64::INFINITY;
    };
    match infer_type(&op, &ins) {
        Ok(out) => op_cost(&op, &ins, &out),
        Err(_) => f64::INFINITY,
    }
}

/// FLOPs plus bytes moved, plus one.
pub fn op_cost(op: &Op, ins: &[&TensorType], out: &TensorType) -> f64 {
    let shapes: Vec<&[usize]> = ins.iter().map(|t| t.shape.as_slice()).collect();
    let mut flops = op.flops(&shapes, &out.shape) as f64;
    if let Op::Attention {
        heads,
        scale,
        q_layout,
        k_layout,
        ..
    } = op
    {
        let (b, sq) = seq_dims(ins[0], *q_layout, *heads);
        let (_, sk) = seq_dims(ins[1], *k_layout, *heads);
        let scores = (b * heads * sq * sk) as f64;
        flops += 5.0 * scores;
        if *scale != 1.0 {
            flops += scores;
        }
    }
    if let Op::Linear {
        activation: vitc_ir::Activation::None,
        has_bias: false,
        has_residual: false,
    } = op
    {
        // No epilogue: the same work as the matmul it replaces; the linear wins the tie
        // because it is the form whose weight the kernels pack at compile time.
        flops -= out.numel() as f64 + 0.5;
    }
    let bytes = match op {
        Op::Reshape { .. } => 0.0,
        _ => ins.iter().map(|t| t.size_bytes() as f64).sum::<f64>() + out.size_bytes() as f64,
    };
    1.0 + flops + bytes
}

/// (batch, sequence length) of an attention operand.
fn seq_dims(t: &TensorType, layout: AttnLayout, heads: usize) -> (usize, usize) {
    let s = &t.shape;
    let _ = heads;
    match layout {
        AttnLayout::Bsd | AttnLayout::Bshd => (s[0], s[1]),
        AttnLayout::Bhsd => (s[0], s[2]),
        AttnLayout::Bhds => (s[0], s[3]),
    }
}
