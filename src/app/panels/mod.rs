//! The five panels of the central area. Each owns its view state (filters, traces, plots) and
//! draws itself from that plus `&mut` [`Shared`]; work it wants done goes out as an
//! [`AppCommand`], never as a direct call on the worker.

mod corpus;
mod evaluate;
mod hints;
mod model;
mod query;
mod train;

pub use corpus::CorpusPanel;
pub use evaluate::EvaluatePanel;
pub use model::ModelPanel;
pub use query::QueryPanel;
pub use train::{PseudoView, TrainPanel, TrainView};

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
