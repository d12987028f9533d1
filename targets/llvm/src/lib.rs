//! The LLVM backend: lowers a verified vit IR module to freestanding native code that
//! implements ABI v1 (docs/design.md), for a target named on the command line — never the
//! compiling machine's features unless the user asked for `native`.
//!
//! Layout: `target` (the target table), `plan` (the static memory plan), `driver` (module
//! structure, ABI functions, tasks and `parallel_for`), `kernels` (one generator per op family,
//! sharing the `Cx` interface), `math` (exp/erf/tanh/... as polynomials in IR, so the code calls
//! nothing outside itself), `link` (objects, archives, shared libraries), `header` (the C
//! header), `abi` (the ABI's numbers), `error` (what can go wrong).

pub mod abi;
pub mod driver;
pub mod error;
pub mod header;
pub mod kernels;
pub mod link;
pub mod math;
pub mod plan;
pub mod target;

pub use driver::{compile, CompileOptions, Compiled};
pub use error::CodegenError;
pub use kernels::Precision;
pub use link::write_output;
pub use target::{target_names, TargetSpec};
