//! vitc's optimisation passes. The vit IR goes into an e-graph (`lang`), rewrite rules grouped
//! by topic (`rules`) saturate it within node, iteration and time limits, a cost model (`cost`)
//! picks the cheapest equivalent graph, dead code is removed (`pipeline`), and last every value is cut down to the rows the
//! outputs read (`rows`). The library
//! never prints and never does I/O: it returns the optimised module and a report, and the CLI
//! decides what to show.

pub mod cost;
pub mod extract;
pub mod lang;
pub mod pipeline;
pub mod rows;
pub mod rules;
pub mod view;

pub use pipeline::{
    optimize, rule_names, PassError, PassOptions, PassReport, PassStats, StopReason,
};
pub use rows::narrow_rows;
