//! Row narrowing: compute only the rows of each tensor that the outputs read.
//!
//! A ViT classifier reads one token of its last block (`gather(layer_norm(x), 0)` before the
//! head), yet the exported graph runs the last block's attention output, projection, MLP and
//! norms over every token (and neither onnxruntime nor OpenVINO notices: they run the graph
//! as written). This pass (`vit-narrow-rows`, the last of -O2) walks the module backwards from its outputs and records, for each value, which
//! rows along one axis its users need. Ops that work row by row along that axis (elementwise
//! ops, norms over later axes, linears, softmax over another axis, the query side of
//! attention, reshapes and transposes that keep the axis) are then rebuilt on just those rows,
//! with a `vit.slice` (contiguous rows) or `vit.gather` where a narrowed op reads a full value.
//! Every narrowed op computes exactly the rows it computed before from exactly the same
//! inputs, so the numbers do not change. Ops it does not know stay as they are and ask for
//! their whole operands; the pass never widens anything.

use crate::pipeline::PassError as Error;
use std::collections::{BTreeSet, HashMap};
use vitc_ir::{AttnLayout, Module, Node, Op, Tensor, ValueId};

/// What a value's users read of it: everything, or some rows along one axis.
#[derive(Clone, Debug, PartialEq)]
enum Demand {
    Full,
    Rows { axis: usize, rows: BTreeSet<usize> },
}

/// The module with every value cut down to the rows its users read. Returns a copy of `m`
/// when nothing can be narrowed.
pub fn narrow_rows(m: &Module) -> Result<Module, Error> {
    let demand = demands(m);
    let narrowed: Vec<Option<(usize, Vec<usize>)>> = m
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match &demand[i] {
            Some(Demand::Rows { axis, rows })
                if source_rows(m, n).is_none() && row_rule(m, n, *axis).is_some() =>
            {
                Some((*axis, rows.iter().copied().collect()))
            }
            _ => None,
        })
        .collect();
    if narrowed.iter().all(Option::is_none) {
        return Ok(m.clone());
    }
    let mut e = Emit {
        m,
        out: Module::new(m.name.clone()),
        map: vec![None; m.nodes.len()],
        form: vec![None; m.nodes.len()],
        cache: HashMap::new(),
    };
    e.out.constants = m.constants.clone();
    for (i, n) in m.nodes.iter().enumerate() {
        if demand[i].is_none() && !matches!(n.op, Op::Input { .. }) {
            continue;
        }
        let v = match (&n.op, &narrowed[i]) {
            (Op::Input { .. } | Op::Constant { .. }, _) => e.out.push(n.clone()),
            (_, Some((axis, rows))) => e.narrowed_node(i, *axis, rows)?,
            _ if source_rows(m, n).is_some() => e.source_node(i)?,
            _ => {
                let ins = n
                    .inputs
                    .iter()
                    .map(|&u| e.full(u))
                    .collect::<Result<Vec<_>, _>>()?;
                e.add(n.op.clone(), ins, &n.name)?
            }
        };
        e.map[i] = Some(v);
        e.form[i] = narrowed[i].clone();
    }
    e.out.inputs = m
        .inputs
        .iter()
        .map(|(name, v)| Ok((name.clone(), e.full(*v)?)))
        .collect::<Result<_, Error>>()?;
    e.out.outputs = m
        .outputs
        .iter()
        .map(|(name, v)| Ok((name.clone(), e.full(*v)?)))
        .collect::<Result<_, Error>>()?;
    let mut out = e.out;
    out.dce();
    vitc_ir::verify(&out).map_err(|e| Error::Narrow {
        node: "the narrowed module".into(),
        msg: e.to_string(),
    })?;
    Ok(out)
}

/// Each value's demand, from the outputs back; `None` for values no output needs.
fn demands(m: &Module) -> Vec<Option<Demand>> {
    let mut d: Vec<Option<Demand>> = vec![None; m.nodes.len()];
    for (_, v) in &m.outputs {
        add_demand(m, &mut d, *v, Demand::Full);
    }
    for (i, n) in m.nodes.iter().enumerate().rev() {
        let Some(want) = d[i].clone() else {
            continue;
        };
        if let Some((axis, rows)) = source_rows(m, n) {
            // A gather or slice of rows reads only those rows of its data, whatever its own
            // users read of it (it is cheap, so it stays whole).
            add_demand(m, &mut d, n.inputs[0], Demand::Rows { axis, rows });
            for &u in &n.inputs[1..] {
                add_demand(m, &mut d, u, Demand::Full);
            }
            continue;
        }
        let rule = match &want {
            Demand::Rows { axis, rows } => row_rule(m, n, *axis).map(|r| (r, rows.clone())),
            Demand::Full => None,
        };
        match rule {
            Some((per_input, rows)) => {
                for (&u, ax) in n.inputs.iter().zip(per_input) {
                    let dm = match ax {
                        Some(axis) => Demand::Rows {
                            axis,
                            rows: rows.clone(),
                        },
                        None => Demand::Full,
                    };
                    add_demand(m, &mut d, u, dm);
                }
            }
            None => {
                for &u in &n.inputs {
                    add_demand(m, &mut d, u, Demand::Full);
                }
            }
        }
    }
    d
}

/// Merge one more user's demand into `v`'s: rows on the same axis unite, anything else (and
/// rows that cover the whole axis) is the whole value.
fn add_demand(m: &Module, d: &mut [Option<Demand>], v: ValueId, new: Demand) {
    let merged = match (d[v.0].take(), new) {
        (None, x) => x,
        (
            Some(Demand::Rows {
                axis: a,
                rows: mut r,
            }),
            Demand::Rows {
                axis: b,
                rows: more,
            },
        ) if a == b => {
            r.extend(more);
            Demand::Rows { axis: a, rows: r }
        }
        _ => Demand::Full,
    };
    let merged = match merged {
        Demand::Rows { axis, rows }
            if m.ty(v)
                .shape
                .get(axis)
                .is_some_and(|&n| rows.len() < n && rows.last().is_some_and(|&last| last < n)) =>
        {
            Demand::Rows { axis, rows }
        }
        _ => Demand::Full,
    };
    d[v.0] = Some(merged);
}

/// A gather with constant indices, or a slice along one axis with a positive step: the axis
/// and the rows of the data it reads.
fn source_rows(m: &Module, n: &Node) -> Option<(usize, BTreeSet<usize>)> {
    let data = &m.ty(*n.inputs.first()?).shape;
    match &n.op {
        Op::Gather { axis } => {
            let idx = m.constant(n.inputs[1])?;
            let dim = *data.get(*axis)? as i64;
            let rows = idx
                .to_i64_vec()
                .into_iter()
                .map(|i| {
                    let i = if i < 0 { i + dim } else { i };
                    (0..dim).contains(&i).then_some(i as usize)
                })
                .collect::<Option<BTreeSet<usize>>>()?;
            Some((*axis, rows))
        }
        Op::Slice {
            starts,
            ends,
            steps,
        } => {
            let mut cut = None;
            for (ax, &dim) in data.iter().enumerate() {
                let (s, e, st) = (starts[ax], ends[ax], steps[ax]);
                if s == 0 && e == dim as i64 && st == 1 {
                    continue;
                }
                if cut.is_some() || st <= 0 || s < 0 || e < s {
                    return None;
                }
                let rows = (s..e.min(dim as i64)).step_by(st as usize);
                cut = Some((ax, rows.map(|r| r as usize).collect()));
            }
            cut
        }
        _ => None,
    }
}

/// Whether `n` computes its rows along output axis `axis` from the same rows of some operands
/// (and all of the others): for each operand, the axis of those rows, or `None` where the
/// operand is read whole. `None` when the op does not work row by row along `axis`.
fn row_rule(m: &Module, n: &Node, axis: usize) -> Option<Vec<Option<usize>>> {
    let out = &n.ty.shape;
    if axis >= out.len() {
        return None;
    }
    // An operand broadcast against the result: it has the rows where its dim matches.
    let bcast = |u: ValueId| {
        let s = &m.ty(u).shape;
        let off = out.len().checked_sub(s.len())?;
        let a = axis.checked_sub(off)?;
        (s[a] == out[axis]).then_some(a)
    };
    let first_only = |k: usize| {
        let mut v = vec![None; n.inputs.len()];
        v[k] = Some(axis);
        v
    };
    match &n.op {
        Op::Unary(_) | Op::Gelu { .. } | Op::Cast { .. } | Op::Clip { .. } => {
            Some(vec![Some(axis)])
        }
        Op::Binary(_) | Op::Where => {
            if m.ty(n.inputs[0]).shape.len() > out.len() {
                return None;
            }
            Some(n.inputs.iter().map(|&u| bcast(u)).collect())
        }
        Op::LayerNorm { axis: la, .. } => (axis < *la).then(|| first_only(0)),
        Op::Linear {
            has_bias,
            has_residual,
            ..
        } => {
            if axis + 1 >= out.len() {
                return None;
            }
            let mut v = first_only(0);
            if *has_residual {
                let r = 2 + *has_bias as usize;
                v[r] = bcast(n.inputs[r]);
            }
            Some(v)
        }
        Op::QLinear { .. } => (axis + 1 < out.len()).then(|| first_only(0)),
        Op::Quantize { axis: qa, .. } | Op::Dequantize { axis: qa } => {
            (*qa != Some(axis)).then(|| first_only(0))
        }
        Op::Softmax { axis: sa } => (*sa != axis).then(|| vec![Some(axis)]),
        Op::Transpose { perm } => Some(vec![Some(*perm.get(axis)?)]),
        Op::Reshape { shape } => {
            // The rows survive a reshape when the dims before them hold the same number of
            // elements on both sides and the axis itself keeps its length.
            let src = &m.ty(n.inputs[0]).shape;
            let before: usize = shape[..axis].iter().product();
            let mut p = 1usize;
            for (a, &dim) in src.iter().enumerate() {
                if p == before && dim == shape[axis] {
                    return Some(vec![Some(a)]);
                }
                p = p.checked_mul(dim)?;
            }
            None
        }
        Op::Concat { axis: ca } => (*ca != axis).then(|| vec![Some(axis); n.inputs.len()]),
        Op::MatMul => {
            let ra = m.ty(n.inputs[0]).shape.len();
            (ra >= 2 && out.len() >= 2 && axis == out.len() - 2).then(|| vec![Some(ra - 2), None])
        }
        Op::Attention {
            q_layout,
            out_layout,
            has_bias: false,
            has_mask: false,
            ..
        }
        | Op::LinearAttention {
            q_layout,
            out_layout,
            ..
        } => {
            let seq = |l: AttnLayout| match l {
                AttnLayout::Bsd | AttnLayout::Bshd => 1,
                AttnLayout::Bhsd => 2,
                AttnLayout::Bhds => 3,
            };
            (axis == seq(*out_layout)).then(|| vec![Some(seq(*q_layout)), None, None])
        }
        _ => None,
    }
}

/// The narrowed module being built.
struct Emit<'a> {
    m: &'a Module,
    out: Module,
    /// Each old value's new value, in its narrowed form where it has one.
    map: Vec<Option<ValueId>>,
    /// The (axis, rows) an old value was narrowed to; `None` if it is whole.
    form: Vec<Option<(usize, Vec<usize>)>>,
    /// Row selections already made, by (old value, axis, rows).
    cache: HashMap<(usize, usize, Vec<usize>), ValueId>,
}

impl Emit<'_> {
    fn add(&mut self, op: Op, ins: Vec<ValueId>, name: &str) -> Result<ValueId, Error> {
        self.out.add(op, ins, name).map_err(|e| Error::Narrow {
            node: name.to_string(),
            msg: e.to_string(),
        })
    }

    fn lost(&self, v: ValueId, why: &str) -> Error {
        let n = self.m.node(v);
        Error::Narrow {
            node: format!("{} {}", n.op.name(), n.name),
            msg: why.to_string(),
        }
    }

    fn new_id(&self, v: ValueId) -> Result<ValueId, Error> {
        self.map[v.0].ok_or_else(|| self.lost(v, "operand not emitted"))
    }

    /// `v` whole; a narrowed value here means the demands were computed wrong.
    fn full(&self, v: ValueId) -> Result<ValueId, Error> {
        if self.form[v.0].is_some() {
            return Err(self.lost(v, "a whole value was narrowed"));
        }
        self.new_id(v)
    }

    /// Rows `rows` of `v` along `axis`.
    fn rows_of(&mut self, v: ValueId, axis: usize, rows: &[usize]) -> Result<ValueId, Error> {
        let base = self.new_id(v)?;
        let pos: Vec<usize> = match &self.form[v.0] {
            None => rows.to_vec(),
            Some((a, have)) if *a == axis => rows
                .iter()
                .map(|r| have.binary_search(r).ok())
                .collect::<Option<_>>()
                .ok_or_else(|| self.lost(v, "rows missing from a narrowed value"))?,
            Some(_) => return Err(self.lost(v, "narrowed along another axis")),
        };
        let dim = self.out.ty(base).shape[axis];
        if pos.len() == dim && pos.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(base);
        }
        let key = (v.0, axis, rows.to_vec());
        if let Some(&c) = self.cache.get(&key) {
            return Ok(c);
        }
        let name = self.m.node(v).name.clone();
        let sel = self.select(base, axis, &pos, &name)?;
        self.cache.insert(key, sel);
        Ok(sel)
    }

    /// Positions `pos` (sorted) of new value `base` along `axis`: a slice when contiguous,
    /// else a gather.
    fn select(
        &mut self,
        base: ValueId,
        axis: usize,
        pos: &[usize],
        name: &str,
    ) -> Result<ValueId, Error> {
        let shape = self.out.ty(base).shape.clone();
        let contiguous = pos.windows(2).all(|w| w[1] == w[0] + 1);
        // Every row, in order: the value itself (a slice that narrowing made the identity).
        if contiguous && pos.first() == Some(&0) && pos.len() == shape[axis] {
            return Ok(base);
        }
        match (pos.first(), pos.last()) {
            (Some(&lo), Some(&hi)) if contiguous => {
                let mut starts = vec![0i64; shape.len()];
                let mut ends: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                starts[axis] = lo as i64;
                ends[axis] = hi as i64 + 1;
                let steps = vec![1i64; shape.len()];
                self.add(
                    Op::Slice {
                        starts,
                        ends,
                        steps,
                    },
                    vec![base],
                    name,
                )
            }
            _ => {
                let idx = Tensor::i64(vec![pos.len()], pos.iter().map(|&p| p as i64).collect());
                let c = self.out.add_constant(&format!("{name}.rows"), idx);
                self.add(Op::Gather { axis }, vec![base, c], name)
            }
        }
    }

    /// Node `i` on rows `rows` along `axis`.
    fn narrowed_node(&mut self, i: usize, axis: usize, rows: &[usize]) -> Result<ValueId, Error> {
        let n = &self.m.nodes[i];
        let rule = row_rule(self.m, n, axis).ok_or_else(|| self.lost(ValueId(i), "no row rule"))?;
        let mut ins = Vec::with_capacity(n.inputs.len());
        for (&u, ax) in n.inputs.iter().zip(rule) {
            ins.push(match ax {
                Some(a) => self.rows_of(u, a, rows)?,
                None => self.full(u)?,
            });
        }
        let op = match &n.op {
            Op::Reshape { shape } => {
                let mut shape = shape.clone();
                shape[axis] = rows.len();
                Op::Reshape { shape }
            }
            op => op.clone(),
        };
        self.add(op, ins, &n.name)
    }

    /// A gather or slice whose data may have been narrowed: the same rows, by their new
    /// positions.
    fn source_node(&mut self, i: usize) -> Result<ValueId, Error> {
        let n = &self.m.nodes[i];
        let data = n.inputs[0];
        let Some((axis, have)) = self.form[data.0].clone() else {
            let ins = n
                .inputs
                .iter()
                .map(|&u| self.full(u))
                .collect::<Result<Vec<_>, _>>()?;
            return self.add(n.op.clone(), ins, &n.name);
        };
        let base = self.new_id(data)?;
        let pos_of = |r: usize| have.binary_search(&r).ok().map(|p| p as i64);
        match &n.op {
            Op::Gather { axis: ga } if *ga == axis => {
                let idx = self
                    .m
                    .constant(n.inputs[1])
                    .ok_or_else(|| self.lost(ValueId(i), "indices are not a constant"))?;
                let dim = self.m.ty(data).shape[axis] as i64;
                let pos = idx
                    .to_i64_vec()
                    .into_iter()
                    .map(|r| pos_of((if r < 0 { r + dim } else { r }) as usize))
                    .collect::<Option<Vec<i64>>>()
                    .ok_or_else(|| self.lost(ValueId(i), "gathered rows were dropped"))?;
                let t = Tensor::i64(idx.shape.clone(), pos);
                let c = self.out.add_constant(&format!("{}.rows", n.name), t);
                self.add(Op::Gather { axis }, vec![base, c], &n.name)
            }
            Op::Slice { .. } => {
                let (_, rows) = source_rows(self.m, n)
                    .ok_or_else(|| self.lost(ValueId(i), "not a row slice"))?;
                let pos = rows
                    .into_iter()
                    .map(pos_of)
                    .collect::<Option<Vec<i64>>>()
                    .ok_or_else(|| self.lost(ValueId(i), "sliced rows were dropped"))?;
                let pos: Vec<usize> = pos.into_iter().map(|p| p as usize).collect();
                let name = n.name.clone();
                self.select(base, axis, &pos, &name)
            }
            _ => Err(self.lost(ValueId(i), "narrowed along another axis")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitc_ir::{Activation, DType, TensorType};

    fn ramp(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::f32(
            shape.to_vec(),
            (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect(),
        )
    }

    /// A classifier tail: a block over every token, then token 0 (and the last one) read.
    fn tail(idx: Tensor) -> Module {
        let mut m = Module::new("tail");
        let x = m.add_input("x", TensorType::new(vec![1, 5, 8], DType::F32));
        let g = m.add_constant("g", ramp(&[8]));
        let ln = m
            .add(
                Op::LayerNorm {
                    axis: 2,
                    epsilon: 1e-5,
                    has_bias: false,
                },
                vec![x, g],
                "ln",
            )
            .unwrap();
        let wq = m.add_constant("wq", ramp(&[8, 8]));
        let wk = m.add_constant("wk", ramp(&[8, 8]));
        let q = m.add(lin(false), vec![ln, wq], "q").unwrap();
        let k = m.add(lin(false), vec![ln, wk], "k").unwrap();
        let a = m
            .add(
                Op::Attention {
                    heads: 2,
                    scale: 0.5,
                    q_layout: AttnLayout::Bsd,
                    k_layout: AttnLayout::Bsd,
                    v_layout: AttnLayout::Bsd,
                    out_layout: AttnLayout::Bsd,
                    has_bias: false,
                    has_mask: false,
                },
                vec![q, k, k],
                "attn",
            )
            .unwrap();
        let wo = m.add_constant("wo", ramp(&[8, 8]));
        let o = m.add(lin(true), vec![a, wo, x], "o").unwrap();
        let i = m.add_constant("i", idx);
        let y = m.add(Op::Gather { axis: 1 }, vec![o, i], "pick").unwrap();
        m.outputs.push(("y".into(), y));
        m
    }

    fn lin(residual: bool) -> Op {
        Op::Linear {
            activation: Activation::Gelu,
            has_bias: false,
            has_residual: residual,
        }
    }

    fn same_numbers(m: &Module) -> Module {
        let n = narrow_rows(m).unwrap();
        let x = ramp(&m.ty(m.inputs[0].1).shape);
        let want = vitc_ir::run(m, std::slice::from_ref(&x)).unwrap();
        let got = vitc_ir::run(&n, &[x]).unwrap();
        assert_eq!(got, want);
        n
    }

    #[test]
    fn narrows_a_classifier_tail() {
        for idx in [
            Tensor::i64(Vec::<usize>::new(), vec![0]),
            Tensor::i64(vec![2], vec![-1, 0]),
            Tensor::i64(vec![2], vec![1, 2]),
        ] {
            let m = tail(idx);
            let n = same_numbers(&m);
            assert!(n.flops() < m.flops(), "{} !< {}", n.flops(), m.flops());
            // The output projection and the query run on the picked rows only.
            let o = n.nodes.iter().find(|n| n.name == "o").unwrap();
            assert!(o.ty.shape[1] <= 2, "{}", o.ty);
            let k = n.nodes.iter().find(|n| n.name == "k").unwrap();
            assert_eq!(k.ty.shape[1], 5, "keys stay whole");
        }
    }

    #[test]
    fn leaves_a_module_that_reads_every_row() {
        let mut m = tail(Tensor::i64(vec![1], vec![0]));
        let o = m.nodes.iter().position(|n| n.name == "o").unwrap();
        m.outputs.push(("all".into(), ValueId(o)));
        assert_eq!(narrow_rows(&m).unwrap(), m);
    }
}
