//! Compile-time compression of a fused vit IR module: structured pruning of attention heads
//! (`heads`) and MLP hidden units (`mlp`), and EViT-style token pruning (`tokens`). Each pass
//! rewrites the module in place of the weights it removes, so the kernels that follow stay
//! specialised to static shapes; each returns a report of what it removed for the CLI to print.

mod blocks;
pub mod calib;
pub mod error;
pub mod heads;
pub mod mlp;
pub mod report;
pub mod tokens;

pub use calib::Calibration;
pub use error::PruneError;
pub use heads::prune_heads;
pub use mlp::prune_mlp;
pub use report::{BlockReport, Method, PruneReport};
