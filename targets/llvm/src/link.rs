//! Writing a compiled model to disk: a relocatable object (`.o`), a static archive (`.a`, via
//! `llvm-ar-22`) or a shared library (`.so`, via `ld.lld-22`), and always its C header beside it
//! (`model.so` → `model.h`). lld links for every target, so cross targets need no cross
//! toolchain. This is the one module of the crate that touches the file system, and only the
//! paths it is given plus a private temporary directory it removes again.

use crate::driver::Compiled;
use crate::error::CodegenError;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The linker for shared libraries.
pub const LLD: &str = "ld.lld-22";
/// The archiver for static libraries.
pub const AR: &str = "llvm-ar-22";

/// What kind of file an output path asks for, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Object,
    Archive,
    Shared,
}

impl OutputKind {
    pub fn from_path(path: &Path) -> Result<OutputKind, CodegenError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("o") => Ok(OutputKind::Object),
            Some("a") => Ok(OutputKind::Archive),
            Some("so") => Ok(OutputKind::Shared),
            _ => Err(CodegenError::InvalidOption(format!(
                "cannot tell what to write from `{}`: use a .so (shared library), .a (static \
                 library) or .o (object file) name",
                path.display()
            ))),
        }
    }
}

/// Write `c` to `path` (kind from the extension: `.so`, `.a` or `.o`) and its C header to the
/// same path with extension `.h`. Returns the files written.
pub fn write_output(c: &Compiled, path: &Path) -> Result<Vec<PathBuf>, CodegenError> {
    let kind = OutputKind::from_path(path)?;
    match kind {
        OutputKind::Object => write(path, &c.object)?,
        OutputKind::Archive | OutputKind::Shared => {
            let tmp = TempDir::new()?;
            let obj = tmp.path.join(format!("{}.o", c.prefix()));
            write(&obj, &c.object)?;
            // Both tools write their output themselves; remove a stale file first so llvm-ar
            // does not add to an old archive.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err(path, e));
                }
                _ => {}
            }
            if kind == OutputKind::Shared {
                let soname = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format!("lib{}.so", c.prefix()));
                let mut cmd = Command::new(LLD);
                cmd.args([
                    "-shared",
                    "--no-undefined",
                    "-z",
                    "noexecstack",
                    "--gc-sections",
                    "--hash-style=both",
                    "-soname",
                ])
                .arg(soname)
                .arg("-o")
                .arg(path)
                .arg(&obj);
                run_tool(LLD, "lld-22", cmd)?;
            } else {
                let mut cmd = Command::new(AR);
                cmd.arg("rcs").arg(path).arg(&obj);
                run_tool(AR, "llvm-22", cmd)?;
            }
        }
    }
    let header = path.with_extension("h");
    write(&header, c.header().as_bytes())?;
    Ok(vec![path.to_path_buf(), header])
}

fn io_err(path: &Path, source: std::io::Error) -> CodegenError {
    CodegenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CodegenError> {
    std::fs::write(path, bytes).map_err(|e| io_err(path, e))
}

fn run_tool(tool: &str, package: &str, mut cmd: Command) -> Result<(), CodegenError> {
    let out = cmd.output().map_err(|e| CodegenError::Link {
        tool: tool.into(),
        msg: if e.kind() == std::io::ErrorKind::NotFound {
            format!("not found; install {package} (scripts/setup.sh)")
        } else {
            format!("could not run: {e}")
        },
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CodegenError::Link {
            tool: tool.into(),
            msg: format!(
                "failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// A private temporary directory, removed (with its contents) when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir, CodegenError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "vitc-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // create_dir (not create_dir_all) fails if the name exists: never reuse someone
        // else's directory.
        std::fs::create_dir(&path).map_err(|e| io_err(&path, e))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth failing a successful link for.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_from_extension() {
        assert_eq!(
            OutputKind::from_path(Path::new("m.so")).unwrap(),
            OutputKind::Shared
        );
        assert_eq!(
            OutputKind::from_path(Path::new("d/m.a")).unwrap(),
            OutputKind::Archive
        );
        assert_eq!(
            OutputKind::from_path(Path::new("m.o")).unwrap(),
            OutputKind::Object
        );
        let e = OutputKind::from_path(Path::new("m.dll"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(".so") && e.contains(".a") && e.contains(".o"),
            "{e}"
        );
    }
}
