//! The MLIR-style printer (being written by a helper; placeholder signature).

use crate::module::Module;

/// Constants with at most this many elements print inline as `dense<…>`; larger ones print as
/// `@name` handles whose data comes from the model or the weights side file.
pub const INLINE_LIMIT: usize = 16;

/// Print a module in the text form.
pub fn print_module(m: &Module) -> String {
    let _ = m;
    String::new()
}
