//! Rust mirrors of the ABI v1 types and model function signatures (DESIGN.md, "The ABI
//! (version 1)"). Layouts must match `include/vitc.h` exactly; nothing here may change them
//! without bumping the ABI version.

use std::ffi::c_void;

/// The ABI version this runtime speaks; `P_abi_version()` must return it.
pub const ABI_VERSION: u32 = 1;

/// `vitc_task_fn`: one unit of parallel work, called as `task(task_ctx, index)`.
pub type VitcTaskFn = unsafe extern "C" fn(task_ctx: *mut c_void, index: u32);

/// The type of `vitc_exec.parallel_for`. The task is an `Option` because C may pass NULL.
pub type VitcParallelFor = unsafe extern "C" fn(
    pool: *mut c_void,
    count: u32,
    task: Option<VitcTaskFn>,
    task_ctx: *mut c_void,
);

/// `vitc_exec`: how a model may spread its work over threads. A null `parallel_for` (or a null
/// `*const VitcExec`) makes the model run on the calling thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VitcExec {
    pub parallel_for: Option<VitcParallelFor>,
    pub pool: *mut c_void,
}

// The model's exported functions, as resolved from a shared library.
pub(crate) type AbiVersionFn = unsafe extern "C" fn() -> u32;
pub(crate) type CountFn = unsafe extern "C" fn() -> u32;
pub(crate) type RankFn = unsafe extern "C" fn(u32) -> u32;
pub(crate) type ShapeFn = unsafe extern "C" fn(u32) -> *const i64;
pub(crate) type WorkspaceSizeFn = unsafe extern "C" fn() -> usize;
pub(crate) type RunFn = unsafe extern "C" fn(
    inputs: *const *const f32,
    outputs: *const *mut f32,
    workspace: *mut c_void,
    exec: *const VitcExec,
) -> i32;
