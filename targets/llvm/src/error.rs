//! Errors of the LLVM backend. Every way a model, an option or the toolchain can make code
//! generation fail is one variant here; the CLI renders them for people. Nothing in this crate
//! panics on a user's model.

use std::path::PathBuf;
use thiserror::Error;

/// Code generation, optimisation or linking failed.
#[derive(Debug, Error)]
pub enum CodegenError {
    /// The target name is not in the target table.
    #[error("unknown target `{name}`; known targets: {}", known.join(", "))]
    UnknownTarget { name: String, known: Vec<String> },
    /// A compile option is out of range (prefix not a C identifier, optimisation level > 3 …).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The module does not verify; the backend only compiles well-typed modules.
    #[error("invalid module: {0}")]
    InvalidModule(#[from] vitc_ir::IrError),
    /// Something in the model this backend cannot compile (an op without a kernel, a graph
    /// input or output that is not float32 …). `node` names the node (`%i (onnx name)`).
    #[error("{op} {node}: unsupported: {msg}")]
    Unsupported {
        node: String,
        op: String,
        msg: String,
    },
    /// LLVM reported an error (invalid IR, a pass pipeline or code generation failure).
    #[error("LLVM: {0}")]
    Llvm(String),
    /// An external tool (lld, llvm-ar) could not be run or failed.
    #[error("{tool}: {msg}")]
    Link { tool: String, msg: String },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<inkwell::builder::BuilderError> for CodegenError {
    fn from(e: inkwell::builder::BuilderError) -> Self {
        CodegenError::Llvm(format!("IR builder: {e}"))
    }
}
