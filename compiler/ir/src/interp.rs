//! The reference interpreter (being written by a helper; this is a placeholder signature).

use crate::error::IrError;
use crate::module::Module;
use crate::op::Op;
use crate::types::{Tensor, TensorType};

/// Run `m` on `inputs` (one per graph input, in order) and return its outputs in order.
pub fn run(m: &Module, inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    let _ = (m, inputs);
    Err(IrError::Interp("not implemented yet".into()))
}

/// Evaluate one op on concrete operands; `out` is the node's (inferred) result type.
pub fn eval(op: &Op, inputs: &[&Tensor], out: &TensorType) -> Result<Tensor, IrError> {
    let _ = (op, inputs, out);
    Err(IrError::Interp("not implemented yet".into()))
}
