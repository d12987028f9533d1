//! `vit.conv`: 2-D NCHW convolution with groups, strides, pads, dilations, bias and a fused
//! activation epilogue (applied in registers, after the bias, before the one store).
//!
//! Five shapes of kernel, picked at compile time:
//! - depthwise on a small plane (input and output rows each fit one vector: 7×7 and 14×14 on
//!   16 lanes): each input row is one masked load straight from the input and each tap column
//!   a lane shuffle of it that also does the stride and the zero padding, everything unrolled;
//! - depthwise (one input channel per group) otherwise: the rows a task needs are copied into a
//!   zero-bordered plane in scratch, each row stored by column phase (even columns, then odd
//!   ones for stride 2), so every tap of every output vector is one contiguous load whatever
//!   the stride; the taps are unrolled with the channel's weights hoisted, output columns run
//!   along the vector lanes (a masked store finishes a row that is not a whole number of
//!   vectors), and a few output rows are computed together so each input vector loaded
//!   serves every row that reads it;
//! - patchify (stride = kernel, no padding, one group: a ViT's patch embedding): each output
//!   pixel's patch is one row of a `[pixels, C·KH·KW]` matrix, gathered into scratch as runs of
//!   KW contiguous floats, times the weights transposed and packed at compile time as the
//!   GEMM's B panels; output channels run along the lanes and are stored to their planes;
//! - pointwise (1×1, stride 1, no padding): a GEMM of the weights with the input planes as
//!   they lie, tasks taking blocks of output channels × pixels (so a small plane, 7×7 or 14×14,
//!   is never cut into row chunks narrower than a vector);
//! - everything else: im2col of the task's output rows into scratch (strided rows gathered a
//!   vector at a time), then the same GEMM.
//!
//! The pointwise and im2col forms keep output pixels along the vector lanes, so stores are
//! contiguous. Taps are summed in (channel, ky, kx) order, the bias added and the activation
//! applied last, as the interpreter does. Tasks split (image, group) pairs, or output rows of
//! one pair when there are few; patchify and pointwise tasks take blocks of the product.

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::intrinsics::Intrinsic;
use inkwell::types::VectorType;
use inkwell::values::{BasicMetadataValueEnum, IntValue, PointerValue};
use inkwell::IntPredicate;
use vitc_ir::{Activation, DType, Node, Op, TensorType};

use super::elementwise::activation;
use super::emit::{lane_pieces, nest, unsupported, want_tasks, Elt, Em, Operand, Split, R, V};
use super::gemm::{emit_gemm, gemm_tasks, tile_cols, tile_shape, BSrc, Gemm};
use super::KernelError;

/// Spare floats after the depthwise plane for `lanes`-wide vectors: the masked vector that
/// finishes the last row reads at most lanes − 1 past the plane's last element.
fn slack(lanes: u32) -> u64 {
    lanes.max(1) as u64
}

/// Taps of a depthwise kernel unrolled in full (weights kept in registers); larger kernels
/// loop over their rows.
const UNROLL_TAPS: u64 = 49;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Depthwise,
    /// Depthwise on a plane whose input and output rows each fit one vector.
    DepthwiseRows,
    Patch,
    Pointwise,
    Im2col,
}

#[derive(Clone, Copy, Debug)]
struct Geo {
    n: u64,
    c: u64,
    ih: u64,
    iw: u64,
    m: u64,
    cg: u64,
    kh: u64,
    kw: u64,
    oh: u64,
    ow: u64,
    sh: u64,
    sw: u64,
    dh: u64,
    dw: u64,
    pt: u64,
    pl: u64,
    group: u64,
}

struct Plan {
    kind: Kind,
    geo: Geo,
    split: Split,
    scratch: u64,
    act: Activation,
}

fn plan(n: &Node, in_tys: &[&TensorType], lanes: u32) -> Option<Plan> {
    let Op::Conv {
        strides,
        pads,
        dilations,
        group,
        activation,
        ..
    } = &n.op
    else {
        return None;
    };
    let (x, w) = (in_tys.first()?, in_tys.get(1)?);
    let u = |v: usize| v as u64;
    let g = Geo {
        n: u(x.shape[0]),
        c: u(x.shape[1]),
        ih: u(x.shape[2]),
        iw: u(x.shape[3]),
        m: u(w.shape[0]),
        cg: u(w.shape[1]),
        kh: u(w.shape[2]),
        kw: u(w.shape[3]),
        oh: u(n.ty.shape[2]),
        ow: u(n.ty.shape[3]),
        sh: u(strides[0]),
        sw: u(strides[1]),
        dh: u(dilations[0]),
        dw: u(dilations[1]),
        pt: u(pads[0]),
        pl: u(pads[1]),
        group: u(*group),
    };
    let act = *activation;
    let kk = g.cg * g.kh * g.kw;
    let flops = 2 * g.n * g.m * g.oh * g.ow * kk;
    let want = want_tasks(flops, 64);
    if g.cg == 1 {
        let split = Split::new(g.n * g.m, g.oh, want, 1);
        let l = lanes as u64;
        let rows_fit = l > 1 && g.iw <= l && g.ow <= l && g.kh * g.kw <= UNROLL_TAPS;
        if rows_fit && split.chunk == g.oh {
            return Some(Plan {
                kind: Kind::DepthwiseRows,
                geo: g,
                split,
                scratch: 0,
                act,
            });
        }
        let ph = (split.chunk.max(1) - 1) * g.sh + (g.kh - 1) * g.dh + 1;
        let pw = (g.ow.max(1) - 1) * g.sw + (g.kw - 1) * g.dw + 1;
        return Some(Plan {
            kind: Kind::Depthwise,
            geo: g,
            split,
            scratch: ph * pw + slack(lanes),
            act,
        });
    }
    if is_patch(&g, pads) {
        let (mr, _) = tile_shape(lanes);
        // Column blocks of at most ~256 KB of weights (they stay in L2 while the task's pixels
        // stream past), and no more of them than that: each block gathers its pixels again.
        let nr = tile_cols(lanes);
        let blocks = (kk * g.m * 4).div_ceil(256 << 10).max(1);
        let col_align = g.m.div_ceil(blocks).div_ceil(nr) * nr;
        let split = Split::blocks(g.n, g.oh * g.ow, g.m, gemm_tasks(flops), mr, col_align);
        return Some(Plan {
            kind: Kind::Patch,
            geo: g,
            split,
            scratch: split.chunk * kk,
            act,
        });
    }
    let pointwise =
        g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && pads.iter().all(|&p| p == 0);
    if pointwise {
        // One product per (image, group): output channels × pixels over the group's channels,
        // in the blocks that read the least (a large plane is cut along its pixels, so each
        // task reads its part of the input once; a small one along the output channels).
        let (mr, _) = tile_shape(lanes);
        let split = Split::blocks(
            g.n * g.group,
            g.m / g.group,
            g.oh * g.ow,
            gemm_tasks(flops),
            mr,
            tile_cols(lanes),
        );
        return Some(Plan {
            kind: Kind::Pointwise,
            geo: g,
            split,
            scratch: 0,
            act,
        });
    }
    // Row chunks wide enough (≥ 32 pixels) that the GEMM's columns fill whole vectors.
    let align = 32u64.div_ceil(g.ow.max(1));
    let split = Split::new(g.n * g.group, g.oh, want, align);
    Some(Plan {
        kind: Kind::Im2col,
        geo: g,
        split,
        scratch: kk * split.chunk * g.ow,
        act,
    })
}

/// Non-overlapping patches: stride = kernel, no padding or dilation, one group.
fn is_patch(g: &Geo, pads: &[usize]) -> bool {
    g.group == 1
        && g.kh > 1
        && g.kw > 1
        && (g.sh, g.sw) == (g.kh, g.kw)
        && (g.dh, g.dw) == (1, 1)
        && pads.iter().all(|&p| p == 0)
}

pub(crate) fn split(n: &Node, in_tys: &[&TensorType], lanes: u32) -> Option<Split> {
    plan(n, in_tys, lanes).map(|p| p.split)
}

/// Constant operands the convolution wants in another layout: the patchify form's weights,
/// transposed to `[C·KH·KW, M]` and packed as GEMM B panels.
pub(crate) fn packing(
    n: &Node,
    in_tys: &[&TensorType],
    operand: usize,
    lanes: u32,
) -> Option<super::Packing> {
    let p = plan(n, in_tys, lanes)?;
    (operand == 1 && p.kind == Kind::Patch).then(|| super::Packing::ConvWT {
        k: (p.geo.cg * p.geo.kh * p.geo.kw) as usize,
        n: p.geo.m as usize,
        lanes,
    })
}

pub(crate) fn scratch_bytes(n: &Node, in_tys: &[&TensorType], lanes: u32) -> usize {
    plan(n, in_tys, lanes)
        .map(|p| (p.scratch * 4) as usize)
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn emit<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    packed: &[bool],
    out: PointerValue<'ctx>,
    scratch: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    target: &str,
) -> R<()> {
    if in_tys.iter().any(|t| t.dtype != DType::F32) {
        return Err(unsupported(n, target, "only f32 convolution is generated"));
    }
    let p =
        plan(n, in_tys, em.lanes).ok_or_else(|| unsupported(n, target, "malformed convolution"))?;
    let bias = (ins.len() > 2).then(|| ins[2]);
    if n.ty.numel() == 0 {
        return Ok(());
    }
    match p.kind {
        Kind::Depthwise => depthwise(em, &p, ins[0], ins[1], bias, out, scratch, task),
        Kind::DepthwiseRows => depthwise_rows_in_vectors(em, &p, ins[0], ins[1], bias, out, task),
        Kind::Patch => {
            let w_packed = packed.get(1).copied().unwrap_or(false);
            patchify(em, &p, ins[0], ins[1], w_packed, bias, out, scratch, task)
        }
        Kind::Pointwise => pointwise(em, &p, ins[0], ins[1], bias, out, task),
        Kind::Im2col => im2col_conv(em, &p, ins[0], ins[1], bias, out, scratch, task),
    }
}

/// The epilogue: `v` (an accumulator of `w` lanes) plus the bias, then the activation.
fn finish<'ctx>(
    em: &Em<'_, 'ctx>,
    v: V<'ctx>,
    bias: Option<V<'ctx>>,
    act: Activation,
) -> R<V<'ctx>> {
    let w = Em::width(v);
    let v = match bias {
        Some(b) => em.fadd(v, em.splat(b, w)?)?,
        None => v,
    };
    activation(em, act, v)
}

/// The masked-memory intrinsic `name` (`llvm.masked.load` / `llvm.masked.store`) for vectors of
/// type `vt` through pointers like `p`.
fn masked_intrinsic<'ctx>(
    em: &Em<'_, 'ctx>,
    name: &str,
    vt: inkwell::types::BasicTypeEnum<'ctx>,
    p: PointerValue<'ctx>,
) -> R<inkwell::values::FunctionValue<'ctx>> {
    let types = [vt, p.get_type().into()];
    Intrinsic::find(name)
        .and_then(|i| i.get_declaration(em.module, &types))
        .ok_or_else(|| KernelError::Unsupported {
            op: name.into(),
            target: "this LLVM".into(),
            why: "intrinsic not found".into(),
        })
}

/// A constant mask of `w` lanes, the first `n` set.
fn first_lanes<'ctx>(em: &Em<'_, 'ctx>, w: u32, n: u32) -> inkwell::values::VectorValue<'ctx> {
    let i1 = em.ctx.bool_type();
    let mask: Vec<IntValue> = (0..w)
        .map(|k| i1.const_int((k < n) as u64, false))
        .collect();
    VectorType::const_vector(&mask)
}

/// Load the first `n` of `w` lanes from `p[idx]`, the others zero: a plain load when that is
/// all of them, else a masked load (the lanes past `n` are never read, so the vector may
/// reach past the end of the buffer).
fn load_first<'ctx>(
    em: &Em<'_, 'ctx>,
    p: PointerValue<'ctx>,
    idx: IntValue<'ctx>,
    w: u32,
    n: u32,
) -> R<V<'ctx>> {
    if n >= w || w == 1 {
        return em.ld_at(Elt::F32, w, p, idx);
    }
    let q = em.gep(Elt::F32, p, idx)?;
    let vt = em.ty(Elt::F32, w);
    let f = masked_intrinsic(em, "llvm.masked.load", vt, q)?;
    let mask = first_lanes(em, w, n);
    let zero = em.zero(Elt::F32, w);
    // LLVM 21 moved the alignment from an operand to the pointer's `align` attribute.
    let call = if f.count_params() == 4 {
        let args: [BasicMetadataValueEnum; 4] = [
            q.into(),
            em.ctx.i32_type().const_int(4, false).into(),
            mask.into(),
            zero.into(),
        ];
        em.b.build_call(f, &args, "")?
    } else {
        let args: [BasicMetadataValueEnum; 3] = [q.into(), mask.into(), zero.into()];
        let call = em.b.build_call(f, &args, "")?;
        let align = Attribute::get_named_enum_kind_id("align");
        call.add_attribute(
            AttributeLoc::Param(0),
            em.ctx.create_enum_attribute(align, 4),
        );
        call
    };
    call.try_as_basic_value()
        .basic()
        .ok_or(KernelError::Builder(
            inkwell::builder::BuilderError::NotSameType,
        ))
}

/// Store the first `n` lanes of `v` at `p[idx]`: a plain store when that is all of them, else a
/// masked store with a constant mask (one instruction on AVX2 and AVX-512; the enabled lanes'
/// scalar stores where the target has no masked store).
fn store_first<'ctx>(
    em: &Em<'_, 'ctx>,
    p: PointerValue<'ctx>,
    idx: IntValue<'ctx>,
    v: V<'ctx>,
    n: u32,
) -> R<()> {
    let w = Em::width(v);
    if n >= w {
        return em.st_at(Elt::F32, p, idx, v);
    }
    let q = em.gep(Elt::F32, p, idx)?;
    let f = masked_intrinsic(em, "llvm.masked.store", v.get_type(), q)?;
    let mask = first_lanes(em, w, n);
    // LLVM 21 moved the alignment from an operand to the pointer's `align` attribute.
    if f.count_params() == 4 {
        let args: [BasicMetadataValueEnum; 4] = [
            v.into(),
            q.into(),
            em.ctx.i32_type().const_int(4, false).into(),
            mask.into(),
        ];
        em.b.build_call(f, &args, "")?;
    } else {
        let args: [BasicMetadataValueEnum; 3] = [v.into(), q.into(), mask.into()];
        let call = em.b.build_call(f, &args, "")?;
        let align = Attribute::get_named_enum_kind_id("align");
        call.add_attribute(
            AttributeLoc::Param(1),
            em.ctx.create_enum_attribute(align, 4),
        );
    }
    Ok(())
}

/// Store `v` (splat) over `n` elements from `p`.
fn fill<'ctx>(em: &Em<'_, 'ctx>, p: PointerValue<'ctx>, n: u64) -> R<()> {
    if n == 0 {
        return Ok(());
    }
    let ops = [Operand {
        ptr: p,
        elt: Elt::F32,
        strides: vec![1],
    }];
    nest(em, &[n], &ops, None, true, &mut |l| {
        l.store(em, 0, em.cf(0.0, l.w))
    })
}

/// Copy `n` elements read every `stride` from `src` to consecutive `dst`. `readable`: how many
/// elements from `src` on may be read (wide strided loads read past the last element they
/// keep, so they are used only where that stays inside).
fn copy<'ctx>(
    em: &Em<'_, 'ctx>,
    src: PointerValue<'ctx>,
    stride: i64,
    dst: PointerValue<'ctx>,
    n: u64,
    readable: u64,
) -> R<()> {
    if n == 0 {
        return Ok(());
    }
    let l = em.lanes as u64;
    if stride > 1 && stride <= 4 && l > 1 {
        let s = stride as u64;
        // Whole vectors whose wide load (l·s elements) stays within `readable`.
        let fit = (readable / (l * s)).min(n / l);
        if fit > 0 {
            em.for_range(em.i64c(0), em.i64c((fit * l) as i64), l, |e| {
                let v = strided_load(em, src, em.mulc(e, stride)?, s, l as u32)?;
                em.st_at(Elt::F32, dst, e, v)
            })?;
        }
        let mut done = fit * l;
        // Then narrower vectors where they fit (short rows are common: 14 or 28 columns).
        let mut w = l / 2;
        while w >= 2 {
            if n - done >= w && (done + w) * s <= readable {
                let v = strided_load(em, src, em.i64c((done * s) as i64), s, w as u32)?;
                em.st_at(Elt::F32, dst, em.i64c(done as i64), v)?;
                done += w;
            }
            w /= 2;
        }
        return em.for_range(em.i64c(done as i64), em.i64c(n as i64), 1, |e| {
            let v = em.ld_at(Elt::F32, 1, src, em.mulc(e, stride)?)?;
            em.st_at(Elt::F32, dst, e, v)
        });
    }
    let ops = [
        Operand {
            ptr: src,
            elt: Elt::F32,
            strides: vec![stride],
        },
        Operand {
            ptr: dst,
            elt: Elt::F32,
            strides: vec![1],
        },
    ];
    nest(em, &[n], &ops, None, true, &mut |l| {
        let x = l.load(em, 0)?;
        l.store(em, 1, x)
    })
}

/// Output columns `[lo, hi)` whose input column `ox·sw + kx·dw - pl` lies inside the row.
fn valid_cols(g: &Geo, kx: u64) -> (u64, u64) {
    let off = (kx * g.dw) as i64 - g.pl as i64;
    let s = g.sw as i64;
    // smallest ox with ox·s + off >= 0; largest with ox·s + off <= iw - 1
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let top = g.iw as i64 - 1 - off;
    let hi = if top < 0 { 0 } else { top / s + 1 };
    let lo = (lo as u64).min(g.ow);
    (lo, (hi as u64).clamp(lo, g.ow))
}

/// The GEMM both the pointwise and the im2col forms end in: output channels along the rows,
/// `out[obase + r·ostride + j] = act(Σ_k W[wbase + r·K + k]·B[k, j] + bias[ch0 + r])`, the weight
/// rows read where they lie (4 at a time on by-element targets) and the epilogue in registers.
struct WeightRows<'ctx> {
    w: PointerValue<'ctx>,
    wbase: IntValue<'ctx>,
    k: u64,
    /// The bias and the block's first output channel.
    bias: Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
    act: Activation,
    out: PointerValue<'ctx>,
    obase: IntValue<'ctx>,
    ostride: i64,
}

fn weight_rows_gemm<'ctx>(
    em: &Em<'_, 'ctx>,
    g: &WeightRows<'ctx>,
    m: u64,
    n: u64,
    load_b: &dyn Fn(IntValue<'ctx>, IntValue<'ctx>, u32) -> R<V<'ctx>>,
) -> R<()> {
    let kk = g.k as i64;
    let a_at = |r: IntValue<'ctx>, pk: IntValue<'ctx>| em.add(em.mad(g.wbase, r, kk)?, pk);
    let load_a = |r: IntValue<'ctx>, pk: IntValue<'ctx>| em.ld_at(Elt::F32, 1, g.w, a_at(r, pk)?);
    let load_a4 = |r: IntValue<'ctx>, pk: IntValue<'ctx>| em.ld_at(Elt::F32, 4, g.w, a_at(r, pk)?);
    let store = |r: IntValue<'ctx>, j: IntValue<'ctx>, _lw: u32, v: V<'ctx>| -> R<()> {
        let bv = match g.bias {
            Some((bb, ch0)) => Some(em.ld_at(Elt::F32, 1, bb, em.add(ch0, r)?)?),
            None => None,
        };
        let v = finish(em, v, bv, g.act)?;
        em.st_at(
            Elt::F32,
            g.out,
            em.add(em.mad(g.obase, r, g.ostride)?, j)?,
            v,
        )
    };
    emit_gemm(
        em,
        &Gemm {
            m,
            n,
            k: g.k,
            acc: Elt::F32,
            load_a: &load_a,
            load_a4: Some(&load_a4),
            b: BSrc::Load(load_b),
            store: &store,
        },
    )
}

/// 1×1 stride-1 convolution: per (image, group) the product W_g [mg × cg] · X_g [cg × pixels],
/// tasks taking blocks of output channels (GEMM rows) × pixels (GEMM columns).
#[allow(clippy::too_many_arguments)]
fn pointwise<'ctx>(
    em: &Em<'_, 'ctx>,
    p: &Plan,
    x: PointerValue<'ctx>,
    w: PointerValue<'ctx>,
    bias: Option<PointerValue<'ctx>>,
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
) -> R<()> {
    let g = p.geo;
    let mg = g.m / g.group;
    let kk = g.cg;
    let plane = (g.ih * g.iw) as i64;
    p.split.emit_blocks(em, task, &|item, r0, rows, c0, cols| {
        let b = em.udivc(item, g.group)?;
        let gi = em.uremc(item, g.group)?;
        // First input channel plane of this (image, group), at pixel c0.
        let xb = em.add(
            em.mad(em.mulc(b, g.c as i64 * plane)?, gi, g.cg as i64 * plane)?,
            c0,
        )?;
        // Output channel (within the image) of the block's first row.
        let ch0 = em.add(em.mulc(gi, mg as i64)?, r0)?;
        let wbase = em.mulc(ch0, kk as i64)?;
        let obase = em.add(
            em.mulc(em.mad(em.mulc(b, g.m as i64)?, ch0, 1)?, plane)?,
            c0,
        )?;
        let load_b = |pk: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32| -> R<V<'ctx>> {
            em.ld_at(Elt::F32, lw, x, em.add(em.mad(xb, pk, plane)?, j)?)
        };
        let rows_of = WeightRows {
            w,
            wbase,
            k: kk,
            bias: bias.map(|bb| (bb, ch0)),
            act: p.act,
            out,
            obase,
            ostride: plane,
        };
        weight_rows_gemm(em, &rows_of, rows, cols, &load_b)
    })
}

#[allow(clippy::too_many_arguments)]
fn im2col_conv<'ctx>(
    em: &Em<'_, 'ctx>,
    p: &Plan,
    x: PointerValue<'ctx>,
    w: PointerValue<'ctx>,
    bias: Option<PointerValue<'ctx>>,
    out: PointerValue<'ctx>,
    col: PointerValue<'ctx>,
    task: IntValue<'ctx>,
) -> R<()> {
    let g = p.geo;
    let mg = g.m / g.group;
    let kk = g.cg * g.kh * g.kw;
    let plane = (g.ih * g.iw) as i64;
    let oplane = (g.oh * g.ow) as i64;
    p.split.emit(em, task, &|item, oy0, rows| {
        let b = em.udivc(item, g.group)?;
        let gi = em.uremc(item, g.group)?;
        let ncols = rows * g.ow;
        // First input channel plane of this (image, group).
        let xc = em.mad(em.mulc(b, (g.c as i64) * plane)?, gi, g.cg as i64 * plane)?;
        im2col(em, &g, x, xc, oy0, rows, col)?;
        let wbase = em.mulc(gi, (mg * kk) as i64)?;
        let obase = em.add(
            em.mulc(em.mad(em.mulc(b, g.m as i64)?, gi, mg as i64)?, oplane)?,
            em.mulc(oy0, g.ow as i64)?,
        )?;
        let load_b = |pk: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32| -> R<V<'ctx>> {
            em.ld_at(Elt::F32, lw, col, em.add(em.mulc(pk, ncols as i64)?, j)?)
        };
        let ch0 = em.mulc(gi, mg as i64)?;
        let rows_of = WeightRows {
            w,
            wbase,
            k: kk,
            bias: bias.map(|bb| (bb, ch0)),
            act: p.act,
            out,
            obase,
            ostride: oplane,
        };
        weight_rows_gemm(em, &rows_of, mg, ncols, &load_b)
    })
}

/// The patchify form: `out[b, o, px] = act(Σ_k P[px, k]·Wᵀ[k, o] + bias[o])` with P the
/// pixels' patches (gathered into scratch, `rows × K`) and Wᵀ packed (or read strided from W).
#[allow(clippy::too_many_arguments)]
fn patchify<'ctx>(
    em: &Em<'_, 'ctx>,
    p: &Plan,
    x: PointerValue<'ctx>,
    w: PointerValue<'ctx>,
    w_packed: bool,
    bias: Option<PointerValue<'ctx>>,
    out: PointerValue<'ctx>,
    pat: PointerValue<'ctx>,
    task: IntValue<'ctx>,
) -> R<()> {
    let g = p.geo;
    let kk = (g.c * g.kh * g.kw) as i64;
    let plane = (g.ih * g.iw) as i64;
    let opix = (g.oh * g.ow) as i64;
    p.split.emit_blocks(em, task, &|b, px0, rows, c0, cols| {
        let xb = em.mulc(b, g.c as i64 * plane)?;
        // P[r, (c·kh + ky)·kw + kx] = x[b, c, oy·sh + ky, ox·sw + kx] for pixel px0 + r.
        em.for_n(rows, |r| {
            let px = em.add(px0, r)?;
            let (oy, ox) = (em.udivc(px, g.ow)?, em.uremc(px, g.ow)?);
            let at = em.add(
                em.add(xb, em.mulc(oy, (g.sh * g.iw) as i64)?)?,
                em.mulc(ox, g.sw as i64)?,
            )?;
            let dst = em.gep(Elt::F32, pat, em.mulc(r, kk)?)?;
            em.for_n(g.c * g.kh, |cy| {
                let (c, ky) = (em.udivc(cy, g.kh)?, em.uremc(cy, g.kh)?);
                let src = em.gep(
                    Elt::F32,
                    x,
                    em.add(at, em.add(em.mulc(c, plane)?, em.mulc(ky, g.iw as i64)?)?)?,
                )?;
                let d = em.gep(Elt::F32, dst, em.mulc(cy, g.kw as i64)?)?;
                for (lo, hi, lw) in lane_pieces(g.kw, em.lanes as u64) {
                    let mut at = lo;
                    while at < hi {
                        let v = em.ld_at(Elt::F32, lw, src, em.i64c(at as i64))?;
                        em.st_at(Elt::F32, d, em.i64c(at as i64), v)?;
                        at += lw as u64;
                    }
                }
                Ok(())
            })
        })?;
        let a_at = |r: IntValue<'ctx>, k: IntValue<'ctx>| em.add(em.mulc(r, kk)?, k);
        let load_a = |r: IntValue<'ctx>, k: IntValue<'ctx>| em.ld_at(Elt::F32, 1, pat, a_at(r, k)?);
        let load_a4 =
            |r: IntValue<'ctx>, k: IntValue<'ctx>| em.ld_at(Elt::F32, 4, pat, a_at(r, k)?);
        // Wᵀ[k, o .. o + lw] = W[o .., k]: one element per lane when W is not packed.
        let load_w = |k: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32| -> R<V<'ctx>> {
            let o = em.add(c0, j)?;
            let mut v = em.zero(Elt::F32, lw);
            for t in 0..lw {
                let s = em.ld_at(
                    Elt::F32,
                    1,
                    w,
                    em.add(em.mulc(em.addc(o, t as i64)?, kk)?, k)?,
                )?;
                v = if lw == 1 {
                    s
                } else {
                    em.b.build_insert_element(
                        v.into_vector_value(),
                        s,
                        em.ctx.i32_type().const_int(t as u64, false),
                        "",
                    )?
                    .into()
                };
            }
            Ok(v)
        };
        let store = |r: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32, v: V<'ctx>| -> R<()> {
            let o = em.add(c0, j)?;
            let mut v = v;
            if let Some(bb) = bias {
                v = em.fadd(v, em.ld_at(Elt::F32, lw, bb, o)?)?;
            }
            let v = activation(em, p.act, v)?;
            // Channel o + t of pixel px0 + r lies in plane o + t.
            let base = em.add(
                em.mulc(em.mad(em.mulc(b, g.m as i64)?, o, 1)?, opix)?,
                em.add(px0, r)?,
            )?;
            for t in 0..lw {
                let at = em.addc(base, t as i64 * opix)?;
                em.st_at(Elt::F32, out, at, em.lane(v, t)?)?;
            }
            Ok(())
        };
        let bsrc = if w_packed {
            BSrc::Packed { ptr: w, col0: c0 }
        } else {
            BSrc::Load(&load_w)
        };
        emit_gemm(
            em,
            &Gemm {
                m: rows,
                n: cols,
                k: kk as u64,
                acc: Elt::F32,
                load_a: &load_a,
                load_a4: Some(&load_a4),
                b: bsrc,
                store: &store,
            },
        )
    })
}

/// Fill `col[(ci·kh + ky)·kw + kx][oyl·ow + ox]` for the `rows` output rows from `oy0`.
#[allow(clippy::too_many_arguments)]
fn im2col<'ctx>(
    em: &Em<'_, 'ctx>,
    g: &Geo,
    x: PointerValue<'ctx>,
    xc: IntValue<'ctx>,
    oy0: IntValue<'ctx>,
    rows: u64,
    col: PointerValue<'ctx>,
) -> R<()> {
    let ncols = (rows * g.ow) as i64;
    let plane = (g.ih * g.iw) as i64;
    em.for_n(g.cg, |ci| {
        let src = em.gep(Elt::F32, x, em.mad(xc, ci, plane)?)?;
        em.for_n(g.kh, |ky| {
            for kx in 0..g.kw {
                let (lo, hi) = valid_cols(g, kx);
                let row = em.addc(
                    em.mulc(em.mad(em.mulc(ci, g.kh as i64)?, ky, 1)?, g.kw as i64)?,
                    kx as i64,
                )?;
                let dst_row = em.gep(Elt::F32, col, em.mulc(row, ncols)?)?;
                em.for_n(rows, |oyl| {
                    let d = em.gep(Elt::F32, dst_row, em.mulc(oyl, g.ow as i64)?)?;
                    let oy = em.add(oy0, oyl)?;
                    let iy = em.addc(
                        em.mad(em.mulc(oy, g.sh as i64)?, ky, g.dh as i64)?,
                        -(g.pt as i64),
                    )?;
                    // Negative rows wrap to huge unsigned values, so one compare checks both ends.
                    let inside =
                        em.b.build_int_compare(IntPredicate::ULT, iy, em.i64c(g.ih as i64), "")?;
                    em.if_else(
                        inside,
                        || {
                            fill(em, d, lo)?;
                            let first = (lo * g.sw + kx * g.dw) as i64 - g.pl as i64;
                            let s =
                                em.gep(Elt::F32, src, em.addc(em.mulc(iy, g.iw as i64)?, first)?)?;
                            copy(
                                em,
                                s,
                                g.sw as i64,
                                em.gep(Elt::F32, d, em.i64c(lo as i64))?,
                                hi - lo,
                                (g.iw as i64 - first).max(0) as u64,
                            )?;
                            fill(em, em.gep(Elt::F32, d, em.i64c(hi as i64))?, g.ow - hi)
                        },
                        || fill(em, d, g.ow),
                    )
                })?;
            }
            Ok(())
        })
    })
}

/// `w` lanes from `p[off]`, `p[off + s]`, …: a plain load for s = 1, a wide load and a
/// deinterleaving shuffle for s up to 4 (reading at most s - 1 elements past the last lane).
fn strided_load<'ctx>(
    em: &Em<'_, 'ctx>,
    p: PointerValue<'ctx>,
    off: IntValue<'ctx>,
    s: u64,
    w: u32,
) -> R<V<'ctx>> {
    if w == 1 || s == 1 {
        return em.ld_at(Elt::F32, w, p, off);
    }
    let wide = em
        .ld_at(Elt::F32, w * s as u32, p, off)?
        .into_vector_value();
    let i32t = em.ctx.i32_type();
    let mask: Vec<IntValue> = (0..w as u64)
        .map(|k| i32t.const_int(k * s, false))
        .collect();
    let mask = VectorType::const_vector(&mask);
    Ok(em.b.build_shuffle_vector(wide, wide, mask, "")?.into())
}

/// Output rows computed together by the depthwise kernel: every input vector loaded serves
/// each of them that reads it (stride 1: 4 rows of a 3×3 kernel load 6 input rows, not 12).
fn depthwise_rows(g: &Geo) -> u64 {
    match g.sh {
        1 => 4,
        2 => 2,
        _ => 1,
    }
}

/// Where column phase `p` (padded columns p, p + s, p + 2s, … for stride s) starts in a
/// scratch row, and how many columns it holds: the row is stored phase by phase, so the input
/// columns one output vector reads for one tap are contiguous whatever the stride.
fn phases(pw: u64, s: u64) -> Vec<(u64, u64)> {
    let mut at = 0;
    (0..s.min(pw))
        .map(|p| {
            let len = (pw - p).div_ceil(s);
            let r = (at, len);
            at += len;
            r
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn depthwise<'ctx>(
    em: &Em<'_, 'ctx>,
    p: &Plan,
    x: PointerValue<'ctx>,
    w: PointerValue<'ctx>,
    bias: Option<PointerValue<'ctx>>,
    out: PointerValue<'ctx>,
    scr: PointerValue<'ctx>,
    task: IntValue<'ctx>,
) -> R<()> {
    let g = p.geo;
    let mg = g.m / g.group;
    let pw = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1;
    let taps = g.kh * g.kw;
    let l = em.lanes as u64;
    let ph_at = phases(pw, g.sw);
    // Tap kx of output column ox reads padded column ox·s + kx·dw: phase (kx·dw) mod s, at
    // ox + ⌊kx·dw / s⌋ within it.
    let tap_col = |kx: u64| {
        let j = kx * g.dw;
        ph_at[(j % g.sw) as usize].0 + j / g.sw
    };
    let unrolled = taps <= UNROLL_TAPS;
    p.split.emit(em, task, &|item, oy0, rows| {
        let b = em.udivc(item, g.m)?;
        let m = em.uremc(item, g.m)?;
        let c = em.udivc(m, mg)?;
        let src = em.gep(
            Elt::F32,
            x,
            em.mulc(em.mad(em.mulc(b, g.c as i64)?, c, 1)?, (g.ih * g.iw) as i64)?,
        )?;
        // The zero-bordered input rows this task reads: padded rows oy0·sh .. + ph, each
        // stored phase by phase.
        let ph = (rows - 1) * g.sh + (g.kh - 1) * g.dh + 1;
        em.for_n(ph, |py| {
            let d = em.gep(Elt::F32, scr, em.mulc(py, pw as i64)?)?;
            let iy = em.addc(em.add(em.mulc(oy0, g.sh as i64)?, py)?, -(g.pt as i64))?;
            let inside =
                em.b.build_int_compare(IntPredicate::ULT, iy, em.i64c(g.ih as i64), "")?;
            em.if_else(
                inside,
                || {
                    let row = em.gep(Elt::F32, src, em.mulc(iy, g.iw as i64)?)?;
                    for (ph_i, &(at, len)) in ph_at.iter().enumerate() {
                        // Phase element q is padded column q·s + p, input column q·s + p − pl.
                        let first_in = |q: u64| (q * g.sw + ph_i as u64) as i64 - g.pl as i64;
                        let lo = (0..len).find(|&q| first_in(q) >= 0).unwrap_or(len);
                        let hi = (lo..len)
                            .find(|&q| first_in(q) >= g.iw as i64)
                            .unwrap_or(len);
                        let dst = em.gep(Elt::F32, d, em.i64c(at as i64))?;
                        fill(em, dst, lo)?;
                        if hi > lo {
                            let f = first_in(lo);
                            copy(
                                em,
                                em.gep(Elt::F32, row, em.i64c(f))?,
                                g.sw as i64,
                                em.gep(Elt::F32, dst, em.i64c(lo as i64))?,
                                hi - lo,
                                (g.iw as i64 - f) as u64,
                            )?;
                        }
                        fill(em, em.gep(Elt::F32, dst, em.i64c(hi as i64))?, len - hi)?;
                    }
                    Ok(())
                },
                || fill(em, d, pw),
            )
        })?;
        let wm = em.mulc(m, taps as i64)?;
        // The channel's weights, loaded once (the unrolled taps keep them in registers).
        let wts: Vec<V<'ctx>> = if unrolled {
            (0..taps)
                .map(|t| em.ld_at(Elt::F32, 1, w, em.addc(wm, t as i64)?))
                .collect::<R<_>>()?
        } else {
            vec![]
        };
        let bv = match bias {
            Some(bb) => Some(em.ld_at(Elt::F32, 1, bb, m)?),
            None => None,
        };
        let orow0 = em.mulc(em.add(em.mulc(item, g.oh as i64)?, oy0)?, g.ow as i64)?;
        // `nr` output rows from local row `oy`, the `lw` columns from `ox`, of which the
        // first `keep` are stored.
        let block = |oy: IntValue<'ctx>, nr: u64, ox: IntValue<'ctx>, lw: u32, keep: u32| {
            let base = em.add(em.mulc(oy, (g.sh * pw) as i64)?, ox)?;
            let mut accs = vec![em.zero(Elt::F32, lw); nr as usize];
            if unrolled {
                // Padded input row `ri` of the block feeds output row r through kernel row
                // ky = (ri − r·sh)/dh when that is a whole row inside the kernel.
                let span = (nr - 1) * g.sh + (g.kh - 1) * g.dh + 1;
                for ri in 0..span {
                    let users: Vec<(usize, u64)> = (0..nr)
                        .filter_map(|r| {
                            let d = ri.checked_sub(r * g.sh)?;
                            (d % g.dh == 0 && d / g.dh < g.kh).then_some((r as usize, d / g.dh))
                        })
                        .collect();
                    if users.is_empty() {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let off = em.addc(base, (ri * pw + tap_col(kx)) as i64)?;
                        let xv = em.ld_at(Elt::F32, lw, scr, off)?;
                        for &(r, ky) in &users {
                            let wv = em.splat(wts[(ky * g.kw + kx) as usize], lw)?;
                            accs[r] = em.mul_add(wv, xv, accs[r])?;
                        }
                    }
                }
            } else {
                // Taps in (ky, kx) order, kernel rows in a loop.
                accs = em.for_acc(em.i64c(0), em.i64c(g.kh as i64), 1, &accs, |ky, a| {
                    let mut a = a.to_vec();
                    let krow = em.mad(base, ky, (g.dh * pw) as i64)?;
                    for kx in 0..g.kw {
                        let wv = em.ld_at(
                            Elt::F32,
                            1,
                            w,
                            em.addc(em.mad(wm, ky, g.kw as i64)?, kx as i64)?,
                        )?;
                        let wv = em.splat(wv, lw)?;
                        for (r, acc) in a.iter_mut().enumerate() {
                            let off = em.addc(krow, (r as u64 * g.sh * pw + tap_col(kx)) as i64)?;
                            let xv = em.ld_at(Elt::F32, lw, scr, off)?;
                            *acc = em.mul_add(wv, xv, *acc)?;
                        }
                    }
                    Ok(a)
                })?;
            }
            for (r, acc) in accs.into_iter().enumerate() {
                let v = finish(em, acc, bv, p.act)?;
                let at = em.add(em.mad(orow0, em.addc(oy, r as i64)?, g.ow as i64)?, ox)?;
                store_first(em, out, at, v, keep)?;
            }
            Ok(())
        };
        // Columns: whole vectors, then one masked vector for the rest of the row (it reads
        // into the next phase or the slack after the plane, never outside scratch).
        let cols = |oy: IntValue<'ctx>, nr: u64| -> R<()> {
            if l == 1 {
                return em.for_n(g.ow, |ox| block(oy, nr, ox, 1, 1));
            }
            let whole = g.ow / l * l;
            if whole > 0 {
                em.for_range(em.i64c(0), em.i64c(whole as i64), l, |ox| {
                    block(oy, nr, ox, l as u32, l as u32)
                })?;
            }
            let rest = g.ow - whole;
            if rest > 0 {
                block(oy, nr, em.i64c(whole as i64), l as u32, rest as u32)?;
            }
            Ok(())
        };
        let nr = depthwise_rows(&g).min(rows);
        let full = rows / nr;
        em.for_n(full, |bi| cols(em.mulc(bi, nr as i64)?, nr))?;
        let left = rows - full * nr;
        if left > 0 {
            cols(em.i64c((full * nr) as i64), left)?;
        }
        Ok(())
    })
}

/// Output rows computed together by [`depthwise_rows_in_vectors`] (their accumulators stay in
/// registers beside the kernel's weights).
const ROWS_IN_VECTORS_BLOCK: u64 = 8;

/// Depthwise convolution of a small plane (7×7, 14×14 on 16 lanes): each input row is one
/// (masked) vector load straight from the input, and each tap column a lane shuffle of it
/// that also supplies the stride and the zero padding, so no scratch plane is built. Every
/// loop is unrolled: all rows, padding decisions and masks are static. Each shuffled row
/// serves every output row of the block that reads it.
#[allow(clippy::too_many_arguments)]
fn depthwise_rows_in_vectors<'ctx>(
    em: &Em<'_, 'ctx>,
    p: &Plan,
    x: PointerValue<'ctx>,
    w: PointerValue<'ctx>,
    bias: Option<PointerValue<'ctx>>,
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
) -> R<()> {
    let g = p.geo;
    let mg = g.m / g.group;
    let taps = g.kh * g.kw;
    let l = em.lanes;
    let i32t = em.ctx.i32_type();
    p.split.emit(em, task, &|item, _oy0, _rows| {
        let b = em.udivc(item, g.m)?;
        let m = em.uremc(item, g.m)?;
        let c = em.udivc(m, mg)?;
        let src = em.gep(
            Elt::F32,
            x,
            em.mulc(em.mad(em.mulc(b, g.c as i64)?, c, 1)?, (g.ih * g.iw) as i64)?,
        )?;
        let wm = em.mulc(m, taps as i64)?;
        let wts: Vec<V<'ctx>> = (0..taps)
            .map(|t| em.ld_at(Elt::F32, 1, w, em.addc(wm, t as i64)?))
            .collect::<R<_>>()?;
        let bv = match bias {
            Some(bb) => Some(em.ld_at(Elt::F32, 1, bb, m)?),
            None => None,
        };
        let obase = em.mulc(item, (g.oh * g.ow) as i64)?;
        let zero = em.zero(Elt::F32, l).into_vector_value();
        let mut r0 = 0;
        while r0 < g.oh {
            let nr = ROWS_IN_VECTORS_BLOCK.min(g.oh - r0);
            let mut accs = vec![em.zero(Elt::F32, l); nr as usize];
            // Input rows the block reads: (r0 + r)·sh + ky·dh − pt, those inside the image
            // (the others are zero padding and add nothing).
            let first = (r0 * g.sh) as i64 - g.pt as i64;
            let last = ((r0 + nr - 1) * g.sh + (g.kh - 1) * g.dh) as i64 - g.pt as i64;
            for iy in first.max(0)..=last.min(g.ih as i64 - 1) {
                let users = |kx: u64| -> Vec<(usize, u64)> {
                    (0..nr)
                        .filter_map(|r| {
                            let d = iy + g.pt as i64 - ((r0 + r) * g.sh) as i64;
                            (d >= 0 && (d as u64).is_multiple_of(g.dh) && (d as u64 / g.dh) < g.kh)
                                .then(|| (r as usize, (d as u64 / g.dh) * g.kw + kx))
                        })
                        .collect()
                };
                if users(0).is_empty() {
                    continue;
                }
                let rv = load_first(em, src, em.i64c(iy * g.iw as i64), l, g.iw as u32)?
                    .into_vector_value();
                for kx in 0..g.kw {
                    // Lane t reads input column t·sw + kx·dw − pl, or zero padding.
                    let shift = (kx * g.dw) as i64 - g.pl as i64;
                    let mask: Vec<IntValue> = (0..l as i64)
                        .map(|t| {
                            let col = t * g.sw as i64 + shift;
                            let lane = if (0..g.iw as i64).contains(&col) {
                                col as u64
                            } else {
                                l as u64
                            };
                            i32t.const_int(lane, false)
                        })
                        .collect();
                    let sv: V<'ctx> =
                        em.b.build_shuffle_vector(rv, zero, VectorType::const_vector(&mask), "")?
                            .into();
                    for (r, t) in users(kx) {
                        let wv = em.splat(wts[t as usize], l)?;
                        accs[r] = em.mul_add(wv, sv, accs[r])?;
                    }
                }
            }
            for (r, acc) in accs.into_iter().enumerate() {
                let v = finish(em, acc, bv, p.act)?;
                let at = em.addc(obase, ((r0 + r as u64) * g.ow) as i64)?;
                store_first(em, out, at, v, g.ow as u32)?;
            }
            r0 += nr;
        }
        Ok(())
    })
}
