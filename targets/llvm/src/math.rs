//! Scalar math as polynomial and rational approximations in LLVM IR, so the generated code calls
//! nothing outside itself (no libm, no libc): exp, log, erf, tanh, sigmoid, pow and the exact
//! (erf) GELU, for f32 and for `<N x float>` vectors.
//!
//! Each function is built once per module and width as a private, always-inlined function
//! (`vitc_exp_f32`, `vitc_exp_v8f32`, …) and reused; after inlining, loops that call the scalar
//! form vectorise like any other code. Only intrinsics that lower to instructions on x86-64
//! (AVX2/AVX-512) and aarch64 are used — never llvm.exp/log/pow/erf/tanh, which become libm
//! calls. Accuracy (measured by the tests below against f64 references): exp and log within
//! about 1 ulp, tanh and sigmoid within 2e-7 relative, erf within 1e-7 absolute. GELU, which
//! runs in the epilogue of every MLP's first product, trades erf's last bits for speed: one
//! rational function (13 FMAs and a division instead of three polynomial pieces), its erf within
//! 5e-7 absolute, so GELU within 3e-7·max(1, |x|).

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::module::Linkage;
use inkwell::types::{BasicMetadataTypeEnum, BasicType};
use inkwell::values::{FunctionValue, InstructionOpcode};
use inkwell::FloatPredicate;

use crate::kernels::emit::{Elt, Em, R, V};

/// Polynomial in `t` with coefficients highest degree first, by Horner's rule.
fn horner<'ctx>(em: &Em<'_, 'ctx>, coeffs: &[f64], t: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(t);
    let mut acc = em.cf(coeffs[0], w);
    for &c in &coeffs[1..] {
        acc = em.mul_add(acc, t, em.cf(c, w))?;
    }
    Ok(acc)
}

/// The function `vitc_{base}_{f32|vNf32}` taking `args` values of `x`'s width, built by `body`
/// on first use, then called on `args`.
fn call_math<'ctx>(
    em: &Em<'_, 'ctx>,
    base: &str,
    args: &[V<'ctx>],
    body: fn(&Em<'_, 'ctx>, &[V<'ctx>]) -> R<V<'ctx>>,
) -> R<V<'ctx>> {
    let w = Em::width(args[0]);
    let f = math_fn(em, base, w, args.len(), body)?;
    em.call(f, args)
}

fn math_fn<'ctx>(
    em: &Em<'_, 'ctx>,
    base: &str,
    w: u32,
    nargs: usize,
    body: fn(&Em<'_, 'ctx>, &[V<'ctx>]) -> R<V<'ctx>>,
) -> R<FunctionValue<'ctx>> {
    let name = if w <= 1 {
        format!("vitc_{base}_f32")
    } else {
        format!("vitc_{base}_v{w}f32")
    };
    if let Some(f) = em.module.get_function(&name) {
        return Ok(f);
    }
    let t = em.ty(Elt::F32, w);
    let params: Vec<BasicMetadataTypeEnum> = vec![t.into(); nargs];
    let f = em
        .module
        .add_function(&name, t.fn_type(&params, false), Some(Linkage::Private));
    for attr in ["alwaysinline", "nounwind", "willreturn", "nofree", "nosync"] {
        let kind = Attribute::get_named_enum_kind_id(attr);
        f.add_attribute(
            AttributeLoc::Function,
            em.ctx.create_enum_attribute(kind, 0),
        );
    }
    // Same subtarget as the caller, so the inliner never refuses on feature mismatch.
    for key in ["target-cpu", "target-features"] {
        let a = em.func.get_string_attribute(AttributeLoc::Function, key);
        if let Some(a) = a {
            f.add_attribute(AttributeLoc::Function, a);
        }
    }
    let builder = em.ctx.create_builder();
    let sub = em.with(&builder, f);
    let entry = em.ctx.append_basic_block(f, "entry");
    builder.position_at_end(entry);
    let args: Vec<V<'ctx>> = f.get_param_iter().collect();
    let r = body(&sub, &args)?;
    builder.build_return(Some(&r))?;
    Ok(f)
}

/// `v` when `c`, else `x` — for clamps that must keep NaN (minnum would replace it).
fn clamp_keep_nan<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>, lo: f64, hi: f64) -> R<V<'ctx>> {
    let w = Em::width(x);
    let c = em.fcmp(FloatPredicate::OLT, x, em.cf(lo, w))?;
    let x = em.select(c, em.cf(lo, w), x)?;
    let c = em.fcmp(FloatPredicate::OGT, x, em.cf(hi, w))?;
    em.select(c, em.cf(hi, w), x)
}

/// 2^n for integer lanes `n` in [-126, 127], from the exponent bits.
fn exp2i<'ctx>(em: &Em<'_, 'ctx>, n: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(n);
    let b = em.iadd(n, em.ci(Elt::I32, 127, w))?;
    let b = em.bin(InstructionOpcode::Shl, b, em.ci(Elt::I32, 23, w))?;
    em.cast(InstructionOpcode::BitCast, b, Elt::F32)
}

fn exp_body<'ctx>(em: &Em<'_, 'ctx>, a: &[V<'ctx>]) -> R<V<'ctx>> {
    // Cephes expf: x = n·ln2 + r with ln2 split (Cody–Waite) so n·C1 is exact, exp(r) by a
    // degree-7 polynomial on |r| <= ln2/2, then the result scaled by 2^n in two halves so that
    // results down to the subnormals and up to overflow come out right.
    let w = Em::width(a[0]);
    let c = |v: f64| em.cf(v, w);
    let x = clamp_keep_nan(em, a[0], -104.0, 89.0)?;
    let n = em.fmul(x, c(std::f64::consts::LOG2_E))?;
    let n = em.intr("llvm.roundeven", &[n])?;
    let r = em.mul_add(n, c(-0.693359375), x)?;
    let r = em.mul_add(n, c(2.12194440e-4), r)?;
    let z = em.fmul(r, r)?;
    let p = horner(
        em,
        &[
            1.9875691500e-4,
            1.3981999507e-3,
            8.3334519073e-3,
            4.1665795894e-2,
            1.6666665459e-1,
            5.0000001201e-1,
        ],
        r,
    )?;
    let y = em.mul_add(p, z, r)?;
    let y = em.fadd(y, c(1.0))?;
    // NaN lanes convert through 0 (fptosi of NaN is poison); y is already NaN there.
    let nan = em.fcmp(FloatPredicate::UNO, n, n)?;
    let n = em.select(nan, c(0.0), n)?;
    let ni = em.cast(InstructionOpcode::FPToSI, n, Elt::I32)?;
    let n1 = em.bin(InstructionOpcode::AShr, ni, em.ci(Elt::I32, 1, w))?;
    let n2 = em.isub(ni, n1)?;
    let y = em.fmul(y, exp2i(em, n1)?)?;
    em.fmul(y, exp2i(em, n2)?)
}

/// e^x.
pub(crate) fn exp<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    call_math(em, "exp", &[x], exp_body)
}

fn exp_neg_body<'ctx>(em: &Em<'_, 'ctx>, a: &[V<'ctx>]) -> R<V<'ctx>> {
    // As exp, with the cheaper range reduction softmax can afford: n comes out of adding
    // 1.5·2²³ (the rounding of that add is the round to nearest), 2^n is built from the same
    // bits, and results below 2^-126 are 0. No conversion instruction, no second scaling, and
    // no select for NaN: a NaN x stays NaN through the polynomial.
    let w = Em::width(a[0]);
    let c = |v: f64| em.cf(v, w);
    let x = a[0];
    const SHIFT: f64 = 12582912.0;
    let low = em.fcmp(FloatPredicate::OLT, x, c(-87.33))?;
    let xc = em.select(low, c(-87.33), x)?;
    let t = em.mul_add(xc, c(std::f64::consts::LOG2_E), c(SHIFT))?;
    let n = em.fsub(t, c(SHIFT))?;
    let r = em.mul_add(n, c(-0.693359375), xc)?;
    let r = em.mul_add(n, c(2.12194440e-4), r)?;
    let z = em.fmul(r, r)?;
    let p = horner(
        em,
        &[
            1.9875691500e-4,
            1.3981999507e-3,
            8.3334519073e-3,
            4.1665795894e-2,
            1.6666665459e-1,
            5.0000001201e-1,
        ],
        r,
    )?;
    let y = em.fadd(em.mul_add(p, z, r)?, c(1.0))?;
    // t's low mantissa bits hold n + 2²² + 2²³·…; shifted into the exponent field and rebased
    // they are 2^n (n in [-126, 0]).
    let tb = em.cast(InstructionOpcode::BitCast, t, Elt::I32)?;
    let sb = (SHIFT as f32).to_bits() as i64;
    let k = ((127i64 << 23) - (sb << 23)) as i32 as i64;
    let e = em.iadd(
        em.bin(InstructionOpcode::Shl, tb, em.ci(Elt::I32, 23, w))?,
        em.ci(Elt::I32, k, w),
    )?;
    let y = em.fmul(y, em.cast(InstructionOpcode::BitCast, e, Elt::F32)?)?;
    em.select(low, c(0.0), y)
}

/// e^x for x <= 0 (or NaN), as softmax needs it: within exp's accuracy down to e^-87.33, and 0
/// below (where exp gives subnormals).
pub(crate) fn exp_neg<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    call_math(em, "exp_neg", &[x], exp_neg_body)
}

fn log_body<'ctx>(em: &Em<'_, 'ctx>, a: &[V<'ctx>]) -> R<V<'ctx>> {
    // Cephes logf: x = m·2^e with m in [√½, √2), log(1 + (m-1)) by a degree-9 polynomial, e·ln2
    // added in two parts. Subnormals are scaled into the normal range first.
    let x = a[0];
    let w = Em::width(x);
    let c = |v: f64| em.cf(v, w);
    let i = |v: i64| em.ci(Elt::I32, v, w);
    let sub = em.fcmp(FloatPredicate::OLT, x, c(1.17549435e-38))?;
    let xs = em.select(sub, em.fmul(x, c(8388608.0))?, x)?;
    let bits = em.cast(InstructionOpcode::BitCast, xs, Elt::I32)?;
    let ex = em.bin(InstructionOpcode::LShr, bits, i(23))?;
    let ex = em.and(ex, i(0xff))?;
    let ex = em.isub(ex, em.select(sub, i(126 + 23), i(126))?)?;
    let mb = em.or(em.and(bits, i(0x7f_ffff))?, i(0x3f00_0000))?;
    let m = em.cast(InstructionOpcode::BitCast, mb, Elt::F32)?;
    let small = em.fcmp(FloatPredicate::OLT, m, c(std::f64::consts::FRAC_1_SQRT_2))?;
    let ex = em.isub(ex, em.cast(InstructionOpcode::ZExt, small, Elt::I32)?)?;
    let m = em.select(small, em.fadd(m, m)?, m)?;
    let m = em.fsub(m, c(1.0))?;
    let e = em.cast(InstructionOpcode::SIToFP, ex, Elt::F32)?;
    let z = em.fmul(m, m)?;
    let p = horner(
        em,
        &[
            7.0376836292e-2,
            -1.1514610310e-1,
            1.1676998740e-1,
            -1.2420140846e-1,
            1.4249322787e-1,
            -1.6668057665e-1,
            2.0000714765e-1,
            -2.4999993993e-1,
            3.3333331174e-1,
        ],
        m,
    )?;
    let y = em.fmul(em.fmul(p, m)?, z)?;
    let y = em.mul_add(e, c(-2.12194440e-4), y)?;
    let y = em.mul_add(z, c(-0.5), y)?;
    let r = em.fadd(m, y)?;
    let r = em.mul_add(e, c(0.693359375), r)?;
    // Special values: log(+inf) = +inf, log(0) = -inf, log(<0) = NaN, NaN stays NaN.
    let is_inf = em.fcmp(FloatPredicate::OEQ, x, c(f64::INFINITY))?;
    let r = em.select(is_inf, x, r)?;
    let is_zero = em.fcmp(FloatPredicate::OEQ, x, c(0.0))?;
    let r = em.select(is_zero, c(f64::NEG_INFINITY), r)?;
    let bad = em.fcmp(FloatPredicate::ULT, x, c(0.0))?;
    em.select(bad, c(f64::NAN), r)
}

/// Natural logarithm.
pub(crate) fn log<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    call_math(em, "log", &[x], log_body)
}

/// erf(x)/x - 1 as a polynomial in x² on |x| <= 1 (Lawson-weighted least squares fit).
const ERF_SMALL: [f64; 7] = [
    7.647132139677505e-05,
    -0.0007942361140292163,
    0.00517975017846471,
    -0.026848591716750084,
    0.11283430131438023,
    -0.3761260598703934,
    0.12837915841135977,
];

/// erf(x) on 1 <= x <= 2.2 as a polynomial in u = (x - 1.6)/0.6 (highest degree first).
const ERF_MID: [f64; 10] = [
    1.3429305603297007e-05,
    -1.921271054198012e-05,
    -0.00016719824538868433,
    0.000725767842883799,
    -0.00034127745200518677,
    -0.006392158532384661,
    0.02587580154773565,
    -0.050243801156775035,
    0.05233742522035223,
    0.9763483807013875,
];

/// erf(x) on 2.2 <= x <= 3.92 as a polynomial in u = (x - 3.06)/0.86; beyond, erf is 1 in f32.
const ERF_TAIL: [f64; 10] = [
    5.363759848256225e-07,
    -3.0565417167859274e-05,
    0.0001195741535897613,
    -0.00024406849850868955,
    0.0003636965433255397,
    -0.0004223490259246803,
    0.0003643812569970071,
    -0.00021938625002344614,
    8.322001371409958e-05,
    0.9999849244354124,
];

fn erf_body<'ctx>(em: &Em<'_, 'ctx>, args: &[V<'ctx>]) -> R<V<'ctx>> {
    // Three polynomial pieces, no exp: x·(1 + P(x²)) up to 1, then erf itself on [1, 2.2] and
    // [2.2, 3.92] (all lanes evaluate all pieces; selects pick one).
    let x = args[0];
    let w = Em::width(x);
    let c = |v: f64| em.cf(v, w);
    let a = em.intr("llvm.fabs", &[x])?;
    let t = em.fmul(a, a)?;
    let ya = em.mul_add(a, horner(em, &ERF_SMALL, t)?, a)?;
    let piece = |coeffs: &[f64], ctr: f64, half: f64| -> R<V<'ctx>> {
        let u = em.fmul(em.fsub(a, c(ctr))?, c(1.0 / half))?;
        horner(em, coeffs, u)
    };
    let ym = piece(&ERF_MID, 1.6, 0.6)?;
    let yt = piece(&ERF_TAIL, 3.06, 0.86)?;
    let far = em.fcmp(FloatPredicate::OGE, a, c(3.92))?;
    let yt = em.select(far, c(1.0), yt)?;
    let mid = em.fcmp(FloatPredicate::OLE, a, c(2.2))?;
    let yb = em.select(mid, ym, yt)?;
    let near = em.fcmp(FloatPredicate::OLE, a, c(1.0))?;
    let y = em.select(near, ya, yb)?;
    em.intr("llvm.copysign", &[y, x])
}

/// The error function.
pub(crate) fn erf<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    call_math(em, "erf", &[x], erf_body)
}

/// erf(t) ≈ t·P(t²)/Q(t²) on |t| <= 4 (beyond, erf is ±1 within 2e-8): the rational form of
/// Eigen and XLA's f32 erf, numerator highest degree first.
const ERF_RAT_P: [f64; 7] = [
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
];
const ERF_RAT_Q: [f64; 5] = [
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
];

fn gelu_body<'ctx>(em: &Em<'_, 'ctx>, args: &[V<'ctx>]) -> R<V<'ctx>> {
    let x = args[0];
    let w = Em::width(x);
    let c = |v: f64| em.cf(v, w);
    let t = em.fmul(x, c(std::f64::consts::FRAC_1_SQRT_2))?;
    // Clamp to [-4, 4] as compare-and-select pairs, which x86 turns into one min and one max.
    // A NaN x leaves a NaN through the factor x below whatever the clamp makes of it.
    let t = em.select(em.fcmp(FloatPredicate::OLT, t, c(4.0))?, t, c(4.0))?;
    let t = em.select(em.fcmp(FloatPredicate::OGT, t, c(-4.0))?, t, c(-4.0))?;
    let t2 = em.fmul(t, t)?;
    let p = em.fmul(t, horner(em, &ERF_RAT_P, t2)?)?;
    let q = horner(em, &ERF_RAT_Q, t2)?;
    let e = em.fdiv(p, q)?;
    em.fmul(em.fmul(c(0.5), x)?, em.fadd(c(1.0), e)?)
}

/// GELU with the exact (erf) form, x·Φ(x) = ½·x·(1 + erf(x/√2)).
pub(crate) fn gelu<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    call_math(em, "gelu", &[x], gelu_body)
}

/// (tanh(x)/x - 1)/x² as a polynomial in x² on |x| <= 0.9.
const TANH_SMALL: [f64; 8] = [
    0.00015914955680219396,
    -0.0009674639159948098,
    0.003250086115049001,
    -0.008715663775814023,
    0.021831228470455006,
    -0.05396266735891803,
    0.1333329342328376,
    -0.33333332350557,
];

fn tanh_body<'ctx>(em: &Em<'_, 'ctx>, args: &[V<'ctx>]) -> R<V<'ctx>> {
    // x + x³·P(x²) near 0 (no cancellation), 1 - 2/(e^{2|x|} + 1) beyond 0.9.
    let x = args[0];
    let w = Em::width(x);
    let c = |v: f64| em.cf(v, w);
    let a = em.intr("llvm.fabs", &[x])?;
    let t = em.fmul(a, a)?;
    let ya = em.mul_add(em.fmul(a, t)?, horner(em, &TANH_SMALL, t)?, a)?;
    let a2 = clamp_keep_nan(em, a, 0.0, 20.0)?;
    let e = exp(em, em.fadd(a2, a2)?)?;
    let yb = em.fsub(c(1.0), em.fdiv(c(2.0), em.fadd(e, c(1.0))?)?)?;
    let near = em.fcmp(FloatPredicate::OLE, a, c(0.9))?;
    let y = em.select(near, ya, yb)?;
    em.intr("llvm.copysign", &[y, x])
}

/// Hyperbolic tangent.
pub(crate) fn tanh<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    call_math(em, "tanh", &[x], tanh_body)
}

fn sigmoid_body<'ctx>(em: &Em<'_, 'ctx>, args: &[V<'ctx>]) -> R<V<'ctx>> {
    // Only e^{-|x|} is ever computed, so nothing overflows; the two forms are the interpreter's.
    let x = args[0];
    let w = Em::width(x);
    let c = |v: f64| em.cf(v, w);
    let a = em.intr("llvm.fabs", &[x])?;
    let e = exp(em, em.fneg(a)?)?;
    let d = em.fadd(c(1.0), e)?;
    // 1/d for x >= 0, e/d below: one division with the numerator picked first.
    let ge = em.fcmp(FloatPredicate::OGE, x, c(0.0))?;
    em.fdiv(em.select(ge, c(1.0), e)?, d)
}

/// 1 / (1 + e^{-x}), stable for large |x|.
pub(crate) fn sigmoid<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    call_math(em, "sigmoid", &[x], sigmoid_body)
}

fn pow_body<'ctx>(em: &Em<'_, 'ctx>, args: &[V<'ctx>]) -> R<V<'ctx>> {
    let (x, y) = (args[0], args[1]);
    let w = Em::width(x);
    let c = |v: f64| em.cf(v, w);
    let a = em.intr("llvm.fabs", &[x])?;
    let l = log(em, a)?;
    let t = em.fmul(y, l)?;
    let mut r = exp(em, t)?;
    if em.fma {
        // The rounding of y·log|x| is amplified by exp; add it back to first order.
        let lo = em.intr("llvm.fma", &[y, l, em.fneg(t)?])?;
        let fin = em.fcmp(FloatPredicate::ONE, t, c(f64::INFINITY))?;
        let corr = em.mul_add(r, lo, r)?;
        r = em.select(fin, corr, r)?;
        let nan = em.fcmp(FloatPredicate::UNO, r, r)?;
        r = em.select(nan, exp(em, t)?, r)?;
    }
    // Negative bases: integer exponents give ±|x|^y (odd ones negative), others NaN.
    let fl = em.intr("llvm.floor", &[y])?;
    let is_int = em.fcmp(FloatPredicate::OEQ, fl, y)?;
    let half = em.fmul(y, c(0.5))?;
    let odd = em.fcmp(FloatPredicate::ONE, em.intr("llvm.floor", &[half])?, half)?;
    let odd = em.and(odd, is_int)?;
    let neg = em.fcmp(FloatPredicate::OLT, x, c(0.0))?;
    let signed = em.select(odd, em.fneg(r)?, r)?;
    let negr = em.select(is_int, signed, c(f64::NAN))?;
    let r = em.select(neg, negr, r)?;
    // -0 to an odd power keeps its sign.
    let zero = em.fcmp(FloatPredicate::OEQ, x, c(0.0))?;
    let zr = em.intr("llvm.copysign", &[r, x])?;
    let r = em.select(em.and(zero, odd)?, zr, r)?;
    // pow(x, 0) = 1 and pow(1, y) = 1, even for NaN operands.
    let one = em.or(
        em.fcmp(FloatPredicate::OEQ, y, c(0.0))?,
        em.fcmp(FloatPredicate::OEQ, x, c(1.0))?,
    )?;
    let r = em.select(one, c(1.0), r)?;
    // The exponents onnxruntime special-cases (and the interpreter with it).
    let sq = em.fmul(x, x)?;
    let r = em.select(
        em.fcmp(FloatPredicate::OEQ, y, c(0.5))?,
        em.intr("llvm.sqrt", &[x])?,
        r,
    )?;
    let r = em.select(em.fcmp(FloatPredicate::OEQ, y, c(3.0))?, em.fmul(sq, x)?, r)?;
    em.select(em.fcmp(FloatPredicate::OEQ, y, c(2.0))?, sq, r)
}

/// x^y (ONNX Pow on floats).
pub(crate) fn pow<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>, y: V<'ctx>) -> R<V<'ctx>> {
    call_math(em, "pow", &[x, y], pow_body)
}

/// 1/√x, as the interpreter computes it (a correctly rounded root, then a division).
pub(crate) fn rsqrt<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    let s = em.intr("llvm.sqrt", &[x])?;
    em.fdiv(em.cf(1.0, Em::width(x)), s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::emit::R;
    use inkwell::context::Context;
    use inkwell::execution_engine::ExecutionEngine;
    use inkwell::targets::{InitializationConfig, Target, TargetMachine};
    use inkwell::OptimizationLevel;

    /// JIT `out[i] = which(x[i], y[i])`, `w` lanes at a time, compiled for the host CPU so the
    /// FMA paths are the ones exercised.
    fn jit<'ctx>(
        ctx: &'ctx Context,
        which: &str,
        w: u32,
    ) -> (inkwell::module::Module<'ctx>, ExecutionEngine<'ctx>) {
        Target::initialize_native(&InitializationConfig::default()).expect("native target");
        let module = ctx.create_module("math_test");
        let ptr = ctx.ptr_type(inkwell::AddressSpace::default());
        let i64t = ctx.i64_type();
        // void f(const float *x, const float *y, float *out, i64 n)
        let fty = ctx
            .void_type()
            .fn_type(&[ptr.into(), ptr.into(), ptr.into(), i64t.into()], false);
        let func = module.add_function("map", fty, None);
        let cpu = TargetMachine::get_host_cpu_name().to_string();
        let feats = TargetMachine::get_host_cpu_features().to_string();
        let builder = ctx.create_builder();
        let em = Em {
            ctx,
            module: &module,
            b: &builder,
            func,
            lanes: w.max(1),
            fma: true,
        };
        em.fn_attr("target-cpu", &cpu);
        em.fn_attr("target-features", &feats);
        let entry = ctx.append_basic_block(func, "entry");
        builder.position_at_end(entry);
        let p = |k: u32| func.get_nth_param(k).expect("param").into_pointer_value();
        let n = func.get_nth_param(3).expect("n").into_int_value();
        let body = || -> R<()> {
            em.for_range(em.i64c(0), n, w as u64, |i| {
                let x = em.ld_at(Elt::F32, w, p(0), i)?;
                let y = em.ld_at(Elt::F32, w, p(1), i)?;
                let r = match which {
                    "exp" => exp(&em, x)?,
                    "exp_neg" => exp_neg(&em, x)?,
                    "log" => log(&em, x)?,
                    "erf" => erf(&em, x)?,
                    "gelu" => gelu(&em, x)?,
                    "tanh" => tanh(&em, x)?,
                    "sigmoid" => sigmoid(&em, x)?,
                    "pow" => pow(&em, x, y)?,
                    "rsqrt" => rsqrt(&em, x)?,
                    _ => unreachable!("unknown function {which}"),
                };
                em.st_at(Elt::F32, p(2), i, r)
            })?;
            builder.build_return(None)?;
            Ok(())
        };
        body().expect("emit");
        module.verify().expect("valid module");
        let ee = module
            .create_jit_execution_engine(OptimizationLevel::Default)
            .expect("jit");
        (module, ee)
    }

    /// Evaluate `which` on `xs` (and `ys`) with vectors of `w` lanes (`xs.len()` a multiple).
    fn eval(which: &str, w: u32, xs: &[f32], ys: &[f32]) -> Vec<f32> {
        let ctx = Context::create();
        let (_m, ee) = jit(&ctx, which, w);
        let mut out = vec![0f32; xs.len()];
        type MapFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64);
        // SAFETY: the JIT function has exactly this signature and reads/writes `n` floats.
        unsafe {
            let f = ee.get_function::<MapFn>("map").expect("map fn");
            f.call(xs.as_ptr(), ys.as_ptr(), out.as_mut_ptr(), xs.len() as i64);
        }
        out
    }

    fn sweep(lo: f64, hi: f64, n: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n)
            .map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64) as f32)
            .collect();
        v.truncate(n / 16 * 16);
        v
    }

    /// max relative error (where |ref| > `floor`) and max absolute error.
    fn errs(got: &[f32], xs: &[f32], r: impl Fn(f64) -> f64, floor: f64) -> (f64, f64) {
        let (mut rel, mut abs) = (0f64, 0f64);
        for (&g, &x) in got.iter().zip(xs) {
            let want = r(x as f64);
            let e = (g as f64 - want).abs();
            abs = abs.max(e);
            if want.abs() > floor {
                rel = rel.max(e / want.abs());
            }
        }
        (rel, abs)
    }

    /// erf by its Taylor series (all terms positive after factoring e^{-x²}), in f64.
    fn erf64(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..400 {
            term *= 2.0 * x * x / (2 * n + 1) as f64;
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    fn check(which: &str, xs: &[f32], r: impl Fn(f64) -> f64, floor: f64, rel: f64, abs: f64) {
        let got = eval(which, 1, xs, xs);
        let (er, ea) = errs(&got, xs, &r, floor);
        eprintln!(
            "{which}: max rel {er:.3e}, max abs {ea:.3e} over {} points",
            xs.len()
        );
        assert!(er <= rel, "{which}: relative error {er:e} above {rel:e}");
        assert!(ea <= abs, "{which}: absolute error {ea:e} above {abs:e}");
        // The vector forms compute exactly what the scalar form does.
        for w in [4u32, 8, 16] {
            let gv = eval(which, w, xs, xs);
            for (i, (a, b)) in got.iter().zip(&gv).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{which} x{w} lane result differs at {}: {a} vs {b}",
                    xs[i]
                );
            }
        }
    }

    #[test]
    fn exp_is_accurate() {
        let xs = sweep(-87.0, 88.7, 200_000);
        check("exp", &xs, f64::exp, 1e-37, 2e-7, f64::INFINITY);
        let special = [
            f32::NEG_INFINITY,
            -200.0,
            -104.0,
            0.0,
            89.0,
            1000.0,
            f32::INFINITY,
            f32::NAN,
        ];
        let mut s = special.to_vec();
        s.resize(16, 0.0);
        let got = eval("exp", 1, &s, &s);
        assert_eq!(
            &got[..7],
            &[
                0.0,
                0.0,
                0.0,
                1.0,
                f32::INFINITY,
                f32::INFINITY,
                f32::INFINITY
            ]
        );
        assert!(got[7].is_nan());
        // Subnormal results keep their absolute accuracy.
        let xs = sweep(-103.0, -87.5, 4096);
        let got = eval("exp", 1, &xs, &xs);
        let (_, abs) = errs(&got, &xs, f64::exp, 0.0);
        assert!(abs < 2e-45, "subnormal exp error {abs:e}");
    }

    #[test]
    fn log_is_accurate() {
        let xs: Vec<f32> = sweep(-87.0, 88.0, 200_000)
            .iter()
            .map(|v| v.exp())
            .collect();
        check("log", &xs, f64::ln, 1e-3, 2e-7, 1e-5);
        let near1 = sweep(0.5, 2.0, 100_000);
        check("log", &near1, f64::ln, 1e-30, 2e-7, 1e-7);
        let mut s = vec![0.0, -1.0, f32::INFINITY, f32::NAN, 1e-40, 1.0];
        s.resize(16, 1.0);
        let got = eval("log", 1, &s, &s);
        assert_eq!(got[0], f32::NEG_INFINITY);
        assert!(got[1].is_nan() && got[3].is_nan());
        assert_eq!(got[2], f32::INFINITY);
        assert!((got[4] as f64 - (1e-40f32 as f64).ln()).abs() < 1e-5);
        assert_eq!(got[5], 0.0);
    }

    #[test]
    fn exp_neg_is_accurate() {
        let xs = sweep(-87.3, 0.0, 200_000);
        check("exp_neg", &xs, f64::exp, 1e-37, 2e-7, f64::INFINITY);
        let mut s = vec![f32::NAN, f32::NEG_INFINITY, -88.0, -1000.0, 0.0, -0.0];
        s.resize(16, 0.0);
        let got = eval("exp_neg", 1, &s, &s);
        assert!(got[0].is_nan());
        assert_eq!(&got[1..6], &[0.0, 0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn erf_is_accurate() {
        let xs = sweep(-6.0, 6.0, 200_000);
        check("erf", &xs, erf64, 1e-30, 3e-7, 1e-7);
        let mut s = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        s.resize(16, 0.0);
        let got = eval("erf", 1, &s, &s);
        assert!(got[0].is_nan());
        assert_eq!(&got[1..4], &[1.0, -1.0, 0.0]);
        assert!(got[4] == 0.0 && got[4].is_sign_negative());
    }

    #[test]
    fn gelu_is_accurate() {
        let gelu64 = |x: f64| 0.5 * x * (1.0 + erf64(x * std::f64::consts::FRAC_1_SQRT_2));
        let xs = sweep(-1.0, 1.0, 100_000);
        check("gelu", &xs, gelu64, f64::INFINITY, 0.0, 3e-7);
        let xs = sweep(-12.0, 12.0, 200_000);
        let got = eval("gelu", 1, &xs, &xs);
        for (&g, &x) in got.iter().zip(&xs) {
            let e = (g as f64 - gelu64(x as f64)).abs();
            assert!(
                e <= 3e-7 * (x.abs() as f64).max(1.0),
                "gelu({x}) = {g}: error {e:e}"
            );
        }
        let mut s = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -100.0];
        s.resize(16, 0.0);
        let got = eval("gelu", 1, &s, &s);
        assert!(got[0].is_nan());
        assert_eq!(got[1], f32::INFINITY);
        assert_eq!(got[3], 0.0);
        assert!(got[4].abs() < 1e-5);
    }

    #[test]
    fn tanh_is_accurate() {
        let xs = sweep(-12.0, 12.0, 200_000);
        check("tanh", &xs, f64::tanh, 1e-30, 2e-7, 2e-7);
        let tiny: Vec<f32> = sweep(-30.0, 0.0, 4096).iter().map(|v| v.exp()).collect();
        check("tanh", &tiny, f64::tanh, 0.0, 2e-7, 1e-7);
        let mut s = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 100.0];
        s.resize(16, 0.0);
        let got = eval("tanh", 1, &s, &s);
        assert!(got[0].is_nan());
        assert_eq!(&got[1..4], &[1.0, -1.0, 1.0]);
    }

    #[test]
    fn sigmoid_is_accurate() {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let xs = sweep(-80.0, 30.0, 200_000);
        check("sigmoid", &xs, sig, 1e-37, 2e-7, 1e-7);
        let mut s = vec![-200.0, -90.0, 90.0, 200.0, f32::NAN];
        s.resize(16, 0.0);
        let got = eval("sigmoid", 1, &s, &s);
        assert_eq!(got[0], 0.0);
        assert!(got[1] > 0.0 && got[1] < 1e-38);
        assert_eq!(&got[2..4], &[1.0, 1.0]);
        assert!(got[4].is_nan());
    }

    #[test]
    fn pow_matches_powf() {
        let mut xs = vec![];
        let mut ys = vec![];
        for i in 0..400 {
            for j in 0..40 {
                xs.push(0.01 + i as f32 * 0.05);
                ys.push(-4.0 + j as f32 * 0.21);
            }
        }
        let got = eval("pow", 1, &xs, &ys);
        let mut worst = 0f64;
        for k in 0..xs.len() {
            let want = (xs[k] as f64).powf(ys[k] as f64);
            if want.abs() > 1e-30 && want.is_finite() {
                worst = worst.max((got[k] as f64 - want).abs() / want.abs());
            }
        }
        eprintln!("pow: max rel {worst:.3e}");
        assert!(worst < 1e-6, "pow relative error {worst:e}");
        // Special exponents and negative bases.
        let xs = [
            3.0f32,
            -3.0,
            -2.0,
            -2.0,
            4.0,
            0.0,
            -0.0,
            0.0,
            f32::NAN,
            1.0,
            -8.0,
            2.0,
            5.0,
            7.0,
            9.0,
            1.5,
        ];
        let ys = [
            2.0f32,
            3.0,
            0.5,
            1.5,
            0.5,
            -1.0,
            3.0,
            0.0,
            0.0,
            f32::NAN,
            2.0,
            10.0,
            1.0,
            0.0,
            -2.0,
            3.0,
        ];
        let got = eval("pow", 1, &xs, &ys);
        for k in 0..16 {
            let want = if ys[k] == 2.0 {
                xs[k] * xs[k]
            } else if ys[k] == 3.0 {
                xs[k] * xs[k] * xs[k]
            } else if ys[k] == 0.5 {
                xs[k].sqrt()
            } else {
                xs[k].powf(ys[k])
            };
            let ok = (want.is_nan() && got[k].is_nan())
                || got[k] == want && got[k].is_sign_negative() == want.is_sign_negative()
                || (got[k] as f64 - want as f64).abs() <= 1e-6 * (want.abs() as f64).max(1e-30)
                    && got[k].is_sign_negative() == want.is_sign_negative();
            assert!(ok, "pow({}, {}) = {}, want {want}", xs[k], ys[k], got[k]);
        }
    }

    #[test]
    fn rsqrt_is_exactly_one_over_sqrt() {
        let xs = sweep(0.001, 1000.0, 4096);
        let got = eval("rsqrt", 1, &xs, &xs);
        for (g, x) in got.iter().zip(&xs) {
            assert_eq!(*g, 1.0 / x.sqrt());
        }
    }
}
