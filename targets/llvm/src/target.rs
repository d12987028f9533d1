//! The target table: every CPU the backend can generate code for, by the name the user gives
//! (`--target x86_64-avx512`), with its LLVM triple, CPU, feature string and vector width.
//!
//! CPU features come from the target string, never from the machine that compiles — except for
//! `native`, which asks LLVM for the host CPU at compile time and reports what it resolved to
//! (so the CLI can print it). Adding a target is one entry in [`TABLE`].

use crate::error::CodegenError;
use crate::kernels::KernelTarget;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;
use std::sync::Once;

/// The instruction set family of a target (what LLVM backend it needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// A resolved target: everything code generation needs to know about the CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// The name the user gave (`x86_64-avx2`, `native` …).
    pub name: String,
    pub arch: Arch,
    /// LLVM target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub triple: String,
    /// LLVM CPU name, e.g. `haswell`; for `native`, the host CPU LLVM detected.
    pub cpu: String,
    /// LLVM feature string, e.g. `+avx2,+fma,+f16c`; for `native`, the host's features.
    pub features: String,
    /// Native f32 vector width in lanes.
    pub f32_lanes: u32,
    /// Fused multiply-add available.
    pub fma: bool,
}

struct Entry {
    name: &'static str,
    arch: Arch,
    triple: &'static str,
    cpu: &'static str,
    features: &'static str,
    f32_lanes: u32,
    fma: bool,
}

/// The named targets. `native` is not here: it is resolved from the host by [`resolve`].
const TABLE: &[Entry] = &[
    Entry {
        name: "x86_64-avx2",
        arch: Arch::X86_64,
        triple: "x86_64-unknown-linux-gnu",
        cpu: "haswell",
        features: "+avx2,+fma,+f16c",
        f32_lanes: 8,
        fma: true,
    },
    Entry {
        name: "x86_64-avx512",
        arch: Arch::X86_64,
        triple: "x86_64-unknown-linux-gnu",
        cpu: "skylake-avx512",
        features: "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx2,+fma,+f16c",
        f32_lanes: 16,
        fma: true,
    },
    Entry {
        name: "aarch64-neon",
        arch: Arch::Aarch64,
        triple: "aarch64-unknown-linux-gnu",
        cpu: "generic",
        features: "+neon",
        f32_lanes: 4,
        fma: true,
    },
];

/// The name that resolves to the compiling machine's CPU.
pub const NATIVE: &str = "native";

/// Every target name `resolve` accepts, table order, `native` last.
pub fn target_names() -> Vec<&'static str> {
    TABLE.iter().map(|e| e.name).chain([NATIVE]).collect()
}

/// Look a target up by name. `native` is resolved here, from the host CPU.
pub fn resolve(name: &str) -> Result<TargetSpec, CodegenError> {
    if name == NATIVE {
        return resolve_native();
    }
    let e = TABLE
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| unknown(name))?;
    Ok(TargetSpec {
        name: e.name.into(),
        arch: e.arch,
        triple: e.triple.into(),
        cpu: e.cpu.into(),
        features: e.features.into(),
        f32_lanes: e.f32_lanes,
        fma: e.fma,
    })
}

fn unknown(name: &str) -> CodegenError {
    CodegenError::UnknownTarget {
        name: name.into(),
        known: target_names().into_iter().map(String::from).collect(),
    }
}

fn resolve_native() -> Result<TargetSpec, CodegenError> {
    let triple = TargetMachine::get_default_triple();
    let triple = TargetMachine::normalize_triple(&triple)
        .as_str()
        .to_string_lossy()
        .into_owned();
    let arch = if triple.starts_with("x86_64") {
        Arch::X86_64
    } else if triple.starts_with("aarch64") || triple.starts_with("arm64") {
        Arch::Aarch64
    } else {
        return Err(CodegenError::Unsupported {
            node: NATIVE.into(),
            op: "target".into(),
            msg: format!("the host triple {triple} is neither x86_64 nor aarch64"),
        });
    };
    let cpu = TargetMachine::get_host_cpu_name().to_string();
    let features = TargetMachine::get_host_cpu_features().to_string();
    let has = |f: &str| features.split(',').any(|x| x == f);
    let (f32_lanes, fma) = match arch {
        Arch::X86_64 if has("+avx512f") => (16, has("+fma")),
        Arch::X86_64 if has("+avx") => (8, has("+fma")),
        Arch::X86_64 => (4, false),
        // Every AArch64 CPU has NEON with FMA.
        Arch::Aarch64 => (4, true),
    };
    Ok(TargetSpec {
        name: NATIVE.into(),
        arch,
        triple,
        cpu,
        features,
        f32_lanes,
        fma,
    })
}

impl TargetSpec {
    /// What the kernel generators may know about this target.
    pub fn kernel_target(&self) -> KernelTarget {
        KernelTarget {
            name: self.name.clone(),
            f32_lanes: self.f32_lanes,
            fma: self.fma,
        }
    }

    /// An LLVM target machine for this target: position-independent code (so the object can go
    /// into a shared library), the default code model.
    pub fn machine(&self, opt_level: u8) -> Result<TargetMachine, CodegenError> {
        init_llvm_targets();
        let triple = TargetTriple::create(&self.triple);
        let target = Target::from_triple(&triple)
            .map_err(|e| CodegenError::Llvm(format!("no LLVM target for {}: {e}", self.triple)))?;
        let level = match opt_level {
            0 => OptimizationLevel::None,
            1 => OptimizationLevel::Less,
            2 => OptimizationLevel::Default,
            _ => OptimizationLevel::Aggressive,
        };
        target
            .create_target_machine(
                &triple,
                &self.cpu,
                &self.features,
                level,
                RelocMode::PIC,
                CodeModel::Default,
            )
            .ok_or_else(|| {
                CodegenError::Llvm(format!(
                    "could not create a target machine for {} (cpu {}, features {})",
                    self.triple, self.cpu, self.features
                ))
            })
    }
}

/// Register the LLVM backends the table uses, once per process.
fn init_llvm_targets() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let cfg = InitializationConfig::default();
        Target::initialize_x86(&cfg);
        Target::initialize_aarch64(&cfg);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_targets_resolve_and_make_machines() {
        for name in target_names() {
            let t = resolve(name).expect("every listed target resolves");
            assert_eq!(t.name, name);
            let tm = t.machine(3).expect("target machine");
            assert_eq!(tm.get_cpu().to_string(), t.cpu);
        }
        let avx512 = resolve("x86_64-avx512").unwrap();
        assert_eq!(
            (avx512.f32_lanes, avx512.cpu.as_str()),
            (16, "skylake-avx512")
        );
        assert_eq!(resolve("x86_64-avx2").unwrap().f32_lanes, 8);
    }

    #[test]
    fn unknown_target_lists_the_known_ones() {
        let e = resolve("riscv-magic").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("riscv-magic"), "{msg}");
        for name in target_names() {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn native_reports_what_it_resolved() {
        let t = resolve(NATIVE).unwrap();
        assert!(!t.cpu.is_empty());
        assert!(t.f32_lanes >= 4);
    }
}
