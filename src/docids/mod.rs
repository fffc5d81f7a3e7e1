//! Hierarchical semantic document ids, the second retrieval mode ("Retrieval as Reasoning", after
//! NCI and DSI): every passage is embedded, the embeddings are clustered by recursive k-means, and
//! a passage's docid is its path of cluster indices down the tree, ending with its number inside
//! its leaf. Passages with similar content share docid prefixes, so generating a docid token by
//! token narrows from a topic to a passage.
//!
//! - [`kmeans`]: seeded k-means++ (deterministic);
//! - [`labels`]: each cluster's top terms by TF-IDF, so the tree can be read;
//! - [`embed`]: where the embeddings come from (MiniLM, or the loaded model's hidden states);
//! - here: the tree ([`DocidTree`], stored as `docids.json` in a run), its token vocabulary
//!   ([`DocidVocab`]) and the trie that keeps decoding on real docids.

pub mod embed;
pub mod kmeans;
pub mod labels;

use crate::corpus::Corpus;
use crate::error::{Error, Result};
use crate::trie::TokenTrie;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file name of the tree inside a run directory.
pub const FILE_NAME: &str = "docids.json";

/// How the tree is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocidOptions {
    /// Clusters per level (k).
    pub k: usize,
    /// A cluster with more passages than this is split again (c); a leaf numbers its passages.
    pub max_leaf: usize,
    pub seed: u64,
    /// Lloyd iterations per split at most.
    pub iterations: usize,
}

impl Default for DocidOptions {
    fn default() -> Self {
        DocidOptions {
            k: 10,
            max_leaf: 30,
            seed: 11,
            iterations: 50,
        }
    }
}

impl DocidOptions {
    /// Refuses settings that cannot make a tree.
    pub fn check(&self) -> Result<()> {
        if self.k < 2 {
            return Err(Error::invalid(format!(
                "docid clusters per level must be at least 2 (got {})",
                self.k
            )));
        }
        if self.max_leaf < 1 {
            return Err(Error::invalid("docid leaf size must be at least 1"));
        }
        if self.k > u16::MAX as usize || self.max_leaf > u16::MAX as usize {
            return Err(Error::invalid("docid k and leaf size must be below 65536"));
        }
        Ok(())
    }
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Indices from the root; the root's path is empty.
    pub path: Vec<u16>,
    /// Passages below it.
    pub size: usize,
    /// Top terms (TF-IDF of the cluster against the corpus).
    pub label: Vec<String>,
    /// A leaf numbers its passages; an inner node splits into clusters.
    pub leaf: bool,
}

/// One passage's docid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassageDocid {
    pub id: String,
    pub path: Vec<u16>,
}

/// The docid tree of a corpus, as stored in `docids.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocidTree {
    /// What embedded the passages (so a reader knows what the clusters mean).
    pub embedder: String,
    pub options: DocidOptions,
    /// [`Corpus::fingerprint`] of the corpus it was built for.
    pub corpus_fingerprint: String,
    /// In corpus order.
    pub passages: Vec<PassageDocid>,
    /// Every node, parents before children.
    pub clusters: Vec<Cluster>,
}

/// A stable per-node seed, so one split does not depend on how many others ran before it.
fn node_seed(seed: u64, path: &[u16]) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &p in path {
        h = (h ^ p as u64)
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(17);
    }
    h
}

impl DocidTree {
    /// Builds the tree from one embedding per passage (rows should be L2-normalised).
    pub fn build(
        corpus: &Corpus,
        embeddings: &[Vec<f32>],
        embedder: &str,
        options: DocidOptions,
    ) -> Result<DocidTree> {
        options.check()?;
        if corpus.is_empty() {
            return Err(Error::invalid("cannot build docids for an empty corpus"));
        }
        if embeddings.len() != corpus.len() {
            return Err(Error::invalid(format!(
                "{} embeddings for {} passages",
                embeddings.len(),
                corpus.len()
            )));
        }
        if let Some(i) = embeddings
            .iter()
            .position(|e| e.iter().any(|x| !x.is_finite()) || e.len() != embeddings[0].len())
        {
            return Err(Error::invalid(format!(
                "the embedding of passage {} is not finite or has the wrong size",
                corpus.passages[i].id
            )));
        }
        let texts: Vec<String> = corpus
            .passages
            .iter()
            .map(|p| format!("{} {}", p.title, p.text))
            .collect();
        let stats = labels::TermStats::new(&texts);
        let mut paths: Vec<Vec<u16>> = vec![Vec::new(); corpus.len()];
        let mut clusters = Vec::new();
        // Breadth-first, so parents come before children and siblings sit together.
        let mut queue = std::collections::VecDeque::new();
        queue.push_back((Vec::<u16>::new(), (0..corpus.len()).collect::<Vec<usize>>()));
        while let Some((path, members)) = queue.pop_front() {
            let leaf = members.len() <= options.max_leaf;
            clusters.push(Cluster {
                path: path.clone(),
                size: members.len(),
                label: stats.label(&members, 3),
                leaf,
            });
            if leaf {
                for (i, &m) in members.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(i as u16);
                    paths[m] = p;
                }
                continue;
            }
            let points: Vec<&[f32]> = members.iter().map(|&m| embeddings[m].as_slice()).collect();
            let groups = kmeans::kmeans(
                &points,
                options.k,
                node_seed(options.seed, &path),
                options.iterations,
            );
            let count = groups.iter().max().map_or(0, |&g| g + 1);
            for g in 0..count {
                let sub: Vec<usize> = members
                    .iter()
                    .zip(&groups)
                    .filter(|(_, &x)| x == g)
                    .map(|(&m, _)| m)
                    .collect();
                let mut p = path.clone();
                p.push(g as u16);
                queue.push_back((p, sub));
            }
        }
        Ok(DocidTree {
            embedder: embedder.to_string(),
            options,
            corpus_fingerprint: corpus.fingerprint(),
            passages: corpus
                .passages
                .iter()
                .zip(paths)
                .map(|(p, path)| PassageDocid {
                    id: p.id.clone(),
                    path,
                })
                .collect(),
            clusters,
        })
    }

    /// Writes `docids.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid(format!("docids: {e}")))?;
        crate::model::checkpoint::write_atomic(path, json.as_bytes())
    }

    /// Reads a tree and checks it belongs to `corpus` (same passages, one docid each, no docid
    /// a prefix of another).
    pub fn load(path: &Path, corpus: &Corpus) -> Result<DocidTree> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let tree: DocidTree = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("not a docid tree: {e}")))?;
        if tree.corpus_fingerprint != corpus.fingerprint() {
            return Err(Error::bad_file(
                path,
                "built for a different corpus (its fingerprint differs): build the docids again",
            ));
        }
        tree.check().map_err(|m| Error::bad_file(path, m))?;
        Ok(tree)
    }

    /// Structural checks: every passage has a docid, docids are distinct and prefix-free.
    fn check(&self) -> std::result::Result<(), String> {
        let mut sorted: Vec<&Vec<u16>> = self.passages.iter().map(|p| &p.path).collect();
        sorted.sort();
        for w in sorted.windows(2) {
            if w[1].starts_with(w[0]) {
                return Err(format!("docid {} is repeated or a prefix", show(w[0])));
            }
        }
        if let Some(p) = self.passages.iter().find(|p| p.path.is_empty()) {
            return Err(format!("passage {} has an empty docid", p.id));
        }
        Ok(())
    }

    /// The longest docid.
    pub fn depth(&self) -> usize {
        self.passages
            .iter()
            .map(|p| p.path.len())
            .max()
            .unwrap_or(0)
    }

    /// Leaves of the tree.
    pub fn leaves(&self) -> usize {
        self.clusters.iter().filter(|c| c.leaf).count()
    }

    /// The node with this path.
    pub fn cluster(&self, path: &[u16]) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.path == path)
    }

    /// The token vocabulary this tree needs.
    pub fn vocab(&self) -> DocidVocab {
        let width = self
            .passages
            .iter()
            .flat_map(|p| p.path.iter())
            .map(|&x| x as usize + 1)
            .max()
            .unwrap_or(1);
        DocidVocab {
            levels: self.depth(),
            width,
        }
    }

    /// A trie over every passage's docid tokens (item `i` is passage `i`), offsetting token ids
    /// by `first_token` (where the docid tokens start in the model's vocabulary).
    pub fn trie(&self, first_token: u32) -> TokenTrie {
        let vocab = self.vocab();
        let seqs: Vec<Vec<u32>> = self
            .passages
            .iter()
            .map(|p| vocab.tokens(&p.path, first_token))
            .collect();
        TokenTrie::build(&seqs)
    }
}

/// Docid tokens: one per (level, index). The same index means different clusters at different
/// levels (and a passage number at a leaf), so each level gets its own tokens, whose embeddings
/// can learn level-specific meaning; NCI found such prefix-aware tokens better than digits shared
/// across positions. The cost is small: `levels x width` tokens (~100 for thousands of passages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocidVocab {
    pub levels: usize,
    /// Indices per level: max(k, leaf size) in practice.
    pub width: usize,
}

impl DocidVocab {
    /// Number of docid tokens.
    pub fn len(&self) -> usize {
        self.levels * self.width
    }

    /// True when there are no docid tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token offset of (level, index) from the first docid token.
    pub fn token(&self, level: usize, index: u16) -> u32 {
        (level * self.width + index as usize) as u32
    }

    /// The token ids of a docid path.
    pub fn tokens(&self, path: &[u16], first_token: u32) -> Vec<u32> {
        path.iter()
            .enumerate()
            .map(|(level, &i)| first_token + self.token(level, i))
            .collect()
    }

    /// The (level, index) of a docid token offset.
    pub fn split(&self, offset: u32) -> (usize, u16) {
        let o = offset as usize;
        (o / self.width, (o % self.width) as u16)
    }

    /// The token's text form, e.g. `<d1:7>`.
    pub fn name(&self, offset: u32) -> String {
        let (level, index) = self.split(offset);
        format!("<d{level}:{index}>")
    }
}

/// A docid as people read it: `3-7-12`.
pub fn show(path: &[u16]) -> String {
    path.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Passage;

    /// A corpus of `n` passages over `topics` topics, with embeddings near one axis per topic.
    fn corpus_and_embeddings(n: usize, topics: usize) -> (Corpus, Vec<Vec<f32>>) {
        let words = ["river", "galaxy", "violin", "volcano", "glacier", "orchid"];
        let passages: Vec<Passage> = (0..n)
            .map(|i| {
                let t = i % topics;
                Passage {
                    id: format!("p{i}"),
                    title: format!("Topic {t}"),
                    text: format!("the {} passage number {i} about the {}", words[t], words[t]),
                }
            })
            .collect();
        let emb = (0..n)
            .map(|i| {
                let mut v = vec![0.0f32; topics + 1];
                v[i % topics] = 1.0;
                v[topics] = 0.05 * ((i * 7919) % 13) as f32;
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter().map(|x| x / norm).collect()
            })
            .collect();
        (Corpus::from_passages(passages, Vec::new()), emb)
    }

    #[test]
    fn every_passage_gets_a_distinct_prefix_free_docid_and_the_trie_finds_it() {
        let (corpus, emb) = corpus_and_embeddings(200, 5);
        let opts = DocidOptions {
            k: 4,
            max_leaf: 12,
            ..Default::default()
        };
        let tree = DocidTree::build(&corpus, &emb, "test", opts).unwrap();
        tree.check().unwrap();
        assert!(tree.depth() >= 3, "200 passages, k 4, leaves of 12");
        for c in &tree.clusters {
            assert!(!c.leaf || c.size <= 12);
            assert!(c.path.len() < tree.depth());
        }
        let sizes: usize = tree
            .clusters
            .iter()
            .filter(|c| c.leaf)
            .map(|c| c.size)
            .sum();
        assert_eq!(sizes, 200);
        let vocab = tree.vocab();
        assert!(vocab.width <= 12);
        let trie = tree.trie(1000);
        for (i, p) in tree.passages.iter().enumerate() {
            let seq = vocab.tokens(&p.path, 1000);
            assert_eq!(trie.find(&seq), Some(i as u32), "{}", show(&p.path));
        }
        // Deterministic: the same seed gives the same tree.
        let again = DocidTree::build(&corpus, &emb, "test", opts).unwrap();
        assert_eq!(tree, again);
    }

    #[test]
    fn first_level_separates_topics_and_labels_name_them() {
        let (corpus, emb) = corpus_and_embeddings(100, 4);
        let opts = DocidOptions {
            k: 4,
            max_leaf: 30,
            ..Default::default()
        };
        let tree = DocidTree::build(&corpus, &emb, "test", opts).unwrap();
        for (i, p) in tree.passages.iter().enumerate() {
            for (j, q) in tree.passages.iter().enumerate() {
                if i % 4 == j % 4 {
                    assert_eq!(p.path[0], q.path[0], "same topic, same first level");
                } else {
                    assert_ne!(p.path[0], q.path[0]);
                }
            }
        }
        let first = tree.cluster(&tree.passages[0].path[..1]).unwrap();
        assert_eq!(first.label[0], "river");
    }

    #[test]
    fn a_tree_refuses_another_corpus_and_round_trips() {
        let (corpus, emb) = corpus_and_embeddings(40, 2);
        let tree = DocidTree::build(&corpus, &emb, "test", DocidOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        tree.save(&path).unwrap();
        assert_eq!(DocidTree::load(&path, &corpus).unwrap(), tree);
        let (other, _) = corpus_and_embeddings(41, 2);
        let err = DocidTree::load(&path, &other).unwrap_err().to_string();
        assert!(err.contains("different corpus"), "{err}");
        std::fs::write(&path, "{ not json").unwrap();
        let err = DocidTree::load(&path, &corpus).unwrap_err().to_string();
        assert!(
            err.contains("docids.json") && err.contains("not a docid tree"),
            "{err}"
        );
    }

    #[test]
    fn bad_options_and_embeddings_are_refused() {
        let (corpus, mut emb) = corpus_and_embeddings(10, 2);
        let bad = DocidOptions {
            k: 1,
            ..Default::default()
        };
        assert!(DocidTree::build(&corpus, &emb, "t", bad).is_err());
        emb[3][0] = f32::NAN;
        let err = DocidTree::build(&corpus, &emb, "t", DocidOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("p3"), "{err}");
    }
}
