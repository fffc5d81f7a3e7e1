//! The document collection: loaders for JSONL, BEIR folders and folders of text/Markdown/PDF files,
//! sentence-aligned chunking into titled passages, and a per-file load report that names every
//! skipped item and why.

pub mod chunk;
pub mod load;
pub mod sentences;

pub use load::{load_path, LoadOptions};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

/// One retrievable unit: what the model learns and what retrieval returns, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passage {
    pub id: String,
    pub title: String,
    pub text: String,
}

impl Passage {
    /// Number of whitespace-separated words.
    pub fn words(&self) -> usize {
        self.text.split_whitespace().count()
    }
}

/// Why an item was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// 1-based line for line-oriented files.
    pub line: Option<usize>,
    pub reason: String,
}

/// What happened to one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    pub path: PathBuf,
    /// Passages taken from this file.
    pub loaded: usize,
    /// Items (lines, or the whole file) left out, with the reason.
    pub skipped: Vec<Skipped>,
}

/// A loaded collection with its title index.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Corpus {
    pub passages: Vec<Passage>,
    /// Distinct titles in order of first appearance.
    pub titles: Vec<String>,
    /// For each title, the indices of its passages.
    pub by_title: Vec<Vec<usize>>,
    /// For each passage, the index of its title.
    pub title_of: Vec<usize>,
    /// Per-file load status.
    pub files: Vec<FileStatus>,
    #[serde(skip)]
    id_index: HashMap<String, usize>,
}

impl Corpus {
    /// Titles that only stand in for a missing one (the first words of their first passage):
    /// the candidates for model-written titles.
    pub fn untitled(&self) -> Vec<usize> {
        (0..self.titles.len())
            .filter(|&t| {
                self.by_title[t].first().is_some_and(|&p| {
                    load::placeholder_title(&self.passages[p].text) == self.titles[t]
                })
            })
            .collect()
    }

    /// Builds the title index over passages (ids must be unique; the loaders ensure it).
    pub fn from_passages(passages: Vec<Passage>, files: Vec<FileStatus>) -> Corpus {
        let mut titles = Vec::new();
        let mut title_idx: HashMap<String, usize> = HashMap::new();
        let mut by_title: Vec<Vec<usize>> = Vec::new();
        let mut title_of = Vec::with_capacity(passages.len());
        let mut id_index = HashMap::with_capacity(passages.len());
        for (i, p) in passages.iter().enumerate() {
            let t = *title_idx.entry(p.title.clone()).or_insert_with(|| {
                titles.push(p.title.clone());
                by_title.push(Vec::new());
                titles.len() - 1
            });
            by_title[t].push(i);
            title_of.push(t);
            id_index.insert(p.id.clone(), i);
        }
        Corpus {
            passages,
            titles,
            by_title,
            title_of,
            files,
            id_index,
        }
    }

    /// Index of the passage with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        if self.id_index.is_empty() && !self.passages.is_empty() {
            return self.passages.iter().position(|p| p.id == id);
        }
        self.id_index.get(id).copied()
    }

    /// Number of passages.
    pub fn len(&self) -> usize {
        self.passages.len()
    }

    /// True when nothing was loaded.
    pub fn is_empty(&self) -> bool {
        self.passages.is_empty()
    }

    /// A stable hash of ids, titles and texts: tells whether a trained model matches a corpus.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for p in &self.passages {
            for s in [&p.id, &p.title, &p.text] {
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
        let d = h.finalize();
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Total number of skipped items over all files.
    pub fn skipped_count(&self) -> usize {
        self.files.iter().map(|f| f.skipped.len()).sum()
    }

    /// What loading did, for people: "loaded N passages from M files; skipped K:" then the
    /// first `max_lines` skipped items as `file:line: reason` and how many more there were.
    pub fn load_report(&self, max_lines: usize) -> String {
        let skipped = self.skipped_count();
        let mut out = format!(
            "loaded {} passages from {} file{}",
            self.len(),
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" }
        );
        if skipped == 0 {
            return out;
        }
        out.push_str(&format!("; skipped {skipped}:"));
        let items = self.files.iter().flat_map(|f| {
            f.skipped.iter().map(move |s| match s.line {
                Some(l) => format!("{}:{l}: {}", f.path.display(), s.reason),
                None => format!("{}: {}", f.path.display(), s.reason),
            })
        });
        for line in items.take(max_lines) {
            out.push_str("\n  ");
            out.push_str(&line);
        }
        if skipped > max_lines {
            out.push_str(&format!("\n  ... and {} more", skipped - max_lines));
        }
        out
    }

    /// Every text the tokenizer of a from-scratch model should see (titles and passages).
    pub fn texts(&self) -> impl Iterator<Item = String> + Send + '_ {
        self.titles
            .iter()
            .cloned()
            .chain(self.passages.iter().map(|p| p.text.clone()))
    }
}
