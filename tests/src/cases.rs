//! The one list of compiled-model cases: which models the backend suites compile and run, where
//! each comes from, how its output is judged, and whether the aarch64 suite (under qemu) runs it
//! too. `tests/tests/codegen.rs` (x86-64) and `tests/tests/aarch64.rs` generate their per-model
//! tests from [`model_cases!`], so a model added here is checked on every target it is marked
//! for. This module only describes cases; running them is each suite's job.

use crate::{fixture, max_abs, models_dir};
use std::path::PathBuf;
use vitc_ir::Tensor;

/// Float models: max|Δ| ≤ `FLOAT_TOL · max(1, max|ref|)`.
pub const FLOAT_TOL: f64 = 1e-4;
/// Quantized models: the same argmax and max|Δ| ≤ `QUANT_TOL · max(1, max|ref|)`.
pub const QUANT_TOL: f64 = 1e-3;

/// Where a case's model and its reference live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `tests/models`: always there.
    Bundled,
    /// The shared model set (`VITC_MODELS`): tests skip with a message when it is missing.
    Shared,
}

/// How a case's output is compared with onnxruntime's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    /// Within [`FLOAT_TOL`].
    Float,
    /// Same argmax, within [`QUANT_TOL`].
    Quantized,
    /// Same argmax, cosine ≥ [`crate::QDQ_MIN_COSINE`] (see there: deit_tiny_qdq only).
    QdqCosine,
}

/// Which backend suites run a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    /// x86-64 natively and aarch64 under qemu.
    X86AndAarch64,
    /// x86-64 only: the aarch64 suite judges through the C driver, which reports max|Δ| and
    /// argmax but not the outputs a cosine bar ([`Judge::QdqCosine`]) needs.
    X86Only,
}

/// One model the backend suites check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// The file stem: `NAME.onnx`, `NAME.input.npy`, `NAME.output.npy`.
    pub name: &'static str,
    pub source: Source,
    pub judge: Judge,
    pub targets: Targets,
}

/// Calls `$callback! { name: Source, Judge, Targets; … }` with every case, so that a suite can
/// generate one `#[test]` per case (named after the model). [`CASES`] is the same list as data.
#[macro_export]
macro_rules! model_cases {
    ($callback:ident) => {
        $callback! {
            digits_vit: Bundled, Float, X86AndAarch64;
            digits_vit_qat: Bundled, Quantized, X86AndAarch64;
            deit_tiny: Shared, Float, X86AndAarch64;
            deit_tiny_dynamo: Shared, Float, X86AndAarch64;
            deit_tiny_qdq: Shared, QdqCosine, X86Only;
            mobilevit_xxs: Shared, Float, X86AndAarch64;
            swin_micro: Shared, Float, X86AndAarch64;
            levit_128s_dev: Shared, Float, X86AndAarch64;
            efficientvit_b0_dev: Shared, Float, X86AndAarch64;
        }
    };
}

macro_rules! case_table {
    ($($name:ident: $source:ident, $judge:ident, $targets:ident;)*) => {
        /// Every case, in [`model_cases!`] order.
        pub const CASES: &[Case] = &[$(Case {
            name: stringify!($name),
            source: Source::$source,
            judge: Judge::$judge,
            targets: Targets::$targets,
        }),*];
    };
}
model_cases!(case_table);

/// The case called `name`; panics if there is none (a suite asked for a model not in the list).
pub fn case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case `{name}` in tests/src/cases.rs"))
}

impl Case {
    /// The folder holding the case's files, or `None` (after saying `test` was skipped) when it
    /// is in the shared set and that is missing.
    pub fn dir(&self, test: &str) -> Option<PathBuf> {
        match self.source {
            Source::Bundled => Some(fixture("")),
            Source::Shared => models_dir(test),
        }
    }

    /// Whether the output is judged as a quantized model's (argmax first).
    pub fn quantized(&self) -> bool {
        self.judge != Judge::Float
    }

    /// The relative tolerance: the bound on max|Δ| is `rtol() · max(1, max|ref|)`.
    pub fn rtol(&self) -> f64 {
        if self.quantized() {
            QUANT_TOL
        } else {
            FLOAT_TOL
        }
    }

    /// The bound on max|Δ| against `want`.
    pub fn tolerance(&self, want: &Tensor) -> f64 {
        self.rtol() * max_abs(want).max(1.0)
    }

    /// Whether the aarch64 suite runs this case.
    pub fn on_aarch64(&self) -> bool {
        self.targets == Targets::X86AndAarch64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_aarch64_runs_all_but_the_cosine_case() {
        let mut names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
        let a64: Vec<_> = CASES
            .iter()
            .filter(|c| c.on_aarch64())
            .map(|c| c.name)
            .collect();
        assert_eq!(
            a64,
            [
                "digits_vit",
                "digits_vit_qat",
                "deit_tiny",
                "deit_tiny_dynamo",
                "mobilevit_xxs",
                "swin_micro",
                "levit_128s_dev",
                "efficientvit_b0_dev"
            ]
        );
        assert_eq!(case("digits_vit_qat").rtol(), QUANT_TOL);
        assert_eq!(case("deit_tiny").rtol(), FLOAT_TOL);
    }
}
