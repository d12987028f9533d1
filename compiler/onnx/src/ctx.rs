//! The context an import function works in: one ONNX node, its attributes, the opset, the IR
//! values of its inputs, and the module being built.
//!
//! Every IR node goes through [`Ctx::add`], which types it with the IR builder and folds it
//! into a constant when all its operands are constants. That single fold point is what turns
//! exporter shape arithmetic (Shape → Gather → Concat → Reshape) into static attributes, so
//! import functions never special-case "is this constant yet". `vit.dequantize` is the one op
//! that is never folded: the quantization passes need to see int8 weights and their scales.
//! Import functions must not index into file-derived data without a check; they return
//! `Node` errors through [`Ctx::err`] instead.

use crate::attrs::Attrs;
use crate::error::{dims_i64, OnnxError};
use onnx_protobuf::NodeProto;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use vitc_ir::types::checked_numel;
use vitc_ir::{DType, Data, IrError, Module, Op, Tensor, TensorType, ValueId};

/// Results larger than this many elements stay as nodes instead of being folded, so a hostile
/// Expand or ConstantOfShape cannot make the importer allocate gigabytes.
pub(crate) const FOLD_LIMIT: usize = 1 << 26;

/// What an import function returns: the IR value of each ONNX output, in order. Trailing
/// optional outputs may be left off; the driver checks that nothing uses them.
pub(crate) type Outs = Result<Vec<ValueId>, OnnxError>;

pub(crate) type ImportFn = fn(&mut Ctx<'_>) -> Outs;

pub(crate) struct Ctx<'a> {
    pub m: &'a mut Module,
    pub values: &'a HashMap<String, ValueId>,
    pub node: &'a NodeProto,
    /// The node's name for messages (its ONNX name, else its first output).
    pub name: &'a str,
    /// The model's default-domain opset, for version gates.
    pub opset: i64,
    pub attrs: Attrs<'a>,
    /// Where tensor attributes with external data are looked up.
    pub model_dir: Option<&'a Path>,
}

impl<'a> Ctx<'a> {
    /// A `Node` error for this node.
    pub fn err(&self, msg: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: self.name.to_string(),
            op_type: self.node.op_type.clone(),
            msg: msg.into(),
        }
    }

    fn ir_err(&self, e: IrError) -> OnnxError {
        OnnxError::Ir {
            node: self.name.to_string(),
            op_type: self.node.op_type.clone(),
            source: e,
        }
    }

    pub fn overflow(&self, what: &str, shape: &[i64]) -> OnnxError {
        OnnxError::ShapeOverflow {
            what: format!("node '{}' ({}) {what}", self.name, self.node.op_type),
            shape: shape.to_vec(),
        }
    }

    // ---- attributes -------------------------------------------------------------------------

    pub fn attr_int(&self, name: &str, default: i64) -> Result<i64, OnnxError> {
        self.attrs.int(name, default).map_err(|m| self.err(m))
    }

    pub fn attr_opt_int(&self, name: &str) -> Result<Option<i64>, OnnxError> {
        self.attrs.opt_int(name).map_err(|m| self.err(m))
    }

    pub fn attr_float(&self, name: &str, default: f32) -> Result<f32, OnnxError> {
        self.attrs.float(name, default).map_err(|m| self.err(m))
    }

    pub fn attr_opt_float(&self, name: &str) -> Result<Option<f32>, OnnxError> {
        self.attrs.opt_float(name).map_err(|m| self.err(m))
    }

    pub fn attr_ints(&self, name: &str) -> Result<Option<Vec<i64>>, OnnxError> {
        Ok(self
            .attrs
            .ints(name)
            .map_err(|m| self.err(m))?
            .map(|s| s.to_vec()))
    }

    pub fn attr_floats(&self, name: &str) -> Result<Option<Vec<f32>>, OnnxError> {
        Ok(self
            .attrs
            .floats(name)
            .map_err(|m| self.err(m))?
            .map(|s| s.to_vec()))
    }

    pub fn attr_string(&self, name: &str, default: &str) -> Result<String, OnnxError> {
        self.attrs.string(name, default).map_err(|m| self.err(m))
    }

    /// A boolean-valued INT attribute (0 or 1).
    pub fn attr_bool(&self, name: &str, default: bool) -> Result<bool, OnnxError> {
        match self.attr_int(name, default as i64)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.err(format!("attribute '{name}' must be 0 or 1, got {v}"))),
        }
    }

    // ---- inputs -----------------------------------------------------------------------------

    pub fn opt_input(&self, i: usize) -> Result<Option<ValueId>, OnnxError> {
        match self.node.input.get(i) {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => match self.values.get(s) {
                Some(&v) => Ok(Some(v)),
                None => Err(self.err(format!(
                    "input {i} '{s}' is not produced by any earlier node, initializer or graph input"
                ))),
            },
        }
    }

    pub fn input(&self, i: usize) -> Result<ValueId, OnnxError> {
        self.opt_input(i)?
            .ok_or_else(|| self.err(format!("required input {i} is missing")))
    }

    /// All inputs of a variadic op; none may be empty.
    pub fn all_inputs(&self) -> Result<Vec<ValueId>, OnnxError> {
        if self.node.input.is_empty() {
            return Err(self.err("needs at least one input"));
        }
        (0..self.node.input.len()).map(|i| self.input(i)).collect()
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.m.ty(v)
    }

    pub fn shape(&self, v: ValueId) -> Vec<usize> {
        self.m.ty(v).shape.clone()
    }

    pub fn rank(&self, v: ValueId) -> usize {
        self.m.ty(v).rank()
    }

    pub fn dtype(&self, v: ValueId) -> DType {
        self.m.ty(v).dtype
    }

    /// The constant behind a value, if it is one (after folding).
    pub fn const_of(&self, v: ValueId) -> Option<Arc<Tensor>> {
        self.m.constant(v).cloned()
    }

    /// Input `i` as a constant; inputs that set static attributes (shapes, axes, pads) must be
    /// known at import time.
    pub fn opt_const_input(&self, i: usize, what: &str) -> Result<Option<Arc<Tensor>>, OnnxError> {
        let Some(v) = self.opt_input(i)? else {
            return Ok(None);
        };
        match self.const_of(v) {
            Some(t) => Ok(Some(t)),
            None => Err(self.err(format!(
                "input {i} ('{}', the {what}) must be known at import time, but it depends on a graph input",
                self.node.input.get(i).map(String::as_str).unwrap_or("")
            ))),
        }
    }

    pub fn const_input(&self, i: usize, what: &str) -> Result<Arc<Tensor>, OnnxError> {
        self.opt_const_input(i, what)?
            .ok_or_else(|| self.err(format!("required input {i} (the {what}) is missing")))
    }

    /// An integer tensor's elements (rank 0 or 1), for shapes, axes, pads and the like.
    pub fn int_values(&self, t: &Tensor, what: &str) -> Result<Vec<i64>, OnnxError> {
        if !t.dtype().is_int() {
            return Err(self.err(format!(
                "the {what} must be an integer tensor, got {}",
                t.ty()
            )));
        }
        if t.shape.len() > 1 {
            return Err(self.err(format!("the {what} must be a 1-D tensor, got {}", t.ty())));
        }
        Ok(t.to_i64_vec())
    }

    /// Optional constant integer input `i` as a list.
    pub fn opt_ints_input(&self, i: usize, what: &str) -> Result<Option<Vec<i64>>, OnnxError> {
        match self.opt_const_input(i, what)? {
            Some(t) => Ok(Some(self.int_values(&t, what)?)),
            None => Ok(None),
        }
    }

    pub fn ints_input(&self, i: usize, what: &str) -> Result<Vec<i64>, OnnxError> {
        let t = self.const_input(i, what)?;
        self.int_values(&t, what)
    }

    /// A one-element constant input as f64 (clip bounds, pad values).
    pub fn opt_scalar_input(&self, i: usize, what: &str) -> Result<Option<f64>, OnnxError> {
        match self.opt_const_input(i, what)? {
            None => Ok(None),
            Some(t) if t.numel() == 1 => Ok(Some(t.data.get_f64(0))),
            Some(t) => Err(self.err(format!("the {what} must hold one value, got {}", t.ty()))),
        }
    }

    // ---- axes -------------------------------------------------------------------------------

    /// Normalise a possibly negative axis against `rank`.
    pub fn axis(&self, a: i64, rank: usize, what: &str) -> Result<usize, OnnxError> {
        let r = rank as i64;
        let n = if a < 0 { a + r } else { a };
        if n < 0 || n >= r {
            return Err(self.err(format!("{what} {a} is out of range for rank {rank}")));
        }
        Ok(n as usize)
    }

    /// Normalise a list of axes, refusing duplicates.
    pub fn axes(&self, axes: &[i64], rank: usize, what: &str) -> Result<Vec<usize>, OnnxError> {
        let mut out = Vec::with_capacity(axes.len());
        for &a in axes {
            let n = self.axis(a, rank, what)?;
            if out.contains(&n) {
                return Err(self.err(format!("{what} {axes:?} repeat an axis")));
            }
            out.push(n);
        }
        Ok(out)
    }

    /// Turn file-provided dims into a checked shape.
    pub fn shape_from(&self, dims: &[i64], what: &str) -> Result<Vec<usize>, OnnxError> {
        let mut out = Vec::with_capacity(dims.len());
        for &d in dims {
            match usize::try_from(d) {
                Ok(u) => out.push(u),
                Err(_) => return Err(self.err(format!("{what} {dims:?} has a negative dimension"))),
            }
        }
        checked_numel(&out).ok_or_else(|| self.overflow(what, dims))?;
        Ok(out)
    }

    // ---- building ---------------------------------------------------------------------------

    /// Add an IR node for this ONNX node, folding it into a constant when every operand is one.
    pub fn add(&mut self, op: Op, inputs: Vec<ValueId>) -> Result<ValueId, OnnxError> {
        let v = self
            .m
            .add(op.clone(), inputs.clone(), self.name)
            .map_err(|e| self.ir_err(e))?;
        // The builder types results without bounding them; a gather of a huge index tensor or
        // a broadcast of big operands must not yield a shape whose size overflows later.
        if checked_numel(&self.m.ty(v).shape).is_none() {
            let shape = dims_i64(&self.m.ty(v).shape);
            self.m.nodes.pop();
            return Err(self.overflow(&format!("result of {}", op.name()), &shape));
        }
        if matches!(op, Op::Dequantize { .. }) {
            return Ok(v);
        }
        let consts: Option<Vec<Arc<Tensor>>> = inputs
            .iter()
            .map(|&i| self.m.constant(i).cloned())
            .collect();
        let Some(consts) = consts else {
            return Ok(v);
        };
        let ty = self.m.ty(v).clone();
        if ty.numel() > FOLD_LIMIT {
            return Ok(v);
        }
        let refs: Vec<&Tensor> = consts.iter().map(|t| &**t).collect();
        let t = vitc_ir::interp::eval(&op, &refs, &ty).map_err(|e| self.ir_err(e))?;
        if t.ty() != ty || t.data.len() != t.shape.iter().product::<usize>() {
            return Err(self.err(format!(
                "internal: folding {} gave {}, but its type is {ty}",
                op.name(),
                t.ty()
            )));
        }
        // `v` is the last node; drop it so the folded module holds no dead node.
        if v.0 + 1 == self.m.nodes.len() {
            self.m.nodes.pop();
        }
        Ok(self.m.add_constant(self.name, t))
    }

    /// Add a constant tensor named after this node.
    pub fn constant(&mut self, t: Tensor) -> ValueId {
        self.m.add_constant(self.name, t)
    }

    /// A rank-0 constant of `dtype`.
    pub fn scalar(&mut self, dtype: DType, x: f64) -> ValueId {
        let data = Data::from_f64(dtype, std::iter::once(x));
        self.constant(Tensor::new(Vec::<usize>::new(), data))
    }

    /// Reshape `v` to `shape` (no node if it already has it).
    pub fn reshape(&mut self, v: ValueId, shape: Vec<usize>) -> Result<ValueId, OnnxError> {
        if self.ty(v).shape == shape {
            return Ok(v);
        }
        self.add(Op::Reshape { shape }, vec![v])
    }

    pub fn binary(
        &mut self,
        op: vitc_ir::BinaryOp,
        a: ValueId,
        b: ValueId,
    ) -> Result<ValueId, OnnxError> {
        self.add(Op::Binary(op), vec![a, b])
    }
}
