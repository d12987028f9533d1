//! Loading and running a compiled model from Rust. [`Library`] opens the model's shared library
//! with `dlopen`, resolves the ABI v1 functions for its symbol prefix, checks the ABI version
//! and reads the tensor shapes once; [`Library::run`] then checks every slice against those
//! shapes before calling `P_run`, so a wrong call is an error, never an out-of-bounds write.
//! [`Workspace`] is the model's 64-byte aligned scratch memory, reusable across runs. This
//! module must not assume anything about a model beyond the ABI.

use std::alloc::{self, Layout};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::abi::{
    AbiVersionFn, CountFn, RankFn, RunFn, ShapeFn, VitcExec, WorkspaceSizeFn, ABI_VERSION,
};
use crate::error::RuntimeError;
use crate::pool::Pool;

/// The alignment, in bytes, that `P_run` requires of its workspace.
pub const WORKSPACE_ALIGN: usize = 64;

// glibc has these in libc proper (and std links libdl where it is separate), so declaring them
// costs no dependency.
extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlclose(handle: *mut c_void) -> c_int;
    fn dlerror() -> *const c_char;
}

/// Resolve every symbol at load time, so a broken library fails in `open`, not mid-run.
const RTLD_NOW: c_int = 2;

/// The text of the last `dl*` failure on this thread.
fn last_dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call.
    let text = unsafe { dlerror() };
    if text.is_null() {
        "unknown error".to_owned()
    } else {
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

/// A compiled model's shared library, opened and checked. `Send` and `Sync`: the ABI makes
/// `P_run` safe to call from several threads at once, each with its own [`Workspace`].
pub struct Library {
    handle: *mut c_void,
    path: PathBuf,
    prefix: String,
    run_fn: RunFn,
    input_shapes: Vec<Vec<usize>>,
    output_shapes: Vec<Vec<usize>>,
    input_lens: Vec<usize>,
    output_lens: Vec<usize>,
    workspace_size: usize,
}

// SAFETY: the handle is only used by Drop; the model functions are thread-safe by the ABI.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("prefix", &self.prefix)
            .field("input_shapes", &self.input_shapes)
            .field("output_shapes", &self.output_shapes)
            .field("workspace_size", &self.workspace_size)
            .finish()
    }
}

impl Library {
    /// Opens the model at `path` with the default symbol prefix `vitc`.
    pub fn open(path: impl AsRef<Path>) -> Result<Library, RuntimeError> {
        Library::open_with_prefix(path, "vitc")
    }

    /// Opens the model at `path` whose ABI functions are named `{prefix}_run` and so on. A path
    /// without a `/` means a file in the current directory, not a search of the library path.
    pub fn open_with_prefix(path: impl AsRef<Path>, prefix: &str) -> Result<Library, RuntimeError> {
        use std::os::unix::ffi::OsStrExt;
        let path = path.as_ref();
        let mut bytes = path.as_os_str().as_bytes().to_vec();
        if !bytes.contains(&b'/') {
            bytes.splice(0..0, *b"./");
        }
        let c_path =
            CString::new(bytes).map_err(|_| RuntimeError::BadName(path.display().to_string()))?;
        // SAFETY: c_path is a valid C string. Loading runs the library's initialisers; a vitc
        // model has none beyond the loader's relocations.
        let handle = unsafe { dlopen(c_path.as_ptr(), RTLD_NOW) };
        if handle.is_null() {
            return Err(RuntimeError::Open {
                path: path.to_owned(),
                reason: last_dl_error(),
            });
        }
        // From here on, dropping `lib` closes the handle, also on the error paths.
        let mut lib = Library {
            handle,
            path: path.to_owned(),
            prefix: prefix.to_owned(),
            run_fn: missing_run,
            input_shapes: Vec::new(),
            output_shapes: Vec::new(),
            input_lens: Vec::new(),
            output_lens: Vec::new(),
            workspace_size: 0,
        };
        // SAFETY (all `symbol` calls): the types are the ABI v1 signatures of these names.
        unsafe {
            let abi_version: AbiVersionFn = lib.symbol("abi_version")?;
            let found = abi_version();
            if found != ABI_VERSION {
                return Err(RuntimeError::AbiVersion {
                    found,
                    expected: ABI_VERSION,
                });
            }
            let num_inputs: CountFn = lib.symbol("num_inputs")?;
            let num_outputs: CountFn = lib.symbol("num_outputs")?;
            let input_rank: RankFn = lib.symbol("input_rank")?;
            let input_shape: ShapeFn = lib.symbol("input_shape")?;
            let output_rank: RankFn = lib.symbol("output_rank")?;
            let output_shape: ShapeFn = lib.symbol("output_shape")?;
            let workspace_size: WorkspaceSizeFn = lib.symbol("workspace_size")?;
            lib.run_fn = lib.symbol("run")?;
            lib.input_shapes = read_shapes("input", num_inputs(), input_rank, input_shape)?;
            lib.output_shapes = read_shapes("output", num_outputs(), output_rank, output_shape)?;
            lib.workspace_size = workspace_size();
        }
        lib.input_lens = lib
            .input_shapes
            .iter()
            .map(|s| s.iter().product())
            .collect();
        lib.output_lens = lib
            .output_shapes
            .iter()
            .map(|s| s.iter().product())
            .collect();
        Ok(lib)
    }

    /// Resolves `{prefix}_{name}` as a function of type `F`.
    ///
    /// # Safety
    /// `F` must be the function pointer type the symbol really has.
    unsafe fn symbol<F: Copy>(&self, name: &str) -> Result<F, RuntimeError> {
        let symbol = format!("{}_{name}", self.prefix);
        let c_symbol =
            CString::new(symbol.clone()).map_err(|_| RuntimeError::BadName(symbol.clone()))?;
        // Clear any stale error so that the one read below belongs to this dlsym.
        unsafe { dlerror() };
        let ptr = unsafe { dlsym(self.handle, c_symbol.as_ptr()) };
        if ptr.is_null() {
            return Err(RuntimeError::MissingSymbol {
                symbol,
                reason: last_dl_error(),
            });
        }
        debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: F is a function pointer of the symbol's type, per this fn's contract.
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
    }

    /// The file this library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The symbol prefix (`vitc` unless the model was compiled with `--prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn num_inputs(&self) -> usize {
        self.input_shapes.len()
    }

    pub fn num_outputs(&self) -> usize {
        self.output_shapes.len()
    }

    /// Input `i`'s shape, in the ONNX layout. Panics if `i >= num_inputs()`.
    pub fn input_shape(&self, i: usize) -> &[usize] {
        &self.input_shapes[i]
    }

    /// Output `i`'s shape, in the ONNX layout. Panics if `i >= num_outputs()`.
    pub fn output_shape(&self, i: usize) -> &[usize] {
        &self.output_shapes[i]
    }

    /// Input `i`'s element count. Panics if `i >= num_inputs()`.
    pub fn input_len(&self, i: usize) -> usize {
        self.input_lens[i]
    }

    /// Output `i`'s element count. Panics if `i >= num_outputs()`.
    pub fn output_len(&self, i: usize) -> usize {
        self.output_lens[i]
    }

    /// Bytes of workspace `P_run` needs.
    pub fn workspace_size(&self) -> usize {
        self.workspace_size
    }

    /// A fresh workspace big enough for this model, to reuse across [`Library::run_with`] calls.
    /// One per thread that runs the model at the same time.
    pub fn workspace(&self) -> Result<Workspace, RuntimeError> {
        Workspace::new(self.workspace_size)
    }

    /// Runs the model once with a workspace allocated for this call. `pool`: the threads to
    /// use, or `None` for the calling thread only.
    pub fn run(
        &self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        pool: Option<&Pool>,
    ) -> Result<(), RuntimeError> {
        let mut ws = self.workspace()?;
        self.run_with(&mut ws, inputs, outputs, pool)
    }

    /// Runs the model once in `ws`, which must hold at least [`Library::workspace_size`] bytes.
    /// Checks the number and length of the slices against the model's shapes first.
    pub fn run_with(
        &self,
        ws: &mut Workspace,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        pool: Option<&Pool>,
    ) -> Result<(), RuntimeError> {
        check_tensors("input", &self.input_lens, inputs.iter().map(|s| s.len()))?;
        check_tensors("output", &self.output_lens, outputs.iter().map(|s| s.len()))?;
        if ws.len() < self.workspace_size {
            return Err(RuntimeError::WorkspaceTooSmall {
                needed: self.workspace_size,
                found: ws.len(),
            });
        }
        let input_ptrs: Vec<*const f32> = inputs.iter().map(|s| s.as_ptr()).collect();
        let output_ptrs: Vec<*mut f32> = outputs.iter_mut().map(|s| s.as_mut_ptr()).collect();
        let exec: Option<VitcExec> = pool.map(Pool::exec);
        let exec_ptr = exec
            .as_ref()
            .map_or(std::ptr::null(), |e| e as *const VitcExec);
        // SAFETY: every pointer is valid for the length the model's shapes say (checked above),
        // the workspace is aligned and large enough, and the pool outlives the call.
        let code = unsafe {
            (self.run_fn)(
                input_ptrs.as_ptr(),
                output_ptrs.as_ptr(),
                ws.as_mut_ptr().cast(),
                exec_ptr,
            )
        };
        if code == 0 {
            Ok(())
        } else {
            Err(RuntimeError::Run { code })
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and nothing borrowed from the library outlives
        // `self` (every borrow of `self` has ended).
        unsafe { dlclose(self.handle) };
    }
}

/// Placeholder until `P_run` is resolved; never called.
unsafe extern "C" fn missing_run(
    _: *const *const f32,
    _: *const *mut f32,
    _: *mut c_void,
    _: *const VitcExec,
) -> i32 {
    -1
}

/// Reads the shapes of all inputs or outputs through the library's rank and shape functions.
///
/// # Safety
/// The functions must be the model's ABI functions.
unsafe fn read_shapes(
    tensor: &'static str,
    count: u32,
    rank_fn: RankFn,
    shape_fn: ShapeFn,
) -> Result<Vec<Vec<usize>>, RuntimeError> {
    let mut shapes = Vec::with_capacity(count as usize);
    for index in 0..count {
        let bad = |reason: String| RuntimeError::BadShape {
            tensor,
            index,
            reason,
        };
        let rank = unsafe { rank_fn(index) } as usize;
        let dims: &[i64] = if rank == 0 {
            &[]
        } else {
            let ptr = unsafe { shape_fn(index) };
            if ptr.is_null() {
                return Err(bad(format!("rank {rank} but a null shape pointer")));
            }
            // SAFETY: the ABI says the shape array holds `rank` dims and lives in the library.
            unsafe { std::slice::from_raw_parts(ptr, rank) }
        };
        let mut shape = Vec::with_capacity(rank);
        for &dim in dims {
            shape.push(
                usize::try_from(dim).map_err(|_| bad(format!("negative dimension in {dims:?}")))?,
            );
        }
        shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n.checked_mul(std::mem::size_of::<f32>()).is_some())
            .ok_or_else(|| bad(format!("{dims:?} has too many elements")))?;
        shapes.push(shape);
    }
    Ok(shapes)
}

fn check_tensors(
    tensor: &'static str,
    expected: &[usize],
    found: impl ExactSizeIterator<Item = usize>,
) -> Result<(), RuntimeError> {
    if found.len() != expected.len() {
        return Err(RuntimeError::TensorCount {
            tensor,
            expected: expected.len(),
            found: found.len(),
        });
    }
    for (index, (&expected, found)) in expected.iter().zip(found).enumerate() {
        if expected != found {
            return Err(RuntimeError::TensorLength {
                tensor,
                index,
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// A model's scratch memory: zeroed on creation, aligned to [`WORKSPACE_ALIGN`] bytes, never
/// shorter than one alignment unit (so `P_run` never sees a null workspace, even when the
/// model needs none). Reuse one per thread across runs.
pub struct Workspace {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: plain owned memory.
unsafe impl Send for Workspace {}
unsafe impl Sync for Workspace {}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("len", &self.len).finish()
    }
}

impl Workspace {
    /// Allocates `bytes` bytes (rounded up to whole alignment units).
    pub fn new(bytes: usize) -> Result<Workspace, RuntimeError> {
        let oom = RuntimeError::OutOfMemory { bytes };
        let size = bytes
            .max(1)
            .checked_next_multiple_of(WORKSPACE_ALIGN)
            .ok_or(oom)?;
        let layout = Layout::from_size_align(size, WORKSPACE_ALIGN)
            .map_err(|_| RuntimeError::OutOfMemory { bytes })?;
        // SAFETY: size is non-zero.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })
            .ok_or(RuntimeError::OutOfMemory { bytes })?;
        Ok(Workspace {
            ptr,
            len: size,
            layout,
        })
    }

    /// Usable bytes (the requested size rounded up to [`WORKSPACE_ALIGN`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a workspace holds at least one alignment unit.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the memory, aligned to [`WORKSPACE_ALIGN`].
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_is_aligned_and_never_empty() {
        for bytes in [0, 1, 63, 64, 65, 1 << 20] {
            let mut ws = Workspace::new(bytes).unwrap();
            assert_eq!(ws.as_mut_ptr() as usize % WORKSPACE_ALIGN, 0);
            assert!(ws.len() >= bytes.max(1) && ws.len() % WORKSPACE_ALIGN == 0);
            assert!(!ws.is_empty());
        }
        assert!(matches!(
            Workspace::new(usize::MAX),
            Err(RuntimeError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn missing_library_reports_dlerror() {
        let err = Library::open("/nonexistent/model.so").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RuntimeError::Open { .. }));
        assert!(
            text.contains("/nonexistent/model.so") && text.contains("No such file"),
            "{text}"
        );
    }
}
