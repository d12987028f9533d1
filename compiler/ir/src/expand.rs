//! Expanding fused ops back into primitive ones, for targets that have no kernel or no
//! equivalent op for them. The OpenVINO, TensorRT and MLIR (tosa) emitters call
//! [`expand_linear_attention`] first, so `vit.linear_attention` reaches them as the relu,
//! transpose, pad, matmul, slice, add and div the exporter wrote — in the same order of
//! operations, so the numbers are the interpreter's. The LLVM backend keeps the fused op.

use crate::error::IrError;
use crate::module::{Module, Node, ValueId};
use crate::op::{AttnLayout, BinaryOp, Op, UnaryOp};
use crate::types::{Data, Tensor};

/// `m` with every `vit.linear_attention` replaced by its definition in primitive ops (the
/// module itself, cloned, when it has none).
pub fn expand_linear_attention(m: &Module) -> Result<Module, IrError> {
    if !m
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::LinearAttention { .. }))
    {
        return Ok(m.clone());
    }
    let mut out = Module::new(m.name.clone());
    out.constants = m.constants.clone();
    let mut map: Vec<ValueId> = Vec::with_capacity(m.nodes.len());
    for n in &m.nodes {
        let ins: Vec<ValueId> = n.inputs.iter().map(|v| map[v.0]).collect();
        let id = match &n.op {
            Op::Input { .. } => out.add_input(n.name.clone(), n.ty.clone()),
            Op::LinearAttention {
                heads,
                eps,
                q_layout,
                k_layout,
                v_layout,
                out_layout,
            } => {
                let mut b = Expander {
                    m: &mut out,
                    name: &n.name,
                    heads: *heads,
                };
                let q = b.heads_split(ins[0], *q_layout)?;
                let k = b.heads_split(ins[1], *k_layout)?;
                let v = b.heads_split(ins[2], *v_layout)?;
                let q = b.op(Op::Unary(UnaryOp::Relu), vec![q])?;
                let k = b.op(Op::Unary(UnaryOp::Relu), vec![k])?;
                let kt = b.op(
                    Op::Transpose {
                        perm: vec![0, 1, 3, 2],
                    },
                    vec![k],
                )?;
                let v1 = b.op(
                    Op::Pad {
                        pads: vec![0, 0, 0, 0, 0, 0, 0, 1],
                        value: 1.0,
                    },
                    vec![v],
                )?;
                let kv = b.op(Op::MatMul, vec![kt, v1])?;
                let c = b.op(Op::MatMul, vec![q, kv])?;
                let cs = b.m.ty(c).shape.clone();
                let dv = cs[3] as i64 - 1;
                let slice = |lo: i64, hi: i64| Op::Slice {
                    starts: vec![0, 0, 0, lo],
                    ends: vec![cs[0] as i64, cs[1] as i64, cs[2] as i64, hi],
                    steps: vec![1; 4],
                };
                let num = b.op(slice(0, dv), vec![c])?;
                let den = b.op(slice(dv, dv + 1), vec![c])?;
                let e = b.m.add_constant(
                    &format!("{}.eps", n.name),
                    Tensor::new(vec![], Data::F32(vec![*eps])),
                );
                let den = b.op(Op::Binary(BinaryOp::Add), vec![den, e])?;
                let o = b.op(Op::Binary(BinaryOp::Div), vec![num, den])?;
                b.heads_merged(o, *out_layout)?
            }
            _ => out.push(Node {
                op: n.op.clone(),
                inputs: ins,
                ty: n.ty.clone(),
                name: n.name.clone(),
            }),
        };
        map.push(id);
    }
    out.outputs = m
        .outputs
        .iter()
        .map(|(name, v)| (name.clone(), map[v.0]))
        .collect();
    Ok(out)
}

struct Expander<'a> {
    m: &'a mut Module,
    name: &'a str,
    heads: usize,
}

impl Expander<'_> {
    fn op(&mut self, op: Op, ins: Vec<ValueId>) -> Result<ValueId, IrError> {
        self.m.add(op, ins, self.name.to_string())
    }

    /// An attention operand in `layout` as `[B, H, S, D]`.
    fn heads_split(&mut self, x: ValueId, layout: AttnLayout) -> Result<ValueId, IrError> {
        let s = self.m.ty(x).shape.clone();
        let t = |perm: Vec<usize>| Op::Transpose { perm };
        match layout {
            AttnLayout::Bhsd => Ok(x),
            AttnLayout::Bhds => self.op(t(vec![0, 1, 3, 2]), vec![x]),
            AttnLayout::Bshd => self.op(t(vec![0, 2, 1, 3]), vec![x]),
            AttnLayout::Bsd => {
                let shape = vec![s[0], s[1], self.heads, s[2] / self.heads.max(1)];
                let r = self.op(Op::Reshape { shape }, vec![x])?;
                self.op(t(vec![0, 2, 1, 3]), vec![r])
            }
        }
    }

    /// `[B, H, S, D]` in `layout`.
    fn heads_merged(&mut self, x: ValueId, layout: AttnLayout) -> Result<ValueId, IrError> {
        let s = self.m.ty(x).shape.clone();
        let t = |perm: Vec<usize>| Op::Transpose { perm };
        match layout {
            AttnLayout::Bhsd => Ok(x),
            AttnLayout::Bhds => self.op(t(vec![0, 1, 3, 2]), vec![x]),
            AttnLayout::Bshd => self.op(t(vec![0, 2, 1, 3]), vec![x]),
            AttnLayout::Bsd => {
                let tr = self.op(t(vec![0, 2, 1, 3]), vec![x])?;
                let shape = vec![s[0], s[2], s[1] * s[3]];
                self.op(Op::Reshape { shape }, vec![tr])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{interp, parse_module};

    /// The expansion computes what the fused op computes, in every layout of q and k.
    #[test]
    fn expansion_matches_the_fused_op() {
        for (ql, qs, kl, ks) in [
            ("bhsd", "1x2x5x3", "bhsd", "1x2x7x3"),
            ("bsd", "1x5x6", "bhds", "1x2x3x7"),
            ("bshd", "1x5x2x3", "bsd", "1x7x6"),
        ] {
            let text = format!(
                "module @t {{\n  func.func @main(%q: tensor<{qs}xf32>, %k: tensor<{ks}xf32>, \
                 %v: tensor<1x2x7x4xf32>) -> tensor<1x5x8xf32> {{\n    \
                 %o = vit.linear_attention %q, %k, %v {{eps = 1e-5, heads = 2, k_layout = \"{kl}\", \
                 out_layout = \"bsd\", q_layout = \"{ql}\", v_layout = \"bhsd\"}} : \
                 (tensor<{qs}xf32>, tensor<{ks}xf32>, tensor<1x2x7x4xf32>) -> tensor<1x5x8xf32>\n    \
                 return %o : tensor<1x5x8xf32>\n  }}\n}}\n"
            );
            let m = parse_module(&text, &Default::default()).expect("case parses");
            let e = expand_linear_attention(&m).expect("expands");
            assert!(!e
                .nodes
                .iter()
                .any(|n| matches!(n.op, Op::LinearAttention { .. })));
            crate::verify(&e).expect("expansion verifies");
            let mut seed = 7u32;
            let ins: Vec<Tensor> = m
                .inputs
                .iter()
                .map(|(_, v)| {
                    let t = m.ty(*v);
                    let data = (0..t.numel())
                        .map(|_| {
                            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 0.7
                        })
                        .collect();
                    Tensor::new(t.shape.clone(), Data::F32(data))
                })
                .collect();
            let a = interp::run(&m, &ins).expect("fused runs");
            let b = interp::run(&e, &ins).expect("expansion runs");
            assert_eq!(a[0].as_f32(), b[0].as_f32(), "{ql}/{kl}");
        }
    }
}
