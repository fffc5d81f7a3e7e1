//! The lexical baseline: Okapi BM25 over title + text (the `bm25` crate), lowercased word tokens
//! without stemming or stop-word removal, k1 = 0.9 and b = 0.4 by default.

use crate::corpus::Corpus;
use bm25::{Document, Language, SearchEngine, SearchEngineBuilder};

/// A BM25 index over a corpus' passages.
pub struct Bm25Index {
    engine: SearchEngine<usize>,
    len: usize,
}

impl Bm25Index {
    /// Indexes every passage as "title text".
    pub fn new(corpus: &Corpus, k1: f32, b: f32) -> Self {
        let docs: Vec<Document<usize>> = corpus
            .passages
            .iter()
            .enumerate()
            .map(|(i, p)| Document::new(i, format!("{} {}", p.title, p.text)))
            .collect();
        let tokenizer = bm25::DefaultTokenizer::builder()
            .language_mode(Language::English)
            .stemming(false)
            .stopwords(false)
            .normalization(true)
            .build();
        let engine = SearchEngineBuilder::<usize>::with_tokenizer_and_documents(tokenizer, docs)
            .k1(k1)
            .b(b)
            .build();
        Bm25Index {
            engine,
            len: corpus.len(),
        }
    }

    /// Passage indices, best first; equal scores in corpus order, so runs are reproducible
    /// (the crate itself orders ties by hash).
    pub fn search(&self, query: &str, k: usize) -> Vec<usize> {
        let mut hits: Vec<(f32, usize)> = self
            .engine
            .search(query, self.len)
            .into_iter()
            .map(|r| (r.score, r.document.id))
            .collect();
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        hits.truncate(k);
        hits.into_iter().map(|(_, i)| i).collect()
    }
}
