//! The five panels of the central area. Each owns its view state (filters, traces, plots) and
//! draws itself from that plus `&mut` [`Shared`]; work it wants done goes out as an
//! [`AppCommand`], never as a direct call on the worker.

mod corpus;
mod docids;
mod evaluate;
mod hints;
mod inspect;
mod model;
mod query;
mod train;

pub use corpus::CorpusPanel;
pub use evaluate::{gold_answers, EvaluatePanel};
pub use model::ModelPanel;
pub use query::QueryPanel;
pub use train::{fresh_run_dir, holds_checkpoint, PseudoView, TrainPanel, TrainView};

use super::dialogs::Dialogs;
use super::errors::error_banner;
use super::{AppCommand, ErrorPlace, PanelKind, Shared};

/// Every panel's own state, kept while another panel is shown.
#[derive(Debug, Clone, Default)]
pub struct Panels {
    pub corpus: CorpusPanel,
    pub model: ModelPanel,
    pub train: TrainPanel,
    pub query: QueryPanel,
    pub evaluate: EvaluatePanel,
}

impl Panels {
    /// Draws the panel `kind`, its error (if any) first.
    pub fn ui(
        &mut self,
        kind: PanelKind,
        shared: &mut Shared,
        dialogs: &Dialogs,
        ui: &mut egui::Ui,
        cmds: &mut Vec<AppCommand>,
    ) {
        error_banner(ui, &shared.errors, ErrorPlace::Panel(kind), cmds);
        match kind {
            PanelKind::Corpus => self.corpus.ui(shared, dialogs, ui, cmds),
            PanelKind::Model => self.model.ui(shared, dialogs, ui, cmds),
            PanelKind::Train => self.train.ui(shared, dialogs, ui, cmds),
            PanelKind::Query => self.query.ui(shared, dialogs, ui, cmds),
            PanelKind::Evaluate => self.evaluate.ui(shared, dialogs, ui, cmds),
        }
    }
}

/// A byte count in the unit that reads best: B, KB, MB or GB (decimal, as file sizes are shown).
pub fn human_bytes(bytes: usize) -> String {
    let b = bytes as f64;
    if b < 1e3 {
        format!("{bytes} B")
    } else if b < 1e6 {
        format!("{:.1} KB", b / 1e3)
    } else if b < 1e9 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} GB", b / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes read in the unit that fits: a demo trie of a few hundred KB is not "0.0 MB".
    #[test]
    fn byte_counts_pick_their_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(48_300), "48.3 KB");
        assert_eq!(human_bytes(63_000_000), "63.0 MB");
        assert_eq!(human_bytes(2_140_000_000), "2.1 GB");
    }
}
