//! Views of the docid mode: a query's docid beams as paths down the cluster tree (Query panel),
//! and the tree itself, browsable cluster by cluster (Corpus panel).

use crate::corpus::Corpus;
use crate::docids::{self, DocidTree};
use crate::retrieve::docid::DocidTrace;

/// Beams shown open at first.
const OPEN_BEAMS: usize = 3;
/// Passages listed under a leaf before "and N more".
const LEAF_ROWS: usize = 40;

/// The beams of a docid query, best first: each a path of (level, cluster, its label, the
/// step's probability) ending on a passage.
pub fn docid_beams_ui(ui: &mut egui::Ui, trace: &DocidTrace, corpus: Option<&Corpus>) {
    ui.label(format!(
        "Docid beams for \u{201c}{}\u{201d} ({} beams, {:.0} ms): each is a path down the cluster tree, \
         every step constrained to real docids.",
        trace.query,
        trace.beams.len(),
        trace.ms
    ));
    if let Some(ans) = &trace.answer {
        ui.horizontal(|ui| {
            ui.strong("Answer:");
            ui.label(&ans.text);
            ui.weak(format!("[{}]", ans.passage_id));
            if ans.read.len() > 1 {
                ui.weak(format!("(read from {})", ans.read.join(", ")));
            }
        });
    }
    for (rank, beam) in trace.beams.iter().enumerate() {
        let header = format!(
            "{}. {}  {}  \u{2014} {}   (log P {:.3}, P {:.3})",
            rank + 1,
            beam.docid,
            beam.passage_id,
            beam.title,
            beam.logprob,
            beam.logprob.exp()
        );
        egui::CollapsingHeader::new(header)
            .id_salt(("docid beam", rank))
            .default_open(rank < OPEN_BEAMS)
            .show(ui, |ui| {
                for step in &beam.steps {
                    ui.horizontal(|ui| {
                        ui.add_space(16.0 * step.level as f32);
                        ui.monospace(format!(
                            "\u{2192} level {} index {}",
                            step.level, step.index
                        ));
                        ui.label(format!("P {:.3}", step.logprob.exp()));
                        match step.label.is_empty() {
                            true => ui.weak("the passage's number in its leaf"),
                            false => ui.label(step.label.join(", ")),
                        };
                    });
                }
                let text =
                    corpus.and_then(|c| c.index_of(&beam.passage_id).map(|i| &c.passages[i].text));
                if let Some(text) = text {
                    let words: Vec<&str> = text.split_whitespace().take(40).collect();
                    ui.weak(format!("{} ...", words.join(" ")));
                }
            });
    }
}

/// The docid tree: clusters with their labels and sizes, opened level by level; a leaf lists
/// its passages with their docids.
pub fn docid_tree_ui(ui: &mut egui::Ui, tree: &DocidTree, corpus: &Corpus) {
    ui.label(format!(
        "{} passages in {} clusters ({} leaves), docids of up to {} tokens; embedded by {}.",
        tree.passages.len(),
        tree.clusters.len(),
        tree.leaves(),
        tree.depth(),
        tree.embedder
    ));
    let same_corpus = tree.passages.len() == corpus.len()
        && tree
            .passages
            .iter()
            .zip(&corpus.passages)
            .all(|(t, p)| t.id == p.id);
    if !same_corpus {
        ui.weak("The tree belongs to the loaded run's corpus, not the one shown: load that corpus to browse it.");
        return;
    }
    match tree.cluster(&[]) {
        // The whole corpus in one leaf.
        Some(root) if root.leaf => leaf_ui(ui, tree, corpus, &[]),
        _ => children_ui(ui, tree, corpus, &[]),
    }
}

fn children_ui(ui: &mut egui::Ui, tree: &DocidTree, corpus: &Corpus, parent: &[u16]) {
    let children = tree
        .clusters
        .iter()
        .filter(|c| c.path.len() == parent.len() + 1 && c.path.starts_with(parent));
    for c in children {
        let header = format!(
            "{}  {} passages  {}",
            docids::show(&c.path),
            c.size,
            c.label.join(", ")
        );
        egui::CollapsingHeader::new(header)
            .id_salt(("docid cluster", c.path.clone()))
            .show(ui, |ui| {
                if c.leaf {
                    leaf_ui(ui, tree, corpus, &c.path);
                } else {
                    children_ui(ui, tree, corpus, &c.path);
                }
            });
    }
}

fn leaf_ui(ui: &mut egui::Ui, tree: &DocidTree, corpus: &Corpus, leaf: &[u16]) {
    let inside: Vec<usize> = (0..tree.passages.len())
        .filter(|&i| {
            let p = &tree.passages[i].path;
            p.len() == leaf.len() + 1 && p.starts_with(leaf)
        })
        .collect();
    for &i in inside.iter().take(LEAF_ROWS) {
        let title = corpus
            .passages
            .get(i)
            .map(|p| p.title.as_str())
            .unwrap_or("");
        ui.horizontal(|ui| {
            ui.monospace(docids::show(&tree.passages[i].path));
            ui.label(format!("{}  \u{2014} {title}", tree.passages[i].id));
        });
    }
    if inside.len() > LEAF_ROWS {
        ui.weak(format!("and {} more", inside.len() - LEAF_ROWS));
    }
}
