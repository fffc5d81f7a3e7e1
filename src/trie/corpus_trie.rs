//! The two-level trie of a corpus: one over title segments, and per title one over its passages.

use super::TokenTrie;
use crate::corpus::Corpus;
use crate::error::Result;
use crate::prompts::PromptCodec;
use tokenizers::Tokenizer;

/// Tries over exactly the sequences the model emits at retrieval time.
#[derive(Debug, Clone, Default)]
pub struct CorpusTrie {
    /// Items are title indices (`Corpus::titles`).
    pub titles: TokenTrie,
    /// For each title, a trie whose item `k` is the corpus passage `Corpus::by_title[t][k]`.
    pub passages: Vec<TokenTrie>,
}

/// Size statistics for the corpus panel and the trie benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct TrieStats {
    pub titles: usize,
    pub passages: usize,
    pub corpus_tokens: usize,
    pub nodes: usize,
    pub bytes: usize,
    /// Passages that are token-identical to another of the same title.
    pub duplicates: usize,
}

impl TrieStats {
    /// Bytes per corpus token (4 would be storing every token id once).
    pub fn bytes_per_token(&self) -> f64 {
        self.bytes as f64 / self.corpus_tokens.max(1) as f64
    }
}

impl CorpusTrie {
    /// Tokenizes every title and passage with the shared prompt codec and builds the tries.
    /// Tokenizing is the dominant cost: it runs on every core with a per-thread word cache.
    pub fn build(corpus: &Corpus, tok: &Tokenizer, codec: &PromptCodec) -> Result<CorpusTrie> {
        // The same sequences as `codec.title` and `codec.passage`, tokenized all at once.
        let title_texts: Vec<String> = corpus
            .titles
            .iter()
            .map(|t| format!(" {}", crate::prompts::clean(t)))
            .collect();
        let mut title_seqs = crate::model::tokenizer::encode_many(tok, &title_texts)?;
        for ids in &mut title_seqs {
            ids.extend_from_slice(&codec.content_cue);
        }
        let texts: Vec<String> = corpus
            .passages
            .iter()
            .map(|p| format!(" {}", p.text.trim()))
            .collect();
        let mut passage_seqs = crate::model::tokenizer::encode_many(tok, &texts)?;
        for ids in &mut passage_seqs {
            ids.push(codec.eos);
        }
        let passages = corpus
            .by_title
            .iter()
            .map(|members| {
                let seqs: Vec<Vec<u32>> = members
                    .iter()
                    .map(|&i| std::mem::take(&mut passage_seqs[i]))
                    .collect();
                TokenTrie::build(&seqs)
            })
            .collect();
        Ok(CorpusTrie {
            titles: TokenTrie::build(&title_seqs),
            passages,
        })
    }

    /// Sizes of the structure.
    pub fn stats(&self) -> TrieStats {
        let mut s = TrieStats {
            titles: self.titles.len(),
            corpus_tokens: self.titles.token_count(),
            nodes: self.titles.node_count(),
            bytes: self.titles.bytes(),
            ..Default::default()
        };
        for p in &self.passages {
            s.passages += p.len();
            s.corpus_tokens += p.token_count();
            s.nodes += p.node_count();
            s.bytes += p.bytes();
            s.duplicates += p.duplicates().len();
        }
        s
    }
}
