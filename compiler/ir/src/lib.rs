//! The vit IR: a typed SSA graph of tensor ops with static shapes, its MLIR-style text form
//! (printer and parser that round-trip), a verifier, and the reference interpreter that is the
//! numeric oracle for every later stage. This crate does no file I/O beyond what its callers
//! hand it and prints nothing.

pub mod error;
pub mod expand;
pub mod infer;
pub mod interp;
pub mod module;
pub mod op;
pub mod parse;
pub mod print;
pub mod types;
pub mod verify;
pub mod weights;

pub use error::IrError;
pub use module::{Constants, Module, Node, ValueId};
pub use op::{Activation, AttnLayout, BinaryOp, Op, ReduceOp, UnaryOp};
pub use types::{DType, Data, Tensor, TensorType};

pub use interp::run;
pub use parse::parse_module;
pub use print::print_module;
pub use verify::verify;
