//! The lexical baseline: Okapi BM25 over title + text (the `bm25` crate), lowercased word tokens
//! without stemming or stop-word removal, k1 = 0.9 and b = 0.4 by default.

use crate::corpus::Corpus;
use bm25::{Document, Language, SearchEngine, SearchEngineBuilder};

/// A BM25 index over a corpus' passages.
pub struct Bm25Index {
    engine: SearchEngine<usize>,
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
        Bm25Index { engine }
    }

    /// Passage indices, best first.
    pub fn search(&self, query: &str, k: usize) -> Vec<usize> {
        self.engine
            .search(query, k)
            .into_iter()
            .map(|r| r.document.id)
            .collect()
    }
}
