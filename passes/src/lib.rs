//! vitc's optimisation passes. The vit IR goes into an e-graph (`lang`), rewrite rules grouped
//! by topic (`rules`) saturate it within node, iteration and time limits, a cost model (`cost`)
//! picks the cheapest equivalent graph, and dead code is removed (`pipeline`). The library
//! never prints and never does I/O: it returns the optimised module and a report, and the CLI
//! decides what to show.

pub mod cost;
pub mod extract;
pub mod lang;
pub mod pipeline;
pub mod rules;
pub mod view;

pub use pipeline::{
    optimize, rule_names, PassError, PassOptions, PassReport, PassStats, StopReason,
};
