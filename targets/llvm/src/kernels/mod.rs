//! Kernel generators: for each IR op, the code that computes one task of one node.
//!
//! The interface every generator implements (the driver calls it; generators never touch the
//! memory plan or the ABI):
//! - [`task_count`]: how many independent tasks a node splits into (1 = not worth splitting).
//!   Tasks must write disjoint parts of the output and may run concurrently on several threads.
//! - [`scratch_bytes`]: bytes of per-task scratch memory the kernel needs (e.g. an im2col panel);
//!   the driver reserves `task_count × scratch_bytes` in the workspace, 64-byte aligned.
//! - [`packing`]: for an operand that is a compile-time constant, the layout the kernel wants it
//!   in (e.g. a GEMM's weights as the column panels its microkernel streams); the driver stores
//!   the constant so ([`Packing::apply`]) and tells the kernel through [`Cx::packed`].
//! - [`emit_node`]: emit, at the builder's current position, the code computing task `task` of the
//!   node; operands are pointers to dense row-major buffers of their IR types (or, where
//!   `packed`, of the packing's layout), the result is written through `out`. The builder is
//!   left positioned in the block where control continues.
//!
//! Generators live by op family — `elementwise` (unary, binary, where, clip, cast, gelu, and the
//! strided loop nests shared with data movement), `shape` (reshape, transpose, slice, concat,
//! gather, gather_elements, pad), `gemm` (the register-blocked GEMM, matmul, linear), `conv`, `norm` (reductions,
//! softmax, layer norm), `attention`, `linear_attention` and `quant` — over the IR-building layer `emit`; scalar math
//! is `crate::math`. Task splits and scratch sizes depend only on the node, its operand types
//! and the target's vector shape (so GEMM blocks are whole register tiles), never on the thread
//! count, and every output element is computed by one task in a fixed order, so results are the
//! same bits however many threads run the tasks.

mod attention;
mod conv;
mod elementwise;
pub(crate) mod emit;
mod gemm;
mod int8;
mod linear_attention;
mod norm;
mod quant;
mod shape;
#[cfg(test)]
mod tests;

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::Module as LlvmModule;
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use vitc_ir::infer::infer_type;
use vitc_ir::{Node, Op, Tensor, TensorType};

use emit::{Em, Split};

/// What a kernel generator may know about the target.
#[derive(Clone, Debug)]
pub struct KernelTarget {
    /// The target's name, for "unsupported on TARGET" errors.
    pub name: String,
    /// Native f32 vector width in lanes (8 for AVX2, 16 for AVX-512, 4 for NEON).
    pub f32_lanes: u32,
    /// Fused multiply-add available.
    pub fma: bool,
    /// The int8 dot-product instructions `vit.qlinear`'s kernel may use.
    pub int8: Int8Isa,
    /// How the constant weights of `vit.linear` are stored (`--precision`).
    pub precision: Precision,
}

/// The storage precision of `vit.linear`'s constant weights (`--precision`). Products are
/// accumulated in f32 whatever it is; everything other than the linears' weights stays f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 weights, the f32 GEMM (the default).
    #[default]
    F32,
    /// bfloat16 weights (rounded to nearest even). On 16/8/4-lane targets (AVX512-BF16) the
    /// activations are rounded to bf16 too and multiplied by `vdpbf16ps` (`Packing::Bf16PairsB`);
    /// elsewhere the weights would be widened to f32 as the GEMM loads them (`Packing::HalfB`).
    Bf16,
    /// IEEE half weights (rounded to nearest even), widened to f32 as the GEMM loads them.
    Fp16,
}

impl Precision {
    /// The flag's spelling: `f32`, `bf16`, `fp16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The 16-bit pattern `x` is stored as (round to nearest even); `None` for f32.
    pub fn bits(self, x: f32) -> Option<u16> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(half::bf16::from_f32(x).to_bits()),
            Precision::Fp16 => Some(half::f16::from_f32(x).to_bits()),
        }
    }

    /// `x` rounded to this precision and back: the value the kernel multiplies by.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
            Precision::Fp16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

pub use int8::{Int8Isa, Scheme as Int8Scheme};

/// Everything a generator emits through.
pub struct Cx<'a, 'ctx> {
    pub ctx: &'ctx Context,
    pub module: &'a LlvmModule<'ctx>,
    pub builder: &'a Builder<'ctx>,
    /// The function being emitted into (for appending basic blocks).
    pub func: FunctionValue<'ctx>,
    pub target: &'a KernelTarget,
    /// Per operand: whether it is a constant the driver stored in the layout [`packing`] asked
    /// for. Missing entries mean false.
    pub packed: &'a [bool],
}

/// A layout a kernel wants a constant operand in, instead of the IR's dense row-major one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Packing {
    /// A `[.., K, N]` f32 matrix (or a stack of them) as the column panels of the GEMM
    /// microkernel for `lanes`-wide vectors: see `gemm::pack_b`.
    GemmB { k: usize, n: usize, lanes: u32 },
    /// A `[K, N]` i8/u8 weight as the panels of an int8 microkernel, with its column sums:
    /// see `int8::Scheme::pack_b`.
    Int8B {
        k: usize,
        n: usize,
        scheme: Int8Scheme,
    },
    /// A `[K, N]` f32 weight in the [`Packing::GemmB`] panel order, each element stored as 16
    /// bits of `precision` (bf16 or fp16): half the bytes.
    HalfB {
        k: usize,
        n: usize,
        lanes: u32,
        precision: Precision,
    },
    /// A `[K, N]` f32 weight as bf16 k-pairs for the `vdpbf16ps` microkernel: see
    /// `gemm::pack_b_bf16_pairs`.
    Bf16PairsB { k: usize, n: usize, lanes: u32 },
    /// A conv weight `[M, C, KH, KW]` transposed to `[C·KH·KW, M]` and packed as `GemmB`.
    ConvWT { k: usize, n: usize, lanes: u32 },
}

impl Packing {
    /// The constant's bytes in this layout, or `None` if `t` is not what the packing expects.
    pub fn apply(&self, t: &Tensor) -> Option<Vec<u8>> {
        if let Packing::Int8B { k, n, scheme } = *self {
            let unsigned = match t.dtype() {
                vitc_ir::DType::I8 => false,
                vitc_ir::DType::U8 => true,
                _ => return None,
            };
            if t.shape != [k, n] {
                return None;
            }
            return Some(scheme.pack_b(&t.to_i64_vec(), k, n, unsigned));
        }
        let data = t.as_f32()?;
        if let Packing::HalfB {
            k,
            n,
            lanes,
            precision,
        } = *self
        {
            if k * n == 0 || data.len() != k * n {
                return None;
            }
            return gemm::pack_b(data, k, n, lanes)
                .into_iter()
                .map(|v| precision.bits(v).map(u16::to_le_bytes))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.concat());
        }
        if let Packing::Bf16PairsB { k, n, lanes } = *self {
            if k * n == 0 || data.len() != k * n {
                return None;
            }
            let p = gemm::pack_b_bf16_pairs(data, k, n, lanes);
            return Some(p.iter().flat_map(|v| v.to_le_bytes()).collect());
        }
        let packed = match *self {
            Packing::GemmB { k, n, lanes } => {
                if k * n == 0 || !data.len().is_multiple_of(k * n) {
                    return None;
                }
                data.chunks(k * n)
                    .flat_map(|m| gemm::pack_b(m, k, n, lanes))
                    .collect::<Vec<f32>>()
            }
            Packing::ConvWT { k, n, lanes } => {
                if data.len() != k * n {
                    return None;
                }
                let mut wt = vec![0f32; k * n];
                for (o, row) in data.chunks(k).enumerate() {
                    for (p, &v) in row.iter().enumerate() {
                        wt[p * n + o] = v;
                    }
                }
                gemm::pack_b(&wt, k, n, lanes)
            }
            // Integer and half weights, packed above.
            Packing::Int8B { .. } | Packing::HalfB { .. } | Packing::Bf16PairsB { .. } => {
                return None
            }
        };
        Some(packed.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The layout the kernel of `n` wants its constant operand `operand` in (`None`: as it is).
pub fn packing(
    n: &Node,
    in_tys: &[&TensorType],
    operand: usize,
    target: &KernelTarget,
) -> Option<Packing> {
    if !well_formed(n, in_tys) {
        return None;
    }
    match &n.op {
        Op::MatMul | Op::Linear { .. } => gemm::packing(n, in_tys, operand, target),
        Op::Conv { .. } => conv::packing(n, in_tys, operand, target.f32_lanes),
        Op::QLinear { .. } => quant::qlinear_packing(n, in_tys, operand, target),
        _ => None,
    }
}

/// A kernel could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op} is not supported on {target}: {why}")]
    Unsupported {
        op: String,
        target: String,
        why: String,
    },
    #[error("LLVM builder: {0}")]
    Builder(#[from] inkwell::builder::BuilderError),
}

/// Whether the operand types are exactly what `n` was typed from: every generator indexes
/// shapes by the facts type inference checked, so anything else is refused up front.
fn well_formed(n: &Node, in_tys: &[&TensorType]) -> bool {
    !matches!(n.op, Op::Input { .. } | Op::Constant { .. })
        && infer_type(&n.op, in_tys).is_ok_and(|t| t == n.ty)
}

/// How the node's work is split: `Some` for the ops with a row/item split.
fn split(n: &Node, in_tys: &[&TensorType], target: &KernelTarget) -> Option<Split> {
    let lanes = target.f32_lanes.max(1);
    match &n.op {
        Op::MatMul | Op::Linear { .. } => gemm::split(n, in_tys, lanes),
        Op::Conv { .. } => conv::split(n, in_tys, lanes),
        Op::Attention { .. } => attention::split(n, in_tys, lanes),
        Op::LinearAttention { .. } => linear_attention::split(n, in_tys),
        Op::Reduce { .. } | Op::Softmax { .. } | Op::LayerNorm { .. } => norm::split(n, in_tys),
        Op::QLinear { .. } => quant::qlinear_split(n, in_tys, target),
        _ => None,
    }
}

/// How many independent tasks `n` splits into on `target`.
pub fn task_count(n: &Node, in_tys: &[&TensorType], target: &KernelTarget) -> u32 {
    if !well_formed(n, in_tys) {
        return 1;
    }
    let t = if let Some(sp) = split(n, in_tys, target) {
        sp.tasks()
    } else if let Some(p) = elementwise::plan(n, in_tys) {
        p.tasks
    } else if let Some((p, _)) = shape::plan(n, in_tys) {
        p.tasks
    } else if let Some(p) = quant::plan(n, in_tys) {
        p.tasks
    } else {
        1
    };
    t.clamp(1, u32::MAX as u64) as u32
}

/// Per-task scratch bytes `n` needs on `target` (a multiple of 64, so every task's scratch
/// stays aligned).
pub fn scratch_bytes(n: &Node, in_tys: &[&TensorType], target: &KernelTarget) -> usize {
    if !well_formed(n, in_tys) {
        return 0;
    }
    let lanes = target.f32_lanes.max(1);
    let b = match &n.op {
        Op::Conv { .. } => conv::scratch_bytes(n, in_tys, lanes),
        Op::Attention { .. } => attention::scratch_bytes(n, in_tys, lanes),
        Op::LinearAttention { .. } => linear_attention::scratch_bytes(n, in_tys),
        Op::QLinear { .. } => quant::qlinear_scratch(n, in_tys, target),
        Op::Linear { .. } => gemm::scratch_bytes(n, in_tys, target),
        _ => 0,
    };
    b.div_ceil(64) * 64
}

/// Emit the code for task `task` (an i32 below `task_count`) of node `n`.
pub fn emit_node<'ctx>(
    cx: &mut Cx<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    out: PointerValue<'ctx>,
    scratch: PointerValue<'ctx>,
    task: IntValue<'ctx>,
) -> Result<(), KernelError> {
    let target = cx.target.name.clone();
    let unsupported = |why: &str| KernelError::Unsupported {
        op: n.op.name(),
        target: target.clone(),
        why: why.into(),
    };
    if matches!(n.op, Op::Input { .. } | Op::Constant { .. }) {
        return Err(unsupported(
            "inputs and constants are placed by the driver, not computed",
        ));
    }
    if ins.len() != in_tys.len() || !well_formed(n, in_tys) {
        return Err(unsupported("operand types do not give the node's type"));
    }
    let packed: Vec<bool> = (0..ins.len())
        .map(|i| cx.packed.get(i).copied().unwrap_or(false))
        .collect();
    let kt = cx.target;
    let em = Em::new(cx);
    // Copy loops must stay loops: a memcpy/memset libcall does not exist in freestanding code.
    em.fn_attr("no-builtins", "");
    let t = target.as_str();
    match &n.op {
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Clip { .. }
        | Op::Cast { .. }
        | Op::Gelu { .. }
        | Op::Broadcast { .. } => elementwise::emit(&em, n, in_tys, ins, out, task, t),
        Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::Pad { .. } => shape::emit(&em, n, in_tys, ins, out, task, t),
        Op::MatMul | Op::Linear { .. } => gemm::emit(
            &em,
            n,
            in_tys,
            ins,
            &packed,
            out,
            scratch,
            task,
            t,
            kt.precision,
        ),
        Op::Conv { .. } => conv::emit(&em, n, in_tys, ins, &packed, out, scratch, task, t),
        Op::Reduce { .. } | Op::Softmax { .. } | Op::LayerNorm { .. } => {
            norm::emit(&em, n, in_tys, ins, out, task, t)
        }
        Op::Attention { .. } => attention::emit(&em, n, in_tys, ins, out, scratch, task, t),
        Op::LinearAttention { .. } => {
            linear_attention::emit(&em, n, in_tys, ins, out, scratch, task, t)
        }
        Op::Quantize { .. } | Op::Dequantize { .. } => {
            quant::emit_qdq(&em, n, in_tys, ins, out, task, t)
        }
        Op::QLinear { .. } => {
            quant::emit_qlinear(&em, n, in_tys, ins, &packed, out, scratch, task, kt)
        }
        Op::Input { .. } | Op::Constant { .. } => Err(unsupported("not computed")),
    }
}
