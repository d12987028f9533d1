//! Errors of the compression passes. Every one names what the user can act on: the flag and
//! value, the node whose shape does not fit the pattern a pass rewrites, or what is wrong with
//! the calibration images. Nothing here prints.

use thiserror::Error;
use vitc_ir::IrError;

#[derive(Debug, Error)]
pub enum PruneError {
    /// A pruning ratio outside [0, 1).
    #[error("{what} ratio must be at least 0 and less than 1, got {value}")]
    Ratio { what: &'static str, value: f64 },
    /// The module has none of the blocks the pass rewrites.
    #[error("{pass}: {msg}")]
    NoBlocks { pass: &'static str, msg: String },
    /// A block does not have the shape the pass rewrites.
    #[error("{pass}: {node}: {msg}")]
    Structure {
        pass: &'static str,
        node: String,
        msg: String,
    },
    /// The calibration images do not fit the model.
    #[error("calibration images: {0}")]
    Calibration(String),
    /// Running the module on the calibration images, or rebuilding it, failed.
    #[error("{0}")]
    Ir(#[from] IrError),
}
