//! The runtime's one error type. Hand-written (no `thiserror`) because the crate must have no
//! dependencies; the messages name the file, symbol or tensor at fault so a CLI can show them
//! as they are.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong loading or running a compiled model.
#[derive(Debug)]
pub enum RuntimeError {
    /// `dlopen` failed; `reason` is `dlerror()`'s text.
    Open { path: PathBuf, reason: String },
    /// The library lacks one of the ABI functions.
    MissingSymbol { symbol: String, reason: String },
    /// The symbol prefix or path cannot be passed to C (it contains a NUL byte).
    BadName(String),
    /// `P_abi_version()` is not [`crate::ABI_VERSION`].
    AbiVersion { found: u32, expected: u32 },
    /// The library reports a shape this runtime cannot use (null, negative or overflowing).
    BadShape {
        tensor: &'static str,
        index: u32,
        reason: String,
    },
    /// `run` got the wrong number of input or output slices.
    TensorCount {
        tensor: &'static str,
        expected: usize,
        found: usize,
    },
    /// An input or output slice has the wrong number of elements.
    TensorLength {
        tensor: &'static str,
        index: usize,
        expected: usize,
        found: usize,
    },
    /// The workspace given to `run_with` is smaller than the model needs.
    WorkspaceTooSmall { needed: usize, found: usize },
    /// Workspace memory could not be allocated.
    OutOfMemory { bytes: usize },
    /// `P_run` returned a non-zero code.
    Run { code: i32 },
    /// A pool worker thread could not be started.
    ThreadSpawn(std::io::Error),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Open { path, reason } => {
                write!(f, "cannot load model library {}: {reason}", path.display())
            }
            RuntimeError::MissingSymbol { symbol, reason } => write!(
                f,
                "model library has no symbol `{symbol}` (wrong --prefix, or not a vitc model?): {reason}"
            ),
            RuntimeError::BadName(name) => write!(f, "name contains a NUL byte: {name:?}"),
            RuntimeError::AbiVersion { found, expected } => write!(
                f,
                "model library speaks vitc ABI version {found}, this runtime speaks version {expected}"
            ),
            RuntimeError::BadShape { tensor, index, reason } => {
                write!(f, "model library reports an unusable shape for {tensor} {index}: {reason}")
            }
            RuntimeError::TensorCount { tensor, expected, found } => {
                write!(f, "model takes {expected} {tensor}s, got {found}")
            }
            RuntimeError::TensorLength { tensor, index, expected, found } => write!(
                f,
                "{tensor} {index} must have {expected} f32 elements (its shape's product), got {found}"
            ),
            RuntimeError::WorkspaceTooSmall { needed, found } => write!(
                f,
                "workspace of {found} bytes is too small: the model needs {needed} (use Library::workspace)"
            ),
            RuntimeError::OutOfMemory { bytes } => write!(f, "cannot allocate a {bytes}-byte workspace"),
            RuntimeError::Run { code } => write!(f, "model run failed with code {code}"),
            RuntimeError::ThreadSpawn(err) => write!(f, "cannot start a thread-pool worker: {err}"),
        }
    }
}

impl std::error::Error for RuntimeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RuntimeError::ThreadSpawn(err) => Some(err),
            _ => None,
        }
    }
}
