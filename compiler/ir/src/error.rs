//! Errors of the IR layer: verification, parsing, side files and interpretation.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IrError {
    /// A node breaks a typing or shape rule.
    #[error("{op} {node}: {msg}")]
    Verify {
        node: String,
        op: String,
        msg: String,
    },
    /// The text form could not be parsed.
    #[error("line {line}, column {col}: {msg}")]
    Parse {
        line: usize,
        col: usize,
        msg: String,
    },
    /// A constant handle has no data in the given constant store.
    #[error("constant @{0} has no data (pass the model or its .weights side file)")]
    MissingConstant(String),
    /// The weights side file is malformed.
    #[error("weights file: {0}")]
    SideFile(String),
    /// The interpreter was given wrong inputs or met an op it cannot run.
    #[error("interpreter: {0}")]
    Interp(String),
}
