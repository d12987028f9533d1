//! vitc's MLIR export: the fused vit module as MLIR, either in upstream dialects (`func` +
//! `tosa`, every fused op spelled out in TOSA ops) or with the `vit.*` ops kept as a `vit`
//! dialect defined in IRDL ([`IRDL_VIT`], loadable by `mlir-opt --irdl-file`).
//!
//! The module is written as MLIR text, then parsed, verified and printed by MLIR itself
//! in-process through melior, so what comes out has passed MLIR's verifier (for the `vit`
//! form with the IRDL dialect loaded into the same context). This crate lowers no further
//! than TOSA and never runs what it writes.

mod text;
mod tosa;

use melior::ir::operation::OperationLike;
use melior::ir::Module as MlirModule;
use melior::{dialect::DialectRegistry, utility, Context};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vitc_ir::Module;

/// Which dialects carry the ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `func` + `tosa` (upstream only).
    Tosa,
    /// `func` + the `vit` dialect of [`IRDL_VIT`].
    Vit,
}

impl std::str::FromStr for Dialect {
    type Err = Error;
    fn from_str(s: &str) -> Result<Dialect, Error> {
        match s {
            "tosa" => Ok(Dialect::Tosa),
            "vit" => Ok(Dialect::Vit),
            _ => Err(Error::UnknownDialect(s.into())),
        }
    }
}

/// Why a module could not be exported as MLIR.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("target mlir ({dialect}): unsupported op {op} at {node}: {why}")]
    Unsupported {
        dialect: &'static str,
        op: String,
        node: String,
        why: String,
    },
    #[error("target mlir: the module does not verify: {0}")]
    Invalid(#[from] vitc_ir::IrError),
    #[error("target mlir: unknown dialect `{0}` (expected tosa or vit)")]
    UnknownDialect(String),
    /// MLIR's parser or verifier refused what was written: a bug in this crate.
    #[error("target mlir: MLIR rejected the exported module: {0}")]
    Rejected(String),
    #[error("target mlir: cannot write {path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// The `vit` dialect in IRDL: every op takes any number of tensors and gives one; the op
/// attributes are carried as they are.
pub const IRDL_VIT: &str = include_str!("vit.irdl.mlir");

/// The module as verified MLIR text (MLIR's own printing of it).
pub fn emit(m: &Module, dialect: Dialect) -> Result<String, Error> {
    vitc_ir::verify(m)?;
    let src = match dialect {
        // TOSA has no linear attention: it goes as the primitive ops it is made of.
        Dialect::Tosa => tosa::module(&vitc_ir::expand::expand_linear_attention(m)?)?,
        Dialect::Vit => text::vit_module(m),
    };
    verify_text(&src, dialect)
}

/// Parse and verify MLIR text in a fresh context with every upstream dialect registered (and
/// the IRDL `vit` dialect loaded for [`Dialect::Vit`]); returns MLIR's printing of it.
pub fn verify_text(src: &str, dialect: Dialect) -> Result<String, Error> {
    let registry = DialectRegistry::new();
    utility::register_all_dialects(&registry);
    let ctx = Context::new();
    ctx.append_dialect_registry(&registry);
    ctx.load_all_available_dialects();
    let diags = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = diags.clone();
    ctx.attach_diagnostic_handler(move |d| {
        if let Ok(mut v) = sink.lock() {
            v.push(format!("{}: {}", d.location(), d));
        }
        true
    });
    let said = |what: &str| {
        let v = diags.lock().map(|v| v.join("; ")).unwrap_or_default();
        Error::Rejected(format!("{what}: {v}{}", quote_line(src, &v)))
    };
    if dialect == Dialect::Vit {
        let irdl = MlirModule::parse(&ctx, IRDL_VIT).ok_or_else(|| said("IRDL dialect"))?;
        if !utility::load_irdl_dialects(&irdl) {
            return Err(said("loading the IRDL dialect"));
        }
    }
    let module = MlirModule::parse(&ctx, src).ok_or_else(|| said("parse"))?;
    if !module.as_operation().verify() {
        return Err(said("verify"));
    }
    Ok(module.as_operation().to_string())
}

/// The source line a diagnostic `loc("-":LINE:COL)` points at, shortened, for the message.
fn quote_line(src: &str, diag: &str) -> String {
    let line = diag
        .split("\":")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse::<usize>().ok());
    match line.and_then(|l| src.lines().nth(l.saturating_sub(1))) {
        Some(text) => format!(
            " (at: {})",
            text.trim().chars().take(240).collect::<String>()
        ),
        None => String::new(),
    }
}

/// Write the MLIR to `out`; for the `vit` form also the dialect beside it
/// (`vit.irdl.mlir`). Returns the paths written.
pub fn write(m: &Module, out: &Path, dialect: Dialect) -> Result<Vec<PathBuf>, Error> {
    let text = emit(m, dialect)?;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |err| Error::Io { path, err }
    };
    std::fs::write(out, text).map_err(io(out))?;
    let mut paths = vec![out.to_path_buf()];
    if dialect == Dialect::Vit {
        let d = out.with_file_name("vit.irdl.mlir");
        std::fs::write(&d, IRDL_VIT).map_err(io(&d))?;
        paths.push(d);
    }
    Ok(paths)
}
