//! The text-form parser (being written by a helper; placeholder signature).

use crate::error::IrError;
use crate::module::{Constants, Module};

/// Parse the text form; `@name` constant handles are looked up in `constants`.
pub fn parse_module(text: &str, constants: &Constants) -> Result<Module, IrError> {
    let _ = (text, constants);
    Err(IrError::Parse { line: 1, col: 1, msg: "not implemented yet".into() })
}
