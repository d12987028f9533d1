//! `vitc`, the command-line driver: reads a model, runs the pipeline, writes what was asked
//! for, and renders every library error as one line for people. This is the only place in the
//! project that prints or touches files the user named.

mod cost;
mod inspect;
mod profile;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vitc_ir::{Module, Tensor};

#[derive(Parser, Debug)]
#[command(
    name = "vitc",
    version,
    about = "vitc — an ahead-of-time compiler for vision transformers",
    long_about = "vitc — an ahead-of-time compiler for vision transformers.\n\n\
        Reads an ONNX model (or vit IR text) and writes a freestanding native library with the \
        weights inside: shared (.so), static (.a) or object (.o), plus a C header beside it \
        (model.h) declaring the ABI v1 functions. The CPU features come from --target, never \
        from the machine that compiles (unless you ask for `native`).\n\n\
        Examples:\n  \
        vitc model.onnx -o model.so --target x86_64-avx512\n  \
        vitc run model.so --input x.npy --output y.npy --threads 2\n  \
        vitc bench model.so --threads 1 --iters 50\n  \
        vitc profile model.onnx --target x86_64-avx512 --threads 1\n  \
        vitc inspect model.onnx\n  \
        vitc model.onnx --emit ir -o model.vit\n  \
        vitc run-ref model.onnx --input x.npy --output y.npy",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    compile: CompileArgs,
}

#[derive(Args, Debug)]
struct CompileArgs {
    /// The model: an .onnx file (external data is read from beside it) or vit IR text (.vit).
    #[arg(required = true)]
    model: Option<PathBuf>,
    /// Where to write the result. For a library the extension picks the kind: .so, .a or .o
    /// (the header is written beside it as .h). For text (--emit ir|llvm|asm), `-` or absent
    /// writes to standard output.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// What to write: `lib` a native library (default); `ir` the vit IR text form (constants
    /// larger than 16 elements go to a side file OUTPUT.weights); `llvm` the optimised LLVM IR;
    /// `asm` the target assembly.
    #[arg(long, value_enum, default_value = "lib")]
    emit: Emit,
    /// The CPU to generate code for: x86_64-avx2, x86_64-avx2-vnni, x86_64-avx512,
    /// x86_64-avx512-vnni (the -vnni names run int8 layers on vpdpbusd), x86_64-avx512-bf16
    /// (also runs `--precision bf16` linears on vdpbf16ps), aarch64-neon,
    /// aarch64-neon-dotprod, aarch64-neon-i8mm, aarch64-neon-fp16 (an aarch64 name may add
    /// `:CORE` to tune scheduling, e.g. aarch64-neon:cortex-a76), or native (this machine's
    /// features, resolved now and printed); or an interop target: `openvino` (writes
    /// model.xml + model.bin into the -o directory) or `tensorrt` (model.onnx, build.sh and
    /// manifest.json for building the engine on the device).
    #[arg(long, default_value = "native")]
    target: String,
    /// Symbol prefix of the ABI functions (P_run, P_workspace_size, ...).
    #[arg(long, default_value = "vitc")]
    prefix: String,
    /// How the weights of every vit.linear are stored: `f32` (default), `bf16` (needs
    /// x86_64-avx512-bf16, or native on an AVX512-BF16 CPU) or `fp16` (needs aarch64-neon-fp16).
    /// Half the weight bytes; the weights are widened to f32 as the GEMM loads them and
    /// products accumulate in f32. Activations, attention, norms, softmax and GELU stay f32.
    /// Only for native libraries (not --emit ir/mlir or the interop targets). See
    /// docs/quantization.md, "Half precision".
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// With --emit mlir: `tosa` (upstream func + tosa) or `vit` (the vit.* ops as an IRDL
    /// dialect, written beside the output as vit.irdl.mlir).
    #[arg(long, value_name = "DIALECT", default_value = "tosa", value_parser = ["tosa", "vit"])]
    mlir_dialect: String,
    #[command(flatten)]
    model_opts: ModelOpts,
    #[command(flatten)]
    opt: OptOpts,
    #[command(flatten)]
    tokens: TokenOpts,
    #[command(flatten)]
    compress: CompressOpts,
    #[command(flatten)]
    quant: QuantOpts,
}

/// Post-training int8 quantization of the fused (-O2) module, after any pruning.
#[derive(Args, Debug, Default)]
struct QuantOpts {
    /// Quantize every vit.linear (the Q/K/V, output, MLP and head projections) to int8: the
    /// float model runs on the --calibrate images (required) to choose each layer's input
    /// range, weights become symmetric int8 per output channel, and the layer becomes
    /// vit.qlinear with its activation and residual as separate f32 ops. Attention, softmax,
    /// layer norm and GELU stay f32. Prints a per-layer error report (cosine vs float on the
    /// calibration images, worst first). See docs/quantization.md.
    #[arg(long, value_enum, value_name = "TYPE")]
    quantize: Option<QuantType>,
    /// How --quantize chooses each activation's range from the calibration values: `minmax`
    /// the observed extremes; `percentile` all but the most extreme (100 − P) % (see
    /// --percentile); `mse` the range with the least expected squared quantization error.
    /// Default: percentile.
    #[arg(long, value_enum, value_name = "METHOD", requires = "quantize")]
    calibration_method: Option<CalibrationMethod>,
    /// With --calibration-method percentile: the percentage P of values the range keeps,
    /// more than 50 and at most 100 (the rest is split evenly between the two tails).
    /// Default: 99.99.
    #[arg(long, value_name = "P", requires = "quantize")]
    percentile: Option<f64>,
    /// How --quantize stores activations: `u8` asymmetric with a zero point (the default: a
    /// GELU output's narrow negative side then takes few of the 256 levels) or `i8`
    /// symmetric with zero point 0.
    #[arg(long, value_enum, value_name = "TYPE", requires = "quantize")]
    activation_type: Option<ActivationType>,
    /// With --quantize: linears to keep in float, comma-separated. Each entry is a role
    /// (qkv, proj, attention = qkv and proj, fc1, fc2, mlp = fc1 and fc2, head, linear = all),
    /// a value id of the -O2 module (%24, as --emit ir and the report print it), or part of a
    /// layer's node or weight name (`/blocks.3/`). An entry that matches nothing is an error.
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        requires = "quantize"
    )]
    keep_float: Vec<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    /// 32-bit float weights.
    F32,
    /// bfloat16 weights, f32 accumulation.
    Bf16,
    /// IEEE half weights, f32 accumulation.
    Fp16,
}

impl From<PrecisionArg> for vitc_llvm::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => vitc_llvm::Precision::F32,
            PrecisionArg::Bf16 => vitc_llvm::Precision::Bf16,
            PrecisionArg::Fp16 => vitc_llvm::Precision::Fp16,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum QuantType {
    /// 8-bit integer weights and activations, i32 accumulation.
    Int8,
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
enum CalibrationMethod {
    /// The observed minimum and maximum.
    Minmax,
    /// Keep the given percentage of values (--percentile).
    #[default]
    Percentile,
    /// Least expected squared quantization error.
    Mse,
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
enum ActivationType {
    /// ui8, asymmetric (zero point chosen per tensor).
    #[default]
    U8,
    /// i8, symmetric (zero point 0).
    I8,
}

/// EViT-style token pruning, applied to the fused (-O2) module before code generation.
#[derive(Args, Debug, Default)]
struct TokenOpts {
    /// Keep only the fraction R in (0, 1] of patch tokens from block --prune-from-layer on:
    /// the ⌈R·N⌉ tokens with the highest class-token attention in that block (softmax of
    /// q_cls·Kᵀ, averaged over heads), chosen per image at run time, plus one token that fuses
    /// the dropped ones weighted by their attention. The class token is always kept; shapes
    /// after the cut stay static. R = 1 leaves the model unchanged. Prints what it pruned.
    #[arg(
        long,
        value_name = "R",
        requires = "prune_from_layer",
        allow_negative_numbers = true
    )]
    keep_tokens: Option<f64>,
    /// With --keep-tokens: the block (0-based) whose attention scores choose the tokens. The
    /// cut is inside that block, after its attention and before its MLP (as in EViT), so its
    /// MLP and every later block run on the kept tokens.
    #[arg(long, value_name = "L", requires = "keep_tokens")]
    prune_from_layer: Option<usize>,
}

/// Structured pruning (attention heads, MLP hidden units) of the fused (-O2) module before code
/// generation, and the calibration images that guide it and other data-driven passes.
#[derive(Args, Debug, Default)]
struct CompressOpts {
    /// Remove the fraction R (0 ≤ R < 1) of the attention heads of every block: ⌊R·H⌋ heads (at
    /// least one stays), physically — their Q/K/V weight columns and bias entries and their
    /// output-projection rows. With --calibrate, each block's heads (earlier blocks already
    /// pruned) are the ones whose removal moves the model's outputs least on the calibration
    /// images (KL), and their mean output at each token position is added back through the
    /// projection's residual; without it, the smallest by weight magnitude, uncompensated.
    /// R = 0 leaves the model unchanged. Prints what it removed.
    #[arg(long, value_name = "R", value_parser = parse_ratio, allow_negative_numbers = true)]
    prune_heads: Option<f64>,
    /// Remove the fraction R (0 ≤ R < 1) of the hidden units of every MLP: ⌊R·N⌋ units, their
    /// fc1 weight columns and bias entries and their fc2 rows. With --calibrate, the units whose
    /// contribution to fc2 varies least on the calibration images go, their mean at each token
    /// position added back through fc2's residual; without it, the smallest by weight
    /// magnitude, uncompensated. R = 0 leaves the model unchanged. Prints what it removed.
    #[arg(long, value_name = "R", value_parser = parse_ratio, allow_negative_numbers = true)]
    prune_mlp: Option<f64>,
    /// Calibration images for the passes that learn from data (--prune-heads, --prune-mlp,
    /// --quantize): an .npy float32 batch in the model input's layout, NCHW [N, C, H, W] for a
    /// model that takes [1, C, H, W], cut into runs of the model's batch. The reference
    /// interpreter runs the model over them at compile time, so a few hundred images at most.
    /// Take them from the training data, never from the set you evaluate on.
    #[arg(long, value_name = "IMAGES.npy")]
    calibrate: Option<PathBuf>,
}

/// `--prune-heads R` / `--prune-mlp R`: the fraction to remove, in [0, 1).
fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!(
            "{s} is outside [0, 1): give the fraction to remove, e.g. 0.25"
        ))
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Emit {
    /// A native library: .so, .a or .o from the output's extension, plus a C header.
    Lib,
    /// The vit IR in its MLIR-style text form.
    Ir,
    /// The optimised LLVM IR.
    Llvm,
    /// Target assembly.
    Asm,
    /// MLIR: func + tosa (default), or the vit dialect with --mlir-dialect vit; verified
    /// in-process.
    Mlir,
}

#[derive(Args, Debug, Clone)]
struct OptOpts {
    /// Rewrite level: -O0 keeps the imported graph; -O2 (default) runs the egg passes that fuse
    /// attention, LayerNorm, GELU, linear layers and quantized linears.
    #[arg(short = 'O', value_name = "LEVEL", default_value = "2", value_parser = ["0", "2"])]
    opt: String,
    /// Print the IR after each pass (to standard error).
    #[arg(long)]
    print_after_all: bool,
    /// Print what the passes did: rules fired, e-graph sizes, why each run stopped (to stderr).
    #[arg(long)]
    pass_stats: bool,
}

#[derive(Args, Debug, Default)]
struct ModelOpts {
    /// Fix a dynamic input shape, e.g. `--input-shape pixel_values=1x3x224x224` (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    input_shapes: Vec<String>,
    /// Compile for N images per run (N ≥ 1): dim 0 of every graph input, which the exporter
    /// fixed at 1 (or left dynamic), becomes N, and so does every shape that carries the batch,
    /// reshape targets included. The library then takes and returns N images at once; `vitc
    /// bench` reports images/s. A model whose graph mixes images (or hides where the batch is)
    /// is refused with the node's name.
    // Parsed by `parse_batch` rather than clap, so a bad value is one `error:` line and exit
    // code 1 like every other error.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    batch: Option<String>,
}

/// `--batch N`: a whole number of at least 1.
fn parse_batch(s: &str) -> Result<usize, CliError> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(CliError::Usage(format!(
            "--batch {s}: the batch size must be a whole number of at least 1"
        ))),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Summarise a model: inputs, outputs, op counts, parameters, FLOPs, attention blocks.
    Inspect {
        /// The model (.onnx or .vit).
        model: PathBuf,
        #[command(flatten)]
        model_opts: ModelOpts,
        /// Also print a cost table of the -O2 module, as it would be compiled: per block
        /// (`blocks.3` …, from node names) its nodes, MFLOP, parameters, weight bytes and the
        /// most workspace bytes live at once while it runs (from the LLVM backend's memory
        /// plan for --target, without generating code), then the totals (the total workspace
        /// is what the library's P_workspace_size returns).
        #[arg(long)]
        cost: bool,
        /// With --cost: the CPU whose kernels' scratch and task split the workspace is planned
        /// for (as for compiling).
        #[arg(long, default_value = "native", requires = "cost")]
        target: String,
    },
    /// Run a model on the reference interpreter: exact and slow, the numeric oracle that every
    /// compiled library is checked against. Not the way to deploy a model.
    RunRef {
        /// The model (.onnx or .vit).
        model: PathBuf,
        /// Input arrays (.npy), one per model input, in order (repeat the flag).
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Where to write the outputs (.npy), one per model output, in order (repeat the flag).
        #[arg(long = "output")]
        outputs: Vec<PathBuf>,
        #[command(flatten)]
        model_opts: ModelOpts,
    },
    /// Run a compiled library (.so) on .npy inputs through the runtime's thread pool.
    Run {
        /// The compiled model (.so).
        library: PathBuf,
        /// Input arrays (.npy, float32), one per model input, in order (repeat the flag).
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Where to write the outputs (.npy), one per model output, in order (repeat the flag).
        #[arg(long = "output")]
        outputs: Vec<PathBuf>,
        #[command(flatten)]
        exec: ExecOpts,
    },
    /// Time a compiled library (.so): min and median latency over --iters runs, runs/s, and
    /// images/s: the batch (dim 0 of the first input; N for a library built with --batch N)
    /// times runs per second, at the median and at the fastest run.
    Bench {
        /// The compiled model (.so).
        library: PathBuf,
        /// Input arrays (.npy); without them the inputs are a fixed pseudo-random pattern.
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Timed runs (after --warmup untimed ones).
        #[arg(long, default_value_t = 50)]
        iters: usize,
        /// Untimed runs first, to warm caches and wake the pool.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[command(flatten)]
        exec: ExecOpts,
    },
    /// Compile a model with per-node timestamps and show where its time goes: per op kind, per
    /// block and the slowest nodes (median over --iters runs through the runtime's pool).
    Profile {
        /// The model (.onnx or .vit).
        model: PathBuf,
        /// The CPU to generate code for (as for compiling).
        #[arg(long, default_value = "native")]
        target: String,
        /// Timed runs (after --warmup untimed ones).
        #[arg(long, default_value_t = 30)]
        iters: usize,
        /// Untimed runs first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Threads to run on, including the calling one.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// How many of the slowest nodes to list.
        #[arg(long, default_value_t = 15)]
        top: usize,
        #[command(flatten)]
        model_opts: ModelOpts,
        #[command(flatten)]
        opt: OptOpts,
    },
}

#[derive(Args, Debug)]
struct ExecOpts {
    /// Threads to run on, including the calling one (1 = no pool).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Symbol prefix the library was compiled with.
    #[arg(long, default_value = "vitc")]
    prefix: String,
}

/// Everything that can go wrong, rendered as one line.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Onnx(#[from] vitc_onnx::OnnxError),
    #[error("{path}: {err}")]
    Ir { path: String, err: vitc_ir::IrError },
    #[error("{path}: {err}")]
    Npy {
        path: String,
        err: vitc_npy::NpyError,
    },
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{0}")]
    Codegen(#[from] vitc_llvm::CodegenError),
    #[error("optimising: {0}")]
    Passes(#[from] vitc_passes::PassError),
    #[error("--keep-tokens/--prune-from-layer: {0}")]
    Tokens(#[from] vitc_prune::tokens::TokenError),
    #[error("{0}")]
    Prune(#[from] vitc_prune::PruneError),
    #[error("--quantize int8: {0}")]
    Quantize(#[from] vitc_quantize::QuantizeError),
    #[error("{0}")]
    Runtime(#[from] vitc_runtime::RuntimeError),
    #[error("{0}")]
    OpenVino(#[from] vitc_openvino::Error),
    #[error("{0}")]
    TensorRt(#[from] vitc_tensorrt::Error),
    #[error("{0}")]
    Mlir(#[from] vitc_mlir::Error),
    #[error("{0}")]
    Usage(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Some(Command::Inspect {
            model,
            model_opts,
            cost,
            target,
        }) => {
            let m = load(&model, &model_opts)?;
            let (fused, _) = vitc_passes::optimize(&m, &Default::default())?;
            print!("{}", inspect::summary(&model, &m, &fused));
            if cost {
                let kt = vitc_llvm::target::resolve(&target)?.kernel_target();
                print!("{}", cost::cost(&fused, &kt)?);
            }
            Ok(())
        }
        Some(Command::RunRef {
            model,
            inputs,
            outputs,
            model_opts,
        }) => run_ref(&model, &inputs, &outputs, &model_opts),
        Some(Command::Run {
            library,
            inputs,
            outputs,
            exec,
        }) => run_lib(&library, &inputs, &outputs, &exec),
        Some(Command::Bench {
            library,
            inputs,
            iters,
            warmup,
            exec,
        }) => bench(&library, &inputs, iters, warmup, &exec),
        Some(Command::Profile {
            model,
            target,
            iters,
            warmup,
            threads,
            top,
            model_opts,
            opt,
        }) => {
            let m = optimize(load(&model, &model_opts)?, &opt)?;
            run_profile(&m, &target, iters, warmup, threads, top)
        }
        None => {
            let c = cli.compile;
            let model = c
                .model
                .clone()
                .ok_or_else(|| CliError::Usage("no model given".into()))?;
            let m = load(&model, &c.model_opts)?;
            // The pruners rewrite whole blocks, so row narrowing (the last -O2 pass, which
            // cuts the last block down to the rows the head reads) waits until they are done.
            let pruning = c.compress.prune_heads.is_some()
                || c.compress.prune_mlp.is_some()
                || c.tokens.keep_tokens.is_some();
            let m = optimize_with(m, &c.opt, !pruning)?;
            // Heads and MLP units go before tokens: token pruning adds readers of the Q/K
            // projections that head pruning would otherwise have to rewrite too.
            let m = prune_structure(
                m,
                &c.compress,
                c.tokens.keep_tokens.is_some(),
                c.quant.quantize.is_some(),
            )?;
            let m = prune_tokens(m, &c.tokens)?;
            let m = quantize(m, &c.quant, c.compress.calibrate.as_deref())?;
            let m = if pruning && c.opt.opt != "0" {
                vitc_passes::narrow_rows(&m)?
            } else {
                m
            };
            if c.precision != PrecisionArg::F32
                && (c.target == "openvino"
                    || c.target == "tensorrt"
                    || matches!(c.emit, Emit::Ir | Emit::Mlir))
            {
                return Err(CliError::Usage(
                    "--precision bf16|fp16 is only supported for native libraries \
                     (--emit lib|llvm|asm with an LLVM target), not yet for --emit ir|mlir \
                     or the interop targets"
                        .into(),
                ));
            }
            // Interop targets take the fused IR before the LLVM target table sees --target.
            if c.target == "openvino" || c.target == "tensorrt" {
                return interop(&m, &c);
            }
            match c.emit {
                Emit::Ir => emit_ir(&m, c.output.as_deref()),
                Emit::Mlir => emit_mlir(&m, &c),
                Emit::Lib | Emit::Llvm | Emit::Asm => compile(&m, &c),
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |err| CliError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// Load an .onnx model through the frontend, or a .vit text module with its side file.
fn load(path: &Path, opts: &ModelOpts) -> Result<Module, CliError> {
    let mut shapes = Vec::new();
    for s in &opts.input_shapes {
        shapes.push(vitc_onnx::parse_input_shape(s)?);
    }
    let batch = opts.batch.as_deref().map(parse_batch).transpose()?;
    if path.extension().is_some_and(|e| e == "vit") {
        if batch.is_some() {
            return Err(CliError::Usage(
                "--batch applies to ONNX models; vit IR shapes are already static".into(),
            ));
        }
        if !shapes.is_empty() {
            return Err(CliError::Usage(
                "--input-shape applies to ONNX models; vit IR shapes are already static".into(),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let side = side_file(path);
        let constants = if side.exists() {
            let bytes = std::fs::read(&side).map_err(io_err(&side))?;
            vitc_ir::weights::read_weights(&bytes).map_err(|err| CliError::Ir {
                path: side.display().to_string(),
                err,
            })?
        } else {
            Default::default()
        };
        return vitc_ir::parse_module(&text, &constants).map_err(|err| CliError::Ir {
            path: path.display().to_string(),
            err,
        });
    }
    let opts = vitc_onnx::ImportOptions {
        input_shapes: shapes,
        batch,
    };
    Ok(vitc_onnx::import_file(path, &opts)?)
}

/// Run the passes the options ask for and print what they asked to see.
fn optimize(m: Module, o: &OptOpts) -> Result<Module, CliError> {
    optimize_with(m, o, true)
}

/// [`optimize`], with or without the row narrowing that ends -O2.
fn optimize_with(m: Module, o: &OptOpts, narrow_rows: bool) -> Result<Module, CliError> {
    let opts = vitc_passes::PassOptions {
        opt_level: if o.opt == "0" { 0 } else { 2 },
        print_after_all: o.print_after_all,
        narrow_rows,
        ..Default::default()
    };
    let (m, report) = vitc_passes::optimize(&m, &opts)?;
    if o.print_after_all {
        for p in &report.passes {
            if let Some(ir) = &p.ir_after {
                eprintln!("// ----- IR after {} -----\n{ir}", p.name);
            }
        }
    }
    if o.pass_stats {
        eprint!("{report}");
    }
    Ok(m)
}

/// `--quantize int8` (calibrated on `--calibrate`): quantize the fused module's linears and
/// print the per-layer error report.
fn quantize(m: Module, q: &QuantOpts, calibrate: Option<&Path>) -> Result<Module, CliError> {
    let Some(QuantType::Int8) = q.quantize else {
        return Ok(m);
    };
    let path = calibrate.ok_or_else(|| {
        CliError::Usage(
            "--quantize int8 needs --calibrate IMAGES.npy: the activation ranges come from \
             running the float model on calibration images (never the test set)"
                .into(),
        )
    })?;
    let method = match q.calibration_method.unwrap_or_default() {
        CalibrationMethod::Minmax => vitc_quantize::Method::MinMax,
        CalibrationMethod::Percentile => vitc_quantize::Method::Percentile(
            q.percentile.unwrap_or(vitc_quantize::DEFAULT_PERCENTILE),
        ),
        CalibrationMethod::Mse => vitc_quantize::Method::Mse,
    };
    if q.percentile.is_some() && !matches!(method, vitc_quantize::Method::Percentile(_)) {
        return Err(CliError::Usage(
            "--percentile applies to --calibration-method percentile".into(),
        ));
    }
    let calib = vitc_prune::Calibration::new(&m, &read_npy(path)?)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let opts = vitc_quantize::QuantizeOptions {
        method,
        scheme: match q.activation_type.unwrap_or_default() {
            ActivationType::U8 => vitc_quantize::ActivationScheme::Asymmetric,
            ActivationType::I8 => vitc_quantize::ActivationScheme::Symmetric,
        },
        keep_float: q.keep_float.clone(),
    };
    let (qm, report) = vitc_quantize::quantize(&m, calib.runs(), &opts)?;
    eprint!("{report}");
    Ok(qm)
}

/// `--keep-tokens R --prune-from-layer L`: rewrite the fused module and say what changed.
fn prune_tokens(m: Module, t: &TokenOpts) -> Result<Module, CliError> {
    let (Some(keep), Some(from_layer)) = (t.keep_tokens, t.prune_from_layer) else {
        return Ok(m);
    };
    let opts = vitc_prune::tokens::TokenOptions { keep, from_layer };
    let (pruned, report) = vitc_prune::tokens::prune_tokens(&m, &opts)?;
    eprint!("{report}");
    Ok(pruned)
}

/// `--prune-heads` / `--prune-mlp` (guided by `--calibrate`): rewrite the fused module and say
/// what was removed and what that saves.
fn prune_structure(
    m: Module,
    p: &CompressOpts,
    tokens_follow: bool,
    quantizing: bool,
) -> Result<Module, CliError> {
    if p.prune_heads.is_none() && p.prune_mlp.is_none() {
        if let (Some(path), false) = (&p.calibrate, quantizing) {
            eprintln!(
                "note: {}: no pass uses calibration images without --prune-heads, --prune-mlp \
                 or --quantize",
                path.display()
            );
        }
        return Ok(m);
    }
    let removes = p.prune_heads.unwrap_or(0.0) > 0.0 || p.prune_mlp.unwrap_or(0.0) > 0.0;
    if tokens_follow && p.calibrate.is_some() && removes {
        // The calibrated compensation is a constant per token position, which means nothing
        // once token pruning has reordered and dropped tokens.
        return Err(CliError::Usage(
            "--keep-tokens cannot follow calibrated --prune-heads/--prune-mlp (their per-token \
             compensation needs every token in place); drop --calibrate to prune by weight \
             magnitude"
                .into(),
        ));
    }
    let calib = match &p.calibrate {
        Some(path) => Some(
            vitc_prune::Calibration::new(&m, &read_npy(path)?)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let (params, flops) = (m.constant_elements(), m.flops());
    let mut m = m;
    if let Some(r) = p.prune_heads {
        let (pruned, report) = vitc_prune::prune_heads(&m, r, calib.as_ref())?;
        eprint!("{report}");
        m = pruned;
    }
    if let Some(r) = p.prune_mlp {
        let (pruned, report) = vitc_prune::prune_mlp(&m, r, calib.as_ref())?;
        eprint!("{report}");
        m = pruned;
    }
    let change = |a: f64, b: f64| if a > 0.0 { 100.0 * (b - a) / a } else { 0.0 };
    eprintln!(
        "pruned model: parameters {params} -> {} ({:+.1}%), FLOPs {:.2}M -> {:.2}M ({:+.1}%)",
        m.constant_elements(),
        change(params as f64, m.constant_elements() as f64),
        flops as f64 / 1e6,
        m.flops() as f64 / 1e6,
        change(flops as f64, m.flops() as f64)
    );
    Ok(m)
}

/// `model.vit` keeps its large constants in `model.vit.weights`.
fn side_file(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".weights");
    PathBuf::from(s)
}

/// `--target openvino|tensorrt`: write the interop target's files into the output.
fn interop(m: &Module, c: &CompileArgs) -> Result<(), CliError> {
    if c.emit != Emit::Lib {
        return Err(CliError::Usage(format!(
            "--target {} writes its own files; drop --emit",
            c.target
        )));
    }
    let out = c
        .output
        .as_deref()
        .ok_or_else(|| CliError::Usage(format!("--target {} needs -o DIR", c.target)))?;
    let files = if c.target == "openvino" {
        vitc_openvino::write(m, out)?
    } else {
        vitc_tensorrt::write(m, out, &Default::default())?
    };
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}

/// `--emit mlir`: the module as verified MLIR (func + tosa, or the IRDL vit dialect).
fn emit_mlir(m: &Module, c: &CompileArgs) -> Result<(), CliError> {
    let dialect: vitc_mlir::Dialect = c.mlir_dialect.parse()?;
    match c.output.as_deref() {
        Some(p) if p != Path::new("-") => {
            for f in vitc_mlir::write(m, p, dialect)? {
                eprintln!("wrote {}", f.display());
            }
        }
        _ => {
            use std::io::Write;
            std::io::stdout()
                .write_all(vitc_mlir::emit(m, dialect)?.as_bytes())
                .map_err(io_err(Path::new("<stdout>")))?;
        }
    }
    Ok(())
}

fn emit_ir(m: &Module, out: Option<&Path>) -> Result<(), CliError> {
    let text = vitc_ir::print_module(m);
    match out {
        None => print!("{text}"),
        Some(p) if p == Path::new("-") => print!("{text}"),
        Some(p) => {
            std::fs::write(p, &text).map_err(io_err(p))?;
            let large = m
                .constants
                .iter()
                .filter(|(_, t)| t.numel() > vitc_ir::print::INLINE_LIMIT)
                .map(|(k, t)| (k.clone(), t.clone()))
                .collect();
            let side = side_file(p);
            std::fs::write(&side, vitc_ir::weights::write_weights(&large))
                .map_err(io_err(&side))?;
            eprintln!("wrote {} and {}", p.display(), side.display());
        }
    }
    Ok(())
}

/// Compile to a library (or LLVM IR / assembly text) and say what was made.
fn compile(m: &Module, c: &CompileArgs) -> Result<(), CliError> {
    let opts = vitc_llvm::CompileOptions {
        target: c.target.clone(),
        prefix: c.prefix.clone(),
        precision: c.precision.into(),
        ..Default::default()
    };
    let out = c.output.as_deref();
    if c.emit == Emit::Lib && out.is_none_or(|p| p == Path::new("-")) {
        return Err(CliError::Usage(
            "a library needs -o FILE (.so, .a or .o); use --emit ir|llvm|asm for text".into(),
        ));
    }
    let start = std::time::Instant::now();
    let compiled = vitc_llvm::compile(m, &opts).map_err(|e| match e {
        // The CLI also knows the interop targets, which the LLVM table does not list.
        vitc_llvm::CodegenError::UnknownTarget { name, mut known } => {
            known.extend(["openvino".to_string(), "tensorrt".to_string()]);
            vitc_llvm::CodegenError::UnknownTarget { name, known }
        }
        e => e,
    })?;
    let t = compiled.target();
    if c.target == vitc_llvm::target::NATIVE {
        eprintln!(
            "target native: {} cpu {} features {}",
            t.triple, t.cpu, t.features
        );
    }
    let text = |bytes: Vec<u8>| -> Result<(), CliError> {
        match out {
            Some(p) if p != Path::new("-") => std::fs::write(p, bytes).map_err(io_err(p)),
            _ => {
                use std::io::Write;
                std::io::stdout()
                    .write_all(&bytes)
                    .map_err(io_err(Path::new("<stdout>")))
            }
        }
    };
    match c.emit {
        Emit::Llvm => text(compiled.llvm_ir().into_bytes())?,
        Emit::Asm => text(compiled.assembly()?)?,
        _ => {
            let p = out.expect("checked above");
            let files = vitc_llvm::write_output(&compiled, p)?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            eprintln!(
                "wrote {} for {} in {:.2} s: weights {} bytes, workspace {} bytes",
                names.join(" and "),
                t.name,
                start.elapsed().as_secs_f64(),
                compiled.weights_bytes(),
                compiled.workspace_bytes()
            );
        }
    }
    Ok(())
}

/// Load a library and the pool its options ask for.
fn open_lib(
    path: &Path,
    exec: &ExecOpts,
) -> Result<(vitc_runtime::Library, Option<vitc_runtime::Pool>), CliError> {
    if exec.threads == 0 {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    let lib = vitc_runtime::Library::open_with_prefix(path, &exec.prefix)?;
    let pool = if exec.threads > 1 {
        Some(vitc_runtime::Pool::new(exec.threads)?)
    } else {
        None
    };
    Ok((lib, pool))
}

/// Read one .npy per library input and check it against the library's shapes.
fn lib_inputs(lib: &vitc_runtime::Library, paths: &[PathBuf]) -> Result<Vec<Vec<f32>>, CliError> {
    if paths.len() != lib.num_inputs() {
        return Err(CliError::Usage(format!(
            "the library has {} input(s), {} --input given",
            lib.num_inputs(),
            paths.len()
        )));
    }
    let mut xs = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let t = read_npy(p)?;
        if t.shape != lib.input_shape(i) {
            return Err(CliError::Usage(format!(
                "{}: input {i} needs shape {:?}, the file holds {:?}",
                p.display(),
                lib.input_shape(i),
                t.shape
            )));
        }
        xs.push(t.to_f32_vec());
    }
    Ok(xs)
}

fn run_lib(
    path: &Path,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    exec: &ExecOpts,
) -> Result<(), CliError> {
    let (lib, pool) = open_lib(path, exec)?;
    if !outputs.is_empty() && outputs.len() != lib.num_outputs() {
        return Err(CliError::Usage(format!(
            "the library has {} output(s), {} --output given",
            lib.num_outputs(),
            outputs.len()
        )));
    }
    let xs = lib_inputs(&lib, inputs)?;
    let mut ys: Vec<Vec<f32>> = (0..lib.num_outputs())
        .map(|i| vec![0.0; lib.output_len(i)])
        .collect();
    let x_refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
    let mut y_refs: Vec<&mut [f32]> = ys.iter_mut().map(|v| v.as_mut_slice()).collect();
    lib.run(&x_refs, &mut y_refs, pool.as_ref())?;
    for (i, y) in ys.into_iter().enumerate() {
        let t = Tensor::f32(lib.output_shape(i).to_vec(), y);
        println!("output {i}: {}{}", t.ty(), top1(&t));
        if let Some(p) = outputs.get(i) {
            std::fs::write(p, vitc_npy::write(&t)).map_err(io_err(p))?;
        }
    }
    Ok(())
}

fn bench(
    path: &Path,
    inputs: &[PathBuf],
    iters: usize,
    warmup: usize,
    exec: &ExecOpts,
) -> Result<(), CliError> {
    if iters == 0 {
        return Err(CliError::Usage("--iters must be at least 1".into()));
    }
    let (lib, pool) = open_lib(path, exec)?;
    let xs = if inputs.is_empty() {
        // A fixed pattern in [-1, 1): timing must not depend on the run.
        (0..lib.num_inputs())
            .map(|i| {
                (0..lib.input_len(i))
                    .map(|j| ((j * 7919 % 2000) as f32) / 1000.0 - 1.0)
                    .collect()
            })
            .collect()
    } else {
        lib_inputs(&lib, inputs)?
    };
    let mut ys: Vec<Vec<f32>> = (0..lib.num_outputs())
        .map(|i| vec![0.0; lib.output_len(i)])
        .collect();
    let x_refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
    let mut y_refs: Vec<&mut [f32]> = ys.iter_mut().map(|v| v.as_mut_slice()).collect();
    let mut ws = lib.workspace()?;
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = std::time::Instant::now();
        lib.run_with(&mut ws, &x_refs, &mut y_refs, pool.as_ref())?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let min = times[0];
    let median = times[times.len() / 2];
    // A library compiled with --batch N takes N images per run in dim 0 of its inputs.
    let batch = lib.input_shape(0).first().copied().unwrap_or(1).max(1);
    println!(
        "{}: threads {} iters {}: min {min:.3} ms, median {median:.3} ms, {:.1} runs/s; \
         batch {batch}: {:.1} images/s (median run), {:.1} (fastest run)",
        path.display(),
        exec.threads,
        iters,
        1e3 / median,
        batch as f64 * 1e3 / median,
        batch as f64 * 1e3 / min
    );
    Ok(())
}

/// `vitc profile`: compile with timestamps into a temporary library, run it, print the report.
fn run_profile(
    m: &Module,
    target: &str,
    iters: usize,
    warmup: usize,
    threads: usize,
    top: usize,
) -> Result<(), CliError> {
    if iters == 0 || threads == 0 {
        return Err(CliError::Usage(
            "--iters and --threads must be at least 1".into(),
        ));
    }
    let opts = vitc_llvm::CompileOptions {
        target: target.into(),
        profile: true,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let compiled = vitc_llvm::compile(m, &opts)?;
    eprintln!(
        "compiled for {} in {:.2} s",
        compiled.target().name,
        start.elapsed().as_secs_f64()
    );
    let layout = compiled
        .profile()
        .cloned()
        .ok_or_else(|| CliError::Usage("the library was not built for profiling".into()))?;
    let dir = std::env::temp_dir().join(format!("vitc-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let so = dir.join("model.so");
    vitc_llvm::write_output(&compiled, &so)?;
    let exec = ExecOpts {
        threads,
        prefix: compiled.prefix().to_string(),
    };
    let (lib, pool) = open_lib(&so, &exec)?;
    let _ = std::fs::remove_dir_all(&dir);
    let xs: Vec<Vec<f32>> = (0..lib.num_inputs())
        .map(|i| {
            (0..lib.input_len(i))
                .map(|j| ((j * 7919 % 2000) as f32) / 1000.0 - 1.0)
                .collect()
        })
        .collect();
    let mut ys: Vec<Vec<f32>> = (0..lib.num_outputs())
        .map(|i| vec![0.0; lib.output_len(i)])
        .collect();
    let x_refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
    let mut y_refs: Vec<&mut [f32]> = ys.iter_mut().map(|v| v.as_mut_slice()).collect();
    let mut ws = lib.workspace()?;
    let slots = layout.steps.len() + 1;
    if ws.len() < layout.offset + 8 * slots {
        return Err(CliError::Usage(
            "the workspace has no room for the timestamps".into(),
        ));
    }
    let (mut ticks, mut wall) = (Vec::new(), Vec::new());
    for i in 0..warmup + iters {
        let t0 = std::time::Instant::now();
        lib.run_with(&mut ws, &x_refs, &mut y_refs, pool.as_ref())?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if i >= warmup {
            // SAFETY: the workspace holds `slots` u64 at `offset` (checked above), written by
            // the run that just returned; nothing else touches it now.
            let t: Vec<u64> = (0..slots)
                .map(|k| unsafe {
                    ws.as_mut_ptr()
                        .add(layout.offset + 8 * k)
                        .cast::<u64>()
                        .read_unaligned()
                })
                .collect();
            ticks.push(t);
            wall.push(ms);
        }
    }
    let s = profile::samples(&ticks, &wall);
    print!("{}", profile::render(m, &layout, &s, threads, top));
    Ok(())
}

fn read_npy(path: &Path) -> Result<Tensor, CliError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    vitc_npy::read(&bytes).map_err(|err| CliError::Npy {
        path: path.display().to_string(),
        err,
    })
}

fn run_ref(
    model: &Path,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    opts: &ModelOpts,
) -> Result<(), CliError> {
    let m = load(model, opts)?;
    if inputs.len() != m.inputs.len() {
        return Err(CliError::Usage(format!(
            "the model has {} input(s) ({}), {} --input given",
            m.inputs.len(),
            m.inputs
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            inputs.len()
        )));
    }
    if !outputs.is_empty() && outputs.len() != m.outputs.len() {
        return Err(CliError::Usage(format!(
            "the model has {} output(s), {} --output given",
            m.outputs.len(),
            outputs.len()
        )));
    }
    let mut xs = Vec::new();
    for (p, (name, v)) in inputs.iter().zip(&m.inputs) {
        let t = read_npy(p)?;
        let want = m.ty(*v);
        let t = if t.dtype() != want.dtype && t.dtype().is_float() == want.dtype.is_float() {
            t.cast(want.dtype)
        } else {
            t
        };
        if t.shape != want.shape || t.dtype() != want.dtype {
            return Err(CliError::Usage(format!(
                "{}: input {name} needs {want}, the file holds {}",
                p.display(),
                t.ty()
            )));
        }
        xs.push(t);
    }
    let ys = vitc_ir::run(&m, &xs).map_err(|err| CliError::Ir {
        path: model.display().to_string(),
        err,
    })?;
    for (i, ((name, _), y)) in m.outputs.iter().zip(&ys).enumerate() {
        println!("{name}: {}{}", y.ty(), top1(y));
        if let Some(p) = outputs.get(i) {
            std::fs::write(p, vitc_npy::write(y)).map_err(io_err(p))?;
        }
    }
    Ok(())
}

/// ", top-1 = K (score S)" for a single row of scores; empty otherwise.
fn top1(y: &Tensor) -> String {
    let rows = y.shape.iter().rev().skip(1).product::<usize>();
    if rows != 1 || y.numel() < 2 || !y.dtype().is_float() {
        return String::new();
    }
    let v = y.to_f32_vec();
    let (k, s) =
        v.iter().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |a, (i, &x)| if x > a.1 { (i, x) } else { a },
        );
    format!(", top-1 = {k} (score {s:.4})")
}
