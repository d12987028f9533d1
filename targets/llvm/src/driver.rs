//! The driver: turns a verified vit IR module into one LLVM module that implements ABI v1
//! (docs/design.md, "The ABI (version 1)"), optimises it and generates machine code.
//!
//! Structure of the generated code, for prefix `P`:
//! - one private read-only global per constant and layout (64-byte aligned, little-endian): the
//!   tensor's bytes as they are, or packed at compile time into the layout its kernel streams
//!   (`kernels::packing`, e.g. GEMM weights as microkernel panels);
//! - per compute node, an internal task function `P_node{i}(ctx, task)` that finds its operand,
//!   result and scratch pointers through the run context `{inputs, outputs, workspace}` at the
//!   offsets of the memory plan (`plan`) and calls the kernel body for one task. Nodes with the
//!   same op, operand types and buffer facts share one body (`P_kernel{j}.OP`), emitted once by
//!   `kernels::emit_node`: the twelve layers of a ViT compile to one copy of each kernel;
//! - the exported ABI functions `P_abi_version … P_run`; `P_run` checks its arguments, builds the
//!   context on its stack and runs the nodes in order, each through `exec->parallel_for` when
//!   the caller gave one and the node has several tasks, else in a loop on the calling thread;
//! - private `memcpy`/`memset`/`memmove`, because LLVM may lower its memory intrinsics to calls
//!   to them and the library must call nothing outside itself.
//!
//! A profiling build (`CompileOptions::profile`) also reads the cycle counter
//! (`llvm.readcyclecounter`) before the first node and after each, into a table of
//! `steps + 1` u64 at the end of the workspace ([`Compiled::profile`] says where); a normal build
//! has no trace of it.
//!
//! The driver never decides how an op is computed (that is `kernels`) nor where a value lives
//! (that is `plan`); it only wires the two together and owns the ABI.

use crate::abi;
use crate::error::CodegenError;
use crate::header::{self, HeaderInfo};
use crate::kernels::{self, Cx, KernelError, KernelTarget, Packing, Precision};
use crate::plan::{self, Loc, NodeWork, Plan, Step};
use crate::target::{self, TargetSpec};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::{Linkage, Module as LlvmModule};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;
use inkwell::types::{BasicType, IntType, PointerType, StructType};
use inkwell::values::{BasicValue, FunctionValue, GlobalValue, IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};
use std::cell::RefCell;
use std::collections::HashMap;
use vitc_ir::{DType, Module, Node, TensorType, ValueId};

/// How to compile a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// A name from [`target::target_names`] (`x86_64-avx2`, `x86_64-avx512`, `native` …).
    pub target: String,
    /// The symbol prefix `P` of the ABI functions; a C identifier. Default `vitc`.
    pub prefix: String,
    /// LLVM optimisation level, 0..=3. Default 3.
    pub opt_level: u8,
    /// Record a cycle-counter timestamp around every node into the workspace (`vitc profile`).
    /// Default false.
    pub profile: bool,
    /// How `vit.linear`'s constant weights are stored (`--precision`); products accumulate in
    /// f32 whatever it is. Default f32. bf16 needs an AVX512-BF16 target, fp16 an aarch64
    /// target with FEAT_FP16 (`TargetSpec::supports_precision`).
    pub precision: Precision,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            target: "x86_64-avx2".into(),
            prefix: "vitc".into(),
            opt_level: 3,
            profile: false,
            precision: Precision::F32,
        }
    }
}

/// A compiled model: the optimised LLVM module (kept as bitcode, so this owns no LLVM context),
/// its object code and its C header.
#[derive(Clone)]
pub struct Compiled {
    target: TargetSpec,
    prefix: String,
    opt_level: u8,
    bitcode: Vec<u8>,
    pub(crate) object: Vec<u8>,
    header: String,
    weights_bytes: usize,
    workspace_bytes: usize,
    profile: Option<ProfileLayout>,
}

/// Where a profiling build leaves its timestamps: `steps.len() + 1` little-endian u64 cycle
/// counts at byte `offset` of the workspace, written by every `P_run` — entry `i` is read just
/// before step `i` runs, the last one after the last step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileLayout {
    pub offset: usize,
    /// The node each step computes, in run order.
    pub steps: Vec<ValueId>,
    /// Tasks each step was split into.
    pub tasks: Vec<u32>,
}

impl std::fmt::Debug for Compiled {
    // The byte buffers hold the weights: print their sizes, not their contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("opt_level", &self.opt_level)
            .field("bitcode_bytes", &self.bitcode.len())
            .field("object_bytes", &self.object.len())
            .field("weights_bytes", &self.weights_bytes)
            .field("workspace_bytes", &self.workspace_bytes)
            .finish_non_exhaustive()
    }
}

impl Compiled {
    /// The optimised LLVM IR as text (`--emit llvm`).
    pub fn llvm_ir(&self) -> String {
        self.with_module(|m| Ok(m.print_to_string().to_string()))
            .unwrap_or_else(|e| format!("; vitc: could not re-read the optimised module: {e}\n"))
    }

    /// Target assembly (`--emit asm`). Generated on demand from the optimised module.
    pub fn assembly(&self) -> Result<Vec<u8>, CodegenError> {
        let tm = self.target.machine(self.opt_level)?;
        self.with_module(|m| {
            tm.write_to_memory_buffer(m, FileType::Assembly)
                .map(|b| b.as_slice().to_vec())
                .map_err(|e| CodegenError::Llvm(format!("assembly generation: {e}")))
        })
    }

    /// The ELF relocatable object (`.o`).
    pub fn object(&self) -> Result<Vec<u8>, CodegenError> {
        Ok(self.object.clone())
    }

    /// The C header (`model.h`) declaring the ABI functions with this model's prefix and facts.
    pub fn header(&self) -> String {
        self.header.clone()
    }

    /// Bytes of constants inside the library.
    pub fn weights_bytes(&self) -> usize {
        self.weights_bytes
    }

    /// Bytes of workspace `P_run` needs (what `P_workspace_size()` returns).
    pub fn workspace_bytes(&self) -> usize {
        self.workspace_bytes
    }

    /// The resolved target (for `native`: the host CPU and features found at compile time).
    pub fn target(&self) -> &TargetSpec {
        &self.target
    }

    /// The symbol prefix of the ABI functions.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// For a profiling build, where its timestamps are.
    pub fn profile(&self) -> Option<&ProfileLayout> {
        self.profile.as_ref()
    }

    fn with_module<T>(
        &self,
        f: impl FnOnce(&LlvmModule<'_>) -> Result<T, CodegenError>,
    ) -> Result<T, CodegenError> {
        let ctx = Context::create();
        let buf = MemoryBuffer::create_from_memory_range_copy(&self.bitcode, &self.prefix);
        let module = LlvmModule::parse_bitcode_from_buffer(&buf, &ctx)
            .map_err(|e| CodegenError::Llvm(format!("reading back bitcode: {e}")))?;
        f(&module)
    }
}

/// Compile a module for `opts.target`. The module is verified first; graph inputs and outputs
/// must be float32 (ABI v1). Errors name the node that could not be compiled.
pub fn compile(m: &Module, opts: &CompileOptions) -> Result<Compiled, CodegenError> {
    compile_with(m, opts, &KERNELS)
}

/// The kernel generator interface (`kernels`) as values, so that the driver's own tests can
/// exercise tasks, scratch and `parallel_for` with a stand-in generator. Production code always
/// uses [`KERNELS`].
#[derive(Clone, Copy)]
pub(crate) struct KernelSet {
    pub task_count: fn(&Node, &[&TensorType], &KernelTarget) -> u32,
    pub scratch_bytes: fn(&Node, &[&TensorType], &KernelTarget) -> usize,
    pub packing: fn(&Node, &[&TensorType], usize, &KernelTarget) -> Option<Packing>,
    #[allow(clippy::type_complexity)]
    pub emit_node: for<'ctx> fn(
        &mut Cx<'_, 'ctx>,
        &Node,
        &[&TensorType],
        &[PointerValue<'ctx>],
        PointerValue<'ctx>,
        PointerValue<'ctx>,
        IntValue<'ctx>,
    ) -> Result<(), KernelError>,
}

/// The real kernel generators.
pub(crate) const KERNELS: KernelSet = KernelSet {
    task_count: kernels::task_count,
    scratch_bytes: kernels::scratch_bytes,
    packing: kernels::packing,
    emit_node: kernels::emit_node,
};

pub(crate) fn compile_with(
    m: &Module,
    opts: &CompileOptions,
    ks: &KernelSet,
) -> Result<Compiled, CodegenError> {
    check_prefix(&opts.prefix)?;
    if opts.opt_level > 3 {
        return Err(CodegenError::InvalidOption(format!(
            "optimisation level {} (use 0 to 3)",
            opts.opt_level
        )));
    }
    vitc_ir::verify(m)?;
    check_io_types(m)?;
    let spec = target::resolve(&opts.target)?;
    let tm = spec.machine(opts.opt_level)?;
    let kt = spec.kernel_target_with(opts.precision)?;

    let mut plan = plan::plan(m, |v| {
        let n = m.node(v);
        let tys = operand_types(m, n);
        NodeWork {
            tasks: (ks.task_count)(n, &tys, &kt),
            scratch_per_task: (ks.scratch_bytes)(n, &tys, &kt),
        }
    })?;
    // The profiling build's timestamps go after everything the plan placed.
    let profile = if opts.profile {
        let offset = plan.workspace_bytes;
        let bytes = (plan.steps.len() + 1) * 8;
        plan.workspace_bytes = (offset + bytes).next_multiple_of(plan::ALIGN);
        Some(ProfileLayout {
            offset,
            steps: plan.steps.iter().map(|s| s.node).collect(),
            tasks: plan.steps.iter().map(|s| s.work.tasks).collect(),
        })
    } else {
        None
    };

    let ctx = Context::create();
    let name = if m.name.is_empty() {
        &opts.prefix
    } else {
        &m.name
    };
    let module = ctx.create_module(name);
    module.set_triple(&tm.get_triple());
    let target_data = tm.get_target_data();
    module.set_data_layout(&target_data.get_data_layout());

    let g = Gen {
        ctx: &ctx,
        module: &module,
        builder: ctx.create_builder(),
        m,
        plan: &plan,
        spec: &spec,
        prefix: &opts.prefix,
        ptr: ctx.ptr_type(AddressSpace::default()),
        i32: ctx.i32_type(),
        i64: ctx.i64_type(),
        size: ctx.ptr_sized_int_type(&target_data, None),
        run_ctx: ctx.struct_type(
            &[
                ctx.ptr_type(AddressSpace::default()).into(),
                ctx.ptr_type(AddressSpace::default()).into(),
                ctx.ptr_type(AddressSpace::default()).into(),
            ],
            false,
        ),
        constants: RefCell::new(HashMap::new()),
        bodies: RefCell::new(HashMap::new()),
        kernels: ks,
        kt,
        weights_bytes: std::cell::Cell::new(0),
        profile: profile.as_ref().map(|p| p.offset),
    };
    let mem_fns = g.emit_mem_functions()?;
    let mut node_fns = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        node_fns.push(g.emit_node_fn(step)?);
    }
    g.finish_bodies();
    g.emit_abi(&node_fns)?;
    g.emit_compiler_used(&mem_fns);
    g.seal()?;
    let weights_bytes = g.weights_bytes.get();

    // Verify always, not only in debug builds: LLVM aborts the process on invalid IR instead of
    // returning an error, and a kernel bug must not take the caller down.
    module
        .verify()
        .map_err(|e| CodegenError::Llvm(format!("generated IR does not verify: {e}")))?;
    module
        .run_passes(
            &format!("default<O{}>", opts.opt_level),
            &tm,
            PassBuilderOptions::create(),
        )
        .map_err(|e| CodegenError::Llvm(format!("optimisation: {e}")))?;
    let bitcode = module.write_bitcode_to_memory().as_slice().to_vec();
    let object = tm
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| CodegenError::Llvm(format!("object generation: {e}")))?
        .as_slice()
        .to_vec();

    let io = |list: &[(String, ValueId)]| -> Vec<(String, Vec<usize>)> {
        list.iter()
            .map(|(name, v)| (name.clone(), m.ty(*v).shape.clone()))
            .collect()
    };
    let header = header::render(&HeaderInfo {
        model: m.name.clone(),
        prefix: opts.prefix.clone(),
        target: spec.name.clone(),
        inputs: io(&m.inputs),
        outputs: io(&m.outputs),
        workspace_bytes: plan.workspace_bytes,
        weights_bytes,
    });
    Ok(Compiled {
        target: spec,
        prefix: opts.prefix.clone(),
        opt_level: opts.opt_level,
        bitcode,
        object,
        header,
        weights_bytes,
        workspace_bytes: plan.workspace_bytes,
        profile,
    })
}

/// The prefix becomes C symbol and macro names, so it must be a C identifier.
fn check_prefix(p: &str) -> Result<(), CodegenError> {
    let mut chars = p.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CodegenError::InvalidOption(format!(
            "prefix `{p}` is not a C identifier (letters, digits and _, not starting with a digit)"
        )))
    }
}

fn check_io_types(m: &Module) -> Result<(), CodegenError> {
    for (kind, list) in [("input", &m.inputs), ("output", &m.outputs)] {
        for (name, v) in list {
            let ty = m.ty(*v);
            if ty.dtype != DType::F32 {
                return Err(CodegenError::Unsupported {
                    node: name.clone(),
                    op: format!("graph {kind}"),
                    msg: format!("ABI v1 passes float32 tensors only, this {kind} is {ty}"),
                });
            }
        }
    }
    Ok(())
}

fn operand_types<'m>(m: &'m Module, n: &Node) -> Vec<&'m TensorType> {
    n.inputs.iter().map(|&v| m.ty(v)).collect()
}

fn node_label(m: &Module, v: ValueId) -> String {
    let n = m.node(v);
    if n.name.is_empty() {
        format!("{v}")
    } else {
        format!("{v} ({})", n.name)
    }
}

/// Field numbers of the run context every task function receives.
const CTX_INPUTS: u32 = 0;
const CTX_OUTPUTS: u32 = 1;
const CTX_WORKSPACE: u32 = 2;

/// Code generation state for one module.
struct Gen<'a, 'ctx> {
    ctx: &'ctx Context,
    module: &'a LlvmModule<'ctx>,
    builder: Builder<'ctx>,
    m: &'a Module,
    plan: &'a Plan,
    spec: &'a TargetSpec,
    prefix: &'a str,
    ptr: PointerType<'ctx>,
    i32: IntType<'ctx>,
    i64: IntType<'ctx>,
    /// `size_t`.
    size: IntType<'ctx>,
    /// `{ const float *const *inputs; float *const *outputs; void *workspace; }`
    run_ctx: StructType<'ctx>,
    /// (constant name, layout) → its global, emitted on first use.
    constants: RefCell<HashMap<(String, Option<Packing>), GlobalValue<'ctx>>>,
    /// Kernel signature → the shared body and how many nodes call it.
    bodies: RefCell<HashMap<String, (FunctionValue<'ctx>, usize)>>,
    kernels: &'a KernelSet,
    kt: KernelTarget,
    /// Bytes of the constant globals emitted so far.
    weights_bytes: std::cell::Cell<usize>,
    /// Workspace offset of the profiling timestamps, in a profiling build.
    profile: Option<usize>,
}

impl<'a, 'ctx> Gen<'a, 'ctx> {
    /// Attributes every function gets: no unwinding (the code never throws, and this drops the
    /// unwind tables), and the target CPU and features, so the IR text is self-describing.
    fn add_fn_attrs(&self, f: FunctionValue<'ctx>) {
        let nounwind = Attribute::get_named_enum_kind_id("nounwind");
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx.create_enum_attribute(nounwind, 0),
        );
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx
                .create_string_attribute("target-cpu", &self.spec.cpu),
        );
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx
                .create_string_attribute("target-features", &self.spec.features),
        );
        if let Some(tune) = &self.spec.tune_cpu {
            // `aarch64-neon:cortex-a76`: that core's scheduling, the target's features only.
            let a = self.ctx.create_string_attribute("tune-cpu", tune);
            f.add_attribute(AttributeLoc::Function, a);
        }
    }

    /// The global holding constant `name` in `packing`'s layout (as it is for `None`), emitted
    /// on first use.
    fn const_global(
        &self,
        name: &str,
        packing: Option<&Packing>,
    ) -> Result<GlobalValue<'ctx>, CodegenError> {
        let key = (name.to_string(), packing.cloned());
        if let Some(g) = self.constants.borrow().get(&key) {
            return Ok(*g);
        }
        let t = self.m.constants.get(name).ok_or_else(|| {
            CodegenError::InvalidModule(vitc_ir::IrError::MissingConstant(name.to_string()))
        })?;
        let bytes = match packing {
            None => t.data.to_le_bytes(),
            Some(p) => p.apply(t).ok_or_else(|| {
                CodegenError::Llvm(format!("constant @{name} does not fit the layout {p:?}"))
            })?,
        };
        let k = self.constants.borrow().len();
        let init = self.ctx.const_string(&bytes, false);
        let gv = self
            .module
            .add_global(init.get_type(), None, &format!("{}.w{k}", self.prefix));
        gv.set_initializer(&init);
        gv.set_constant(true);
        gv.set_linkage(Linkage::Private);
        gv.set_unnamed_addr(true);
        gv.set_alignment(plan::ALIGN as u32);
        self.constants.borrow_mut().insert(key, gv);
        self.weights_bytes
            .set(self.weights_bytes.get() + bytes.len());
        Ok(gv)
    }

    fn const_i64(&self, x: usize) -> IntValue<'ctx> {
        self.i64.const_int(x as u64, false)
    }

    /// Pointer to field `field` of the run context, loaded.
    fn ctx_field(
        &self,
        run_ctx: PointerValue<'ctx>,
        field: u32,
    ) -> Result<PointerValue<'ctx>, CodegenError> {
        let p = self
            .builder
            .build_struct_gep(self.run_ctx, run_ctx, field, "ctx.field")?;
        Ok(self
            .builder
            .build_load(self.ptr, p, "ctx.base")?
            .into_pointer_value())
    }

    /// Element `i` of an array of pointers, loaded.
    fn load_nth_ptr(
        &self,
        arr: PointerValue<'ctx>,
        i: usize,
    ) -> Result<PointerValue<'ctx>, CodegenError> {
        // SAFETY (for inkwell): an in-bounds GEP into the caller's pointer array; the index is
        // below the array's documented length.
        let p = unsafe {
            self.builder
                .build_in_bounds_gep(self.ptr, arr, &[self.const_i64(i)], "slot")?
        };
        Ok(self
            .builder
            .build_load(self.ptr, p, "buf")?
            .into_pointer_value())
    }

    /// The address of a value, inside a function that has the run context at `run_ctx`.
    fn ptr_of(
        &self,
        loc: &Loc,
        run_ctx: PointerValue<'ctx>,
        v: ValueId,
    ) -> Result<PointerValue<'ctx>, CodegenError> {
        match loc {
            Loc::Input(k) => {
                let arr = self.ctx_field(run_ctx, CTX_INPUTS)?;
                self.load_nth_ptr(arr, *k)
            }
            Loc::Output(j) => {
                let arr = self.ctx_field(run_ctx, CTX_OUTPUTS)?;
                self.load_nth_ptr(arr, *j)
            }
            Loc::Workspace(off) => {
                let ws = self.ctx_field(run_ctx, CTX_WORKSPACE)?;
                self.byte_offset(ws, self.const_i64(*off))
            }
            Loc::Constant(name) => Ok(self.const_global(name, None)?.as_pointer_value()),
            Loc::Unused => Err(CodegenError::Llvm(format!(
                "{} is used but the memory plan gave it no place",
                node_label(self.m, v)
            ))),
        }
    }

    fn byte_offset(
        &self,
        base: PointerValue<'ctx>,
        off: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, CodegenError> {
        // SAFETY (for inkwell): offsets come from the memory plan and stay inside the workspace
        // the caller provides (P_workspace_size bytes).
        Ok(unsafe {
            self.builder
                .build_in_bounds_gep(self.ctx.i8_type(), base, &[off], "at")?
        })
    }

    /// The task function of one node, `void P_node{i}(ctx *, uint32_t task)`: it finds the
    /// node's buffers and calls the kernel body `body(ins…, out, scratch, task)`.
    ///
    /// The body is a function of its own so that its pointer parameters can say what the plan
    /// guarantees — the result and the scratch overlap nothing else (`noalias`; operands are
    /// only read, so they may alias each other), workspace and constant buffers are 64-byte
    /// aligned — which lets LLVM vectorise kernels without run-time overlap checks. Nodes whose
    /// bodies would be the same code (same op and attributes, operand and result types, packed
    /// operands, alignments and scratch) share one; see [`Self::finish_bodies`].
    fn emit_node_fn(&self, step: &Step) -> Result<FunctionValue<'ctx>, CodegenError> {
        let v = step.node;
        let n = self.m.node(v);
        let name = format!("{}_node{}", self.prefix, v.0);
        let tys = operand_types(self.m, n);
        let locs: Vec<&Loc> = n
            .inputs
            .iter()
            .chain([&v])
            .map(|u| &self.plan.locs[u.0])
            .collect();
        // Constant operands the kernel wants in another layout.
        let packings: Vec<Option<Packing>> = (0..n.inputs.len())
            .map(|i| match locs[i] {
                Loc::Constant(_) => (self.kernels.packing)(n, &tys, i, &self.kt),
                _ => None,
            })
            .collect();
        let packed: Vec<bool> = packings.iter().map(Option::is_some).collect();
        let aligns: Vec<u64> = locs
            .iter()
            .map(|loc| match loc {
                Loc::Workspace(_) | Loc::Constant(_) => plan::ALIGN as u64,
                _ => 4,
            })
            .collect();
        let key = format!(
            "{:?} {:?} -> {:?} packed {packed:?} align {aligns:?} scratch {}",
            n.op,
            tys,
            n.ty,
            step.scratch.is_some()
        );
        let existing = self.bodies.borrow().get(&key).map(|(f, _)| *f);
        let body = match existing {
            Some(f) => {
                if let Some(e) = self.bodies.borrow_mut().get_mut(&key) {
                    e.1 += 1;
                }
                f
            }
            None => {
                let f = self.emit_body(step, &tys, &packed, &aligns)?;
                self.bodies.borrow_mut().insert(key, (f, 1));
                f
            }
        };

        // The task function.
        let fn_ty = self
            .ctx
            .void_type()
            .fn_type(&[self.ptr.into(), self.i32.into()], false);
        let f = self
            .module
            .add_function(&name, fn_ty, Some(Linkage::Internal));
        self.add_fn_attrs(f);
        // P_run calls a task function once per node (or hands it to parallel_for); inlining it
        // into P_run's serial path too would only duplicate the kernel's code.
        f.add_attribute(AttributeLoc::Function, self.enum_attr("noinline", 0));
        // Kernels may mark their body `no-builtins`; LLVM inlines such a function only into a
        // caller that is `no-builtins` too, and the task function has no loops to lose by it.
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx.create_string_attribute("no-builtins", ""),
        );
        self.builder
            .position_at_end(self.ctx.append_basic_block(f, "entry"));
        let run_ctx = Self::param_ptr(f, 0)?;
        let task = Self::param_int(f, 1)?;
        let mut args: Vec<inkwell::values::BasicMetadataValueEnum> = Vec::new();
        for (k, (&u, loc)) in n.inputs.iter().chain([&v]).zip(&locs).enumerate() {
            let p = match (loc, packings.get(k).and_then(Option::as_ref)) {
                (Loc::Constant(c), Some(pk)) => self.const_global(c, Some(pk))?.as_pointer_value(),
                _ => self.ptr_of(loc, run_ctx, u)?,
            };
            args.push(p.into());
        }
        let scratch = match step.scratch {
            Some(sc) => {
                let ws = self.ctx_field(run_ctx, CTX_WORKSPACE)?;
                let t = self.builder.build_int_z_extend(task, self.i64, "task64")?;
                let rel =
                    self.builder
                        .build_int_mul(t, self.const_i64(sc.stride), "scratch.rel")?;
                let off =
                    self.builder
                        .build_int_add(rel, self.const_i64(sc.offset), "scratch.off")?;
                self.byte_offset(ws, off)?
            }
            None => self.ptr.const_null(),
        };
        args.push(scratch.into());
        args.push(task.into());
        self.builder.build_call(body, &args, "")?;
        self.builder.build_return(None)?;
        Ok(f)
    }

    fn enum_attr(&self, name: &str, val: u64) -> Attribute {
        self.ctx
            .create_enum_attribute(Attribute::get_named_enum_kind_id(name), val)
    }

    /// The kernel body of `step`'s node: `void body(in_0 … in_{k-1}, out, scratch, task)`.
    fn emit_body(
        &self,
        step: &Step,
        tys: &[&TensorType],
        packed: &[bool],
        aligns: &[u64],
    ) -> Result<FunctionValue<'ctx>, CodegenError> {
        let v = step.node;
        let n = self.m.node(v);
        let arity = n.inputs.len() as u32;
        let mut params: Vec<inkwell::types::BasicMetadataTypeEnum> =
            vec![self.ptr.into(); n.inputs.len() + 2];
        params.push(self.i32.into());
        let body_ty = self.ctx.void_type().fn_type(&params, false);
        let j = self.bodies.borrow().len();
        let op = n.op.name().replace('.', "_");
        let body = self.module.add_function(
            &format!("{}_kernel{j}.{op}", self.prefix),
            body_ty,
            Some(Linkage::Internal),
        );
        self.add_fn_attrs(body);
        for (i, &align) in aligns.iter().enumerate() {
            let i = i as u32;
            if i == arity {
                body.add_attribute(AttributeLoc::Param(i), self.enum_attr("noalias", 0));
            } else {
                body.add_attribute(AttributeLoc::Param(i), self.enum_attr("readonly", 0));
            }
            body.add_attribute(AttributeLoc::Param(i), self.enum_attr("align", align));
        }
        if step.scratch.is_some() {
            body.add_attribute(AttributeLoc::Param(arity + 1), self.enum_attr("noalias", 0));
            body.add_attribute(
                AttributeLoc::Param(arity + 1),
                self.enum_attr("align", plan::ALIGN as u64),
            );
        }
        let param_ptrs: Result<Vec<PointerValue>, _> =
            (0..arity + 2).map(|i| Self::param_ptr(body, i)).collect();
        let param_ptrs = param_ptrs?;
        let task = Self::param_int(body, arity + 2)?;
        self.builder
            .position_at_end(self.ctx.append_basic_block(body, "entry"));
        let mut cx = Cx {
            ctx: self.ctx,
            module: self.module,
            builder: &self.builder,
            func: body,
            target: &self.kt,
            packed,
        };
        let (ins, rest) = param_ptrs.split_at(n.inputs.len());
        let (out, scratch) = (rest[0], rest[1]);
        (self.kernels.emit_node)(&mut cx, n, tys, ins, out, scratch, task).map_err(
            |e| match e {
                KernelError::Unsupported { op, target, why } => CodegenError::Unsupported {
                    node: node_label(self.m, v),
                    op,
                    msg: format!("{why} (target {target})"),
                },
                KernelError::Builder(e) => CodegenError::Llvm(format!(
                    "{} {}: IR builder: {e}",
                    n.op.name(),
                    node_label(self.m, v)
                )),
            },
        )?;
        self.builder.build_return(None)?;
        Ok(body)
    }

    /// A body with one caller is inlined into its task function; a shared one stays a function
    /// of its own (compiled once, called by each node's task function).
    fn finish_bodies(&self) {
        for (f, uses) in self.bodies.borrow().values() {
            let attr = if *uses == 1 {
                "alwaysinline"
            } else {
                "noinline"
            };
            f.add_attribute(AttributeLoc::Function, self.enum_attr(attr, 0));
        }
    }

    /// Add a function with external linkage: one of the exported ABI symbols.
    fn export(&self, name: &str, ty: inkwell::types::FunctionType<'ctx>) -> FunctionValue<'ctx> {
        let f = self.module.add_function(
            &format!("{}_{name}", self.prefix),
            ty,
            Some(Linkage::External),
        );
        self.add_fn_attrs(f);
        f
    }

    fn param_int(f: FunctionValue<'ctx>, i: u32) -> Result<IntValue<'ctx>, CodegenError> {
        f.get_nth_param(i)
            .filter(|p| p.is_int_value())
            .map(|p| p.into_int_value())
            .ok_or_else(|| CodegenError::Llvm("ABI function lost a parameter".into()))
    }

    fn param_ptr(f: FunctionValue<'ctx>, i: u32) -> Result<PointerValue<'ctx>, CodegenError> {
        f.get_nth_param(i)
            .filter(|p| p.is_pointer_value())
            .map(|p| p.into_pointer_value())
            .ok_or_else(|| CodegenError::Llvm("ABI function lost a parameter".into()))
    }

    /// A private constant array global.
    fn const_table(
        &self,
        name: &str,
        init: inkwell::values::ArrayValue<'ctx>,
    ) -> GlobalValue<'ctx> {
        let gv = self
            .module
            .add_global(init.get_type(), None, &format!("{}.{name}", self.prefix));
        gv.set_initializer(&init);
        gv.set_constant(true);
        gv.set_linkage(Linkage::Private);
        gv.set_unnamed_addr(true);
        gv
    }

    /// `uint32_t P_name(void) { return value; }` and friends.
    fn emit_const_fn(&self, name: &str, value: &dyn BasicValue<'ctx>) -> Result<(), CodegenError> {
        let ty = value.as_basic_value_enum().get_type().fn_type(&[], false);
        let f = self.export(name, ty);
        self.builder
            .position_at_end(self.ctx.append_basic_block(f, "entry"));
        self.builder.build_return(Some(value))?;
        Ok(())
    }

    /// `uint32_t P_{kind}_rank(uint32_t i)` and `const int64_t *P_{kind}_shape(uint32_t i)`:
    /// table lookups that clamp the index first, so an out-of-range `i` reads nothing and
    /// returns 0 / NULL without a branch.
    fn emit_shape_fns(&self, kind: &str, shapes: &[&[usize]]) -> Result<(), CodegenError> {
        let n = shapes.len() as u64;
        // Tables get at least one entry so the clamped index 0 is always valid.
        let mut ranks: Vec<IntValue> = shapes
            .iter()
            .map(|s| self.i32.const_int(s.len() as u64, false))
            .collect();
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut dims = Vec::new();
        for s in shapes {
            offsets.push(self.i32.const_int(dims.len() as u64, false));
            dims.extend(s.iter().map(|&d| self.i64.const_int(d as u64, false)));
        }
        // A sentinel, so a rank-0 shape at the end still points at an element of the table.
        dims.push(self.i64.const_zero());
        if ranks.is_empty() {
            ranks.push(self.i32.const_zero());
            offsets.push(self.i32.const_zero());
        }
        let rank_g = self.const_table(&format!("{kind}_ranks"), self.i32.const_array(&ranks));
        let off_g = self.const_table(&format!("{kind}_dims_at"), self.i32.const_array(&offsets));
        let dims_g = self.const_table(&format!("{kind}_dims"), self.i64.const_array(&dims));
        dims_g.set_alignment(8);

        let lookup = |f: FunctionValue<'ctx>, table: GlobalValue<'ctx>, len: usize| {
            let i = Self::param_int(f, 0)?;
            let ok = self.builder.build_int_compare(
                IntPredicate::ULT,
                i,
                self.i32.const_int(n, false),
                "in_range",
            )?;
            let idx = self
                .builder
                .build_select(ok, i, self.i32.const_zero(), "idx")?
                .into_int_value();
            let idx = self.builder.build_int_z_extend(idx, self.i64, "idx64")?;
            let arr_ty = self.i32.array_type(len as u32);
            // SAFETY (for inkwell): idx is clamped below the table's length.
            let p = unsafe {
                self.builder.build_in_bounds_gep(
                    arr_ty,
                    table.as_pointer_value(),
                    &[self.i64.const_zero(), idx],
                    "entry",
                )?
            };
            let val = self
                .builder
                .build_load(self.i32, p, "val")?
                .into_int_value();
            Ok::<_, CodegenError>((ok, val))
        };

        let rank_fn = self.export(
            &format!("{kind}_rank"),
            self.i32.fn_type(&[self.i32.into()], false),
        );
        self.builder
            .position_at_end(self.ctx.append_basic_block(rank_fn, "entry"));
        let (ok, r) = lookup(rank_fn, rank_g, ranks.len())?;
        let r = self
            .builder
            .build_select(ok, r, self.i32.const_zero(), "rank")?;
        self.builder.build_return(Some(&r))?;

        let shape_fn = self.export(
            &format!("{kind}_shape"),
            self.ptr.fn_type(&[self.i32.into()], false),
        );
        self.builder
            .position_at_end(self.ctx.append_basic_block(shape_fn, "entry"));
        let (ok, at) = lookup(shape_fn, off_g, offsets.len())?;
        let at = self.builder.build_int_z_extend(at, self.i64, "at64")?;
        // SAFETY (for inkwell): offsets index the dims table, which has a sentinel at the end.
        let p = unsafe {
            self.builder.build_in_bounds_gep(
                self.i64.array_type(dims.len() as u32),
                dims_g.as_pointer_value(),
                &[self.i64.const_zero(), at],
                "dims",
            )?
        };
        let p = self
            .builder
            .build_select(ok, p, self.ptr.const_null(), "shape")?;
        self.builder.build_return(Some(&p))?;
        Ok(())
    }

    fn emit_abi(&self, node_fns: &[FunctionValue<'ctx>]) -> Result<(), CodegenError> {
        let m = self.m;
        self.emit_const_fn(
            "abi_version",
            &self.i32.const_int(abi::ABI_VERSION as u64, false),
        )?;
        self.emit_const_fn(
            "num_inputs",
            &self.i32.const_int(m.inputs.len() as u64, false),
        )?;
        self.emit_const_fn(
            "num_outputs",
            &self.i32.const_int(m.outputs.len() as u64, false),
        )?;
        let shapes = |list: &'a [(String, ValueId)]| -> Vec<&'a [usize]> {
            list.iter()
                .map(|(_, v)| m.ty(*v).shape.as_slice())
                .collect()
        };
        self.emit_shape_fns("input", &shapes(&m.inputs))?;
        self.emit_shape_fns("output", &shapes(&m.outputs))?;
        self.emit_const_fn(
            "workspace_size",
            &self.size.const_int(self.plan.workspace_bytes as u64, false),
        )?;
        self.emit_run(node_fns)
    }

    /// A block that returns `code` from `f`.
    fn fail_block(
        &self,
        f: FunctionValue<'ctx>,
        code: i32,
    ) -> Result<BasicBlock<'ctx>, CodegenError> {
        let bb = self.ctx.append_basic_block(f, &format!("fail{code}"));
        let here = self.builder.get_insert_block();
        self.builder.position_at_end(bb);
        self.builder
            .build_return(Some(&self.i32.const_int(code as u64, true)))?;
        if let Some(b) = here {
            self.builder.position_at_end(b);
        }
        Ok(bb)
    }

    /// Branch to `fail` if `bad`, else continue in a fresh block.
    fn check(
        &self,
        f: FunctionValue<'ctx>,
        bad: IntValue<'ctx>,
        fail: BasicBlock<'ctx>,
    ) -> Result<(), CodegenError> {
        let next = self.ctx.append_basic_block(f, "ok");
        self.builder.build_conditional_branch(bad, fail, next)?;
        self.builder.position_at_end(next);
        Ok(())
    }

    /// `int32_t P_run(const float *const *inputs, float *const *outputs, void *workspace,
    /// const vitc_exec *exec)`.
    fn emit_run(&self, node_fns: &[FunctionValue<'ctx>]) -> Result<(), CodegenError> {
        let p = self.ptr;
        let f = self.export(
            "run",
            self.i32
                .fn_type(&[p.into(), p.into(), p.into(), p.into()], false),
        );
        let (inputs, outputs, ws, exec) = (
            Self::param_ptr(f, 0)?,
            Self::param_ptr(f, 1)?,
            Self::param_ptr(f, 2)?,
            Self::param_ptr(f, 3)?,
        );
        let b = &self.builder;
        b.position_at_end(self.ctx.append_basic_block(f, "entry"));

        // Check every argument before touching anything, so a rejected call writes nothing.
        let n_in = self.m.inputs.len();
        let n_out = self.m.outputs.len();
        if n_in > 0 {
            let bad = b.build_is_null(inputs, "no_inputs")?;
            self.check(f, bad, self.fail_block(f, abi::ERR_NULL_INPUTS)?)?;
        }
        if n_out > 0 {
            let bad = b.build_is_null(outputs, "no_outputs")?;
            self.check(f, bad, self.fail_block(f, abi::ERR_NULL_OUTPUTS)?)?;
        }
        if n_in > 0 {
            let fail = self.fail_block(f, abi::ERR_NULL_INPUT)?;
            for i in 0..n_in {
                let x = self.load_nth_ptr(inputs, i)?;
                let bad = b.build_is_null(x, "null_input")?;
                self.check(f, bad, fail)?;
            }
        }
        if n_out > 0 {
            let fail = self.fail_block(f, abi::ERR_NULL_OUTPUT)?;
            for j in 0..n_out {
                let y = self.load_nth_ptr(outputs, j)?;
                let bad = b.build_is_null(y, "null_output")?;
                self.check(f, bad, fail)?;
            }
        }
        if self.plan.workspace_bytes > 0 {
            let bad = b.build_is_null(ws, "no_workspace")?;
            self.check(f, bad, self.fail_block(f, abi::ERR_NULL_WORKSPACE)?)?;
            let addr = b.build_ptr_to_int(ws, self.size, "ws_addr")?;
            let low = b.build_and(
                addr,
                self.size.const_int(abi::WORKSPACE_ALIGN as u64 - 1, false),
                "ws_misalign",
            )?;
            let bad = b.build_int_compare(IntPredicate::NE, low, self.size.const_zero(), "bad")?;
            self.check(f, bad, self.fail_block(f, abi::ERR_MISALIGNED_WORKSPACE)?)?;
        }

        // The run context lives on this call's stack: concurrent calls never share it.
        let run_ctx = b.build_alloca(self.run_ctx, "run_ctx")?;
        for (field, val) in [
            (CTX_INPUTS, inputs),
            (CTX_OUTPUTS, outputs),
            (CTX_WORKSPACE, ws),
        ] {
            let at = b.build_struct_gep(self.run_ctx, run_ctx, field, "ctx.field")?;
            b.build_store(at, val)?;
        }

        // parallel_for and pool, or NULL when the caller gave no executor.
        let exec_ty = self.ctx.struct_type(&[p.into(), p.into()], false);
        let has_exec = b.build_is_not_null(exec, "has_exec")?;
        let from = b
            .get_insert_block()
            .ok_or_else(|| CodegenError::Llvm("builder lost its block".into()))?;
        let load_bb = self.ctx.append_basic_block(f, "exec");
        let run_bb = self.ctx.append_basic_block(f, "run");
        b.build_conditional_branch(has_exec, load_bb, run_bb)?;
        b.position_at_end(load_bb);
        let pf_at = b.build_struct_gep(exec_ty, exec, 0, "pf.at")?;
        let pf_loaded = b.build_load(p, pf_at, "pf")?.into_pointer_value();
        let pool_at = b.build_struct_gep(exec_ty, exec, 1, "pool.at")?;
        let pool_loaded = b.build_load(p, pool_at, "pool")?.into_pointer_value();
        b.build_unconditional_branch(run_bb)?;
        b.position_at_end(run_bb);
        let pf = b.build_phi(p, "parallel_for")?;
        pf.add_incoming(&[(&pf_loaded, load_bb), (&p.const_null(), from)]);
        let pool = b.build_phi(p, "pool")?;
        pool.add_incoming(&[(&pool_loaded, load_bb), (&p.const_null(), from)]);
        let pf = pf.as_basic_value().into_pointer_value();
        let pool = pool.as_basic_value().into_pointer_value();
        let parallel = b.build_is_not_null(pf, "parallel")?;

        let pf_ty = self
            .ctx
            .void_type()
            .fn_type(&[p.into(), self.i32.into(), p.into(), p.into()], false);
        self.stamp(ws, 0)?;
        for (i, (step, &nf)) in self.plan.steps.iter().zip(node_fns).enumerate() {
            if i > 0 {
                self.stamp(ws, i)?;
            }
            let count = step.work.tasks;
            match count {
                0 => {}
                1 => {
                    b.build_call(nf, &[run_ctx.into(), self.i32.const_zero().into()], "")?;
                }
                _ => {
                    let count_v = self.i32.const_int(count as u64, false);
                    let par_bb = self.ctx.append_basic_block(f, "par");
                    let ser_bb = self.ctx.append_basic_block(f, "serial");
                    let done_bb = self.ctx.append_basic_block(f, "next");
                    b.build_conditional_branch(parallel, par_bb, ser_bb)?;
                    b.position_at_end(par_bb);
                    let fn_ptr = nf.as_global_value().as_pointer_value();
                    b.build_indirect_call(
                        pf_ty,
                        pf,
                        &[pool.into(), count_v.into(), fn_ptr.into(), run_ctx.into()],
                        "",
                    )?;
                    b.build_unconditional_branch(done_bb)?;
                    // count ≥ 2, so a bottom-tested loop is enough.
                    b.position_at_end(ser_bb);
                    let loop_bb = self.ctx.append_basic_block(f, "tasks");
                    b.build_unconditional_branch(loop_bb)?;
                    b.position_at_end(loop_bb);
                    let t = b.build_phi(self.i32, "task")?;
                    let tv = t.as_basic_value().into_int_value();
                    b.build_call(nf, &[run_ctx.into(), tv.into()], "")?;
                    let t1 = b.build_int_add(tv, self.i32.const_int(1, false), "task.next")?;
                    t.add_incoming(&[(&self.i32.const_zero(), ser_bb), (&t1, loop_bb)]);
                    let more = b.build_int_compare(IntPredicate::ULT, t1, count_v, "more")?;
                    b.build_conditional_branch(more, loop_bb, done_bb)?;
                    b.position_at_end(done_bb);
                }
            }
        }

        self.stamp(ws, self.plan.steps.len())?;
        // Outputs that are graph inputs, constants or repeats of another output.
        for c in &self.plan.copies {
            if c.bytes == 0 {
                continue;
            }
            let v = self.m.outputs[c.output].1;
            let src = self.ptr_of(&c.from, run_ctx, v)?;
            let dst = self.ptr_of(&Loc::Output(c.output), run_ctx, v)?;
            b.build_memcpy(dst, 4, src, 4, self.size.const_int(c.bytes as u64, false))
                .map_err(|e| CodegenError::Llvm(format!("output copy: {e}")))?;
        }
        b.build_return(Some(&self.i32.const_int(abi::OK as u64, false)))?;
        Ok(())
    }

    /// In a profiling build, store the cycle counter into timestamp slot `i` of the workspace.
    fn stamp(&self, ws: PointerValue<'ctx>, i: usize) -> Result<(), CodegenError> {
        let Some(off) = self.profile else {
            return Ok(());
        };
        // The steady counter is the one user code may read on AArch64 (CNTVCT_EL0); x86 has the
        // TSC, which ticks at a constant rate on every CPU that has AVX2.
        let name = if self.spec.arch == target::Arch::Aarch64 {
            "llvm.readsteadycounter"
        } else {
            "llvm.readcyclecounter"
        };
        let f = inkwell::intrinsics::Intrinsic::find(name)
            .and_then(|x| x.get_declaration(self.module, &[]))
            .ok_or_else(|| CodegenError::Llvm(format!("{name} is not available")))?;
        let t = self
            .builder
            .build_call(f, &[], "tsc")?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| CodegenError::Llvm(format!("{name} returned nothing")))?;
        let at = self.byte_offset(ws, self.const_i64(off + 8 * i))?;
        self.builder.build_store(at, t)?;
        Ok(())
    }

    /// Byte-loop `memcpy`, `memmove` and `memset`, private to the library. LLVM lowers large or
    /// variable-sized memory intrinsics to calls to these names; defining them here keeps the
    /// library free of undefined symbols. They carry `no-builtins`, or LLVM would recognise
    /// their own loops as memcpy/memset idioms and turn them back into calls to themselves.
    fn emit_mem_functions(&self) -> Result<Vec<FunctionValue<'ctx>>, CodegenError> {
        let p = self.ptr;
        let sz = self.size;
        let i8t = self.ctx.i8_type();
        let b = &self.builder;
        let mut fns = Vec::new();
        let no_builtins = self.ctx.create_string_attribute("no-builtins", "");

        // Emits `for (i = 0; i < n; i++) body(i)` (or down from n-1 when `down`) into `f` at
        // the builder's position, then positions the builder at the exit block.
        let byte_loop = |f: FunctionValue<'ctx>,
                         n: IntValue<'ctx>,
                         down: bool,
                         body: &dyn Fn(IntValue<'ctx>) -> Result<(), CodegenError>|
         -> Result<(), CodegenError> {
            let pre = b
                .get_insert_block()
                .ok_or_else(|| CodegenError::Llvm("builder lost its block".into()))?;
            let lp = self.ctx.append_basic_block(f, "loop");
            let exit = self.ctx.append_basic_block(f, "exit");
            let empty = b.build_int_compare(IntPredicate::EQ, n, sz.const_zero(), "empty")?;
            b.build_conditional_branch(empty, exit, lp)?;
            b.position_at_end(lp);
            let phi = b.build_phi(sz, "k")?;
            let k = phi.as_basic_value().into_int_value();
            // Up: i = k, k runs 0..n. Down: i = n-1-k.
            let i = if down {
                let last = b.build_int_sub(n, sz.const_int(1, false), "last")?;
                b.build_int_sub(last, k, "i")?
            } else {
                k
            };
            body(i)?;
            let k1 = b.build_int_add(k, sz.const_int(1, false), "k.next")?;
            phi.add_incoming(&[(&sz.const_zero(), pre), (&k1, lp)]);
            let more = b.build_int_compare(IntPredicate::ULT, k1, n, "more")?;
            b.build_conditional_branch(more, lp, exit)?;
            b.position_at_end(exit);
            Ok(())
        };
        let at = |base: PointerValue<'ctx>, i: IntValue<'ctx>| {
            // SAFETY (for inkwell): i < n, within the buffer the caller of memcpy passed.
            unsafe { b.build_in_bounds_gep(i8t, base, &[i], "p") }
        };
        let copy_byte = |d: PointerValue<'ctx>, s: PointerValue<'ctx>, i: IntValue<'ctx>| {
            let x = b.build_load(i8t, at(s, i)?, "x")?;
            b.build_store(at(d, i)?, x)?;
            Ok::<(), CodegenError>(())
        };

        for name in ["memcpy", "memmove"] {
            let f = self.module.add_function(
                name,
                p.fn_type(&[p.into(), p.into(), sz.into()], false),
                Some(Linkage::Internal),
            );
            self.add_fn_attrs(f);
            f.add_attribute(AttributeLoc::Function, no_builtins);
            let (d, s, n) = (
                Self::param_ptr(f, 0)?,
                Self::param_ptr(f, 1)?,
                Self::param_int(f, 2)?,
            );
            let entry = self.ctx.append_basic_block(f, "entry");
            b.position_at_end(entry);
            if name == "memcpy" {
                byte_loop(f, n, false, &|i| copy_byte(d, s, i))?;
                b.build_return(Some(&d))?;
            } else {
                // Copy forward when the destination is below the source, else backward, so
                // overlapping ranges are read before they are overwritten.
                let di = b.build_ptr_to_int(d, sz, "d")?;
                let si = b.build_ptr_to_int(s, sz, "s")?;
                let fwd = b.build_int_compare(IntPredicate::ULE, di, si, "forward")?;
                let fwd_bb = self.ctx.append_basic_block(f, "fwd");
                let bwd_bb = self.ctx.append_basic_block(f, "bwd");
                b.build_conditional_branch(fwd, fwd_bb, bwd_bb)?;
                b.position_at_end(fwd_bb);
                byte_loop(f, n, false, &|i| copy_byte(d, s, i))?;
                b.build_return(Some(&d))?;
                b.position_at_end(bwd_bb);
                byte_loop(f, n, true, &|i| copy_byte(d, s, i))?;
                b.build_return(Some(&d))?;
            }
            fns.push(f);
        }

        let f = self.module.add_function(
            "memset",
            p.fn_type(&[p.into(), self.i32.into(), sz.into()], false),
            Some(Linkage::Internal),
        );
        self.add_fn_attrs(f);
        f.add_attribute(AttributeLoc::Function, no_builtins);
        let (d, c, n) = (
            Self::param_ptr(f, 0)?,
            Self::param_int(f, 1)?,
            Self::param_int(f, 2)?,
        );
        b.position_at_end(self.ctx.append_basic_block(f, "entry"));
        let byte = b.build_int_truncate(c, i8t, "byte")?;
        byte_loop(f, n, false, &|i| {
            b.build_store(at(d, i)?, byte)?;
            Ok(())
        })?;
        b.build_return(Some(&d))?;
        fns.push(f);
        Ok(fns)
    }

    /// Keep the memory functions alive through optimisation: nothing in the IR calls them
    /// (only code generation does), so without `llvm.compiler.used` they would be deleted.
    fn emit_compiler_used(&self, fns: &[FunctionValue<'ctx>]) {
        let ptrs: Vec<PointerValue> = fns
            .iter()
            .map(|f| f.as_global_value().as_pointer_value())
            .collect();
        let init = self.ptr.const_array(&ptrs);
        let gv = self
            .module
            .add_global(init.get_type(), None, "llvm.compiler.used");
        gv.set_linkage(Linkage::Appending);
        gv.set_section(Some("llvm.metadata"));
        gv.set_initializer(&init);
    }

    /// Make sure the library exports exactly the ABI functions and needs nothing from outside:
    /// anything a kernel generator defined with a visible linkage (external, weak, linkonce …)
    /// becomes internal, and a reference to an undefined function or global (other than an
    /// LLVM intrinsic) is an error.
    fn seal(&self) -> Result<(), CodegenError> {
        let abi_prefix = format!("{}_", self.prefix);
        let exported = [
            "abi_version",
            "num_inputs",
            "num_outputs",
            "input_rank",
            "input_shape",
            "output_rank",
            "output_shape",
            "workspace_size",
            "run",
        ];
        let is_abi = |name: &str| {
            name.strip_prefix(&abi_prefix)
                .is_some_and(|rest| exported.contains(&rest))
        };
        let local = |l: Linkage| matches!(l, Linkage::Internal | Linkage::Private);
        let mut f = self.module.get_first_function();
        while let Some(func) = f {
            let name = func.get_name().to_string_lossy().into_owned();
            if func.count_basic_blocks() == 0 {
                if !name.starts_with("llvm.") {
                    return Err(CodegenError::Llvm(format!(
                        "generated code calls `{name}`, which is outside the library"
                    )));
                }
            } else if !is_abi(&name) && !local(func.get_linkage()) {
                func.set_linkage(Linkage::Internal);
            }
            f = func.get_next_function();
        }
        let mut g = self.module.get_first_global();
        while let Some(gv) = g {
            let name = gv.get_name().to_string_lossy().into_owned();
            if !name.starts_with("llvm.") {
                if gv.is_declaration() {
                    return Err(CodegenError::Llvm(format!(
                        "generated code refers to the global `{name}`, which is outside the library"
                    )));
                }
                if !local(gv.get_linkage()) {
                    gv.set_linkage(Linkage::Internal);
                }
            }
            g = gv.get_next_global();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
