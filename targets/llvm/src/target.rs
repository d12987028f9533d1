//! The target table: every CPU the backend can generate code for, by the name the user gives
//! (`--target x86_64-avx512`), with its LLVM triple, CPU, feature string and vector width.
//!
//! CPU features come from the target string, never from the machine that compiles — except for
//! `native`, which asks LLVM for the host CPU at compile time and reports what it resolved to
//! (so the CLI can print it). Adding a target is one entry in [`TABLE`].
//!
//! An aarch64 target may name a core to tune for: `aarch64-neon:cortex-a76` (like `-mtune`).
//! The core only picks LLVM's scheduling model and cost tables; the instructions allowed stay
//! exactly the target's features, so the library still runs on every core the base name covers.
//! This module must not enable a feature the name did not ask for.

use crate::error::CodegenError;
use crate::kernels::{Int8Isa, KernelTarget, Precision};
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
    /// The core to schedule for when it is not `cpu` (`aarch64-neon:neoverse-n1`): LLVM's
    /// `tune-cpu` function attribute. `None`: tuned for `cpu`.
    pub tune_cpu: Option<String>,
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
    // + AVX512-VNNI (vpdpbusd on zmm): Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 and newer.
    Entry {
        name: "x86_64-avx512-vnni",
        arch: Arch::X86_64,
        triple: "x86_64-unknown-linux-gnu",
        cpu: "cascadelake",
        features: "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx512vnni,+avx2,+fma,+f16c",
        f32_lanes: 16,
        fma: true,
    },
    // + AVX512-BF16 (vcvtne2ps2bf16, vdpbf16ps): Cooper Lake, Sapphire Rapids, Zen 4 and newer.
    // `--precision bf16` stores linear weights in bf16 here.
    Entry {
        name: "x86_64-avx512-bf16",
        arch: Arch::X86_64,
        triple: "x86_64-unknown-linux-gnu",
        cpu: "cooperlake",
        features: "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx512vnni,+avx512bf16,+avx2,+fma,+f16c",
        f32_lanes: 16,
        fma: true,
    },
    // AVX2 + AVX-VNNI (VEX vpdpbusd on ymm): Alder Lake and newer client cores, Zen 5.
    Entry {
        name: "x86_64-avx2-vnni",
        arch: Arch::X86_64,
        triple: "x86_64-unknown-linux-gnu",
        cpu: "alderlake",
        features: "+avx2,+fma,+f16c,+avxvnni",
        f32_lanes: 8,
        fma: true,
    },
    // ARMv8-A with Advanced SIMD: every 64-bit Arm application core (Cortex-A53 and newer).
    Entry {
        name: "aarch64-neon",
        arch: Arch::Aarch64,
        triple: "aarch64-unknown-linux-gnu",
        cpu: "generic",
        features: "+neon",
        f32_lanes: 4,
        fma: true,
    },
    // + SDOT/UDOT (FEAT_DotProd; Cortex-A55/A75 and newer, Neoverse N1).
    Entry {
        name: "aarch64-neon-dotprod",
        arch: Arch::Aarch64,
        triple: "aarch64-unknown-linux-gnu",
        cpu: "generic",
        features: "+neon,+dotprod",
        f32_lanes: 4,
        fma: true,
    },
    // + SMMLA/UMMLA/USDOT (FEAT_I8MM; Cortex-A510/A710 and newer, Neoverse N2/V1). Every core
    // with I8MM (ARMv8.6-A) also has DotProd (mandatory since ARMv8.4-A), so it is included.
    Entry {
        name: "aarch64-neon-i8mm",
        arch: Arch::Aarch64,
        triple: "aarch64-unknown-linux-gnu",
        cpu: "generic",
        features: "+neon,+dotprod,+i8mm",
        f32_lanes: 4,
        fma: true,
    },
    // + half-precision arithmetic (FEAT_FP16; Cortex-A55/A75 and newer, Neoverse N1).
    Entry {
        name: "aarch64-neon-fp16",
        arch: Arch::Aarch64,
        triple: "aarch64-unknown-linux-gnu",
        cpu: "generic",
        features: "+neon,+fullfp16",
        f32_lanes: 4,
        fma: true,
    },
];

/// The cores an aarch64 target may be tuned for (`aarch64-neon:NAME`): LLVM 22's AArch64
/// processor names (`llc-22 -mtriple=aarch64 -mcpu=help`).
#[rustfmt::skip]
pub const AARCH64_TUNE_CPUS: &[&str] = &[
    "a64fx", "ampere1", "ampere1a", "ampere1b", "ampere1c", "apple-a10", "apple-a11", "apple-a12",
    "apple-a13", "apple-a14", "apple-a15", "apple-a16", "apple-a17", "apple-a18", "apple-a19",
    "apple-a7", "apple-a8", "apple-a9", "apple-m1", "apple-m2", "apple-m3", "apple-m4", "apple-m5",
    "apple-s10", "apple-s4", "apple-s5", "apple-s6", "apple-s7", "apple-s8", "apple-s9", "c1-nano",
    "c1-premium", "c1-pro", "c1-ultra", "carmel", "cobalt-100", "cortex-a320", "cortex-a34",
    "cortex-a35", "cortex-a510", "cortex-a520", "cortex-a520ae", "cortex-a53", "cortex-a55",
    "cortex-a57", "cortex-a65", "cortex-a65ae", "cortex-a710", "cortex-a715", "cortex-a72",
    "cortex-a720", "cortex-a720ae", "cortex-a725", "cortex-a73", "cortex-a75", "cortex-a76",
    "cortex-a76ae", "cortex-a77", "cortex-a78", "cortex-a78ae", "cortex-a78c", "cortex-r82",
    "cortex-r82ae", "cortex-x1", "cortex-x1c", "cortex-x2", "cortex-x3", "cortex-x4", "cortex-x925",
    "cyclone", "exynos-m3", "exynos-m4", "exynos-m5", "falkor", "fujitsu-monaka", "gb10", "generic",
    "grace", "kryo", "neoverse-512tvb", "neoverse-e1", "neoverse-n1", "neoverse-n2", "neoverse-n3",
    "neoverse-v1", "neoverse-v2", "neoverse-v3", "neoverse-v3ae", "olympus", "oryon-1", "saphira",
    "thunderx", "thunderx2t99", "thunderx3t110", "thunderxt81", "thunderxt83", "thunderxt88",
    "tsv110",
];

/// The name that resolves to the compiling machine's CPU.
pub const NATIVE: &str = "native";

/// Every target name `resolve` accepts, table order, `native` last.
pub fn target_names() -> Vec<&'static str> {
    TABLE.iter().map(|e| e.name).chain([NATIVE]).collect()
}

/// Look a target up by name: a table name, optionally followed by `:CPU` to tune an aarch64
/// target for one core (`aarch64-neon:cortex-a76`). `native` is resolved here, from the host.
pub fn resolve(name: &str) -> Result<TargetSpec, CodegenError> {
    match name.split_once(':') {
        Some((base, cpu)) => resolve_tuned(base, Some(cpu)),
        None => resolve_tuned(name, None),
    }
}

/// [`resolve`] with the tuning core given apart (what a `--cpu NAME` flag passes): `cpu`
/// `None` is the plain target. `resolve_tuned("aarch64-neon", Some("neoverse-n1"))` is
/// `resolve("aarch64-neon:neoverse-n1")`.
pub fn resolve_tuned(base: &str, cpu: Option<&str>) -> Result<TargetSpec, CodegenError> {
    if base == NATIVE {
        return match cpu {
            None => resolve_native(),
            Some(c) => Err(CodegenError::InvalidOption(format!(
                "`{NATIVE}` is already tuned for this machine's CPU; a tuning core (`{c}`) \
                 goes with a named aarch64 target, e.g. aarch64-neon:{c}"
            ))),
        };
    }
    let e = TABLE
        .iter()
        .find(|e| e.name == base)
        .ok_or_else(|| unknown(&cpu.map_or(base.to_string(), |c| format!("{base}:{c}"))))?;
    let tune_cpu = cpu.map(|c| check_tune_cpu(e, c)).transpose()?;
    Ok(TargetSpec {
        name: match cpu {
            Some(c) => format!("{}:{c}", e.name),
            None => e.name.into(),
        },
        arch: e.arch,
        triple: e.triple.into(),
        cpu: e.cpu.into(),
        features: e.features.into(),
        tune_cpu,
        f32_lanes: e.f32_lanes,
        fma: e.fma,
    })
}

/// A tuning core must be one LLVM knows for the target's architecture: LLVM itself would only
/// print a warning and ignore an unknown one.
fn check_tune_cpu(e: &Entry, cpu: &str) -> Result<String, CodegenError> {
    if e.arch != Arch::Aarch64 {
        return Err(CodegenError::InvalidOption(format!(
            "a tuning core (`{}:{cpu}`) is supported on aarch64 targets only",
            e.name
        )));
    }
    if AARCH64_TUNE_CPUS.contains(&cpu) {
        Ok(cpu.into())
    } else {
        Err(CodegenError::InvalidOption(format!(
            "unknown aarch64 core `{cpu}` in `{}:{cpu}`; known cores: {}",
            e.name,
            AARCH64_TUNE_CPUS.join(", ")
        )))
    }
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
        tune_cpu: None,
        f32_lanes,
        fma,
    })
}

impl TargetSpec {
    /// Whether the feature string enables `feature` (`"dotprod"`, `"i8mm"`, `"fullfp16"`,
    /// `"avx512f"` …) — what kernels that use an optional instruction set ask.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features
            .split(',')
            .any(|f| f.strip_prefix('+') == Some(feature))
    }

    /// The core LLVM schedules for: the tuning core if one was named, else `cpu`.
    pub fn tuned_for(&self) -> &str {
        self.tune_cpu.as_deref().unwrap_or(&self.cpu)
    }

    /// What the kernel generators may know about this target.
    pub fn kernel_target(&self) -> KernelTarget {
        KernelTarget {
            name: self.name.clone(),
            f32_lanes: self.f32_lanes,
            fma: self.fma,
            int8: self.int8_isa(),
            precision: Precision::F32,
        }
    }

    /// Whether `--precision p` may be used on this target: bf16 on x86-64 with AVX512-BF16,
    /// fp16 on aarch64 with FEAT_FP16 (`fullfp16`); f32 everywhere.
    pub fn supports_precision(&self, p: Precision) -> bool {
        match p {
            Precision::F32 => true,
            Precision::Bf16 => self.arch == Arch::X86_64 && self.has_feature("avx512bf16"),
            Precision::Fp16 => self.arch == Arch::Aarch64 && self.has_feature("fullfp16"),
        }
    }

    /// [`TargetSpec::kernel_target`] for `--precision p`, or an error naming the targets that
    /// can run it.
    pub fn kernel_target_with(&self, p: Precision) -> Result<KernelTarget, CodegenError> {
        if !self.supports_precision(p) {
            let can: Vec<&str> = TABLE
                .iter()
                .filter(|e| resolve(e.name).is_ok_and(|t| t.supports_precision(p)))
                .map(|e| e.name)
                .collect();
            return Err(CodegenError::InvalidOption(format!(
                "--precision {} is not supported on {}; targets that support it: {} \
                 (or native on such a CPU)",
                p.name(),
                self.name,
                can.join(", ")
            )));
        }
        Ok(KernelTarget {
            precision: p,
            ..self.kernel_target()
        })
    }

    /// The int8 dot-product instructions the features allow (`native` included): EVEX
    /// vpdpbusd needs AVX512-VNNI with VL (for its 256/128-bit forms); on aarch64 SMMLA is
    /// preferred to SDOT (twice the products per instruction).
    pub fn int8_isa(&self) -> Int8Isa {
        let has = |f| self.has_feature(f);
        match self.arch {
            Arch::X86_64 if has("avx512vnni") && has("avx512vl") && self.f32_lanes >= 16 => {
                Int8Isa::Avx512Vnni
            }
            Arch::X86_64 if has("avxvnni") => Int8Isa::AvxVnni,
            Arch::X86_64 if has("avx512vnni") && has("avx512vl") => Int8Isa::Avx512Vnni,
            Arch::Aarch64 if has("i8mm") => Int8Isa::NeonI8mm,
            Arch::Aarch64 if has("dotprod") => Int8Isa::NeonDot,
            Arch::X86_64 => Int8Isa::X86Madd,
            Arch::Aarch64 => Int8Isa::NeonWiden,
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
    fn precision_needs_a_target_that_can_run_it() {
        for name in target_names() {
            let t = resolve(name).unwrap();
            assert!(t.kernel_target_with(Precision::F32).is_ok(), "{name}");
        }
        let ok = |name: &str, p| resolve(name).unwrap().kernel_target_with(p);
        assert_eq!(
            ok("x86_64-avx512-bf16", Precision::Bf16).unwrap().precision,
            Precision::Bf16
        );
        assert_eq!(
            ok("aarch64-neon-fp16", Precision::Fp16).unwrap().precision,
            Precision::Fp16
        );
        let e = ok("x86_64-avx512", Precision::Bf16)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x86_64-avx512-bf16") && e.contains("not supported on x86_64-avx512;"),
            "{e}"
        );
        let e = ok("aarch64-neon", Precision::Fp16).unwrap_err().to_string();
        assert!(
            e.contains("targets that support it: aarch64-neon-fp16 "),
            "{e}"
        );
        assert!(ok("x86_64-avx512-bf16", Precision::Fp16).is_err());
        assert!(ok("aarch64-neon-fp16", Precision::Bf16).is_err());
    }

    #[test]
    fn aarch64_targets_enable_what_they_are_named_for() {
        let want: [(&str, &[&str], &[&str]); 4] = [
            ("aarch64-neon", &["neon"], &["dotprod", "i8mm", "fullfp16"]),
            (
                "aarch64-neon-dotprod",
                &["neon", "dotprod"],
                &["i8mm", "fullfp16"],
            ),
            (
                "aarch64-neon-i8mm",
                &["neon", "dotprod", "i8mm"],
                &["fullfp16"],
            ),
            (
                "aarch64-neon-fp16",
                &["neon", "fullfp16"],
                &["dotprod", "i8mm"],
            ),
        ];
        for (name, on, off) in want {
            let t = resolve(name).unwrap();
            assert_eq!(
                (t.arch, t.f32_lanes, t.fma, t.cpu.as_str()),
                (Arch::Aarch64, 4, true, "generic"),
                "{name}"
            );
            assert!(t.triple.starts_with("aarch64-"), "{name}");
            assert!(
                on.iter().all(|f| t.has_feature(f)),
                "{name}: {}",
                t.features
            );
            assert!(
                !off.iter().any(|f| t.has_feature(f)),
                "{name}: {}",
                t.features
            );
            assert_eq!(t.tune_cpu, None);
        }
    }

    #[test]
    fn a_tuning_core_tunes_and_enables_nothing() {
        let plain = resolve("aarch64-neon").unwrap();
        for cpu in ["cortex-a76", "neoverse-n1", "cortex-a53"] {
            let t = resolve(&format!("aarch64-neon:{cpu}")).unwrap();
            assert_eq!(t.name, format!("aarch64-neon:{cpu}"));
            assert_eq!(t.tune_cpu.as_deref(), Some(cpu));
            assert_eq!(t.tuned_for(), cpu);
            // Features and the CPU LLVM takes them from are the base target's.
            assert_eq!((&t.cpu, &t.features), (&plain.cpu, &plain.features));
            assert_eq!(t, resolve_tuned("aarch64-neon", Some(cpu)).unwrap());
            t.machine(3).expect("target machine");
        }
        let t = resolve("aarch64-neon-i8mm:neoverse-n2").unwrap();
        assert!(t.has_feature("i8mm") && t.tuned_for() == "neoverse-n2");
        assert_eq!(plain.tuned_for(), "generic");
    }

    #[test]
    fn bad_tuning_cores_are_errors() {
        let msg = resolve("aarch64-neon:cortex-a99").unwrap_err().to_string();
        assert!(
            msg.contains("cortex-a99") && msg.contains("neoverse-n1"),
            "{msg}"
        );
        let msg = resolve("x86_64-avx2:cortex-a76").unwrap_err().to_string();
        assert!(msg.contains("aarch64 targets only"), "{msg}");
        let msg = resolve("native:cortex-a76").unwrap_err().to_string();
        assert!(msg.contains("aarch64-neon:cortex-a76"), "{msg}");
        let msg = resolve("aarch64-sve:cortex-a76").unwrap_err().to_string();
        assert!(
            msg.contains("aarch64-sve:cortex-a76") && msg.contains("aarch64-neon"),
            "{msg}"
        );
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
