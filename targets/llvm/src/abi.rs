//! The constants of ABI v1 (docs/design.md, "The ABI (version 1)") that the generated code, the
//! C header and the runtime must agree on: the version number and `P_run`'s return codes. The
//! code that implements the ABI is in `driver`; this module only names the numbers.

/// What `P_abi_version()` returns.
pub const ABI_VERSION: u32 = 1;

/// `P_run` succeeded.
pub const OK: i32 = 0;
/// `inputs` is NULL (and the model has inputs).
pub const ERR_NULL_INPUTS: i32 = 1;
/// `outputs` is NULL.
pub const ERR_NULL_OUTPUTS: i32 = 2;
/// One of the input pointers is NULL.
pub const ERR_NULL_INPUT: i32 = 3;
/// One of the output pointers is NULL.
pub const ERR_NULL_OUTPUT: i32 = 4;
/// `workspace` is NULL although `P_workspace_size()` is not 0.
pub const ERR_NULL_WORKSPACE: i32 = 5;
/// `workspace` is not 64-byte aligned (checked only when `P_workspace_size()` is not 0).
pub const ERR_MISALIGNED_WORKSPACE: i32 = 6;

/// Alignment, in bytes, `P_run` requires of the workspace.
pub const WORKSPACE_ALIGN: usize = 64;

/// Every error code with its header macro suffix and meaning, in code order (for the header
/// and for the runtime's messages).
pub const ERRORS: [(i32, &str, &str); 6] = [
    (ERR_NULL_INPUTS, "ERR_NULL_INPUTS", "inputs is NULL"),
    (ERR_NULL_OUTPUTS, "ERR_NULL_OUTPUTS", "outputs is NULL"),
    (ERR_NULL_INPUT, "ERR_NULL_INPUT", "an input pointer is NULL"),
    (
        ERR_NULL_OUTPUT,
        "ERR_NULL_OUTPUT",
        "an output pointer is NULL",
    ),
    (
        ERR_NULL_WORKSPACE,
        "ERR_NULL_WORKSPACE",
        "workspace is NULL but the workspace size is not 0",
    ),
    (
        ERR_MISALIGNED_WORKSPACE,
        "ERR_MISALIGNED_WORKSPACE",
        "workspace is not 64-byte aligned",
    ),
];

/// A short description of a `P_run` return code.
pub fn describe(code: i32) -> &'static str {
    if code == OK {
        return "success";
    }
    ERRORS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, _, what)| *what)
        .unwrap_or("unknown error code")
}
