//! The vitc runtime: what a program needs beside a compiled model. It holds the Rust mirror of
//! the ABI v1 types ([`abi`]), a thread pool that implements the ABI's `parallel_for`
//! ([`Pool`], also exported to C as `vitc_rt_*`, see `include/vitc.h`), and a safe loader that
//! opens a model's shared library and runs it ([`Library`], [`Workspace`]). It has no
//! dependencies and must keep none: its static library is linked into C programs. It never
//! prints; failures are [`RuntimeError`] values.
//!
//! ```no_run
//! use vitc_runtime::{Library, Pool};
//!
//! # fn main() -> Result<(), vitc_runtime::RuntimeError> {
//! let model = Library::open("model.so")?;
//! let pool = Pool::new(0)?; // all CPUs
//! let mut ws = model.workspace()?; // reuse across runs, one per thread
//! let image = vec![0.0f32; model.input_len(0)];
//! let mut logits = vec![0.0f32; model.output_len(0)];
//! model.run_with(&mut ws, &[&image], &mut [&mut logits], Some(&pool))?;
//! # Ok(())
//! # }
//! ```

pub mod abi;
mod capi;
mod error;
#[cfg(unix)]
mod library;
mod pool;

pub use abi::{VitcExec, VitcTaskFn, ABI_VERSION};
pub use capi::{vitc_rt_parallel_for, vitc_rt_pool_free, vitc_rt_pool_new, vitc_rt_pool_threads};
pub use error::RuntimeError;
#[cfg(unix)]
pub use library::{Library, Workspace, WORKSPACE_ALIGN};
pub use pool::Pool;
