//! `vitc`, the command-line driver: reads a model, runs the pipeline, writes what was asked
//! for, and renders every library error as one line for people. This is the only place in the
//! project that prints or touches files the user named.

mod inspect;

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
        Reads an ONNX model (or vit IR text) and writes what you ask for. Today that is the vit \
        IR (`--emit ir`); native libraries follow with the code generators.\n\n\
        Examples:\n  \
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
    /// Where to write the result; `-` or absent writes text to standard output.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// What to write. `ir`: the vit IR text form; constants larger than 16 elements are written
    /// to a side file OUTPUT.weights and named by handle in the text.
    #[arg(long, value_enum, default_value = "ir")]
    emit: Emit,
    #[command(flatten)]
    model_opts: ModelOpts,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Emit {
    /// The vit IR in its MLIR-style text form.
    Ir,
}

#[derive(Args, Debug, Default)]
struct ModelOpts {
    /// Fix a dynamic input shape, e.g. `--input-shape pixel_values=1x3x224x224` (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    input_shapes: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Summarise a model: inputs, outputs, op counts, parameters, FLOPs, attention blocks.
    Inspect {
        /// The model (.onnx or .vit).
        model: PathBuf,
        #[command(flatten)]
        model_opts: ModelOpts,
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
        Some(Command::Inspect { model, model_opts }) => {
            let m = load(&model, &model_opts)?;
            print!("{}", inspect::summary(&model, &m));
            Ok(())
        }
        Some(Command::RunRef {
            model,
            inputs,
            outputs,
            model_opts,
        }) => run_ref(&model, &inputs, &outputs, &model_opts),
        None => {
            let c = cli.compile;
            let model = c
                .model
                .ok_or_else(|| CliError::Usage("no model given".into()))?;
            let m = load(&model, &c.model_opts)?;
            match c.emit {
                Emit::Ir => emit_ir(&m, c.output.as_deref()),
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
    if path.extension().is_some_and(|e| e == "vit") {
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
    };
    Ok(vitc_onnx::import_file(path, &opts)?)
}

/// `model.vit` keeps its large constants in `model.vit.weights`.
fn side_file(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".weights");
    PathBuf::from(s)
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
