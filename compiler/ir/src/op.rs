//! The op set of the vit IR.
//!
//! Plain tensor ops (what ONNX models decompose into) and the attention-aware ops the passes
//! create (`vit.attention`, `vit.layer_norm`, `vit.gelu`, `vit.linear`, quantization ops).
//! Every op has exactly one result; its text name is `vit.snake_case`. Attributes that the
//! result type already states (a reshape's target shape, a cast's element type) live in the op
//! too, so type inference is a pure function of op and operand types.

use crate::types::DType;

/// Elementwise one-operand ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Sqrt,
    Rsqrt,
    Reciprocal,
    Exp,
    Log,
    Erf,
    Tanh,
    Sigmoid,
    Relu,
    /// x · relu6(x + 3) / 6
    HardSwish,
    /// max(0, min(1, x/6 + 0.5)): the gate of HardSwish (ONNX HardSigmoid with alpha = 1/6,
    /// beta = 0.5; other alpha/beta import as clip(alpha·x + beta, 0, 1))
    HardSigmoid,
    /// x · sigmoid(x)
    Silu,
    Floor,
    Ceil,
    /// Round half to even (ONNX Round).
    Round,
    Not,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 18] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Reciprocal,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Erf,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::HardSwish,
        UnaryOp::HardSigmoid,
        UnaryOp::Silu,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Not,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Erf => "erf",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::HardSwish => "hard_swish",
            UnaryOp::HardSigmoid => "hard_sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Round => "round",
            UnaryOp::Not => "not",
        }
    }
}

/// Elementwise two-operand ops with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    /// Integer modulo with the sign of the divisor (ONNX Mod, fmod = 0).
    Mod,
    Max,
    Min,
    /// Comparisons produce `i1`.
    Equal,
    Less,
    Greater,
    And,
    Or,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 13] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Mod,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::Greater,
        BinaryOp::And,
        BinaryOp::Or,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Mod => "mod",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Equal => "equal",
            BinaryOp::Less => "less",
            BinaryOp::Greater => "greater",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }

    /// Whether the result is `i1` rather than the operand type.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Equal | BinaryOp::Less | BinaryOp::Greater)
    }
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

impl ReduceOp {
    pub const ALL: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Prod,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "reduce_sum",
            ReduceOp::Mean => "reduce_mean",
            ReduceOp::Max => "reduce_max",
            ReduceOp::Min => "reduce_min",
            ReduceOp::Prod => "reduce_prod",
        }
    }
}

/// Activation fused into the epilogue of `vit.linear` and `vit.conv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    None,
    /// Exact GELU, 0.5·x·(1 + erf(x/√2)).
    Gelu,
    /// tanh-approximated GELU.
    GeluTanh,
    Relu,
    HardSwish,
    Silu,
    /// 1 / (1 + e^−x), as `vit.sigmoid`.
    Sigmoid,
}

impl Activation {
    pub const ALL: [Activation; 7] = [
        Activation::None,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Relu,
        Activation::HardSwish,
        Activation::Silu,
        Activation::Sigmoid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Relu => "relu",
            Activation::HardSwish => "hard_swish",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
        }
    }
}

/// How an attention operand or result lays out batch (B), heads (H), sequence (S) and head
/// dimension (D). `Bsd` keeps the heads merged in the last dimension (`[B, S, H·D]`), as the
/// projections produce and consume it; the others are the split-head forms exporters write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttnLayout {
    /// `[B, S, H·D]`
    Bsd,
    /// `[B, H, S, D]`
    Bhsd,
    /// `[B, H, D, S]` — K already transposed for QKᵀ.
    Bhds,
    /// `[B, S, H, D]`
    Bshd,
}

impl AttnLayout {
    pub const ALL: [AttnLayout; 4] = [
        AttnLayout::Bsd,
        AttnLayout::Bhsd,
        AttnLayout::Bhds,
        AttnLayout::Bshd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttnLayout::Bsd => "bsd",
            AttnLayout::Bhsd => "bhsd",
            AttnLayout::Bhds => "bhds",
            AttnLayout::Bshd => "bshd",
        }
    }
}

/// The ops. Operand lists are fixed per op except where a `has_*` flag adds an optional one,
/// always in the order documented on the variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Graph input number `index`; no operands. Printed in the function signature.
    Input { index: usize },
    /// A constant from the module's constant table; no operands.
    Constant { name: String },

    /// `x`
    Unary(UnaryOp),
    /// `a, b` (numpy broadcasting)
    Binary(BinaryOp),
    /// `cond (i1), a, b` (numpy broadcasting)
    Where,
    /// `x`: clamp to [min, max] (either bound may be absent).
    Clip { min: Option<f32>, max: Option<f32> },
    /// `x`: convert element type.
    Cast { to: DType },

    /// `a, b`: batched matrix product with numpy broadcasting over leading dims (ONNX MatMul).
    MatMul,
    /// `x [N,C,H,W], w [M,C/group,kh,kw] [, bias [M]]`: act(conv(x, w) + bias).
    Conv {
        strides: [usize; 2],
        /// top, left, bottom, right
        pads: [usize; 4],
        dilations: [usize; 2],
        group: usize,
        /// Applied to every output element after the bias (the epilogue, as `vit.linear`'s).
        activation: Activation,
        has_bias: bool,
    },
    /// `x`
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        keepdims: bool,
    },
    /// `x`
    Softmax { axis: usize },

    /// `x`: same elements, new shape.
    Reshape { shape: Vec<usize> },
    /// `x`: numpy broadcast to `shape` (ONNX Expand).
    Broadcast { shape: Vec<usize> },
    /// `x`
    Transpose { perm: Vec<usize> },
    /// `x`: one (start, end, step) per dimension, already normalised and clamped; a negative
    /// step walks down from `start` to just above `end` (`end` = -1 means "through index 0").
    Slice {
        starts: Vec<i64>,
        ends: Vec<i64>,
        steps: Vec<i64>,
    },
    /// `x0, x1, …`
    Concat { axis: usize },
    /// `data, indices (i64)`: ONNX Gather; negative indices count from the end.
    Gather { axis: usize },
    /// `data, indices (i64 or i32)`: ONNX GatherElements. The indices have data's rank and its
    /// dims except along `axis`, and give the result's shape: `out[.., i, ..] = data[..,
    /// indices[.., i, ..], ..]` with the position along `axis` read from `indices`; negative
    /// indices count from the end.
    GatherElements { axis: usize },
    /// `x`: constant padding; `pads` is ONNX order (all begins, then all ends).
    Pad { pads: Vec<usize>, value: f32 },

    /// `x, scale [, bias]`: normalise over dims `axis..rank`.
    LayerNorm {
        axis: usize,
        epsilon: f32,
        has_bias: bool,
    },
    /// `x`
    Gelu { approximate: bool },
    /// `x [.., K], w [K, N] [, bias [N]] [, residual]`: act(x·w + bias) + residual.
    Linear {
        activation: Activation,
        has_bias: bool,
        has_residual: bool,
    },
    /// `q, k, v [, bias] [, mask]`: softmax(scale·QKᵀ + bias, masked) · V per head. `bias` is
    /// additive and `mask` is `i1` (true = attend); both broadcast to `[B, H, Sq, Sk]`.
    Attention {
        heads: usize,
        scale: f32,
        q_layout: AttnLayout,
        k_layout: AttnLayout,
        v_layout: AttnLayout,
        out_layout: AttnLayout,
        has_bias: bool,
        has_mask: bool,
    },
    /// `q, k, v`: ReLU linear attention (EfficientViT's LiteMLA) per head, in O(S):
    /// `out = (relu(Q)·(relu(K)ᵀ·V)) / (relu(Q)·Σₛ relu(K)ₛ + eps)`, the division per row
    /// and broadcast over V's columns. No softmax, no scale; K and V share the sequence.
    LinearAttention {
        heads: usize,
        eps: f32,
        q_layout: AttnLayout,
        k_layout: AttnLayout,
        v_layout: AttnLayout,
        out_layout: AttnLayout,
    },
    /// `x, scale, zero_point`: ONNX QuantizeLinear (round half to even, saturate). `axis` is
    /// the per-channel axis, `None` for per-tensor.
    Quantize { axis: Option<usize>, to: DType },
    /// `x, scale, zero_point`: ONNX DequantizeLinear to f32.
    Dequantize { axis: Option<usize> },
    /// `x (f32) [.., K], w (i8) [K, N], w_scale [N] or [], w_zero_point (same shape) [, bias]`:
    /// x is quantized with (`x_scale`, `x_zero_point`, `x_type`), both operands dequantized,
    /// multiplied, and bias added; result f32. Per-channel weight scales run along N.
    QLinear {
        x_scale: f32,
        x_zero_point: i32,
        x_type: DType,
        has_bias: bool,
    },
}

impl Op {
    /// The text-form name, `vit.snake_case`.
    pub fn name(&self) -> String {
        let base: &str = match self {
            Op::Input { .. } => "input",
            Op::Constant { .. } => "constant",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Where => "where",
            Op::Clip { .. } => "clip",
            Op::Cast { .. } => "cast",
            Op::MatMul => "matmul",
            Op::Conv { .. } => "conv",
            Op::Reduce { op, .. } => op.name(),
            Op::Softmax { .. } => "softmax",
            Op::Reshape { .. } => "reshape",
            Op::Broadcast { .. } => "broadcast",
            Op::Transpose { .. } => "transpose",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Gather { .. } => "gather",
            Op::GatherElements { .. } => "gather_elements",
            Op::Pad { .. } => "pad",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Gelu { .. } => "gelu",
            Op::Linear { .. } => "linear",
            Op::Attention { .. } => "attention",
            Op::LinearAttention { .. } => "linear_attention",
            Op::Quantize { .. } => "quantize",
            Op::Dequantize { .. } => "dequantize",
            Op::QLinear { .. } => "qlinear",
        };
        format!("vit.{base}")
    }

    /// Number of operands the op takes, or `None` for variadic ops (concat).
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Op::Input { .. } | Op::Constant { .. } => 0,
            Op::Unary(_)
            | Op::Clip { .. }
            | Op::Cast { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::Reshape { .. }
            | Op::Broadcast { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Gelu { .. } => 1,
            Op::Binary(_) | Op::MatMul | Op::Gather { .. } | Op::GatherElements { .. } => 2,
            Op::Where => 3,
            Op::Conv { has_bias, .. } => 2 + *has_bias as usize,
            Op::Concat { .. } => return None,
            Op::LayerNorm { has_bias, .. } => 2 + *has_bias as usize,
            Op::Linear {
                has_bias,
                has_residual,
                ..
            } => 2 + *has_bias as usize + *has_residual as usize,
            Op::Attention {
                has_bias, has_mask, ..
            } => 3 + *has_bias as usize + *has_mask as usize,
            Op::LinearAttention { .. } => 3,
            Op::Quantize { .. } | Op::Dequantize { .. } => 3,
            Op::QLinear { has_bias, .. } => 4 + *has_bias as usize,
        })
    }

    /// Floating-point operations of one execution, given operand and result shapes. Counts a
    /// multiply-add as two; elementwise ops as one per output element (cheap, but not free).
    pub fn flops(&self, inputs: &[&[usize]], out: &[usize]) -> u64 {
        let numel = |s: &[usize]| s.iter().product::<usize>() as u64;
        match self {
            Op::Input { .. } | Op::Constant { .. } => 0,
            Op::Reshape { .. }
            | Op::Broadcast { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather { .. }
            | Op::GatherElements { .. }
            | Op::Pad { .. }
            | Op::Cast { .. } => 0,
            Op::MatMul => {
                let k = inputs[0].last().copied().unwrap_or(1) as u64;
                2 * k * numel(out)
            }
            Op::Linear { .. } | Op::QLinear { .. } => {
                let k = inputs[0].last().copied().unwrap_or(1) as u64;
                2 * k * numel(out) + numel(out)
            }
            Op::Conv { activation, .. } => {
                let w = inputs[1];
                let per_out = w.iter().skip(1).product::<usize>() as u64;
                let act = (*activation != Activation::None) as u64;
                (2 * per_out + act) * numel(out)
            }
            Op::Attention { k_layout, .. } => {
                // Two matmuls per head, [Sq, Dqk]x[Dqk, Sk] and [Sq, Sk]x[Sk, Dv]:
                // 2·Sk·(B·H·Sq·Dqk + B·H·Sq·Dv), the element counts of q and of the output.
                // The head dims differ in LeViT's attention (Dv = 4·Dqk in its subsample blocks).
                let k = inputs[1];
                let sk = match k_layout {
                    AttnLayout::Bsd | AttnLayout::Bshd => k[1],
                    AttnLayout::Bhsd => k[2],
                    AttnLayout::Bhds => k[3],
                } as u64;
                2 * sk * (numel(inputs[0]) + numel(out))
            }
            Op::LinearAttention {
                heads, out_layout, ..
            } => {
                // Per head: relu(K)ᵀ·[V, 1] over S·Dqk·(Dv+1) (the key sums ride along as a
                // column of ones), then each output row relu(Q)·that, Dqk·(Dv+1): together
                // 2·(numel(k) + numel(q))·(Dv+1).
                let dv = match out_layout {
                    AttnLayout::Bsd => out[2] / (*heads).max(1),
                    AttnLayout::Bhsd | AttnLayout::Bshd => out[3],
                    AttnLayout::Bhds => out[2],
                } as u64;
                2 * (numel(inputs[0]) + numel(inputs[1])) * (dv + 1)
            }
            Op::LayerNorm { .. } => 8 * numel(out),
            Op::Softmax { .. } => 5 * numel(out),
            Op::Gelu { .. } => 8 * numel(out),
            Op::Reduce { .. } => numel(inputs[0]),
            _ => numel(out),
        }
    }
}
