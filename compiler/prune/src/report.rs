//! What a structured-pruning pass removed, block by block, for the CLI to show. It renders as
//! text through `Display`; printing it is the caller's business.

use std::fmt;

/// How the pass chose what to remove.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// From the model's behaviour on this many calibration images; the removed channels'
    /// mean output at each token position is added back through the next layer's residual.
    Calibrated { images: usize },
    /// From weight magnitudes alone (no calibration images); no compensation.
    WeightMagnitude,
}

/// What was removed from one block.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockReport {
    /// The node the block is named after (`%21 (/blocks.0/attention)`).
    pub node: String,
    /// Heads or hidden units before pruning.
    pub before: usize,
    /// Indices removed, in the original numbering, ascending.
    pub removed: Vec<usize>,
    /// The criterion's value for the removal, where the method has one (see
    /// [`PruneReport::score_name`]).
    pub score: Option<f64>,
}

/// What to remove from one block (heads or MLP units), and what to put in its place.
pub(crate) struct Choice {
    /// Heads or units, ascending.
    pub removed: Vec<usize>,
    /// The removed channels' statistics over the calibration set (the attention output, or the
    /// hidden activations), when calibrated.
    pub stats: Option<crate::calib::PositionStats>,
    pub score: Option<f64>,
}

/// Everything one pass removed.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneReport {
    /// "heads" or "MLP units".
    pub what: &'static str,
    pub ratio: f64,
    pub method: Method,
    /// What [`BlockReport::score`] measures.
    pub score_name: &'static str,
    pub blocks: Vec<BlockReport>,
}

impl PruneReport {
    /// A report with nothing removed yet: one row per block, `(node label, count before)`.
    pub(crate) fn start(
        what: &'static str,
        ratio: f64,
        calib: Option<&crate::calib::Calibration>,
        score_name: &'static str,
        blocks: impl Iterator<Item = (String, usize)>,
    ) -> PruneReport {
        PruneReport {
            what,
            ratio,
            method: match calib {
                Some(c) => Method::Calibrated { images: c.images() },
                None => Method::WeightMagnitude,
            },
            score_name,
            blocks: blocks
                .map(|(node, before)| BlockReport {
                    node,
                    before,
                    removed: vec![],
                    score: None,
                })
                .collect(),
        }
    }

    /// What was chosen in each block, in block order.
    pub(crate) fn record(&mut self, choice: Vec<Choice>) {
        for (r, c) in self.blocks.iter_mut().zip(choice) {
            r.removed = c.removed;
            r.score = c.score;
        }
    }

    /// Heads or units removed over all blocks.
    pub fn removed(&self) -> usize {
        self.blocks.iter().map(|b| b.removed.len()).sum()
    }
}

/// `[0, 3-5, 9]`: runs of consecutive indices collapsed, so 192 units still fit a line or two.
fn ranges(v: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", v[i], v[j])
        } else {
            v[i].to_string()
        });
        i = j + 1;
    }
    format!("[{}]", parts.join(", "))
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.removed() == 0 {
            return writeln!(
                f,
                "pruning {} with ratio {} removes none (⌊ratio·count⌋ = 0 in every block): \
                 model unchanged",
                self.what, self.ratio
            );
        }
        let how = match self.method {
            Method::Calibrated { images } => format!(
                "chosen on {images} calibration images, their mean output per token added back"
            ),
            Method::WeightMagnitude => "chosen by weight magnitude (no calibration images)".into(),
        };
        writeln!(
            f,
            "pruned {} of {} {} (ratio {}), {how}",
            self.removed(),
            self.blocks.iter().map(|b| b.before).sum::<usize>(),
            self.what,
            self.ratio
        )?;
        for b in &self.blocks {
            write!(
                f,
                "  {}: {} -> {}, removed {}",
                b.node,
                b.before,
                b.before - b.removed.len(),
                ranges(&b.removed)
            )?;
            if let Some(s) = b.score {
                write!(f, " ({} {s:.4})", self.score_name)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
