//! `vit.conv`: 2-D NCHW convolution with groups, strides, pads, dilations and bias.
//!
//! Four shapes of kernel, picked at compile time:
//! - depthwise (one input channel per group): the rows a task needs are copied into a
//!   zero-bordered plane in scratch, then each output vector sums its taps in registers;
//! - patchify (stride = kernel, no padding, one group: a ViT's patch embedding): each output
//!   pixel's patch is one row of a `[pixels, C·KH·KW]` matrix, gathered into scratch as runs of
//!   KW contiguous floats, times the weights transposed and packed at compile time as the
//!   GEMM's B panels; output channels run along the lanes and are stored to their planes;
//! - pointwise (1×1, stride 1, no padding): a GEMM of the weights with the input planes as
//!   they lie;
//! - everything else: im2col of the task's output rows into scratch, then the same GEMM.
//!
//! The pointwise and im2col forms keep output pixels along the vector lanes, so stores are
//! contiguous. Taps are summed in (channel, ky, kx) order and the bias added last, as the
//! interpreter does. Tasks split (image, group) pairs, or output rows of one pair when there are
//! few; patchify tasks take blocks of pixels × output channels.

use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;
use vitc_ir::{DType, Node, Op, TensorType};

use super::emit::{lane_pieces, nest, unsupported, want_tasks, Elt, Em, Operand, Split, R, V};
use super::gemm::{emit_gemm, gemm_tasks, tile_cols, tile_shape, BSrc, Gemm};

/// Spare floats after the depthwise plane: strided vector loads read up to 3 past their last
/// useful element.
const SLACK: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Depthwise,
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
}

fn plan(n: &Node, in_tys: &[&TensorType], lanes: u32) -> Option<Plan> {
    let Op::Conv {
        strides,
        pads,
        dilations,
        group,
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
    let kk = g.cg * g.kh * g.kw;
    let flops = 2 * g.n * g.m * g.oh * g.ow * kk;
    let want = want_tasks(flops, 64);
    if g.cg == 1 {
        let split = Split::new(g.n * g.m, g.oh, want, 1);
        let ph = (split.chunk.max(1) - 1) * g.sh + (g.kh - 1) * g.dh + 1;
        let pw = (g.ow.max(1) - 1) * g.sw + (g.kw - 1) * g.dw + 1;
        return Some(Plan {
            kind: Kind::Depthwise,
            geo: g,
            split,
            scratch: ph * pw + SLACK,
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
        });
    }
    // Row chunks wide enough (≥ 32 pixels) that the GEMM's columns fill whole vectors.
    let align = 32u64.div_ceil(g.ow.max(1));
    let split = Split::new(g.n * g.group, g.oh, want, align);
    let pointwise =
        g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && pads.iter().all(|&p| p == 0);
    if pointwise {
        return Some(Plan {
            kind: Kind::Pointwise,
            geo: g,
            split,
            scratch: 0,
        });
    }
    Some(Plan {
        kind: Kind::Im2col,
        geo: g,
        split,
        scratch: kk * split.chunk * g.ow,
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
        Kind::Patch => {
            let w_packed = packed.get(1).copied().unwrap_or(false);
            patchify(em, &p, ins[0], ins[1], w_packed, bias, out, scratch, task)
        }
        Kind::Pointwise | Kind::Im2col => {
            gemm_conv(em, &p, ins[0], ins[1], bias, out, scratch, task)
        }
    }
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

/// Copy `n` elements read every `stride` from `src` to consecutive `dst`.
fn copy<'ctx>(
    em: &Em<'_, 'ctx>,
    src: PointerValue<'ctx>,
    stride: i64,
    dst: PointerValue<'ctx>,
    n: u64,
) -> R<()> {
    if n == 0 {
        return Ok(());
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

#[allow(clippy::too_many_arguments)]
fn gemm_conv<'ctx>(
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
        let (bp, b_rs) = if p.kind == Kind::Pointwise {
            let off = em.add(xc, em.mulc(oy0, g.ow as i64)?)?;
            (em.gep(Elt::F32, x, off)?, plane)
        } else {
            im2col(em, &g, x, xc, oy0, rows, col)?;
            (col, ncols as i64)
        };
        let wbase = em.mulc(gi, (mg * kk) as i64)?;
        let obase = em.add(
            em.mulc(em.mad(em.mulc(b, g.m as i64)?, gi, mg as i64)?, oplane)?,
            em.mulc(oy0, g.ow as i64)?,
        )?;
        let a_at = |r: IntValue<'ctx>, pk: IntValue<'ctx>| em.add(em.mad(wbase, r, kk as i64)?, pk);
        let load_a = |r: IntValue<'ctx>, pk: IntValue<'ctx>| em.ld_at(Elt::F32, 1, w, a_at(r, pk)?);
        let load_a4 =
            |r: IntValue<'ctx>, pk: IntValue<'ctx>| em.ld_at(Elt::F32, 4, w, a_at(r, pk)?);
        let load_b = |pk: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32| -> R<V<'ctx>> {
            em.ld_at(Elt::F32, lw, bp, em.add(em.mulc(pk, b_rs)?, j)?)
        };
        let store = |r: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32, v: V<'ctx>| -> R<()> {
            let mut v = v;
            if let Some(bb) = bias {
                let ch = em.mad(em.mulc(gi, mg as i64)?, r, 1)?;
                v = em.fadd(v, em.splat(em.ld_at(Elt::F32, 1, bb, ch)?, lw)?)?;
            }
            em.st_at(Elt::F32, out, em.add(em.mad(obase, r, oplane)?, j)?, v)
        };
        emit_gemm(
            em,
            &Gemm {
                m: mg,
                n: ncols,
                k: kk,
                acc: Elt::F32,
                load_a: &load_a,
                load_a4: Some(&load_a4),
                b: BSrc::Load(&load_b),
                store: &store,
            },
        )
    })
}

/// The patchify form: `out[b, o, px] = Σ_k P[px, k]·Wᵀ[k, o] + bias[o]` with P the pixels'
/// patches (gathered into scratch, `rows × K`) and Wᵀ packed (or read strided from W).
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
    let mask = inkwell::types::VectorType::const_vector(&mask);
    Ok(em.b.build_shuffle_vector(wide, wide, mask, "")?.into())
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
    let taps = (g.kh * g.kw) as i64;
    let l = em.lanes as u64;
    // Vector lanes run along output columns when the input is read every 1..4 columns.
    let vec_ok = l > 1 && g.sw <= 4;
    p.split.emit(em, task, &|item, oy0, rows| {
        let b = em.udivc(item, g.m)?;
        let m = em.uremc(item, g.m)?;
        let c = em.udivc(m, mg)?;
        let src = em.gep(
            Elt::F32,
            x,
            em.mulc(em.mad(em.mulc(b, g.c as i64)?, c, 1)?, (g.ih * g.iw) as i64)?,
        )?;
        // The zero-bordered input rows this task reads: padded rows oy0·sh .. + ph.
        let ph = (rows - 1) * g.sh + (g.kh - 1) * g.dh + 1;
        let (lo, hi) = {
            let lo = g.pl.min(pw);
            (lo, (g.pl + g.iw).min(pw).max(lo))
        };
        em.for_n(ph, |py| {
            let d = em.gep(Elt::F32, scr, em.mulc(py, pw as i64)?)?;
            let iy = em.addc(em.add(em.mulc(oy0, g.sh as i64)?, py)?, -(g.pt as i64))?;
            let inside =
                em.b.build_int_compare(IntPredicate::ULT, iy, em.i64c(g.ih as i64), "")?;
            em.if_else(
                inside,
                || {
                    fill(em, d, lo)?;
                    let s = em.gep(
                        Elt::F32,
                        src,
                        em.addc(em.mulc(iy, g.iw as i64)?, lo as i64 - g.pl as i64)?,
                    )?;
                    copy(em, s, 1, em.gep(Elt::F32, d, em.i64c(lo as i64))?, hi - lo)?;
                    fill(em, em.gep(Elt::F32, d, em.i64c(hi as i64))?, pw - hi)
                },
                || fill(em, d, pw),
            )
        })?;
        let wm = em.mulc(m, taps)?;
        let bv = match bias {
            Some(bb) => Some(em.ld_at(Elt::F32, 1, bb, m)?),
            None => None,
        };
        let orow0 = em.mulc(em.add(em.mulc(item, g.oh as i64)?, oy0)?, g.ow as i64)?;
        em.for_n(rows, |oy| {
            let srow = em.mulc(oy, (g.sh * pw) as i64)?;
            let orow = em.mad(orow0, oy, g.ow as i64)?;
            let px = |ox: IntValue<'ctx>, lw: u32| -> R<()> {
                let acc = em.for_acc(
                    em.i64c(0),
                    em.i64c(g.kh as i64),
                    1,
                    &[em.zero(Elt::F32, lw)],
                    |ky, a| {
                        let r = em.mad(srow, ky, (g.dh * pw) as i64)?;
                        em.for_acc(em.i64c(0), em.i64c(g.kw as i64), 1, a, |kx, a| {
                            let wv = em.ld_at(
                                Elt::F32,
                                1,
                                w,
                                em.add(em.mad(wm, ky, g.kw as i64)?, kx)?,
                            )?;
                            let off = em.mad(em.mad(r, ox, g.sw as i64)?, kx, g.dw as i64)?;
                            let xv = strided_load(em, scr, off, g.sw, lw)?;
                            Ok(vec![em.mul_add(em.splat(wv, lw)?, xv, a[0])?])
                        })
                    },
                )?;
                let mut v = acc[0];
                if let Some(bb) = bv {
                    v = em.fadd(v, em.splat(bb, lw)?)?;
                }
                em.st_at(Elt::F32, out, em.add(orow, ox)?, v)
            };
            let pieces = if vec_ok {
                lane_pieces(g.ow, l)
            } else {
                vec![(0, g.ow, 1)]
            };
            for (a, z, lw) in pieces {
                em.for_range(em.i64c(a as i64), em.i64c(z as i64), lw as u64, |ox| {
                    px(ox, lw)
                })?;
            }
            Ok(())
        })
    })
}
