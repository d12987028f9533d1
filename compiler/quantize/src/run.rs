//! Running a module over the calibration runs on the reference interpreter and reading chosen
//! intermediate values ("taps") beside its outputs. The taps are made extra outputs of a copy
//! of the module, so the interpreter keeps them alive and frees everything else as usual.
//! Runs are evaluated a few at a time on scoped threads, and their results handed to the
//! caller strictly in run order, so what the caller accumulates never depends on threads.

use vitc_ir::{Module, Tensor, ValueId};

use crate::error::QuantizeError;

/// A module with taps: running it yields the outputs, then the tapped values.
pub(crate) struct Tapped {
    module: Module,
    outputs: usize,
}

impl Tapped {
    pub(crate) fn new(m: &Module, taps: &[ValueId]) -> Tapped {
        let mut module = m.clone();
        let outputs = module.outputs.len();
        module
            .outputs
            .extend(taps.iter().map(|v| (format!("tap{}", v.0), *v)));
        Tapped { module, outputs }
    }

    /// (outputs, taps) of one run.
    pub(crate) fn run(&self, input: &Tensor) -> Result<(Vec<Tensor>, Vec<Tensor>), QuantizeError> {
        let mut all = vitc_ir::run(&self.module, std::slice::from_ref(input))?;
        let taps = all.split_off(self.outputs);
        Ok((all, taps))
    }
}

/// `f` on every run, on up to the machine's parallelism, with `sink` called on the results in
/// run order. Only a small window of results is held at once.
pub(crate) fn for_each_run<R: Send>(
    runs: &[Tensor],
    f: impl Fn(&Tensor) -> Result<R, QuantizeError> + Sync,
    mut sink: impl FnMut(usize, R) -> Result<(), QuantizeError>,
) -> Result<(), QuantizeError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(runs.len())
        .max(1);
    let window = threads * 2;
    for (w, chunk) in runs.chunks(window).enumerate() {
        let results: Vec<Result<R, QuantizeError>> = if threads == 1 {
            chunk.iter().map(&f).collect()
        } else {
            std::thread::scope(|s| {
                let per = chunk.len().div_ceil(threads);
                let handles: Vec<_> = chunk
                    .chunks(per)
                    .map(|c| {
                        let f = &f;
                        s.spawn(move || c.iter().map(f).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| match h.join() {
                        Ok(r) => r,
                        Err(p) => std::panic::resume_unwind(p),
                    })
                    .collect()
            })
        };
        for (i, r) in results.into_iter().enumerate() {
            sink(w * window + i, r?)?;
        }
    }
    Ok(())
}
