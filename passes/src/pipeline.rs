//! The pass pipeline: which passes run at each optimisation level, the limits every e-graph
//! run is held to, the statistics `--pass-stats` shows, and the hook `--print-after-all` uses
//! (the IR text after each pass, kept in the report; this library never prints).
//!
//! At -O2: `vit-canonicalize` (algebra and layout rules alone, so the fusion run starts from a
//! smaller graph), `vit-fuse` (every rule together: fusion needs the canonical forms and the
//! canonical forms need no fusion, so one saturating run finds all spellings), `vit-dce`.
//! -O0 returns the module unchanged.

use egg::{Runner, SimpleScheduler};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use thiserror::Error;
use vitc_ir::{print_module, verify, IrError, Module};

use crate::lang::{to_egraph, to_module};
use crate::rules::{algebra, attention, conv, layout, norm, quant, Rw};

/// How to optimise.
#[derive(Clone, Debug)]
pub struct PassOptions {
    /// 0: no rewrites; 2: the full pipeline.
    pub opt_level: u8,
    /// Most e-nodes an e-graph may reach before its run stops.
    pub node_limit: usize,
    /// Most rule-application rounds per e-graph run.
    pub iter_limit: usize,
    /// Longest one e-graph run may take.
    pub time_limit: Duration,
    /// Keep the IR text after each pass in the report.
    pub print_after_all: bool,
    /// End -O2 with `vit-narrow-rows`. Off for callers that rewrite the fused blocks before
    /// code generation (the pruners) and narrow afterwards with [`crate::narrow_rows`].
    pub narrow_rows: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            opt_level: 2,
            node_limit: 200_000,
            iter_limit: 40,
            time_limit: Duration::from_secs(5),
            print_after_all: false,
            narrow_rows: true,
        }
    }
}

/// Why a pass failed. A verified module never makes a pass fail; these say a rule is wrong.
#[derive(Debug, Error)]
pub enum PassError {
    #[error("-O{0} is not an optimisation level (use -O0 or -O2)")]
    BadOptLevel(u8),
    #[error("the module given to the passes does not verify: {0}")]
    InvalidInput(#[source] IrError),
    #[error("after {pass}: the module does not verify: {source}")]
    Verify {
        pass: String,
        #[source]
        source: IrError,
    },
    #[error("{pass}: unsound rewrite: {msg}")]
    Unsound { pass: String, msg: String },
    #[error("{pass}: cannot rebuild the module from the e-graph: {msg}")]
    Extract { pass: String, msg: String },
    /// `vit-narrow-rows` lost track of a value: a bug in its demand rules.
    #[error("vit-narrow-rows: at {node}: {msg}")]
    Narrow { node: String, msg: String },
}

/// Why an e-graph run stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum StopReason {
    /// No rule changed anything any more.
    Saturated,
    IterationLimit(usize),
    NodeLimit(usize),
    /// Seconds.
    TimeLimit(f64),
    Other(String),
}

impl StopReason {
    /// Saturation or one of the run's limits (as opposed to an error).
    pub fn is_saturation_or_limit(&self) -> bool {
        !matches!(self, StopReason::Other(_))
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Saturated => f.write_str("saturated"),
            StopReason::IterationLimit(n) => write!(f, "iteration limit ({n})"),
            StopReason::NodeLimit(n) => write!(f, "node limit ({n})"),
            StopReason::TimeLimit(s) => write!(f, "time limit ({s} s)"),
            StopReason::Other(s) => write!(f, "{s}"),
        }
    }
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassStats {
    pub name: String,
    /// How many times each rule changed the e-graph.
    pub rules_fired: BTreeMap<String, usize>,
    /// Small constants the analysis folded while building classes.
    pub analysis_folds: usize,
    /// E-graph size when the run stopped (0 for passes without one).
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub iterations: usize,
    /// `None` for passes that are not e-graph runs.
    pub stop_reason: Option<StopReason>,
    /// IR nodes and FLOPs before and after.
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub flops_before: u64,
    pub flops_after: u64,
    pub time: Duration,
    /// The IR text after the pass, with `print_after_all`.
    pub ir_after: Option<String>,
}

/// What the pipeline did, pass by pass.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    pub opt_level: u8,
    pub passes: Vec<PassStats>,
}

impl PassReport {
    /// Total time of all passes.
    pub fn total_time(&self) -> Duration {
        self.passes.iter().map(|p| p.time).sum()
    }

    /// How often `rule` fired over all passes.
    pub fn fired(&self, rule: &str) -> usize {
        self.passes
            .iter()
            .filter_map(|p| p.rules_fired.get(rule))
            .sum()
    }
}

impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "-O{}: {} passes in {:.1} ms",
            self.opt_level,
            self.passes.len(),
            self.total_time().as_secs_f64() * 1e3
        )?;
        for p in &self.passes {
            write!(
                f,
                "{}: {:.1} ms, {} -> {} nodes, {:.3} -> {:.3} GFLOP",
                p.name,
                p.time.as_secs_f64() * 1e3,
                p.nodes_before,
                p.nodes_after,
                p.flops_before as f64 / 1e9,
                p.flops_after as f64 / 1e9
            )?;
            if let Some(stop) = &p.stop_reason {
                write!(
                    f,
                    "; {} iterations, stopped: {stop}; e-graph {} nodes, {} classes",
                    p.iterations, p.egraph_nodes, p.egraph_classes
                )?;
            }
            writeln!(f)?;
            if p.stop_reason.is_some() {
                let fired: Vec<String> = p
                    .rules_fired
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                if fired.is_empty() {
                    writeln!(f, "  rules fired: none")?;
                } else {
                    writeln!(f, "  rules fired: {}", fired.join(", "))?;
                }
                if p.analysis_folds > 0 {
                    writeln!(
                        f,
                        "  small constants folded by the analysis: {}",
                        p.analysis_folds
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The rules of `vit-canonicalize`.
fn canonical_rules() -> &'static [Rw] {
    static RULES: OnceLock<Vec<Rw>> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut r = algebra::rules();
        r.extend(layout::rules());
        r
    })
}

/// The rules of `vit-fuse`: all of them.
fn fuse_rules() -> &'static [Rw] {
    static RULES: OnceLock<Vec<Rw>> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut r = algebra::rules();
        r.extend(layout::rules());
        r.extend(norm::rules());
        r.extend(conv::rules());
        r.extend(attention::rules());
        r.extend(quant::rules());
        r
    })
}

/// Every rule of the pipeline, by name (for documentation and tests).
pub fn rule_names() -> Vec<String> {
    fuse_rules().iter().map(|r| r.name.to_string()).collect()
}

/// Optimise a module. The input must verify; the result is equivalent (by each rule's
/// soundness argument, checked by the interpreter in the tests) and verifies.
pub fn optimize(m: &Module, opts: &PassOptions) -> Result<(Module, PassReport), PassError> {
    verify(m).map_err(PassError::InvalidInput)?;
    let mut report = PassReport {
        opt_level: opts.opt_level,
        passes: vec![],
    };
    match opts.opt_level {
        0 => return Ok((m.clone(), report)),
        2 => {}
        n => return Err(PassError::BadOptLevel(n)),
    }
    let mut cur = m.clone();
    for (name, rules) in [
        ("vit-canonicalize", canonical_rules()),
        ("vit-fuse", fuse_rules()),
    ] {
        let (next, stats) = saturate(&cur, name, rules, opts)?;
        report.passes.push(stats);
        cur = next;
    }
    let start = Instant::now();
    let (nodes_before, flops_before) = (cur.nodes.len(), cur.flops());
    cur.dce();
    let mut stats = plain_stats("vit-dce", nodes_before, flops_before, &cur, start, opts);
    stats.time = start.elapsed();
    check("vit-dce", &cur)?;
    report.passes.push(stats);
    if opts.narrow_rows {
        let start = Instant::now();
        let (nodes_before, flops_before) = (cur.nodes.len(), cur.flops());
        cur = crate::rows::narrow_rows(&cur)?;
        let stats = plain_stats(
            "vit-narrow-rows",
            nodes_before,
            flops_before,
            &cur,
            start,
            opts,
        );
        check("vit-narrow-rows", &cur)?;
        report.passes.push(stats);
    }
    Ok((cur, report))
}

fn plain_stats(
    name: &str,
    nodes_before: usize,
    flops_before: u64,
    out: &Module,
    start: Instant,
    opts: &PassOptions,
) -> PassStats {
    PassStats {
        name: name.to_string(),
        rules_fired: BTreeMap::new(),
        analysis_folds: 0,
        egraph_nodes: 0,
        egraph_classes: 0,
        iterations: 0,
        stop_reason: None,
        nodes_before,
        nodes_after: out.nodes.len(),
        flops_before,
        flops_after: out.flops(),
        time: start.elapsed(),
        ir_after: opts.print_after_all.then(|| print_module(out)),
    }
}

/// The verifier after a pass, in debug builds (the tests); its error is always returned.
fn check(pass: &str, m: &Module) -> Result<(), PassError> {
    if cfg!(debug_assertions) {
        verify(m).map_err(|source| PassError::Verify {
            pass: pass.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// One e-graph run: load, saturate within the limits, extract the cheapest module.
fn saturate(
    m: &Module,
    name: &str,
    rules: &[Rw],
    opts: &PassOptions,
) -> Result<(Module, PassStats), PassError> {
    let start = Instant::now();
    let loaded = to_egraph(m);
    let runner = Runner::default()
        .with_egraph(loaded.egraph)
        .with_node_limit(opts.node_limit)
        .with_iter_limit(opts.iter_limit)
        .with_time_limit(opts.time_limit)
        .with_scheduler(SimpleScheduler)
        .run(rules);
    if let Some(msg) = &runner.egraph.analysis.unsound {
        return Err(PassError::Unsound {
            pass: name.to_string(),
            msg: msg.clone(),
        });
    }
    let mut rules_fired = BTreeMap::new();
    for it in &runner.iterations {
        for (r, n) in &it.applied {
            *rules_fired.entry(r.to_string()).or_insert(0) += n;
        }
    }
    let stop_reason = match &runner.stop_reason {
        Some(egg::StopReason::Saturated) | None => StopReason::Saturated,
        Some(egg::StopReason::IterationLimit(n)) => StopReason::IterationLimit(*n),
        Some(egg::StopReason::NodeLimit(n)) => StopReason::NodeLimit(*n),
        Some(egg::StopReason::TimeLimit(s)) => StopReason::TimeLimit(*s),
        Some(egg::StopReason::Other(s)) => StopReason::Other(s.clone()),
    };
    let out = to_module(&runner.egraph, &loaded.roots, &loaded.origins, m).map_err(|msg| {
        PassError::Extract {
            pass: name.to_string(),
            msg,
        }
    })?;
    check(name, &out)?;
    let mut stats = plain_stats(name, m.nodes.len(), m.flops(), &out, start, opts);
    stats.rules_fired = rules_fired;
    stats.analysis_folds = runner.egraph.analysis.small_folds;
    stats.egraph_nodes = runner.egraph.total_number_of_nodes();
    stats.egraph_classes = runner.egraph.number_of_classes();
    stats.iterations = runner.iterations.len();
    stats.stop_reason = Some(stop_reason);
    stats.time = start.elapsed();
    Ok((out, stats))
}
