//! The ONNX frontend: reads an `.onnx` model (with external data beside it) into a verified
//! vit IR module with static shapes.
//!
//! Each ONNX op has one import function, registered by name in `ops/mod.rs`. Shape arithmetic
//! and constant weight subgraphs are folded as nodes are imported (through the reference
//! interpreter), so the module holds only tensor computation on the model's inputs. With
//! [`ImportOptions::batch`] the module is then rewritten for N images per run (`batch.rs`).
//! This crate never panics on a user's file and prints nothing: every failure is an
//! [`OnnxError`] that names the node, tensor or input at fault, rendered for people by the CLI.

mod attrs;
mod batch;
mod ctx;
mod error;
mod import;
mod load;
mod ops;

#[cfg(test)]
mod tests;

pub use error::OnnxError;

use std::path::Path;
use vitc_ir::types::checked_numel;
use vitc_ir::Module;

/// Options that complete what the model leaves open.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Static shapes for graph inputs, by input name (`--input-shape NAME=1x3x224x224`).
    /// Required for inputs with dynamic dims; must agree with the model's static dims.
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// Compile for this many images at once (`--batch N`): the model is imported at batch 1
    /// (dim 0 of every graph input is 1, or is dynamic and taken as 1) and every shape that
    /// carries the batch, reshape targets included, is rewritten for N. `None` or `Some(1)`
    /// leaves the model as it is.
    pub batch: Option<usize>,
}

/// Import a model file. External data is read relative to the file's folder.
pub fn import_file(path: &Path, opts: &ImportOptions) -> Result<Module, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    // Name the file the user gave, not the module, when the bytes are not a model at all.
    import_bytes(&bytes, Some(&dir), &name, opts).map_err(|e| match e {
        OnnxError::NotOnnx { msg, .. } => OnnxError::NotOnnx {
            model: path.display().to_string(),
            msg,
        },
        e => e,
    })
}

/// Import a model from bytes. `model_dir` is where external data lives (`None` refuses
/// external data); `name` names the module and appears in messages.
pub fn import_bytes(
    bytes: &[u8],
    model_dir: Option<&Path>,
    name: &str,
    opts: &ImportOptions,
) -> Result<Module, OnnxError> {
    let model = load::parse_model(bytes, name)?;
    import::import_model(&model, model_dir, name, opts)
}

/// Parse `NAME=1x3x224x224` (dims separated by `x` or `,`). The split is at the last `=`, so
/// input names may themselves contain `=`.
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>), OnnxError> {
    let bad = |msg: &str| OnnxError::BadInputShape {
        arg: s.to_string(),
        msg: msg.to_string(),
    };
    let (name, dims) = s.rsplit_once('=').ok_or_else(|| bad("no '='"))?;
    if name.is_empty() {
        return Err(bad("the input name is empty"));
    }
    let dims = dims.trim();
    if dims.is_empty() {
        return Err(bad("no dimensions after '='"));
    }
    let mut shape = Vec::new();
    for part in dims.split(['x', 'X', ',']) {
        let part = part.trim();
        let d: usize = part
            .parse()
            .map_err(|_| bad(&format!("'{part}' is not a dimension")))?;
        if d == 0 {
            return Err(bad("dimensions must be positive"));
        }
        shape.push(d);
    }
    if checked_numel(&shape).is_none() {
        return Err(OnnxError::ShapeOverflow {
            what: format!("--input-shape {s}"),
            shape: error::dims_i64(&shape),
        });
    }
    Ok((name.to_string(), shape))
}
