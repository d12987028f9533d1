//! EViT-style token pruning of a fused (-O2) ViT: from one block on, the model keeps only the
//! patch tokens the class token attends to most, plus one token that fuses the rest.
//!
//! The selection depends on the image, but the shapes after the cut do not: every image keeps
//! exactly `k = ⌈R·N⌉` of its `N` patch tokens, so the blocks after the cut are ordinary
//! static-shape blocks over `k + 2` tokens and keep their specialised kernels. The pass inserts
//! the selection as plain IR ops that every backend already lowers (slice, reshape, mul,
//! reduce, softmax, comparisons, cast, matmul, concat), so it needs no new kernel.
//!
//! Where the cut goes, as in EViT (Liang et al., "Not All Patches are What You Need", ICLR
//! 2022): inside block `L` (0-based, counting `vit.attention` nodes in order), after its
//! attention and the residual add of its output projection, before its MLP. The scores are the
//! class token's row of block `L`'s own attention — softmax over all keys of
//! `scale·q_cls·Kᵀ`, averaged over heads, the class column dropped — so block `L`'s MLP and
//! every later block run on the reduced set. Kept tokens are ordered by score, highest first
//! (EViT's top-k order; attention is permutation-invariant over keys, so the order only moves
//! rounding). Ties go to the lower token index. The fused token is the attention-weighted mean
//! `Σ aᵢxᵢ / Σ aᵢ` over the dropped tokens; EViT's own `Σ aᵢxᵢ` assumes a model fine-tuned
//! with fusion, whereas a mean keeps the token on the scale of the others for a model that was
//! not.
//!
//! It assumes one class token at index 0 that the head reads (DeiT/ViT style); models with a
//! distillation token or mean pooling are not what it is for. It must not change the module
//! when nothing would be dropped (`k = N`, e.g. `R = 1`): then it returns the module as given.
//! Anything after the cut that depends on the token count (a reshape, a constant of the old
//! length) is an error naming the node, never a silent miscomputation.

use std::fmt;
use vitc_ir::{
    AttnLayout, BinaryOp, DType, Data, IrError, Module, Node, Op, ReduceOp, Tensor, TensorType,
    ValueId,
};

/// What to prune.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenOptions {
    /// Fraction `R` of patch tokens to keep, in (0, 1]; `⌈R·N⌉` are kept.
    pub keep: f64,
    /// The block (0-based) whose attention chooses the tokens; its MLP and all later blocks
    /// run on the kept ones.
    pub from_layer: usize,
}

/// Why the pass refused a module or an option.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("keep rate {0} is out of range: it must be in (0, 1]")]
    KeepOutOfRange(f64),
    #[error("block {layer} does not exist: the model has {blocks} attention block(s), numbered 0 to {last}", last = .blocks.saturating_sub(1))]
    LayerOutOfRange { layer: usize, blocks: usize },
    #[error(
        "the module has no vit.attention: token pruning works on the fused module (-O2), \
         where each block's attention is one vit.attention node"
    )]
    NoAttention,
    #[error("{op} {node}: {why}")]
    Unsupported {
        node: String,
        op: String,
        why: String,
    },
    #[error("after the cut to {tokens} tokens: {err}")]
    Retype { tokens: usize, err: IrError },
}

/// Tokens one block runs on: its attention, and its MLP (fewer in the block that cuts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockTokens {
    pub attention: usize,
    pub mlp: usize,
}

/// What the pass did, for the CLI to print.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenReport {
    pub keep: f64,
    pub from_layer: usize,
    /// Patch tokens `N` (the class token not counted).
    pub patch_tokens: usize,
    /// Patch tokens kept, `⌈R·N⌉`.
    pub kept: usize,
    /// Per block, before and after.
    pub before: Vec<BlockTokens>,
    pub after: Vec<BlockTokens>,
    pub flops_before: u64,
    pub flops_after: u64,
}

impl TokenReport {
    /// Whether the module was rewritten (false when every patch token is kept).
    pub fn changed(&self) -> bool {
        self.kept < self.patch_tokens
    }
}

fn mflops(f: u64) -> String {
    format!("{:.2} MFLOP", f as f64 / 1e6)
}

impl fmt::Display for TokenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.changed() {
            return writeln!(
                f,
                "token pruning: keep {} of {} patch tokens from block {}: nothing dropped, \
                 module unchanged",
                self.kept, self.patch_tokens, self.from_layer
            );
        }
        writeln!(
            f,
            "token pruning (EViT): from block {} keep {} of {} patch tokens (R = {}), fuse {} \
             into one",
            self.from_layer,
            self.kept,
            self.patch_tokens,
            self.keep,
            self.patch_tokens - self.kept
        )?;
        for (i, (b, a)) in self.before.iter().zip(&self.after).enumerate() {
            let side = |t: &BlockTokens| {
                if t.attention == t.mlp {
                    format!("{}", t.attention)
                } else {
                    format!("{} (attention) / {} (MLP)", t.attention, t.mlp)
                }
            };
            writeln!(f, "  block {i:>2}: tokens {} -> {}", side(b), side(a))?;
        }
        let pct = 100.0 * (1.0 - self.flops_after as f64 / self.flops_before.max(1) as f64);
        writeln!(
            f,
            "  FLOPs {} -> {} ({pct:.1}% fewer)",
            mflops(self.flops_before),
            mflops(self.flops_after)
        )
    }
}

/// Patch tokens kept out of `n` at rate `keep`: `⌈keep·n⌉`, at least 1. The product is nudged
/// down by far less than one token so that rates like 0.7·10 = 7.000000000000001 do not round
/// up to an extra token.
pub fn kept_tokens(keep: f64, n: usize) -> usize {
    let k = (keep * n as f64 - 1e-9).ceil();
    (k.max(1.0) as usize).min(n)
}

/// Check a keep rate: finite and in (0, 1].
pub fn check_keep(keep: f64) -> Result<(), TokenError> {
    if keep.is_finite() && keep > 0.0 && keep <= 1.0 {
        Ok(())
    } else {
        Err(TokenError::KeepOutOfRange(keep))
    }
}

/// The `vit.attention` nodes of a module, in block order.
pub fn attention_blocks(m: &Module) -> Vec<ValueId> {
    m.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Attention { .. }))
        .map(|(i, _)| ValueId(i))
        .collect()
}

/// Number of tokens (keys) of an attention node.
fn key_tokens(m: &Module, att: ValueId) -> usize {
    let n = m.node(att);
    let k = &m.ty(n.inputs[1]).shape;
    match n.op {
        Op::Attention { k_layout, .. } => match k_layout {
            AttnLayout::Bsd | AttnLayout::Bshd => k[1],
            AttnLayout::Bhsd => k[2],
            AttnLayout::Bhds => k[3],
        },
        _ => 0,
    }
}

/// Tokens per block as the module stands: every block's MLP runs on the tokens its attention
/// saw, except `cut` (block, tokens after the cut).
fn block_tokens(m: &Module, cut: Option<(usize, usize)>) -> Vec<BlockTokens> {
    attention_blocks(m)
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let t = key_tokens(m, a);
            BlockTokens {
                attention: t,
                mlp: match cut {
                    Some((b, after)) if b == i => after,
                    _ => t,
                },
            }
        })
        .collect()
}

/// Prune tokens of the fused module `m` as `opts` says. Returns the new module (verified) and
/// what changed. With nothing to drop it returns `m` itself, unchanged.
pub fn prune_tokens(m: &Module, opts: &TokenOptions) -> Result<(Module, TokenReport), TokenError> {
    check_keep(opts.keep)?;
    let atts = attention_blocks(m);
    if atts.is_empty() {
        return Err(TokenError::NoAttention);
    }
    let layer = opts.from_layer;
    let att = *atts.get(layer).ok_or(TokenError::LayerOutOfRange {
        layer,
        blocks: atts.len(),
    })?;
    let site = Site::find(m, att)?;
    let n_patch = site.s - 1;
    let k = kept_tokens(opts.keep, n_patch);
    let before = block_tokens(m, None);
    let mut report = TokenReport {
        keep: opts.keep,
        from_layer: layer,
        patch_tokens: n_patch,
        kept: k,
        before: before.clone(),
        after: before,
        flops_before: m.flops(),
        flops_after: m.flops(),
    };
    if k == n_patch {
        return Ok((m.clone(), report));
    }
    let out = rewrite(m, &site, k)?;
    report.after = block_tokens(&out, Some((layer, k + 2)));
    report.flops_after = out.flops();
    Ok((out, report))
}

/// The place of the cut: block `L`'s attention, its Q and K, and the residual stream after its
/// attention (the output projection with the residual add).
struct Site {
    att: ValueId,
    /// The projection whose output is the residual stream `X` after the attention.
    proj: ValueId,
    /// Tokens, including the class token.
    s: usize,
}

impl Site {
    fn find(m: &Module, att: ValueId) -> Result<Site, TokenError> {
        let n = m.node(att);
        let unsupported = |v: ValueId, why: String| TokenError::Unsupported {
            node: label(m.node(v), v),
            op: m.node(v).op.name(),
            why,
        };
        let Op::Attention {
            has_bias,
            has_mask,
            q_layout,
            k_layout,
            ..
        } = n.op
        else {
            unreachable!("attention_blocks returns attention nodes only")
        };
        if has_bias || has_mask {
            return Err(unsupported(
                att,
                "token pruning needs plain self-attention; this one has a bias or mask, which \
                 the class-token scores would have to repeat"
                    .into(),
            ));
        }
        // The scores are computed with f32 kernels, as the attention's own.
        for v in &n.inputs[..2] {
            if m.ty(*v).dtype != DType::F32 {
                return Err(unsupported(
                    att,
                    format!(
                        "token pruning scores f32 attention; Q/K here are {}",
                        m.ty(*v)
                    ),
                ));
            }
        }
        let s = key_tokens(m, att);
        let q = &m.ty(n.inputs[0]).shape;
        let sq = match q_layout {
            AttnLayout::Bsd | AttnLayout::Bshd => q[1],
            AttnLayout::Bhsd => q[2],
            AttnLayout::Bhds => q[3],
        };
        if sq != s || s < 3 {
            return Err(unsupported(
                att,
                format!(
                    "token pruning needs self-attention over a class token and at least 2 \
                     patch tokens; queries {sq}, keys {s} ({})",
                    k_layout.name()
                ),
            ));
        }
        let users: Vec<usize> = m
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, u)| u.inputs.contains(&att))
            .map(|(i, _)| i)
            .collect();
        let proj = match users.as_slice() {
            [p] if matches!(
                m.nodes[*p].op,
                Op::Linear {
                    has_residual: true,
                    ..
                }
            ) && m.nodes[*p].inputs[0] == att =>
            {
                ValueId(*p)
            }
            _ => {
                return Err(unsupported(
                    att,
                    "token pruning needs the fused block form: the attention's only user is \
                     its output projection with the residual add (vit.linear with residual)"
                        .into(),
                ))
            }
        };
        let x = m.ty(proj);
        if x.rank() != 3 || x.shape[1] != s || x.dtype != DType::F32 {
            return Err(unsupported(
                proj,
                format!("the residual stream after the attention is {x}, not [B, {s}, C] f32"),
            ));
        }
        if m.outputs.iter().any(|(_, v)| *v == proj) {
            return Err(unsupported(
                proj,
                "the token stream itself is a model output".into(),
            ));
        }
        Ok(Site { att, proj, s })
    }
}

fn label(n: &Node, v: ValueId) -> String {
    if n.name.is_empty() {
        v.to_string()
    } else {
        format!("{v} \"{}\"", n.name)
    }
}

/// Copy `m` node by node; after the projection of the cut block insert the selection and let
/// every later node see the reduced stream, re-typing them as they are added.
fn rewrite(m: &Module, site: &Site, k: usize) -> Result<Module, TokenError> {
    let mut out = Module::new(m.name.clone());
    out.constants = m.constants.clone();
    let mut remap: Vec<ValueId> = Vec::with_capacity(m.nodes.len());
    let retype = |err| TokenError::Retype { tokens: k + 2, err };
    for (i, n) in m.nodes.iter().enumerate() {
        let inputs: Vec<ValueId> = n.inputs.iter().map(|v| remap[v.0]).collect();
        let v = if i <= site.proj.0 || n.inputs.is_empty() {
            // Before the cut nothing changes, and inputs and constants keep their own types.
            out.push(Node {
                inputs,
                ..n.clone()
            })
        } else {
            out.add(n.op.clone(), inputs, n.name.clone())
                .map_err(retype)?
        };
        remap.push(if i == site.proj.0 {
            select(&mut out, m, site, k).map_err(retype)?
        } else {
            v
        });
    }
    out.inputs = m
        .inputs
        .iter()
        .map(|(s, v)| (s.clone(), remap[v.0]))
        .collect();
    out.outputs = m
        .outputs
        .iter()
        .map(|(s, v)| (s.clone(), remap[v.0]))
        .collect();
    for ((name, old), (_, new)) in m.outputs.iter().zip(&out.outputs) {
        if m.ty(*old) != out.ty(*new) {
            return Err(TokenError::Unsupported {
                node: name.clone(),
                op: "output".into(),
                why: format!(
                    "the model output would change from {} to {}: it depends on the token count",
                    m.ty(*old),
                    out.ty(*new)
                ),
            });
        }
    }
    vitc_ir::verify(&out).map_err(retype)?;
    Ok(out)
}

/// Emit the selection after `site.proj` (already in `out` at the same index as in `m`) and
/// return the reduced stream `[B, k + 2, C]`: class token, `k` kept tokens, fused token.
fn select(out: &mut Module, m: &Module, site: &Site, k: usize) -> Result<ValueId, IrError> {
    let an = m.node(site.att);
    let Op::Attention {
        heads,
        scale,
        q_layout,
        k_layout,
        ..
    } = an.op
    else {
        unreachable!("the site is an attention node")
    };
    // Nodes before the cut kept their indices, so Q, K and X are the same values in `out`.
    let (q, kv, x) = (an.inputs[0], an.inputs[1], site.proj);
    let name = format!("{}/token_select", an.name);
    let nm = |s: &str| format!("{name}/{s}");
    let s = site.s;
    let np = s - 1;
    let xt = out.ty(x).clone();
    let (b, c) = (xt.shape[0], xt.shape[2]);
    let qt = out.ty(q).shape.clone();
    let hd = match q_layout {
        AttnLayout::Bsd => qt[2],
        AttnLayout::Bshd => qt[2] * qt[3],
        AttnLayout::Bhsd => qt[1] * qt[3],
        AttnLayout::Bhds => qt[1] * qt[2],
    };
    let d = hd / heads;
    let full = |t: &[usize]| -> (Vec<i64>, Vec<i64>) {
        (vec![0; t.len()], t.iter().map(|&v| v as i64).collect())
    };
    let slice = |out: &mut Module, v: ValueId, axis: usize, lo: usize, hi: usize, what: &str| {
        let (mut starts, mut ends) = full(&out.ty(v).shape);
        starts[axis] = lo as i64;
        ends[axis] = hi as i64;
        let steps = vec![1; starts.len()];
        out.add(
            Op::Slice {
                starts,
                ends,
                steps,
            },
            vec![v],
            nm(what),
        )
    };
    let reshape = |out: &mut Module, v: ValueId, shape: Vec<usize>, what: &str| {
        out.add(Op::Reshape { shape }, vec![v], nm(what))
    };
    let bin = |out: &mut Module, op: BinaryOp, a: ValueId, bb: ValueId, what: &str| {
        out.add(Op::Binary(op), vec![a, bb], nm(what))
    };
    let reduce = |out: &mut Module, op: ReduceOp, v: ValueId, axis: usize, keep: bool, w: &str| {
        out.add(
            Op::Reduce {
                op,
                axes: vec![axis],
                keepdims: keep,
            },
            vec![v],
            nm(w),
        )
    };

    // The class token's query, one row per head: [B, 1, H, D] in (b, h, d) order, which is
    // also [B, H, 1, D] and [B, H, D, 1] (a unit dim moves freely).
    let q_axis = match q_layout {
        AttnLayout::Bsd | AttnLayout::Bshd => 1,
        AttnLayout::Bhsd => 2,
        AttnLayout::Bhds => 3,
    };
    let q_cls = slice(out, q, q_axis, 0, 1, "q_cls")?;
    // Scores q·k for every key, in K's own layout (no copy of K): broadcast the class query
    // against K and sum over D. `sax` is the key axis and `hax` the head axis of the result.
    let (kk, qb, dax, sax, hax) = match k_layout {
        AttnLayout::Bsd => (
            reshape(out, kv, vec![b, s, heads, d], "k_heads")?,
            reshape(out, q_cls, vec![b, 1, heads, d], "q_heads")?,
            3,
            1,
            2,
        ),
        AttnLayout::Bshd => (
            kv,
            reshape(out, q_cls, vec![b, 1, heads, d], "q_heads")?,
            3,
            1,
            2,
        ),
        AttnLayout::Bhsd => (
            kv,
            reshape(out, q_cls, vec![b, heads, 1, d], "q_heads")?,
            3,
            2,
            1,
        ),
        AttnLayout::Bhds => (
            kv,
            reshape(out, q_cls, vec![b, heads, d, 1], "q_heads")?,
            2,
            3,
            1,
        ),
    };
    let prod = bin(out, BinaryOp::Mul, kk, qb, "qk")?;
    let mut logits = reduce(out, ReduceOp::Sum, prod, dax, false, "logits")?;
    if scale != 1.0 {
        let sc = out.add_constant(&nm("scale"), Tensor::scalar_f32(scale));
        logits = bin(out, BinaryOp::Mul, logits, sc, "scaled")?;
    }
    let sax = if dax < sax { sax - 1 } else { sax };
    let hax = if dax < hax { hax - 1 } else { hax };
    let probs = out.add(Op::Softmax { axis: sax }, vec![logits], nm("softmax"))?;
    let cls_attn = reduce(out, ReduceOp::Mean, probs, hax, false, "head_mean")?; // [B, S]
    let a = slice(out, cls_attn, 1, 1, s, "patch_attn")?; // [B, N]

    // rank_i = #{j : a_j > a_i} + #{j < i : a_j = a_i}: a permutation of 0..N, so each of the
    // top k ranks picks exactly one token whatever the ties.
    let ai = reshape(out, a, vec![b, np, 1], "a_i")?;
    let aj = reshape(out, a, vec![b, 1, np], "a_j")?;
    let gt = bin(out, BinaryOp::Greater, aj, ai, "higher")?;
    let eq = bin(out, BinaryOp::Equal, aj, ai, "tied")?;
    let before = Tensor::new(
        vec![np, np],
        Data::Bool((0..np * np).map(|e| e % np < e / np).collect()),
    );
    let before = out.add_constant(&nm("earlier"), before);
    let tie = bin(out, BinaryOp::And, eq, before, "tie_earlier")?;
    let ahead = bin(out, BinaryOp::Or, gt, tie, "ahead")?;
    let ahead = out.add(Op::Cast { to: DType::F32 }, vec![ahead], nm("ahead_count"))?;
    let rank = reduce(out, ReduceOp::Sum, ahead, 2, true, "rank")?; // [B, N, 1]
    let rank = reshape(out, rank, vec![b, 1, np], "rank_row")?;

    // Row r < k of the selection picks the token of rank r; row k holds the normalised
    // attention of the dropped ones (rank >= k), so one product gives kept and fused tokens.
    let iota = Tensor::f32(vec![k, 1], (0..k).map(|r| r as f32).collect());
    let iota = out.add_constant(&nm("ranks"), iota);
    let onehot = bin(out, BinaryOp::Equal, rank, iota, "one_hot")?;
    let onehot = out.add(Op::Cast { to: DType::F32 }, vec![onehot], nm("one_hot_f32"))?;
    let cut = out.add_constant(&nm("cut"), Tensor::scalar_f32(k as f32 - 0.5));
    let dropped = bin(out, BinaryOp::Greater, rank, cut, "dropped")?;
    let dropped = out.add(
        Op::Cast { to: DType::F32 },
        vec![dropped],
        nm("dropped_f32"),
    )?;
    let a_row = reshape(out, a, vec![b, 1, np], "a_row")?;
    let w = bin(out, BinaryOp::Mul, dropped, a_row, "fuse_w")?;
    let wsum = reduce(out, ReduceOp::Sum, w, 2, true, "fuse_sum")?;
    // Softmax underflow can leave every dropped weight 0; the fused token is then 0, not NaN.
    let tiny = out.add_constant(&nm("tiny"), Tensor::scalar_f32(f32::MIN_POSITIVE));
    let wsum = bin(out, BinaryOp::Max, wsum, tiny, "fuse_sum_pos")?;
    let wn = bin(out, BinaryOp::Div, w, wsum, "fuse_weights")?;
    let sel = out.add(Op::Concat { axis: 1 }, vec![onehot, wn], nm("selection"))?; // [B, k+1, N]
    let patches = slice(out, x, 1, 1, s, "patches")?; // [B, N, C]
    let chosen = out.add(Op::MatMul, vec![sel, patches], nm("gather"))?; // [B, k+1, C]
    let cls = slice(out, x, 1, 0, 1, "cls")?;
    let y = out.add(Op::Concat { axis: 1 }, vec![cls, chosen], nm("tokens"))?;
    debug_assert_eq!(out.ty(y), &TensorType::new(vec![b, k + 2, c], DType::F32));
    Ok(y)
}
