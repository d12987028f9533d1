//! The upstream form: each vit op spelled in TOSA (MLIR 22, TOSA 1.0) inside `func.func`.
//! TOSA wants equal ranks for elementwise operands, rank-3 matmuls and NHWC convolutions, so
//! this file inserts the reshapes and transposes those need; fused ops are written out as the
//! TOSA ops they mean (attention as matmul–softmax–matmul per head, LayerNorm from reductions,
//! GELU from `tosa.erf`). Ops with no TOSA spelling here are refused by name; quantized ops
//! stay in the `vit` form.

use crate::text::{dense, float_lit, func, ty_of};
use crate::Error;
use std::fmt::Write;
use vitc_ir::{
    Activation, AttnLayout, BinaryOp, DType, Module, Op, ReduceOp, Tensor, UnaryOp, ValueId,
};

#[derive(Clone, Debug)]
struct V {
    name: String,
    shape: Vec<usize>,
}

struct T {
    body: String,
    n: usize,
}

fn ints(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn f32t(shape: &[usize]) -> String {
    ty_of(shape, DType::F32)
}

impl T {
    fn fresh(&mut self) -> String {
        self.n += 1;
        format!("%t{}", self.n)
    }

    /// One op whose result is f32 of `shape`; `text` is everything after `=` up to the type.
    fn op(&mut self, text: &str, ins: &[&V], shape: Vec<usize>) -> V {
        let name = self.fresh();
        let tys: Vec<String> = ins.iter().map(|v| f32t(&v.shape)).collect();
        let _ = writeln!(
            self.body,
            "    {name} = {text} : ({}) -> {}",
            tys.join(", "),
            f32t(&shape)
        );
        V { name, shape }
    }

    fn constant(&mut self, t: &Tensor) -> V {
        let name = self.fresh();
        let t = t.cast(DType::F32);
        let _ = writeln!(
            self.body,
            "    {name} = \"tosa.const\"() <{{values = {}}}> : () -> {}",
            dense(&t),
            f32t(&t.shape)
        );
        V {
            name,
            shape: t.shape.clone(),
        }
    }

    fn scalar(&mut self, x: f32, rank: usize) -> V {
        self.constant(&Tensor::f32(vec![1; rank], vec![x]))
    }

    fn shape_const(&mut self, s: &[usize]) -> String {
        let name = self.fresh();
        let _ = writeln!(
            self.body,
            "    {name} = tosa.const_shape {{values = dense<[{}]> : tensor<{}xindex>}} : () -> !tosa.shape<{}>",
            ints(s),
            s.len(),
            s.len()
        );
        name
    }

    fn reshape(&mut self, x: &V, shape: &[usize]) -> V {
        if x.shape == shape {
            return x.clone();
        }
        let s = self.shape_const(shape);
        let name = self.fresh();
        let _ = writeln!(
            self.body,
            "    {name} = tosa.reshape {}, {s} : ({}, !tosa.shape<{}>) -> {}",
            x.name,
            f32t(&x.shape),
            shape.len(),
            f32t(shape)
        );
        V {
            name,
            shape: shape.to_vec(),
        }
    }

    fn transpose(&mut self, x: &V, perm: &[usize]) -> V {
        let shape: Vec<usize> = perm.iter().map(|&i| x.shape[i]).collect();
        let p = perm
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        self.op(
            &format!("tosa.transpose {} {{perms = array<i32: {p}>}}", x.name),
            &[x],
            shape,
        )
    }

    /// Reshape the lower-rank operand up (leading ones) so both have the same rank.
    fn same_rank(&mut self, a: &V, b: &V) -> (V, V) {
        let lift = |t: &mut T, x: &V, r: usize| {
            let mut s = vec![1; r - x.shape.len()];
            s.extend_from_slice(&x.shape);
            t.reshape(x, &s)
        };
        let r = a.shape.len().max(b.shape.len());
        (lift(self, a, r), lift(self, b, r))
    }

    fn bin(&mut self, op: &str, a: &V, b: &V) -> V {
        let (a, b) = self.same_rank(a, b);
        let shape: Vec<usize> = a
            .shape
            .iter()
            .zip(&b.shape)
            .map(|(x, y)| *x.max(y))
            .collect();
        if op == "mul" {
            let shift = self.fresh();
            let _ = writeln!(
                self.body,
                "    {shift} = \"tosa.const\"() <{{values = dense<0> : tensor<1xi8>}}> : () -> tensor<1xi8>"
            );
            let name = self.fresh();
            let _ = writeln!(
                self.body,
                "    {name} = tosa.mul {}, {}, {shift} : ({}, {}, tensor<1xi8>) -> {}",
                a.name,
                b.name,
                f32t(&a.shape),
                f32t(&b.shape),
                f32t(&shape)
            );
            return V { name, shape };
        }
        self.op(
            &format!("tosa.{op} {}, {}", a.name, b.name),
            &[&a, &b],
            shape,
        )
    }

    fn un(&mut self, op: &str, x: &V) -> V {
        self.op(&format!("tosa.{op} {}", x.name), &[x], x.shape.clone())
    }

    fn reduce(&mut self, op: &str, x: &V, axis: usize) -> V {
        let mut shape = x.shape.clone();
        shape[axis] = 1;
        self.op(
            &format!("tosa.{op} {} {{axis = {axis} : i32}}", x.name),
            &[x],
            shape,
        )
    }

    fn clamp(&mut self, x: &V, lo: f32, hi: f32) -> V {
        self.op(
            &format!(
                "tosa.clamp {} {{max_val = {} : f32, min_val = {} : f32}}",
                x.name,
                float_lit(hi),
                float_lit(lo)
            ),
            &[x],
            x.shape.clone(),
        )
    }

    /// Batched matmul of rank-3 operands.
    fn matmul3(&mut self, a: &V, b: &V) -> V {
        let zp = self.constant(&Tensor::f32(vec![1], vec![0.0]));
        let shape = vec![a.shape[0], a.shape[1], b.shape[2]];
        let name = self.fresh();
        let _ = writeln!(
            self.body,
            "    {name} = tosa.matmul {}, {}, {z}, {z} : ({}, {}, tensor<1xf32>, tensor<1xf32>) -> {}",
            a.name,
            b.name,
            f32t(&a.shape),
            f32t(&b.shape),
            f32t(&shape),
            z = zp.name
        );
        V { name, shape }
    }

    fn softmax(&mut self, x: &V, axis: usize) -> V {
        let mx = self.reduce("reduce_max", x, axis);
        let d = self.bin("sub", x, &mx);
        let e = self.un("exp", &d);
        let s = self.reduce("reduce_sum", &e, axis);
        let r = self.un("reciprocal", &s);
        self.bin("mul", &e, &r)
    }

    fn gelu(&mut self, x: &V, approximate: bool) -> V {
        let r = x.shape.len();
        let half = self.scalar(0.5, r);
        let one = self.scalar(1.0, r);
        let inner = if approximate {
            let c = self.scalar(0.044715, r);
            let k = self.scalar((2.0f64 / std::f64::consts::PI).sqrt() as f32, r);
            let x2 = self.bin("mul", x, x);
            let x3 = self.bin("mul", &x2, x);
            let cx3 = self.bin("mul", &x3, &c);
            let s = self.bin("add", x, &cx3);
            let ks = self.bin("mul", &s, &k);
            self.un("tanh", &ks)
        } else {
            let c = self.scalar(std::f32::consts::FRAC_1_SQRT_2, r);
            let d = self.bin("mul", x, &c);
            self.un("erf", &d)
        };
        let p = self.bin("add", &inner, &one);
        let xp = self.bin("mul", x, &p);
        self.bin("mul", &xp, &half)
    }

    fn activation(&mut self, x: V, a: Activation) -> V {
        match a {
            Activation::None => x,
            Activation::Gelu => self.gelu(&x, false),
            Activation::GeluTanh => self.gelu(&x, true),
            Activation::Relu => self.clamp(&x, 0.0, f32::MAX),
            Activation::Silu => {
                let s = self.un("sigmoid", &x);
                self.bin("mul", &x, &s)
            }
            Activation::Sigmoid => self.un("sigmoid", &x),
            Activation::HardSwish => {
                let r = x.shape.len();
                let three = self.scalar(3.0, r);
                let sixth = self.scalar(1.0 / 6.0, r);
                let a = self.bin("add", &x, &three);
                let c = self.clamp(&a, 0.0, 6.0);
                let g = self.bin("mul", &c, &sixth);
                self.bin("mul", &x, &g)
            }
        }
    }

    /// Attention operand as `[B·H, S, D]`, or `[B·H, D, S]` when `kt`.
    fn heads(&mut self, x: &V, layout: AttnLayout, heads: usize, kt: bool) -> V {
        let bhsd = match layout {
            AttnLayout::Bhsd => x.clone(),
            AttnLayout::Bhds => self.transpose(x, &[0, 1, 3, 2]),
            AttnLayout::Bshd => self.transpose(x, &[0, 2, 1, 3]),
            AttnLayout::Bsd => {
                let (b, s, hd) = (x.shape[0], x.shape[1], x.shape[2]);
                let r = self.reshape(x, &[b, s, heads, hd / heads.max(1)]);
                self.transpose(&r, &[0, 2, 1, 3])
            }
        };
        let s = bhsd.shape.clone();
        let t = if kt {
            self.transpose(&bhsd, &[0, 1, 3, 2])
        } else {
            bhsd
        };
        let (a, b) = if kt { (s[3], s[2]) } else { (s[2], s[3]) };
        self.reshape(&t, &[s[0] * s[1], a, b])
    }
}

fn unsupported(m: &Module, v: ValueId, why: &str) -> Error {
    let n = m.node(v);
    Error::Unsupported {
        dialect: "tosa",
        op: n.op.name(),
        node: n.name.clone(),
        why: why.into(),
    }
}

/// The whole module in `func` + `tosa`.
pub fn module(m: &Module) -> Result<String, Error> {
    let mut t = T {
        body: String::new(),
        n: 0,
    };
    let mut vals: Vec<Option<V>> = vec![None; m.nodes.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        let v = ValueId(i);
        if n.ty.dtype != DType::F32 && !matches!(n.op, Op::Constant { .. }) {
            return Err(unsupported(
                m,
                v,
                "only f32 tensors have a TOSA form here (use --mlir-dialect vit)",
            ));
        }
        let ins: Vec<V> = n
            .inputs
            .iter()
            .map(|u| {
                vals[u.0]
                    .clone()
                    .ok_or_else(|| unsupported(m, v, "operand has no TOSA form"))
            })
            .collect::<Result<_, _>>()?;
        let shape = n.ty.shape.clone();
        let out = match &n.op {
            Op::Input { index } => V {
                name: format!("%arg{index}"),
                shape,
            },
            Op::Constant { .. } => {
                let Some(c) = m.constant(v) else {
                    return Err(unsupported(m, v, "constant missing from the table"));
                };
                if c.dtype() != DType::F32 {
                    // Integer constants (gather indices) are read at compile time by their
                    // users; the placeholder makes any other use fail MLIR's parser loudly.
                    vals[i] = Some(V {
                        name: "%unlowered_integer_constant".into(),
                        shape,
                    });
                    continue;
                }
                t.constant(c)
            }
            Op::Unary(u) => match u {
                UnaryOp::Abs => t.un("abs", &ins[0]),
                UnaryOp::Exp => t.un("exp", &ins[0]),
                UnaryOp::Log => t.un("log", &ins[0]),
                UnaryOp::Erf => t.un("erf", &ins[0]),
                UnaryOp::Tanh => t.un("tanh", &ins[0]),
                UnaryOp::Sigmoid => t.un("sigmoid", &ins[0]),
                UnaryOp::Floor => t.un("floor", &ins[0]),
                UnaryOp::Ceil => t.un("ceil", &ins[0]),
                UnaryOp::Reciprocal => t.un("reciprocal", &ins[0]),
                UnaryOp::Rsqrt => t.un("rsqrt", &ins[0]),
                UnaryOp::Sqrt => {
                    let r = t.un("rsqrt", &ins[0]);
                    t.un("reciprocal", &r)
                }
                UnaryOp::Neg => {
                    let m1 = t.scalar(-1.0, ins[0].shape.len());
                    t.bin("mul", &ins[0], &m1)
                }
                UnaryOp::Relu => t.activation(ins[0].clone(), Activation::Relu),
                UnaryOp::Silu => t.activation(ins[0].clone(), Activation::Silu),
                UnaryOp::HardSwish => t.activation(ins[0].clone(), Activation::HardSwish),
                _ => return Err(unsupported(m, v, "no TOSA spelling")),
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => t.bin("add", &ins[0], &ins[1]),
                BinaryOp::Sub => t.bin("sub", &ins[0], &ins[1]),
                BinaryOp::Mul => t.bin("mul", &ins[0], &ins[1]),
                BinaryOp::Max => t.bin("maximum", &ins[0], &ins[1]),
                BinaryOp::Min => t.bin("minimum", &ins[0], &ins[1]),
                BinaryOp::Pow => t.bin("pow", &ins[0], &ins[1]),
                BinaryOp::Div => {
                    let r = t.un("reciprocal", &ins[1]);
                    t.bin("mul", &ins[0], &r)
                }
                _ => return Err(unsupported(m, v, "no TOSA spelling")),
            },
            Op::Clip { min, max } => {
                t.clamp(&ins[0], min.unwrap_or(f32::MIN), max.unwrap_or(f32::MAX))
            }
            Op::MatMul => {
                let (a, b) = (&ins[0], &ins[1]);
                let (ra, rb) = (a.shape.len(), b.shape.len());
                if ra < 2 || rb < 2 || a.shape[..ra - 2] != b.shape[..rb - 2] {
                    return Err(unsupported(m, v, "matmul with broadcast batch dims"));
                }
                let batch: usize = a.shape[..ra - 2].iter().product();
                let a3 = t.reshape(a, &[batch, a.shape[ra - 2], a.shape[ra - 1]]);
                let b3 = t.reshape(b, &[batch, b.shape[rb - 2], b.shape[rb - 1]]);
                let y = t.matmul3(&a3, &b3);
                t.reshape(&y, &shape)
            }
            Op::Linear {
                activation,
                has_bias,
                has_residual,
            } => {
                let x = &ins[0];
                let k = *x.shape.last().unwrap_or(&1);
                let rows = x.shape.iter().product::<usize>() / k.max(1);
                let x3 = t.reshape(x, &[1, rows, k]);
                let w3 = t.reshape(&ins[1], &[1, ins[1].shape[0], ins[1].shape[1]]);
                let y = t.matmul3(&x3, &w3);
                let mut y = t.reshape(&y, &shape);
                let mut j = 2;
                if *has_bias {
                    y = t.bin("add", &y, &ins[j]);
                    j += 1;
                }
                y = t.activation(y, *activation);
                if *has_residual {
                    y = t.bin("add", &y, &ins[j]);
                }
                y
            }
            Op::Conv {
                strides,
                pads,
                dilations,
                group,
                activation,
                has_bias,
            } => {
                if *group != 1 {
                    return Err(unsupported(m, v, "grouped convolution"));
                }
                let x = t.transpose(&ins[0], &[0, 2, 3, 1]);
                let w = t.transpose(&ins[1], &[0, 2, 3, 1]);
                let mch = ins[1].shape[0];
                let bias = if *has_bias {
                    ins[2].clone()
                } else {
                    t.constant(&Tensor::f32(vec![mch], vec![0.0; mch]))
                };
                let zp = t.constant(&Tensor::f32(vec![1], vec![0.0]));
                let nhwc = vec![shape[0], shape[2], shape[3], shape[1]];
                let name = t.fresh();
                let _ = writeln!(
                    t.body,
                    "    {name} = tosa.conv2d {}, {}, {}, {z}, {z} {{acc_type = f32, dilation = array<i64: {}>, pad = array<i64: {}, {}, {}, {}>, stride = array<i64: {}>}} : ({}, {}, {}, tensor<1xf32>, tensor<1xf32>) -> {}",
                    x.name, w.name, bias.name,
                    ints(dilations), pads[0], pads[2], pads[1], pads[3], ints(strides),
                    f32t(&x.shape), f32t(&w.shape), f32t(&bias.shape), f32t(&nhwc),
                    z = zp.name
                );
                let y = V { name, shape: nhwc };
                let y = t.transpose(&y, &[0, 3, 1, 2]);
                t.activation(y, *activation)
            }
            Op::Reduce { op, axes, keepdims } => {
                let mut x = ins[0].clone();
                let mut count = 1usize;
                for &a in axes {
                    count *= x.shape[a];
                    let name = match op {
                        ReduceOp::Sum | ReduceOp::Mean => "reduce_sum",
                        ReduceOp::Max => "reduce_max",
                        ReduceOp::Min => "reduce_min",
                        ReduceOp::Prod => "reduce_product",
                    };
                    x = t.reduce(name, &x, a);
                }
                if *op == ReduceOp::Mean {
                    let c = t.scalar(1.0 / count as f32, x.shape.len());
                    x = t.bin("mul", &x, &c);
                }
                if !keepdims {
                    x = t.reshape(&x, &shape);
                }
                x
            }
            Op::Softmax { axis } => t.softmax(&ins[0], *axis),
            Op::Reshape { .. } => t.reshape(&ins[0], &shape),
            Op::Transpose { perm } => t.transpose(&ins[0], perm),
            Op::Slice { starts, steps, .. } => {
                if steps.iter().any(|&s| s != 1) {
                    return Err(unsupported(m, v, "strided slice"));
                }
                let st: Vec<usize> = starts.iter().map(|&s| s.max(0) as usize).collect();
                let a = t.shape_const(&st);
                let b = t.shape_const(&shape);
                let name = t.fresh();
                let r = shape.len();
                let _ = writeln!(
                    t.body,
                    "    {name} = tosa.slice {}, {a}, {b} : ({}, !tosa.shape<{r}>, !tosa.shape<{r}>) -> {}",
                    ins[0].name,
                    f32t(&ins[0].shape),
                    f32t(&shape)
                );
                V { name, shape }
            }
            Op::Concat { axis } => {
                let refs: Vec<&V> = ins.iter().collect();
                let names: Vec<&str> = ins.iter().map(|v| v.name.as_str()).collect();
                t.op(
                    &format!("tosa.concat {} {{axis = {axis} : i32}}", names.join(", ")),
                    &refs,
                    shape,
                )
            }
            Op::Gather { axis } => {
                // Constant indices: a slice per contiguous run is all a ViT needs (the class
                // token); other gathers have no TOSA form here.
                let idx = m
                    .constant(n.inputs[1])
                    .map(|c| c.to_i64_vec())
                    .ok_or_else(|| unsupported(m, v, "gather with computed indices"))?;
                let x = &ins[0];
                let dim = x.shape[*axis] as i64;
                let idx: Vec<i64> = idx
                    .iter()
                    .map(|&j| if j < 0 { j + dim } else { j })
                    .collect();
                let first = *idx
                    .first()
                    .ok_or_else(|| unsupported(m, v, "empty gather"))?;
                if idx.iter().enumerate().any(|(k, &j)| j != first + k as i64) || first < 0 {
                    return Err(unsupported(m, v, "gather of non-contiguous indices"));
                }
                let mut st = vec![0usize; x.shape.len()];
                st[*axis] = first as usize;
                let mut sz = x.shape.clone();
                sz[*axis] = idx.len();
                let a = t.shape_const(&st);
                let b = t.shape_const(&sz);
                let name = t.fresh();
                let r = sz.len();
                let _ = writeln!(
                    t.body,
                    "    {name} = tosa.slice {}, {a}, {b} : ({}, !tosa.shape<{r}>, !tosa.shape<{r}>) -> {}",
                    x.name,
                    f32t(&x.shape),
                    f32t(&sz)
                );
                let s = V { name, shape: sz };
                t.reshape(&s, &shape)
            }
            Op::LayerNorm {
                axis,
                epsilon,
                has_bias,
            } => {
                let x = &ins[0];
                let lead = &shape[..*axis];
                let cnt: usize = shape[*axis..].iter().product();
                let mut fl = lead.to_vec();
                fl.push(cnt);
                let xf = t.reshape(x, &fl);
                let last = fl.len() - 1;
                let inv = t.scalar(1.0 / cnt as f32, fl.len());
                let s = t.reduce("reduce_sum", &xf, last);
                let mean = t.bin("mul", &s, &inv);
                let d = t.bin("sub", &xf, &mean);
                let d2 = t.bin("mul", &d, &d);
                let s2 = t.reduce("reduce_sum", &d2, last);
                let var = t.bin("mul", &s2, &inv);
                let eps = t.scalar(*epsilon, fl.len());
                let ve = t.bin("add", &var, &eps);
                let r = t.un("rsqrt", &ve);
                let y = t.bin("mul", &d, &r);
                let y = t.reshape(&y, &shape);
                let y = t.bin("mul", &y, &ins[1]);
                if *has_bias {
                    t.bin("add", &y, &ins[2])
                } else {
                    y
                }
            }
            Op::Gelu { approximate } => t.gelu(&ins[0], *approximate),
            Op::Attention {
                heads,
                scale,
                q_layout,
                k_layout,
                v_layout,
                out_layout,
                has_bias,
                has_mask,
            } => {
                if *has_bias || *has_mask {
                    return Err(unsupported(m, v, "attention bias or mask"));
                }
                let q = t.heads(&ins[0], *q_layout, *heads, false);
                let kt = t.heads(&ins[1], *k_layout, *heads, true);
                let vv = t.heads(&ins[2], *v_layout, *heads, false);
                let q = if *scale != 1.0 {
                    let s = t.scalar(*scale, 3);
                    t.bin("mul", &q, &s)
                } else {
                    q
                };
                let s = t.matmul3(&q, &kt);
                let p = t.softmax(&s, 2);
                let o = t.matmul3(&p, &vv);
                let bh = o.shape[0];
                let b = bh / (*heads).max(1);
                let o4 = t.reshape(&o, &[b, *heads, o.shape[1], o.shape[2]]);
                match out_layout {
                    AttnLayout::Bhsd => o4,
                    AttnLayout::Bhds => t.transpose(&o4, &[0, 1, 3, 2]),
                    AttnLayout::Bshd => t.transpose(&o4, &[0, 2, 1, 3]),
                    AttnLayout::Bsd => {
                        let tr = t.transpose(&o4, &[0, 2, 1, 3]);
                        t.reshape(&tr, &shape)
                    }
                }
            }
            _ => return Err(unsupported(m, v, "no TOSA form (use --mlir-dialect vit)")),
        };
        vals[i] = Some(out);
    }
    let mut results = vec![];
    for (_, v) in &m.outputs {
        let x = vals[v.0]
            .clone()
            .ok_or_else(|| unsupported(m, *v, "output has no TOSA form"))?;
        results.push(x.name);
    }
    Ok(func(m, &t.body, &results, false))
}
