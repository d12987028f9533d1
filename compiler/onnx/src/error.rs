//! The frontend's error type: one variant per way a model (or the options given with it) can
//! fail to import. Each message names the problem in one line that a person can act on; the
//! CLI only renders them. Nothing here formats for a terminal or decides about exit codes.

use std::path::PathBuf;
use thiserror::Error;
use vitc_ir::IrError;

#[derive(Debug, Error)]
pub enum OnnxError {
    /// The model file itself could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The bytes do not decode as an ONNX ModelProto.
    #[error("{model} is not an ONNX model (or is truncated): {msg}")]
    NotOnnx { model: String, msg: String },

    /// A ModelProto without a graph (a function library, an empty message).
    #[error("{model} has no graph (an ONNX model without a graph cannot be compiled)")]
    NoGraph { model: String },

    /// The model's default-domain opset is missing or out of the range the importer knows.
    #[error("{msg}")]
    Opset { msg: String },

    /// No import function for this op (or for any op of this domain).
    #[error("unsupported op {op_type} (domain {domain}, opset {opset}) at node '{node}'")]
    UnsupportedOp {
        node: String,
        op_type: String,
        domain: String,
        opset: i64,
    },

    /// A node has a bad or missing attribute or input, or a form the importer cannot lower.
    #[error("node '{node}' ({op_type}): {msg}")]
    Node {
        node: String,
        op_type: String,
        msg: String,
    },

    /// Building an IR node for an ONNX node failed (shape or type rule broken).
    #[error("node '{node}' ({op_type}): {source}")]
    Ir {
        node: String,
        op_type: String,
        source: IrError,
    },

    /// An initializer or constant tensor is malformed (element type, length, encoding).
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },

    /// A shape whose element count overflows (or passes the 2^40-element cap).
    #[error("{what}: shape {shape:?} is too large (its element count overflows)")]
    ShapeOverflow { what: String, shape: Vec<i64> },

    /// External data lives in a file that does not exist (or cannot be opened).
    #[error("external data of tensor '{tensor}': cannot open {}: {msg}", path.display())]
    ExternalMissing {
        tensor: String,
        path: PathBuf,
        msg: String,
    },

    /// External data's offset/length run past the end of its file.
    #[error(
        "external data of tensor '{tensor}': bytes {offset}..{end} lie beyond the end of {} ({size} bytes)",
        path.display()
    )]
    ExternalRange {
        tensor: String,
        path: PathBuf,
        offset: u64,
        end: u64,
        size: u64,
    },

    /// External data whose `location` would leave the model's folder.
    #[error(
        "external data of tensor '{tensor}': location '{location}' points outside the model's folder; refusing to read it"
    )]
    ExternalOutside { tensor: String, location: String },

    /// External data with malformed keys, or external data when no model folder is known.
    #[error("external data of tensor '{tensor}': {msg}")]
    External { tensor: String, msg: String },

    /// A graph input with a dimension that is not static and no `--input-shape` for it.
    #[error(
        "graph input '{input}' has a dynamic dimension {dim} ({param}); give its shape with --input-shape {input}={example}"
    )]
    DynamicInput {
        input: String,
        dim: usize,
        param: String,
        example: String,
    },

    /// An `--input-shape` that contradicts what the model declares.
    #[error("--input-shape {input}={given}: {msg}")]
    InputShapeMismatch {
        input: String,
        given: String,
        msg: String,
    },

    /// An `--input-shape` naming no graph input.
    #[error(
        "--input-shape names '{name}', but the model has no such input (its inputs: {inputs})"
    )]
    UnknownInput { name: String, inputs: String },

    /// An `--input-shape` argument that does not parse.
    #[error("bad --input-shape '{arg}': {msg} (expected NAME=1x3x224x224)")]
    BadInputShape { arg: String, msg: String },

    /// A `--batch` size that cannot be compiled.
    #[error("--batch {batch}: {msg}")]
    BadBatch { batch: usize, msg: String },

    /// `--batch N`: a node whose batch dimension cannot be rewritten (it would mix images, or
    /// its shapes do not show where the batch is).
    #[error("--batch {batch}: cannot rewrite the batch dimension at node '{node}' ({op}): {msg}")]
    Batch {
        batch: usize,
        node: String,
        op: String,
        msg: String,
    },

    /// A graph input or output whose type the importer cannot use.
    #[error("graph {kind} '{name}': {msg}")]
    GraphValue {
        kind: &'static str,
        name: String,
        msg: String,
    },

    /// A graph output whose inferred shape disagrees with the model's declared static dims.
    #[error("graph output '{output}': the model declares shape {declared}, but the import infers {inferred}")]
    OutputShape {
        output: String,
        declared: String,
        inferred: String,
    },

    /// The finished module failed verification (an importer bug rather than a model problem).
    #[error("the imported module does not verify: {0}")]
    Verify(IrError),
}

/// Dims for a [`OnnxError::ShapeOverflow`] message (saturating, as the shape is too large).
pub(crate) fn dims_i64(shape: &[usize]) -> Vec<i64> {
    shape
        .iter()
        .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
        .collect()
}
