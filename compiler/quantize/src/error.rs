//! Errors of post-training quantization. Each names what the user can act on: the option and
//! its value, the `keep-float` entry that selects nothing, or what is wrong with the
//! calibration runs. Nothing here prints.

use thiserror::Error;
use vitc_ir::IrError;

#[derive(Debug, Error)]
pub enum QuantizeError {
    /// The module has no `vit.linear` (an unfused, -O0, module has only matmuls).
    #[error(
        "the module has no vit.linear to quantize; quantization rewrites the fused module (-O2)"
    )]
    NoLinear,
    /// Every `vit.linear` was kept in float, so there is nothing to calibrate.
    #[error("keep-float keeps all {0} vit.linear layers in float: nothing left to quantize")]
    AllKept(usize),
    /// A keep-float entry selects no layer (most likely a typo).
    #[error(
        "keep-float '{entry}' matches no vit.linear: give a role (qkv, proj, attention, fc1, fc2, \
         mlp, head, linear), a value id such as {example_id}, or part of a layer's name such as \
         '{example_name}'"
    )]
    KeepFloatUnmatched {
        entry: String,
        example_id: String,
        example_name: String,
    },
    /// The percentile of the percentile method is outside (50, 100].
    #[error("percentile must be more than 50 and at most 100, got {0}")]
    Percentile(f64),
    /// The calibration runs do not fit the module.
    #[error("calibration: {0}")]
    Calibration(String),
    /// A value the calibration runs produce is NaN or infinite everywhere, so it has no range.
    #[error("{node}: {msg}")]
    Layer { node: String, msg: String },
    /// Running the interpreter, or building the quantized module, failed.
    #[error("{0}")]
    Ir(#[from] IrError),
}
